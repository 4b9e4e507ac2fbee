"""What the CLI knows about runs, read the way a user could: from the stack's outputs, the control bucket and
the AWS APIs. The same code works against real AWS and, through `AWS_ENDPOINT_URL`, the local cloud."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from spotfill_control import state_store
from spotfill_control.aws import is_missing_key
from spotfill_control.fleet.fleet import fleet_instances
from spotfill_control.monitoring import finish_by
from spotfill_control.monitoring.cost import cost_per_million
from spotfill_control.monitoring.projection import predictions_so_far
from spotfill_control.run import RunState
from spotfill_control.shards import read_shard_index

DEFAULT_STACK_NAME = "spotfill"
TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
# Execution history events read per refresh for the current state (newest first).
HISTORY_EVENTS_READ = 50


class CliError(Exception):
    """An error the CLI reports as one sentence and a non-zero exit status."""


@dataclass(frozen=True)
class Stack:
    name: str
    control_bucket: str
    data_bucket: str
    state_machine_arn: str
    outputs: dict[str, str]


class Session:
    """boto3 clients for one endpoint (None: real AWS)."""

    def __init__(self, endpoint_url: str | None = None, region: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        self._session = boto3.session.Session(region_name=region)
        if self._session.region_name is None:
            raise CliError("no AWS region: set AWS_DEFAULT_REGION or pass --region")
        self._clients: dict[str, Any] = {}

    @property
    def region(self) -> str:
        return str(self._session.region_name)

    def client(self, service: str, region: str | None = None) -> Any:
        """A client of `service`, in the session's region unless `region` names another (the Price List)."""
        key = f"{service}@{region}" if region else service
        if key not in self._clients:
            kwargs: dict[str, Any] = {"endpoint_url": self.endpoint_url} if self.endpoint_url else {}
            if region:
                kwargs["region_name"] = region
            config = Config(connect_timeout=5, retries={"mode": "standard", "max_attempts": 3})
            self._clients[key] = self._session.client(service, config=config, **kwargs)
        return self._clients[key]

    def stack(self, name: str = DEFAULT_STACK_NAME) -> Stack:
        try:
            stacks = self.client("cloudformation").describe_stacks(StackName=name)["Stacks"]
        except ClientError as exc:
            raise CliError(f"cannot read stack {name!r}: {_aws_message(exc)}") from None
        except BotoCoreError as exc:
            raise CliError(f"cannot reach AWS ({self.endpoint_url or 'default endpoint'}): {exc}") from None
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        try:
            return Stack(
                name,
                outputs["ControlBucketName"],
                outputs["DataBucketName"],
                outputs["StateMachineArn"],
                outputs,
            )
        except KeyError as exc:
            raise CliError(f"stack {name!r} has no output {exc.args[0]}: is it a spotfill stack?") from None


def _aws_message(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'Error')}: {error.get('Message', str(exc))}"


# --- runs and executions --------------------------------------------------------------------------------


def start_execution(session: Session, stack: Stack, spec: dict[str, Any], name: str | None = None) -> str:
    kwargs = {"name": name} if name else {}
    try:
        response = session.client("stepfunctions").start_execution(
            stateMachineArn=stack.state_machine_arn, input=json.dumps(spec), **kwargs
        )
    except ClientError as exc:
        raise CliError(f"cannot start the backfill: {_aws_message(exc)}") from None
    return response["executionArn"]


def wait_for_execution_started_after(
    session: Session, stack: Stack, after: datetime, timeout: float = 30.0, known: set[str] | None = None
) -> str:
    """The execution an upload started (EventBridge delivers asynchronously): the first new one."""
    known = known or set()
    sfn = session.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        executions = sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"]
        new = [
            e
            for e in executions
            if e["executionArn"] not in known and e["startDate"].astimezone(UTC) >= after.astimezone(UTC)
        ]
        if new:
            return min(new, key=lambda e: e["startDate"])["executionArn"]
        time.sleep(0.2)
    raise CliError(
        f"no execution started within {timeout:.0f}s of the manifest upload: is the S3 rule deployed?"
    )


def execution_arns(session: Session, stack: Stack) -> set[str]:
    sfn = session.client("stepfunctions")
    return {
        e["executionArn"] for e in sfn.list_executions(stateMachineArn=stack.state_machine_arn)["executions"]
    }


def resolve_execution(session: Session, stack: Stack, execution: str) -> str:
    """An execution ARN from an ARN or an execution name."""
    if execution.startswith("arn:"):
        return execution
    prefix = stack.state_machine_arn.replace(":stateMachine:", ":execution:")
    return f"{prefix}:{execution}"


