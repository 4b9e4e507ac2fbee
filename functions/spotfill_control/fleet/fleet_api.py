"""The two EC2 APIs a run's fleet can live on, behind one interface.

`fleet.api` in the spec picks one: `ec2-fleet` (CreateFleet, the default) or `spot-fleet` (RequestSpotFleet,
the API AWS calls legacy, kept for accounts that rely on it). Every fleet call in the control plane and the
CLI goes through a `FleetApi`, so monitoring, interruption counting, on-demand fallback, cost and teardown
read the same shapes whichever API holds the fleet:

- `FleetStatus`: state, activity, total and on-demand target, fulfilled capacity, `ValidUntil`;
- `FleetInstance`: an active instance, its type and purchase option (`spot` or `on-demand`);
- failure history records (`EventInformation`): the API's error events, and on Spot Fleet the `information`
  events that report a pool EC2 stopped launching into (`POOL_INFORMATION_SUB_TYPES`).

Both APIs answer active instances in the same `ActiveInstance` shape: an instance with a
`SpotInstanceRequestId` is a spot instance, one without is on demand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from botocore.exceptions import ClientError

from spotfill_control.aws import is_transient
from spotfill_control.errors import FleetRequestError, SpotfillError, TransientAwsError
from spotfill_control.spec import FleetApiName

T = TypeVar("T")

Lifecycle = Literal["spot", "on-demand"]

# The spec's allocation strategies are Spot Fleet's names; EC2 Fleet spells the same strategies in kebab case.
EC2_FLEET_SPOT_STRATEGIES = {
    "priceCapacityOptimized": "price-capacity-optimized",
    "capacityOptimized": "capacity-optimized",
    "capacityOptimizedPrioritized": "capacity-optimized-prioritized",
    "lowestPrice": "lowest-price",
    "diversified": "diversified",
}
# Spot Fleet reports a launch specification (a pool) it gave up on as an `information` event, not an `error`
# one ("EC2 Spot Fleet Information" in the EC2 user guide's "Spot Fleet event types",
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-event-types.html; EventInformation in the EC2
# API reference): `launchSpecTemporarilyBlacklisted` (the configuration is not valid and several launches
# failed) and `launchSpecUnusable` (its price is below the Spot price). Each names its pool in its
# description.
POOL_INFORMATION_SUB_TYPES = frozenset({"launchSpecTemporarilyBlacklisted", "launchSpecUnusable"})
# DeleteFleets takes at most 100 fleets of type maintain (25 of type instant) per call; more deletes none.
DELETE_FLEETS_LIMIT = 100


@dataclass(frozen=True)
class FleetInstance:
    instance_id: str
    instance_type: str
    lifecycle: Lifecycle


@dataclass(frozen=True)
class FleetStatus:
    state: str
    activity: str | None
    target_capacity: float
    fulfilled_capacity: float
    on_demand_target_capacity: float = 0.0
    on_demand_fulfilled_capacity: float = 0.0
    valid_until: datetime | None = None

    @property
    def active(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def fulfilled(self) -> bool:
        return self.target_capacity > 0 and self.fulfilled_capacity >= self.target_capacity

    @property
    def spot_target_capacity(self) -> float:
        return max(0.0, self.target_capacity - self.on_demand_target_capacity)

    @property
    def spot_fulfilled_capacity(self) -> float:
        return max(0.0, self.fulfilled_capacity - self.on_demand_fulfilled_capacity)


# States in which a fleet launches and keeps instances (the same names on both APIs).
LIVE_STATES = frozenset({"submitted", "active", "modifying"})
# States of a fleet that ended: Spot Fleet cancels a request, EC2 Fleet deletes a fleet.
ENDED_STATES = frozenset(
    {
        "failed",
        "cancelled",
        "cancelled_running",
        "cancelled_terminating",
        "deleted",
        "deleted_running",
        "deleted_terminating",
    }
)
# What teardown need not delete again (an expired request is ended too).
GONE_STATES = ENDED_STATES | {"expired"}
# A delete's per-fleet error codes (DeleteFleetError, CancelSpotFleetRequestsError in the EC2 API Reference):
# the fleet is unknown to EC2 (gone long ago, or too new for EC2's eventually consistent API to know), or it
# already ended.
UNKNOWN_FLEET_CODES = frozenset({"fleetIdDoesNotExist", "fleetRequestIdDoesNotExist"})
ENDED_FLEET_CODES = frozenset({"fleetNotInDeletableState", "fleetRequestNotInCancellableState"})


@dataclass(frozen=True)
class Deletion:
    """What DeleteFleets or CancelSpotFleetRequests answered for one fleet: its state after the call
    (`deleted_terminating`, `cancelled_terminating`, ...), or the error code and message of its failure."""

    fleet_id: str
    state: str | None = None
    code: str | None = None
    message: str = ""

    @property
    def ended(self) -> bool:
        """EC2 says the fleet is deleted (or cancelled) now or was already."""
        return self.state in GONE_STATES or self.code in ENDED_FLEET_CODES

    @property
    def unknown(self) -> bool:
        """EC2 says the fleet does not exist: it deleted nothing."""
        return self.code in UNKNOWN_FLEET_CODES

    @property
    def failed(self) -> bool:
        """A real failure (neither done nor an unknown fleet)."""
        return not self.ended and not self.unknown


class FleetApi(Protocol):
    name: FleetApiName
    resource_type: str  # the ARN resource type and TagSpecifications resource type of the fleet

    def request(self, config: dict[str, Any], ec2: Any) -> str: ...
    def describe(self, fleet_id: str, ec2: Any) -> FleetStatus | None: ...
    def instances(self, fleet_id: str, ec2: Any) -> list[FleetInstance] | None: ...
    def set_target(
        self, fleet_id: str, ec2: Any, total: int, on_demand: int | None, keep_instances: bool = False
    ) -> None: ...
    def set_weights(self, fleet_id: str, ec2: Any, launch_template_configs: list[dict[str, Any]]) -> None: ...
    def failure_records(self, fleet_id: str, ec2: Any, since: datetime) -> list[dict[str, Any]]: ...
    def delete(self, fleet_ids: Sequence[str], ec2: Any) -> list[Deletion]: ...


def _deletions(
    response: dict[str, Any], done: str, undone: str, id_key: str, state_key: str
) -> list[Deletion]:
    """Each fleet of a delete call's answer: those done with their current state, the others with their
    error."""
    deletions = [
        Deletion(str(d.get(id_key, "")), state=str(d.get(state_key))) for d in response.get(done, [])
    ]
    for item in response.get(undone, []):
        error = item.get("Error", {})
        deletions.append(
            Deletion(
                str(item.get(id_key, "")), code=str(error.get("Code")), message=str(error.get("Message", ""))
            )
        )
    return deletions


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unless_gone(missing: str, call: Callable[[], T]) -> T | None:
    """The call's answer, or None when EC2 says the fleet does not exist (an error code starting `missing`):
    AWS forgets a cancelled or deleted fleet after a while, and may not know one created moments ago yet
    (its API is eventually consistent: `fleet.unseen_is_transient`)."""
    try:
        return call()
    except ClientError as exc:
        if _code(exc).startswith(missing):
            return None
        raise


def _lifecycle(active: dict[str, Any]) -> Lifecycle:
    return "spot" if active.get("SpotInstanceRequestId") else "on-demand"


def _active_instances(pages: Iterator[dict[str, Any]]) -> list[FleetInstance]:
    return [
        FleetInstance(i["InstanceId"], str(i.get("InstanceType", "")), _lifecycle(i))
        for page in pages
        for i in page.get("ActiveInstances", [])
    ]


def _pages(call: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every page of a NextToken-paged call (the fleet-instance calls have no boto3 paginator)."""
    while True:
        page = call(**kwargs)
        yield page
        if not page.get("NextToken"):
            return
        kwargs["NextToken"] = page["NextToken"]


