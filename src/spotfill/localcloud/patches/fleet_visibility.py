"""Amazon EC2's eventual consistency: a fleet just made may be unknown to the next calls naming it.

`FLEET_VISIBILITY.set(lag)` (`LocalCloudOptions.fleet_visibility_lag`; default 0, visible at once) makes both
fleet APIs answer NotFound (describe, modify) and "does not exist" (DeleteFleets, CancelSpotFleetRequests,
which then delete nothing) for `lag` seconds after a create. CancelSpotFleetRequests reports an unknown or
already cancelled request per request, as EC2 does (moto raises).

AWS documentation followed:
- "Eventual consistency in the Amazon EC2 API", Amazon EC2 Developer Guide:
  https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html
- "CancelSpotFleetRequests", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CancelSpotFleetRequests.html
- "DeleteFleets", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteFleets.html
"""

from __future__ import annotations

import threading
from typing import Any

from spotfill.localcloud.patches.fleets import LIVE_FLEET_STATES

# What EC2's describe calls answer about a fleet it does not (yet) know: the error code and its message.
_UNKNOWN_FLEET = {
    "ec2-fleet": ("InvalidFleetId.NotFound", "The fleet ID '{}' does not exist"),
    "spot-fleet": ("InvalidSpotFleetRequestId.NotFound", "The spot fleet request ID '{}' does not exist"),
}


