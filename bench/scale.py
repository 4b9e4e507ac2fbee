"""The scale rehearsal (`make bench-scale`): one whole run through the real handlers and boto3, locally.

    .venv/bin/python -m bench.scale [--shards 1000000] [--instances 1000] [--poisoned 2000]
        [--interruptions 20] [--shards-per-poll N] [--part-size N] [--timeout STAGE=SECONDS]
        [--calibrate-shards N] [--tracemalloc]

The handlers (functions/spotfill_control/handlers/*.handler) run unchanged, in the order the state machine
runs them: Validate, PrepareRun (called again while it returns the run with phase "preparing"),
HasPendingShards, RequestFleet, CheckRegistration until registered, ScaleService, Monitor until done,
Teardown, Report. Their boto3 clients talk over HTTP to moto's server in a process of its own
(`bench.scale_emulator`, whose in-memory SQS, S3 and EC2 tag backends are patched to scale). Between Monitor
polls a fleet of light stand-in workers (`bench.scale_world.StandInFleet`, one per emulated instance, no
TensorFlow) processes shards through the worker's S3 and SQS calls; some instances are reclaimed mid-shard,
some shards are poisoned.

For each stage: wall time, CPU time of the bench's process during the call, peak memory, AWS calls by
operation (a botocore `before-call` hook on the handlers' session), and each projected to Lambda at the
function's MemorySize in template.yaml: Lambda gives a function MemorySize / 1,769 MB of one vCPU, so a call's
CPU seconds here take CPU x max(1, 1769 / MemorySize) there (single-threaded code uses at most one vCPU), plus
`--call-latency-ms` per AWS call for the round trips the loopback endpoint does not have. A stage is flagged
when its projection exceeds half the function's Timeout or its memory exceeds half its MemorySize. Measured at
`--shards`; the stages that loop within a budget (PrepareRun's parts, the Monitor's verification, the
dead-letter drain) are projected per unit of work and counted in invocations at 1M and 10M
(`bench.scale_bounded`, the results' `bounded`; `--part-size` gives a small run several parts); the others'
figures are also fitted in shards to 1M and 10M (`extrapolated`).

Checks at the end: every shard has exactly one output, the queues, fleet and cluster are gone, the report is
written and its counts equal the truth. Results go to `--results` (bench/scale_results.json by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.scale_measure import STAGES, CallCounter, Harness, WorkSpy
from bench.scale_report import results, table

MAX_REGISTRATION_POLLS = 50
MAX_PREPARE_CALLS = 10_000
RESULTS = Path(__file__).with_name("scale_results.json")
WARM_CLIENTS = (
    "s3",
    "sqs",
    "ec2",
    "ecs",
    "iam",
    "ssm",
    "events",
    "sns",
    "ecr",
    "pricing",
    "cloudwatch",
    "service-quotas",
    "stepfunctions",
)


class RehearsalError(RuntimeError):
    """The run did not go as a run must (a stage looped too long, a check failed)."""


@dataclass
class Options:
    shards: int = 1_000_000
    instances: int = 1_000
    poisoned: int = 2_000
    interruptions: int = 20
    shards_per_poll: int | None = None  # None: about 30 polls' worth
    poll_seconds: int = 60
    visibility_timeout: int = 120
    call_latency_ms: float = 5.0
    tracemalloc: bool = False
    calibrate_shards: int | None = None  # a first, smaller run for the fixed-plus-per-shard fit
    part_size: int | None = None  # shards per part of the shard list (None: shards.PART_SIZE, 50,000)
    timeouts: dict[str, int] = dataclasses.field(default_factory=dict)  # stage -> Timeout s, for the context
    results: Path | None = RESULTS
    quiet: bool = False
    stand_in_calls: str = "boto3"  # or "backend": the stand-ins' own calls on moto's backends, not boto3


def rehearse(options: Options) -> dict[str, Any]:
    """Run the whole rehearsal (first at `options.calibrate_shards`, when set, for the fit); returns the
    results (also written to `options.results` when set)."""
    started = time.perf_counter()
    calibration = None
    if options.calibrate_shards:
        small = dataclasses.replace(
            options,
            shards=options.calibrate_shards,
            poisoned=max(1, options.poisoned * options.calibrate_shards // options.shards)
            if options.poisoned
            else 0,
            shards_per_poll=None
            if options.shards_per_poll is None
            else max(1, options.shards_per_poll * options.calibrate_shards // options.shards),
        )
        _log(options, f"calibration at {small.shards:,} shards")
        calibration = _rehearse_once(small)
        if options.results is not None:  # kept should the run at full size not finish
            options.results.write_text(json.dumps({"calibration_only": calibration}, indent=2) + "\n")
        if not calibration["checks"]["passed"]:
            raise RehearsalError(f"the calibration run at {small.shards:,} shards failed its checks")
    _log(options, f"rehearsal at {options.shards:,} shards")
    result = _rehearse_once(options, calibration)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    if options.results is not None:
        options.results.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _rehearse_once(options: Options, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    from spotfill_control import shards as shard_list

    from bench.scale_world import Emulator, build_world, client_environment

    started = time.perf_counter()
    saved = dict(os.environ)
    saved_part_size = shard_list.PART_SIZE
    try:
        # The handlers read shards.PART_SIZE when called (prepare.queue_and_store_shards, the Monitor's
        # settling ahead), so a smaller part makes a small run one of several parts.
        if options.part_size:
            shard_list.PART_SIZE = options.part_size
        with Emulator() as emulator:
            os.environ.update(client_environment(emulator.endpoint_url))
            build_world(emulator, options.shards)
            setup_s = time.perf_counter() - started
            result = _run(options, emulator, calibration)
            result["setup_seconds"] = round(setup_s, 1)
            result["emulator_rss_mib"] = round(emulator.call("memory") / 2**20, 1)
            result["emulator_seconds_by_request"] = emulator.call("served")
            result["seconds"] = round(time.perf_counter() - started, 1)
    finally:
        shard_list.PART_SIZE = saved_part_size
        os.environ.clear()
        os.environ.update(saved)
        _forget_clients()
    return result


def _forget_clients() -> None:
    import boto3
    from spotfill_control import aws
    from spotfill_control.config import settings

    aws.reset_clients()
    settings.cache_clear()
    boto3.DEFAULT_SESSION = None


def _run(options: Options, emulator: Any, calibration: dict[str, Any] | None) -> dict[str, Any]:
    import boto3
    from spotfill_control import aws
    from spotfill_control.config import settings

    _forget_clients()
    boto3.setup_default_session()
    counter = CallCounter()
    boto3.DEFAULT_SESSION.events.register("before-call", counter.before)
    boto3.DEFAULT_SESSION.events.register("after-call", counter.after)
    aws.reset_clients()
    settings.cache_clear()
    # The handlers' cached clients are made now: loading the service models is the runtime's baseline, not
    # any stage's work.
    for service in WARM_CLIENTS:
        aws.client(service)
    spy = WorkSpy(counter)
    harness = Harness(
        counter, tracemalloc=options.tracemalloc, quiet=options.quiet, spy=spy, timeouts=options.timeouts
    )
    spy.install()
    try:
        return _stages(options, emulator, calibration, harness)
    finally:
        spy.uninstall()


def _stages(
    options: Options, emulator: Any, calibration: dict[str, Any] | None, harness: Harness
) -> dict[str, Any]:
    import boto3

    from bench.scale_world import DATA_BUCKET, MODEL_KEY, input_key, spec

    shards, instances = options.shards, options.instances
    poisoned_count = min(options.poisoned, shards)
    step = max(1, shards // max(1, poisoned_count))
    poisoned = {f"s3://{DATA_BUCKET}/{input_key(i)}" for i in range(0, shards, step)}
    poisoned = set(sorted(poisoned)[:poisoned_count])
    per_poll = options.shards_per_poll or max(1_000, -(-shards // 30))

    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    event = {
        "input": spec(instances, options.poll_seconds),
        "execution_arn": "arn:aws:states:us-east-1:123456789012:execution:spotfill-backfill:scale",
        "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:spotfill-backfill",
        "started_at": now,
    }
    _log(options, f"rehearsal: {shards:,} shards, {instances:,} instances, {len(poisoned):,} poisoned")
    run = harness.call("Validate", event)["run"]
    run = prepare(harness.call, run)
    if run["progress"]["state"] == "done":
        raise RehearsalError("PrepareRun found no pending shards: the rehearsal needs work to do")
    run = harness.call("RequestFleet", {"run": run})
    etag = boto3.client("s3").head_object(Bucket=DATA_BUCKET, Key=MODEL_KEY)["ETag"].strip('"')
    emulator.call(
        "start_fleet", run, sorted(poisoned), options.visibility_timeout, etag, options.stand_in_calls
    )
    fleet = FleetHandle(emulator)
    for _ in range(MAX_REGISTRATION_POLLS):
        fleet.sync()
        run = harness.call("CheckRegistration", {"run": run})
        if run["phase"] == "registered":
            break
    else:
        raise RehearsalError(f"no instance registered after {MAX_REGISTRATION_POLLS} CheckRegistration polls")
    run = harness.call("ScaleService", {"run": run})

    interruption_polls = _interruption_schedule(options, per_poll)
    polls = 0
    poll_limit = 10 + 3 * (-(-shards // per_poll)) + 4 * options.visibility_timeout // options.poll_seconds
    while True:
        fleet.sync()
        if polls in interruption_polls:
            rounds = len(interruption_polls)
            index = interruption_polls.index(polls)
            fleet.interrupt(
                options.interruptions * (index + 1) // rounds - options.interruptions * index // rounds
            )
        fleet.work(per_poll)
        emulator.call("advance", options.poll_seconds)
        run = harness.call("Monitor", {"run": run})
        polls += 1
        state = run["progress"]["state"]
        if state == "done":
            break
        if state == "handover":
            raise RehearsalError(
                "the Monitor asked for a handover (ContinueAsNew), which the rehearsal does not run"
            )
        if polls >= poll_limit:
            raise RehearsalError(f"the run was not done after {polls} Monitor polls")
    torn_down = harness.call("Teardown", {"run": run})
    fleet.sync()
    summary = harness.call("Report", {"run": torn_down})
    checks = _check(options, run, torn_down, summary, fleet, poisoned)
    return results(options, harness, fleet, checks, polls, per_poll, len(poisoned), calibration)


def prepare(call: Callable[[str, dict[str, Any]], Any], run: dict[str, Any]) -> dict[str, Any]:
    """PrepareRun until done with preparing: a run it returns with phase "preparing" has more to prepare, and
    the state machine calls it again with that run (each call is one measured invocation)."""
    for _ in range(MAX_PREPARE_CALLS):
        run = call("PrepareRun", {"run": run})
        if run.get("phase") != "preparing":
            return run
    raise RehearsalError(f"PrepareRun still returned phase 'preparing' after {MAX_PREPARE_CALLS} calls")


class FleetHandle:
    """The stand-in fleet in the emulator's process, called over its pipe."""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator

    def sync(self) -> None:
        self.emulator.call("fleet", "sync")

    def work(self, shards: int) -> int:
        return int(self.emulator.call("fleet", "work", shards))

    def interrupt(self, count: int) -> list[str]:
        return list(self.emulator.call("fleet", "interrupt", count))

    def check(self, shards: int) -> dict[str, Any]:
        return dict(self.emulator.call("fleet", "check", shards))

    def tally(self) -> dict[str, int]:
        return dict(self.emulator.call("fleet", "tally"))


