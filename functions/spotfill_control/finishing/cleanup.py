"""CleanupOnExit: tear down and report the run of an execution that ended without doing so itself.

The target of the rule on "Step Functions Execution Status Change" (FAILED, TIMED_OUT, ABORTED): timeouts,
aborts and runtime errors the state machine cannot catch.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from spotfill_control import state_store
from spotfill_control.aws import Clients, is_missing_key
from spotfill_control.config import Settings
from spotfill_control.finishing.publish import ReportClients, report_run
from spotfill_control.finishing.report import StepError, report_key, run_id_for_execution
from spotfill_control.finishing.teardown import teardown_and_persist
from spotfill_control.run import utcnow


class ExecutionDetail(BaseModel):
    model_config = ConfigDict(extra="ignore")

    executionArn: str
    stateMachineArn: str | None = None
    name: str | None = None
    status: str
    error: str | None = None
    cause: str | None = None


class ExecutionStatusChange(BaseModel):
    """The EventBridge event "Step Functions Execution Status Change" (source aws.states)."""

    model_config = ConfigDict(extra="ignore")

    detail: ExecutionDetail


CLEANUP_STATUSES = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})


def error_of(detail: ExecutionDetail) -> StepError:
    if detail.status == "TIMED_OUT":
        return StepError(Error="States.Timeout", Cause=detail.cause or "the execution timed out")
    if detail.status == "ABORTED":
        return StepError(Error="ExecutionAborted", Cause=detail.cause or "the execution was aborted")
    return StepError(Error=detail.error or "States.Runtime", Cause=detail.cause or "the execution failed")


def report_exists(run_id: str, s3: Any, bucket: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=report_key(run_id))
    except ClientError as exc:
        if is_missing_key(exc):
            return False
        raise
    return True


def clean_up_after(
    change: ExecutionStatusChange,
    *,
    teardown_clients: Clients,
    report_clients: ReportClients,
    settings: Settings,
    now: Callable[[], datetime] = utcnow,
    time_left: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Tear down and report the run of an execution that ended without doing so itself (`time_left`:
    the invocation's time left, which bounds teardown's deregistration of container instances).

    Ignored: other statuses, and an execution whose run lives on in a newer execution (continue-as-new).
    The report is written unless the run already has one (an execution that failed through the ASL's own
    Teardown and Report states, which this rule also hears about).
    """
    detail = change.detail
    arn = detail.executionArn
    if detail.status not in CLEANUP_STATUSES:
        return {"execution_arn": arn, "action": "ignored", "why": f"status {detail.status}"}
    bucket = settings.control_bucket
    run = state_store.load_by_execution(arn, report_clients.s3, bucket)
    if run is not None and run.execution_arn and run.execution_arn != arn:
        return {
            "execution_arn": arn,
            "action": "ignored",
            "why": f"run {run.run_id} continues in {run.execution_arn}",
        }
    error = error_of(detail)
    if run is not None:
        run, _ = teardown_and_persist(run, teardown_clients, settings, now, time_left)
    run_id = run.run_id if run is not None else run_id_for_execution(arn, now())
    if report_exists(run_id, report_clients.s3, bucket):
        return {"execution_arn": arn, "run_id": run_id, "action": "torn_down", "reported": False}
    summary = report_run(
        run,
        error=error,
        teardown_error=None,
        execution_arn=arn,
        clients=report_clients,
        settings=settings,
        now=now(),
    )
    return {
        "execution_arn": arn,
        "run_id": run_id,
        "action": "torn_down",
        "reported": True,
        "status": summary["status"],
    }
