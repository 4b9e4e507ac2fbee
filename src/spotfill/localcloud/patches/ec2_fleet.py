"""Amazon EC2 Fleet as EC2 runs it.

moto 5.2.5 launches everything in the fleet's constructor, never replaces an instance, and has no ModifyFleet
or DescribeFleetHistory. Here a `maintain` fleet keeps each purchase option at its target
(`maintain_ec2_fleet`: excess terminated, on demand first; missing capacity launched into the pools that do
not fail, spot only as far as spot capacity lasts), CreateFleet is idempotent by `ClientToken`, and
DeleteFleets and DescribeFleetInstances answer as EC2 does.

AWS documentation followed:
- "CreateFleet", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateFleet.html
- "ModifyFleet", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ModifyFleet.html
- "DescribeFleetHistory", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeFleetHistory.html
- "DescribeFleetInstances", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeFleetInstances.html
- "DeleteFleets", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteFleets.html
- "EC2 Fleet request types" and "EC2 Fleet event types", Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-request-type.html,
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-event-types.html
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from spotfill.localcloud.patches.fleets import (
    DELETED_FLEET_STATES,
    LIVE_FLEET_STATES,
    PENDING_LAUNCHES,
    ec2_fleet_members,
    expire_fleets,
    expiring_first,
    finish_deleted_fleets,
    fleet_history,
    fleet_history_since,
    fleet_units,
    is_live,
    parse_time,
    record_fleet_event,
    refuse_too_many_overrides,
    relaunch_specs,
    spec_weight,
    spot_room,
    usable_specs,
)


def _ec2_fleet_targets(fleet: Any) -> tuple[float, float]:
    """(on-demand target, spot target) of an EC2 Fleet: the capacity its default type does not name goes to
    that type."""
    spec = fleet.target_capacity_specification
    total = float(spec.get("TotalTargetCapacity") or 0)
    on_demand = float(spec.get("OnDemandTargetCapacity") or 0)
    spot = float(spec.get("SpotTargetCapacity") or 0)
    if spec.get("DefaultTargetCapacityType", "on-demand") == "spot":
        on_demand = min(on_demand, total)
        return on_demand, total - on_demand
    spot = min(spot, total)
    return total - spot, spot


def _launch_one(fleet: Any, spec: Any, kind: str) -> Any:
    """Launch one instance of the spec (spot or on demand) and return it."""
    kept = fleet.launch_specs
    fleet.launch_specs = [spec]
    try:
        if kind == "spot":
            before = len(fleet.spot_requests)
            _ORIGINAL_FLEET_CREATE["spot"](fleet, spec_weight(spec))
            instance = fleet.spot_requests[before].instance
        else:
            before = len(fleet.on_demand_instances)
            _ORIGINAL_FLEET_CREATE["on-demand"](fleet, spec_weight(spec))
            instance = fleet.on_demand_instances[before]["instance"]
    finally:
        fleet.launch_specs = kept
    if PENDING_LAUNCHES["on"]:
        instance._state.name, instance._state.code = "pending", 0
    record_fleet_event(fleet, "instance-change", "launched", instance_id=instance.id)
    return instance


_ORIGINAL_FLEET_CREATE: dict[str, Any] = {}


def maintain_ec2_fleet(fleet: Any) -> None:
    """What EC2 does for a live `maintain` EC2 Fleet: keep each purchase option at its target. Excess
    capacity (a lowered target) is terminated, on demand first (`ExcessCapacityTerminationPolicy`
    `termination`, the default); missing capacity is launched into the pools that do not fail, spot only as
    far as spot capacity lasts (`set_spot_capacity`)."""
    if fleet.state not in LIVE_FLEET_STATES or fleet.fleet_type != "maintain":
        return
    backend = fleet.ec2_backend
    on_demand_target, spot_target = _ec2_fleet_targets(fleet)
    fleet.spot_requests = [r for r in fleet.spot_requests if is_live(r.instance)]
    fleet.on_demand_instances = [d for d in fleet.on_demand_instances if is_live(d["instance"])]
    members = ec2_fleet_members(fleet)
    if fleet.excess_capacity_termination_policy != "no-termination":
        for kind, target in (("on-demand", on_demand_target), ("spot", spot_target)):
            mine = [(i, s) for i, s, k in members if k == kind]
            held = fleet_units(members, kind)
            while mine and held - spec_weight(mine[-1][1]) >= target - 1e-9:
                instance, spec = mine.pop()
                held -= spec_weight(spec)
                backend.terminate_instances([instance.id])
                record_fleet_event(fleet, "instance-change", "terminated", instance_id=instance.id)
        members = ec2_fleet_members(fleet)
    for kind, target in (("on-demand", on_demand_target), ("spot", spot_target)):
        while fleet_units(members, kind) < target - 1e-9:
            specs = [s for s in usable_specs(fleet) if kind != "spot" or spot_room(fleet, s, members)]
            if not specs:
                break
            instance = _launch_one(fleet, specs[0], kind)
            members.append((instance, specs[0], kind))
    fleet.fulfilled_on_demand_capacity = fleet_units(members, "on-demand")
    fleet.fulfilled_spot_capacity = fleet_units(members, "spot")
    fleet.fulfilled_capacity = fleet.fulfilled_on_demand_capacity + fleet.fulfilled_spot_capacity


def patch_ec2_fleet() -> None:
    """EC2 Fleet as EC2 runs it (moto 5.2.5 launches everything in the constructor, never replaces, and has no
    ModifyFleet or DescribeFleetHistory)."""
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.fleets import Fleet
    from moto.ec2.responses.fleets import Fleets

    _ORIGINAL_FLEET_CREATE["spot"] = Fleet.create_spot_requests
    _ORIGINAL_FLEET_CREATE["on-demand"] = Fleet.create_on_demand_requests
    original_init = Fleet.__init__

    def __init__(
        self: Any,
        ec2_backend: Any,
        fleet_id: str,
        on_demand_options: Any,
        spot_options: Any,
        target_capacity_specification: dict[str, Any],
        *args: Any,
    ) -> None:
        # moto launches from its constructor; here the fleet launches as EC2's maintain loop does.
        empty = {"TotalTargetCapacity": 0, "DefaultTargetCapacityType": "on-demand"}
        original_init(self, ec2_backend, fleet_id, on_demand_options, spot_options, empty, *args)
        self.target_capacity_specification = dict(target_capacity_specification)
        self.target_capacity = int(float(target_capacity_specification.get("TotalTargetCapacity") or 0))
        for spec in self.launch_specs:  # moto reads `GroupSet`; a launch template names `SecurityGroupIds`
            if not spec.group_set and spec.launch_template_spec:
                ref = spec.launch_template_spec
                data = (
                    ec2_backend.get_launch_template(template_id=ref["LaunchTemplateId"])
                    .get_version(ref["Version"])
                    .data
                )
                spec.group_set = list(data.get("SecurityGroupIds") or data.get("SecurityGroups") or [])
        if self.valid_until is not None:
            self.valid_until = parse_time(self.valid_until)
        self.terminate_instances_with_expiration = str(self.terminate_instances_with_expiration).lower() in (
            "true",
            "1",
        )
        for sub_type in ("submitted", "active"):
            record_fleet_event(self, "fleet-change", sub_type)
        maintain_ec2_fleet(self)

    Fleet.__init__ = __init__

    def activity_status(self: Any) -> str | None:
        if self.state not in LIVE_FLEET_STATES:
            return None
        if any(e["EventType"] == "service-error" for e in fleet_history(self)):
            return "error"
        if self.fulfilled_capacity >= self.target_capacity:
            return "fulfilled"
        return "pending_fulfillment"

    Fleet.activity_status = property(activity_status)

    def _fleet(backend: Any, fleet_id: str) -> Any:
        fleet = backend.fleets.get(fleet_id)
        if fleet is None:
            raise EC2ClientError("InvalidFleetId.NotFound", f"The fleet ID '{fleet_id}' does not exist")
        return fleet

    original_create = Fleets.create_fleet

    def create_fleet(self: Any) -> Any:
        """An idempotent CreateFleet: the same `ClientToken` answers the fleet it made; more overrides than
        a `request` or `maintain` fleet takes are refused (`refuse_too_many_overrides`)."""
        if self._get_param("Type", if_none="maintain") != "instant":
            refuse_too_many_overrides(self._get_param("LaunchTemplateConfigs", []))
        token = self._get_param("ClientToken")
        if token:
            for fleet in self.ec2_backend.fleets.values():
                if fleet.__dict__.get("_spotfill_client_token") == token:
                    return ActionResult({"FleetId": fleet.id})
        result = original_create(self)
        if token:
            self.ec2_backend.fleets[result.result["FleetId"]].__dict__["_spotfill_client_token"] = token
        return result

    Fleets.create_fleet = create_fleet

    def modify_fleet(self: Any) -> Any:
        fleet = _fleet(self.ec2_backend, self._get_param("FleetId"))
        if fleet.fleet_type != "maintain":
            raise EC2ClientError("InvalidParameterValue", f"fleet {fleet.id} is not of type maintain")
        if fleet.state not in LIVE_FLEET_STATES:
            raise EC2ClientError("IncorrectState", f"fleet {fleet.id} is {fleet.state}")
        wanted = self._get_param("TargetCapacitySpecification", {}) or {}
        spec = dict(fleet.target_capacity_specification)
        for key in ("TotalTargetCapacity", "OnDemandTargetCapacity", "SpotTargetCapacity"):
            if wanted.get(key) is not None:
                spec[key] = int(float(wanted[key]))
        if wanted.get("SpotTargetCapacity") is None and spec.get("DefaultTargetCapacityType") == "spot":
            spec["SpotTargetCapacity"] = int(spec.get("TotalTargetCapacity") or 0) - int(
                spec.get("OnDemandTargetCapacity") or 0
            )
        if int(spec.get("OnDemandTargetCapacity") or 0) > int(spec.get("TotalTargetCapacity") or 0):
            raise EC2ClientError(
                "InvalidParameterValue", "OnDemandTargetCapacity cannot exceed TotalTargetCapacity"
            )
        configs = self._get_param("LaunchTemplateConfigs")
        if configs:
            relaunch_specs(fleet, configs, ec2_fleet_members(fleet))
        fleet.target_capacity_specification = spec
        fleet.target_capacity = int(spec.get("TotalTargetCapacity") or 0)
        policy = self._get_param("ExcessCapacityTerminationPolicy")
        if policy:
            fleet.excess_capacity_termination_policy = policy
        maintain_ec2_fleet(fleet)
        return ActionResult({"Return": True})

    Fleets.modify_fleet = modify_fleet

    def describe_fleet_history(self: Any) -> Any:
        fleet_id = self._get_param("FleetId")
        fleet = _fleet(self.ec2_backend, fleet_id)
        start = parse_time(self._get_param("StartTime"))
        event_type = self._get_param("EventType")
        return ActionResult(
            {
                "HistoryRecords": fleet_history_since(fleet, start, event_type),
                "LastEvaluatedTime": datetime.now(UTC),
                "FleetId": fleet_id,
                "StartTime": start,
            }
        )

    Fleets.describe_fleet_history = describe_fleet_history

    def describe_fleet_instances(self: Any) -> Any:
        """Live instances only; `SpotInstanceRequestId` for spot ones only (moto gives on-demand ones their
        reservation's id)."""
        expire_fleets(self.ec2_backend)
        fleet_id = self._get_param("FleetId")
        fleet = _fleet(self.ec2_backend, fleet_id)
        active = []
        for instance, _, lifecycle in ec2_fleet_members(fleet):
            item = {
                "InstanceId": instance.id,
                "InstanceType": instance.instance_type,
                "InstanceHealth": "healthy",
            }
            if lifecycle == "spot":
                item["SpotInstanceRequestId"] = next(
                    r.id for r in fleet.spot_requests if r.instance is instance
                )
            active.append(item)
        return ActionResult({"ActiveInstances": active, "FleetId": fleet_id})

    Fleets.describe_fleet_instances = describe_fleet_instances

    def delete_fleets(self: Any) -> Any:
        """As EC2: per fleet, a missing one is `fleetIdDoesNotExist` and one already deleted
        `fleetNotInDeletableState` (not raised); TerminateInstances terminates every instance and the fleet
        is `deleted_terminating` until they are gone."""
        terminate = self._get_bool_param("TerminateInstances")
        done, failed = [], []
        for fleet_id in self._get_param("FleetIds", []):
            fleet = self.ec2_backend.fleets.get(fleet_id)
            if fleet is None:
                failed.append(
                    {
                        "Error": {
                            "Code": "fleetIdDoesNotExist",
                            "Message": f"The fleet ID '{fleet_id}' does not exist",
                        },
                        "FleetId": fleet_id,
                    }
                )
                continue
            if fleet.state in DELETED_FLEET_STATES:
                failed.append(
                    {
                        "Error": {
                            "Code": "fleetNotInDeletableState",
                            "Message": f"The fleet {fleet_id} is {fleet.state}",
                        },
                        "FleetId": fleet_id,
                    }
                )
                continue
            previous = fleet.state
            alive = [i.id for i, _, _ in ec2_fleet_members(fleet)]
            if terminate:
                fleet.state = "deleted_terminating"
                if alive:
                    self.ec2_backend.terminate_instances(alive)
                for instance_id in alive:
                    record_fleet_event(fleet, "instance-change", "terminated", instance_id=instance_id)
            else:
                fleet.state = "deleted_running"
            record_fleet_event(fleet, "fleet-change", fleet.state)
            done.append(
                {"CurrentFleetState": fleet.state, "PreviousFleetState": previous, "FleetId": fleet_id}
            )
        finish_deleted_fleets(self.ec2_backend)
        return ActionResult({"SuccessfulFleetDeletions": done, "UnsuccessfulFleetDeletions": failed})

    Fleets.delete_fleets = delete_fleets
    Fleets.describe_fleets = expiring_first(Fleets.describe_fleets)
