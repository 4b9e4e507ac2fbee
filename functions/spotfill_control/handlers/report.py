"""Report: write `reports/<run id>.json`, publish the EventBridge event and SNS message; return a summary."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from spotfill_control.aws import client, transient_errors_retried
from spotfill_control.config import settings
from spotfill_control.deadline import Deadline
from spotfill_control.finishing.publish import ReportClients, report_run
from spotfill_control.finishing.report import FinishEvent
from spotfill_control.finishing.report_facts import DEFAULT_BUDGET_SECONDS
from spotfill_control.finishing.teardown import latest_run
from spotfill_control.run import utcnow

logger = Logger()


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    finish = FinishEvent.model_validate(event)
    clients = ReportClients(s3=client("s3"), ec2=client("ec2"), events=client("events"), sns=client("sns"))
    run = finish.run
    with transient_errors_retried("report"):
        if run is not None:
            logger.append_keys(run_id=run.run_id)
            run = latest_run(run, clients.s3, settings().control_bucket)
        summary = report_run(
            run,
            error=finish.error,
            teardown_error=finish.teardown_error,
            execution_arn=finish.execution_arn,
            clients=clients,
            settings=settings(),
            now=utcnow(),
            # half the invocation's remaining time for verifying what the Monitor left open
            deadline=Deadline.of_invocation(context, DEFAULT_BUDGET_SECONDS),
        )
    logger.info("reported", extra=summary)
    return summary