def _interruption_schedule(options: Options, per_poll: int) -> list[int]:
    """The Monitor polls before which instances are reclaimed: spread over the first two thirds of the run."""
    if options.interruptions <= 0:
        return []
    window = max(1, -(-options.shards // per_poll) * 2 // 3)
    rounds = min(options.interruptions, window)
    return [(i * window) // rounds for i in range(rounds)]


def _log(options: Options, line: str) -> None:
    if not options.quiet:
        print(line, file=sys.stderr, flush=True)


def _check(
    options: Options,
    run: dict[str, Any],
    torn_down: dict[str, Any] | None,
    summary: dict[str, Any],
    fleet: Any,
    poisoned: set[str],
) -> dict[str, Any]:
    """The exactness checks: outputs, nothing left behind, the report and its counts."""
    import boto3
    from botocore.exceptions import ClientError

    from bench.scale_world import CONTROL_BUCKET

    s3, sqs, ecs, ec2 = (boto3.client(n) for n in ("s3", "sqs", "ecs", "ec2"))
    checks: dict[str, Any] = fleet.check(options.shards)
    resources = run["resources"]
    queues_left = []
    for url in (resources.get("queue_url"), resources.get("dead_letter_queue_url")):
        if not url:
            continue
        try:
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            queues_left.append(url)
        except ClientError:
            pass
    clusters = ecs.describe_clusters(clusters=[resources["cluster_name"]])["clusters"]
    cluster_left = [c["clusterName"] for c in clusters if c.get("status") == "ACTIVE"]
    alive = []
    for page in ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    ):
        alive.extend(i["InstanceId"] for r in page["Reservations"] for i in r["Instances"])
    checks.update(
        {
            "queues_left": queues_left,
            "cluster_left": cluster_left,
            "instances_left": len(alive),
            "nothing_left_behind": not queues_left and not cluster_left and not alive,
        }
    )
    try:
        report = json.loads(
            s3.get_object(Bucket=CONTROL_BUCKET, Key=f"reports/{run['run_id']}.json")["Body"].read()
        )
    except ClientError:
        report = None
    counts = (report or {}).get("shards", {})
    checks.update(
        {
            "report_written": report is not None,
            "report_status": (report or {}).get("status"),
            "report_succeeded": counts.get("succeeded"),
            "report_failed": counts.get("failed"),
            "report_counts_true": counts.get("succeeded") == options.shards - len(poisoned)
            and counts.get("failed") == len(poisoned),
            "teardown_returned_run": torn_down is not None,
            "report_summary_status": summary.get("status") if isinstance(summary, dict) else None,
        }
    )
    checks["passed"] = all(
        checks[k]
        for k in (
            "every_shard_one_output",
            "no_output_for_poisoned",
            "nothing_left_behind",
            "report_written",
            "report_counts_true",
            "teardown_returned_run",
        )
    )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=Options.shards)
    parser.add_argument("--instances", type=int, default=Options.instances)
    parser.add_argument("--poisoned", type=int, default=Options.poisoned)
    parser.add_argument(
        "--interruptions", type=int, default=Options.interruptions, help="instances reclaimed"
    )
    parser.add_argument("--shards-per-poll", type=int, default=None, help="the fleet's work between polls")
    parser.add_argument("--poll-seconds", type=int, default=Options.poll_seconds)
    parser.add_argument(
        "--part-size",
        type=int,
        default=None,
        help="shards per part of the shard list (default: spotfill_control.shards.PART_SIZE, 50,000); "
        "smaller "
        "parts give a small run several, to measure the cost per part",
    )
    parser.add_argument("--call-latency-ms", type=float, default=Options.call_latency_ms)
    parser.add_argument("--tracemalloc", action="store_true", help="peak memory by tracemalloc (slower)")
    parser.add_argument(
        "--calibrate-shards",
        type=int,
        default=None,
        help="first run the rehearsal at this many shards, to fit each stage as fixed + per-shard cost "
        "(default: a tenth of --shards; 0: no calibration, extrapolate in proportion)",
    )
    parser.add_argument(
        "--timeout",
        action="append",
        default=[],
        metavar="STAGE=SECONDS",
        help="the Timeout the Lambda context of STAGE starts from, instead of template.yaml's, so the "
        "stage's budget binds at a small size (e.g. PrepareRun=0: one part per call); repeatable",
    )
    parser.add_argument(
        "--stand-in-calls",
        choices=("boto3", "backend"),
        default=Options.stand_in_calls,
        help="how the stand-in workers take shards and write outputs: boto3 clients served in the emulator's "
        "process (default), or the same operations on moto's backends directly (a few milliseconds a shard "
        "less: for a million shards); the handlers always use boto3 over HTTP",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for name in ("shards", "instances"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, not {getattr(args, name)}")
    for name in ("poisoned", "interruptions"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must not be negative, not {getattr(args, name)}")
    if args.poisoned >= args.shards:
        parser.error(f"--poisoned ({args.poisoned}) must be fewer than --shards ({args.shards})")
    for name in ("shards_per_poll", "poll_seconds", "part_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if args.calibrate_shards is not None and not 0 <= args.calibrate_shards < args.shards:
        parser.error(
            f"--calibrate-shards ({args.calibrate_shards}) must be 0 (none) or fewer than "
            f"--shards ({args.shards})"
        )
    timeouts = {}
    for item in args.timeout:
        stage, _, seconds = item.partition("=")
        if stage not in STAGES or not seconds.isdigit():
            parser.error(
                f"--timeout {item!r} must be STAGE=SECONDS with STAGE one of {', '.join(STAGES)} and SECONDS "
                "a whole number of 0 or more"
            )
        timeouts[stage] = int(seconds)
    options = Options(
        shards=args.shards,
        instances=args.instances,
        poisoned=args.poisoned,
        interruptions=args.interruptions,
        shards_per_poll=args.shards_per_poll,
        poll_seconds=args.poll_seconds,
        call_latency_ms=args.call_latency_ms,
        tracemalloc=args.tracemalloc,
        calibrate_shards=args.shards // 10 if args.calibrate_shards is None else args.calibrate_shards,
        part_size=args.part_size,
        timeouts=timeouts,
        results=args.results,
        stand_in_calls=args.stand_in_calls,
    )
    result = rehearse(options)
    print(table(result))
    return 0 if result["checks"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
