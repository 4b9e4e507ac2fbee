"""spotfill: run backfills on the local cloud or on AWS, and follow them.

Errors are one sentence on stderr and a non-zero exit status; `SPOTFILL_DEBUG=1` shows tracebacks. Arguments
are checked as they are parsed, in the CLI's own terms (the flag and what it accepts); the ranges come from
the spec model (`spotfill_control.spec`), so the CLI and Validate agree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, get_args

from annotated_types import Ge, Gt, Le, Lt, MaxLen
from pydantic import BaseModel
from rich.console import Console
from spotfill_control.spec import (
    BackfillSpec,
    FleetSpec,
    InputFormat,
    ModelRuntime,
    TFRecordDtype,
    TFRecordOptions,
)

from spotfill.runs import DEFAULT_STACK_NAME, CliError

DEFAULT_LOCAL_PORT = 4599


class CliConsole(Console):
    """A Console that hard-wraps only on a terminal. Piped or logged, rich would break every sentence at 80
    columns, mid-path and mid-phrase, and people grep those logs: there a sentence stays on one line (tables
    still lay out to the width). Decided at each print, as the console writes to whatever `sys.stdout` is
    then."""

    @property
    def soft_wrap(self) -> bool:
        return self._soft_wrap or not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        self._soft_wrap = value


console = CliConsole()
err_console = CliConsole(stderr=True, soft_wrap=True, highlight=False)


def _chaos(text: str | None):
    if not text:
        return None
    from spotfill.localcloud.chaos import ChaosSpec, ChaosSpecError

    try:
        return ChaosSpec.parse(text)
    except ChaosSpecError as exc:
        raise CliError(str(exc)) from None


def _session(args: argparse.Namespace):
    from spotfill.runs import Session

    endpoint = getattr(args, "endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL") or None
    return Session(endpoint, getattr(args, "region", None))


# --- commands -----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from spotfill.tensorflow_quiet import import_tensorflow

    chaos = _chaos(args.chaos)
    import_tensorflow(
        verbose=args.verbose
    )  # before anything else loads it: its start-up lines unless --verbose
    from spotfill.demo import run_demo

    ok, _ = run_demo(
        console,
        work_dir=Path(args.work_dir) if args.work_dir else None,
        shards=args.shards,
        rows_per_shard=args.rows_per_shard,
        instances=args.instances,
        chaos=chaos,
        port=args.port,
    )
    return 0 if ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    from spotfill.localrun import run_local, write_report

    result = run_local(
        Path(args.model),
        Path(args.input),
        Path(args.output),
        input_format=args.input_format,
        output_format=args.output_format,
        instances=args.instances,
        chaos=_chaos(args.chaos),
        console=console,
        name=args.name,
        max_total_usd=args.max_total_usd,
        finish_by=args.finish_by,
        port=args.port,
        overwrite=args.overwrite,
        keep_run_dir=args.keep_run_dir,
        runtime=args.runtime,
        precision=args.precision,
        tfrecord=_tfrecord_options(args),
    )
    if result.report:
        console.print(result.report_table())
    written = write_report(result, Path(args.output), Path(args.report) if args.report else None)
    if written:
        console.print(f"report: {' and '.join(str(path) for path in written)}", markup=False)
    kept = f" ({len(result.skipped)} kept from an earlier run)" if result.skipped else ""
    console.print(f"{len(result.outputs)} output file(s) in {args.output}{kept}")
    if result.deadline:
        console.print(f"deadline: {result.deadline}", markup=False)
    logs = (
        f"; worker logs in {result.run_dir / 'logs'}"
        if result.run_dir
        else "; --keep-run-dir keeps the worker logs"
    )
    if result.run_dir:
        console.print(f"the local cloud's folder is kept: {result.run_dir}")
    missing = f"{len(result.missing)} output(s) are missing: {'; '.join(result.missing[:5])}"
    if not result.succeeded:
        if result.missing:
            err_console.print(f"spotfill: {missing}", markup=False)
        raise CliError(f"the run ended {result.status}: {result.reason}{logs}")
    if result.missing:
        raise CliError(missing)
    return 0


def _tfrecord_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """`input.tfrecord` from the --tfrecord-* flags: needed with --input-format tfrecord, refused without."""
    given = [flag for flag in TFRECORD_FLAGS if getattr(args, flag.removeprefix("--").replace("-", "_"))]
    if args.input_format != "tfrecord":
        if given:
            raise CliError(f"{', '.join(given)}: for --input-format tfrecord only, not {args.input_format}")
        return None
    missing = [f for f in ("--tfrecord-feature", "--tfrecord-shape") if f not in given]
    if missing:
        raise CliError(f"--input-format tfrecord needs {' and '.join(missing)} to find each record's input")
    return {
        "feature": args.tfrecord_feature,
        "shape": args.tfrecord_shape,
        "dtype": args.tfrecord_dtype or "float32",
        "compression": args.tfrecord_compression,
    }


def cmd_local_up(args: argparse.Namespace) -> int:
    from spotfill.localcloud import LocalCloud, LocalCloudOptions

    stop = threading.Event()
    # A closed terminal (SIGHUP) stops it as Ctrl-C does: workers stopped, temporary folder removed.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    options = LocalCloudOptions(
        port=args.port, chaos=_chaos(args.chaos), run_dir=Path(args.run_dir) if args.run_dir else None
    )
    try:
        cloud = LocalCloud(options)
        cloud.__enter__()
    except OSError as exc:
        raise CliError(f"cannot start the local cloud: {exc}") from None
    try:
        outputs = cloud.stack_outputs()
        console.print(f"local cloud ready at {cloud.endpoint_url} (worker logs in {cloud.run_dir / 'logs'})")
        print(json.dumps(outputs, indent=2), flush=True)
        # The endpoint answers only requests signed with these (fresh for every `local up`).
        keys = cloud.credentials
        console.print("use it with these credentials (the endpoint refuses any other); Ctrl-C stops it:")
        print(
            f"export AWS_ENDPOINT_URL={cloud.endpoint_url} AWS_ACCESS_KEY_ID={keys.access_key_id} "
            f"AWS_SECRET_ACCESS_KEY={keys.secret_access_key} AWS_SESSION_TOKEN= "
            f"AWS_DEFAULT_REGION={cloud.region}",
            flush=True,
        )
        print("READY", flush=True)
        stop.wait()
    finally:
        console.print("stopping the local cloud")
        cloud.__exit__(None, None, None)
    return 0


def cmd_local_outputs(args: argparse.Namespace) -> int:
    from spotfill.runs import Session

    endpoint = f"http://127.0.0.1:{args.port}"
    if not os.environ.get("AWS_ACCESS_KEY_ID") or not os.environ.get("AWS_SECRET_ACCESS_KEY"):
        raise CliError(
            "spotfill local outputs needs the credentials `spotfill local up` printed "
            "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    session = Session(endpoint, args.region or "us-east-1")
    stack = session.stack(args.stack)
    print(
        json.dumps(
            {
                "Endpoint": endpoint,
                "ControlBucket": stack.control_bucket,
                "DataBucket": stack.data_bucket,
                "StateMachineArn": stack.state_machine_arn,
                **stack.outputs,
            },
            indent=2,
        )
    )
    return 0


def _read_spec(path: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path} is not valid JSON: {exc}") from None


def _check_spec_model(path: str, document: Any) -> None:
    """Before an execution starts: the spec as Validate parses it, refused with Validate's sentence (the
    checks that need the account, the model object and the shards stay Validate's)."""
    from spotfill_control.errors import InvalidSpecError
    from spotfill_control.setup.triggers import spec_from_document

    try:
        spec_from_document(document)
    except InvalidSpecError as exc:
        raise CliError(f"{path}: invalid input: {exc}") from None


