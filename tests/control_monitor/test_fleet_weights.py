"""Re-weighting a live fleet on moto with the local cloud's fleet model: the ModifyFleet and
ModifySpotFleetRequest payloads, what the emulation does with them (and refuses, as AWS does), and a deadline
run's Monitor re-weighting a slow type by the throughput its outputs report."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from spotfill_control.config import settings
from spotfill_control.fleet import fleet
from spotfill_control.fleet.fleet_api import Ec2FleetApi, SpotFleetApi
from spotfill_control.handlers import monitor
from spotfill_control.run import RunState

from .conftest import ROWS_PER_SHARD, World, _build_world

SLOW_WEIGHTS = {"c5.2xlarge": 1.0, "c5.xlarge": 2.0}
CONFIGS = [
    {
        "LaunchTemplateSpecification": {"LaunchTemplateId": "lt-1", "Version": "3"},
        "Overrides": [{"InstanceType": "c5.xlarge", "SubnetId": "subnet-1", "WeightedCapacity": 1.6}],
    }
]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def modify_fleet(self, **kwargs: Any) -> None:
        self.calls.append(("modify_fleet", kwargs))

    def modify_spot_fleet_request(self, **kwargs: Any) -> None:
        self.calls.append(("modify_spot_fleet_request", kwargs))


def test_ec2_fleet_is_re_weighted_with_launch_template_configs_alone():
    ec2 = Recorder()
    Ec2FleetApi().set_weights("fleet-1", ec2, CONFIGS)
    assert ec2.calls == [("modify_fleet", {"FleetId": "fleet-1", "LaunchTemplateConfigs": CONFIGS})]


def test_spot_fleet_is_re_weighted_with_launch_template_configs_alone():
    ec2 = Recorder()
    SpotFleetApi().set_weights("sfr-1", ec2, CONFIGS)
    assert ec2.calls == [
        ("modify_spot_fleet_request", {"SpotFleetRequestId": "sfr-1", "LaunchTemplateConfigs": CONFIGS})
    ]


def mixed_fleet(start_run: Callable[..., dict[str, Any]], api: str) -> RunState:
    """A fleet of 3 units (the world's 3 shards): one c5.2xlarge (2 units by vCPUs, first in the request)
    and, spot being short of it, one c5.xlarge (1 unit)."""
    from spotfill.localcloud.patches.fleets import set_spot_capacity

    set_spot_capacity({"c5.2xlarge": 2})
    try:
        run = start_run(
            fleet={"api": api, "instance_types": ["c5.2xlarge", "c5.xlarge"], "target_capacity": 3}
        )
    finally:
        set_spot_capacity({})
    return RunState.model_validate(run)


def live_types(world: World, run: RunState) -> list[str]:
    return sorted(i.instance_type for i in fleet.fleet_instances(run, world.ec2))


@pytest.mark.parametrize("api", ["ec2-fleet", "spot-fleet"])
def test_a_re_weighted_fleet_keeps_its_instances_and_grows_with_the_cheaper_type_per_unit(
    world, start_run, api
):
    # given a mixed fleet requested by vCPUs
    run = mixed_fleet(start_run, api)
    assert live_types(world, run) == ["c5.2xlarge", "c5.xlarge"]

    # when the c5.2xlarge turns out slow: weights 1 (from 2) and 2 (from 1), which keep the 3 running units
    fleet.set_weights(run, world.ec2, settings(), SLOW_WEIGHTS)

    # then nothing is launched or terminated for it, and the fleet still counts 3 units
    assert live_types(world, run) == ["c5.2xlarge", "c5.xlarge"]
    status = fleet.describe_fleet(run, world.ec2)
    assert status is not None and status.fulfilled_capacity == 3 and status.target_capacity == 3

    # and growing by 2 units launches a c5.xlarge (cheaper per unit now), where by vCPUs the request's first
    # type, c5.2xlarge, came first
    fleet.set_target_capacity(run, world.ec2, 5)
    assert live_types(world, run) == ["c5.2xlarge", "c5.xlarge", "c5.xlarge"]


def test_ec2_fleet_describes_the_new_overrides(world, start_run):
    run = mixed_fleet(start_run, "ec2-fleet")
    fleet.set_weights(run, world.ec2, settings(), SLOW_WEIGHTS)
    (described,) = world.ec2.describe_fleets(FleetIds=[run.resources.fleet_id])["Fleets"]
    weights = {
        o["InstanceType"]: o["WeightedCapacity"]
        for config in described["LaunchTemplateConfigs"]
        for o in config["Overrides"]
    }
    assert weights == SLOW_WEIGHTS


def test_more_overrides_than_a_fleet_takes_are_refused_as_at_request(world, start_run):
    run = mixed_fleet(start_run, "ec2-fleet")
    (config,) = fleet.launch_template_configs(run, settings(), SLOW_WEIGHTS)
    config["Overrides"] = [
        {"InstanceType": "c5.xlarge", "SubnetId": f"subnet-{i}", "WeightedCapacity": 1} for i in range(301)
    ]
    with pytest.raises(ClientError) as raised:
        world.ec2.modify_fleet(FleetId=run.resources.fleet_id, LaunchTemplateConfigs=[config])
    assert raised.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert "maximum allowed number of launch template overrides (300)" in str(raised.value)


def test_a_spot_fleet_of_launch_specifications_takes_no_launch_template_configs(world):
    # given a Spot Fleet requested with LaunchSpecifications (not a launch template)
    request = world.ec2.request_spot_fleet(
        SpotFleetRequestConfig={
            "IamFleetRole": "arn:aws:iam::123456789012:role/fleet",
            "TargetCapacity": 0,
            "Type": "maintain",
            "AllocationStrategy": "lowestPrice",
            "LaunchSpecifications": [{"ImageId": "ami-12c6146b", "InstanceType": "c5.xlarge"}],
        }
    )
    # when it is modified with LaunchTemplateConfigs, then EC2 refuses ("You can only use this parameter if
    # you specified a launch template (LaunchTemplateConfigs) in your Spot Fleet request")
    with pytest.raises(ClientError) as raised:
        world.ec2.modify_spot_fleet_request(
            SpotFleetRequestId=request["SpotFleetRequestId"], LaunchTemplateConfigs=CONFIGS
        )
    assert raised.value.response["Error"]["Code"] == "InvalidParameterCombination"


# ------------------------------------------------------------------------------------------ the Monitor

SHARDS = 40
R = ROWS_PER_SHARD
POLL = 600.0


@pytest.fixture
def world40(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from spotfill_control import queues
    from spotfill_control.monitoring import progress

    monkeypatch.setattr(queues, "MAX_RECEIVES", 1000)
    # Every poll reads the metadata of every output it may (40 shards: all in the index's sample), so which
    # outputs are measured does not depend on the draw.
    monkeypatch.setattr(progress, "ROWS_SAMPLE_SIZE", 64)
    yield _build_world(monkeypatch, shards=SHARDS)
    settings.cache_clear()


def start_deadline_run(world: World, lambda_context: Any, started: datetime) -> dict[str, Any]:
    """A run of 40 shards due in an hour, on c5.2xlarge and c5.xlarge (first in that order), whose plan
    estimate (R / 300 predictions/s per unit) starts the fleet at ceil(40 x 300 / 3530) = 4 units: spot being
    short of c5.2xlarge, one c5.2xlarge (2 units) and two c5.xlarge (1 each)."""
    from spotfill_control.handlers import (
        check_registration,
        prepare_run,
        request_fleet,
        scale_service,
    )

    from spotfill.localcloud.patches.fleets import set_spot_capacity

    from .conftest import _register_fleet, validated_deadline_run

    fleet = {"instance_types": ["c5.2xlarge", "c5.xlarge"], "target_capacity": 8}
    run = validated_deadline_run(lambda_context, started, SHARDS, fleet, R / 150, 6000.0)
    assert run["finish_by"]["start_units"] == 4
    run = prepare_run.handler({"run": run}, lambda_context)
    set_spot_capacity({"c5.2xlarge": 2})
    try:
        run = request_fleet.handler({"run": run}, lambda_context)
    finally:
        set_spot_capacity({})
    _register_fleet(world, run)
    run = check_registration.handler({"run": run}, lambda_context)
    return scale_service.handler({"run": run}, lambda_context)


def fleet_weights(world: World, run: dict[str, Any]) -> dict[str, float]:
    (described,) = world.ec2.describe_fleets(FleetIds=[run["resources"]["fleet_id"]])["Fleets"]
    return {
        o["InstanceType"]: o["WeightedCapacity"]
        for c in described["LaunchTemplateConfigs"]
        for o in c["Overrides"]
    }


def test_the_monitor_takes_weight_from_a_type_its_outputs_measure_slow(world40, lambda_context, monkeypatch):
    started = datetime.now(UTC)
    run = start_deadline_run(world40, lambda_context, started)
    assert live_types(world40, RunState.model_validate(run)) == ["c5.2xlarge", "c5.xlarge", "c5.xlarge"]
    assert fleet_weights(world40, run) == {"c5.2xlarge": 2.0, "c5.xlarge": 1.0}
    clock = {"now": started}
    monkeypatch.setattr(monitor, "utcnow", lambda: clock["now"])

    def poll(outputs: list[tuple[int, str, float]]) -> dict[str, Any]:
        for index, instance_type, rate in outputs:
            world40.write_output(run, index, instance_type=instance_type, worker_rate=rate)
        clock["now"] += timedelta(seconds=POLL)
        return monitor.handler({"run": run}, lambda_context)

    # given outputs whose workers report 2 rows/s on c5.xlarge and 1 row/s on c5.2xlarge (one task per
    # instance), 4 of each: fewer than the 5 a type needs to count as measured
    run = poll([])
    run = poll([(i, "c5.xlarge", 2.0) for i in range(4)] + [(i, "c5.2xlarge", 1.0) for i in range(4, 8)])
    assert run["weighting"]["measured"]["c5.xlarge"]["outputs"] == 4
    assert run["weighting"]["weights"] == {}
    assert fleet_weights(world40, run) == {"c5.2xlarge": 2.0, "c5.xlarge": 1.0}

    # when a fifth of each is read
    before = world40.fleet_instances(run)
    run = poll([(8, "c5.xlarge", 2.0), (9, "c5.2xlarge", 1.0)])

    # then the 6 running units (the first poll grew the fleet to 5 units with a second c5.2xlarge: 2 of each
    # type) are re-weighted by what they deliver, 6 rows/s: c5.xlarge 2 x 6 / 6 = 2 (from 1), c5.2xlarge
    # 1 x 6 / 6 = 1 (from 2): the slow type loses weight, on the fleet
    assert live_types(world40, RunState.model_validate(run)) == [
        "c5.2xlarge",
        "c5.2xlarge",
        "c5.xlarge",
        "c5.xlarge",
    ]
    assert run["weighting"]["weights"] == {"c5.2xlarge": 1.0, "c5.xlarge": 2.0}
    assert fleet_weights(world40, run) == {"c5.2xlarge": 1.0, "c5.xlarge": 2.0}
    (change,) = run["weighting"]["changes"]
    assert change["per_instance"] == {"c5.2xlarge": 1.0, "c5.xlarge": 2.0}
    # and no instance was launched, terminated or interrupted for it
    assert world40.fleet_instances(run) == before and run["progress"]["interruptions"] == 0

    # and the next poll, measuring the same, changes nothing more
    run = poll([(10, "c5.xlarge", 2.0), (11, "c5.2xlarge", 1.0)])
    assert len(run["weighting"]["changes"]) == 1
