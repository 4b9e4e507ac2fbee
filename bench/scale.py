"""The scale rehearsal (`make bench-scale`): one whole run through the real handlers and boto3, locally.

    .venv/bin/python -m bench.scale [--shards 1000000] [--instances 1000] [--poisoned 2000]
        [--interruptions 20] [--shards-per-poll N] [--calibrate-shards N] [--tracemalloc]

The handlers (functions/spotfill_control/handlers/*.handler) run unchanged, in the order the state machine
runs them: Validate, PrepareRun (called again while it returns the run with phase "preparing"),
HasPendingShards, RequestFleet, CheckRegistration until registered, ScaleService, Monitor until done,
Teardown, Report. Their boto3 clients talk over HTTP to moto's server in a process of its own
(`bench.scale_emulator`, whose in-memory SQS, S3 and EC2 tag backends are patched to scale). Between Monitor
polls a fleet of light stand-in workers (`bench.scale_world.StandInFleet`, one per emulated instance, no
TensorFlow) processes shards through the worker's S3 and SQS calls; some instances are reclaimed mid-shard,
some shards are poisoned.

For each stage: wall time, CPU time of the handler's thread, peak memory, AWS calls by operation (a botocore
`before-call` hook on the handlers' session), and each projected to Lambda at the function's MemorySize in
template.yaml: Lambda gives a function MemorySize / 1,769 MB of one vCPU, so a call's CPU seconds here take
CPU x max(1, 1769 / MemorySize) there (single-threaded code uses at most one vCPU), plus `--call-latency-ms`
per AWS call for the round trips the loopback endpoint does not have. A stage is flagged when its projection
exceeds half the function's Timeout or its memory exceeds half its MemorySize. Measured at `--shards`; the
figures are also extrapolated linearly in shards to 1M and 10M (stated in the results as `extrapolated`).

Checks at the end: every shard has exactly one output, the queues, fleet and cluster are gone, the report is
written and its counts equal the truth. Results go to `--results` (bench/scale_results.json by default).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import io
import json
import os
import sys
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAMBDA_MB_PER_VCPU = 1769
RUNTIME_BASELINE_MIB = 100  # the Python runtime with boto3, pydantic and Powertools loaded, before any work
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
# Stages whose work grows with the shards; the others grow with the instances, which the rehearsal runs at
# full size, so their figures are not extrapolated.
SHARD_BOUND = {"Validate", "PrepareRun", "Monitor", "Teardown", "Report"}

# The state machine's Task states, their functions in template.yaml and their handler modules.
STAGES = {
    "Validate": ("ValidateFunction", "validate"),
    "PrepareRun": ("PrepareRunFunction", "prepare_run"),
    "RequestFleet": ("RequestFleetFunction", "request_fleet"),
    "CheckRegistration": ("CheckRegistrationFunction", "check_registration"),
    "ScaleService": ("ScaleServiceFunction", "scale_service"),
    "Monitor": ("MonitorFunction", "monitor"),
    "Teardown": ("TeardownFunction", "teardown"),
    "Report": ("ReportFunction", "report"),
}

# AWS's documented throttles the Monitor's per-poll calls are held against.
# EC2 (request token bucket, per account and Region): non-mutating actions bucket 100, refill 20/s.
# ECS (per account and Region, token bucket): Describe*/List* calls sustained 20/s, burst 50 (most actions).
# S3: 3,500 PUT/COPY/POST/DELETE and 5,500 GET/HEAD requests per second per partitioned prefix.
THROTTLES = {
    "ec2": {"bucket": 100, "per_second": 20},
    "ecs": {"bucket": 50, "per_second": 20},
    "s3_put": {"per_second": 3_500},
    "s3_get": {"per_second": 5_500},
}
S3_PUTS = {"PutObject", "CopyObject", "DeleteObject", "DeleteObjects"}
S3_GETS = {"GetObject", "HeadObject", "ListObjectsV2", "ListObjects"}


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
    results: Path | None = RESULTS
    quiet: bool = False


@dataclass
class Invocation:
    wall_s: float
    cpu_s: float
    peak_bytes: int
    calls: Counter[str]
    call_seconds: Counter[str] = field(default_factory=Counter)


@dataclass
class Stage:
    name: str
    memory_mb: int
    timeout_s: int
    invocations: list[Invocation] = field(default_factory=list)


class CallCounter:
    """Counts the handlers' AWS calls by `service.Operation` while armed (botocore `before-call`), and the
    wall seconds they took (to `after-call`)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.armed = False
        self._started: dict[str, float] = {}

    @staticmethod
    def _name(model: Any) -> str:
        return f"{model.service_model.endpoint_prefix}.{model.name}"

    def before(self, model: Any, **_: Any) -> None:
        if self.armed:
            self.calls[self._name(model)] += 1
            self._started[self._name(model)] = time.perf_counter()

    def after(self, model: Any, **_: Any) -> None:
        started = self._started.pop(self._name(model), None)
        if self.armed and started is not None:
            self.seconds[self._name(model)] += time.perf_counter() - started

    def reset(self) -> None:
        self.calls, self.seconds = Counter(), Counter()


