"""The local cloud's slow instance types: the agent paces a slowed type's workers, the worker sleeps after
each batch, and nothing on AWS turns it on."""

from __future__ import annotations

import pytest
from spotfill_worker.config import WorkerConfig
from spotfill_worker.worker import pacing_seconds

from spotfill.localcloud.agent import SPEED_VARIABLE, check_instance_speed, speed_environment
from spotfill.localcloud.cloud import LocalCloudOptions

BASE = {
    "run_id": "r",
    "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
    "model_uri": "s3://b/m.keras",
    "input_format": "npy",
}


def test_a_half_speed_worker_sleeps_as_long_as_each_batch_took():
    assert pacing_seconds(0.4, 0.5) == pytest.approx(0.4)
    assert pacing_seconds(0.3, 0.25) == pytest.approx(0.9)


def test_a_full_speed_worker_never_sleeps():
    assert pacing_seconds(0.4, 1.0) == 0.0
    assert pacing_seconds(0.0, 0.5) == 0.0


def test_the_worker_is_at_full_speed_unless_the_local_cloud_says_otherwise():
    assert WorkerConfig(**BASE).local_cloud_speed == 1.0
    assert WorkerConfig(**BASE, local_cloud_speed=0.5).local_cloud_speed == 0.5


def test_the_agent_slows_only_the_types_it_was_told_to():
    speeds = {"c5.large": 0.5}
    assert speed_environment("c5.large", speeds) == {SPEED_VARIABLE: "0.5"}
    assert speed_environment("c5.xlarge", speeds) == {}
    assert speed_environment("c5.large", {"c5.large": 1.0}) == {}


@pytest.mark.parametrize("speed", [0, -1, 1.5])
def test_a_speed_outside_zero_to_one_is_refused_naming_the_type(speed):
    with pytest.raises(ValueError, match=r"instance_speed\['c5.large'\].*above 0 and at most 1"):
        check_instance_speed({"c5.large": speed})
    with pytest.raises(ValueError, match=r"instance_speed\['c5.large'\]"):
        LocalCloudOptions(instance_speed={"c5.large": speed})


class _Facts:
    def __init__(self, facts):
        self.facts = facts


def test_each_output_records_its_workers_predictions_per_second_beside_the_instance_type(monkeypatch):
    # given a worker on a c5.large whose first prediction began at t=100 (monotonic)
    from spotfill_worker import worker as worker_module
    from spotfill_worker.imds import InstanceFacts

    worker = worker_module.Worker(WorkerConfig(**BASE), clients=object())
    worker._instance_facts = _Facts(InstanceFacts("spot", "c5.large"))
    worker._working_since = 100.0
    now = {"t": 110.0}
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: now["t"])

    # when it writes an output of 50 rows at t=110, then one of 30 rows at t=120
    first = worker._facts(50)
    now["t"] = 120.0
    second = worker._facts(30)

    # then each output carries the worker's rows so far over its working seconds
    assert first == {
        "spotfill-purchase-option": "spot",
        "spotfill-instance-type": "c5.large",
        "spotfill-worker-rows-per-second": "5.000",
    }
    assert second["spotfill-worker-rows-per-second"] == "4.000"


def test_without_instance_facts_an_output_carries_no_rate():
    from spotfill_worker import worker as worker_module

    worker = worker_module.Worker(WorkerConfig(**BASE), clients=object())
    worker._working_since = 0.0
    assert worker._facts(50) == {}


class _Popen:
    started: list[dict[str, str]] = []

    def __init__(self, command, env, **kwargs):
        _Popen.started.append(env)

    def poll(self):
        return None


@pytest.mark.parametrize(("instance_type", "expected"), [("c5.large", "0.5"), ("c5.xlarge", None)])
def test_the_agent_starts_a_slowed_types_tasks_with_the_speed_and_no_task_definition_sets_it(
    tmp_path, monkeypatch, instance_type, expected
):
    # given an agent told c5.large runs at half speed, an instance of `instance_type` registered, and a task
    # definition that tries to set the speed itself
    from spotfill.localcloud import agent as agent_module
    from spotfill.localcloud.fleet import Machine

    monkeypatch.setattr(agent_module.subprocess, "Popen", _Popen)
    _Popen.started.clear()
    agent = agent_module.EcsAgent(
        "http://127.0.0.1:9", "us-east-1", {}, tmp_path / "logs", instance_speed={"c5.large": 0.5}
    )
    machine = Machine("i-1", instance_type, "fleet-1", 0.0)
    agent.registrations["i-1"] = agent_module.Registration(machine, "run-one")
    agent._task_definitions["td"] = {
        "containerDefinitions": [{"environment": [{"name": SPEED_VARIABLE, "value": "0.1"}]}]
    }

    # when it starts a task there
    agent._start_task("run-one", "workers", "td", "i-1")

    # then only the agent's speed reaches the worker, and only on the slowed type
    (environment,) = _Popen.started
    assert environment.get(SPEED_VARIABLE) == expected
