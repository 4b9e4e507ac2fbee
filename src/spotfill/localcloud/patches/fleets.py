"""Amazon EC2's two fleet APIs (EC2 Fleet, Spot Fleet): what both share.

A fleet's request history (what DescribeFleetHistory and DescribeSpotFleetRequestHistory answer), failing
pools (`set_failing_pools`: an instance type, or `type@zone`, fails as EC2 reports it: an event per pool
while the other pools fill, `allLaunchSpecsTemporarilyBlacklisted` once none is left), short spot capacity
(`set_spot_capacity`), launch template overrides changed by a modify call (`relaunch_specs`, at most
`MAX_FLEET_OVERRIDES`), and `ValidUntil` (`expire_fleets`, run by the physics' clock and before a describe
call, ends an expired fleet and terminates its instances when `TerminateInstancesWithExpiration` is set).
`spotfill.localcloud.patches.ec2_fleet` and `spot_fleet` build each API on these.

AWS documentation followed:
- "EventInformation" (the event sub-types), Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_EventInformation.html
- "Spot Fleet event types", Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-event-types.html
- "EC2 Fleet event types", Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-event-types.html
- "FleetLaunchTemplateConfigRequest" (at most 300 overrides), Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_FleetLaunchTemplateConfigRequest.html
- "Quotas for EC2 Fleet and Spot Fleet", Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/fleet-quotas.html
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from spotfill.localcloud.pricing import spot_price

# What EC2 says when a pool cannot launch (the code starts the event's description, as on EC2).
POOL_ERRORS = {
    "Unsupported": "The requested instance type is not supported in the requested Availability Zone.",
    "InsufficientInstanceCapacity": "There is no Spot capacity available that matches your request.",
}
LIVE_FLEET_STATES = ("submitted", "active", "modifying")
_failing_pools: dict[str, str] = {}  # "type" or "type@zone" -> error code


def set_failing_pools(pools: dict[str, str]) -> None:
    """From now on the pools named (an instance type in every zone, or `type@zone`) fail to launch with the
    error code given (`Unsupported`, `InsufficientInstanceCapacity`, ...); an empty dict heals every pool."""
    unknown = sorted(code for code in pools.values() if code not in POOL_ERRORS)
    if unknown:
        raise ValueError(f"unknown pool error code(s) {unknown}; known: {sorted(POOL_ERRORS)}")
    _failing_pools.clear()
    _failing_pools.update(pools)


def record_fleet_event(
    fleet: Any, event_type: str, sub_type: str, description: str = "", instance_id: str | None = None
) -> None:
    """Append an event to the request's history (what DescribeSpotFleetRequestHistory answers)."""
    information: dict[str, str] = {"EventSubType": sub_type}
    if description:
        information["EventDescription"] = description
    if instance_id:
        information["InstanceId"] = instance_id
    fleet.__dict__.setdefault("_spotfill_history", []).append(
        {"EventType": event_type, "EventInformation": information, "Timestamp": datetime.now(UTC)}
    )


def fleet_history(fleet: Any) -> list[dict[str, Any]]:
    return list(fleet.__dict__.get("_spotfill_history", []))


def fleet_history_since(fleet: Any, start: datetime, event_type: str | None) -> list[dict[str, Any]]:
    """The fleet's history records from `start` on, of `event_type` when one is asked for (either API)."""
    return [
        record
        for record in fleet_history(fleet)
        if record["Timestamp"] >= start and (not event_type or record["EventType"] == event_type)
    ]


def _zone_of(fleet: Any, subnet_id: str | None) -> str | None:
    if not subnet_id:
        return None
    try:
        return fleet.ec2_backend.get_subnet(subnet_id).availability_zone
    except Exception:
        return None


def _pool_failure(fleet: Any, spec: Any) -> str | None:
    zone = _zone_of(fleet, spec.subnet_id)
    return _failing_pools.get(f"{spec.instance_type}@{zone}") or _failing_pools.get(spec.instance_type)


def _is_spot_fleet(fleet: Any) -> bool:
    return type(fleet).__name__ == "SpotFleetRequest"


def error_event_type(fleet: Any) -> str:
    """The history's error event type: Spot Fleet's `error`, EC2 Fleet's `service-error` (the EventType and
    FleetEventType enums of the EC2 API reference)."""
    return "error" if _is_spot_fleet(fleet) else "service-error"