def run_for_execution(session: Session, stack: Stack, execution_arn: str) -> RunState | None:
    try:
        return state_store.load_by_execution(
            execution_arn, session.client("s3"), stack.control_bucket, instances=False
        )
    except ClientError:
        return None


def load_run(session: Session, stack: Stack, run_id: str) -> RunState | None:
    return state_store.load(run_id, session.client("s3"), stack.control_bucket)


def read_report(session: Session, stack: Stack, run_id: str) -> dict[str, Any] | None:
    try:
        body = session.client("s3").get_object(Bucket=stack.control_bucket, Key=f"reports/{run_id}.json")
    except ClientError as exc:
        if is_missing_key(exc):
            return None
        raise CliError(f"cannot read the report of run {run_id}: {_aws_message(exc)}") from None
    return json.loads(body["Body"].read())


def report_page(session: Session, stack: Stack, report: dict[str, Any], redrive: str | None = None) -> str:
    """The report's HTML page, drawn here with the run's series from the control bucket (none for a run
    that ended before the Monitor's first poll: its charts then say so); `redrive` as `report_rows` takes
    it."""
    from spotfill_control.finishing.report_html import render_html
    from spotfill_control.finishing.report_text import REDRIVE
    from spotfill_control.monitoring.series import load_series

    try:
        series = load_series(session.client("s3"), stack.control_bucket, report["run_id"])
    except ClientError as exc:
        raise CliError(f"cannot read the series of run {report['run_id']}: {_aws_message(exc)}") from None
    return render_html(report, series, redrive or REDRIVE)


def report_from_execution_output(output: str | None) -> dict[str, Any] | None:
    if not output:
        return None
    try:
        document = json.loads(output)
    except ValueError:
        return None
    return document.get("report") if isinstance(document, dict) else None


def redrive(session: Session, stack: Stack, run_id: str, max_total_usd: float | None = None) -> str:
    """Another attempt for the shards a run could not finish: a new execution of the same spec. Prepare skips
    every shard whose output exists, so only the dead-lettered and unprocessed shards (a run that failed or
    reached its budget) are queued. The new run has a budget of its own: `max_total_usd` if given, else the
    old run's cap."""
    run = load_run(session, stack, run_id)
    if run is None:
        raise CliError(f"no run {run_id!r} in s3://{stack.control_bucket}/runs/")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    spec = json.loads(run.spec.model_dump_json())
    if max_total_usd is not None:
        spec["limits"]["max_total_usd"] = max_total_usd
    return start_execution(session, stack, spec, name=f"redrive-{run_id}-{stamp}"[:80])


# --- progress ------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    execution_arn: str
    status: str = "RUNNING"
    state: str = ""
    run_id: str | None = None
    shards_total: int | None = None
    shards_done: int = 0
    predictions: int = 0
    predictions_per_second: float = 0.0
    eta_seconds: float | None = None
    instances: int = 0
    tasks: int = 0
    elapsed: float = 0.0
    error: str | None = None
    output: str | None = None
    cost_usd: float | None = None  # what the monitor accrued so far (None: it has not looked yet)
    max_total_usd: float | None = None  # the run's dollar cap, if it has one
    draining: bool = False  # the cap is near: no new capacity, workers finish the shards in hand
    projected_total_usd: float | None = None  # the monitor's projection of the run's total cost
    projected: bool = False  # the ETA is the monitor's projection (else estimated here from the outputs)
    deadline: str | None = None  # where the run stands against limits.finish_by (`finish_by.outlook`)
    weights: str | None = None  # the fleet's weights once the Monitor re-weighted it (`weights_line`)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def weights_line(run: RunState) -> str | None:
    """Once the Monitor has re-weighted the fleet by measured throughput: each type's weight as requested ->
    now, with its measured predictions per second per instance, and how many re-weightings (the report's
    `weights` row, `report_text.weights_sentence`); None before the first re-weighting."""
    from spotfill_control.finishing.report import weights_of
    from spotfill_control.finishing.report_text import weights_sentence

    if run.weighting is None or not run.weighting.changes:
        return None
    return f"weights {weights_sentence(weights_of(run))}"


def successor_execution(described: dict[str, Any]) -> str | None:
    """The execution a succeeded one handed its run over to (ContinueAsNew → HandedOver: the output's
    `handover.execution_arn`, execution `<run id>-<n>`), or None when the execution ended the run."""
    if described.get("status") != "SUCCEEDED" or not described.get("output"):
        return None
    try:
        output = json.loads(described["output"])
    except ValueError:
        return None
    handover = output.get("handover") if isinstance(output, dict) else None
    arn = handover.get("execution_arn") if isinstance(handover, dict) else None
    return arn if isinstance(arn, str) and arn != described.get("executionArn") else None


