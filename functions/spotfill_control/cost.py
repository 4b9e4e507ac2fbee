"""What a run cost: instance-hours by type, spot cost, the on-demand equivalent, cost per million predictions.

Instance-hours run from each fleet instance's launch time to its termination (the time in its state
transition reason), or to the end of teardown for one still shutting down. The spot price of a type in a
zone is the time-weighted average of its DescribeSpotPriceHistory over the run's window; the on-demand
equivalent prices the same hours from the static table in `instance_types.CATALOG`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from spotfill_control.instance_types import CATALOG
from spotfill_control.run import RUN_ID_TAG

PRODUCT_DESCRIPTION = "Linux/UNIX"
_TERMINATION_TIME = re.compile(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (?:GMT|UTC)\)")


@dataclass(frozen=True)
class InstanceUsage:
    instance_id: str
    instance_type: str
    availability_zone: str
    launched_at: datetime
    ended_at: datetime

    @property
    def hours(self) -> float:
        return max(0.0, (self.ended_at - self.launched_at).total_seconds() / 3600)


@dataclass(frozen=True)
class CostSummary:
    hours_by_type: dict[str, float]
    spot_usd: float
    on_demand_usd: float
    unpriced: list[str]  # "type/zone" with no spot price history: priced on demand in spot_usd

    @property
    def savings_fraction(self) -> float | None:
        return None if self.on_demand_usd <= 0 else 1 - self.spot_usd / self.on_demand_usd


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


def summarise(usages: list[InstanceUsage], prices: Mapping[tuple[str, str], float]) -> CostSummary:
    """Spot cost at each type/zone's average price (on-demand where no price is known), and on demand."""
    spot = on_demand = 0.0
    unpriced: set[str] = set()
    for usage in usages:
        on_demand_rate = (
            CATALOG[usage.instance_type].on_demand_hourly_usd if usage.instance_type in CATALOG else 0.0
        )
        rate = prices.get((usage.instance_type, usage.availability_zone))
        if rate is None:
            unpriced.add(f"{usage.instance_type}/{usage.availability_zone}")
            rate = on_demand_rate
        spot += usage.hours * rate
        on_demand += usage.hours * on_demand_rate
    return CostSummary(
        hours_by_type=hours_by_type(usages),
        spot_usd=spot,
        on_demand_usd=on_demand,
        unpriced=sorted(unpriced),
    )


def cost_per_million(cost_usd: float, predictions: int) -> float | None:
    return None if predictions <= 0 else cost_usd / predictions * 1_000_000


# ------------------------------------------------------------------------------------------ AWS reads


def run_instances(run_id: str, known_ids: Iterable[str], ec2: Any) -> list[dict[str, Any]]:
    """Every instance of the run, terminated ones included (EC2 keeps those visible for about an hour)."""
    found: dict[str, dict[str, Any]] = {}
    for page in ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": f"tag:{RUN_ID_TAG}", "Values": [run_id]}]
    ):
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                found[instance["InstanceId"]] = instance
    missing = sorted(set(known_ids) - set(found))
    for start in range(0, len(missing), 200):
        for page in ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-id", "Values": missing[start : start + 200]}]
        ):
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    found[instance["InstanceId"]] = instance
    return [found[i] for i in sorted(found)]


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
    run_id: str, known_ids: Iterable[str], window_start: datetime, window_end: datetime, ec2: Any
) -> tuple[list[InstanceUsage], CostSummary]:
    usages = [usage_of(i, window_end) for i in run_instances(run_id, known_ids, ec2)]
    start = min([window_start, *(u.launched_at for u in usages)])
    prices = spot_prices(((u.instance_type, u.availability_zone) for u in usages), start, window_end, ec2)
    return usages, summarise(usages, prices)


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)
