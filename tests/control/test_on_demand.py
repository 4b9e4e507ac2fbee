"""The on-demand fallback's decisions (pure), and the fleet calls every API change goes through."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from spotfill_control.fleet import fleet_api, on_demand
from spotfill_control.fleet.fleet_api import FleetStatus
from spotfill_control.instance_types import InstanceTypeFacts
from spotfill_control.run import Progress
from spotfill_control.spec import FleetSpec

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
# The run's c5.xlarge as Validate resolved it (EC2's facts, the Price List's price).
FACTS = {
    "c5.xlarge": InstanceTypeFacts(
        name="c5.xlarge",
        vcpus=4,
        memory_mib=8192,
        gpus=0,
        architecture="x86_64",
        on_demand_hourly_usd=0.1587,
        price_source="price-list",
    )
}
AFTER = 60


def spec(**fields) -> FleetSpec:
    return FleetSpec.model_validate(
        {
            "instance_types": ["c5.xlarge"],
            "target_capacity": 4,
            "on_demand_fallback_after_seconds": AFTER,
            **fields,
        }
    )


def status(
    total: float, on_demand: float, spot_have: float, on_demand_have: float | None = None
) -> FleetStatus:
    od_have = on_demand if on_demand_have is None else on_demand_have
    return FleetStatus(
        state="active",
        activity="fulfilled",
        target_capacity=total,
        fulfilled_capacity=spot_have + od_have,
        on_demand_target_capacity=on_demand,
        on_demand_fulfilled_capacity=od_have,
    )


def test_without_a_fallback_nothing_ever_moves():
    targets, updates = on_demand.decide(
        spec(on_demand_fallback_after_seconds=None), Progress(), status(4, 0, 1), T0, FACTS
    )
    assert (targets, updates) == (None, {})


def test_spot_short_starts_the_clock_and_moves_the_shortfall_on_demand_only_after_the_wait():
    # given 4 units wanted, spot holding 1
    targets, updates = on_demand.decide(spec(), Progress(), status(4, 0, 1), T0, FACTS)
    assert targets is None and updates == {"spot_short_since": T0}
    progress = Progress(spot_short_since=T0)
    # still short a second before the wait is over: nothing moves
    assert (
        on_demand.decide(spec(), progress, status(4, 0, 1), T0 + timedelta(seconds=AFTER - 1), FACTS)[0]
        is None
    )
    # once the wait is over, the 3 missing units go on demand, the total unchanged
    targets, updates = on_demand.decide(
        spec(), progress, status(4, 0, 1), T0 + timedelta(seconds=AFTER), FACTS
    )
    assert targets == on_demand.Targets(total=4, on_demand=3)
    assert updates["on_demand_fallback_units"] == 3 and updates["spot_short_since"] is None


def test_spot_that_fills_before_the_wait_clears_the_clock():
    targets, updates = on_demand.decide(spec(), Progress(spot_short_since=T0), status(4, 0, 4), T0, FACTS)
    assert targets is None and updates == {"spot_short_since": None}


def test_the_base_stays_on_demand_and_only_the_spot_part_can_fall_back():
    # given a base of 1 on demand, 3 spot wanted, spot holding 2
    progress = Progress(spot_short_since=T0)
    targets, _ = on_demand.decide(
        spec(on_demand_base=1), progress, status(4, 1, 2), T0 + timedelta(seconds=AFTER), FACTS
    )
    assert targets == on_demand.Targets(total=4, on_demand=2)


def test_the_hourly_cap_bounds_the_units_moved_on_demand():
    # c5.xlarge is the only type: one unit costs its on-demand price; the cap leaves room for 2 units in all
    price = on_demand.unit_price_bound(FACTS)
    capped = spec(max_hourly_price=round(2.5 * price, 4))
    progress = Progress(spot_short_since=T0)
    # spot holds 1 (priced at most on demand): one more unit fits under the cap, not three
    targets, updates = on_demand.decide(
        capped, progress, status(4, 0, 1), T0 + timedelta(seconds=AFTER), FACTS
    )
    assert targets == on_demand.Targets(total=4, on_demand=1)
    assert updates["on_demand_fallback_units"] == 1
    # with the cap spent by what runs, nothing moves and the clock keeps running
    full = spec(max_hourly_price=round(1.5 * price, 4))
    targets, updates = on_demand.decide(full, progress, status(4, 0, 1), T0 + timedelta(seconds=AFTER), FACTS)
    assert targets is None and updates == {"spot_short_since": T0}


def test_units_on_demand_probe_spot_again_after_the_wait_by_asking_spot_for_them_on_top():
    # given 3 units moved on demand a wait ago, spot holding its 1
    progress = Progress(on_demand_fallback_units=3, fallback_changed_at=T0)
    assert (
        on_demand.decide(spec(), progress, status(4, 3, 1), T0 + timedelta(seconds=AFTER - 1), FACTS)[0]
        is None
    )
    targets, updates = on_demand.decide(
        spec(), progress, status(4, 3, 1), T0 + timedelta(seconds=AFTER), FACTS
    )
    # then the fleet asks spot for the 3 units on top (on demand unchanged)
    assert targets == on_demand.Targets(total=7, on_demand=3)
    assert updates["spot_probe_units"] == 3 and updates["spot_probe_since"] == T0 + timedelta(seconds=AFTER)


def test_spot_that_fills_a_probe_gets_those_units_back_from_on_demand():
    started = T0 + timedelta(seconds=AFTER)
    probing = Progress(on_demand_fallback_units=3, spot_probe_units=3, spot_probe_since=started)
    # spot filled 2 of the 3 probe units: spot holds 1 + 2
    targets, updates = on_demand.decide(
        spec(), probing, status(7, 3, 3), started + timedelta(seconds=5), FACTS
    )
    assert targets == on_demand.Targets(total=4, on_demand=1)  # the fleet terminates 2 on-demand units
    assert updates["on_demand_fallback_units"] == 1 and updates["spot_probe_units"] == 0


def test_a_probe_nothing_fills_ends_after_the_wait_and_the_units_stay_on_demand():
    started = T0 + timedelta(seconds=AFTER)
    probing = Progress(on_demand_fallback_units=3, spot_probe_units=3, spot_probe_since=started)
    assert (
        on_demand.decide(spec(), probing, status(7, 3, 1), started + timedelta(seconds=AFTER - 1), FACTS)[0]
        is None
    )
    targets, updates = on_demand.decide(
        spec(), probing, status(7, 3, 1), started + timedelta(seconds=AFTER), FACTS
    )
    assert targets == on_demand.Targets(total=4, on_demand=3)
    assert updates["on_demand_fallback_units"] == 3 and updates["fallback_changed_at"] == started + timedelta(
        seconds=AFTER
    )


def test_a_lowered_tail_ends_a_probe_and_keeps_no_more_fallback_units_than_fit():
    progress = Progress(on_demand_fallback_units=3, spot_probe_units=3, spot_probe_since=T0)
    on_demand.after_scale_down(progress, new_total=2, base=1)
    assert (progress.on_demand_fallback_units, progress.spot_probe_units, progress.spot_probe_since) == (
        1,
        0,
        None,
    )


class RecordingEc2:
    """Records fleet calls and answers as EC2 does."""

    def __init__(self, failures: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.failures = failures or {}

    def modify_fleet(self, **kwargs):
        self.calls.append(("modify_fleet", kwargs))
        return {"Return": True}

    def modify_spot_fleet_request(self, **kwargs):
        self.calls.append(("modify_spot_fleet_request", kwargs))
        return {"Return": True}

    def delete_fleets(self, **kwargs):
        self.calls.append(("delete_fleets", kwargs))
        return {
            "SuccessfulFleetDeletions": [],
            "UnsuccessfulFleetDeletions": [
                {"FleetId": f, "Error": {"Code": self.failures[f], "Message": "m"}}
                for f in kwargs["FleetIds"]
                if f in self.failures
            ],
        }


def test_targets_are_set_with_modify_fleet_or_modify_spot_fleet_request_in_whole_units():
    ec2 = RecordingEc2()
    fleet_api.api_named("ec2-fleet").set_target("fleet-1", ec2, 5, 2)
    fleet_api.api_named("spot-fleet").set_target("sfr-1", ec2, 5, 2)
    fleet_api.api_named("ec2-fleet").set_target("fleet-1", ec2, 3, None)
    assert ec2.calls == [
        (
            "modify_fleet",
            {
                "FleetId": "fleet-1",
                "TargetCapacitySpecification": {
                    "TotalTargetCapacity": 5,
                    "OnDemandTargetCapacity": 2,
                    "SpotTargetCapacity": 3,
                },
            },
        ),
        (
            "modify_spot_fleet_request",
            {"SpotFleetRequestId": "sfr-1", "TargetCapacity": 5, "OnDemandTargetCapacity": 2},
        ),
        ("modify_fleet", {"FleetId": "fleet-1", "TargetCapacitySpecification": {"TotalTargetCapacity": 3}}),
    ]
    assert fleet_api.whole_units(2.2) == 3 and fleet_api.whole_units(2.0) == 2


def test_delete_fleets_asks_for_at_most_100_maintain_fleets_a_call_and_says_what_ec2_answered_for_each():
    ids = [f"fleet-{i}" for i in range(130)]
    ec2 = RecordingEc2({"fleet-3": "fleetIdDoesNotExist", "fleet-120": "fleetNotInDeletableState"})
    deletions = fleet_api.api_named("ec2-fleet").delete(ids, ec2)
    assert [len(kwargs["FleetIds"]) for _, kwargs in ec2.calls] == [100, 30]
    assert all(kwargs["TerminateInstances"] is True for _, kwargs in ec2.calls)
    # a fleet already deleted is ended; one EC2 does not know deleted nothing; neither is a failure
    assert [(d.fleet_id, d.ended, d.unknown, d.failed) for d in deletions] == [
        ("fleet-3", False, True, False),
        ("fleet-120", True, False, False),
    ]
    failing = RecordingEc2({"fleet-1": "unexpectedError"})
    assert fleet_api.api_named("ec2-fleet").delete(["fleet-1"], failing) == [
        fleet_api.Deletion("fleet-1", code="unexpectedError", message="m")
    ]
    assert fleet_api.Deletion("fleet-1", code="unexpectedError").failed


@pytest.mark.parametrize(
    ("active", "lifecycle"), [({"SpotInstanceRequestId": "sir-1"}, "spot"), ({}, "on-demand")]
)
def test_an_instance_is_spot_when_it_has_a_spot_request_and_on_demand_otherwise(active, lifecycle):
    pages = iter([{"ActiveInstances": [{"InstanceId": "i-1", "InstanceType": "c5.xlarge", **active}]}])
    assert fleet_api._active_instances(pages) == [fleet_api.FleetInstance("i-1", "c5.xlarge", lifecycle)]
