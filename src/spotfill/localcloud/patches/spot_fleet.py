"""Amazon EC2 Spot Fleet as EC2 runs it.

- moto launches every `LaunchTemplateConfigs` entry from the template's *latest* version and its first
  override only. AWS uses the version the request names and every override, and a run's isolation depends on
  its own version's user data (two runs at once would otherwise swap clusters).
- Instances start `pending` (moto makes them `running` at once); the EC2 emulator
  (`spotfill.localcloud.fleet`) makes them `running` after the boot delay.
- Requests have no `ActivityStatus`, no request history (`DescribeSpotFleetRequestHistory` is not
  implemented), ignore `ValidUntil`, and never fail a pool. Here a request keeps EC2's history (`submitted`,
  `active`, `launched`, `error`, `expired`, `terminated` events), its `ActivityStatus` (`error` once a pool
  failed, as on EC2, even while other pools fill), its `ValidUntil` (`spotfill.localcloud.patches.fleets`);
  a request that never launched an instance can be cancelled, which moto refuses.
- The on-demand part (`OnDemandTargetCapacity`), which moto ignores (every unit is spot there), and a
  `maintain` request kept at its targets (`maintain_spot_fleet`); `ModifySpotFleetRequest` changes either
  target and the launch templates.

AWS documentation followed:
- "RequestSpotFleet", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RequestSpotFleet.html
- "SpotFleetRequestConfigData", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_SpotFleetRequestConfigData.html
- "ModifySpotFleetRequest", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ModifySpotFleetRequest.html
- "DescribeSpotFleetRequestHistory", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotFleetRequestHistory.html
- "DescribeSpotFleetInstances", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotFleetInstances.html
- "Spot Fleet request states" and "Spot Fleet event types", Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-states.html,
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-event-types.html
"""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime
from typing import Any