def pool_description(fleet: Any, spec: Any, code: str) -> str:
    zone = _zone_of(fleet, spec.subnet_id) or "unknown zone"
    return (
        f"{spec.instance_type}, {spec.image_id}, Linux/UNIX (Amazon VPC), {zone}, {code}: {POOL_ERRORS[code]}"
    )


def usable_specs(fleet: Any) -> list[Any]:
    """The fleet's launch specs whose pool does not fail; each failing pool reports an event once, and
    `allLaunchSpecsTemporarilyBlacklisted` (an error event) once none is left.

    A failing pool's event is the API's: Spot Fleet reports a launch specification it stopped trying as an
    `information` event, sub-type `launchSpecTemporarilyBlacklisted` ("The configuration is not valid and
    several attempts to launch instances have failed", EventInformation in the EC2 API reference; the EC2
    user guide's "Spot Fleet event types": EC2 Spot Fleet Information); EC2 Fleet, whose history has no
    information type (FleetEventType: instance-change, fleet-change, service-error), a `service-error`
    `spotFleetRequestConfigurationInvalid`. Either names the pool the way EC2 does:
    `<type>, <ami>, <platform>, <zone>, <Code>: <message>`."""
    reported = fleet.__dict__.setdefault("_spotfill_failed_specs", set())
    usable = []
    for spec in fleet.launch_specs:
        code = _pool_failure(fleet, spec)
        if code is None:
            usable.append(spec)
            continue
        if id(spec) not in reported:
            reported.add(id(spec))
            if _is_spot_fleet(fleet):
                event_type, sub_type = "information", "launchSpecTemporarilyBlacklisted"
            else:
                event_type, sub_type = "service-error", "spotFleetRequestConfigurationInvalid"
            record_fleet_event(fleet, event_type, sub_type, pool_description(fleet, spec, code))
    if not usable and "_spotfill_all_blacklisted" not in fleet.__dict__:
        fleet.__dict__["_spotfill_all_blacklisted"] = True
        record_fleet_event(
            fleet,
            error_event_type(fleet),
            "allLaunchSpecsTemporarilyBlacklisted",
            "None of the launch specifications is valid and several attempts to launch instances have "
            "failed.",
        )
    return usable


def relaunch_specs(fleet: Any, configs: list[dict[str, Any]], members: list[tuple[Any, Any, str]]) -> None:
    """ModifyFleet / ModifySpotFleetRequest with `LaunchTemplateConfigs`: the fleet launches from the new
    launch templates and overrides (their `WeightedCapacity` included) from now on. Neither API reference nor
    user guide says what becomes of the instances already running; here each keeps counting at the weight of
    the override it launched from (`members`, pinned before the change), and none is launched or terminated
    by the change itself (only when the fleet next meets its target). The fleet then launches from the
    cheapest override per unit first (spot price / WeightedCapacity), as the price-based allocation strategies
    do; a fleet never modified so keeps launching in its request's order, as before."""
    from moto.ec2.models.spot_requests import SpotFleetLaunchSpec
    from moto.ec2.utils import convert_tag_spec

    refuse_too_many_overrides(configs)
    for request in fleet.spot_requests:  # moto's Spot Fleet requests do not keep their spec: pin it
        if is_live(request.instance) and getattr(request, "launch_spec", None) is None:
            request.launch_spec = next((s for i, s, _ in members if i is request.instance), None)
    backend = fleet.ec2_backend
    specs = []
    for config in configs:
        ref = dict(config.get("LaunchTemplateSpecification") or {})
        if "LaunchTemplateId" in ref:
            template = backend.get_launch_template(template_id=ref["LaunchTemplateId"])
        else:
            template = backend.get_launch_template_by_name(name=ref.get("LaunchTemplateName"))
        version = str(ref.get("Version") or template.default_version_number)
        if version == "$Latest":
            version = str(template.latest_version_number)
        elif version == "$Default":
            version = str(template.default_version_number)
        ref.update({"LaunchTemplateId": template.id, "Version": version})
        data = template.get_version(version).data
        for override in config.get("Overrides") or [{}]:
            spec = {**data, **{k: v for k, v in override.items() if k != "Priority"}}
            specs.append(
                SpotFleetLaunchSpec(
                    ebs_optimized=spec.get("EbsOptimized"),
                    group_set=list(spec.get("SecurityGroupIds") or spec.get("SecurityGroups") or []),
                    iam_instance_profile=spec.get("IamInstanceProfile"),
                    image_id=spec["ImageId"],
                    instance_type=spec["InstanceType"],
                    key_name=spec.get("KeyName"),
                    monitoring=spec.get("Monitoring"),
                    spot_price=spec.get("SpotPrice"),
                    subnet_id=spec.get("SubnetId"),
                    tag_specifications=convert_tag_spec(spec.get("TagSpecifications", [])),
                    user_data=spec.get("UserData"),
                    weighted_capacity=spec.get("WeightedCapacity", 1),
                    launch_template_spec=ref,
                    overrides=override or None,
                )
            )
    fleet.launch_specs = sorted(
        specs, key=lambda s: (spot_price(s.instance_type) or math.inf) / spec_weight(s)
    )
    if hasattr(fleet, "launch_template_configs"):
        fleet.launch_template_configs = configs


