"""The scale rehearsal's results: each stage projected to Lambda, fitted and extrapolated to 1M and 10M
shards, the Monitor's calls against AWS's throttles, and the table BENCHMARKS.md keeps."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.scale_measure import LAMBDA_MB_PER_VCPU, Harness, Invocation, Stage

if TYPE_CHECKING:
    from bench.scale import Options

RUNTIME_BASELINE_MIB = 100  # the Python runtime with boto3, pydantic and Powertools loaded, before any work
# Stages whose work grows with the shards; the others grow with the instances, which the rehearsal runs at
# full size, so their figures are not extrapolated.
SHARD_BOUND = {"Validate", "PrepareRun", "Monitor", "Teardown", "Report"}


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


def fit(
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


def results(
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
        extend = fit(worst, options.shards, small, (calibration or {}).get("size", {}).get("shards"))
        extrapolated = {}
        for target in (1_000_000, 10_000_000) if name in SHARD_BOUND else ():
            scaled = extend(target)
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