def _watch(session, stack, execution_arn: str) -> int:
    from spotfill.progress_display import follow, report_table
    from spotfill.runs import RunWatcher, read_report, report_from_execution_output

    snap = follow(RunWatcher(session, stack, execution_arn), console)
    report = (
        read_report(session, stack, snap.run_id) if snap.run_id else None
    ) or report_from_execution_output(snap.output)
    if report and "run_id" in report:
        console.print(report_table(report))
    if snap.status != "SUCCEEDED" or (report and report.get("status") != "succeeded"):
        reason = (report or {}).get("reason") or snap.error or snap.status.lower()
        raise CliError(
            f"execution {snap.execution_arn.rsplit(':', 1)[-1]} ended {snap.status.lower()}: {reason}"
        )
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from spotfill.runs import start_execution

    spec = _read_spec(args.input)
    _check_spec_model(args.input, spec)
    session = _session(args)
    stack = session.stack(args.stack)
    execution_arn = start_execution(session, stack, spec, name=args.name)
    print(execution_arn, flush=True)
    return _watch(session, stack, execution_arn) if args.watch else 0


def cmd_watch(args: argparse.Namespace) -> int:
    from spotfill.runs import resolve_execution

    session = _session(args)
    stack = session.stack(args.stack)
    return _watch(session, stack, resolve_execution(session, stack, args.execution))


