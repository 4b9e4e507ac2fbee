"""The dollar cap of a whole run (`limits.max_total_usd`): accrue the cost, project it, drain before the cap.

Every monitor poll:

1. **accrues** the run's cost over [accrued_through, now]: for each instance of the run (DescribeInstances by
   the run's tag, terminated ones included), the seconds it ran inside that window times the price it runs
   at: a spot instance (`InstanceLifecycle == "spot"`) the spot price of its type in its zone, any other
   instance its type's on-demand price. Spot prices are read from DescribeSpotPriceHistory (the price in
   effect now) and kept in the run, read again at most every `SPOT_PRICE_REFRESH_SECONDS`. Only the total
   and the time it runs through are kept, never a record per instance.
2. **projects** it to where a drain begun at the next poll would end: accrued + the fleet's hourly price x
   (one poll interval + `drain_seconds`). The hourly price is that of the instances still billing plus the
   capacity the fleet may still launch up to its target, at the highest price per unit of capacity.
3. **drains** once the projection reaches the cap: the fleet's target goes to 0 (its instances keep running
   so their workers finish the shards in hand), the service to 0 tasks (ECS stops each worker with SIGTERM:
   it finishes its shard if it can before the stop timeout, else puts the message back). A later poll that
   finds no message in flight, or one a stop timeout after the drain began, ends the run with
   `BudgetReached`: teardown terminates the instances, the report says "budget reached", and `spotfill
   redrive` queues the unfinished shards in a new run.

Why that bounds the spend: a poll that does not drain saw accrued + H x (P + D) below the cap (H the hourly
price, P the poll interval, D the drain). The next poll, P later, has accrued at most H x P more; if it
drains, the drain costs at most H x D, so the run ends below the cap. What the projection cannot see (a
poll that comes late, a spot price that rose since it was read) is what the guarantee's one poll interval
of the fleet's hourly price covers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotfill_control.errors import BudgetReached
from spotfill_control.fleet import fleet
from spotfill_control.fleet.cluster import STOP_TIMEOUT_SECONDS
from spotfill_control.fleet.fleet import requested_capacity
from spotfill_control.instance_types import STATIC_ON_DEMAND_USD
from spotfill_control.monitoring import cost
from spotfill_control.run import RunState, SpotPrice

# Spot prices change at most a few times an hour; reading them every poll would only cost API calls.
SPOT_PRICE_REFRESH_SECONDS = 300
# From the poll that ends the drain to instances terminated: the Teardown state's start and its fleet
# cancellation (the first thing it does after removing the service).
TEARDOWN_ALLOWANCE_SECONDS = 60
# Instances that are billed: everything EC2 has not finished terminating.
BILLED_STATES = frozenset({"pending", "running", "shutting-down", "stopping"})
CAPACITY_STATES = frozenset({"pending", "running"})
# The least time any instance of a run is billed before the monitor's first poll can see it: EC2 bills a
# Linux instance per second with a minimum of 60 seconds, and an ECS-optimized instance takes at least about
# that long to boot and register with the run's cluster (the registration loop waits for it; the first poll
# counts from launch).
BOOT_ALLOWANCE_SECONDS = 60


@dataclass(frozen=True)
class Billing:
    """One instance as the budget sees it: when it ran, what it costs per hour, and whether it still runs."""

    instance_id: str
    instance_type: str
    started_at: datetime
    ended_at: datetime | None  # None: still billing
    usd_per_hour: float
    counts_as_capacity: bool  # pending or running: part of the fleet's fulfilled capacity
    purchase_option: str = "spot"  # "spot" or "on-demand"


@dataclass(frozen=True)
class Projection:
    accrued_usd: float
    hourly_usd: float
    projected_usd: float


# ------------------------------------------------------------------------------------------ pure arithmetic


def drain_seconds(poll_interval_seconds: int) -> float:
    """How long instances keep billing once a drain begins: the workers' stop timeout (ECS kills a worker
    that has not finished by then), the poll that notices, and teardown's start."""
    return STOP_TIMEOUT_SECONDS + poll_interval_seconds + TEARDOWN_ALLOWANCE_SECONDS


def horizon_seconds(poll_interval_seconds: int) -> float:
    """How far each poll projects: to the next poll, and through a drain that poll may have to start."""
    return poll_interval_seconds + drain_seconds(poll_interval_seconds)


def seconds_billed(billing: Billing, since: datetime | None, now: datetime) -> float:
    """The part of [since, now] the instance ran in (from its start when nothing was accrued yet)."""
    start = billing.started_at if since is None else max(billing.started_at, since)
    end = now if billing.ended_at is None else min(billing.ended_at, now)
    return max(0.0, (end - start).total_seconds())


