"""The Monitor tracking `limits.finish_by` on moto: a run that loses half its capacity to a spot interruption
falls behind, the on-demand fallback joins only then, and the fleet grows to finish by the deadline. The
Monitor's clock is injected: every poll is 600 s after the last, and the outputs between polls are written
by the test (7 rows each), so every rate and target below is exact."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from spotfill_control.config import settings
from spotfill_control.handlers import (
    check_registration,
    monitor,
    prepare_run,
    request_fleet,
    scale_service,
)

from .conftest import ROWS_PER_SHARD, World, _build_world, _register_fleet, validated_deadline_run

SHARDS = 40
R = ROWS_PER_SHARD
POLL = 600.0  # seconds between the injected Monitor polls


@pytest.fixture
def world40(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    # The test's "workers" find each shard's message by receiving the whole queue once per output written:
    # more receives than a run's dead-letter threshold, which is not what this test is about.
    from spotfill_control import queues

    monkeypatch.setattr(queues, "MAX_RECEIVES", 1000)
    yield _build_world(monkeypatch, shards=SHARDS)
    settings.cache_clear()


def start(world: World, lambda_context: Any, started: datetime) -> dict[str, Any]:
    """A run of 40 shards with a deadline an hour after `started`, c5.xlarge only (1 unit each), at most 8
    units, and the plan's estimate of R / 120 predictions per second per unit (its fleet of 2 made R / 60):
    Validate starts the fleet at ceil(40 x 120 / (3600 - 60 s boot - 2 polls of 5 s)) = 2 units."""
    fleet = {"instance_types": ["c5.xlarge"], "target_capacity": 8, "on_demand_fallback_after_seconds": 0}
    run = validated_deadline_run(lambda_context, started, SHARDS, fleet, R / 60, 2400.0)
    assert run["finish_by"]["start_units"] == 2
    run = prepare_run.handler({"run": run}, lambda_context)
    run = request_fleet.handler({"run": run}, lambda_context)
    _register_fleet(world, run)
    run = check_registration.handler({"run": run}, lambda_context)
    run = scale_service.handler({"run": run}, lambda_context)
    # the rows per shard as the Monitor's output sample would find them (7 in every output)
    run["progress"].update(rows_sampled_outputs=1, rows_sampled_total=R)
    return run


class Polls:
    """Monitor polls a POLL apart on an injected clock, each after the outputs given are written."""

    def __init__(self, world: World, lambda_context: Any, monkeypatch: Any, started: datetime) -> None:
        self.world, self.lambda_context, self.now = world, lambda_context, started
        monkeypatch.setattr(monitor, "utcnow", lambda: self.now)

    def __call__(self, run: dict[str, Any], outputs: range) -> dict[str, Any]:
        for index in outputs:
            self.world.write_output(run, index)
        self.now += timedelta(seconds=POLL)
        return monitor.handler({"run": run}, self.lambda_context)


def fleet_targets(world: World, run: dict[str, Any]) -> tuple[int, int]:
    (described,) = world.ec2.describe_fleets(FleetIds=[run["resources"]["fleet_id"]])["Fleets"]
    target = described["TargetCapacitySpecification"]
    return int(target["TotalTargetCapacity"]), int(target.get("OnDemandTargetCapacity", 0))


def test_a_run_that_loses_half_its_capacity_falls_behind_and_the_fleet_grows(
    world40, lambda_context, monkeypatch
):
    from spotfill.localcloud.patches.fleets import set_spot_capacity

    started = datetime.now(UTC)
    run = start(world40, lambda_context, started)
    assert fleet_targets(world40, run) == (2, 0)
    poll = Polls(world40, lambda_context, monkeypatch, started)

    # poll 1 (600 s) and poll 2 (1,200 s), 10 outputs between them: R / 120 per unit-second on 2 units, and
    # the 30 shards left need ceil(30 x 120 / (3600 - 1200 - 5)) = 2 units: on track, nothing changes
    run = poll(run, range(0))
    run = poll(run, range(10))
    assert run["projection"]["predictions_per_unit_second"] == pytest.approx(R / 120)
    assert run["finish_by"]["target_units"] == 2 and run["finish_by"]["behind_seconds"] < 0
    assert fleet_targets(world40, run) == (2, 0)

    # when spot takes one of the two instances back (and has no more to give), and the run slows down
    set_spot_capacity({"c5.xlarge": 1})
    try:
        world40.ec2.terminate_instances(InstanceIds=[world40.fleet_instances(run)[0]])
        run = poll(run, range(10, 13))

        # then (poll 3, 1,800 s) the one unit left would finish 27 shards at R / 120 per unit-second
        # 3,240 s from now (+ a poll of 5 s): 1,445 s after the deadline. Two units would still make it, so
        # the target stays; spot is short and the deadline at risk, so the shortfall goes on demand
        assert run["progress"]["interruptions"] == 1
        assert run["finish_by"]["behind_seconds"] == pytest.approx(1445)
        assert run["finish_by"]["target_units"] == 2
        assert fleet_targets(world40, run) == (2, 1)

        # and (poll 4, 2,400 s) 3 more outputs over the 1.5 units the last span had on average measure
        # R / 300: the 24 shards left need ceil(24 x 300 / (3600 - 2400 - 5)) = 7 units, which the fleet gets
        run = poll(run, range(13, 16))
        assert run["projection"] is not None
        assert run["finish_by"]["target_units"] == 7 and run["finish_by"]["added_units"] == 5
        assert fleet_targets(world40, run)[0] == 7
        from spotfill_control.monitoring.finish_by import outlook
        from spotfill_control.run import FinishBy

        line = outlook(FinishBy.model_validate(run["finish_by"]))
        assert "behind by " in line and line.endswith("adding 5 capacity units")
    finally:
        set_spot_capacity({})


def test_a_run_on_track_keeps_its_spot_shortfall_off_on_demand(world40, lambda_context, monkeypatch):
    from spotfill.localcloud.patches.fleets import set_spot_capacity

    # given a run well ahead: 30 outputs on 2 units in its first 600 s (R / 40 per unit-second)
    started = datetime.now(UTC)
    run = start(world40, lambda_context, started)
    poll = Polls(world40, lambda_context, monkeypatch, started)

    run = poll(run, range(0))
    run = poll(run, range(30))
    assert run["finish_by"]["behind_seconds"] < 0

    # when spot takes one instance back and has no more to give
    set_spot_capacity({"c5.xlarge": 1})
    try:
        world40.ec2.terminate_instances(InstanceIds=[world40.fleet_instances(run)[0]])
        for outputs in (range(30, 34), range(34, 36)):
            run = poll(run, outputs)
            # then nothing goes on demand: spot is short, but the one instance left still finishes in time;
            # ahead, the target goes down to the 1 unit the deadline needs (terminating nothing)
            assert run["progress"]["interruptions"] == 1
            assert run["finish_by"]["behind_seconds"] < 0
            assert fleet_targets(world40, run) == (1, 0)
            assert run["progress"]["on_demand_fallback_units"] == 0
    finally:
        set_spot_capacity({})


def test_an_instance_lost_after_a_shrink_that_terminated_nothing_is_an_interruption(
    world40, lambda_context, monkeypatch
):
    # given a run well ahead whose target went from 2 units to 1 without terminating either instance
    started = datetime.now(UTC)
    run = start(world40, lambda_context, started)
    poll = Polls(world40, lambda_context, monkeypatch, started)

    run = poll(run, range(0))
    run = poll(run, range(30))
    run = poll(run, range(30, 32))
    assert fleet_targets(world40, run) == (1, 0) and run["finish_by"]["shrunk_without_termination"]
    assert len(world40.fleet_instances(run)) == 2

    # when spot takes one of them back
    world40.ec2.terminate_instances(InstanceIds=[world40.fleet_instances(run)[0]])
    run = poll(run, range(32, 33))

    # then it counts as an interruption: the fleet removed nothing for the lower target
    assert run["progress"]["interruptions"] == 1
