"""On demand when spot is not there: `fleet.on_demand_base` and `fleet.on_demand_fallback_after_seconds`.

The base is requested with the fleet (its on-demand target) and stays on demand. The fallback is the
Monitor's, one decision per iteration (`decide`, pure), on the fleet's spot target (total - on-demand target)
and the spot capacity it holds:

- Spot short: when the fleet has held less spot than its spot target for `after` seconds, the shortfall moves
  to on demand: the total stays, the on-demand target grows by the shortfall, so EC2 launches on-demand
  instances for it and stops asking spot for those units.
- Spot back: while units run on demand, every `after` seconds the Monitor probes: it raises the total by the
  fallback units as spot (the on-demand target unchanged). Spot that fills the probe within `after` seconds is
  back: that many units are handed back (total back, on-demand target lowered) and the fleet terminates the
  excess on-demand instances (`ExcessCapacityTerminationPolicy: termination`). A probe nothing fills ends
  after `after` seconds; the next starts `after` seconds later.
- Cost: with `fleet.max_hourly_price`, the fleet's fulfilled units plus the units added (fallback or probe)
  are priced at the dearest on-demand price per unit of its types (an upper bound: spot costs less), and no
  more units are added than the cap leaves room for. EC2 enforces each option's `MaxTotalPrice` (both the
  whole cap); this keeps their sum under it.

The state it needs is five small fields of `Progress`. This module only decides; `fleet.rebalance` applies
a decision to the fleet (the fleet builds on these decisions, never the other way).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotfill_control.fleet.fleet_api import FleetStatus
from spotfill_control.instance_types import InstanceTypeFacts, capacity_weights
from spotfill_control.run import Progress
from spotfill_control.spec import FleetSpec


@dataclass(frozen=True)
class Targets:
    total: int
    on_demand: int


def unit_price_bound(
    facts: Mapping[str, InstanceTypeFacts], weights: Mapping[str, float] | None = None
) -> float:
    """The dearest on-demand USD per hour of one weighted unit among the fleet's types (the run's prices, as
    Validate resolved them) at the fleet's weights (default: by vCPUs); infinite when a type has no known
    price, so nothing is added under a cap."""
    weights = weights or capacity_weights(facts)
    return max(
        math.inf if f.on_demand_hourly_usd is None else f.on_demand_hourly_usd / weights[name]
        for name, f in facts.items()
    )


def room_under_cap(
    spec: FleetSpec,
    facts: Mapping[str, InstanceTypeFacts],
    fulfilled_units: float,
    weights: Mapping[str, float] | None = None,
) -> int | None:
    """Units that may still be added without the fleet's hourly spend passing `max_hourly_price` (None:
    no cap)."""
    if spec.max_hourly_price is None:
        return None
    bound = unit_price_bound(facts, weights)
    if not math.isfinite(bound):
        return 0
    return max(0, math.floor(spec.max_hourly_price / bound + 1e-9) - math.ceil(fulfilled_units))


def _capped(units: int, room: int | None) -> int:
    return units if room is None else min(units, room)


def decide(
    spec: FleetSpec,
    progress: Progress,
    status: FleetStatus,
    now: datetime,
    facts: Mapping[str, InstanceTypeFacts],
    weights: Mapping[str, float] | None = None,
) -> tuple[Targets | None, dict[str, Any]]:
    """The fleet's new targets (None: leave them) and the progress fields that change."""
    after = spec.on_demand_fallback_after_seconds
    if after is None:
        return None, {}
    probe = progress.spot_probe_units
    total = round(status.target_capacity) - probe
    base = min(spec.on_demand_base, total)
    moved = min(progress.on_demand_fallback_units, total - base)
    spot_target = total - base - moved
    spot_have = status.spot_fulfilled_capacity
    room = room_under_cap(spec, facts, status.fulfilled_capacity, weights)

    def waited(since: datetime | None) -> bool:
        return since is not None and (now - since).total_seconds() >= after

    if probe:
        back = max(0, min(moved, math.floor(spot_have - spot_target + 1e-9)))
        if back or waited(progress.spot_probe_since):
            return Targets(total, base + moved - back), {
                "on_demand_fallback_units": moved - back,
                "spot_probe_units": 0,
                "spot_probe_since": None,
                "fallback_changed_at": now,
                "spot_short_since": None,
            }
        return None, {}

    short = math.ceil(spot_target - spot_have - 1e-9)
    if short > 0:
        since = progress.spot_short_since or now
        add = _capped(short, room)
        if waited(since) and add > 0:
            return Targets(total, base + moved + add), {
                "on_demand_fallback_units": moved + add,
                "spot_short_since": None,
                "fallback_changed_at": now,
            }
        return None, {"spot_short_since": since}
    updates: dict[str, Any] = {"spot_short_since": None}
    if moved and waited(progress.fallback_changed_at):
        size = _capped(moved, room)
        if size > 0:
            return Targets(total + size, base + moved), {
                **updates,
                "spot_probe_units": size,
                "spot_probe_since": now,
            }
    return None, updates


def update(progress: Progress, updates: dict[str, Any]) -> None:
    """Apply a decision's updates to the run's progress, in place: the monitoring iteration holds this
    Progress and goes on updating it."""
    for name, value in updates.items():
        setattr(progress, name, value)


def after_scale_down(progress: Progress, new_total: int, base: int) -> None:
    """The tail lowered the fleet's target: a probe is over, and no more units are on demand by fallback
    than the new target leaves beside the base."""
    room = max(0, new_total - min(base, new_total))
    update(
        progress,
        {
            "on_demand_fallback_units": min(progress.on_demand_fallback_units, room),
            "spot_probe_units": 0,
            "spot_probe_since": None,
        },
    )


def work_target(progress: Progress, status: FleetStatus) -> int:
    """The fleet's target without a running probe's units."""
    return round(status.target_capacity) - progress.spot_probe_units