class RssSampler:
    """The process's peak resident set during a call, sampled every few milliseconds from /proc."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _release_freed_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: the RSS delta may then read high
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ProjectedContext:
    """A Lambda context whose remaining time runs down as it would on Lambda: local wall time stretched by the
    CPU share (MemorySize / 1,769 MB of a vCPU) the function gets there."""

    def __init__(self, function_name: str, memory_mb: int, timeout_s: int) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "bench/[$LATEST]scale"
        self._timeout_s = timeout_s
        self._stretch = max(1.0, LAMBDA_MB_PER_VCPU / memory_mb)
        self._started = time.monotonic()

    def get_remaining_time_in_millis(self) -> int:
        elapsed = (time.monotonic() - self._started) * self._stretch
        return max(0, int((self._timeout_s - elapsed) * 1000))


def function_limits() -> dict[str, tuple[int, int]]:
    """Function logical id -> (MemorySize MB, Timeout s), from template.yaml (Globals where it sets none)."""
    from spotfill.deploy import load_template

    template = load_template()
    defaults = template.get("Globals", {}).get("Function", {})
    limits = {}
    for name, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = resource.get("Properties", {})
        memory = int(properties.get("MemorySize", defaults.get("MemorySize", 128)))
        timeout = int(properties.get("Timeout", defaults.get("Timeout", 3)))
        limits[name] = (memory, timeout)
    return limits


class Harness:
    """Runs the handlers one call at a time and measures each call."""

    def __init__(self, options: Options, counter: CallCounter) -> None:
        import importlib

        limits = function_limits()
        self.options = options
        self.counter = counter
        self.stages: dict[str, Stage] = {}
        self.handlers: dict[str, Callable[[dict[str, Any], Any], Any]] = {}
        for stage, (function, module) in STAGES.items():
            memory, timeout = limits[function]
            self.stages[stage] = Stage(stage, memory, timeout)
            self.handlers[stage] = importlib.import_module(f"spotfill_control.handlers.{module}").handler

    def call(self, stage_name: str, event: dict[str, Any]) -> Any:
        stage = self.stages[stage_name]
        context = ProjectedContext(f"spotfill-{stage_name}", stage.memory_mb, stage.timeout_s)
        handler = self.handlers[stage_name]
        _release_freed_memory()
        self.counter.reset()
        self.counter.armed = True
        # stdout swallowed: the Monitor prints its metrics (EMF records) there, as on Lambda
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                if self.options.tracemalloc:
                    tracemalloc.start()
                    wall, cpu = time.perf_counter(), time.thread_time()
                    result = handler(event, context)
                    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                    peak = tracemalloc.get_traced_memory()[1]
                else:
                    with RssSampler() as sampler:
                        before = sampler.peak
                        wall, cpu = time.perf_counter(), time.thread_time()
                        result = handler(event, context)
                        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                    peak = max(0, sampler.peak - before)
            finally:
                tracemalloc.stop()
                self.counter.armed = False
        stage.invocations.append(Invocation(wall, cpu, peak, self.counter.calls, self.counter.seconds))
        if not self.options.quiet:
            print(
                f"  {stage_name:<18} {wall:8.2f} s wall {cpu:8.2f} s CPU {peak / 2**20:8.1f} MiB "
                f"{sum(self.counter.calls.values()):7d} calls",
                file=sys.stderr,
                flush=True,
            )
        return result


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
        if not calibration["checks"]["passed"]:
            raise RehearsalError(f"the calibration run at {small.shards:,} shards failed its checks")
    _log(options, f"rehearsal at {options.shards:,} shards")
    result = _rehearse_once(options, calibration)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    if options.results is not None:
        options.results.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _rehearse_once(options: Options, calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    from bench.scale_world import Emulator, build_world, client_environment

    started = time.perf_counter()
    saved = dict(os.environ)
    try:
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

    from bench.scale_world import DATA_BUCKET, MODEL_KEY, input_key, spec

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
    harness = Harness(options, counter)
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
    emulator.call("start_fleet", run, sorted(poisoned), options.visibility_timeout, etag)
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
    return _results(options, harness, fleet, checks, polls, per_poll, len(poisoned), calibration)


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


def _projection(stage: Stage, invocation: Invocation, latency_s: float) -> dict[str, Any]:
    share = max(1.0, LAMBDA_MB_PER_VCPU / stage.memory_mb)
    calls = sum(invocation.calls.values())
    seconds = invocation.cpu_s * share + calls * latency_s
    memory_mib = RUNTIME_BASELINE_MIB + invocation.peak_bytes / 2**20
    return {
        "lambda_seconds": round(seconds, 2),
        "lambda_memory_mib": round(memory_mib, 1),
        "over_half_timeout": seconds > stage.timeout_s / 2,
        "over_half_memory": memory_mib > stage.memory_mb / 2,
    }


def _fit(
    worst: Invocation, shards: int, small: dict[str, Any] | None, small_shards: int | None
) -> Callable[[int], Invocation]:
    """The worst invocation's cost at `target` shards: fixed + per-shard from two sizes when a calibration run
    measured the stage (a negative slope counts as flat), otherwise in proportion to shards."""
    if not small or not small_shards or small_shards >= shards:

        def proportional(target: int) -> Invocation:
            k = target / shards
            calls = Counter({op: round(n * k) for op, n in worst.calls.items()})
            return Invocation(worst.wall_s * k, worst.cpu_s * k, int(worst.peak_bytes * k), calls)

        return proportional
    span = shards - small_shards

    def line(big: float, little: float, target: int) -> float:
        slope = max(0.0, (big - little) / span)
        return big + slope * (target - shards)

    def fitted(target: int) -> Invocation:
        little_calls = small.get("aws_calls", {})
        calls = Counter(
            {op: round(line(n, little_calls.get(op, 0), target)) for op, n in worst.calls.items()}
        )
        return Invocation(
            line(worst.wall_s, small["wall_s"], target),
            line(worst.cpu_s, small["cpu_s"], target),
            int(line(worst.peak_bytes, small["peak_mib"] * 2**20, target)),
            calls,
        )

    return fitted


def _monitor_rates(stage: Stage, latency_s: float, poll_seconds: int) -> dict[str, Any]:
    """The busiest Monitor poll's calls against the throttles: per service, the calls in one poll against the
    bucket, and the rate over the poll's projected Lambda time (at least one second) against the refill."""
    worst: dict[str, Any] = {}
    for invocation in stage.invocations:
        seconds = max(1.0, _projection(stage, invocation, latency_s)["lambda_seconds"])
        by = {
            "ec2": sum(n for op, n in invocation.calls.items() if op.startswith("ec2.")),
            "ecs": sum(n for op, n in invocation.calls.items() if op.startswith("ecs.")),
            "s3_put": sum(
                n
                for op, n in invocation.calls.items()
                if op.split(".", 1)[1] in S3_PUTS and op.startswith("s3.")
            ),
            "s3_get": sum(
                n
                for op, n in invocation.calls.items()
                if op.split(".", 1)[1] in S3_GETS and op.startswith("s3.")
            ),
        }
        for api, count in by.items():
            if count >= worst.get(api, {}).get("calls_per_poll", -1):
                worst[api] = {"calls_per_poll": count, "per_second_during_poll": round(count / seconds, 1)}
    for api, figures in worst.items():
        throttle = THROTTLES[api]
        figures["throttle"] = throttle
        figures["per_second_over_interval"] = round(figures["calls_per_poll"] / poll_seconds, 2)
        figures["under_throttle"] = figures["calls_per_poll"] <= throttle.get("bucket", float("inf")) and (
            figures["per_second_during_poll"] <= throttle["per_second"]
        )
    return worst


