"""spotfill: run backfills on the local cloud or on AWS, and follow them.

Errors are one sentence on stderr and a non-zero exit status; `SPOTFILL_DEBUG=1` shows tracebacks. This module
holds what each command does; its arguments, checked as they are parsed, are `spotfill.cli_arguments`'.
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

from spotfill.cli_arguments import TFRECORD_FLAGS
from spotfill.cli_arguments import build_parser as build_arguments
from spotfill.runs import CliError


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


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser, each command bound to what it does."""
    actions = {
        "demo": cmd_demo,
        "run": cmd_run,
        "local up": cmd_local_up,
        "local outputs": cmd_local_outputs,
        "start": cmd_start,
        "watch": cmd_watch,
        "report": cmd_report,
        "plan": cmd_plan,
        "redrive": cmd_redrive,
        "runs": cmd_runs,
    }
    return build_arguments(actions, __doc__.splitlines()[0])


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