def cmd_report(args: argparse.Namespace) -> int:
    from spotfill.progress_display import report_table
    from spotfill.runs import read_report, report_page

    session = _session(args)
    stack = session.stack(args.stack)
    report = read_report(session, stack, args.run)
    if report is None:
        raise CliError(f"no report for run {args.run!r} in s3://{stack.control_bucket}/reports/")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        console.print(report_table(report))
    if args.html:
        page = Path(args.html)
        page.write_text(report_page(session, stack, report), encoding="utf-8")
        print(f"HTML report written to {page}", file=sys.stderr)  # stdout keeps the JSON alone
    return 0 if report.get("status") == "succeeded" else 3


def cmd_plan(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from spotfill.plan import (
        PlanError,
        make_plan,
        plan_deadline,
        read_spec,
        stack_settings,
        table,
        write_estimate,
    )

    if args.write_estimate and args.spec.startswith("s3://"):
        raise CliError("--write-estimate writes into a local spec file, not an s3:// manifest")
    spec = document = None
    if not args.spec.startswith("s3://"):
        # Read and checked before any AWS client exists: a bad file is its own error, AWS configured or not.
        try:
            document, spec = read_spec(args.spec, s3=None)
        except PlanError as exc:
            raise CliError(str(exc)) from None
    if args.local:
        endpoint = args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or f"http://127.0.0.1:{args.port}"
        from spotfill.runs import Session

        session = Session(endpoint, args.region or "us-east-1")
    else:
        session = _session(args)
    from spotfill.tensorflow_quiet import import_tensorflow

    import_tensorflow()
    stack = session.stack(args.stack)
    settings = stack_settings(
        session.client("stepfunctions"), session.client("lambda"), stack.state_machine_arn
    )

    def say(text: str) -> None:
        if not args.json:
            err_console.print(text)

    try:
        plan = make_plan(
            args.spec,
            session.client,
            settings,
            local=args.local,
            suggest=args.suggest,
            progress=say,
            spec=spec,
        )
    except PlanError as exc:
        raise CliError(str(exc)) from None
    finish_by = args.finish_by or plan.spec.limits.finish_by
    try:
        deadline = None if finish_by is None else plan_deadline(plan, finish_by, datetime.now(UTC))
    except PlanError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        document_out = plan.as_json()
        if deadline is not None:
            document_out["deadline"] = {**vars(deadline), "sentence": deadline.sentence()}
        print(json.dumps(document_out, indent=2, default=str))
    else:
        console.print(table(plan))
        for line in plan.assumptions:
            console.print(f"- {line}", markup=False, highlight=False)
        if deadline is not None:
            console.print(deadline.sentence(), markup=False, highlight=False)
    if args.write_estimate and document is not None:
        write_estimate(Path(args.spec), document, plan)
        say(f"wrote the estimate ({plan.projections[0].instance_type}) into {args.spec}")
    if args.confirm_permissions:
        from spotfill.plan import confirm_permissions

        say("confirming the fleet request's permissions with a DryRun, as the stack's RequestFleet function")
        try:
            say(confirm_permissions(plan.spec, session.client, stack.state_machine_arn))
        except PlanError as exc:
            raise CliError(str(exc)) from None
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    from spotfill.runs import redrive

    session = _session(args)
    stack = session.stack(args.stack)
    execution_arn = redrive(session, stack, args.run, max_total_usd=args.max_total_usd)
    print(execution_arn, flush=True)
    return _watch(session, stack, execution_arn) if args.watch else 0


def cmd_runs(args: argparse.Namespace) -> int:
    from spotfill.progress_display import runs_table
    from spotfill.runs import recent_runs

    session = _session(args)
    stack = session.stack(args.stack)
    console.print(runs_table(recent_runs(session, stack, args.limit)))
    return 0


# --- parser -----------------------------------------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default. An option whose default is None says in its own help what
    leaving it out means (`default: ...`), and a required one has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or "default:" in text
            or action.required
            or not action.option_strings
            or action.default in (None, argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


def _bounds(model: type[BaseModel], field: str) -> tuple[int | None, int | None]:
    """The inclusive range the spec model allows for a whole-number field."""
    low = high = None
    for constraint in model.model_fields[field].metadata:
        if isinstance(constraint, Ge):
            low = int(constraint.ge)
        elif isinstance(constraint, Gt):
            low = int(constraint.gt) + 1
        elif isinstance(constraint, Le):
            high = int(constraint.le)
        elif isinstance(constraint, Lt):
            high = int(constraint.lt) - 1
    return low, high


def _whole_number(low: int | None = None, high: int | None = None, what: str = "") -> Callable[[str], int]:
    """An argparse `type=`: a whole number in [low, high], refused as `argument --flag: must be ...`."""
    span = (
        f"from {low} to {high}"
        if low is not None and high is not None
        else f"at least {low}"
        if low is not None
        else f"at most {high}"
    )
    suffix = f" ({what})" if what else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number {span}{suffix}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {span}{suffix}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def _instances() -> Callable[[str], int]:
    low, high = _bounds(FleetSpec, "target_capacity")
    return _whole_number(low, high, "the fleet's target capacity")


TFRECORD_FLAGS = ("--tfrecord-feature", "--tfrecord-shape", "--tfrecord-dtype", "--tfrecord-compression")


def _tfrecord_shape(text: str) -> list[int]:
    """An argparse `type=` for `--tfrecord-shape` (`28,28,1`), checked as the spec checks its shape."""
    from pydantic import ValidationError

    try:
        shape = [int(part) for part in text.split(",")]
        TFRecordOptions(feature="f", shape=shape)
    except ValueError as exc:
        invalid = isinstance(exc, ValidationError)
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ") if invalid else ""
        raise argparse.ArgumentTypeError(
            f"must be whole numbers separated by commas, e.g. 28,28,1, got {text!r}"
            + (f": {reason}" if reason else "")
        ) from None
    return shape


def _dollar_cap(text: str) -> float:
    """An argparse `type=` for `--max-total-usd`, checked as the spec checks `limits.max_total_usd`."""
    from pydantic import ValidationError
    from spotfill_control.spec import LimitsSpec

    try:
        value = float(text)
        LimitsSpec(max_total_usd=value)
    except (ValueError, ValidationError):
        raise argparse.ArgumentTypeError(
            f"must be a finite number of US dollars greater than 0 (limits.max_total_usd), got {text!r}"
        ) from None
    return value


def _finish_by(text: str) -> str:
    """An argparse `type=` for `--finish-by`, parsed as the spec parses `limits.finish_by` (the command then
    checks it against now and the run's limits, as Validate does)."""
    from spotfill_control.spec import parse_finish_by

    try:
        parse_finish_by(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (limits.finish_by)") from None
    return text


def _backfill_name(text: str) -> str:
    """An argparse `type=` for a backfill's name, checked against the spec's `name` field."""
    field = BackfillSpec.model_fields["name"]
    longest = next(c.max_length for c in field.metadata if isinstance(c, MaxLen))
    pattern = next(c.pattern for c in field.metadata if getattr(c, "pattern", None))
    if len(text) > longest or not re.fullmatch(pattern, text):
        raise argparse.ArgumentTypeError(
            f"must be at most {longest} letters, digits, '_', '.' or '-', starting with a letter or digit "
            f"(the spec's name: {pattern}), got {text!r}"
        )
    return text


# StartExecution's `name`: 1 to 80 characters, none of them white space, brackets, wildcards, these special
# characters or control characters (the Step Functions API reference).
_EXECUTION_NAME_REFUSED = re.compile(r'[\s<>{}\[\]?*"#%\\^|~`$&,;:/\x00-\x1f\x7f-\x9f]')
_EXECUTION_NAME_LONGEST = 80


def _execution_name(text: str) -> str:
    """An argparse `type=` for `start --name`, checked as StartExecution checks it."""
    refused = _EXECUTION_NAME_REFUSED.search(text)
    if not text or len(text) > _EXECUTION_NAME_LONGEST or refused:
        why = f"has {refused.group()!r}" if refused else f"has {len(text)} characters"
        raise argparse.ArgumentTypeError(
            f"must be 1 to {_EXECUTION_NAME_LONGEST} characters with no white space, brackets, wildcards "
            f"or any of \" # % \\ ^ | ~ ` $ & , ; : / (Step Functions' execution names), "
            f"got {text!r}, which {why}"
        )
    return text


_port = _whole_number(1, 65535, "a TCP port")


def _chaos_help() -> str:
    from spotfill.localcloud.chaos import ChaosSpec

    return (
        "kill=K,interrupt=I,conflict=C[,every=SECONDS][,warmup=SECONDS]: kill K workers, interrupt I "
        "instances and answer C output writes with 409 ConditionalRequestConflict during the run, one event "
        f"every= seconds (default: every={ChaosSpec.every:g}) once a worker has been busy warmup= seconds "
        f"(default: warmup={ChaosSpec.warmup:g}); default: no chaos"
    )


def _version() -> str:
    try:
        return version("spotfill")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _aws_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", help="AWS endpoint (default: $AWS_ENDPOINT_URL, else real AWS)")
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--stack", default=DEFAULT_STACK_NAME, help="the spotfill stack's name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spotfill", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(subparsers: Any, name: str, text: str) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)

    from spotfill.demo import DEMO_ROWS_PER_SHARD, DEMO_SHARDS

    chaos_help = _chaos_help()
    demo = command(sub, "demo", "a whole backfill on the local cloud, checked against model.predict")
    demo.add_argument(
        "--shards", type=_whole_number(1), default=DEMO_SHARDS, help="input shards to write and run"
    )
    demo.add_argument(
        "--rows-per-shard", type=_whole_number(1), default=DEMO_ROWS_PER_SHARD, help="digit images per shard"
    )
    demo.add_argument("--instances", type=_instances(), default=2, help="spot instances in the fleet")
    demo.add_argument("--chaos", help=chaos_help)
    demo.add_argument(
        "--work-dir", help="where data, outputs and worker logs go (default: a temporary folder)"
    )
    demo.add_argument("--port", type=_port, help="the emulator's port (default: any free one)")
    demo.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's start-up lines (C++ logging, the oneDNN notice) on stderr",
    )
    demo.set_defaults(func=cmd_demo)

    run = command(sub, "run", "run your model over your shards on the local cloud")
    run.add_argument(
        "--local",
        action="store_true",
        required=True,
        help="on the local cloud; required for now: against AWS, upload your data and use "
        "spotfill start --input SPEC",
    )
    run.add_argument("--model", required=True, help=".keras file or SavedModel .tar.gz")
    run.add_argument("--input", required=True, help="folder of input shards")
    run.add_argument("--output", required=True, help="folder for the outputs (one file per input shard)")
    run.add_argument(
        "--input-format",
        default="npy",
        choices=list(get_args(InputFormat)),
        help="the input shards' format",
    )
    run.add_argument(
        "--tfrecord-feature",
        help="the feature holding the model's input (default: none; needed with --input-format tfrecord)",
    )
    run.add_argument(
        "--tfrecord-shape",
        type=_tfrecord_shape,
        help="the feature's shape per record, e.g. 28,28,1 (default: none; needed with --input-format "
        "tfrecord)",
    )
    run.add_argument(
        "--tfrecord-dtype",
        choices=list(get_args(TFRecordDtype)),
        help="with --input-format tfrecord: float32 (a float_list feature) or int64 (default: float32)",
    )
    run.add_argument(
        "--tfrecord-compression",
        choices=["GZIP"],
        help="with --input-format tfrecord: GZIP for gzip-compressed files, .tfrecord.gz (default: none)",
    )
    run.add_argument(
        "--output-format", default="parquet", choices=["parquet", "npy", "jsonl"], help="the outputs' format"
    )
    run.add_argument(
        "--runtime",
        default="auto",
        choices=list(get_args(ModelRuntime)),
        help="model.runtime: auto picks the fastest runtime whose outputs match TensorFlow's within 1e-5",
    )
    run.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="model.precision: bf16 opts in to faster, less exact outputs on CPUs with bf16 instructions "
        "(fp16 is for GPU fleets; the local cloud's are CPU)",
    )
    run.add_argument("--instances", type=_instances(), default=2, help="spot instances in the fleet")
    run.add_argument("--chaos", help=chaos_help)
    run.add_argument(
        "--max-total-usd",
        type=_dollar_cap,
        help="cap on the whole run's cost in US dollars, limits.max_total_usd (default: no cap)",
    )
    run.add_argument(
        "--finish-by",
        metavar="T",
        type=_finish_by,
        help="a deadline, limits.finish_by: an ISO 8601 time with a zone, or a duration from the run's start "
        "such as PT10M; the monitor keeps the fleet at the capacity that finishes by then, up to --instances "
        "(default: no deadline)",
    )
    run.add_argument("--name", type=_backfill_name, default="local", help="the backfill's name")
    run.add_argument("--port", type=_port, help="the emulator's port (default: any free one)")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="compute every shard again (otherwise shards whose output in --output is complete are skipped)",
    )
    run.add_argument(
        "--keep-run-dir", action="store_true", help="keep the local cloud's temporary folder (worker logs)"
    )
    run.add_argument(
        "--report",
        metavar="FILE",
        help="where the run's report goes as an HTML page, with the JSON report beside it as FILE's .json "
        "(default: beside --output, OUTPUT-report-RUNID.html and .json)",
    )
    run.set_defaults(func=cmd_run)

    local = command(sub, "local", "the local cloud")
    local_sub = local.add_subparsers(dest="local_command", required=True, metavar="COMMAND")
    up = command(local_sub, "up", "run the local cloud in the foreground")
    up.add_argument("--port", type=_port, default=DEFAULT_LOCAL_PORT, help="the emulator's port")
    up.add_argument("--chaos", help=chaos_help)
    up.add_argument("--run-dir", help="where worker logs go (default: a temporary folder)")
    up.set_defaults(func=cmd_local_up)
    outputs = command(local_sub, "outputs", "print the running local cloud's stack outputs as JSON")
    outputs.add_argument("--port", type=_port, default=DEFAULT_LOCAL_PORT, help="the local cloud's port")
    outputs.add_argument("--region", help="AWS region (default: us-east-1)")
    outputs.add_argument("--stack", default=DEFAULT_STACK_NAME, help="the spotfill stack's name")
    outputs.set_defaults(func=cmd_local_outputs)

    start = command(sub, "start", "start a backfill from a spec (JSON)")
    start.add_argument("--input", required=True, help="the backfill spec as a JSON file")
    start.add_argument(
        "--name", type=_execution_name, help="execution name (default: one Step Functions makes up)"
    )
    start.add_argument("--watch", action="store_true", help="follow it to the end")
    _aws_options(start)
    start.set_defaults(func=cmd_start)

    watch = command(sub, "watch", "follow an execution to its end, then print its report")
    watch.add_argument("execution", help="execution ARN or name")
    _aws_options(watch)
    watch.set_defaults(func=cmd_watch)

    report = command(sub, "report", "print a run's report")
    report.add_argument("run", help="run id")
    report.add_argument("--json", action="store_true", help="print the report as JSON rather than a table")
    report.add_argument(
        "--html",
        metavar="FILE",
        help="also write the report as one self-contained HTML page, with charts (default: no page)",
    )
    _aws_options(report)
    report.set_defaults(func=cmd_report)

    plan = command(
        sub, "plan", "what a backfill will cost and how long it will take, measured here, before any spend"
    )
    plan.add_argument(
        "spec", metavar="SPEC", help="the backfill spec: a local JSON file or an s3:// manifest"
    )
    plan.add_argument(
        "--local",
        action="store_true",
        help="against the local cloud (spotfill local up, its credentials in the environment), projected "
        "for its worker processes sharing this machine",
    )
    plan.add_argument(
        "--port", type=_port, default=DEFAULT_LOCAL_PORT, help="with --local: the local cloud's port"
    )
    plan.add_argument(
        "--suggest", action="store_true", help="also project a few other instance types the region offers"
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON rather than a table")
    plan.add_argument(
        "--finish-by",
        metavar="T",
        type=_finish_by,
        help="a deadline (limits.finish_by: an ISO 8601 time with a zone, or a duration from now such as "
        "PT6H): show the capacity the fleet starts with and the projected cost, or why it cannot be met "
        "(default: the spec's limits.finish_by, if it has one)",
    )
    plan.add_argument(
        "--confirm-permissions",
        action="store_true",
        help="also have the stack's RequestFleet function DryRun the fleet request as its own role "
        "(DryRunOperation: allowed), confirming what only a real account can",
    )
    plan.add_argument(
        "--write-estimate",
        action="store_true",
        help="write the best row into SPEC (a local file) as its estimate section, for the report to compare",
    )
    _aws_options(plan)
    plan.set_defaults(func=cmd_plan)

    redrive = command(
        sub, "redrive", "queue a run's dead-lettered and unfinished shards again, in a new execution"
    )
    redrive.add_argument("run", help="run id")
    redrive.add_argument(
        "--max-total-usd",
        type=_dollar_cap,
        help="the new run's dollar cap, limits.max_total_usd (default: the run's own cap, if it had one)",
    )
    redrive.add_argument("--watch", action="store_true", help="follow the new execution to the end")
    _aws_options(redrive)
    redrive.set_defaults(func=cmd_redrive)

    from spotfill.runs import DEFAULT_RUNS_LIMIT

    runs = command(sub, "runs", "recent runs, newest first: state, progress, cost and cost per million")
    runs.add_argument("--limit", type=_whole_number(1), default=DEFAULT_RUNS_LIMIT, help="runs to show")
    _aws_options(runs)
    runs.set_defaults(func=cmd_runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        err_console.print(f"spotfill: error: {exc}", markup=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("spotfill: interrupted")
        return 130
    except Exception as exc:
        if os.environ.get("SPOTFILL_DEBUG"):
            raise
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            message = f"AWS said {error.get('Code')}: {error.get('Message')}"
        elif isinstance(exc, BotoCoreError):
            message = f"AWS could not be reached: {exc}"
        else:
            message = f"{type(exc).__name__}: {exc}"
        err_console.print(f"spotfill: error: {message}", markup=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
