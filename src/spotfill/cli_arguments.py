"""The spotfill CLI's arguments: each command's flags, checked as they are parsed, in the CLI's own terms (the
flag and what it accepts); the ranges come from the spec model (`spotfill_control.spec`), so the CLI and
Validate agree. What each command does is `spotfill.cli`'s.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, get_args

from annotated_types import Ge, Gt, Le, Lt, MaxLen
from pydantic import BaseModel
from spotfill_control.spec import (
    BackfillSpec,
    FleetSpec,
    InputFormat,
    ModelRuntime,
    TFRecordDtype,
    TFRecordOptions,
)

from spotfill.runs import DEFAULT_STACK_NAME

DEFAULT_LOCAL_PORT = 4599

# What a command does: the parsed arguments in, the exit status out.
Action = Callable[[argparse.Namespace], int]


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


def build_parser(actions: Mapping[str, Action], description: str) -> argparse.ArgumentParser:
    """The CLI's parser; each command's `func` is its action in `actions` ("demo", "local up", ...)."""
    parser = argparse.ArgumentParser(prog="spotfill", description=description, formatter_class=_HelpFormatter)
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
    demo.set_defaults(func=actions["demo"])

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
    run.set_defaults(func=actions["run"])

    local = command(sub, "local", "the local cloud")
    local_sub = local.add_subparsers(dest="local_command", required=True, metavar="COMMAND")
    up = command(local_sub, "up", "run the local cloud in the foreground")
    up.add_argument("--port", type=_port, default=DEFAULT_LOCAL_PORT, help="the emulator's port")
    up.add_argument("--chaos", help=chaos_help)
    up.add_argument("--run-dir", help="where worker logs go (default: a temporary folder)")
    up.set_defaults(func=actions["local up"])
    outputs = command(local_sub, "outputs", "print the running local cloud's stack outputs as JSON")
    outputs.add_argument("--port", type=_port, default=DEFAULT_LOCAL_PORT, help="the local cloud's port")
    outputs.add_argument("--region", help="AWS region (default: us-east-1)")
    outputs.add_argument("--stack", default=DEFAULT_STACK_NAME, help="the spotfill stack's name")
    outputs.set_defaults(func=actions["local outputs"])

    start = command(sub, "start", "start a backfill from a spec (JSON)")
    start.add_argument("--input", required=True, help="the backfill spec as a JSON file")
    start.add_argument(
        "--name", type=_execution_name, help="execution name (default: one Step Functions makes up)"
    )
    start.add_argument("--watch", action="store_true", help="follow it to the end")
    _aws_options(start)
    start.set_defaults(func=actions["start"])

    watch = command(sub, "watch", "follow an execution to its end, then print its report")
    watch.add_argument("execution", help="execution ARN or name")
    _aws_options(watch)
    watch.set_defaults(func=actions["watch"])

    report = command(sub, "report", "print a run's report")
    report.add_argument("run", help="run id")
    report.add_argument("--json", action="store_true", help="print the report as JSON rather than a table")
    report.add_argument(
        "--html",
        metavar="FILE",
        help="also write the report as one self-contained HTML page, with charts (default: no page)",
    )
    _aws_options(report)
    report.set_defaults(func=actions["report"])

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
    plan.set_defaults(func=actions["plan"])

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
    redrive.set_defaults(func=actions["redrive"])

    from spotfill.runs import DEFAULT_RUNS_LIMIT

    runs = command(sub, "runs", "recent runs, newest first: state, progress, cost and cost per million")
    runs.add_argument("--limit", type=_whole_number(1), default=DEFAULT_RUNS_LIMIT, help="runs to show")
    _aws_options(runs)
    runs.set_defaults(func=actions["runs"])
    return parser