def call_error(what: str, exc: ClientError) -> Exception:
    """A failed fleet call as the state machine routes it: transient (retried) or a failed request."""
    if is_transient(exc):
        return TransientAwsError(f"{what}: {exc}")
    return FleetRequestError(f"{what}: {exc}")


def whole_units(units: float) -> int:
    """Target capacities are whole weighted units on both APIs: a fraction is rounded up (never less)."""
    return max(0, math.ceil(units - 1e-9))


class SpotFleetApi:
    """RequestSpotFleet and its kin (legacy; needs the Spot Fleet role, `IamFleetRole`)."""

    name: FleetApiName = "spot-fleet"
    resource_type = "spot-fleet-request"
    _missing = "InvalidSpotFleetRequestId"

    def request(self, config: dict[str, Any], ec2: Any) -> str:
        return ec2.request_spot_fleet(SpotFleetRequestConfig=config)["SpotFleetRequestId"]

    def describe(self, fleet_id: str, ec2: Any) -> FleetStatus | None:
        described = _unless_gone(
            self._missing, lambda: ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])
        )
        configs = described["SpotFleetRequestConfigs"] if described else None
        if not configs:
            return None
        config = configs[0]
        request = config.get("SpotFleetRequestConfig", {})
        return FleetStatus(
            state=str(config.get("SpotFleetRequestState", "unknown")),
            activity=config.get("ActivityStatus"),
            target_capacity=float(request.get("TargetCapacity", 0)),
            fulfilled_capacity=float(request.get("FulfilledCapacity", 0)),
            on_demand_target_capacity=float(request.get("OnDemandTargetCapacity", 0)),
            on_demand_fulfilled_capacity=float(request.get("OnDemandFulfilledCapacity", 0)),
            valid_until=request.get("ValidUntil"),
        )

    def instances(self, fleet_id: str, ec2: Any) -> list[FleetInstance] | None:
        return _unless_gone(
            self._missing,
            lambda: _active_instances(_pages(ec2.describe_spot_fleet_instances, SpotFleetRequestId=fleet_id)),
        )

    def set_target(
        self, fleet_id: str, ec2: Any, total: int, on_demand: int | None, keep_instances: bool = False
    ) -> None:
        kwargs: dict[str, Any] = {"SpotFleetRequestId": fleet_id, "TargetCapacity": total}
        if on_demand is not None:
            kwargs["OnDemandTargetCapacity"] = on_demand
        if keep_instances:
            kwargs["ExcessCapacityTerminationPolicy"] = "noTermination"
        ec2.modify_spot_fleet_request(**kwargs)

    def set_weights(self, fleet_id: str, ec2: Any, launch_template_configs: list[dict[str, Any]]) -> None:
        """ModifySpotFleetRequest with the request's `LaunchTemplateConfigs` (its overrides re-weighted) and
        nothing else: the target capacities stay as they are."""
        ec2.modify_spot_fleet_request(
            SpotFleetRequestId=fleet_id, LaunchTemplateConfigs=launch_template_configs
        )

    def failure_records(self, fleet_id: str, ec2: Any, since: datetime) -> list[dict[str, Any]]:
        """The request's `error` events, then its `information` events about a pool
        (`POOL_INFORMATION_SUB_TYPES`): one history read per event type, each filtered by EC2."""
        records: list[dict[str, Any]] = []
        for event_type in ("error", "information"):
            for page in _pages(
                ec2.describe_spot_fleet_request_history,
                SpotFleetRequestId=fleet_id,
                StartTime=since,
                EventType=event_type,
            ):
                records.extend(
                    r
                    for r in page.get("HistoryRecords", [])
                    if r.get("EventType") == event_type
                    and (
                        event_type == "error"
                        or r.get("EventInformation", {}).get("EventSubType") in POOL_INFORMATION_SUB_TYPES
                    )
                )
        return records

    def delete(self, fleet_ids: Sequence[str], ec2: Any) -> list[Deletion]:
        """Cancel with TerminateInstances; what EC2 answered for each request."""
        response = ec2.cancel_spot_fleet_requests(
            SpotFleetRequestIds=list(fleet_ids), TerminateInstances=True
        )
        return _deletions(
            response,
            "SuccessfulFleetRequests",
            "UnsuccessfulFleetRequests",
            "SpotFleetRequestId",
            "CurrentSpotFleetRequestState",
        )


