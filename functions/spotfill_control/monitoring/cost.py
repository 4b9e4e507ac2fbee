"""What a run cost: instance-hours by type and purchase option, what they cost, the on-demand equivalent.

Instance-hours run from each fleet instance's launch time to its termination (the time in its state
transition reason), or to the end of teardown for one still shutting down. An instance is spot when EC2
describes it with `InstanceLifecycle: "spot"`, otherwise on demand. A spot instance is charged the
time-weighted average of its type and zone's DescribeSpotPriceHistory over the run's window (its on-demand
price where EC2 has no history: listed as unpriced); an on-demand instance, and the on-demand equivalent of
every hour, the run's on-demand price of its type (`run.instance_types`, resolved at Validate from the Price
List, or the static table when that was unavailable: each figure carries its source).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from spotfill_control.instance_types import InstanceTypeFacts, PriceSource
from spotfill_control.run import RUN_ID_TAG

PurchaseOption = Literal["spot", "on-demand"]
PURCHASE_OPTIONS: tuple[PurchaseOption, ...] = ("spot", "on-demand")

PRODUCT_DESCRIPTION = "Linux/UNIX"
_TERMINATION_TIME = re.compile(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (?:GMT|UTC)\)")


@dataclass(frozen=True)
class InstanceUsage:
    instance_id: str
    instance_type: str
    availability_zone: str
    launched_at: datetime
    ended_at: datetime
    purchase_option: PurchaseOption = "spot"

    @property
    def hours(self) -> float:
        return max(0.0, (self.ended_at - self.launched_at).total_seconds() / 3600)


@dataclass(frozen=True)
class OptionCost:
    """The instances of one purchase option: how many, their hours and what they cost."""

    instances: int = 0
    hours: float = 0.0
    usd: float = 0.0


@dataclass(frozen=True)
class CostSummary:
    hours_by_type: dict[str, float]
    by_purchase_option: dict[PurchaseOption, OptionCost]
    on_demand_usd: float  # every hour at its type's on-demand price (the "had it all been on demand" figure)
    unpriced: list[str]  # "type/zone" of spot instances with no spot price history: charged on demand
    on_demand_price_sources: dict[str, PriceSource]  # type -> where its on-demand price came from

    @property
    def total_usd(self) -> float:
        """What the run's instances cost: spot hours at spot prices, on-demand hours at on-demand prices."""
        return sum(option.usd for option in self.by_purchase_option.values())

    @property
    def spot_usd(self) -> float:
        return self.by_purchase_option["spot"].usd

    @property
    def savings_fraction(self) -> float | None:
        return None if self.on_demand_usd <= 0 else 1 - self.total_usd / self.on_demand_usd

    @property
    def static_table_types(self) -> list[str]:
        """Types whose on-demand figures come from the static fallback table, not the Price List."""
        return sorted(t for t, source in self.on_demand_price_sources.items() if source == "static-table")

    @property
    def types_without_on_demand_price(self) -> list[str]:
        """Types with no on-demand price at all (their on-demand figures count as zero)."""
        return sorted(t for t, source in self.on_demand_price_sources.items() if source == "unknown")


# ------------------------------------------------------------------------------------------ pure arithmetic


def termination_time(state_transition_reason: str | None) -> datetime | None:
    """`User initiated (2026-11-27 21:00:00 GMT)` → that time (AWS writes GMT, moto UTC)."""
    match = _TERMINATION_TIME.search(state_transition_reason or "")
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def usage_of(instance: Mapping[str, Any], ended_by: datetime) -> InstanceUsage:
    """An EC2 `Instance` description → its usage; a live one counts until `ended_by`."""
    launched = _aware(instance["LaunchTime"])
    ended = ended_by
    if instance.get("State", {}).get("Name") == "terminated":
        ended = termination_time(instance.get("StateTransitionReason")) or ended_by
    return InstanceUsage(
        instance_id=instance["InstanceId"],
        instance_type=instance["InstanceType"],
        availability_zone=instance.get("Placement", {}).get("AvailabilityZone", ""),
        launched_at=launched,
        ended_at=max(launched, min(ended, ended_by)),
        purchase_option="spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand",
    )


def hours_by_type(usages: Iterable[InstanceUsage]) -> dict[str, float]:
    hours: dict[str, float] = defaultdict(float)
    for usage in usages:
        hours[usage.instance_type] += usage.hours
    return dict(sorted(hours.items()))


def time_weighted_price(
    points: Iterable[tuple[datetime, float]], start: datetime, end: datetime
) -> float | None:
    """Average of a step function of prices over [start, end]; each price holds until the next one.

    The price in effect at `start` is the latest point at or before it (or the earliest point, if all are
    later). None when there are no points.
    """
    ordered = sorted(points)
    if not ordered:
        return None
    if end <= start:
        before = [p for t, p in ordered if t <= start]
        return before[-1] if before else ordered[0][1]
    # The price at `start`, then every change inside the window.
    current = next((p for t, p in reversed(ordered) if t <= start), ordered[0][1])
    total = 0.0
    cursor = start
    for at, price in ordered:
        if at <= start:
            continue
        if at >= end:
            break
        total += current * (at - cursor).total_seconds()
        cursor, current = at, price
    total += current * (end - cursor).total_seconds()
    return total / (end - start).total_seconds()


