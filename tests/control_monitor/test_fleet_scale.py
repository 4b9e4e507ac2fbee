"""The fleet side at the headline size (issue 17): the state Step Functions carries, the Monitor's AWS calls
per poll, teardown's deregistration and the run's fleet lookup, with thousands of instances (moto in
process). Every assertion counts bytes or calls, never time."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from spotfill_control import aws, state_store
from spotfill_control.errors import TransientAwsError
from spotfill_control.finishing import teardown
from spotfill_control.fleet import fleet
from spotfill_control.handlers import monitor
from spotfill_control.run import RUN_ID_TAG, RunState

from .conftest import AMI_ID, CONTROL_BUCKET, REGION, ROWS_PER_SHARD

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


# ------------------------------------------------------------------------------------------ teardown


class ConcurrencyProbe:
    """The ECS client, with DeregisterContainerInstance calls counted; the first `gather` calls each wait
    until that many are in flight together (or 30 s, when the code makes them one at a time), so `peak` tells
    whether the calls really overlapped without measuring any time."""

    def __init__(self, ecs: Any, gather: int) -> None:
        self.ecs, self.gather = ecs, gather
        self.lock, self.gathered = threading.Lock(), threading.Event()
        self.in_flight = self.peak = 0
        self.calls: list[str] = []

    def deregister_container_instance(self, **kwargs: Any) -> Any:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.calls.append(kwargs["containerInstance"])
            if self.in_flight >= self.gather:
                self.gathered.set()
        self.gathered.wait(timeout=30)
        try:
            return self.ecs.deregister_container_instance(**kwargs)
        finally:
            with self.lock:
                self.in_flight -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ecs, name)


def _cluster_with_instances(count: int) -> tuple[Any, str, list[str]]:
    ecs, ec2 = aws.client("ecs"), aws.client("ec2")
    ecs.create_cluster(clusterName="spotfill-scale")
    launched = ec2.run_instances(ImageId=AMI_ID, MinCount=count, MaxCount=count, InstanceType="c5.xlarge")
    arns = []
    for instance in launched["Instances"]:
        document = json.dumps(
            {"instanceId": instance["InstanceId"], "region": REGION, "instanceType": "c5.xlarge"}
        )
        found = ecs.register_container_instance(cluster="spotfill-scale", instanceIdentityDocument=document)
        arns.append(found["containerInstance"]["containerInstanceArn"])
    return ecs, "spotfill-scale", arns


def test_teardown_deregisters_a_thousand_container_instances_concurrently_each_once(moto_aws):
    # given a cluster holding 1,000 container instances
    ecs, cluster, arns = _cluster_with_instances(1000)
    probe = ConcurrencyProbe(ecs, gather=teardown.DEREGISTER_CONCURRENCY)

    # when teardown deregisters them
    outcome = teardown.Outcome()
    teardown.deregister_container_instances(cluster, probe, outcome, time_left=lambda: 500.0)

    # then each was deregistered exactly once, DEREGISTER_CONCURRENCY at a time, and none is left
    assert sorted(probe.calls) == sorted(arns)
    assert probe.peak == teardown.DEREGISTER_CONCURRENCY
    assert len(outcome.removed) == 1000
    assert ecs.list_container_instances(cluster=cluster)["containerInstanceArns"] == []


def test_teardown_short_of_time_stops_deregistering_and_its_retry_goes_on_where_it_stopped(moto_aws):
    # given 1,000 container instances, and an invocation whose time runs short after the first page of 100
    ecs, cluster, arns = _cluster_with_instances(1000)
    probe = ConcurrencyProbe(ecs, gather=1)
    left = iter([500.0, teardown.DEREGISTER_RESERVE_SECONDS - 1, teardown.DEREGISTER_RESERVE_SECONDS - 1])

    # when teardown deregisters them
    with pytest.raises(TransientAwsError, match="teardown will retry"):
        teardown.deregister_container_instances(cluster, probe, teardown.Outcome(), lambda: next(left))

    # then it stopped after one page, and the retried teardown deregisters the other 900, none twice
    assert len(probe.calls) == 100
    teardown.deregister_container_instances(cluster, probe, teardown.Outcome(), lambda: 500.0)
    assert len(probe.calls) == 1000 and sorted(probe.calls) == sorted(arns)


# ------------------------------------------------------------------------------------------ run lookup


class Ec2Calls:
    """EC2 requests as sent (operation, parameters), recorded on the handlers' cached client."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))

    def named(self, operation: str) -> list[dict[str, Any]]:
        return [p for name, p in self.calls if name == operation]


