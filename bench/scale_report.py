"""The scale rehearsal's results: each stage projected to Lambda, fitted and extrapolated to 1M and 10M
shards, the Monitor's calls against AWS's throttles, and the table BENCHMARKS.md keeps."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.run import machine
from bench.scale_bounded import bounded
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


def _measured(invocation: Invocation) -> dict[str, Any]:
    """One invocation as measured (the projections can be made again from these)."""
    return {
        "wall_s": round(invocation.wall_s, 4),
        "cpu_s": round(invocation.cpu_s, 4),
        "thread_cpu_s": round(invocation.thread_cpu_s, 4),
        "peak_mib": round(invocation.peak_bytes / 2**20, 2),
        "aws_calls": dict(sorted(invocation.calls.items())),
        "units": [
            {
                "kind": u.kind,
                "amount": u.amount,
                "cpu_s": round(u.cpu_s, 4),
                "wall_s": round(u.wall_s, 4),
                "aws_calls": dict(sorted(u.calls.items())),
            }
            for u in invocation.units
        ],
    }


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
            **({} if stage.context_timeout_s is None else {"context_timeout_s": stage.context_timeout_s}),
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
            "invocations_measured": [_measured(i) for i in stage.invocations],
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
            "part_size": _part_size(),
            "poll_seconds": options.poll_seconds,
            "monitor_polls": polls,
            "stand_in_calls": options.stand_in_calls,
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
    if calibration:
        result["calibration"] = {
            "size": calibration["size"],
            "checks_passed": calibration["checks"]["passed"],
            "worst_invocations": {k: v["worst_invocation"] for k, v in calibration["stages"].items()},
            "invocations_measured": {k: v["invocations_measured"] for k, v in calibration["stages"].items()},
        }
    result["bounded"] = bounded(stages, result["size"], latency, result.get("calibration"))
    for target in ("1_000_000", "10_000_000"):
        result[f"flagged_stages_at_{target}"] = flagged_at(stages, result["bounded"], target)
    return result


def flagged_at(stages: dict[str, Any], bounded_figures: dict[str, Any], target: str) -> list[str]:
    """The stages over half their Timeout or MemorySize at `target` shards: a stage that loops within a budget
    (PrepareRun, the Monitor) by its projection per part (`bench.scale_bounded`), since its calls stop at the
    budget; any other by the fit of its one call."""
    looping = bounded_figures.get("looping", {})
    flagged = []
    for name, figures in stages.items():
        at = (looping[name]["at"] if name in looping else figures["extrapolated"]).get(target, {})
        if at.get("over_half_timeout") or at.get("over_half_memory"):
            flagged.append(name)
    return flagged


def _part_size() -> int:
    from spotfill_control import shards

    return int(shards.PART_SIZE)


def _machine() -> dict[str, Any]:
    described = machine()  # the throughput bench's description, plus the memory this rehearsal needs
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": described["cpu"],
        "cores": described["nproc"],
        "memory_gib": round(memory / 2**30, 1),
        "python": described["python"],
        "load_average_at_end": [round(x, 2) for x in described["load_average"]],
    }


def table(result: dict[str, Any]) -> str:
    """The results as a Markdown table (BENCHMARKS.md keeps a copy)."""
    size = result["size"]
    lines = [
        f"{size['shards']:,} shards, {size['instances']:,} instances, {size['poisoned']:,} poisoned, "
        f"{size['interruptions']} interrupted, {size['monitor_polls']} Monitor polls",
        "",
        "| stage | calls | worst call: wall s / CPU s / MiB | AWS calls | Lambda s (limit) | MiB (limit) "
        "| per part here: CPU s / calls | one 50k part at Lambda, s | parts per call "
        "| at 1M: worst call s / MiB / calls | at 10M: worst call s / MiB / calls |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    bounded = result.get("bounded") or {}
    looping = bounded.get("looping", {})
    total_bound = bounded.get("total_bound", [])
    for name, s in result["stages"].items():
        w = s["worst_invocation"]
        flag = lambda over: " **over half**" if over else ""  # noqa: E731
        row = (
            f"| {name} | {s['invocations']} | {w['wall_s']} / {w['cpu_s']} / {w['peak_mib']} "
            f"| {sum(w['aws_calls'].values())} | {w['lambda_seconds']} ({s['function_timeout_s']})"
            f"{flag(w['over_half_timeout'])} | {w['lambda_memory_mib']} ({s['function_memory_mb']})"
            f"{flag(w['over_half_memory'])} "
        )
        if name in looping:
            b = looping[name]
            row += (
                f"| {b['unit']}: {b['cpu_s_per_part_here']} / {b['calls_per_part_here']:g} "
                f"| {b['part_lambda_seconds']}{flag(not b['part_fits_half_timeout'])} "
                f"| {b['parts_per_invocation']} "
            )
            for target in ("1_000_000", "10_000_000"):
                a = b["at"][target]
                row += (
                    f"| {a['worst_invocation_lambda_seconds']}{flag(a['over_half_timeout'])} / "
                    f"{a['lambda_memory_mib']}{flag(a['over_half_memory'])} / {a['invocations']} "
                )
        else:
            row += "| - | - | - "
            for target in ("1_000_000", "10_000_000"):
                e = s["extrapolated"].get(target) if name in total_bound else None
                if e is None:  # bounded by the instances (run at full size) or by a budget: as measured
                    row += f"| {w['lambda_seconds']} / {w['lambda_memory_mib']} / 1 "
                else:
                    row += (
                        f"| {e['lambda_seconds']}{flag(e['over_half_timeout'])} (fit) / "
                        f"{e['lambda_memory_mib']}{flag(e['over_half_memory'])} / 1 "
                    )
        lines.append(row + "|")
    drain = bounded.get("drain") or {}
    if drain:
        lines += [
            "",
            "| dead-letter drain | per 1,000 here: CPU s / calls | per 1,000 at Lambda, s | budget s "
            "| dead letters per invocation (within half the Timeout) | invocations for 100k |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, d in drain.items():
            m = d["measured"]
            lines.append(
                f"| {name}{'' if d['measured_in'] == name else ' (measured in the Monitor)'} "
                f"| {m['cpu_s_per_item_overall'] * 1000:.3f} / {m['calls_per_item_overall'] * 1000:.1f} "
                f"| {d['lambda_seconds_per_1000']} | {d['budget_seconds']:g} "
                f"| {d['dead_letters_per_invocation']:,} ({d['dead_letters_within_half_timeout']:,}) "
                f"| {d['invocations_for_100k']} |"
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
    """Project a stored result again (its measured invocations) and print the table."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.scale_report", description=main.__doc__)
    parser.add_argument("results", type=Path, help="a bench/scale_results.json")
    parser.add_argument("--call-latency-ms", type=float, default=5.0)
    parser.add_argument("--write", action="store_true", help="store the new projection in the file")
    args = parser.parse_args(argv)
    result = json.loads(args.results.read_text())
    result["bounded"] = bounded(
        result["stages"], result["size"], args.call_latency_ms / 1000.0, result.get("calibration")
    )
    for target in ("1_000_000", "10_000_000"):
        result[f"flagged_stages_at_{target}"] = flagged_at(result["stages"], result["bounded"], target)
    if args.write:
        args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