def accrue(billings: Iterable[Billing], since: datetime | None, now: datetime) -> float:
    """USD the instances cost over [since, now]."""
    return sum(seconds_billed(b, since, now) * b.usd_per_hour / 3600 for b in billings)


def fleet_hourly_usd(
    billings: Iterable[Billing],
    target_capacity: float,
    weights: Mapping[str, float],
    ceiling_per_unit: float,
) -> float:
    """The fleet's price per hour: every instance still billing, plus the capacity the fleet may still launch
    to reach its target, priced at the highest price per unit of capacity."""
    live = [b for b in billings if b.ended_at is None]
    fulfilled = sum(weights.get(b.instance_type, 1.0) for b in live if b.counts_as_capacity)
    shortfall = max(0.0, target_capacity - fulfilled)
    return sum(b.usd_per_hour for b in live) + shortfall * ceiling_per_unit


def project(accrued_usd: float, hourly_usd: float, poll_interval_seconds: int) -> Projection:
    projected = accrued_usd + hourly_usd * horizon_seconds(poll_interval_seconds) / 3600
    return Projection(accrued_usd=accrued_usd, hourly_usd=hourly_usd, projected_usd=projected)


def capacity_by_pool(billings: Iterable[Billing]) -> dict[str, float]:
    """Pending and running instances by `<instance type>/<spot|on-demand>` (the series' fleet capacity)."""
    counts: dict[str, float] = defaultdict(float)
    for b in billings:
        if b.ended_at is None and b.counts_as_capacity:
            counts[f"{b.instance_type}/{b.purchase_option}"] += 1
    return dict(sorted(counts.items()))


def projected_total_usd(
    accrued_usd: float, hourly_usd: float, eta_seconds: float, poll_interval_seconds: int
) -> float:
    """What the run will have cost when it ends at the ETA: the fleet keeps billing at its hourly price
    until then and up to the poll that sees the end (no drain: nothing is stopped). Teardown's own seconds
    are left out: a second or two on the local cloud, about a minute of the fleet on AWS."""
    return accrued_usd + hourly_usd * (eta_seconds + poll_interval_seconds) / 3600


def least_cost_usd(cheapest_hourly_usd: float, poll_interval_seconds: int) -> float:
    """The least any run of a fleet can cost: one instance at the cheapest price the fleet may launch at,
    billed through its boot and registration (`BOOT_ALLOWANCE_SECONDS`) and one poll interval, to the first
    poll that can drain it. A cap below it cannot bound the spend: the run would cost more before the budget
    could act."""
    return cheapest_hourly_usd * (BOOT_ALLOWANCE_SECONDS + poll_interval_seconds) / 3600


def cheapest_instance(
    instance_types: Iterable[str],
    prices: Mapping[tuple[str, str], float],
    on_demand: Mapping[str, float],
    *,
    spot: bool,
) -> tuple[str, float, str]:
    """(type, USD per hour, "spot" or "on-demand") of the cheapest instance the fleet may launch, priced as
    the budget prices it at run time: a spot instance at its type's spot price (its cheapest zone here, since
    which zone it lands in is not known yet; on demand where no spot price is known), an on-demand one at its
    type's on-demand price. `spot` False: the fleet launches on demand only."""
    offers = []
    for name in instance_types:
        zones = [p for (t, _), p in prices.items() if t == name]
        if spot and zones:
            offers.append((min(zones), name, "spot"))
        else:
            offers.append((on_demand[name], name, "on-demand"))
    price, name, option = min(offers)
    return name, price, option


def must_drain(cap_usd: float | None, projected_usd: float) -> bool:
    return cap_usd is not None and projected_usd >= cap_usd


def drained(draining_since: datetime | None, in_flight: int, now: datetime) -> bool:
    """The drain is over once no worker holds a shard (none in flight) on a poll after the one that began it,
    or a stop timeout after it began (ECS has killed every worker by then)."""
    if draining_since is None or now <= draining_since:
        return False
    return in_flight == 0 or (now - draining_since).total_seconds() >= STOP_TIMEOUT_SECONDS


def spot_rate(
    prices: Mapping[tuple[str, str], float], instance_type: str, zone: str, on_demand_usd: float
) -> float:
    """A spot instance's price: its type in its zone; else the type's highest price in any zone; else (no
    spot price known at all) on demand, which a spot price never exceeds for long."""
    if (instance_type, zone) in prices:
        return prices[(instance_type, zone)]
    in_other_zones = [p for (t, _), p in prices.items() if t == instance_type]
    return max(in_other_zones) if in_other_zones else on_demand_usd


def ceiling_per_unit(
    instance_types: Iterable[str],
    prices: Mapping[tuple[str, str], float],
    weights: Mapping[str, float],
    on_demand: Mapping[str, float],
) -> float:
    """The highest price per unit of capacity the fleet may launch at: each type's dearest spot price (on
    demand where none is known) over its weight."""
    ceiling = 0.0
    for name in instance_types:
        price = spot_rate(prices, name, "", on_demand[name])
        ceiling = max(ceiling, price / weights.get(name, 1.0))
    return ceiling


