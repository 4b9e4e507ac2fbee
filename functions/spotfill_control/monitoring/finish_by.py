"""The deadline of a run (`limits.finish_by`): resolve it, refuse the infeasible, keep the fleet on time.

The arithmetic is in capacity units (the fleet's weights now, `RunState.capacity_weights`: as requested, the
smallest type weighing 1, until `fleet.weights` re-weights a fleet of several types by measured
throughput, after which a unit is the same predictions per second on every type) and predictions:

- W: the predictions left, r: predictions per second of one unit, L: the lead before the end is seen (at
  Validate: an instance's boot and registration plus a poll; at the Monitor: the poll that sees the end),
  T = deadline - now - L the working time left.
- Units needed: U = ceil(W / (r x T)).
- Cost of finishing with U units at p USD per unit-hour: accrued + p x (W / r + U x O) / 3600, where O is what
  each unit is billed beyond its share of the work (at Validate: boot, registration and the poll that sees the
  end; at the Monitor: `budget.horizon_seconds`, the next poll and a drain, as the dollar cap projects). The
  work costs the same however many units share it; more units cost more overhead.
- Units a cap C pays for to the end: floor((C - accrued - p x W / r / 3600) x 3600 / (p x O)).
- Earliest finish with U units: now + L + W / (r x U).

Validate checks feasibility where the numbers exist (a spec with `estimate`, from `spotfill plan
--write-estimate`): the deadline must leave time, the cap must pay for the units needed, and those units must
fit `fleet.target_capacity` (the ceiling, itself within ECS's and the Spot quotas' limits). Without an
estimate the first Monitor poll with a measured rate makes the same check and ends the run
(`DeadlineInfeasibleError`, teardown and report follow) before the fleet grows.

Every Monitor poll then sets the fleet's target to the units that finish by the deadline at the measured
rate: more when behind, fewer when ahead, never above the ceiling, the units the remaining shards keep busy,
nor the units the dollar cap pays for to the end.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from spotfill_control.errors import DeadlineInfeasibleError
from spotfill_control.fleet import fleet, on_demand
from spotfill_control.fleet.fleet_api import FleetStatus
from spotfill_control.monitoring import budget
from spotfill_control.run import FinishBy, RunState
from spotfill_control.spec import BackfillSpec, LimitsSpec, parse_finish_by

Limit = Literal["cap", "ceiling"]


class InfeasibleDeadline(ValueError):
    """A deadline the cap cannot pay for, or that needs more capacity than the fleet may have."""


def resolve(limits: LimitsSpec, started_at: datetime, now: datetime) -> datetime | None:
    """The absolute deadline of `limits.finish_by` for a run started at `started_at` (a duration counts from
    there); None without one. ValueError naming what is wrong: a deadline not after `now`, or after the run's
    maximum runtime ends."""
    if limits.finish_by is None:
        return None
    parsed = parse_finish_by(limits.finish_by)
    at = started_at + parsed if isinstance(parsed, timedelta) else parsed
    if at <= now:
        raise ValueError(
            f"limits.finish_by: {limits.finish_by} ({iso(at)}) is not in the future (now is {iso(now)})"
        )
    ends = started_at + timedelta(seconds=limits.max_runtime_seconds)
    if at > ends:
        raise ValueError(
            f"limits.finish_by: {limits.finish_by} ({iso(at)}) is after the run's maximum runtime ends "
            f"({iso(ends)}: its start + limits.max_runtime_seconds = {limits.max_runtime_seconds} s): raise "
            "limits.max_runtime_seconds or choose an earlier deadline"
        )
    return at


def units_text(units: float) -> str:
    return f"{units:g} capacity unit" + ("" if units == 1 else "s")


def iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------ pure arithmetic


def units_needed(remaining_predictions: float, unit_rate: float, seconds_left: float) -> float:
    """Units that make the remaining predictions in `seconds_left` at `unit_rate` (infinite: no time left)."""
    if remaining_predictions <= 0:
        return 0
    if seconds_left <= 0:
        return math.inf
    return math.ceil(remaining_predictions / (unit_rate * seconds_left) - 1e-9)


def cost_to_finish(
    accrued_usd: float, unit_usd_per_hour: float, remaining_predictions: float, unit_rate: float,
    units: float, overhead_seconds: float,
) -> float:  # fmt: skip
    """What the run will have cost when `units` units finish the remaining predictions."""
    work_seconds = remaining_predictions / unit_rate
    return accrued_usd + unit_usd_per_hour * (work_seconds + units * overhead_seconds) / 3600


def affordable_units(
    cap_usd: float, accrued_usd: float, unit_usd_per_hour: float, remaining_predictions: float,
    unit_rate: float, overhead_seconds: float,
) -> int:  # fmt: skip
    """The most units the cap pays for to the end (0: not even one)."""
    if unit_usd_per_hour <= 0:
        return 2**31
    left = cap_usd - cost_to_finish(accrued_usd, unit_usd_per_hour, remaining_predictions, unit_rate, 0, 0)
    if left <= 0:
        return 0
    if overhead_seconds <= 0:
        return 2**31
    return max(0, math.floor(left * 3600 / (unit_usd_per_hour * overhead_seconds) + 1e-9))


def finish_seconds(remaining_predictions: float, unit_rate: float, units: float) -> float:
    """Seconds the units take for the remaining predictions (infinite with no unit)."""
    if remaining_predictions <= 0:
        return 0.0
    if units <= 0:
        return math.inf
    return remaining_predictions / (unit_rate * units)


@dataclass(frozen=True)
class Feasibility:
    """A deadline checked against the work, the rate, the price, the cap and the ceiling."""

    units: int  # the capacity to start with: what finishes by the deadline
    projected_usd: float  # what the run costs with it (cheapest unit price)
    finish_at: datetime  # when it finishes with it


def check(
    *,
    deadline: datetime,
    now: datetime,
    predictions: float,
    unit_rate: float,
    unit_usd_per_hour: float,
    ceiling: int,
    cap_usd: float | None,
    lead_seconds: float,
    overhead_seconds: float,
    accrued_usd: float = 0.0,
) -> Feasibility:
    """The capacity that finishes `predictions` by `deadline` and what it costs; InfeasibleDeadline naming,
    for a cap it exceeds, the least cap for the deadline and the earliest deadline for the cap, and for a
    ceiling it exceeds, the units it needs and the earliest deadline the ceiling makes."""
    seconds_left = (deadline - now).total_seconds() - lead_seconds
    needed = units_needed(predictions, unit_rate, seconds_left)

    def at(units: float) -> datetime:
        return now + timedelta(seconds=lead_seconds + finish_seconds(predictions, unit_rate, units))

    if needed > ceiling:
        need = "more time than is left" if math.isinf(needed) else units_text(needed)
        raise InfeasibleDeadline(
            f"limits.finish_by: {iso(deadline)} needs {need} at {unit_rate:,.1f} predictions/s per unit for "
            f"{predictions:,.0f} predictions (starting takes about {lead_seconds:.0f} s), more than "
            f"fleet.target_capacity = {ceiling} (the most the fleet may have); the earliest deadline at "
            f"{units_text(ceiling)} is {iso(at(ceiling))}: choose a later deadline or raise "
            "fleet.target_capacity"
        )
    units = max(1, int(needed))
    projected = cost_to_finish(
        accrued_usd, unit_usd_per_hour, predictions, unit_rate, units, overhead_seconds
    )
    if cap_usd is not None and projected > cap_usd:
        affordable = min(
            ceiling,
            affordable_units(
                cap_usd, accrued_usd, unit_usd_per_hour, predictions, unit_rate, overhead_seconds
            ),
        )
        if affordable < 1:
            for_cap = "no deadline: the cap does not pay for the work even on one unit"
        else:
            for_cap = f"{iso(at(affordable))} (with {units_text(affordable)})"
        raise InfeasibleDeadline(
            f"limits.finish_by: {iso(deadline)} needs {units_text(units)}, which cost at least "
            f"${budget.format_usd(projected)} (at ${budget.format_usd(unit_usd_per_hour)} per unit-hour), "
            f"above limits.max_total_usd = ${budget.format_usd(cap_usd)}: the least cap for that deadline is "
            f"${budget.format_usd_up(projected)}, and the earliest deadline for that cap is {for_cap}"
        )
    return Feasibility(units=units, projected_usd=projected, finish_at=at(units))


@dataclass(frozen=True)
class Tracking:
    """One poll's decision for the deadline."""

    target_units: int  # the fleet's target for the deadline
    needed_units: int  # what finishes by the deadline (may exceed the target: capped)
    limited_by: Limit | None  # what holds the target below what is needed
    projected_finish_at: datetime | None  # at the running capacity's rate (None: nothing running)
    behind_seconds: float | None
    at_risk: bool  # the running capacity would finish after the deadline, or nothing runs while work remains