# "For fleets of type request and maintain, a maximum of 300 items is allowed across all launch templates"
# (FleetLaunchTemplateConfigRequest.Overrides in the EC2 API reference), and 300 Spot capacity pools (type and
# subnet pairs) per maintain or request fleet on either API ("Quotas for EC2 Fleet and Spot Fleet",
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/fleet-quotas.html): an override here is one pool.
MAX_FLEET_OVERRIDES = 300


def refuse_too_many_overrides(configs: list[dict[str, Any]]) -> None:
    """Refuse a request with more overrides across its launch templates than a fleet takes. The API reference
    states the limit, not the error's text: the code is EC2's for a bad parameter value, the message in the
    form EC2 uses for its other per-request maxima ("Your request contains more than the maximum allowed
    number of InstanceRequirements (4)")."""
    from moto.ec2.exceptions import EC2ClientError

    count = sum(len(config.get("Overrides") or []) for config in configs)
    if count > MAX_FLEET_OVERRIDES:
        raise EC2ClientError(
            "InvalidParameterValue",
            "Your request contains more than the maximum allowed number of launch template overrides "
            f"({MAX_FLEET_OVERRIDES}).",
        )


def expiring_first(describe: Any) -> Any:
    def described(self: Any) -> Any:
        expire_fleets(self.ec2_backend)
        return describe(self)

    described.__name__ = describe.__name__
    return described


def expired_fleets(backend: Any) -> dict[str, list[str]]:
    """Every request that expired so far -> the instances EC2 terminated when it did (from its history)."""
    expired: dict[str, list[str]] = {}
    for fleet in [*backend.spot_fleet_requests.values(), *backend.fleets.values()]:
        history = fleet_history(fleet)
        marks = [
            i
            for i, e in enumerate(history)
            if e["EventType"] in ("fleetRequestChange", "fleet-change")
            and e["EventInformation"]["EventSubType"] == "expired"
        ]
        if marks:
            expired[fleet.id] = [
                e["EventInformation"]["InstanceId"]
                for e in history[marks[0] :]
                if e["EventType"] in ("instanceChange", "instance-change")
                and e["EventInformation"]["EventSubType"] == "terminated"
            ]
    return expired


def parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def expire_fleets(backend: Any, now: datetime | None = None) -> dict[str, list[str]]:
    """EC2's clock for `ValidUntil`: every live request past it expires (an `expired` event); with
    `TerminateInstancesWithExpiration` its instances are terminated and the request ends `cancelled`, else it
    is `cancelled_running` and they run on. Returns each request that expired now -> the instances it
    terminated."""
    now = now or datetime.now(UTC)
    expired: dict[str, list[str]] = {}
    for fleet in list(backend.spot_fleet_requests.values()):
        valid_until = fleet.__dict__.get("valid_until")
        if valid_until is None or fleet.state not in LIVE_FLEET_STATES or now < valid_until:
            continue
        record_fleet_event(fleet, "fleetRequestChange", "expired")
        expired[fleet.id] = []
        if not fleet.__dict__.get("terminate_instances_with_expiration"):
            fleet.state = "cancelled_running"
            continue
        alive = [
            r.instance.id
            for r in fleet.spot_requests
            if r.instance is not None and r.instance._state.name in ("pending", "running")
        ]
        fleet.target_capacity = 0
        fleet.fulfilled_capacity = 0.0
        fleet.spot_requests = []
        if alive:
            backend.terminate_instances(alive)
        for instance_id in alive:
            record_fleet_event(fleet, "instanceChange", "terminated", instance_id=instance_id)
        expired[fleet.id] = alive
        fleet.state = "cancelled"
    expired.update(_expire_ec2_fleets(backend, now))
    return expired


