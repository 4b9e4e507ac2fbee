"""The fleet side at the headline size (issue 17): the state Step Functions carries, the Monitor's AWS calls
per poll, teardown's deregistration and the run's fleet lookup, with thousands of instances (moto in
process). Every assertion counts bytes or calls, never time."""

from __future__ import annotations

import json

import pytest
from spotfill_control import state_store
from spotfill_control.handlers import monitor
from spotfill_control.run import RunState

from .conftest import CONTROL_BUCKET

pytestmark = pytest.mark.aws

STATE_BUDGET_BYTES = 64 * 1024


def _instance_ids(count: int) -> list[str]:
    return [f"i-{n:017x}" for n in range(count)]


def test_five_thousand_known_instances_leave_the_state_well_under_its_limit(world, running_run):
    # given a run whose Monitor saw 5,000 instances alive
    run = RunState.model_validate(running_run)
    run.progress.known_instances = _instance_ids(5000)
    run.progress.known_instances_count = 5000

    # when the state is handed between states (and persisted as state.json)
    payload = run.model_dump_json()

    # then it carries no instance id and stays far below Step Functions' 256 KiB
    assert len(payload.encode()) < STATE_BUDGET_BYTES
    assert "i-0000000000000000" not in payload
    assert json.loads(payload)["progress"]["known_instances_count"] == 5000


def test_known_instances_live_in_s3_and_come_back_with_the_run(world, running_run):
    # given a run whose Monitor saw 5,000 instances
    run = RunState.model_validate(running_run)
    run.progress.known_instances = _instance_ids(5000)
    state_store.save_known_instances(run, [], world.s3, CONTROL_BUCKET)
    state_store.persist(run, world.s3, CONTROL_BUCKET)

    # when teardown or the report loads the run
    loaded = state_store.load(run.run_id, world.s3, CONTROL_BUCKET)

    # then the ids are all there, though state.json holds none of them
    assert loaded is not None and loaded.progress.known_instances == _instance_ids(5000)
    assert 'known_instances"' not in json.dumps(world.stored_run(run.run_id))
    assert world.known_instances(run.run_id) == _instance_ids(5000)


def test_monitor_hands_the_next_poll_its_known_instances_through_s3(world, running_run, lambda_context):
    # given the first poll saw the fleet's instances
    first = monitor.handler({"run": running_run}, lambda_context)
    known = world.known_instances(first["run_id"])
    assert known and "known_instances" not in first["progress"]

    # when one of them is reclaimed by spot and the next poll looks (with the state the first one returned)
    world.ec2.terminate_instances(InstanceIds=[known[0]])
    second = monitor.handler({"run": first}, lambda_context)

    # then the second poll knew what the first saw: one interruption, and the file follows the fleet
    assert second["progress"]["interruptions"] == 1
    assert known[0] not in world.known_instances(first["run_id"])
    assert second["progress"]["known_instances_count"] == len(known) - 1