def track(
    *,
    deadline: datetime,
    now: datetime,
    remaining_predictions: float,
    unit_rate: float,
    running_units: float,
    ceiling: int,
    busy_units: int,
    cap_usd: float | None,
    accrued_usd: float,
    unit_usd_per_hour: float,
    poll_seconds: float,
) -> Tracking:
    """The fleet's target for the deadline: the units that finish the remaining predictions by it at
    `unit_rate`, at least 1, never above `ceiling`, the units the remaining shards keep busy (`busy_units`)
    nor what the cap pays for to the end (priced as `budget` projects: `budget.horizon_seconds` per unit)."""
    seconds_left = (deadline - now).total_seconds() - poll_seconds
    raw = units_needed(remaining_predictions, unit_rate, seconds_left)
    needed = ceiling if math.isinf(raw) else int(raw)
    target, limited = max(1, needed), cast(Limit | None, None)
    if target > ceiling:
        target, limited = ceiling, "ceiling"
    target = min(target, max(1, busy_units))
    if cap_usd is not None:
        overhead = budget.horizon_seconds(int(poll_seconds))
        paid = affordable_units(
            cap_usd, accrued_usd, unit_usd_per_hour, remaining_predictions, unit_rate, overhead
        )
        if paid < target:
            target, limited = max(1, paid), "cap"
    finish: datetime | None = None
    behind: float | None = None
    if running_units > 0:
        seconds = finish_seconds(remaining_predictions, unit_rate, running_units)
        finish = now + timedelta(seconds=seconds + poll_seconds)
        behind = (finish - deadline).total_seconds()
    return Tracking(
        target_units=target,
        needed_units=needed,
        limited_by=limited,
        projected_finish_at=finish,
        behind_seconds=behind,
        at_risk=(behind > 0) if behind is not None else remaining_predictions > 0,
    )


