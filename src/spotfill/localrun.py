"""A whole backfill on the local cloud: upload model and shards, trigger the run by uploading a manifest under
`backfills/`, follow it, fetch the outputs. Shared by `spotfill run --local` and `spotfill demo`.

The user's folders (shards in, outputs out, which shards are done) are `spotfill.local_folders`. What is left
here, a little over 600 lines, is one sequence, the stages of one run in the order they happen (limits,
upload and trigger, follow, fetch, report), each a function the others call once: split further it would be
read across files in that same order.
"""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from spotfill_control.spec import (
    MAX_RUNTIME_SECONDS,
    OUTPUT_EXTENSIONS,
    parse_finish_by,
)

from spotfill.local_folders import (
    OutputPlan,
    check_output_dir,
    input_shards,
    make_output_dir,
    output_name,
    plan_outputs,
)
from spotfill.localcloud import ChaosSpec, LocalCloud, LocalCloudOptions
from spotfill.localcloud.server import check_port_free
from spotfill.model_record import LocalModel, record_models
from spotfill.progress_display import follow, report_table
from spotfill.runs import (
    CliError,
    RunWatcher,
    Session,
    Snapshot,
    execution_arns,
    read_report,
    report_from_execution_output,
    report_page,
    wait_for_execution_started_after,
)

# After `run --local` returns its local cloud is gone, so `spotfill redrive` has no run to redrive: the same
# command again finishes the work, as it skips the outputs already complete.
LOCAL_REDRIVE = "the same spotfill run --local again"
LOCAL_REDRIVE_ADVICE = (
    "running the same `spotfill run --local` command again with a higher --max-total-usd computes them "
    "(it skips the outputs already complete)"
)

# A local run's `limits.max_runtime_seconds`: an hour, or with a deadline an hour past it (the deadline must
# fall within the run's maximum runtime, and `run --local` has no flag for the runtime).
LOCAL_MAX_RUNTIME_SECONDS = 3600

# Called with the local cloud and the manifest once the model and shards are uploaded, before the manifest is;
# returns the manifest to upload.
BeforeTrigger = Callable[[LocalCloud, dict[str, Any]], dict[str, Any]]


@dataclass
class LocalRunResult:
    execution_arn: str
    snapshot: Snapshot
    report: dict[str, Any] | None
    outputs: dict[str, Path] = field(default_factory=dict)  # input shard name -> downloaded output
    wall_seconds: float = 0.0
    last_output_at: float | None = None  # epoch seconds the last output was written (worker logs)
    fleet_gone_at: float | None = None  # epoch seconds the run's last instance was terminated
    interruptions_done: int = 0
    kills_done: int = 0
    leftovers: list[str] = field(default_factory=list)
    skipped: dict[str, Path] = field(default_factory=dict)  # complete outputs of an earlier run, kept
    missing: list[str] = field(default_factory=list)  # outputs not downloaded, each with the reason
    run_dir: Path | None = None  # the local cloud's folder (worker logs), None once removed
    report_page: str | None = None  # the report's HTML page (reports/<run id>.html), None without a report

    @property
    def orchestration_overhead_seconds(self) -> float | None:
        """From the last output written to the fleet terminated: what the control plane adds at the end."""
        if self.last_output_at is None or self.fleet_gone_at is None:
            return None
        return self.fleet_gone_at - self.last_output_at

    @property
    def status(self) -> str:
        return (self.report or {}).get("status") or self.snapshot.status.lower()

    @property
    def reason(self) -> str:
        """Why the run ended so, with the advice that works after a local run (not `spotfill redrive`)."""
        from spotfill_control.monitoring.budget import redrive_advice

        reason = (self.report or {}).get("reason") or self.snapshot.error or self.snapshot.status
        run_id = (self.report or {}).get("run_id") or self.snapshot.run_id
        return reason.replace(redrive_advice(run_id), LOCAL_REDRIVE_ADVICE) if run_id else reason

    @property
    def deadline(self) -> str | None:
        """Whether the run met its `limits.finish_by` and by how much, from the report (`met, 1.5 min to spare
        (deadline ...)`, `missed by ...`, `not finished ...`); None for a run without a deadline."""
        from spotfill_control.finishing.report_text import deadline_sentence

        deadline = (self.report or {}).get("deadline")
        return deadline_sentence(deadline) if deadline else None

    def report_table(self) -> Table:
        """The report's table as `spotfill report` prints it, with this run's reason and advice."""
        return report_table({**(self.report or {}), "reason": self.reason}, redrive=LOCAL_REDRIVE)

    @property
    def succeeded(self) -> bool:
        return self.snapshot.status == "SUCCEEDED" and self.status == "succeeded"