class FleetVisibility:
    """EC2's API is eventually consistent ("Eventual consistency in the Amazon EC2 API", EC2 Developer Guide,
    https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html): right after a create, a call
    naming the new resource may answer that it does not exist. For `lag` seconds (by `clock`) after a
    CreateFleet or RequestSpotFleet made it, a call naming the new fleet answers so here: DescribeFleets,
    DescribeFleetInstances, DescribeFleetHistory and ModifyFleet raise `InvalidFleetId.NotFound` (Spot Fleet's
    calls `InvalidSpotFleetRequestId.NotFound`), and DeleteFleets / CancelSpotFleetRequests report it
    `fleetIdDoesNotExist` / `fleetRequestIdDoesNotExist` without deleting it. The fleet itself launches as
    usual. `lag` 0 (the default, `LocalCloudOptions.fleet_visibility_lag`): visible at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lag = 0.0
        self._clock: Any = None
        self._created: dict[str, float] = {}

    def set(self, lag: float, clock: Any = None) -> None:
        """New fleets stay unknown for `lag` seconds of `clock()` (default: time.monotonic)."""
        if lag < 0:
            raise ValueError(f"the fleet visibility lag must be 0 or more seconds, got {lag}")
        import time

        with self._lock:
            self.lag = float(lag)
            self._clock = clock or time.monotonic
            self._created.clear()

    def created(self, fleet_id: str) -> None:
        with self._lock:
            if self.lag > 0 and fleet_id not in self._created:
                self._created[fleet_id] = self._clock()

    def hidden(self, fleet_id: str) -> bool:
        with self._lock:
            made = self._created.get(fleet_id)
            return made is not None and self._clock() - made < self.lag


FLEET_VISIBILITY = FleetVisibility()


def patch_fleet_visibility() -> None:
    """Both fleet APIs answer as `FLEET_VISIBILITY` says (installed after the other fleet patches)."""
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.responses.fleets import Fleets
    from moto.ec2.responses.spot_fleets import SpotFleets

    def refusing(api: str, describe: Any, param: str) -> Any:
        code, message = _UNKNOWN_FLEET[api]

        def answered(self: Any) -> Any:
            named = self._get_param(param)
            for fleet_id in named if isinstance(named, list) else [named]:
                if fleet_id and FLEET_VISIBILITY.hidden(fleet_id):
                    raise EC2ClientError(code, message.format(fleet_id))
            return describe(self)

        answered.__name__ = describe.__name__
        return answered

    for name, param in (
        ("describe_fleets", "FleetIds"),
        ("describe_fleet_instances", "FleetId"),
        ("describe_fleet_history", "FleetId"),
        ("modify_fleet", "FleetId"),
    ):
        setattr(Fleets, name, refusing("ec2-fleet", getattr(Fleets, name), param))
    for name, param in (
        ("describe_spot_fleet_requests", "SpotFleetRequestIds"),
        ("describe_spot_fleet_instances", "SpotFleetRequestId"),
        ("describe_spot_fleet_request_history", "SpotFleetRequestId"),
        ("modify_spot_fleet_request", "SpotFleetRequestId"),
    ):
        setattr(SpotFleets, name, refusing("spot-fleet", getattr(SpotFleets, name), param))

    def recording(create: Any, id_key: str) -> Any:
        def created(self: Any) -> Any:
            result = create(self)
            FLEET_VISIBILITY.created(result.result[id_key])
            return result

        created.__name__ = create.__name__
        return created

    Fleets.create_fleet = recording(Fleets.create_fleet, "FleetId")
    SpotFleets.request_spot_fleet = recording(SpotFleets.request_spot_fleet, "SpotFleetRequestId")

    original_delete = Fleets.delete_fleets

    def delete_fleets(self: Any) -> Any:
        """A fleet EC2 does not know yet is `fleetIdDoesNotExist` (not deleted); the others as before."""
        named = list(self._get_param("FleetIds", []) or [])
        hidden = [f for f in named if FLEET_VISIBILITY.hidden(f)]
        unknown = [
            {
                "Error": {"Code": "fleetIdDoesNotExist", "Message": f"The fleet ID '{f}' does not exist"},
                "FleetId": f,
            }
            for f in hidden
        ]
        if not hidden:
            return original_delete(self)
        visible = [f for f in named if f not in hidden]
        if not visible:
            return ActionResult({"SuccessfulFleetDeletions": [], "UnsuccessfulFleetDeletions": unknown})
        get_param = self._get_param
        self._get_param = lambda name, if_none=None: (
            visible if name == "FleetIds" else get_param(name, if_none)
        )
        try:
            result = original_delete(self)
        finally:
            del self._get_param
        result.result["UnsuccessfulFleetDeletions"] = [*result.result["UnsuccessfulFleetDeletions"], *unknown]
        return result

    Fleets.delete_fleets = delete_fleets

    def cancel_spot_fleet_requests(self: Any) -> Any:
        """As EC2, per request: one it does not know (yet) is `fleetRequestIdDoesNotExist`, one already
        cancelled `fleetRequestNotInCancellableState` (moto raises for an unknown id)."""
        terminate = self._get_bool_param("TerminateInstances")
        done, failed = [], []
        for fleet_id in self._get_param("SpotFleetRequestIds", []) or []:
            fleet = self.ec2_backend.spot_fleet_requests.get(fleet_id)
            if fleet is None or FLEET_VISIBILITY.hidden(fleet_id):
                code, message = (
                    "fleetRequestIdDoesNotExist",
                    f"The spot fleet request ID '{fleet_id}' does not exist",
                )
            elif fleet.state not in LIVE_FLEET_STATES:
                code, message = (
                    "fleetRequestNotInCancellableState",
                    f"The spot fleet request {fleet_id} is {fleet.state}",
                )
            else:
                previous = fleet.state
                self.ec2_backend.cancel_spot_fleet_requests([fleet_id], terminate)
                current = "cancelled_terminating" if terminate else "cancelled_running"
                done.append(
                    {
                        "SpotFleetRequestId": fleet_id,
                        "CurrentSpotFleetRequestState": current,
                        "PreviousSpotFleetRequestState": previous,
                    }
                )
                continue
            failed.append({"SpotFleetRequestId": fleet_id, "Error": {"Code": code, "Message": message}})
        return ActionResult({"SuccessfulFleetRequests": done, "UnsuccessfulFleetRequests": failed})

    SpotFleets.cancel_spot_fleet_requests = cancel_spot_fleet_requests
