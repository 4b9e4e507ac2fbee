"""The run's fleet: the request, and reading its state back and changing it, on either API (`fleet.api`:
EC2 Fleet or Spot Fleet, `fleet.fleet_api`); every fleet call goes through here.

Capacity is weighted by vCPUs (GPUs for a GPU fleet; `instance_types.capacity_weights`): the smallest
instance type in the request weighs 1, a type with twice the vCPUs weighs 2, so `fleet.target_capacity` means
"this many of the smallest type, or the same vCPUs (GPUs)".

The request never asks more than the work can use (`fleet_target_capacity`): each instance runs
`service.tasks_per_instance` tasks whatever its type, so the shards left after PrepareRun keep at most
`ceil(shards / tasks_per_instance)` instances busy; the target is capped at that many units, which is at most
that many instances of any mix (every type weighs 1 or more), so no instance is requested only to idle.

The launch template version the fleet launches from is `fleet.launch_template`'s; CheckRegistration, with
what a fleet's failure history means, is `fleet.registration`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control.config import Settings
from spotfill_control.errors import (
    FleetRequestError,
    InvalidSpecError,
    RunTimeoutError,
    SpotfillError,
)
from spotfill_control.fleet import on_demand
from spotfill_control.fleet.fleet_api import (
    EC2_FLEET_SPOT_STRATEGIES,
    GONE_STATES,
    LIVE_STATES,
    Deletion,
    FleetApi,
    FleetInstance,
    FleetStatus,
    api_named,
    call_error,
    whole_units,
)
from spotfill_control.instance_types import capacity_weights as capacity_weights  # tests read it here
from spotfill_control.run import RUN_ID_TAG, RunState, utcnow
from spotfill_control.spec import FleetSpec

EC2_FLEET_SERVICE = "ec2fleet.amazonaws.com"


# A fleet of type maintain or request has at most 300 Spot capacity pools, "unique combination of instance
# type and subnet", on either API ("Quotas for EC2 Fleet and Spot Fleet",
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/fleet-quotas.html); CreateFleet also takes at most 300
# overrides across its launch templates (FleetLaunchTemplateConfigRequest, EC2 API reference). The quota
# counts pairs, not override items: subnets comma-separated in one override (EC2 Fleet allows it) would not
# lift it.
MAX_FLEET_OVERRIDES = 300


# EC2's API is eventually consistent: a call naming a fleet created moments ago may answer that it does not
# exist (InvalidFleetId.NotFound, fleetIdDoesNotExist, ...). The EC2 Developer Guide ("Eventual consistency in
# the Amazon EC2 API", https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html) has callers
# retry with backoff from a couple of seconds up to a few minutes; for this long after the request, "not
# found" about the run's fleet is transient, never "gone".
CONSISTENCY_GRACE = timedelta(minutes=5)


def fleet_target_capacity(target_capacity: int, remaining_shards: int, tasks_per_instance: int) -> int:
    """The fleet's target capacity (weighted units): the spec's `target_capacity`, capped at the instances the
    remaining shards keep busy, `ceil(remaining / tasks_per_instance)`, and at least 1."""
    usable = math.ceil(remaining_shards / tasks_per_instance)
    return max(1, min(target_capacity, usable))


def requested_capacity(run: RunState) -> int:
    """The target capacity the run's fleet is requested with (after PrepareRun, which counts its shards): with
    a deadline Validate could size (`run.finish_by.start_units`), that capacity, `fleet.target_capacity`
    being its ceiling."""
    deadline = run.finish_by
    start = deadline.start_units if deadline is not None else None
    return fleet_target_capacity(
        run.spec.fleet.target_capacity if start is None else min(start, run.spec.fleet.target_capacity),
        max(0, run.shards_total - run.shards_skipped),
        run.spec.service.tasks_per_instance,
    )


def subnets_for(fleet: FleetSpec, settings: Settings) -> list[str]:
    return list(fleet.subnets) or list(settings.default_subnets)


def check_override_count(fleet: FleetSpec, subnets: Sequence[str]) -> None:
    """The request has one override per instance type x subnet, a capacity pool each; a `maintain` fleet has
    at most `MAX_FLEET_OVERRIDES` pools, so Validate refuses more, naming the count and the limit."""
    count = len(fleet.instance_types) * len(subnets)
    if count > MAX_FLEET_OVERRIDES:
        raise InvalidSpecError(
            f"fleet.instance_types x fleet.subnets: {len(fleet.instance_types)} instance types x "
            f"{len(subnets)} subnets make {count} capacity pools (one launch template override per type and "
            f"subnet), more than the {MAX_FLEET_OVERRIDES} a fleet of type maintain may have (an EC2 Fleet "
            f"and Spot Fleet quota): name fewer types or subnets (at most {MAX_FLEET_OVERRIDES} pairs)."
        )


def launch_template_configs(
    run: RunState, settings: Settings, weights: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """The run's launch template version, with one override per instance type x subnet, each weighted (by
    `weights`, else the fleet's weights now: `RunState.capacity_weights`)."""
    if run.resources.launch_template_version is None:
        raise FleetRequestError("the run has no launch template version: PrepareRun did not finish")
    fleet = run.spec.fleet
    weights = weights or run.capacity_weights
    return [
        {
            "LaunchTemplateSpecification": {
                "LaunchTemplateId": settings.launch_template_id,
                "Version": str(run.resources.launch_template_version),
            },
            "Overrides": [
                {"InstanceType": name, "SubnetId": subnet, "WeightedCapacity": weights[name]}
                for name in fleet.instance_types
                for subnet in subnets_for(fleet, settings)
            ],
        }
    ]