Check = Callable[[], None]


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[Check]:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP end the run as KeyboardInterrupt: finished outputs are downloaded
    and the local cloud is torn down, its workers with it. Yields a check that raises KeyboardInterrupt once
    any of them has arrived, which the run calls between its steps.

    SIGINT is taken even where the command started with it ignored: a shell without job control starts a
    background command (`spotfill run --local ... &` in a script) ignoring SIGINT, and `kill -INT` must still
    stop it. Each signal is also recorded, because a KeyboardInterrupt raised where Python cannot propagate it
    is lost: in a finaliser (`__del__`, a weakref callback: "Exception ignored in ...") or in library code
    that catches everything; the check raises it again at the next step."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    received: list[str] = []

    def interrupt(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(received[-1])

    def check() -> None:
        if received:
            raise KeyboardInterrupt(received[0])

    signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {signum: signal.signal(signum, interrupt) for signum in signals}
    try:
        yield check
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def local_limits(
    poll_interval: int, max_total_usd: float | None, finish_by: str | None, now: datetime
) -> dict[str, Any]:
    """A local run's `limits`: an hour's runtime, stretched to an hour past a deadline given as
    `finish_by` (`limits.finish_by`: a time, or a duration from the run's start, as of `now`)."""
    runtime = LOCAL_MAX_RUNTIME_SECONDS
    if finish_by is not None:
        parsed = parse_finish_by(finish_by)
        span = parsed if isinstance(parsed, timedelta) else parsed - now
        past_it = int(span.total_seconds()) + 1 + LOCAL_MAX_RUNTIME_SECONDS
        runtime = min(MAX_RUNTIME_SECONDS, max(runtime, past_it))
    limits: dict[str, Any] = {
        "max_runtime_seconds": runtime,
        "registration_timeout_seconds": 120,
        "stall_timeout_seconds": 180,
        "poll_interval_seconds": poll_interval,
        "max_total_usd": max_total_usd,
    }
    return limits if finish_by is None else {**limits, "finish_by": finish_by}


def check_finish_by(finish_by: str | None, now: datetime) -> None:
    """Before anything starts, the refusals Validate would make of the local run's deadline (as `spotfill
    plan --finish-by` makes them): a time not in the future, or beyond the run's maximum runtime."""
    from pydantic import ValidationError
    from spotfill_control.monitoring import finish_by as deadline
    from spotfill_control.spec import LimitsSpec

    if finish_by is None:
        return
    try:
        limits = LimitsSpec.model_validate(local_limits(1, None, finish_by, now))
        deadline.resolve(limits, now, now)
    except ValidationError as exc:
        reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise CliError(f"invalid input: limits: {reason}") from None
    except ValueError as exc:
        raise CliError(f"invalid input: {exc}") from None


def manifest(
    name: str,
    data_bucket: str,
    model_key: str,
    input_format: str,
    output_format: str,
    instances: int,
    tasks_per_instance: int = 1,
    poll_interval: int = 1,
    max_total_usd: float | None = None,
    runtime: str = "auto",
    precision: str = "fp32",
    tfrecord: dict[str, Any] | None = None,
    finish_by: str | None = None,
) -> dict[str, Any]:
    source: dict[str, Any] = {"uri": f"s3://{data_bucket}/inputs/{name}/", "format": input_format}
    if tfrecord is not None:
        source["tfrecord"] = tfrecord
    return {
        "name": name,
        "input": source,
        "output": {"uri": f"s3://{data_bucket}/outputs/{name}/", "format": output_format},
        "model": {"uri": f"s3://{data_bucket}/{model_key}", "runtime": runtime, "precision": precision},
        "fleet": {"instance_types": ["c5.xlarge"], "target_capacity": instances},
        "service": {"tasks_per_instance": tasks_per_instance, "cpu": 1024, "memory": 2048},
        "limits": local_limits(poll_interval, max_total_usd, finish_by, datetime.now(UTC)),
    }


def local_counts(cloud: LocalCloud):
    """Instances and tasks of a run as the local cloud's physics see them."""

    def counts(run_id: str) -> tuple[int, int]:
        cluster = f"spotfill-{run_id}"
        agent, fleet = cloud.agent, cloud.fleet
        if agent is None or fleet is None:
            return 0, 0
        registered = {
            r.machine.instance_id for r in list(agent.registrations.values()) if r.cluster == cluster
        }
        tasks = [t for t in agent.running_tasks() if t.cluster == cluster]
        return len([m for m in fleet.running_machines() if m.instance_id in registered]), len(tasks)

    return counts


def upload_and_trigger(
    cloud: LocalCloud,
    spec: dict[str, Any],
    model_path: Path,
    shards: list[Path],
    input_dir: Path,
    before_trigger: BeforeTrigger | None = None,
) -> str:
    """Upload model and shards, then the manifest (`before_trigger` may amend it first: `spotfill demo` plans
    the run there and adds the estimate); returns the execution the upload started."""
    s3 = cloud.client("s3")
    bucket, prefix = spec["input"]["uri"][len("s3://") :].split("/", 1)
    model_key = spec["model"]["uri"].split("/", 3)[3]
    s3.upload_file(str(model_path), bucket, model_key)
    for shard in shards:
        s3.upload_file(str(shard), bucket, prefix + shard.relative_to(input_dir).as_posix())
    if before_trigger is not None:
        spec.update(before_trigger(cloud, spec))
    session = Session(cloud.endpoint_url, cloud.region)
    stack = session.stack(cloud.options.stack_name)
    known = execution_arns(session, stack)
    before = datetime.now(UTC).replace(microsecond=0)
    s3.put_object(
        Bucket=cloud.outputs.control_bucket,
        Key=f"backfills/{spec['name']}-{before.strftime('%Y%m%dT%H%M%S')}.json",
        Body=json.dumps(spec, indent=2).encode(),
        ContentType="application/json",
    )
    return wait_for_execution_started_after(session, stack, before, known=known)


def follow_run(
    cloud: LocalCloud,
    execution_arn: str,
    console: Console,
    timeout: float | None = None,
    check: Check = lambda: None,
) -> LocalRunResult:
    """Follow the execution to its end; `check` runs at every poll (termination_as_interrupt's)."""
    session = Session(cloud.endpoint_url, cloud.region)
    stack = session.stack(cloud.options.stack_name)
    watcher = RunWatcher(session, stack, execution_arn, counts=local_counts(cloud))
    started = time.monotonic()
    snap = follow(watcher, console, timeout=timeout, on_poll=lambda _: check())
    report = report_from_execution_output(snap.output)
    if snap.run_id:
        report = read_report(session, stack, snap.run_id) or report
    result = LocalRunResult(execution_arn, snap, report, wall_seconds=time.monotonic() - started)
    if report and snap.run_id:
        # Drawn here, not read from the Report function's page: that one advises `spotfill redrive`, which has
        # no run to redrive once this local cloud is gone.
        result.report_page = report_page(session, stack, {**report, "reason": result.reason}, LOCAL_REDRIVE)
    if snap.run_id:
        result.last_output_at, result.fleet_gone_at = _end_times(cloud, snap.run_id)
    if cloud.chaos is not None:
        result.kills_done, result.interruptions_done = cloud.chaos.kills, cloud.chaos.interruptions
    return result


def _end_times(cloud: LocalCloud, run_id: str) -> tuple[float | None, float | None]:
    """When the run's last output was written (its workers' logs) and its last instance terminated."""
    cluster = f"spotfill-{run_id}"
    last_output = None
    for log_path in (cloud.run_dir / "logs" / cluster).glob("*.log"):
        for line in log_path.read_text(errors="replace").splitlines():
            if '"shard_done"' not in line:
                continue
            try:
                stamp = float(json.loads(line)["time"])
            except (ValueError, KeyError, TypeError):
                continue
            last_output = stamp if last_output is None else max(last_output, stamp)
    cloud.wait_idle()
    clusters = cloud.agent.instance_clusters if cloud.agent else {}
    ended = [
        m.terminated_at
        for m in (cloud.fleet.machines.values() if cloud.fleet else [])
        if clusters.get(m.instance_id) == cluster and m.terminated_at is not None
    ]
    return last_output, (max(ended) if ended else None)


def download_outputs(
    cloud: LocalCloud,
    spec: dict[str, Any],
    shards: list[Path],
    input_dir: Path,
    output_dir: Path,
    model: LocalModel | None = None,
) -> dict[str, Path]:
    """One output file per input shard, named after it, under output_dir. Shards without an output (failed:
    the report says why) are left out; an output that cannot be downloaded is an error naming it and the
    reason, raised once every other output is downloaded."""
    outputs, failures = fetch_outputs(cloud, spec, shards, input_dir, output_dir, model)
    if failures:
        raise CliError(_failures_sentence(list(failures.values()), output_dir))
    return outputs


def fetch_outputs(
    cloud: LocalCloud,
    spec: dict[str, Any],
    shards: list[Path],
    input_dir: Path,
    output_dir: Path,
    model: LocalModel | None = None,
) -> tuple[dict[str, Path], dict[str, str]]:
    """The outputs downloaded (input shard name -> file) and, for each that exists but could not be
    downloaded, input shard name -> `output name (reason)`; each downloaded output recorded as `model`'s
    (`spotfill.model_record`)."""
    from botocore.exceptions import ClientError

    s3 = cloud.client("s3")
    bucket, prefix = spec["output"]["uri"][len("s3://") :].split("/", 1)
    outputs: dict[str, Path] = {}
    failures: dict[str, str] = {}
    for shard in shards:
        relative = shard.relative_to(input_dir).as_posix()
        name = output_name(relative, spec["input"]["format"], spec["output"]["format"])
        target = output_dir / name
        try:
            s3.head_object(Bucket=bucket, Key=prefix + name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                continue  # no output: the shard failed or was not processed
            failures[relative] = f"{name} ({_reason(exc)})"
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, prefix + name, str(target))
        except Exception as exc:
            failures[relative] = f"{name} ({_reason(exc)})"
            continue
        outputs[relative] = target
    if model is not None:
        record_models(output_dir, (t.relative_to(output_dir).as_posix() for t in outputs.values()), model)
    return outputs, failures


def write_report(result: LocalRunResult, output_dir: Path, page: Path | None = None) -> list[Path]:
    """The run's report, which would go with its local cloud: the HTML page at `page` (default: beside the
    output folder, `<folder>-report-<run id>.html`) and the JSON report beside it (`.json`). Returns the files
    written; none without a report."""
    run_id = (result.report or {}).get("run_id")
    if not result.report or not run_id:
        return []
    page = page or output_dir.parent / f"{output_dir.name}-report-{run_id}.html"
    document = page.with_suffix(".json")
    try:
        page.parent.mkdir(parents=True, exist_ok=True)
        document.write_text(json.dumps(result.report, indent=2, default=str) + "\n", encoding="utf-8")
        if result.report_page is None:
            return [document]
        page.write_text(result.report_page, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write the run's report to {page}: {exc.strerror or exc}") from None
    return [page, document]


def _reason(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code')}: {error.get('Message')}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _failures_sentence(failures: list[str], output_dir: Path) -> str:
    shown = "; ".join(failures[:5]) + (f"; and {len(failures) - 5} more" if len(failures) > 5 else "")
    return f"{len(failures)} output(s) could not be written to {output_dir}: {shown}"


def run_local(
    model_path: Path,
    input_dir: Path,
    output_dir: Path,
    *,
    input_format: str,
    output_format: str,
    instances: int,
    chaos: ChaosSpec | None,
    console: Console,
    name: str = "local",
    run_dir: Path | None = None,
    keep_run_dir: bool = False,
    overwrite: bool = False,
    port: int | None = None,
    timeout: float | None = None,
    max_total_usd: float | None = None,
    finish_by: str | None = None,
    runtime: str = "auto",
    precision: str = "fp32",
    tfrecord: dict[str, Any] | None = None,
    before_trigger: BeforeTrigger | None = None,
) -> LocalRunResult:
    """Run the backfill of input_dir's shards into output_dir. Shards whose output there is already complete
    are skipped unless `overwrite`. `finish_by` is the run's `limits.finish_by`: a deadline Validate would
    refuse (past, beyond the runtime) is refused before anything starts. SIGTERM and SIGHUP end it as Ctrl-C
    does: the outputs finished so far are downloaded, then the local cloud and its workers are torn down, and
    KeyboardInterrupt propagates."""
    check_finish_by(finish_by, datetime.now(UTC))
    if not model_path.is_file():
        raise CliError(f"model file {model_path} does not exist")
    if not model_path.name.endswith((".keras", ".tar.gz", ".tgz")):
        raise CliError(f"model {model_path} must be a .keras file or a SavedModel .tar.gz archive")
    if output_format not in OUTPUT_EXTENSIONS:
        raise CliError(f"unknown output format {output_format!r}; use one of {', '.join(OUTPUT_EXTENSIONS)}")
    if instances < 1:
        raise CliError("--instances must be at least 1")
    if port is not None:
        try:
            check_port_free(port)
        except OSError as exc:
            raise CliError(f"cannot start the local cloud: {exc}") from None
    shards = input_shards(input_dir, input_format)
    check_output_dir(output_dir, input_dir)
    try:
        model = LocalModel.of(model_path)
        plan = plan_outputs(shards, input_dir, output_dir, input_format, output_format, overwrite, model)
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    _say_plan(console, plan, output_dir, len(shards))
    if not plan.to_run:
        snapshot = Snapshot("", status="SUCCEEDED")
        return LocalRunResult("", snapshot, None, outputs=dict(plan.complete), skipped=dict(plan.complete))
    with termination_as_interrupt() as check:
        check_model_and_shards(model_path, plan.to_run, input_format, tfrecord)
        check()
        make_output_dir(output_dir)
        return _run_in_local_cloud(
            model_path,
            input_dir,
            output_dir,
            plan,
            input_format=input_format,
            output_format=output_format,
            instances=instances,
            chaos=chaos,
            console=console,
            name=name,
            options=LocalCloudOptions(port=port, chaos=chaos, run_dir=run_dir, keep_run_dir=keep_run_dir),
            timeout=timeout,
            max_total_usd=max_total_usd,
            spec_options={
                "runtime": runtime,
                "precision": precision,
                "tfrecord": tfrecord,
                "finish_by": finish_by,
            },
            before_trigger=before_trigger,
            check=check,
            model=model,
        )


def check_model_and_shards(
    model_path: Path, shards: list[Path], input_format: str, tfrecord: dict[str, Any] | None = None
) -> None:
    """Before anything starts: the model loads as the worker loads it, and the first shard to compute decodes
    and goes through it (a model or shards that can never work cost no local cloud, no upload, no wait)."""
    from spotfill.tensorflow_quiet import import_tensorflow

    import_tensorflow()
    from spotfill_worker.loaded_model import ModelLoadError
    from spotfill_worker.model import SampleMismatchError, check_model_and_sample

    # What TensorFlow writes to the temporary folder meanwhile (autograph's generated code, an unpacked
    # SavedModel) goes into one of this check's own, removed after it: a run leaves nothing in the user's.
    with tempfile.TemporaryDirectory(prefix="spotfill-check-") as scratch:
        saved, tempfile.tempdir = tempfile.tempdir, scratch
        try:
            check_model_and_sample(model_path, shards[0], input_format, tfrecord=tfrecord)
        except (ModelLoadError, SampleMismatchError) as exc:
            raise CliError(str(exc)) from None
        finally:
            tempfile.tempdir = saved


def _say_plan(console: Console, plan: OutputPlan, output_dir: Path, total: int) -> None:
    if plan.complete:
        console.print(
            f"{len(plan.complete)} of {total} shard(s) already have a complete output in {output_dir}: "
            "skipped (--overwrite computes them again)"
        )
    if plan.incomplete:
        console.print(
            f"{len(plan.incomplete)} output(s) in {output_dir} are incomplete and will be computed again: "
            + ", ".join(plan.incomplete[:5])
            + (" ..." if len(plan.incomplete) > 5 else "")
        )
    if plan.stale:
        names = [p.relative_to(output_dir).as_posix() for p in plan.stale]
        console.print(
            f"{len(names)} file(s) in {output_dir} match no input shard (left alone): "
            + ", ".join(names[:5])
            + (" ..." if len(names) > 5 else "")
        )


def _run_in_local_cloud(
    model_path: Path,
    input_dir: Path,
    output_dir: Path,
    plan: OutputPlan,
    *,
    input_format: str,
    output_format: str,
    instances: int,
    chaos: ChaosSpec | None,
    console: Console,
    name: str,
    options: LocalCloudOptions,
    timeout: float | None,
    max_total_usd: float | None = None,
    spec_options: dict[str, Any] | None = None,
    before_trigger: BeforeTrigger | None = None,
    check: Check = lambda: None,
    model: LocalModel | None = None,
) -> LocalRunResult:
    shards = plan.to_run
    started = time.monotonic()
    with console.status("starting the local cloud (moto, the stack, the EC2/ECS physics)"):
        cloud = LocalCloud(options).__enter__()
    spec: dict[str, Any] | None = None
    try:
        check()
        kept = "removed at the end; --keep-run-dir keeps it" if cloud.removes_run_dir else "kept"
        logs = cloud.run_dir / "logs"
        console.print(f"local cloud at {cloud.endpoint_url}; worker logs in {logs} ({kept})")
        model_name = "model.tar.gz" if model_path.name.endswith((".tar.gz", ".tgz")) else "model.keras"
        spec = manifest(
            name,
            cloud.outputs.data_bucket,
            f"models/{name}/{model_name}",
            input_format,
            output_format,
            instances,
            max_total_usd=max_total_usd,
            **(spec_options or {}),
        )
        with console.status(f"uploading the model and {len(shards)} shards, then the manifest"):
            execution_arn = upload_and_trigger(cloud, spec, model_path, shards, input_dir, before_trigger)
        check()
        console.print(f"execution {execution_arn.rsplit(':', 1)[-1]} started by the manifest upload")
        result = follow_run(cloud, execution_arn, console, timeout=timeout, check=check)
        outputs, failures = fetch_outputs(cloud, spec, shards, input_dir, output_dir, model)
        result.outputs = {**plan.complete, **outputs}
        result.skipped = dict(plan.complete)
        # Each missing output once, with its own reason: one that exists but could not be downloaded (a full
        # disk) is not also one the run never wrote.
        result.missing = list(failures.values())
        if result.succeeded:
            result.missing += [
                f"{output_name(relative, input_format, output_format)} "
                "(the run succeeded but wrote no such output)"
                for relative in (s.relative_to(input_dir).as_posix() for s in shards)
                if relative not in outputs and relative not in failures
            ]
        cloud.wait_idle()
        result.leftovers = cloud.leftovers()
        result.wall_seconds = time.monotonic() - started
        result.run_dir = None if cloud.removes_run_dir else cloud.run_dir
        check()
        return result
    except KeyboardInterrupt:
        if spec is not None:
            _keep_finished_outputs(cloud, spec, shards, input_dir, output_dir, console, model)
        raise
    finally:
        cloud.__exit__(None, None, None)


def _keep_finished_outputs(
    cloud: LocalCloud,
    spec: dict[str, Any],
    shards: list[Path],
    input_dir: Path,
    output_dir: Path,
    console: Console,
    model: LocalModel | None = None,
) -> None:
    """Interrupted: download the outputs written so far, so a re-run computes only the rest."""
    outputs, failures = fetch_outputs(cloud, spec, shards, input_dir, output_dir, model)
    console.print(
        f"interrupted: {len(outputs)} finished output(s) of {len(shards)} downloaded to {output_dir}; "
        "a re-run computes the rest"
    )
    if failures:
        console.print(_failures_sentence(list(failures.values()), output_dir), markup=False)