# ------------------------------------------------------------------------------------------ the spec


def estimate_unit_rate(spec: BackfillSpec) -> float | None:
    """Predictions per second of one capacity unit from the plan's estimate (its fleet's rate over its
    capacity), or None without an estimate."""
    estimate = spec.estimate
    if estimate is None or estimate.target_capacity <= 0:
        return None
    return estimate.predictions_per_second / estimate.target_capacity


def cheapest_unit_usd_per_hour(
    instance_types: list[str],
    prices: dict[tuple[str, str], float],
    on_demand: dict[str, float],
    weights: dict[str, float],
) -> float:
    """The least USD per unit-hour the fleet may launch at: each type's cheapest spot price (on demand where
    it has none) over its weight. A deadline this price cannot pay for, no fleet of these types can."""
    offers = []
    for name in instance_types:
        zones = [p for (t, _), p in prices.items() if t == name]
        price = min(zones) if zones else on_demand[name]
        offers.append(price / weights.get(name, 1.0))
    return min(offers)


def validate_lead_seconds(poll_interval_seconds: int) -> float:
    """From Validate to the end seen: an instance's boot and registration (seen on a poll), and the poll
    that sees the last output."""
    return budget.BOOT_ALLOWANCE_SECONDS + 2 * poll_interval_seconds


def validate_overhead_seconds(poll_interval_seconds: int) -> float:
    """What each unit is billed beyond its share of the work: boot and registration, and the poll that sees
    the end (`budget.least_cost_usd`'s allowance)."""
    return budget.BOOT_ALLOWANCE_SECONDS + poll_interval_seconds


# ------------------------------------------------------------------------------------------ each poll


def measured_unit_rate(run: RunState) -> float | None:
    """Predictions per second of one unit as the last poll's projection measured it (over the unit-seconds
    of capacity the series saw: `projection.unit_rate`), or None before the run has one."""
    projected = run.projection
    if projected is None or not projected.predictions_per_unit_second:
        return None
    return projected.predictions_per_unit_second


def remaining_predictions(run: RunState, remaining_shards: int) -> float | None:
    """The predictions left: the remaining shards x the mean rows per shard the monitor sampled, else the
    plan's predictions per shard; None when neither is known."""
    progress = run.progress
    if progress.rows_sampled_outputs:
        return remaining_shards * progress.rows_sampled_total / progress.rows_sampled_outputs
    estimate = run.spec.estimate
    pending = max(0, run.shards_total - run.shards_skipped)
    if estimate is not None and pending:
        return remaining_shards * estimate.predictions / pending
    return None