def fleet_tags(run: RunState) -> list[dict[str, Any]]:
    return [
        {
            "ResourceType": api_of(run).resource_type,
            "Tags": [{"Key": RUN_ID_TAG, "Value": run.run_id}, {"Key": "Name", "Value": run.scoped_name}],
        }
    ]


def base_on_demand(run: RunState, total: int) -> int:
    """The units always on demand (`fleet.on_demand_base`), never more than the fleet's target."""
    return min(run.spec.fleet.on_demand_base, total)


def hourly_cap(fleet: FleetSpec) -> str | None:
    """Each purchase option's `MaxTotalPrice`: the whole hourly cap.

    EC2 enforces a cap per purchase option, never on their sum, and the caps cannot be modified later
    (ModifyFleet and ModifySpotFleetRequest change capacities only). A fixed split would starve the on-demand
    fallback of the share spot leaves unused, so each option gets the whole cap (neither alone can spend
    past it) and the Monitor keeps the sum under it: it moves to on demand only the units the cap leaves
    room for (`affordable_on_demand_units`)."""
    return None if fleet.max_hourly_price is None else f"{fleet.max_hourly_price:.4f}"


def valid_until(run: RunState, now: datetime) -> datetime:
    return (run.timeline.started_at or now) + timedelta(seconds=run.spec.limits.max_runtime_seconds)


def build_spot_fleet_request(run: RunState, settings: Settings, now: datetime) -> dict[str, Any]:
    """The `SpotFleetRequestConfig` for the run (pure: no AWS calls)."""
    fleet = run.spec.fleet
    total = requested_capacity(run)
    config: dict[str, Any] = {
        "ClientToken": run.run_id,
        "IamFleetRole": settings.fleet_role_arn,
        "AllocationStrategy": fleet.allocation_strategy,
        "OnDemandAllocationStrategy": "lowestPrice",
        "TargetCapacity": total,
        "OnDemandTargetCapacity": base_on_demand(run, total),
        "Type": "maintain",
        "ValidUntil": valid_until(run, now),
        "TerminateInstancesWithExpiration": True,
        "InstanceInterruptionBehavior": "terminate",
        "ReplaceUnhealthyInstances": False,
        "LaunchTemplateConfigs": launch_template_configs(run, settings),
        "TagSpecifications": fleet_tags(run),
    }
    cap = hourly_cap(fleet)
    if cap is not None:
        config["SpotMaxTotalPrice"] = cap
        config["OnDemandMaxTotalPrice"] = cap
    return config


