"""Monitor handler against moto: one iteration of the monitoring loop on a run in flight."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from spotfill_control.errors import (
    BudgetReached,
    FleetRequestError,
    ModelLoadError,
    RunTimeoutError,
    StallError,
)
from spotfill_control.handlers import monitor
from spotfill_control.monitoring.dead_letters import read_dead_letters

from .conftest import CONTROL_BUCKET, ROWS_PER_SHARD

pytestmark = pytest.mark.aws


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def test_monitor_keeps_running_while_shards_are_queued(world, running_run, lambda_context):
    # given a run whose workers finished one shard of three, the other two still queued
    world.write_output(running_run, 0)

    # when monitor looks
    run = monitor.handler({"run": running_run}, lambda_context)

    # then it counts the output, queues nothing again, and keeps the loop going
    assert run["progress"]["state"] == "running"
    assert run["progress"]["outputs_done"] == 1
    assert run["progress"]["requeued"] == 0
    assert run["phase"] == "monitoring"
    assert run["progress"]["iterations"] == 1
    assert run["timeline"]["processing_ended_at"] is None
    assert world.stored_run(run["run_id"])["progress"]["outputs_done"] == 1


def test_monitor_emits_shard_totals_as_embedded_metrics_for_the_dashboard(
    world, running_run, lambda_context, capsys, monkeypatch
):
    # given a run with one of three shards done
    world.write_output(running_run, 0)

    # when monitor looks, named as the template names the service
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "spotfill")
    monitor.metrics.service = "spotfill"
    monitor.handler({"run": running_run}, lambda_context)

    # then stdout carries one EMF record with the run's totals under the spotfill namespace
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert len(records) == 1
    (directive,) = records[0]["_aws"]["CloudWatchMetrics"]
    # the dashboard searches exactly this dimension set: {spotfill,RunId,service}
    assert directive["Namespace"] == "spotfill" and sorted(directive["Dimensions"][0]) == ["RunId", "service"]
    assert records[0]["RunId"] == running_run["run_id"]
    assert (records[0]["ShardsTotal"], records[0]["ShardsDone"], records[0]["DeadLetters"]) == ([3], [1], [0])
    dashboard = (Path(__file__).parents[2] / "template.yaml").read_text()
    assert '{spotfill,RunId,service} MetricName=\\"ShardsTotal\\"' in dashboard


def test_monitor_emits_the_cost_so_far_and_the_cap_for_the_dashboard(
    world, start_run, lambda_context, capsys, monkeypatch
):
    # given a run with a cap far above what it costs
    run = start_run(max_total_usd=500)

    # when monitor looks
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "spotfill")
    monitor.metrics.service = "spotfill"
    after = monitor.handler({"run": run}, lambda_context)

    # then the EMF record carries the cost accrued since the instances launched, and the cap
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert record["CostSoFarUsd"] == [after["budget"]["accrued_usd"]] and after["budget"]["accrued_usd"] > 0
    assert record["MaxTotalUsd"] == [500.0]
    assert after["budget"]["draining_since"] is None
    dashboard = (Path(__file__).parents[2] / "template.yaml").read_text()
    for name in ("CostSoFarUsd", "MaxTotalUsd"):
        assert f'{{spotfill,RunId,service}} MetricName=\\"{name}\\"' in dashboard


def test_monitor_drains_a_run_before_its_cap_then_ends_it_with_budget_reached(
    world, start_run, lambda_context
):
    # given a run whose cap (just above the least Validate accepts) is below what the fleet costs over a poll
    # and a drain
    run = start_run(max_total_usd=0.0011)
    fleet_id = run["resources"]["fleet_id"]
    instances = world.ec2.describe_fleet_instances(FleetId=fleet_id)["ActiveInstances"]

    # when monitor looks
    draining = monitor.handler({"run": run}, lambda_context)

    # then it drains: the fleet's target is 0 with its instances still running, the service runs no task
    assert draining["budget"]["draining_since"] is not None
    assert draining["budget"]["projected_usd"] >= 0.0011
    (described,) = world.ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"]
    assert described["TargetCapacitySpecification"]["TotalTargetCapacity"] == 0
    assert described["ExcessCapacityTerminationPolicy"] == "no-termination"
    states = world.ec2.describe_instances(InstanceIds=[i["InstanceId"] for i in instances])
    assert {i["State"]["Name"] for r in states["Reservations"] for i in r["Instances"]} == {"running"}
    (service,) = world.ecs.describe_services(
        cluster=run["resources"]["cluster_name"], services=[run["resources"]["service_name"]]
    )["services"]
    assert service["desiredCount"] == 0

    # and the next poll, no worker holding a shard, ends the run: BudgetReached, the drain kept in S3
    with pytest.raises(BudgetReached, match=r"limits\.max_total_usd"):
        monitor.handler({"run": draining}, lambda_context)
    assert world.stored_run(run["run_id"])["budget"]["draining_since"] == draining["budget"]["draining_since"]


@pytest.mark.parametrize("api", ["ec2-fleet", "spot-fleet"])
def test_a_drain_zeroes_the_on_demand_target_too_and_ends_the_run_with_budget_reached(
    world, start_run, lambda_context, api
):
    # given a run over its cap whose fleet holds on-demand units (fleet.on_demand_base): EC2 refuses a total
    # target below the on-demand one (ModifyFleet and ModifySpotFleetRequest both), so the drain must lower
    # both
    run = start_run(max_total_usd=0.0011, fleet={"api": api, "on_demand_base": 1})
    fleet_id = run["resources"]["fleet_id"]
    instances = world.fleet_instances(run)
    assert len(instances) >= 2  # the on-demand unit and spot ones

    # when monitor looks
    draining = monitor.handler({"run": run}, lambda_context)

    # then the fleet's total and on-demand targets are 0, and its instances keep running for the drain
    assert draining["budget"]["draining_since"] is not None
    if api == "ec2-fleet":
        (described,) = world.ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"]
        target = described["TargetCapacitySpecification"]
        assert (target["TotalTargetCapacity"], target["OnDemandTargetCapacity"]) == (0, 0)
    else:
        (described,) = world.ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])[
            "SpotFleetRequestConfigs"
        ]
        config = described["SpotFleetRequestConfig"]
        assert (config["TargetCapacity"], config["OnDemandTargetCapacity"]) == (0, 0)
    assert set(world.instance_states(instances).values()) == {"running"}

    # and the next poll ends the run with BudgetReached, not an EC2 error
    with pytest.raises(BudgetReached, match=r"limits\.max_total_usd"):
        monitor.handler({"run": draining}, lambda_context)


def test_a_spot_fleet_refuses_a_total_target_below_its_on_demand_target_as_ec2_does(world, start_run):
    # given a Spot Fleet with one on-demand unit
    run = start_run(fleet={"api": "spot-fleet", "on_demand_base": 1})

    # when its total alone goes to 0, then EC2's error comes back and the fleet keeps its targets
    from botocore.exceptions import ClientError

    fleet_id = run["resources"]["fleet_id"]
    with pytest.raises(ClientError) as refused:
        world.ec2.modify_spot_fleet_request(SpotFleetRequestId=fleet_id, TargetCapacity=0)
    assert refused.value.response["Error"]["Code"] == "InvalidParameter"
    assert refused.value.response["Error"]["Message"] == (
        "TargetCapacity (0) cannot be less than OnDemandTargetCapacity (1)."
    )
    (described,) = world.ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])[
        "SpotFleetRequestConfigs"
    ]
    assert described["SpotFleetRequestConfig"]["OnDemandTargetCapacity"] == 1
    assert described["SpotFleetRequestConfig"]["TargetCapacity"] > 0


def test_a_drain_that_starts_while_the_fleet_is_modifying_lowers_it_once_the_fleet_settles(
    world, start_run, lambda_context
):
    # given a run over its cap whose fleet is still applying an earlier change (EC2 takes no new target then)
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    run = start_run(max_total_usd=0.0011)
    fleet_id = run["resources"]["fleet_id"]
    fleet = ec2_backends[DEFAULT_ACCOUNT_ID][world.ec2.meta.region_name].fleets[fleet_id]
    fleet.state = "modifying"

    def target() -> int:
        (described,) = world.ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"]
        return described["TargetCapacitySpecification"]["TotalTargetCapacity"]

    # when monitor looks, then it drains the service but leaves the fleet's target alone
    draining = monitor.handler({"run": run}, lambda_context)
    assert draining["budget"]["draining_since"] is not None
    assert target() > 0

    # when the fleet settles, the next poll sets its target to 0 (and, no shard in hand, ends the run)
    fleet.state = "active"
    with pytest.raises(BudgetReached):
        monitor.handler({"run": draining}, lambda_context)
    assert target() == 0


def test_monitor_finishes_when_every_shard_has_an_output(world, running_run, lambda_context):
    # given every shard done and every message deleted
    world.drain_queue(running_run)
    for index in range(3):
        world.write_output(running_run, index)

    # when monitor looks
    run = monitor.handler({"run": running_run}, lambda_context)

    # then the run is done
    assert run["progress"]["state"] == "done"
    assert run["phase"] == "done"
    assert run["progress"]["outputs_done"] == 3
    assert run["progress"]["dead_letters"] == 0
    assert run["timeline"]["processing_ended_at"] is not None


def test_monitor_queues_again_a_lost_shard_when_the_queue_is_empty(world, running_run, lambda_context):
    # given workers took every message but only two outputs exist (an instance died mid-shard)
    world.drain_queue(running_run)
    world.write_output(running_run, 0)
    world.write_output(running_run, 2)
    lost = world.shard_list(running_run)["shards"][1]["shard"]

    # when monitor looks
    run = monitor.handler({"run": running_run}, lambda_context)

    # then exactly the lost shard is queued again, and the run goes on
    assert run["progress"]["requeued"] == 1
    assert run["progress"]["state"] == "running"
    assert world.queue_shards(run["resources"]["queue_url"]) == [lost]


def test_monitor_does_not_requeue_while_messages_are_in_flight(world, running_run, lambda_context):
    # given a worker holds a message (in flight) and no outputs exist yet
    url = running_run["resources"]["queue_url"]
    world.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=300)

    # when monitor looks
    run = monitor.handler({"run": running_run}, lambda_context)

    # then nothing is queued twice
    assert run["progress"]["requeued"] == 0


def test_monitor_counts_dead_letters_and_finishes_when_the_rest_has_outputs(
    world, running_run, lambda_context
):
    # given two outputs and the third shard in the dead-letter queue
    world.drain_queue(running_run)
    world.write_output(running_run, 0)
    world.write_output(running_run, 1)
    failed = world.dead_letter(running_run, 2)

    # when monitor looks
    run = monitor.handler({"run": running_run}, lambda_context)

    # then the run is done with one dead letter, nothing requeued, and the dead letter moved into S3 to report
    assert run["progress"]["state"] == "done"
    assert run["progress"]["dead_letters"] == 1
    assert run["progress"]["requeued"] == 0
    assert world.queue_shards(run["resources"]["dead_letter_queue_url"]) == []
    assert read_dead_letters(run["run_id"], world.s3, CONTROL_BUCKET) == [failed]


def test_monitor_requeues_only_shards_that_are_not_dead_letters(world, running_run, lambda_context):
    # given one output, one dead letter and one shard lost
    world.drain_queue(running_run)
    world.write_output(running_run, 0)
    world.dead_letter(running_run, 1)
    lost = world.shard_list(running_run)["shards"][2]["shard"]

    # when monitor looks
    run = monitor.handler({"run": running_run}, lambda_context)

    # then only the lost one is queued again
    assert run["progress"]["requeued"] == 1
    assert run["progress"]["dead_letters"] == 1
    assert world.queue_shards(run["resources"]["queue_url"]) == [lost]


def test_monitor_raises_stall_error_when_nothing_moved_for_the_stall_timeout(
    world, running_run, lambda_context
):
    # given a run that last made progress longer ago than its stall timeout (600 s), and nothing new since
    running_run["progress"]["last_progress_at"] = _ago(601)

    # when monitor looks, then it fails the run
    with pytest.raises(StallError, match="no progress"):
        monitor.handler({"run": running_run}, lambda_context)

    # and what it saw is persisted for the report
    assert world.stored_run(running_run["run_id"])["progress"]["iterations"] == 1


def write_model_error(world, run: dict, error: str) -> None:
    """What a worker writes when the model cannot load (worker.py `_record_model_error`)."""
    record = {"run_id": run["run_id"], "model": "s3://m/model.keras", "error_type": "ModelLoadError"}
    world.s3.put_object(
        Bucket=world.settings.control_bucket,
        Key=f"runs/{run['run_id']}/errors/model-load.json",
        Body=json.dumps({**record, "error": error}).encode(),
    )


def test_monitor_fails_the_run_at_once_with_the_loaders_reason_when_a_worker_could_not_load_the_model(
    world, running_run, lambda_context
):
    # given a run that just started (far from its stall timeout) and a worker's model-load error record
    write_model_error(world, running_run, "cannot load Keras model broken.keras: not a zip file")

    # when monitor looks, then it fails the run with the reason the worker recorded
    with pytest.raises(ModelLoadError, match=r"cannot be loaded .*broken\.keras: not a zip file"):
        monitor.handler({"run": running_run}, lambda_context)

    # and what it saw is persisted for teardown and the report
    assert world.stored_run(running_run["run_id"])["progress"]["iterations"] == 1


def test_monitor_does_not_stall_a_run_that_made_progress(world, running_run, lambda_context):
    # given the same old progress mark, but a new output since
    running_run["progress"]["last_progress_at"] = _ago(601)
    world.write_output(running_run, 0)

    # when monitor looks
    run = monitor.handler({"run": running_run}, lambda_context)

    # then the progress mark moves and the run goes on
    assert run["progress"]["state"] == "running"
    assert datetime.fromisoformat(run["progress"]["last_progress_at"]) > datetime.now(UTC) - timedelta(
        seconds=60
    )


def test_monitor_raises_run_timeout_past_the_maximum_runtime(world, running_run, lambda_context):
    # given a run that started longer ago than its maximum runtime (3600 s)
    running_run["timeline"]["started_at"] = _ago(3601)

    # when monitor looks, then it fails the run
    with pytest.raises(RunTimeoutError, match="max_runtime_seconds"):
        monitor.handler({"run": running_run}, lambda_context)


def test_monitor_lowers_fleet_capacity_and_service_when_few_shards_remain(world, running_run, lambda_context):
    # given a fleet of 4 capacity units and 4 tasks, and one shard left (queued)
    fleet_id = running_run["resources"]["fleet_id"]
    world.write_output(running_run, 0)
    world.write_output(running_run, 1)

    # when monitor looks
    run = monitor.handler({"run": running_run}, lambda_context)

    # then one task is enough, and the fleet keeps room for one instance of the heaviest type (weight 2)
    (described,) = world.ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"]
    assert described["TargetCapacitySpecification"]["TotalTargetCapacity"] == 2
    assert run["progress"]["fleet_target_capacity"] == 2
    service = world.ecs.describe_services(
        cluster=run["resources"]["cluster_name"], services=[run["resources"]["service_name"]]
    )["services"][0]
    assert service["desiredCount"] == 1


def test_monitor_raises_the_service_as_instances_register_up_to_the_remaining_shards(
    world, running_run, lambda_context
):
    # given a service sized when one instance had registered, and now every fleet instance registered (3: the
    # request is capped at the 3 shards), and one shard done
    cluster, service = running_run["resources"]["cluster_name"], running_run["resources"]["service_name"]
    world.ecs.update_service(cluster=cluster, service=service, desiredCount=1)
    registered = world.ecs.list_container_instances(cluster=cluster, status="ACTIVE")["containerInstanceArns"]
    assert len(registered) == 3
    world.write_output(running_run, 0)

    # when monitor looks while the 2 other shards are still queued
    monitor.handler({"run": running_run}, lambda_context)

    # then the service runs a task per registered instance, but no more than the 2 shards left
    assert (
        world.ecs.describe_services(cluster=cluster, services=[service])["services"][0]["desiredCount"] == 2
    )


def test_monitor_never_raises_fleet_capacity(world, running_run, lambda_context):
    # given plenty of work left (3 shards, 3 units: the spec's 4 capped at the 3 shards)
    fleet_id = running_run["resources"]["fleet_id"]

    # when monitor looks
    monitor.handler({"run": running_run}, lambda_context)

    # then the fleet keeps its capacity
    (described,) = world.ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"]
    assert described["TargetCapacitySpecification"]["TotalTargetCapacity"] == 3


def test_monitor_counts_an_instance_that_vanished_as_a_spot_interruption(world, running_run, lambda_context):
    # given monitor has seen the fleet's instances once
    run = monitor.handler({"run": running_run}, lambda_context)
    known = world.known_instances(run["run_id"])
    assert known == world.fleet_instances(running_run)
    assert run["progress"]["known_instances_count"] == len(known)

    # when spot capacity is reclaimed for one of them and monitor looks again
    world.ec2.terminate_instances(InstanceIds=[known[0]])
    run = monitor.handler({"run": run}, lambda_context)

    # then that is one interruption, and the instance is no longer tracked
    assert run["progress"]["interruptions"] == 1
    assert known[0] not in world.known_instances(run["run_id"])


def test_monitor_does_not_count_instances_removed_by_lowering_capacity(world, running_run, lambda_context):
    # given monitor has seen the fleet, then lowered it as only one shard remains
    run = monitor.handler({"run": running_run}, lambda_context)
    world.write_output(running_run, 0)
    world.write_output(running_run, 1)
    run = monitor.handler({"run": run}, lambda_context)
    assert run["progress"]["fleet_target_capacity"] == 2

    # when monitor looks again after the fleet removed instances
    run = monitor.handler({"run": run}, lambda_context)

    # then no interruption is counted
    assert run["progress"]["interruptions"] == 0


def test_monitor_hands_over_after_the_configured_iterations(world, start_run, lambda_context):
    # given a run that hands over after 2 iterations
    run = start_run(handover_after_iterations=2)

    # when monitor runs twice
    run = monitor.handler({"run": run}, lambda_context)
    assert run["progress"]["state"] == "running"
    run = monitor.handler({"run": run}, lambda_context)

    # then the second iteration asks for continue-as-new
    assert run["progress"]["state"] == "handover"
    assert run["progress"]["iterations_this_execution"] == 2


def test_monitor_estimates_predictions_per_second_from_output_metadata(world, running_run, lambda_context):
    # given a first look, then two outputs of ROWS_PER_SHARD rows
    run = monitor.handler({"run": running_run}, lambda_context)
    world.write_output(running_run, 0)
    world.write_output(running_run, 1)

    # when monitor looks again
    run = monitor.handler({"run": run}, lambda_context)

    # then the peak throughput is shards/s x the sampled rows per shard
    progress = run["progress"]
    assert progress["rows_sampled_outputs"] >= 2
    assert progress["rows_sampled_total"] == ROWS_PER_SHARD * progress["rows_sampled_outputs"]
    assert progress["peak_shards_per_second"] > 0
    assert progress["peak_predictions_per_second"] == pytest.approx(
        progress["peak_shards_per_second"] * ROWS_PER_SHARD
    )


def test_monitor_result_stays_small(world, running_run, lambda_context):
    run = monitor.handler({"run": running_run}, lambda_context)
    assert len(json.dumps(run)) < 16_000


def test_monitor_fails_the_run_when_its_fleet_was_cancelled_with_work_left(
    world, running_run, lambda_context
):
    # given someone deleted the run's fleet (without terminating its instances) while shards remain
    fleet_id = running_run["resources"]["fleet_id"]
    world.ec2.delete_fleets(FleetIds=[fleet_id], TerminateInstances=False)

    # when monitor looks, then the run fails at once instead of waiting for the stall timeout
    with pytest.raises(FleetRequestError, match="deleted_running"):
        monitor.handler({"run": running_run}, lambda_context)


def test_monitor_finishes_a_run_whose_fleet_is_gone_once_every_output_exists(
    world, running_run, lambda_context
):
    # given every output written, then the fleet cancelled (its ValidUntil passed, say)
    world.drain_queue(running_run)
    for index in range(3):
        world.write_output(running_run, index)
    fleet_id = running_run["resources"]["fleet_id"]
    world.ec2.delete_fleets(FleetIds=[fleet_id], TerminateInstances=True)

    # when monitor looks, then the run is simply done
    assert monitor.handler({"run": running_run}, lambda_context)["progress"]["state"] == "done"


def test_each_poll_adds_a_sample_to_the_run_series_and_projects_the_eta_and_total_cost(
    world, running_run, lambda_context
):
    from spotfill_control.monitoring.series import load_series, series_key

    # given a run whose workers finish a shard between two polls
    world.write_output(running_run, 0)
    first = monitor.handler({"run": running_run}, lambda_context)
    world.write_output(running_run, 1)

    # when monitor polls again
    second = monitor.handler({"run": first}, lambda_context)

    # then the series in S3 has a sample per poll, with the latest counters, capacity and cost
    series = load_series(world.s3, world.settings.control_bucket, running_run["run_id"])
    assert [s.shards_done for s in series.samples] == [1, 2]
    assert [s.predictions for s in series.samples] == [ROWS_PER_SHARD, 2 * ROWS_PER_SHARD]
    last = series.samples[-1]
    assert last.shards_total == 3 and last.cost_usd == second["budget"]["accrued_usd"] > 0
    # (the instances alive when the poll began: it lowers the fleet for the last shard afterwards)
    assert sum(last.capacity.values()) == first["progress"]["known_instances_count"] > 0
    assert all(pool.endswith(("/spot", "/on-demand")) for pool in last.capacity)
    assert series_key(running_run["run_id"]) == f"runs/{running_run['run_id']}/series.json"
    # and the run carries the projection: the rate since the first poll, one shard left at that rate
    projection = second["projection"]
    assert projection["predictions_per_second"] == pytest.approx(
        ROWS_PER_SHARD / (last.t - series.samples[0].t)
    )
    assert projection["eta_seconds"] == pytest.approx(ROWS_PER_SHARD / projection["predictions_per_second"])
    assert projection["projected_total_usd"] > second["budget"]["accrued_usd"]
    assert set(projection["by_instance_type"]) <= {"c5.xlarge", "c5.2xlarge"}
    assert projection["by_instance_type"]
    assert first["projection"]["eta_seconds"] is None  # one sample: no rate yet


def test_monitor_waits_while_ec2_does_not_know_the_fleet_requested_moments_ago(
    world, running_run, lambda_context, fleet_lag
):
    from spotfill.localcloud.patches.fleet_visibility import FLEET_VISIBILITY

    # given EC2's eventually consistent API answering NotFound about the fleet requested seconds ago
    FLEET_VISIBILITY.created(running_run["resources"]["fleet_id"])

    # when monitor looks, then the run goes on (the fleet is not "gone") and the poll knows nothing of it
    run = monitor.handler({"run": running_run}, lambda_context)
    assert run["progress"]["state"] == "running"


def test_monitor_fails_the_run_when_ec2_does_not_know_its_fleet_after_the_grace(
    world, running_run, lambda_context, fleet_lag
):
    from spotfill_control.fleet.fleet import CONSISTENCY_GRACE

    from spotfill.localcloud.patches.fleet_visibility import FLEET_VISIBILITY

    # given a fleet requested longer ago than EC2 may take to know it, and EC2 answering NotFound
    FLEET_VISIBILITY.created(running_run["resources"]["fleet_id"])
    old = json.loads(json.dumps(running_run))
    requested = datetime.now(UTC) - CONSISTENCY_GRACE
    old["timeline"]["fleet_requested_at"] = requested.isoformat()

    # when monitor looks, then the fleet is gone and the run fails
    with pytest.raises(FleetRequestError, match="is gone while 3 shard"):
        monitor.handler({"run": old}, lambda_context)
