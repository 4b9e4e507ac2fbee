"""The scale rehearsal's projection for the bounded handlers: per stage, the worst single invocation at Lambda
and, for the stages that loop, the cost of one unit of work and the invocations a 1M or 10M run needs.

The old projection (the worst call fitted as fixed + per-shard cost, evaluated at 1M and 10M) assumes one
call does the whole stage. The bounded handlers cap each call instead: PrepareRun stops starting parts once
half the invocation's remaining time has gone, the Monitor verifies parts and moves dead letters within half
of it, the Teardown drains dead letters within what it has left less a reserve. So for those stages what grows
with the run is the number of invocations, and what must fit the limits is one part (or one batch of dead
letters) on top of the invocation's fixed work. Everything here is computed from the measured invocations that
`bench.scale_report.results` stores (`invocations_measured`, each with its units of work from
`bench.scale_measure.WorkSpy`), so a stored result can be projected again (`python -m bench.scale_report`).

The model, per looping stage:
- **per unit**: the worst measured unit's CPU seconds and AWS calls per shard (per dead letter for a drain),
  scaled linearly to the real part (`REAL_PART_SIZE` shards, `spotfill_control.shards.PART_SIZE` as shipped)
  or to `DRAIN_UNIT` dead letters, then to Lambda: CPU x max(1, 1,769 / MemorySize) + calls x the call
  latency;
- **fixed**: what an invocation does besides its units (the invocation's CPU and calls less its units'; for
  PrepareRun, whose last part of an invocation runs into its tail, less one more mean part);
- **units per invocation**: a loop starts a unit only while one as long as the longest so far still ends
  within its budget B (`deadline.Deadline.fits_another`; B is half the Timeout for PrepareRun and the Monitor,
  the Timeout less the 60 s reserve for the Teardown's drain, counted from the invocation's start), so it runs
  k = max(1, floor((B - fixed) / unit)) units and the worst invocation, fixed + k x unit, stays within B;
- **invocations at N shards**: ceil(ceil(N / REAL_PART_SIZE) / k) for PrepareRun; for the Monitor, the idle
  polls that verify every part at the end when none was settled ahead (an upper bound: busy polls settle the
  finished parts ahead).
- **memory**: the worst invocation's measured peak scaled by REAL_PART_SIZE / the measured part size, plus the
  runtime's baseline: an upper bound, since the peak includes what does not grow with the part.
"""

from __future__ import annotations

import math
from typing import Any

from bench.scale_measure import LAMBDA_MB_PER_VCPU

REAL_PART_SIZE = 50_000  # spotfill_control.shards.PART_SIZE as shipped
DRAIN_UNIT = 1_000  # dead letters: the drain's batch (spotfill_control.monitoring.dead_letters.DRAIN_BATCH)
TARGETS = (1_000_000, 10_000_000)
RUNTIME_BASELINE_MIB = 100
TIME_SHARE = 0.5  # prepare.TIME_SHARE, deadline.SHARE_OF_REMAINING
TEARDOWN_RESERVE_S = 60.0  # teardown.RESERVE_SECONDS
# The stages whose one invocation's work still grows with the run's total size (not capped by a budget):
# fitted from two sizes (the calibration run and this one), as before.
TOTAL_BOUND = ("Validate", "Report")
LOOPING = {"PrepareRun": "prepare_part", "Monitor": "verify_part"}


def share(memory_mb: int) -> float:
    return max(1.0, LAMBDA_MB_PER_VCPU / memory_mb)


def _calls(figures: dict[str, Any]) -> int:
    return sum(figures["aws_calls"].values())


