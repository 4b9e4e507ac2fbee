"""`spotfill`: run backfills on the local cloud or on AWS, and follow them.

Errors are one sentence on stderr and a non-zero exit status; `SPOTFILL_DEBUG=1` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console

from spotfill.runs import DEFAULT_STACK_NAME, CliError

DEFAULT_LOCAL_PORT = 4599

console = Console()
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


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
    from spotfill.demo import run_demo

    ok, _ = run_demo(
        console,
        work_dir=Path(args.work_dir) if args.work_dir else None,
        shards=args.shards,
        rows_per_shard=args.rows_per_shard,
        instances=args.instances,
        chaos=_chaos(args.chaos),
        port=args.port,
    )
    return 0 if ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        raise CliError(
            "spotfill run needs --local; against AWS, upload your data and use `spotfill start --input FILE`"
        )
    from spotfill.localrun import run_local
    from spotfill.progress_display import report_table

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
        port=args.port,
    )
    if result.report:
        console.print(report_table(result.report))
    console.print(f"{len(result.outputs)} output file(s) in {args.output}")
    if not result.succeeded:
        reason = (result.report or {}).get("reason") or result.snapshot.error or result.snapshot.status
        raise CliError(f"the run ended {result.status}: {reason}")
    return 0


def cmd_local_up(args: argparse.Namespace) -> int:
    from spotfill.localcloud import LocalCloud, LocalCloudOptions

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
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
    from spotfill.runs import read_report

    session = _session(args)
    stack = session.stack(args.stack)
    report = read_report(session, stack, args.run)
    if report is None:
        raise CliError(f"no report for run {args.run!r} in s3://{stack.control_bucket}/reports/")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        console.print(report_table(report))
    return 0 if report.get("status") == "succeeded" else 3


def cmd_redrive(args: argparse.Namespace) -> int:
    from spotfill.runs import redrive

    session = _session(args)
    stack = session.stack(args.stack)
    execution_arn = redrive(session, stack, args.run)
    print(execution_arn, flush=True)
    return _watch(session, stack, execution_arn) if args.watch else 0


# --- parser -----------------------------------------------------------------------------------------------


def _aws_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", help="AWS endpoint (default: $AWS_ENDPOINT_URL, else real AWS)")
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--stack", default=DEFAULT_STACK_NAME, help="the spotfill stack's name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spotfill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="a whole backfill on the local cloud, checked against model.predict")
    demo.add_argument("--shards", type=int, default=50)
    demo.add_argument("--rows-per-shard", type=int, default=2000)
    demo.add_argument("--instances", type=int, default=2)
    demo.add_argument(
        "--chaos",
        help="kill=K,interrupt=I,conflict=C: kill workers, interrupt instances and answer C output writes "
        "with 409 ConditionalRequestConflict during the run",
    )
    demo.add_argument(
        "--work-dir", help="where data, outputs and worker logs go (default: a temporary folder)"
    )
    demo.add_argument("--port", type=int, help="the emulator's port (default: any free one)")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run your model over your shards")
    run.add_argument("--local", action="store_true", help="on the local cloud (required for now)")
    run.add_argument("--model", required=True, help=".keras file or SavedModel .tar.gz")
    run.add_argument("--input", required=True, help="folder of input shards")
    run.add_argument("--output", required=True, help="folder for the outputs (one file per input shard)")
    run.add_argument(
        "--input-format", default="npy", choices=["npy", "npz", "parquet", "csv", "jsonl", "images"]
    )
    run.add_argument("--output-format", default="parquet", choices=["parquet", "npy", "jsonl"])
    run.add_argument("--instances", type=int, default=2)
    run.add_argument("--chaos", help="kill=K,interrupt=I,conflict=C")
    run.add_argument("--name", default="local", help="the backfill's name")
    run.add_argument("--port", type=int)
    run.set_defaults(func=cmd_run)

    local = sub.add_parser("local", help="the local cloud")
    local_sub = local.add_subparsers(dest="local_command", required=True, metavar="COMMAND")
    up = local_sub.add_parser("up", help="run the local cloud in the foreground")
    up.add_argument("--port", type=int, default=DEFAULT_LOCAL_PORT)
    up.add_argument("--chaos", help="kill=K,interrupt=I,conflict=C")
    up.add_argument("--run-dir", help="where worker logs go")
    up.set_defaults(func=cmd_local_up)
    outputs = local_sub.add_parser("outputs", help="print the running local cloud's stack outputs as JSON")
    outputs.add_argument("--port", type=int, default=DEFAULT_LOCAL_PORT)
    outputs.add_argument("--region")
    outputs.add_argument("--stack", default=DEFAULT_STACK_NAME)
    outputs.set_defaults(func=cmd_local_outputs)

    start = sub.add_parser("start", help="start a backfill from a spec (JSON)")
    start.add_argument("--input", required=True, help="the backfill spec as a JSON file")
    start.add_argument("--name", help="execution name")
    start.add_argument("--watch", action="store_true", help="follow it to the end")
    _aws_options(start)
    start.set_defaults(func=cmd_start)

    watch = sub.add_parser("watch", help="follow an execution to its end, then print its report")
    watch.add_argument("execution", help="execution ARN or name")
    _aws_options(watch)
    watch.set_defaults(func=cmd_watch)

    report = sub.add_parser("report", help="print a run's report")
    report.add_argument("run", help="run id")
    report.add_argument("--json", action="store_true")
    _aws_options(report)
    report.set_defaults(func=cmd_report)

    redrive = sub.add_parser("redrive", help="queue a run's dead-lettered shards again, in a new execution")
    redrive.add_argument("run", help="run id")
    redrive.add_argument("--watch", action="store_true")
    _aws_options(redrive)
    redrive.set_defaults(func=cmd_redrive)
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