from spotfill.localcloud.patches.fleets import (
    LIVE_FLEET_STATES,
    PENDING_LAUNCHES,
    expiring_first,
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
from spotfill.localcloud.patches.once import once


def launch_fleets_from_requested_versions() -> None:
    """A Spot Fleet launches from the launch template version its request names, with every override."""
    if not once("launch_fleets_from_requested_versions"):
        return
    from moto.ec2.models.spot_requests import SpotFleetRequest

    original_init = SpotFleetRequest.__init__

    def __init__(self: Any, ec2_backend: Any, *args: Any, **kwargs: Any) -> None:
        configs = kwargs.get("launch_template_config")
        if configs:
            kwargs["launch_specs"] = list(kwargs.get("launch_specs") or []) + _launch_specs_from_templates(
                ec2_backend, configs
            )
            kwargs["launch_template_config"] = None
        original_init(self, ec2_backend, *args, **kwargs)
        # ModifySpotFleetRequest takes LaunchTemplateConfigs only for a request made with them.
        self.__dict__["_spotfill_from_templates"] = bool(configs)

    SpotFleetRequest.__init__ = __init__


def patch_pending_fleet_instances() -> None:
    from moto.ec2.models.spot_requests import SpotFleetRequest

    PENDING_LAUNCHES["on"] = True

    original_create = SpotFleetRequest.create_spot_requests

    def create_spot_requests(self: Any, weight_to_add: float) -> None:
        before = {id(r) for r in self.spot_requests}
        original_create(self, weight_to_add)
        for request in self.spot_requests:
            if id(request) not in before and request.instance is not None:
                request.instance._state.name, request.instance._state.code = "pending", 0

    SpotFleetRequest.create_spot_requests = create_spot_requests


def _launch_specs_from_templates(ec2_backend: Any, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = []
    for config in configs:
        ref = config.get("LaunchTemplateSpecification", {})
        if "LaunchTemplateId" in ref:
            template = ec2_backend.get_launch_template(template_id=ref["LaunchTemplateId"])
        else:
            template = ec2_backend.get_launch_template_by_name(name=ref["LaunchTemplateName"])
        data = copy.deepcopy(template.get_version(ref.get("Version", "$Default")).data)
        if "SecurityGroupIds" in data and "SecurityGroups" not in data:
            data["SecurityGroups"] = data["SecurityGroupIds"]
        for override in config.get("Overrides") or [{}]:
            spec = dict(data)
            spec.update({k: v for k, v in override.items() if k != "Priority"})
            specs.append(spec)
    return specs


def patch_spot_fleet_lifecycle() -> None:
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.spot_requests import SpotFleetRequest
    from moto.ec2.responses.spot_fleets import SpotFleets

    original_create = SpotFleetRequest.create_spot_requests

    def create_spot_requests(self: Any, weight_to_add: float) -> None:
        """Launch only into pools that do not fail; each failing pool reports one event (`usable_specs`)."""
        usable = usable_specs(self)
        if not usable:
            return
        before = {id(r) for r in self.spot_requests}
        launch_specs = self.launch_specs
        self.launch_specs = usable
        try:
            original_create(self, weight_to_add)
        finally:
            self.launch_specs = launch_specs
        for request in self.spot_requests:
            if id(request) not in before and request.instance is not None:
                record_fleet_event(self, "instanceChange", "launched", instance_id=request.instance.id)

    SpotFleetRequest.create_spot_requests = create_spot_requests

    original_terminate = SpotFleetRequest.terminate_instances

    def terminate_instances(self: Any) -> None:
        # moto asks EC2 to terminate no instance at all (an error) when the fleet never launched one.
        if any(r.instance is not None for r in self.spot_requests):
            original_terminate(self)

    SpotFleetRequest.terminate_instances = terminate_instances

    def activity_status(self: Any) -> str | None:
        if self.state not in LIVE_FLEET_STATES:
            return None
        if any(e["EventType"] == "error" for e in fleet_history(self)):
            return "error"  # as on EC2: once a launch failed, even while other pools fill
        if self.fulfilled_capacity >= self.target_capacity:
            return "fulfilled"
        return "pending_fulfillment"

    SpotFleetRequest.activity_status = property(activity_status)

    original_config = SpotFleetRequest.spot_fleet_request_config

    def spot_fleet_request_config(self: Any) -> dict[str, Any]:
        config = dict(original_config.fget(self))
        if self.__dict__.get("valid_until") is not None:
            config["ValidUntil"] = self.valid_until
            config["TerminateInstancesWithExpiration"] = self.terminate_instances_with_expiration
        return config

    SpotFleetRequest.spot_fleet_request_config = property(spot_fleet_request_config)

    original_request = SpotFleets.request_spot_fleet

    def request_spot_fleet(self: Any) -> Any:
        refuse_too_many_overrides(
            self._get_param("SpotFleetRequestConfig", {}).get("LaunchTemplateConfigs") or []
        )
        # moto requests the fleet even with DryRun; EC2 answers DryRunOperation (HTTP 412), requests nothing.
        self.error_on_dryrun()
        result = original_request(self)
        config = self._get_param("SpotFleetRequestConfig", {})
        fleet = self.ec2_backend.spot_fleet_requests[result.result["SpotFleetRequestId"]]
        # EC2 keeps the request's own tags where DescribeTags finds them (resource type spot-fleet-request);
        # moto shows them on the request only.
        tags = {
            t["Key"]: t["Value"]
            for spec in config.get("TagSpecifications") or []
            if spec.get("ResourceType") == "spot-fleet-request"
            for t in spec.get("Tags") or []
        }
        if tags:
            self.ec2_backend.create_tags([fleet.id], tags)
        valid_until = config.get("ValidUntil")
        if valid_until:
            fleet.valid_until = parse_time(valid_until)
            fleet.terminate_instances_with_expiration = str(
                config.get("TerminateInstancesWithExpiration", "false")
            ).lower() in ("true", "1")
        history = fleet.__dict__.setdefault("_spotfill_history", [])
        now = datetime.now(UTC)
        history[:0] = [
            {"EventType": "fleetRequestChange", "EventInformation": {"EventSubType": s}, "Timestamp": now}
            for s in ("submitted", "active")
        ]
        return result

    SpotFleets.request_spot_fleet = request_spot_fleet

    def describe_spot_fleet_request_history(self: Any) -> Any:
        from moto.core.responses import ActionResult

        fleet_id = self._get_param("SpotFleetRequestId")
        start = parse_time(self._get_param("StartTime"))
        event_type = self._get_param("EventType")
        fleet = self.ec2_backend.spot_fleet_requests.get(fleet_id)
        if fleet is None:
            raise EC2ClientError(
                "InvalidSpotFleetRequestId.NotFound", f"The spot fleet request ID '{fleet_id}' does not exist"
            )
        return ActionResult(
            {
                "HistoryRecords": fleet_history_since(fleet, start, event_type),
                "LastEvaluatedTime": datetime.now(UTC),
                "SpotFleetRequestId": fleet_id,
                "StartTime": start,
            }
        )

    SpotFleets.describe_spot_fleet_request_history = describe_spot_fleet_request_history

    # EC2's clock for ValidUntil runs whether or not the physics ticks: whoever looks at a fleet past its
    # ValidUntil sees it expired.
    for name in ("describe_spot_fleet_requests", "describe_spot_fleet_instances"):
        setattr(SpotFleets, name, expiring_first(getattr(SpotFleets, name)))


_requested = threading.local()  # the OnDemandTargetCapacity of the request being made on this thread


def spot_fleet_on_demand(fleet: Any) -> list[tuple[Any, Any]]:
    """(instance, launch spec) of a Spot Fleet's live on-demand instances."""
    members = fleet.__dict__.setdefault("_spotfill_on_demand", [])
    members[:] = [(i, s) for i, s in members if is_live(i)]
    return list(members)


def _spec_of(fleet: Any, request: Any) -> Any:
    """The launch spec a spot request came from (moto's Spot Fleet does not keep it on the request)."""
    if getattr(request, "launch_spec", None) is not None:
        return request.launch_spec
    instance = request.instance
    return next(
        (
            s
            for s in fleet.launch_specs
            if s.instance_type == instance.instance_type and s.subnet_id in (None, instance.subnet_id)
        ),
        fleet.launch_specs[0],
    )


def _spot_fleet_members(fleet: Any) -> list[tuple[Any, Any, str]]:
    spot = [(r.instance, _spec_of(fleet, r), "spot") for r in fleet.spot_requests if is_live(r.instance)]
    return spot + [(i, s, "on-demand") for i, s in spot_fleet_on_demand(fleet)]


def _launch_spot_fleet_on_demand(fleet: Any, spec: Any) -> Any:
    reservation = fleet.ec2_backend.run_instances(
        image_id=spec.image_id,
        count=1,
        instance_type=spec.instance_type,
        is_instance_type_default=False,
        key_name=spec.key_name,
        security_group_names=spec.group_set,
        user_data=spec.user_data,
        placement=None,
        kernel_id=None,
        ramdisk_id=None,
        monitoring_enabled=spec.monitoring_enabled,
        subnet_id=spec.subnet_id,
        spot_fleet_id=fleet.id,
        tags=spec.tag_specifications,
    )
    (instance,) = reservation.instances
    if PENDING_LAUNCHES["on"]:
        instance._state.name, instance._state.code = "pending", 0
    fleet.__dict__.setdefault("_spotfill_on_demand", []).append((instance, spec))
    record_fleet_event(fleet, "instanceChange", "launched", instance_id=instance.id)
    return instance


def maintain_spot_fleet(fleet: Any) -> None:
    """What EC2 does for a live `maintain` Spot Fleet with on-demand capacity: the on-demand part
    (`OnDemandTargetCapacity`) and the spot part (the rest) each kept at target; excess terminated (on
    demand first) unless the last ModifySpotFleetRequest said `ExcessCapacityTerminationPolicy:
    noTermination`, missing capacity launched into pools that do not fail, spot as far as it lasts."""
    if fleet.state not in LIVE_FLEET_STATES:
        return
    on_demand_target = min(
        float(fleet.__dict__.get("on_demand_target_capacity", 0)), float(fleet.target_capacity)
    )
    spot_target = float(fleet.target_capacity) - on_demand_target
    backend = fleet.ec2_backend
    fleet.spot_requests = [r for r in fleet.spot_requests if r.instance is not None and is_live(r.instance)]
    members = _spot_fleet_members(fleet)
    keep = fleet.__dict__.get("_spotfill_excess_policy") == "noTermination"
    for kind, target in (("on-demand", on_demand_target), ("spot", spot_target)):
        mine = [(i, s) for i, s, k in members if k == kind]
        held = fleet_units(members, kind)
        while not keep and mine and held - spec_weight(mine[-1][1]) >= target - 1e-9:
            instance, spec = mine.pop()
            held -= spec_weight(spec)
            backend.terminate_instances([instance.id])
            record_fleet_event(fleet, "instanceChange", "terminated", instance_id=instance.id)
    fleet.spot_requests = [r for r in fleet.spot_requests if is_live(r.instance)]
    members = _spot_fleet_members(fleet)
    while fleet_units(members, "on-demand") < on_demand_target - 1e-9:
        usable = usable_specs(fleet)
        if not usable:
            break
        members.append((_launch_spot_fleet_on_demand(fleet, usable[0]), usable[0], "on-demand"))
    while fleet_units(members, "spot") < spot_target - 1e-9:
        specs = [s for s in usable_specs(fleet) if spot_room(fleet, s, members)]
        if not specs:
            break
        before = len(fleet.spot_requests)
        kept = fleet.launch_specs
        fleet.launch_specs = [specs[0]]
        try:
            fleet.create_spot_requests(spec_weight(specs[0]))
        finally:
            fleet.launch_specs = kept
        if len(fleet.spot_requests) == before:
            break
        members.append((fleet.spot_requests[-1].instance, specs[0], "spot"))
    fleet.fulfilled_capacity = fleet_units(members, "spot") + fleet_units(members, "on-demand")


def patch_spot_fleet_on_demand() -> None:
    """Spot Fleet's on-demand part, which moto 5.2.5 ignores (every unit is spot there)."""
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.spot_requests import SpotFleetRequest
    from moto.ec2.responses.spot_fleets import SpotFleets

    original_init = SpotFleetRequest.__init__

    def __init__(self: Any, ec2_backend: Any, *args: Any, **kwargs: Any) -> None:
        # moto launches every unit as spot from its constructor; here the fleet launches as EC2 maintains it.
        target = kwargs.get("target_capacity", 0)
        kwargs["target_capacity"] = "0"
        original_init(self, ec2_backend, *args, **kwargs)
        self.target_capacity = int(float(target))
        self.__dict__["on_demand_target_capacity"] = int(getattr(_requested, "on_demand", 0) or 0)
        maintain_spot_fleet(self)

    SpotFleetRequest.__init__ = __init__

    lifecycle_create = SpotFleetRequest.create_spot_requests

    def create_spot_requests(self: Any, weight_to_add: float) -> None:
        if weight_to_add > 0:  # moto's constructor asks for its (zeroed) target: nothing
            lifecycle_create(self, weight_to_add)

    SpotFleetRequest.create_spot_requests = create_spot_requests

    lifecycle_terminate = SpotFleetRequest.terminate_instances

    def terminate_instances(self: Any) -> None:
        lifecycle_terminate(self)
        if self.target_capacity == 0:  # cancelled with TerminateInstances: the on-demand ones go too
            alive = [i.id for i, _ in spot_fleet_on_demand(self)]
            if alive:
                self.ec2_backend.terminate_instances(alive)

    SpotFleetRequest.terminate_instances = terminate_instances

    config_of = SpotFleetRequest.spot_fleet_request_config

    def spot_fleet_request_config(self: Any) -> dict[str, Any]:
        config = dict(config_of.fget(self))
        on_demand = spot_fleet_on_demand(self)
        config["OnDemandTargetCapacity"] = int(self.__dict__.get("on_demand_target_capacity", 0))
        config["OnDemandFulfilledCapacity"] = sum(spec_weight(s) for _, s in on_demand)
        return config

    SpotFleetRequest.spot_fleet_request_config = property(spot_fleet_request_config)

    original_request = SpotFleets.request_spot_fleet

    def request_spot_fleet(self: Any) -> Any:
        config = self._get_param("SpotFleetRequestConfig", {})
        _requested.on_demand = config.get("OnDemandTargetCapacity") or 0
        try:
            return original_request(self)
        finally:
            _requested.on_demand = 0

    SpotFleets.request_spot_fleet = request_spot_fleet

    def modify_spot_fleet_request(self: Any) -> Any:
        fleet_id = self._get_param("SpotFleetRequestId")
        fleet = self.ec2_backend.spot_fleet_requests.get(fleet_id)
        if fleet is None:
            raise EC2ClientError(
                "InvalidSpotFleetRequestId.NotFound", f"The spot fleet request ID '{fleet_id}' does not exist"
            )
        total = self._get_param("TargetCapacity")
        on_demand = self._get_param("OnDemandTargetCapacity")
        new_total = int(float(total)) if total is not None else int(fleet.target_capacity)
        new_on_demand = (
            int(float(on_demand))
            if on_demand is not None
            else int(fleet.__dict__.get("on_demand_target_capacity", 0))
        )
        if new_total < new_on_demand:
            # As EC2 answers it (observed: jenkinsci/ec2-fleet-plugin#130); the API reference gives no text.
            raise EC2ClientError(
                "InvalidParameter",
                f"TargetCapacity ({new_total}) cannot be less than OnDemandTargetCapacity ({new_on_demand}).",
            )
        configs = self._get_param("LaunchTemplateConfigs")
        if configs:
            if not fleet.__dict__.get("_spotfill_from_templates"):
                # The rule is the API reference's; its error text is not documented.
                raise EC2ClientError(
                    "InvalidParameterCombination",
                    "LaunchTemplateConfigs can be modified only on a Spot Fleet request that specified a "
                    "launch template (LaunchTemplateConfigs); this request specified LaunchSpecifications.",
                )
            relaunch_specs(fleet, configs, _spot_fleet_members(fleet))
        fleet.target_capacity = new_total
        fleet.__dict__["on_demand_target_capacity"] = new_on_demand
        policy = self._get_param("ExcessCapacityTerminationPolicy")
        if policy:
            fleet.__dict__["_spotfill_excess_policy"] = policy
        maintain_spot_fleet(fleet)
        return ActionResult({"Return": True})

    SpotFleets.modify_spot_fleet_request = modify_spot_fleet_request

    original_instances = SpotFleets.describe_spot_fleet_instances

    def describe_spot_fleet_instances(self: Any) -> Any:
        """Spot instances with their request, on-demand ones without (as EC2 lists them)."""
        result = original_instances(self)
        fleet = self.ec2_backend.spot_fleet_requests.get(self._get_param("SpotFleetRequestId"))
        if fleet is not None:
            alive = {r.instance.id for r in fleet.spot_requests if is_live(r.instance)}
            active = [i for i in result.result["ActiveInstances"] if i["InstanceId"] in alive]
            active += [
                {"InstanceId": i.id, "InstanceType": i.instance_type} for i, _ in spot_fleet_on_demand(fleet)
            ]
            result.result["ActiveInstances"] = active
        return result

    SpotFleets.describe_spot_fleet_instances = expiring_first(describe_spot_fleet_instances)