def _results(
    options: Options,
    harness: Harness,
    fleet: Any,
    checks: dict[str, Any],
    polls: int,
    per_poll: int,
    poisoned: int,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    latency = options.call_latency_ms / 1000.0
    stages = {}
    for name, stage in harness.stages.items():
        if not stage.invocations:
            continue
        worst = max(stage.invocations, key=lambda i: i.cpu_s)
        calls: Counter[str] = Counter()
        for invocation in stage.invocations:
            calls.update(invocation.calls)
        projected = _projection(stage, worst, latency)
        small = (calibration or {}).get("stages", {}).get(name, {}).get("worst_invocation")
        fit = _fit(worst, options.shards, small, (calibration or {}).get("size", {}).get("shards"))
        extrapolated = {}
        for target in (1_000_000, 10_000_000) if name in SHARD_BOUND else ():
            scaled = fit(target)
            extrapolated[f"{target:_}"] = {
                "cpu_s": round(scaled.cpu_s, 1),
                "peak_mib": round(scaled.peak_bytes / 2**20, 1),
                "aws_calls": sum(scaled.calls.values()),
                **_projection(stage, scaled, latency),
            }
        stages[name] = {
            "function_memory_mb": stage.memory_mb,
            "function_timeout_s": stage.timeout_s,
            "invocations": len(stage.invocations),
            "wall_s_total": round(sum(i.wall_s for i in stage.invocations), 2),
            "cpu_s_total": round(sum(i.cpu_s for i in stage.invocations), 2),
            "worst_invocation": {
                "wall_s": round(worst.wall_s, 3),
                "cpu_s": round(worst.cpu_s, 3),
                "peak_mib": round(worst.peak_bytes / 2**20, 1),
                "aws_calls": dict(sorted(worst.calls.items())),
                **projected,
            },
            "aws_calls_total": dict(sorted(calls.items())),
            "aws_call_seconds_total": {
                k: round(v, 3)
                for k, v in sorted(sum((i.call_seconds for i in stage.invocations), Counter()).items())
            },
            "extrapolated": extrapolated,
        }
    monitor = harness.stages["Monitor"]
    tally = fleet.tally()
    result = {
        "machine": _machine(),
        "model": {
            "cpu_share": f"Lambda CPU = MemorySize / {LAMBDA_MB_PER_VCPU} MB of one vCPU; projected "
            f"seconds = CPU seconds x max(1, {LAMBDA_MB_PER_VCPU} / MemorySize) + AWS calls x "
            f"{options.call_latency_ms} ms",
            "memory": ("tracemalloc peak" if options.tracemalloc else "RSS peak minus RSS before the call")
            + f", plus {RUNTIME_BASELINE_MIB} MiB for the loaded runtime, against MemorySize",
            "extrapolated": (
                "each shard-bound stage's worst invocation fitted as fixed + per-shard cost from the "
                f"calibration run at {calibration['size']['shards']:,} shards and this one, evaluated at 1M "
                "and 10M"
                if calibration
                else "each shard-bound stage's worst invocation scaled in proportion to shards (upper bound)"
            ),
            "endpoint": "moto's server in its own process, its SQS, S3 and EC2 tag backends patched to scale "
            "(bench/scale_emulator.py)",
        },
        "size": {
            "shards": options.shards,
            "instances": options.instances,
            "poisoned": poisoned,
            "interruptions": tally["interrupted_instances"],
            "shards_per_poll": per_poll,
            "poll_seconds": options.poll_seconds,
            "monitor_polls": polls,
        },
        "fleet": tally,
        "stages": stages,
        "monitor_throttles": _monitor_rates(monitor, latency, options.poll_seconds)
        if monitor.invocations
        else {},
        "checks": checks,
    }
    flagged = [
        name
        for name, figures in stages.items()
        if figures["worst_invocation"]["over_half_timeout"] or figures["worst_invocation"]["over_half_memory"]
    ]
    result["flagged_stages"] = flagged
    for target in ("1_000_000", "10_000_000"):
        result[f"flagged_stages_at_{target}"] = [
            name
            for name, figures in stages.items()
            if figures["extrapolated"].get(target, {}).get("over_half_timeout")
            or figures["extrapolated"].get(target, {}).get("over_half_memory")
        ]
    if calibration:
        result["calibration"] = {
            "size": calibration["size"],
            "checks_passed": calibration["checks"]["passed"],
            "worst_invocations": {k: v["worst_invocation"] for k, v in calibration["stages"].items()},
        }
    return result


def _machine() -> dict[str, Any]:
    import platform

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def table(result: dict[str, Any]) -> str:
    """The results as a Markdown table (BENCHMARKS.md keeps a copy)."""
    size = result["size"]
    lines = [
        f"{size['shards']:,} shards, {size['instances']:,} instances, {size['poisoned']:,} poisoned, "
        f"{size['interruptions']} interrupted, {size['monitor_polls']} Monitor polls",
        "",
        "| stage | calls | worst call: wall s / CPU s / MiB | AWS calls | Lambda s (limit) | MiB (limit) "
        "| at 1M: Lambda s / MiB | at 10M: Lambda s / MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in result["stages"].items():
        w = s["worst_invocation"]
        flag = lambda over: " **over half**" if over else ""  # noqa: E731
        same = {"lambda_seconds": w["lambda_seconds"], "lambda_memory_mib": w["lambda_memory_mib"]}
        same.update(over_half_timeout=w["over_half_timeout"], over_half_memory=w["over_half_memory"])
        e1 = s["extrapolated"].get("1_000_000", same)
        e10 = s["extrapolated"].get("10_000_000", same)
        lines.append(
            f"| {name} | {s['invocations']} | {w['wall_s']} / {w['cpu_s']} / {w['peak_mib']} "
            f"| {sum(w['aws_calls'].values())} | {w['lambda_seconds']} ({s['function_timeout_s']})"
            f"{flag(w['over_half_timeout'])} | {w['lambda_memory_mib']} ({s['function_memory_mb']})"
            f"{flag(w['over_half_memory'])} | {e1['lambda_seconds']}{flag(e1['over_half_timeout'])} / "
            f"{e1['lambda_memory_mib']}{flag(e1['over_half_memory'])} | {e10['lambda_seconds']}"
            f"{flag(e10['over_half_timeout'])} / {e10['lambda_memory_mib']}{flag(e10['over_half_memory'])} |"
        )
    lines += [
        "",
        "| Monitor, busiest poll | calls | per s during poll | throttle | under |",
        "| --- | --- | --- | --- | --- |",
    ]
    for api, f in result["monitor_throttles"].items():
        throttle = ", ".join(f"{k} {v:,}" for k, v in f["throttle"].items())
        lines.append(
            f"| {api} | {f['calls_per_poll']} | {f['per_second_during_poll']} | {throttle} "
            f"| {f['under_throttle']} |"
        )
    checks = result["checks"]
    lines += [
        "",
        f"checks: {'passed' if checks['passed'] else 'FAILED'} (outputs {checks['outputs_listed']:,} of "
        f"{checks['outputs_expected']:,}; report {checks['report_status']}: {checks['report_succeeded']} "
        f"succeeded, {checks['report_failed']} failed; nothing left behind: {checks['nothing_left_behind']})",
    ]
    return "\n".join(lines)


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
    parser.add_argument("--call-latency-ms", type=float, default=Options.call_latency_ms)
    parser.add_argument("--tracemalloc", action="store_true", help="peak memory by tracemalloc (slower)")
    parser.add_argument(
        "--calibrate-shards",
        type=int,
        default=None,
        help="first run the rehearsal at this many shards, to fit each stage as fixed + per-shard cost "
        "(default: a tenth of --shards; 0: no calibration, extrapolate in proportion)",
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
    for name in ("shards_per_poll", "poll_seconds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if args.calibrate_shards is not None and not 0 <= args.calibrate_shards < args.shards:
        parser.error(
            f"--calibrate-shards ({args.calibrate_shards}) must be 0 (none) or fewer than "
            f"--shards ({args.shards})"
        )
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
        results=args.results,
    )
    result = rehearse(options)
    print(table(result))
    return 0 if result["checks"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