def failure_sentence(error: str | None, cause: str | None) -> str:
    """An execution's failure as one sentence. A failed Lambda task's cause is its error payload, a JSON
    `{"errorMessage", "errorType", "stackTrace"}`: the sentence is its `errorMessage` (an invalid spec's
    reads `invalid input: fleet.target_capacity: ...`), never the stack trace."""
    try:
        payload = json.loads(cause) if cause else None
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("errorMessage"), str):
        message = payload["errorMessage"].strip()
        kind = payload.get("errorType") or error
        return f"invalid input: {message}" if kind == "InvalidSpecError" else message
    return f"{error or ''}: {cause or ''}".strip(": ")


@dataclass
class RunWatcher:
    """Polls a run's execution and the run; `poll()` returns a fresh `Snapshot`. When the execution hands
    the run over (continue-as-new) it follows the successor, so `execution_arn` is always the run's current
    execution and a snapshot is `finished` only when the run's last execution ends. Instances and tasks come
    from the fleet and the ECS service, unless the local cloud offers its own counts (`counts`)."""

    session: Session
    stack: Stack
    execution_arn: str
    counts: Any = None  # callable(run_id) -> (instances, tasks), for the local cloud
    started: float = field(default_factory=time.monotonic)
    _run: RunState | None = None
    _total: int | None = None
    _report: dict[str, Any] | None = None

    def poll(self) -> Snapshot:
        sfn = self.session.client("stepfunctions")
        described = sfn.describe_execution(executionArn=self.execution_arn)
        # A run outlives the execution that started it: follow each continue-as-new handover to the end.
        while (successor := successor_execution(described)) is not None:
            self.execution_arn = successor
            described = sfn.describe_execution(executionArn=successor)
        snap = Snapshot(self.execution_arn, elapsed=time.monotonic() - self.started)
        snap.status = described["status"]
        snap.output = described.get("output")
        if described.get("error") or described.get("cause"):
            snap.error = failure_sentence(described.get("error"), described.get("cause"))
        snap.state = self._current_state(sfn)
        run = run_for_execution(self.session, self.stack, self.execution_arn)
        if run is not None:
            self._run = run
        if self._run is not None:
            self._fill_progress(snap, self._run)
            if snap.finished:
                self._settle_cost(snap, self._run.run_id)
        return snap

    def _settle_cost(self, snap: Snapshot, run_id: str) -> None:
        """A finished run shows its report's cost (`cost_usd.total`, each instance through teardown), the one
        figure the report, its notification and `spotfill report` show: the monitor's accrual and projection
        stop at its last poll and would disagree with it."""
        if self._report is None:
            self._report = read_report(self.session, self.stack, run_id)
        total = ((self._report or {}).get("cost_usd") or {}).get("total")
        if total is not None:
            snap.cost_usd = snap.projected_total_usd = total

    def _current_state(self, sfn: Any) -> str:
        # The newest events only: the state entered last is among them, and paging through the whole history
        # (up to 25,000 events) on every refresh would slow the display as the run grows.
        try:
            events = sfn.get_execution_history(
                executionArn=self.execution_arn, reverseOrder=True, maxResults=HISTORY_EVENTS_READ
            )["events"]
        except ClientError:
            return ""
        for event in sorted(events, key=lambda e: e["id"], reverse=True):
            details = event.get("stateEnteredEventDetails")
            if details:
                return details["name"]
        return ""

    def _fill_progress(self, snap: Snapshot, run: RunState) -> None:
        """Progress as the Monitor last persisted it in the run state (read whole on each refresh: a few KB,
        whatever the run's size), never a listing of the outputs: shards done, predictions (done outputs x
        the mean rows per shard of its sample), its recent rate and ETA; instances and tasks from the fleet
        and the service (or the local cloud's own counts)."""
        snap.run_id = run.run_id
        snap.cost_usd = run.budget.accrued_usd if run.budget.accrued_through else None
        snap.max_total_usd = run.spec.limits.max_total_usd
        snap.draining = run.budget.draining_since is not None
        snap.deadline = None if run.finish_by is None else finish_by.outlook(run.finish_by)
        snap.weights = weights_line(run)
        if self._total is None:
            index = read_shard_index(run.run_id, self.session.client("s3"), self.stack.control_bucket)
            if index is not None:
                self._total = index.total
        snap.shards_total = self._total
        # Shards whose output existed before the run count as done, as they do in the total.
        snap.shards_done = run.progress.outputs_done + run.shards_skipped
        snap.predictions = predictions_so_far(run)
        if run.projection is not None:
            snap.predictions_per_second = run.projection.predictions_per_second
            snap.projected_total_usd = run.projection.projected_total_usd
            if run.projection.eta_seconds is not None:
                snap.eta_seconds, snap.projected = run.projection.eta_seconds, True
        if self.counts is not None:
            snap.instances, snap.tasks = self.counts(run.run_id)
        else:
            snap.instances, snap.tasks = self._aws_counts(run)

    def _aws_counts(self, run: RunState) -> tuple[int, int]:
        instances = tasks = 0
        try:
            instances = len(fleet_instances(run, self.session.client("ec2")))
            if run.resources.cluster_name and run.resources.service_name:
                services = self.session.client("ecs").describe_services(
                    cluster=run.resources.cluster_name, services=[run.resources.service_name]
                )["services"]
                tasks = sum(s.get("runningCount", 0) for s in services)
        except ClientError:
            pass
        return instances, tasks