@pytest.fixture
def ec2_calls(world) -> Iterator[Ec2Calls]:
    recorder = Ec2Calls()
    events = aws.client("ec2").meta.events
    events.register("before-parameter-build.ec2", recorder, unique_id="fleet-scale-ec2")
    yield recorder
    events.unregister("before-parameter-build.ec2", unique_id="fleet-scale-ec2")


def _other_runs_fleets(world, count: int) -> None:
    for n in range(count):
        world.ec2.create_fleet(
            Type="maintain",
            TargetCapacitySpecification={"TotalTargetCapacity": 1, "DefaultTargetCapacityType": "spot"},
            LaunchTemplateConfigs=[
                {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateId": world.settings.launch_template_id,
                        "Version": "1",
                    },
                    "Overrides": [{"InstanceType": "c5.xlarge"}],
                }
            ],
            TagSpecifications=[
                {"ResourceType": "fleet", "Tags": [{"Key": RUN_ID_TAG, "Value": f"other-run-{n}"}]}
            ],
        )


def test_the_runs_fleet_is_found_by_its_tag_without_listing_the_accounts_fleets(
    world, running_run, ec2_calls
):
    # given an account with 60 fleets of other runs besides this run's
    _other_runs_fleets(world, 60)
    run = RunState.model_validate(running_run)
    ec2_calls.calls.clear()

    # when the run's fleets are looked up (RequestFleet's retry, teardown)
    found = fleet.run_fleet_ids(run, world.ec2, live_only=False)

    # then it is the run's one fleet, found with one DescribeTags and described by its id alone
    assert found == [run.resources.fleet_id]
    assert [name for name, _ in ec2_calls.calls] == ["DescribeTags", "DescribeFleets"]
    assert ec2_calls.named("DescribeFleets") == [{"FleetIds": [run.resources.fleet_id]}]


def test_a_spot_fleet_request_is_found_by_its_tag_too(world, running_run, ec2_calls):
    # given a run of its own on the legacy Spot Fleet API, in an account with another run's EC2 Fleet
    run = RunState.model_validate(running_run)
    spot_fleet = run.spec.fleet.model_copy(update={"api": "spot-fleet"})
    spot_run = run.model_copy(
        update={"run_id": "spot-run", "spec": run.spec.model_copy(update={"fleet": spot_fleet})}
    )
    request = fleet.request_fleet(spot_run, world.ec2, world.settings)
    ec2_calls.calls.clear()

    # when it is looked up by its run id
    found = fleet.run_fleet_ids(spot_run, world.ec2)

    # then DescribeTags finds it and DescribeSpotFleetRequests is asked about it alone
    assert found == [request]
    assert [name for name, _ in ec2_calls.calls] == ["DescribeTags", "DescribeSpotFleetRequests"]
    assert ec2_calls.named("DescribeSpotFleetRequests") == [{"SpotFleetRequestIds": [request]}]


# ------------------------------------------------------------------------------------------ one Monitor poll


class AwsCalls:
    """Every request the handlers' cached clients send, by service and operation."""

    SERVICES = ("s3", "sqs", "ec2", "ecs")

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self._hooks = [(s, self._recorder(s)) for s in self.SERVICES]

    def _recorder(self, service: str) -> Any:
        def record(model: Any, **_: Any) -> None:
            self.calls[(service, model.name)] += 1

        return record

    def __enter__(self) -> AwsCalls:
        for service, hook in self._hooks:
            aws.client(service).meta.events.register(
                f"before-parameter-build.{service}", hook, f"poll-{service}"
            )
        return self

    def __exit__(self, *_: Any) -> None:
        for service, _hook in self._hooks:
            aws.client(service).meta.events.unregister(
                f"before-parameter-build.{service}", unique_id=f"poll-{service}"
            )

    def of(self, service: str) -> dict[str, int]:
        return {op: n for (s, op), n in sorted(self.calls.items()) if s == service}


INSTANCES = 1000