# EC2 Fleet's states of a fleet that ended (Spot Fleet's are `cancelled*`).
DELETED_FLEET_STATES = ("deleted", "deleted_running", "deleted_terminating")
_spot_capacity: dict[str, float] = {}  # instance type -> spot units of it one fleet can get
PENDING_LAUNCHES = {"on": False}  # the local cloud's instances boot (pending first); in process they run


def set_spot_capacity(units_by_type: dict[str, float]) -> None:
    """From now on a fleet gets at most this many spot units of each type named (spot is short there:
    EC2 reports `InsufficientInstanceCapacity` once per type and launches no more); {} ends the shortage.
    On-demand capacity is never short."""
    bad = sorted(t for t, units in units_by_type.items() if units < 0)
    if bad:
        raise ValueError(f"spot capacity must be >= 0 units, got a negative one for {bad}")
    _spot_capacity.clear()
    _spot_capacity.update(units_by_type)


def spec_weight(spec: Any) -> float:
    return float(spec.weighted_capacity or 1)


def is_live(instance: Any) -> bool:
    return instance is not None and instance._state.name in ("pending", "running")


def ec2_fleet_members(fleet: Any) -> list[tuple[Any, Any, str]]:
    """(instance, launch spec, lifecycle) of every live instance of an EC2 Fleet."""
    members = [(r.instance, r.launch_spec, "spot") for r in fleet.spot_requests if is_live(r.instance)]
    members += [(d["instance"], d.get("launch_spec"), "on-demand") for d in fleet.on_demand_instances]
    return [(i, s, lifecycle) for i, s, lifecycle in members if is_live(i)]


def fleet_units(members: list[tuple[Any, Any, str]], lifecycle: str) -> float:
    return sum(spec_weight(spec) for _, spec, kind in members if kind == lifecycle and spec is not None)


def spot_room(fleet: Any, spec: Any, members: list[tuple[Any, Any, str]]) -> bool:
    limit = _spot_capacity.get(spec.instance_type)
    if limit is None:
        return True
    held = sum(
        spec_weight(s) for i, s, kind in members if kind == "spot" and i.instance_type == spec.instance_type
    )
    if held + spec_weight(spec) <= limit + 1e-9:
        return True
    short = fleet.__dict__.setdefault("_spotfill_short_types", set())
    if spec.instance_type not in short:
        short.add(spec.instance_type)
        # An error event on both APIs (a Spot Fleet's, as EC2 reports it: `error`,
        # `spotFleetRequestConfigurationInvalid`, "There is no Spot capacity available that matches your
        # request.").
        record_fleet_event(
            fleet,
            error_event_type(fleet),
            "spotFleetRequestConfigurationInvalid",
            pool_description(fleet, spec, "InsufficientInstanceCapacity"),
        )
    return False


def finish_deleted_fleets(backend: Any) -> None:
    """A `deleted_terminating` fleet is `deleted` once its instances are gone."""
    for fleet in list(backend.fleets.values()):
        if fleet.state == "deleted_terminating" and not ec2_fleet_members(fleet):
            fleet.state = "deleted"
            fleet.fulfilled_capacity = fleet.fulfilled_on_demand_capacity = fleet.fulfilled_spot_capacity = (
                0.0
            )
            record_fleet_event(fleet, "fleet-change", "deleted")


def _expire_ec2_fleets(backend: Any, now: datetime) -> dict[str, list[str]]:
    """EC2 Fleet's ValidUntil: an `expired` event; with TerminateInstancesWithExpiration the instances are
    terminated and the fleet is deleted, else it is `deleted_running`."""
    expired: dict[str, list[str]] = {}
    for fleet in list(backend.fleets.values()):
        valid_until = fleet.valid_until
        if valid_until is None or fleet.state not in LIVE_FLEET_STATES or now < parse_time(valid_until):
            continue
        record_fleet_event(fleet, "fleet-change", "expired")
        if not fleet.terminate_instances_with_expiration:
            fleet.state = "deleted_running"
            expired[fleet.id] = []
            continue
        alive = [i.id for i, _, _ in ec2_fleet_members(fleet)]
        if alive:
            backend.terminate_instances(alive)
        for instance_id in alive:
            record_fleet_event(fleet, "instance-change", "terminated", instance_id=instance_id)
        fleet.state = "deleted"
        fleet.fulfilled_capacity = fleet.fulfilled_on_demand_capacity = fleet.fulfilled_spot_capacity = 0.0
        record_fleet_event(fleet, "fleet-change", "deleted")
        expired[fleet.id] = alive
    return expired