# --- recent runs ---------------------------------------------------------------------------------------

DEFAULT_RUNS_LIMIT = 20


@dataclass(frozen=True)
class RunRow:
    """One line of `spotfill runs`: a finished run from its report, or a running one from its state."""

    run_id: str
    state: str  # the report's status, or "running"
    shards_done: int | None
    shards_total: int | None
    cost_usd: float | None
    cost_per_million: float | None
    started_at: datetime | None


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def row_of_report(report: dict[str, Any]) -> RunRow:
    shards = report.get("shards") or {}
    pending = (shards.get("total") or 0) - (shards.get("skipped_existing") or 0)
    cost = report.get("cost_usd") or {}
    started = _parse_time((report.get("timeline") or {}).get("started_at") or report.get("generated_at"))
    return RunRow(
        run_id=str(report.get("run_id")),
        state=str(report.get("status")),
        shards_done=(shards.get("succeeded", 0) + shards.get("failed", 0)) if shards else None,
        shards_total=pending if shards else None,
        cost_usd=cost.get("total"),
        cost_per_million=cost.get("per_million_predictions"),
        started_at=started,
    )


def row_of_run(run: RunState, execution_started: datetime | None) -> RunRow:
    cost = run.budget.accrued_usd
    return RunRow(
        run_id=run.run_id,
        state="running",
        shards_done=run.progress.outputs_done + run.progress.dead_letters,
        shards_total=max(0, run.shards_total - run.shards_skipped),
        cost_usd=cost,
        cost_per_million=cost_per_million(cost, predictions_so_far(run)),
        started_at=run.timeline.started_at or execution_started,
    )


def recent_report_keys(session: Session, stack: Stack, limit: int) -> list[str]:
    """The `limit` most recently written reports (`reports/<run id>.json`), newest first."""
    s3 = session.client("s3")
    found: list[tuple[datetime, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.control_bucket, Prefix="reports/"):
        listed = page.get("Contents", [])
        found.extend((o["LastModified"], o["Key"]) for o in listed if o["Key"].endswith(".json"))
    return [key for _, key in sorted(found, reverse=True)[:limit]]


def recent_runs(session: Session, stack: Stack, limit: int = DEFAULT_RUNS_LIMIT) -> list[RunRow]:
    """Recent runs, newest first: the running executions' runs (their state in the control bucket) and the
    runs with a report. A run that continued as new is one run, whichever execution runs it now."""
    rows: dict[str, RunRow] = {}
    sfn = session.client("stepfunctions")
    try:
        pages = sfn.get_paginator("list_executions").paginate(
            stateMachineArn=stack.state_machine_arn, statusFilter="RUNNING"
        )
        running = [e for page in pages for e in page["executions"]]
    except ClientError as exc:
        raise CliError(f"cannot list the running executions: {_aws_message(exc)}") from None
    for execution in running:
        run = run_for_execution(session, stack, execution["executionArn"])
        started = _parse_time(execution.get("startDate"))
        if run is None:  # not validated yet: no run id, only the execution
            row = RunRow(execution["name"], "starting", None, None, None, None, started)
        else:
            row = row_of_run(run, started)
        rows[row.run_id] = row
    for key in recent_report_keys(session, stack, limit):
        report = read_report(session, stack, key.removeprefix("reports/").removesuffix(".json"))
        if report is not None and str(report.get("run_id")) not in rows:
            row = row_of_report(report)
            rows[row.run_id] = row
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(rows.values(), key=lambda r: r.started_at or oldest, reverse=True)[:limit]