def billing_of(
    instance: Mapping[str, Any],
    now: datetime,
    was_alive: bool,
    since: datetime | None,
    prices: Mapping[tuple[str, str], float],
    on_demand_usd: float,
) -> Billing:
    """An EC2 `Instance` description → its Billing.

    A terminated instance ends at the time in its state transition reason. One without that time (a spot
    interruption may give none) ended after the last poll if that poll saw it alive, or if it was launched
    since: it is billed until now, once; otherwise it ended before the last poll and costs nothing more.
    """
    usage = cost.usage_of(instance, now)
    state = instance.get("State", {}).get("Name", "")
    ended: datetime | None = None
    if state not in BILLED_STATES:
        ended = cost.termination_time(instance.get("StateTransitionReason"))
        if ended is None:
            recent = was_alive or since is None or usage.launched_at >= since
            ended = now if recent else usage.launched_at
    if instance.get("InstanceLifecycle") == "spot":
        rate = spot_rate(prices, usage.instance_type, usage.availability_zone, on_demand_usd)
    else:
        rate = on_demand_usd
    return Billing(
        instance_id=usage.instance_id,
        instance_type=usage.instance_type,
        started_at=usage.launched_at,
        ended_at=ended,
        usd_per_hour=rate,
        counts_as_capacity=state in CAPACITY_STATES,
        purchase_option="spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand",
    )


# ------------------------------------------------------------------------------------------ prices


def on_demand_hourly_usd(run: RunState, instance_type: str) -> float:
    """The on-demand price of a type, as Validate resolved it (the Price List, else the static table): the one
    place the budget reads it. Validate refuses a capped run with a type that has neither, so the fallback to
    the static table only serves a run state made before Validate resolved prices."""
    facts = run.instance_types.get(instance_type)
    if facts is not None and facts.on_demand_hourly_usd is not None:
        return facts.on_demand_hourly_usd
    if instance_type in STATIC_ON_DEMAND_USD:
        return STATIC_ON_DEMAND_USD[instance_type]
    raise ValueError(f"no on-demand price for {instance_type}: limits.max_total_usd cannot bound its cost")


def price_table(run: RunState) -> dict[tuple[str, str], float]:
    return {(p.instance_type, p.availability_zone): p.usd_per_hour for p in run.budget.spot_prices}


def current_spot_prices(instance_types: Iterable[str], now: datetime, ec2: Any) -> list[SpotPrice]:
    """The spot price in effect now of each type in each zone: DescribeSpotPriceHistory over [now, now]
    answers the last change before `now` (the price in effect), and `cost.time_weighted_price` picks it."""
    points: dict[tuple[str, str], list[tuple[datetime, float]]] = defaultdict(list)
    pages = ec2.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=sorted(set(instance_types)),
        ProductDescriptions=[cost.PRODUCT_DESCRIPTION],
        StartTime=now,
        EndTime=now,
    )
    for page in pages:
        for entry in page.get("SpotPriceHistory", []):
            key = (entry["InstanceType"], entry["AvailabilityZone"])
            points[key].append((entry["Timestamp"], float(entry["SpotPrice"])))
    prices = []
    for (instance_type, zone), history in sorted(points.items()):
        price = cost.time_weighted_price(history, now, now)
        if price is not None:
            prices.append(SpotPrice(instance_type=instance_type, availability_zone=zone, usd_per_hour=price))
    return prices


def refresh_spot_prices(run: RunState, now: datetime, ec2: Any) -> None:
    """Read the spot prices again when they are older than SPOT_PRICE_REFRESH_SECONDS (or never read)."""
    budget = run.budget
    if (
        budget.spot_prices_at is not None
        and (now - budget.spot_prices_at).total_seconds() < SPOT_PRICE_REFRESH_SECONDS
    ):
        return
    budget.spot_prices = current_spot_prices(run.spec.fleet.instance_types, now, ec2)
    budget.spot_prices_at = now


# ------------------------------------------------------------------------------------------ each poll


def billings(
    run: RunState, now: datetime, ec2: Any, instances: Sequence[dict[str, Any]] | None = None
) -> list[Billing]:
    """Every instance of the run as billed now (call before the poll replaces `progress.known_instances`);
    `instances`: the run's instances as `cost.run_instances` read them this poll (else read here)."""
    prices = price_table(run)
    alive_before = set(run.progress.known_instances)
    since = run.budget.accrued_through
    return [
        billing_of(
            instance,
            now,
            instance["InstanceId"] in alive_before,
            since,
            prices,
            on_demand_hourly_usd(run, instance["InstanceType"]),
        )
        for instance in (
            instances
            if instances is not None
            else cost.run_instances(run.run_id, run.progress.known_instances, ec2)
        )
    ]


