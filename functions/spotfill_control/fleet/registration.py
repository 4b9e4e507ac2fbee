"""CheckRegistration: has an instance of the fleet joined the run's cluster yet, and has the fleet failed?

A fleet (either API) reports `ActivityStatus: error` once one launch failed, even while its other pools
fill; what failed is read from its history (`fleet_errors`): a failure every pool shares, or one that means
the request can never be fulfilled, fails the run; a pool EC2 gave up on is recorded on the run
(`RunState.failed_pools`) and named when registration times out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control.errors import (
    FleetRequestError,
    RegistrationTimeoutError,
)
from spotfill_control.fleet.cluster import count_registered_instances
from spotfill_control.fleet.fleet import api_of, describe_fleet, rebalance
from spotfill_control.fleet.fleet_api import (
    ENDED_STATES,
    FleetStatus,
    call_error,
)
from spotfill_control.run import FAILED_POOLS_LIMIT, FailedPool, RunState, utcnow

# A fleet (either API) reports `ActivityStatus: error` once one launch failed, even while its other pools
# fill. What failed is in its history: error events, and on Spot Fleet `information` events naming a pool
# EC2 gave up on (`fleet_api.POOL_INFORMATION_SUB_TYPES`). These sub-types mean the request can never be
# fulfilled: the fleet role may not launch or terminate, or EC2 gave up on every launch specification.
FATAL_ERROR_SUB_TYPES = frozenset({"iamFleetRoleInvalid", "allLaunchSpecsTemporarilyBlacklisted"})


# Error codes (they open an event's description after the pool) that every pool shares: the launch template,
# its AMI, key pair, security groups and block devices, and the account's permissions are the same for every
# override. Any other code (Unsupported in a zone, InsufficientInstanceCapacity, ...) fails one pool only.
SHARED_ERROR_CODES = (
    "InvalidLaunchTemplate",
    "InvalidAMIID",
    "InvalidKeyPair",
    "InvalidGroup",
    "InvalidBlockDeviceMapping",
    "UnauthorizedOperation",
    "AuthFailure",
    "OptInRequired",
    "PendingVerification",
)


# Events are read from a little before the request, in case the Lambda's clock runs ahead of EC2's.
HISTORY_CLOCK_SLACK = timedelta(minutes=5)


_ZONE = re.compile(r"\b[a-z]{2}(?:-gov)?-[a-z]+-\d+[a-z]\b")


_ERROR_CODE = re.compile(r"(?<![/\w])([A-Z][A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*):")


@dataclass(frozen=True)
class FleetError:
    """One failure event of the fleet's request history (an error, or a Spot Fleet pool's `information`
    event), and the pool it names (if any)."""

    sub_type: str
    description: str
    instance_type: str | None = None
    availability_zone: str | None = None
    code: str | None = None

    @property
    def fatal(self) -> bool:
        """The request can never be fulfilled: no other pool would launch either."""
        return self.sub_type in FATAL_ERROR_SUB_TYPES or (
            self.code is not None and self.code.startswith(SHARED_ERROR_CODES)
        )

    def as_failed_pool(self) -> FailedPool:
        return FailedPool(
            instance_type=self.instance_type,
            availability_zone=self.availability_zone,
            error=self.code or self.sub_type,
            message=self.description or self.sub_type,
        )


def parse_fleet_error(record: dict[str, Any], instance_types: Sequence[str]) -> FleetError:
    """A failure history record → its pool and code. EC2 describes a pool's failure as
    `<type>, <ami>, <platform>, <zone>, <Code>: <message>` (an error or a `launchSpecTemporarilyBlacklisted`
    event), or `<type>, <ami>, <platform>, <zone>, <message>` (`launchSpecUnusable`: no code, the sub-type
    stands for it); other errors name no pool."""
    information = record.get("EventInformation", {})
    description = str(information.get("EventDescription", ""))
    tokens = set(re.split(r"[\s,()]+", description))
    instance_type = next((t for t in instance_types if t in tokens), None)
    zone = _ZONE.search(description)
    code = _ERROR_CODE.search(description)
    return FleetError(
        sub_type=str(information.get("EventSubType", "error")),
        description=description,
        instance_type=instance_type,
        availability_zone=zone.group(0) if zone else None,
        code=code.group(1) if code else None,
    )


def fleet_errors(run: RunState, ec2: Any, since: datetime) -> list[FleetError]:
    """The fleet's failure events since `since` (every page of its history: DescribeFleetHistory
    `service-error`, or DescribeSpotFleetRequestHistory `error` and a pool's `information` events)."""
    fleet_id = run.resources.fleet_id
    if fleet_id is None:
        return []
    try:
        records = api_of(run).failure_records(fleet_id, ec2, since)
    except ClientError as exc:
        raise call_error(f"{run.spec.fleet.api}: fleet history of {fleet_id}", exc) from exc
    return [parse_fleet_error(r, run.spec.fleet.instance_types) for r in records]