def build_ec2_fleet_request(run: RunState, settings: Settings, now: datetime) -> dict[str, Any]:
    """The CreateFleet parameters for the run (pure: no AWS calls): a `maintain` fleet whose capacity
    beyond `on_demand_base` is spot (`DefaultTargetCapacityType`)."""
    fleet = run.spec.fleet
    total = requested_capacity(run)
    spot_options: dict[str, Any] = {
        "AllocationStrategy": EC2_FLEET_SPOT_STRATEGIES[fleet.allocation_strategy],
        "InstanceInterruptionBehavior": "terminate",
    }
    on_demand_options: dict[str, Any] = {"AllocationStrategy": "lowest-price"}
    cap = hourly_cap(fleet)
    if cap is not None:
        spot_options["MaxTotalPrice"] = cap
        on_demand_options["MaxTotalPrice"] = cap
    return {
        "ClientToken": run.run_id,
        "Type": "maintain",
        "SpotOptions": spot_options,
        "OnDemandOptions": on_demand_options,
        "TargetCapacitySpecification": {
            "TotalTargetCapacity": total,
            "OnDemandTargetCapacity": base_on_demand(run, total),
            "SpotTargetCapacity": total - base_on_demand(run, total),
            "DefaultTargetCapacityType": "spot",
        },
        "ExcessCapacityTerminationPolicy": "termination",
        "LaunchTemplateConfigs": launch_template_configs(run, settings),
        "ValidUntil": valid_until(run, now),
        "TerminateInstancesWithExpiration": True,
        "ReplaceUnhealthyInstances": False,
        "TagSpecifications": fleet_tags(run),
    }


def build_fleet_request(run: RunState, settings: Settings, now: datetime) -> dict[str, Any]:
    """The request for the run's fleet on the API its spec names."""
    if run.spec.fleet.api == "spot-fleet":
        return build_spot_fleet_request(run, settings, now)
    return build_ec2_fleet_request(run, settings, now)


def api_of(run: RunState) -> FleetApi:
    return api_named(run.spec.fleet.api)


def run_fleet_ids(run: RunState, ec2: Any, live_only: bool = True) -> list[str]:
    """The run's fleets (live ones, or every one not gone yet), found by their run-id tag with EC2
    DescribeTags (a page, whatever the account's history of fleets) and then described by id: neither
    DescribeFleets nor DescribeSpotFleetRequests filters by tag, and listing them all grows with every fleet
    the account ever had."""
    api = api_of(run)
    wanted = LIVE_STATES if live_only else None
    try:
        tagged: set[str] = set()
        pages = ec2.get_paginator("describe_tags").paginate(
            Filters=[
                {"Name": "resource-type", "Values": [api.resource_type]},
                {"Name": "key", "Values": [RUN_ID_TAG]},
                {"Name": "value", "Values": [run.run_id]},
            ]
        )
        for page in pages:
            tagged.update(t["ResourceId"] for t in page.get("Tags", []))
        found = []
        for fleet_id in sorted(tagged):
            status = api.describe(fleet_id, ec2)
            if status is None:
                continue
            if status.state in wanted if wanted is not None else status.state not in GONE_STATES:
                found.append(fleet_id)
        return found
    except ClientError as exc:
        raise call_error(f"{run.spec.fleet.api}: find the run's fleets by tag", exc) from exc


def ensure_fleet_service_role(iam: Any) -> None:
    """EC2 Fleet launches through the AWSServiceRoleForEC2Fleet service-linked role, which EC2 does not make
    for API callers: create it unless the account has it (`InvalidInput`: the name is taken)."""
    try:
        iam.create_service_linked_role(AWSServiceName=EC2_FLEET_SERVICE)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "InvalidInput" and "has been taken" in str(exc):
            return
        raise call_error("iam.create_service_linked_role(ec2fleet.amazonaws.com)", exc) from exc


def request_fleet(
    run: RunState, ec2: Any, settings: Settings, now: datetime | None = None, iam: Any = None
) -> str:
    """Request the run's fleet once: the ClientToken makes EC2 itself idempotent, the tag lookup covers
    emulators that ignore it."""
    existing = run_fleet_ids(run, ec2)
    if existing:
        return existing[0]
    now = now or utcnow()
    if valid_until(run, now) <= now:
        raise RunTimeoutError(
            f"limits.max_runtime_seconds ({run.spec.limits.max_runtime_seconds} s) ran out before the fleet "
            "was requested"
        )
    if run.spec.fleet.api == "ec2-fleet" and iam is not None:
        ensure_fleet_service_role(iam)
    try:
        return api_of(run).request(build_fleet_request(run, settings, now), ec2)
    except ClientError as exc:
        raise call_error(f"{run.spec.fleet.api}: request the fleet", exc) from exc


def fleet_status(run: RunState, ec2: Any) -> FleetStatus | None:
    """The run's fleet as EC2 describes it; None when there is none or EC2 no longer knows it."""
    fleet_id = run.resources.fleet_id
    if fleet_id is None:
        return None
    return api_of(run).describe(fleet_id, ec2)