def accrue_run(
    run: RunState, now: datetime, ec2: Any, instances: Sequence[dict[str, Any]] | None = None
) -> list[Billing]:
    """Refresh prices if due, add the cost of [accrued_through, now] to the run; returns the billings."""
    refresh_spot_prices(run, now, ec2)
    found = billings(run, now, ec2, instances)
    budget = run.budget
    budget.accrued_usd += accrue(found, budget.accrued_through, now)
    budget.accrued_through = now
    return found


def project_run(run: RunState, found: list[Billing]) -> Projection:
    """Project the accrued cost over the horizon at the fleet's hourly price and record it in the run. The
    fleet's target is the last one seen (before this poll's tail scale-down, so never too low; the requested
    capacity before the first poll), 0 once draining."""
    types = run.spec.fleet.instance_types
    weights = run.capacity_weights
    prices = price_table(run)
    ceiling = ceiling_per_unit(types, prices, weights, {t: on_demand_hourly_usd(run, t) for t in types})
    target = run.progress.fleet_target_capacity
    if target is None:
        target = requested_capacity(run)
    if run.budget.draining_since is not None:
        target = 0
    hourly = fleet_hourly_usd(found, target, weights, ceiling)
    projection = project(run.budget.accrued_usd, hourly, run.spec.limits.poll_interval_seconds)
    run.budget.hourly_usd = projection.hourly_usd
    run.budget.projected_usd = projection.projected_usd
    return projection


def stop_new_capacity(run: RunState, ec2: Any) -> None:
    """The fleet launches nothing more: total and on-demand target capacity 0, and the instances it has keep
    running (no termination) so their workers can finish the shards in hand; teardown terminates them. The
    one place the cap changes the fleet.

    The on-demand target goes to 0 with the total: a fleet with on-demand units (`fleet.on_demand_base`, or
    units the fallback moved on demand) refuses a total below its on-demand target (ModifySpotFleetRequest:
    `InvalidParameter`, "TargetCapacity (0) cannot be less than OnDemandTargetCapacity (1)")."""
    fleet.set_target_capacity(run, ec2, 0, 0, keep_instances=True)


def drain_if_due(run: RunState, projection: Projection, ecs: Any, now: datetime) -> None:
    """Start the drain when the projection reaches the cap (once). The fleet's target goes to 0 when the
    monitor looks at the fleet (`progress`), as soon as the fleet takes a new target."""
    if run.budget.draining_since is None and must_drain(
        run.spec.limits.max_total_usd, projection.projected_usd
    ):
        start_drain(run, ecs, now)


def start_drain(run: RunState, ecs: Any, now: datetime) -> None:
    """No worker takes another shard: ECS stops every task of the service (SIGTERM; the worker finishes the
    shard in hand before the stop timeout if it can, else puts it back)."""
    cluster, service = run.resources.cluster_name, run.resources.service_name
    if cluster and service:
        ecs.update_service(cluster=cluster, service=service, desiredCount=0)
    run.budget.draining_since = now


def check_budget(run: RunState, in_flight: int, now: datetime) -> None:
    """Raise BudgetReached once a drain is over (never for a finished run)."""
    budget = run.budget
    if run.progress.state == "done" or not drained(budget.draining_since, in_flight, now):
        return
    cap = run.spec.limits.max_total_usd
    unfinished = max(0, run.shards_total - run.shards_skipped - run.progress.outputs_done)
    # No dollar figure here: what the run cost is the report's (through teardown), and the reason is shown
    # beside it; the accrual so far would be a second total that disagrees with it.
    raise BudgetReached(
        f"run {run.run_id} drained when its projected cost reached limits.max_total_usd = "
        f"${format_usd(cap or 0.0)}, {run.progress.outputs_done} shard(s) done and about {unfinished} "
        "unfinished: " + redrive_advice(run.run_id)
    )


def redrive_advice(run_id: str) -> str:
    """What finishes a drained run's unfinished shards on AWS (the local cloud's `run --local` shows its own
    advice in this one's place: that cloud is gone when the command returns)."""
    return f"`spotfill redrive {run_id} --max-total-usd <new cap>` queues them in a new run"


def format_usd_up(value: float) -> str:
    """`format_usd`, rounded up: a least figure that, given back as is, is not below the figure."""
    if value <= 0 or not math.isfinite(value):
        return format_usd(value)
    digits = max(2, 3 - math.floor(math.log10(value)))
    return f"{math.ceil(value * 10**digits - 1e-9) / 10**digits:.{digits}f}"


def format_usd(value: float) -> str:
    """Dollars with four significant digits however small (local-cloud caps are fractions of a cent)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:.2f}"
    digits = max(2, 3 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}"
