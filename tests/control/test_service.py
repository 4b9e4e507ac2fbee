"""ScaleService, the state store, and the first half of a run handler to handler."""

from __future__ import annotations

import pytest
from spotfill_control import state_store
from spotfill_control.fleet import cluster
from spotfill_control.handlers import check_registration, request_fleet, scale_service, validate
from spotfill_control.run import RUN_ID_TAG, RunState

from .conftest import CONTROL_BUCKET, EXECUTION_ARN, prepared_run, sample_spec


@pytest.fixture
def registered(world, lambda_context) -> dict:
    """A run of three shards whose fleet has two instances registered in the run's cluster."""
    run = request_fleet.handler({"run": prepared_run(world, lambda_context)}, None)
    for _ in range(2):
        world.register_instance(run["resources"]["cluster_name"])
    return check_registration.handler({"run": run}, lambda_context)


def _service(world, run: dict) -> dict:
    return world.ecs.describe_services(
        cluster=run["resources"]["cluster_name"],
        services=[run["resources"]["service_name"]],
        include=["TAGS"],
    )["services"][0]


@pytest.mark.aws
def test_service_runs_tasks_per_instance_on_every_registered_instance(world, lambda_context, registered):
    # when ScaleService runs for a run with two registered instances and one task per instance
    run = scale_service.handler({"run": registered}, lambda_context)
    # then one EC2 service of two spread tasks runs the run's task definition, and monitoring starts
    service = _service(world, run)
    assert service["serviceName"] == f"spotfill-{run['run_id']}"
    assert service["desiredCount"] == 2
    assert service["launchType"] == "EC2"
    assert service["taskDefinition"] == run["resources"]["task_definition_arn"]
    assert {"key": RUN_ID_TAG, "value": run["run_id"]} in service["tags"]
    assert run["phase"] == "monitoring"
    assert run["timeline"]["processing_started_at"]
    assert state_store.load(run["run_id"], world.s3).resources.service_name == service["serviceName"]


def test_a_starting_service_gets_tasks_per_instance_on_each_registered_instance_but_no_more_than_shards():
    run = RunState.model_validate(
        {
            "run_id": "r",
            "spec": sample_spec(service__tasks_per_instance=2),
            "shards_total": 5,
            "shards_skipped": 1,
        }
    )
    # 4 shards to do, 2 tasks per instance
    assert [cluster.desired_tasks(run, registered) for registered in (0, 1, 2, 3)] == [1, 2, 4, 4]


class Recorder:
    """Forwards to a real client and keeps each call's parameters (moto does not echo them all back)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def record(*args, **kwargs):
            self.calls.append((name, kwargs))
            return method(*args, **kwargs)

        return record if callable(method) else method


@pytest.mark.aws
def test_service_spreads_tasks_and_never_stops_old_ones_early(world, registered):
    ecs = Recorder(world.ecs)
    cluster.start_service(RunState.model_validate(registered), ecs)
    [created] = [kwargs for name, kwargs in ecs.calls if name == "create_service"]
    assert created["placementStrategy"] == [{"type": "spread", "field": "instanceId"}]
    assert created["deploymentConfiguration"] == {"maximumPercent": 200, "minimumHealthyPercent": 100}
    assert created["schedulingStrategy"] == "REPLICA"


@pytest.mark.aws
def test_retried_scale_service_keeps_one_service(world, lambda_context, registered):
    scale_service.handler({"run": registered}, lambda_context)
    world.register_instance(registered["resources"]["cluster_name"])
    run = scale_service.handler({"run": registered}, lambda_context)
    services = world.ecs.list_services(cluster=run["resources"]["cluster_name"])["serviceArns"]
    assert len(services) == 1
    assert _service(world, run)["desiredCount"] == 3


@pytest.mark.aws
def test_scale_to_sets_the_desired_task_count(world, lambda_context, registered):
    run = RunState.model_validate(scale_service.handler({"run": registered}, lambda_context))
    cluster.scale_to(run, 1, world.ecs)
    assert _service(world, run.model_dump(mode="json"))["desiredCount"] == 1


# -------------------------------------------------------------------------------------------- state store


@pytest.mark.aws
def test_state_store_finds_a_run_by_id_and_by_execution(world, lambda_context):
    event = world.validate_event(sample_spec())
    run = RunState.model_validate(validate.handler(event, lambda_context)["run"])
    assert state_store.load(run.run_id, world.s3) == run
    assert state_store.load_by_execution(EXECUTION_ARN, world.s3) == run
    index = world.s3.get_object(Bucket=CONTROL_BUCKET, Key="executions/exec-0001.json")["Body"].read()
    assert run.run_id.encode() in index


@pytest.mark.aws
def test_state_store_knows_nothing_of_an_execution_that_never_made_a_run(s3_world):
    assert state_store.load_by_execution(EXECUTION_ARN.replace("0001", "0404"), s3_world.s3) is None
    assert state_store.load("nothing-20261127060000-000000", s3_world.s3) is None


# ----------------------------------------------------------------------------------------- the first half


@pytest.mark.aws
def test_a_spec_reaches_monitoring_through_the_five_handlers(world, lambda_context):
    run = validate.handler(world.validate_event(sample_spec()), lambda_context)["run"]
    for handler in (prepare_run_handler(), request_fleet.handler, check_registration.handler):
        run = handler({"run": run}, lambda_context)
    assert run["phase"] == "fleet_requested"
    world.register_instance(run["resources"]["cluster_name"])
    run = check_registration.handler({"run": run}, lambda_context)
    run = scale_service.handler({"run": run}, lambda_context)
    assert run["phase"] == "monitoring"
    assert all(value is not None for value in run["resources"].values())
    assert state_store.load_by_execution(EXECUTION_ARN, world.s3).model_dump(mode="json") == run


def prepare_run_handler():
    from spotfill_control.handlers import prepare_run

    return prepare_run.handler