def summarise(
    usages: list[InstanceUsage],
    prices: Mapping[tuple[str, str], float],
    instance_types: Mapping[str, InstanceTypeFacts],
) -> CostSummary:
    """Each instance at the price of its purchase option (a spot one without a spot price at on-demand), and
    every hour on demand, with the source of each on-demand price."""
    instances: dict[PurchaseOption, int] = defaultdict(int)
    hours: dict[PurchaseOption, float] = defaultdict(float)
    usd: dict[PurchaseOption, float] = defaultdict(float)
    on_demand = 0.0
    unpriced: set[str] = set()
    sources: dict[str, PriceSource] = {}
    for usage in usages:
        facts = instance_types.get(usage.instance_type)
        on_demand_rate = (facts.on_demand_hourly_usd if facts else None) or 0.0
        sources[usage.instance_type] = facts.price_source if facts else "unknown"
        rate = on_demand_rate
        if usage.purchase_option == "spot":
            spot_rate = prices.get((usage.instance_type, usage.availability_zone))
            if spot_rate is None:
                unpriced.add(f"{usage.instance_type}/{usage.availability_zone}")
            else:
                rate = spot_rate
        option = usage.purchase_option
        instances[option] += 1
        hours[option] += usage.hours
        usd[option] += usage.hours * rate
        on_demand += usage.hours * on_demand_rate
    return CostSummary(
        hours_by_type=hours_by_type(usages),
        by_purchase_option={o: OptionCost(instances[o], hours[o], usd[o]) for o in PURCHASE_OPTIONS},
        on_demand_usd=on_demand,
        unpriced=sorted(unpriced),
        on_demand_price_sources=dict(sorted(sources.items())),
    )


def cost_per_million(cost_usd: float, predictions: int) -> float | None:
    return None if predictions <= 0 else cost_usd / predictions * 1_000_000


# ------------------------------------------------------------------------------------------ AWS reads


def run_instances(run_id: str, known_ids: Iterable[str], ec2: Any) -> list[dict[str, Any]]:
    """Every instance of the run, terminated ones included (EC2 keeps those visible for about an hour)."""
    found: dict[str, dict[str, Any]] = {}
    for page in ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": f"tag:{RUN_ID_TAG}", "Values": [run_id]}],
        # EC2's largest page: 1,000 instances a call (an unpaginated request may time out at scale).
        PaginationConfig={"PageSize": 1000},
    ):
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                found[instance["InstanceId"]] = instance
    found.update(instances_by_id(set(known_ids) - set(found), ec2))
    return [found[i] for i in sorted(found)]


def instances_by_id(instance_ids: Iterable[str], ec2: Any) -> dict[str, dict[str, Any]]:
    """The instances EC2 still knows of these ids, 200 ids a call (for the few a tag read misses)."""
    found: dict[str, dict[str, Any]] = {}
    missing = sorted(set(instance_ids))
    for start in range(0, len(missing), 200):
        for page in ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-id", "Values": missing[start : start + 200]}]
        ):
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    found[instance["InstanceId"]] = instance
    return found


def spot_prices(
    pairs: Iterable[tuple[str, str]], start: datetime, end: datetime, ec2: Any
) -> dict[tuple[str, str], float]:
    """(instance type, zone) → time-weighted average spot price over [start, end]."""
    prices: dict[tuple[str, str], float] = {}
    for instance_type, zone in sorted(set(pairs)):
        points: list[tuple[datetime, float]] = []
        pages = ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=[instance_type],
            ProductDescriptions=[PRODUCT_DESCRIPTION],
            Filters=[{"Name": "availability-zone", "Values": [zone]}],
            StartTime=start,
            EndTime=end,
        )
        for page in pages:
            for entry in page.get("SpotPriceHistory", []):
                if entry.get("AvailabilityZone") == zone and entry.get("InstanceType") == instance_type:
                    points.append((_aware(entry["Timestamp"]), float(entry["SpotPrice"])))
        average = time_weighted_price(points, start, end)
        if average is not None:
            prices[(instance_type, zone)] = average
    return prices


def run_cost(
    run_id: str,
    known_ids: Iterable[str],
    window_start: datetime,
    window_end: datetime,
    ec2: Any,
    instance_types: Mapping[str, InstanceTypeFacts],
) -> tuple[list[InstanceUsage], CostSummary]:
    usages = [usage_of(i, window_end) for i in run_instances(run_id, known_ids, ec2)]
    start = min([window_start, *(u.launched_at for u in usages)])
    spot = [(u.instance_type, u.availability_zone) for u in usages if u.purchase_option == "spot"]
    prices = spot_prices(spot, start, window_end, ec2)
    return usages, summarise(usages, prices, instance_types)


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)