class Ec2FleetApi:
    """CreateFleet (type `maintain`) and its kin: launched through the AWSServiceRoleForEC2Fleet
    service-linked role, so no role is passed for the fleet itself."""

    name: FleetApiName = "ec2-fleet"
    resource_type = "fleet"
    _missing = "InvalidFleetId"

    def request(self, config: dict[str, Any], ec2: Any) -> str:
        response = ec2.create_fleet(**config)
        return response["FleetId"]

    def describe(self, fleet_id: str, ec2: Any) -> FleetStatus | None:
        fleets = _unless_gone(self._missing, lambda: ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"])
        if not fleets:
            return None
        fleet = fleets[0]
        target = fleet.get("TargetCapacitySpecification", {})
        return FleetStatus(
            state=str(fleet.get("FleetState", "unknown")),
            activity=fleet.get("ActivityStatus"),
            target_capacity=float(target.get("TotalTargetCapacity", 0)),
            fulfilled_capacity=float(fleet.get("FulfilledCapacity", 0)),
            on_demand_target_capacity=float(target.get("OnDemandTargetCapacity", 0)),
            on_demand_fulfilled_capacity=float(fleet.get("FulfilledOnDemandCapacity", 0)),
            valid_until=fleet.get("ValidUntil"),
        )

    def instances(self, fleet_id: str, ec2: Any) -> list[FleetInstance] | None:
        return _unless_gone(
            self._missing, lambda: _active_instances(_pages(ec2.describe_fleet_instances, FleetId=fleet_id))
        )

    def set_target(
        self, fleet_id: str, ec2: Any, total: int, on_demand: int | None, keep_instances: bool = False
    ) -> None:
        target: dict[str, Any] = {"TotalTargetCapacity": total}
        if on_demand is not None:
            target["OnDemandTargetCapacity"] = on_demand
            target["SpotTargetCapacity"] = max(0, total - on_demand)
        kwargs: dict[str, Any] = {"FleetId": fleet_id, "TargetCapacitySpecification": target}
        if keep_instances:
            kwargs["ExcessCapacityTerminationPolicy"] = "no-termination"
        ec2.modify_fleet(**kwargs)

    def set_weights(self, fleet_id: str, ec2: Any, launch_template_configs: list[dict[str, Any]]) -> None:
        """ModifyFleet with the fleet's `LaunchTemplateConfigs` (its overrides re-weighted) and no
        `TargetCapacitySpecification`: the target capacities stay as they are."""
        ec2.modify_fleet(FleetId=fleet_id, LaunchTemplateConfigs=launch_template_configs)

    def failure_records(self, fleet_id: str, ec2: Any, since: datetime) -> list[dict[str, Any]]:
        """EC2 Fleet's history types are `instance-change`, `fleet-change` and `service-error` (Spot Fleet's
        `error`; DescribeFleetHistory's FleetEventType has no `information` type), so its pool failures are
        `service-error` events; the error sub-types are Spot Fleet's."""
        records: list[dict[str, Any]] = []
        for page in _pages(
            ec2.describe_fleet_history, FleetId=fleet_id, StartTime=since, EventType="service-error"
        ):
            records.extend(r for r in page.get("HistoryRecords", []) if r.get("EventType") == "service-error")
        return records

    def delete(self, fleet_ids: Sequence[str], ec2: Any) -> list[Deletion]:
        """DeleteFleets with TerminateInstances, at most DELETE_FLEETS_LIMIT per call; what EC2 answered for
        each fleet."""
        deletions: list[Deletion] = []
        ids = list(fleet_ids)
        for start in range(0, len(ids), DELETE_FLEETS_LIMIT):
            response = ec2.delete_fleets(
                FleetIds=ids[start : start + DELETE_FLEETS_LIMIT], TerminateInstances=True
            )
            deletions += _deletions(
                response,
                "SuccessfulFleetDeletions",
                "UnsuccessfulFleetDeletions",
                "FleetId",
                "CurrentFleetState",
            )
        return deletions


APIS: dict[str, FleetApi] = {"ec2-fleet": Ec2FleetApi(), "spot-fleet": SpotFleetApi()}


def api_named(name: str) -> FleetApi:
    try:
        return APIS[name]
    except KeyError:
        raise SpotfillError(f"unknown fleet API {name!r}; known: {', '.join(sorted(APIS))}") from None