def unseen_is_transient(run: RunState, fleet_id: str | None, now: datetime) -> bool:
    """Whether EC2 may not know `fleet_id` yet: it is the run's fleet, requested less than CONSISTENCY_GRACE
    before `now`."""
    requested_at = run.timeline.fleet_requested_at
    return (
        fleet_id is not None
        and fleet_id == run.resources.fleet_id
        and requested_at is not None
        and now - requested_at < CONSISTENCY_GRACE
    )


def describe_fleet(run: RunState, ec2: Any, now: datetime | None = None) -> FleetStatus | None:
    """The run's fleet; None while EC2 may not know it yet (`unseen_is_transient`); FleetRequestError when
    it does not exist after that."""
    try:
        status = fleet_status(run, ec2)
    except ClientError as exc:
        raise call_error(f"{run.spec.fleet.api}: describe fleet {run.resources.fleet_id}", exc) from exc
    if status is not None:
        return status
    if unseen_is_transient(run, run.resources.fleet_id, now or utcnow()):
        return None
    raise FleetRequestError(
        f"fleet {run.resources.fleet_id} no longer exists (EC2 does not know it "
        f"{CONSISTENCY_GRACE.total_seconds():.0f} s or more after it was requested)"
    )


def fleet_instances(run: RunState, ec2: Any) -> list[FleetInstance]:
    """The run's fleet's active instances (type and purchase option); none when the fleet is gone."""
    fleet_id = run.resources.fleet_id
    if fleet_id is None:
        return []
    return api_of(run).instances(fleet_id, ec2) or []


def set_target_capacity(
    run: RunState,
    ec2: Any,
    total_units: float,
    on_demand_units: float | None = None,
    *,
    keep_instances: bool = False,
) -> None:
    """Set the fleet's total target (and its on-demand part, when given; the rest is spot), in weighted
    units rounded up to whole ones. ModifyFleet or ModifySpotFleetRequest. With `keep_instances` the fleet
    terminates nothing to meet a lower target (its excess capacity termination policy: no termination)."""
    fleet_id = run.resources.fleet_id
    if fleet_id is None:
        raise FleetRequestError("the run has no fleet: RequestFleet did not finish")
    total = whole_units(total_units)
    on_demand = None if on_demand_units is None else min(total, whole_units(on_demand_units))
    api_of(run).set_target(fleet_id, ec2, total, on_demand, keep_instances)


def rebalance(run: RunState, ec2: Any, status: FleetStatus, now: datetime) -> None:
    """One on-demand fallback decision (`on_demand.decide`), applied: the fleet's targets set (when they
    change), the run's progress updated."""
    targets, updates = on_demand.decide(
        run.spec.fleet, run.progress, status, now, run.instance_types, run.capacity_weights
    )
    if targets is not None:
        set_target_capacity(run, ec2, targets.total, targets.on_demand)
    on_demand.update(run.progress, updates)


def set_weights(run: RunState, ec2: Any, settings: Settings, weights: dict[str, float]) -> None:
    """Give the fleet new weights: the same launch template version and overrides as its request, each
    `WeightedCapacity` from `weights` (ModifyFleet or ModifySpotFleetRequest with `LaunchTemplateConfigs`;
    `spotfill_control.fleet.weights` says what AWS documents of it). Its target capacity is left as it is."""
    fleet_id = run.resources.fleet_id
    if fleet_id is None:
        raise FleetRequestError("the run has no fleet: RequestFleet did not finish")
    api_of(run).set_weights(fleet_id, ec2, launch_template_configs(run, settings, weights))


def delete_fleets(run: RunState, ec2: Any, fleet_ids: Sequence[str]) -> list[Deletion]:
    """Delete the fleets with their instances (DeleteFleets / CancelSpotFleetRequests, TerminateInstances):
    what EC2 answered for each (deleted now or before, or unknown to it); any other failure is raised."""
    if not fleet_ids:
        return []
    deletions = api_of(run).delete(fleet_ids, ec2)
    failures = [d for d in deletions if d.failed]
    if failures:
        raise SpotfillError(
            f"{run.spec.fleet.api}: deleting fleets failed: "
            + "; ".join(f"{d.fleet_id}: {d.code}: {d.message}" for d in failures)
        )
    return deletions


def start_fleet(
    run: RunState, ec2: Any, settings: Settings, now: datetime | None = None, iam: Any = None
) -> RunState:
    """RequestFleet: request the run's fleet (once) and record it."""
    now = now or utcnow()
    fleet_id = request_fleet(run, ec2, settings, now, iam)
    return run.stepped("fleet_requested", "fleet_requested_at", now, fleet_id=fleet_id)