def running_units(capacity: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The weighted capacity of the pending and running instances (`capacity`: `<type>/<option>` -> count)."""
    return sum(weights.get(pool.split("/", 1)[0], 1.0) * n for pool, n in capacity.items())


def steer(
    run: RunState,
    ec2: Any,
    status: FleetStatus,
    capacity: Mapping[str, float],
    remaining_shards: int,
    now: datetime,
) -> Tracking | None:
    """One poll of an active fleet with a deadline: record where the run stands against it and set the fleet's
    target to `track`'s (ModifyFleet / ModifySpotFleetRequest through `fleet.set_target_capacity`). Growing
    launches spot capacity (the on-demand target is kept); shrinking passes `no-termination`, so no instance
    is terminated for it and no worker loses the shard in hand: the fleet launches nothing, and replaces no
    interrupted instance, until its capacity falls below the new target. The first poll with a measured rate
    checks feasibility when Validate could not (`infeasible`: the handler ends the run) and then changes
    nothing. None (nothing done) without a rate or without a count of the predictions left."""
    state = run.finish_by
    if state is None:
        return None
    weights = run.capacity_weights
    state.running_units = running_units(capacity, weights)
    measured = measured_unit_rate(run)
    unit_rate = measured or estimate_unit_rate(run.spec)
    left = remaining_predictions(run, remaining_shards)
    if unit_rate is None or left is None:
        return None
    limits = run.spec.limits
    cap = limits.max_total_usd
    price = 0.0
    if cap is not None:
        types = run.spec.fleet.instance_types
        price = budget.ceiling_per_unit(
            types, budget.price_table(run), weights, {t: budget.on_demand_hourly_usd(run, t) for t in types}
        )
    poll = limits.poll_interval_seconds
    ceiling = run.spec.fleet.target_capacity
    if measured is not None and not state.checked:
        state.checked = True
        try:
            check(
                deadline=state.at,
                now=now,
                predictions=left,
                unit_rate=unit_rate,
                unit_usd_per_hour=price,
                ceiling=ceiling,
                cap_usd=cap,
                lead_seconds=poll,
                overhead_seconds=budget.horizon_seconds(poll),
                accrued_usd=run.budget.accrued_usd,
            )
        except InfeasibleDeadline as exc:
            state.infeasible = f"at the first poll with a measured rate, {exc}"
            return None
    max_weight = max(weights.values(), default=1.0)
    tasks_per_instance = run.spec.service.tasks_per_instance
    busy = math.ceil(math.ceil(remaining_shards / tasks_per_instance) * max_weight)
    tracking = track(
        deadline=state.at,
        now=now,
        remaining_predictions=left,
        unit_rate=unit_rate,
        running_units=state.running_units,
        ceiling=ceiling,
        busy_units=busy,
        cap_usd=cap,
        accrued_usd=run.budget.accrued_usd,
        unit_usd_per_hour=price,
        poll_seconds=poll,
    )
    # The on-demand base is always part of the fleet (`fleet.on_demand_base`): never steered below it.
    base = min(run.spec.fleet.on_demand_base, ceiling)
    if tracking.target_units < base:
        tracking = dataclasses.replace(tracking, target_units=base)
    current = on_demand.work_target(run.progress, status)
    state.needed_units = tracking.needed_units
    state.limited_by = tracking.limited_by
    state.projected_finish_at = tracking.projected_finish_at
    state.behind_seconds = tracking.behind_seconds
    state.added_units = tracking.target_units - current
    state.target_units = tracking.target_units
    if tracking.target_units != current and not run.progress.spot_probe_units:
        shrink = tracking.target_units < current
        od = min(status.on_demand_target_capacity, float(tracking.target_units))
        fleet.set_target_capacity(run, ec2, tracking.target_units, od, keep_instances=shrink)
        state.shrunk_without_termination = shrink
        if shrink:
            on_demand.after_scale_down(run.progress, tracking.target_units, run.spec.fleet.on_demand_base)
    else:
        state.added_units = 0
        state.target_units = current
    return tracking


def check_feasible(run: RunState) -> None:
    """Raise DeadlineInfeasibleError when a poll found the deadline out of reach (after the handler persisted
    the poll, so the report has its figures)."""
    if run.finish_by is not None and run.finish_by.infeasible and run.progress.state != "done":
        raise DeadlineInfeasibleError(run.finish_by.infeasible)


def outlook(state: FinishBy) -> str:
    """Where the run stands against its deadline, as `spotfill watch` shows it: `deadline <time>: on track`
    (`, N min ahead`), `behind by N min, adding M units`, or why nothing more is added (the cap, the
    ceiling), or `no rate yet`."""
    head = f"deadline {iso(state.at)}: "
    if state.behind_seconds is None:
        return head + "no rate yet"
    if state.behind_seconds <= 0:
        ahead = math.floor(-state.behind_seconds / 60)
        return head + "on track" + (f", {ahead} min ahead" if ahead else "")
    behind = f"behind by {math.ceil(state.behind_seconds / 60)} min"
    if state.added_units > 0:
        return f"{head}{behind}, adding {units_text(state.added_units)}"
    if state.limited_by == "cap":
        return f"{head}{behind}, held at {units_text(state.target_units or 0)} by limits.max_total_usd"
    if state.limited_by == "ceiling":
        return f"{head}{behind}, held at {units_text(state.target_units or 0)} by fleet.target_capacity"
    return (
        f"{head}{behind}, waiting for {units_text(state.target_units or 0)} (running {state.running_units:g})"
    )


def met(state: FinishBy, ended_at: datetime | None) -> tuple[bool, float] | None:
    """(met, seconds to spare: negative when late) of a run that ended processing at `ended_at`; None when it
    did not."""
    if ended_at is None:
        return None
    spare = (state.at - ended_at).total_seconds()
    return spare >= 0, spare