@pytest.fixture
def thousand_instance_run(moto_aws, monkeypatch, lambda_context) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A run of 1,000 shards on a fleet of 1,000 c5.xlarge instances, all registered, its service started."""
    from spotfill_control.config import settings
    from spotfill_control.handlers import (
        check_registration,
        prepare_run,
        request_fleet,
        scale_service,
        validate,
    )

    from spotfill.localcloud.patches.account_limits import set_service_quota

    from .conftest import (
        ACCOUNT,
        EXECUTION_ARN,
        STATE_MACHINE_ARN,
        _build_world,
        _now_iso,
        _register_fleet,
        sample_spec,
    )

    world = _build_world(monkeypatch, shards=INSTANCES)
    set_service_quota("L-34B43A08", 4 * INSTANCES + 4, region=REGION, account_id=ACCOUNT)
    spec = sample_spec()
    spec["fleet"] = {"instance_types": ["c5.xlarge"], "target_capacity": INSTANCES}
    event = {
        "input": spec,
        "execution_arn": EXECUTION_ARN,
        "state_machine_arn": STATE_MACHINE_ARN,
        "started_at": _now_iso(),
    }
    run = validate.handler(event, lambda_context)["run"]
    run = prepare_run.handler({"run": run}, lambda_context)
    run = request_fleet.handler({"run": run}, lambda_context)
    _register_fleet(world, run)
    run = check_registration.handler({"run": run}, lambda_context)
    run = scale_service.handler({"run": run}, lambda_context)
    yield world, run
    settings.cache_clear()


def test_one_monitor_poll_at_a_thousand_instances_makes_a_bounded_number_of_calls(
    thousand_instance_run, lambda_context
):
    # given a run on 1,000 instances that the Monitor has polled once (its series and instances.json exist)
    world, run = thousand_instance_run
    assert len(world.fleet_instances(run)) == INSTANCES
    run = monitor.handler({"run": run}, lambda_context)
    assert run["progress"]["known_instances_count"] == INSTANCES

    # when it polls again while the work is queued
    with AwsCalls() as calls:
        run = monitor.handler({"run": run}, lambda_context)

    # then no call is made per instance, nor per 100 or 200 of them: the table in docs/state-machine.md
    assert calls.of("ec2") == {"DescribeFleetInstances": 1, "DescribeFleets": 1, "DescribeInstances": 1}
    assert calls.of("ecs") == {"DescribeClusters": 1, "DescribeServices": 1}
    assert calls.of("sqs") == {"GetQueueAttributes": 2}
    # (S3: the run's own few objects, and a handful of sampled outputs: none of it grows with the fleet)
    assert sum(calls.of("s3").values()) <= 12
    assert calls.of("s3")["GetObject"] == 3  # the series, instances.json, the shard index


# ------------------------------------------------------------------------------------------ live progress


class _Session:
    """`runs.Session` over the handlers' cached moto clients."""

    def client(self, service: str, region: str | None = None) -> Any:
        return aws.client(service)


def test_live_progress_reads_the_monitors_figures_and_never_lists_or_heads_outputs(
    world, running_run, lambda_context, s3_requests
):
    # given two polls of the Monitor while workers finish shards (their outputs under the output prefix)
    from spotfill import runs

    world.write_output(running_run, 0)
    run = monitor.handler({"run": running_run}, lambda_context)
    world.write_output(running_run, 1)
    run = monitor.handler({"run": run}, lambda_context)
    stack = runs.Stack("spotfill", CONTROL_BUCKET, "data", "arn:sm", {})
    watcher = runs.RunWatcher(_Session(), stack, run["execution_arn"], counts=lambda run_id: (2, 2))
    s3_requests.clear()

    # when the display refreshes
    snap = runs.Snapshot(run["execution_arn"])
    watcher._fill_progress(snap, RunState.model_validate(run))

    # then its figures are the Monitor's: shards done, predictions, and a rate that is not zero
    assert snap.shards_done == run["progress"]["outputs_done"] == 2
    assert snap.predictions == 2 * ROWS_PER_SHARD
    assert snap.predictions_per_second == run["projection"]["predictions_per_second"] > 0
    # and the only S3 read is the run's small shard index, once: no listing, no HEAD of any output
    assert [name for name, _ in s3_requests] == ["GetObject"]
    watcher._fill_progress(runs.Snapshot(run["execution_arn"]), RunState.model_validate(run))
    assert [name for name, _ in s3_requests] == ["GetObject"]


@pytest.fixture
def s3_requests(world) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    recorded: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        recorded.append((model.name, dict(params)))

    events = aws.client("s3").meta.events
    events.register("before-parameter-build.s3", record, unique_id="fleet-scale-s3")
    yield recorded
    events.unregister("before-parameter-build.s3", unique_id="fleet-scale-s3")