def unit_cost(invocations: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """The measured units of `kind`: how many, their mean size, and the worst per item (CPU, calls)."""
    units = [u for i in invocations for u in i["units"] if u["kind"] == kind and u["amount"] > 0]
    if not units:
        return None
    return {
        "units": len(units),
        "items": sum(u["amount"] for u in units),
        "mean_size": round(sum(u["amount"] for u in units) / len(units), 1),
        "cpu_s_mean": round(sum(u["cpu_s"] for u in units) / len(units), 4),
        "calls_mean": round(sum(_calls(u) for u in units) / len(units), 1),
        "cpu_s_per_item_worst": max(u["cpu_s"] / u["amount"] for u in units),
        "calls_per_item_worst": max(_calls(u) / u["amount"] for u in units),
        "cpu_s_per_item_overall": sum(u["cpu_s"] for u in units) / sum(u["amount"] for u in units),
        "calls_per_item_overall": sum(_calls(u) for u in units) / sum(u["amount"] for u in units),
    }


def _unit_at_lambda(
    cost: dict[str, Any], items: int, memory_mb: int, latency_s: float, which: str = "worst"
) -> float:
    return (
        cost[f"cpu_s_per_item_{which}"] * items * share(memory_mb)
        + cost[f"calls_per_item_{which}"] * items * latency_s
    )


def _fixed(invocation: dict[str, Any], kinds: tuple[str, ...], tail_units: int = 0) -> tuple[float, int]:
    """An invocation's CPU and calls besides its units of `kinds` (and `tail_units` more mean units)."""
    units = [u for u in invocation["units"] if u["kind"] in kinds]
    cpu = invocation["cpu_s"] - sum(u["cpu_s"] for u in units)
    calls = _calls(invocation) - sum(_calls(u) for u in units)
    if units and tail_units:
        cpu -= tail_units * sum(u["cpu_s"] for u in units) / len(units)
        calls -= round(tail_units * sum(_calls(u) for u in units) / len(units))
    return max(0.0, cpu), max(0, calls)


def _fit(big: float, little: float, big_shards: int, little_shards: int | None, target: int) -> float:
    """Fixed + per-shard from two sizes (a negative slope counts as flat); proportional without the second."""
    if not little_shards or little_shards >= big_shards:
        return big * target / big_shards
    slope = max(0.0, (big - little) / (big_shards - little_shards))
    return big + slope * (target - big_shards)


def _calibration_invocations(calibration: dict[str, Any] | None, name: str) -> list[dict[str, Any]]:
    """The calibration run's measured invocations of a stage (`results`' "calibration" entry); from a result
    that kept only the worst invocation, that one with no units (its fixed cost then includes its units)."""
    if not calibration:
        return []
    measured = calibration.get("invocations_measured", {}).get(name)
    if measured:
        return list(measured)
    worst = calibration.get("worst_invocations", {}).get(name)
    return [{**worst, "units": []}] if worst else []


def _units_within(budget: float, fixed: float, unit: float) -> int:
    """How many units an invocation starts: each only while one more still ends within the budget (at least
    one, as PrepareRun always does a part)."""
    if unit <= 0:
        return 1
    return max(1, math.floor(max(0.0, budget - fixed) / unit))


def _looping(
    name: str,
    stage: dict[str, Any],
    part_size: int,
    latency_s: float,
    shards: int,
    calibration: dict[str, Any] | None,
) -> dict[str, Any] | None:
    kind = LOOPING[name]
    invocations = stage["invocations_measured"]
    cost = unit_cost(invocations, kind)
    if cost is None:
        return None
    memory, timeout = stage["function_memory_mb"], stage["function_timeout_s"]
    part_s = _unit_at_lambda(cost, REAL_PART_SIZE, memory, latency_s)
    budget = timeout * TIME_SHARE
    per_invocation = _units_within(budget, 0.0, part_s)
    kinds = (kind, "drain")
    tail = 1 if name == "PrepareRun" else 0
    fixed = [_fixed(i, kinds, tail if any(u["kind"] == kind for u in i["units"]) else 0) for i in invocations]
    fixed_cpu = max(f[0] for f in fixed)
    fixed_calls = max(f[1] for f in fixed)
    little = None
    small = _calibration_invocations(calibration, name)
    if small:
        small_fixed = [_fixed(i, kinds, tail if i["units"] else 0) for i in small]
        little = (max(f[0] for f in small_fixed), max(f[1] for f in small_fixed))
    little_shards = calibration["size"]["shards"] if little else None
    peak_mib = max(i["peak_mib"] for i in invocations)
    memory_mib = RUNTIME_BASELINE_MIB + peak_mib * REAL_PART_SIZE / part_size
    at: dict[str, Any] = {}
    for target in TARGETS:
        parts = math.ceil(target / REAL_PART_SIZE)
        # the fixed work of one invocation at the target size (it may grow with the run: the Monitor reads
        # the verification checkpoint and the dead-letter records each poll)
        cpu = (
            _fit(fixed_cpu, little[0] if little else 0.0, shards, little_shards, target)
            if little
            else fixed_cpu
        )
        calls = (
            _fit(fixed_calls, little[1] if little else 0, shards, little_shards, target)
            if little
            else fixed_calls
        )
        fixed_s = cpu * share(memory) + calls * latency_s
        per_call = _units_within(budget, fixed_s, part_s)
        worst = fixed_s + min(per_call, parts) * part_s
        at[f"{target:_}"] = {
            "parts": parts,
            "parts_per_invocation": per_call,
            "invocations": math.ceil(parts / per_call),
            "fixed_lambda_seconds": round(fixed_s, 2),
            "worst_invocation_lambda_seconds": round(worst, 1),
            "over_half_timeout": worst > timeout / 2,
            "over_timeout": worst > timeout,
            "lambda_memory_mib": round(memory_mib, 1),
            "over_half_memory": memory_mib > memory / 2,
        }
    return {
        "unit": kind,
        "measured_part_size": part_size,
        "measured": cost,
        "cpu_s_per_part_here": round(cost["cpu_s_per_item_worst"] * part_size, 4),
        "calls_per_part_here": round(cost["calls_per_item_worst"] * part_size, 1),
        "real_part_size": REAL_PART_SIZE,
        "part_lambda_seconds": round(part_s, 2),
        "part_fits_half_timeout": part_s <= timeout / 2,
        "budget_seconds": budget,
        "parts_per_invocation": per_invocation,
        "fixed_cpu_s_here": round(fixed_cpu, 3),
        "fixed_calls_here": fixed_calls,
        "at": at,
    }


def _drain(stages: dict[str, Any], latency_s: float) -> dict[str, Any] | None:
    """The dead-letter drain (Monitor and Teardown, both `dead_letters.drain`): per DRAIN_UNIT dead letters
    (all the drains' CPU and calls over all the dead letters they moved: a drain's fixed calls, its receive
    that comes back empty, spread over its batch) at each function's share, and how many fit one invocation's
    budget. A Teardown that found the dead-letter queue empty (the Monitor moved them all) is projected from
    the Monitor's drains."""
    out: dict[str, Any] = {}
    measured = {
        name: unit_cost(stages[name]["invocations_measured"], "drain")
        for name in ("Monitor", "Teardown")
        if name in stages
    }
    for name in ("Monitor", "Teardown"):
        stage = stages.get(name)
        cost = measured.get(name) or measured.get("Monitor")
        if not stage or cost is None:
            continue
        memory, timeout = stage["function_memory_mb"], stage["function_timeout_s"]
        per_unit = _unit_at_lambda(cost, DRAIN_UNIT, memory, latency_s, "overall")
        budget = timeout * TIME_SHARE if name == "Monitor" else timeout - TEARDOWN_RESERVE_S
        out[name] = {
            "measured": cost,
            "measured_in": name if measured.get(name) else "Monitor",
            "lambda_seconds_per_1000": round(per_unit, 2),
            "budget_seconds": budget,
            "dead_letters_per_invocation": int(budget / per_unit * DRAIN_UNIT) if per_unit > 0 else None,
            "dead_letters_within_half_timeout": int(timeout / 2 / per_unit * DRAIN_UNIT)
            if per_unit > 0
            else None,
            "invocations_for_100k": math.ceil(100_000 / (budget / per_unit * DRAIN_UNIT))
            if per_unit > 0
            else None,
        }
    return out or None


def bounded(
    stages: dict[str, Any], size: dict[str, Any], latency_s: float, calibration: dict[str, Any] | None
) -> dict[str, Any]:
    """The bounded projection of a result's stages (see the module's docstring)."""
    part_size = int(size.get("part_size") or REAL_PART_SIZE)
    looping = {}
    for name in LOOPING:
        if name in stages:
            figures = _looping(name, stages[name], part_size, latency_s, size["shards"], calibration)
            if figures is not None:
                looping[name] = figures
    return {
        "model": "per looping stage: the worst measured part's CPU and calls per shard scaled to a "
        f"{REAL_PART_SIZE:,}-shard part at the function's CPU share (+ call latency), units per invocation "
        "k = max(1, floor((budget - fixed) / part)), worst invocation = fixed + k x part, invocations = "
        "ceil(parts / k); memory = the measured peak x the part-size ratio + the runtime (upper bound); "
        f"{', '.join(TOTAL_BOUND)} fitted fixed + per-shard from two sizes (their work grows with the total)",
        "looping": looping,
        "drain": _drain(stages, latency_s),
        "total_bound": list(TOTAL_BOUND),
    }