def with_failed_pools(run: RunState, errors: Iterable[FleetError]) -> RunState:
    """The run with the pools these errors name added to `failed_pools` (each pool and error once)."""
    pools = list(run.failed_pools)
    seen = {(p.instance_type, p.availability_zone, p.error) for p in pools}
    for error in errors:
        pool = error.as_failed_pool()
        key = (pool.instance_type, pool.availability_zone, pool.error)
        if key not in seen and len(pools) < FAILED_POOLS_LIMIT:
            seen.add(key)
            pools.append(pool)
    return run if len(pools) == len(run.failed_pools) else run.model_copy(update={"failed_pools": pools})


def _named(errors: Iterable[FleetError]) -> str:
    return _named_pools(e.as_failed_pool() for e in errors)


def _named_pools(pools: Iterable[FailedPool]) -> str:
    """`c5.large in us-east-1a, us-east-1b: Unsupported; ...`: pools, zones grouped by type and error."""
    zones: dict[tuple[str | None, str], list[str]] = {}
    for pool in pools:
        listed = zones.setdefault((pool.instance_type, pool.error), [])
        if pool.availability_zone and pool.availability_zone not in listed:
            listed.append(pool.availability_zone)
    named = []
    for (instance_type, code), in_zones in zones.items():
        where = " in ".join(x for x in (instance_type, ", ".join(sorted(in_zones))) if x)
        named.append(f"{where}: {code}" if where else code)
    return "; ".join(named)


def check_fleet_healthy(fleet_id: str, status: FleetStatus, errors: Sequence[FleetError] = ()) -> None:
    """Raise FleetRequestError when the fleet ended, or when its history holds an error no pool escapes.
    A failed pool while others may still fill is not an error (the registration timeout covers a fleet
    that never gets capacity)."""
    if status.state in ENDED_STATES:
        reasons = f": {_named(errors)}" if errors else ""
        raise FleetRequestError(f"fleet {fleet_id} is {status.state}{reasons}")
    fatal = [e for e in errors if e.fatal]
    if fatal:
        details = "; ".join(dict.fromkeys(f"{e.sub_type}: {e.description}" for e in fatal))
        pools = [e for e in errors if not e.fatal and e.instance_type]
        failed = f"; failed pools: {_named(pools)}" if pools else ""
        raise FleetRequestError(f"fleet {fleet_id} can never be fulfilled: {details}{failed}")


def check_registration(run: RunState, ec2: Any, ecs: Any, now: datetime | None = None) -> RunState:
    """CheckRegistration: fleet errors and timeouts fail; `registered` once an instance joined the cluster."""
    now = now or utcnow()
    fleet_id = run.resources.fleet_id
    if fleet_id is None:
        raise FleetRequestError("the run has no fleet: RequestFleet did not finish")
    status = describe_fleet(run, ec2, now)
    if status is None:
        # EC2 does not know the fleet it just made yet: wait as for any fleet not yet registered.
        return run
    timeline = run.timeline
    requested_at = timeline.fleet_requested_at or now
    # Read every poll, not only once `ActivityStatus` says `error`: a Spot Fleet pool EC2 gave up on is an
    # `information` event, which need not change the fleet's activity.
    errors = fleet_errors(run, ec2, requested_at - HISTORY_CLOCK_SLACK)
    run = with_failed_pools(run, errors)
    check_fleet_healthy(fleet_id, status, errors)
    if status.state == "active":
        # Spot short from the start: the fallback's clock runs from the request, so a fleet spot cannot
        # fill at all still gets its on-demand capacity before the registration timeout.
        rebalance(run, ec2, status, now)
    if status.fulfilled and timeline.fleet_fulfilled_at is None:
        timeline = timeline.model_copy(update={"fleet_fulfilled_at": now})
    registered = count_registered_instances(run, ecs)
    if registered > 0:
        return run.model_copy(
            update={
                "phase": "registered",
                "timeline": timeline.model_copy(update={"registered_at": timeline.registered_at or now}),
            }
        )
    waited = (now - requested_at).total_seconds()
    if waited > run.spec.limits.registration_timeout_seconds:
        failed = f"; failed pools: {_named_pools(run.failed_pools)}" if run.failed_pools else ""
        raise RegistrationTimeoutError(
            f"no instance of fleet {fleet_id} registered with cluster {run.scoped_name} within "
            f"{run.spec.limits.registration_timeout_seconds} s (fleet {status.state}, "
            f"{status.fulfilled_capacity:g} of {status.target_capacity:g} capacity fulfilled){failed}"
        )
    return run.model_copy(update={"timeline": timeline})
