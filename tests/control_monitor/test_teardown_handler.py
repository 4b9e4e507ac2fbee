"""Teardown handler against moto: nothing of the run is left, from any starting point, any number of times."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from spotfill_control.errors import SpotfillError
from spotfill_control.handlers import monitor, teardown
from spotfill_control.monitoring.dead_letters import read_dead_letters

from .conftest import CONTROL_BUCKET

pytestmark = pytest.mark.aws


def assert_nothing_left(world, run: dict) -> None:
    """No fleet active, no instance running, and no queue, service, cluster, task definition or launch
    template version of the run."""
    run_id = run["run_id"]
    live = [
        f
        for f in world.ec2.describe_fleets()["Fleets"]
        if f["FleetState"] in ("submitted", "active", "modifying")
        and {t["Key"]: t["Value"] for t in f.get("Tags", [])}.get("spotfill:run-id") == run_id
    ]
    assert live == []
    running = world.ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    )["Reservations"]
    assert running == []
    queues = world.sqs.list_queues(QueueNamePrefix=f"spotfill-{run_id}").get("QueueUrls", [])
    assert queues == []
    clusters = world.ecs.describe_clusters(clusters=[f"spotfill-{run_id}"])["clusters"]
    assert all(c["status"] == "INACTIVE" for c in clusters)
    services = world.ecs.describe_services(cluster=f"spotfill-{run_id}", services=[f"spotfill-{run_id}"])
    assert all(s["status"] != "ACTIVE" for s in services["services"])
    families = world.ecs.list_task_definitions(familyPrefix=f"spotfill-{run_id}", status="ACTIVE")
    assert families["taskDefinitionArns"] == []
    versions = world.ec2.describe_launch_template_versions(LaunchTemplateId=world.settings.launch_template_id)
    assert [v["VersionNumber"] for v in versions["LaunchTemplateVersions"]] == [1]


def test_teardown_removes_everything_the_run_created(world, running_run, lambda_context):
    # given a run in full flight: fleet, instances, cluster, service, queues, launch template version
    instances = world.fleet_instances(running_run)
    assert instances

    # when it is torn down
    run = teardown.handler({"run": running_run}, lambda_context)

    # then nothing of it is left, its instances are terminating, and teardown is timed
    assert_nothing_left(world, running_run)
    assert set(world.instance_states(instances).values()) <= {"shutting-down", "terminated"}
    assert run["timeline"]["teardown_started_at"] is not None
    assert run["timeline"]["teardown_ended_at"] is not None
    stored = world.stored_run(run["run_id"])
    assert stored["timeline"]["teardown_ended_at"] == run["timeline"]["teardown_ended_at"]


def test_teardown_saves_the_dead_letters_before_deleting_the_queue(world, running_run, lambda_context):
    # given a shard in the dead-letter queue
    failed = world.dead_letter(running_run, 1)

    # when the run is torn down
    teardown.handler({"run": running_run, "error": {"Error": "StallError", "Cause": "{}"}}, lambda_context)

    # then the dead-lettered shard is kept in S3 for the report
    assert read_dead_letters(running_run["run_id"], world.s3, CONTROL_BUCKET) == [failed]


def test_teardown_twice_is_harmless(world, running_run, lambda_context):
    # given a run torn down once, with a dead letter saved
    failed = world.dead_letter(running_run, 0)
    first = teardown.handler({"run": running_run}, lambda_context)

    # when teardown runs again (the cleanup rule after the ASL's own teardown)
    second = teardown.handler({"run": running_run}, lambda_context)

    # then it succeeds, keeps the first timestamps, and the saved dead letters survive
    assert_nothing_left(world, running_run)
    assert second["timeline"]["teardown_started_at"] == first["timeline"]["teardown_started_at"]
    assert read_dead_letters(running_run["run_id"], world.s3, CONTROL_BUCKET) == [failed]


def test_teardown_of_a_run_that_was_only_prepared(world, start_run, lambda_context):
    # given a run that failed before its fleet was requested
    run = start_run(until="prepared")

    # when it is torn down
    teardown.handler({"run": run, "error": {"Error": "FleetRequestError", "Cause": "x"}}, lambda_context)

    # then its queues, cluster, task definition and launch template version are gone
    assert_nothing_left(world, run)


def test_teardown_finds_resources_the_failed_state_did_not_hand_over(world, running_run, lambda_context):
    # given the state a Catch hands over: the failed state's input, which names none of the resources
    # (every handler persisted them as it created them)
    bare = json.loads(json.dumps(running_run))
    bare["resources"] = {}

    # when it is torn down
    teardown.handler({"run": bare, "error": {"Error": "States.TaskFailed"}}, lambda_context)

    # then everything the persisted run names is gone all the same
    assert_nothing_left(world, running_run)


def test_teardown_finds_resources_by_name_when_no_state_names_them(world, running_run, lambda_context):
    # given a run state with no resources and no persisted state (a Lambda that died right after creating)
    world.s3.delete_object(Bucket=CONTROL_BUCKET, Key=f"runs/{running_run['run_id']}/state.json")
    bare = json.loads(json.dumps(running_run))
    bare["resources"] = {}
    bare["progress"]["known_instances"] = []

    # when it is torn down
    teardown.handler({"run": bare}, lambda_context)

    # then the run-scoped fleet (by tag), cluster, service, task definition and queues (by name) are gone;
    # the launch template version is the one thing only the run state can name
    fleets = world.ec2.describe_fleets()["Fleets"]
    assert fleets and all(f["FleetState"] not in ("active", "submitted", "modifying") for f in fleets)
    assert world.sqs.list_queues(QueueNamePrefix=f"spotfill-{running_run['run_id']}").get("QueueUrls") is None
    running = world.ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["running"]}])
    assert running["Reservations"] == []


def test_teardown_without_a_run_has_nothing_to_do(world, lambda_context):
    # given an execution whose input was invalid: no run exists
    event = {"error": {"Error": "InvalidSpecError", "Cause": "fleet.instance_types: unknown"}}

    # when teardown runs, then it returns no run and creates nothing
    assert teardown.handler(event, lambda_context) is None


def test_teardown_still_cancels_the_fleet_when_another_step_fails(world, running_run, lambda_context):
    # given a run whose launch template version is the template's default (cannot be deleted: a real error)
    broken = json.loads(json.dumps(running_run))
    broken["resources"]["launch_template_version"] = 1
    world.s3.delete_object(Bucket=CONTROL_BUCKET, Key=f"runs/{running_run['run_id']}/state.json")

    # when it is torn down, then the error is raised, not swallowed
    with pytest.raises(SpotfillError, match="launch template version"):
        teardown.handler({"run": broken}, lambda_context)

    # and every other step still ran: no fleet, instance, queue or service is left
    fleets = world.ec2.describe_fleets()["Fleets"]
    assert fleets and all(f["FleetState"] not in ("active", "submitted", "modifying") for f in fleets)
    assert world.sqs.list_queues(QueueNamePrefix=f"spotfill-{running_run['run_id']}").get("QueueUrls") is None
    # and the run persisted says the fleet was seen deleted, for the retried teardown (EC2 forgets it)
    assert world.stored_run(running_run["run_id"])["timeline"]["fleet_deleted_at"] is not None


def test_teardown_after_monitor_finished_the_run(world, running_run, lambda_context):
    # given a run monitor declared done
    world.drain_queue(running_run)
    for index in range(3):
        world.write_output(running_run, index)
    run = monitor.handler({"run": running_run}, lambda_context)
    assert run["progress"]["state"] == "done"

    # when it is torn down
    run = teardown.handler({"run": run}, lambda_context)

    # then nothing is left
    assert_nothing_left(world, run)


def test_teardown_terminates_instances_a_cancelled_fleet_left_running(world, running_run, lambda_context):
    # given a fleet someone cancelled without terminating its instances
    instances = world.fleet_instances(running_run)
    world.ec2.delete_fleets(FleetIds=[running_run["resources"]["fleet_id"]], TerminateInstances=False)
    # pending or running: in a process that ran a local cloud before (make test's xdist workers), the local
    # cloud's fleet model, installed for the whole process, starts fleet instances pending
    assert instances and set(world.instance_states(instances).values()) <= {"pending", "running"}

    # when the run is torn down
    teardown.handler({"run": running_run}, lambda_context)

    # then its instances are terminated all the same
    assert set(world.instance_states(instances).values()) <= {"shutting-down", "terminated"}


def test_a_teardown_that_stopped_between_storing_and_deleting_dead_letters_goes_on_when_retried(
    world, running_run, monkeypatch
):
    # given a first attempt that stored a batch of dead letters and died before deleting its messages
    from spotfill_control.deadline import Deadline
    from spotfill_control.errors import TransientAwsError
    from spotfill_control.finishing.teardown import save_dead_letters
    from spotfill_control.monitoring import dead_letters

    failed = [world.dead_letter(running_run, i) for i in range(3)]
    url = running_run["resources"]["dead_letter_queue_url"]
    run_id = running_run["run_id"]

    held: list[dict] = []

    def died(queue_url, messages, sqs):
        held.extend(messages)
        raise RuntimeError("the Lambda died here")

    with monkeypatch.context() as patched:
        patched.setattr(dead_letters, "_delete", died)
        with pytest.raises(RuntimeError):
            save_dead_letters(run_id, url, world.sqs, world.s3, CONTROL_BUCKET, Deadline(60))
    assert read_dead_letters(run_id, world.s3, CONTROL_BUCKET) == sorted(failed)

    # when a retry finds the messages still in flight, then it stops at its deadline and asks to be retried
    with pytest.raises(TransientAwsError, match="still holds messages"):
        save_dead_letters(run_id, url, world.sqs, world.s3, CONTROL_BUCKET, Deadline(0.5))

    # and once their visibility timed out, the next retry stores them again and empties the queue
    for message in held:  # what SQS does when the visibility timeout ends
        world.sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    assert save_dead_letters(run_id, url, world.sqs, world.s3, CONTROL_BUCKET, Deadline(60)) == 3
    assert read_dead_letters(run_id, world.s3, CONTROL_BUCKET) == sorted(failed)  # stored twice, read once
    assert world.queue_shards(url) == []


def test_teardown_keeps_every_dead_letter_when_there_are_more_than_a_receive_batch(
    world, running_run, lambda_context, monkeypatch
):
    # given 234 dead letters (a drain batch of 40 here: 6 batches, each of 4 receives; moto's receive is
    # quadratic in the queue's length, so the 1,000s run against an in-memory queue in test_dead_letters.py)
    from spotfill_control.monitoring import dead_letters

    monkeypatch.setattr(dead_letters, "DRAIN_BATCH", 40)
    url = running_run["resources"]["dead_letter_queue_url"]
    sent = _send_dead_letters(world, running_run, 234)

    # when the run is torn down
    in_flight = _watch_in_flight(world, monkeypatch)
    teardown.handler({"run": running_run, "error": {"Error": "StallError", "Cause": "{}"}}, lambda_context)

    # then every one of them is kept in S3, the queue was never holding more than one batch, and it is gone
    assert read_dead_letters(running_run["run_id"], world.s3, CONTROL_BUCKET) == sorted(sent)
    assert 0 < max(in_flight) <= 40 + 9
    assert_nothing_left(world, running_run)
    assert url


def _send_dead_letters(world, run: dict, count: int) -> list[str]:
    url = run["resources"]["dead_letter_queue_url"]
    shards = [f"s3://spotfill-data-monitor/inputs/digits/poison-{i:05d}.npy" for i in range(count)]
    for start in range(0, count, 10):
        entries = [
            {"Id": str(i), "MessageBody": json.dumps({"run_id": run["run_id"], "shard": shard})}
            for i, shard in enumerate(shards[start : start + 10])
        ]
        world.sqs.send_message_batch(QueueUrl=url, Entries=entries)
    return shards


def _watch_in_flight(world, monkeypatch) -> list[int]:
    """Messages received and not yet deleted, after each receive (from what the calls themselves say)."""
    from spotfill_control.monitoring import dead_letters

    in_flight = [0]
    held: set[str] = set()
    receive, delete = dead_letters._receive_batch, dead_letters._delete

    def receiving(*args, **kwargs):
        messages = receive(*args, **kwargs)
        held.update(m["ReceiptHandle"] for m in messages)
        in_flight.append(len(held))
        return messages

    def deleting(url, messages, sqs):
        delete(url, messages, sqs)
        held.difference_update(m["ReceiptHandle"] for m in messages)

    monkeypatch.setattr(dead_letters, "_receive_batch", receiving)
    monkeypatch.setattr(dead_letters, "_delete", deleting)
    return in_flight


def test_a_throttled_step_makes_teardown_retry_after_the_other_steps(
    world, running_run, lambda_context, monkeypatch
):
    # given SQS throttles the queue deletion
    from botocore.exceptions import ClientError
    from spotfill_control.errors import TransientAwsError
    from spotfill_control.finishing import teardown as domain

    def throttled(*args, **kwargs):
        raise ClientError({"Error": {"Code": "RequestThrottled", "Message": "slow down"}}, "DeleteQueue")

    monkeypatch.setattr(domain, "delete_queue", throttled)

    # when the run is torn down, then the ASL is told to retry
    with pytest.raises(TransientAwsError, match="slow down"):
        teardown.handler({"run": running_run}, lambda_context)

    # and the fleet is gone all the same
    fleets = world.ec2.describe_fleets()["Fleets"]
    assert fleets and all(f["FleetState"] not in ("active", "submitted", "modifying") for f in fleets)


def _requested_run(world, lambda_context, api: str) -> dict:
    from spotfill_control.handlers import prepare_run, request_fleet, validate

    from .conftest import EXECUTION_ARN, STATE_MACHINE_ARN, _now_iso, sample_spec

    spec = sample_spec()
    spec["fleet"]["api"] = api
    event = {
        "input": spec,
        "execution_arn": EXECUTION_ARN,
        "state_machine_arn": STATE_MACHINE_ARN,
        "started_at": _now_iso(),
    }
    run = prepare_run.handler({"run": validate.handler(event, lambda_context)["run"]}, lambda_context)
    return request_fleet.handler({"run": run}, lambda_context)


def _fleet_state(world, api: str, fleet_id: str) -> str | None:
    if api == "ec2-fleet":
        (found,) = world.ec2.describe_fleets(FleetIds=[fleet_id])["Fleets"]
        return found["FleetState"]
    configs = world.ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])[
        "SpotFleetRequestConfigs"
    ]
    return configs[0]["SpotFleetRequestState"] if configs else None  # moto forgets a cancelled request


@pytest.mark.parametrize("api", ["ec2-fleet", "spot-fleet"])
def test_teardown_seconds_after_the_request_deletes_the_fleet_ec2_does_not_know_yet(
    world, lambda_context, fleet_lag, api
):
    from spotfill_control.aws import Clients
    from spotfill_control.finishing import teardown as teardown_logic
    from spotfill_control.run import RunState

    # given a fleet just requested, which EC2's eventually consistent API does not know for 60 s (describe
    # calls answer NotFound, deletes "does not exist" and delete nothing) while it launches
    run = RunState.model_validate(_requested_run(world, lambda_context, api))
    fleet_id = run.resources.fleet_id
    instances = teardown_logic.run_instance_ids(run.run_id, world.ec2)  # launched, found by their run tag
    assert instances
    clock = {"now": run.timeline.fleet_requested_at}

    def sleep(seconds: float) -> None:
        fleet_lag.advance(seconds)
        clock["now"] += timedelta(seconds=seconds)

    # when it is torn down seconds after the request
    clients = Clients(s3=world.s3, sqs=world.sqs, ec2=world.ec2, ecs=world.ecs)
    torn, outcome = teardown_logic.teardown(
        run,
        clients,
        control_bucket=CONTROL_BUCKET,
        launch_template_id=world.settings.launch_template_id,
        now=lambda: clock["now"],
        sleep=sleep,
    )

    # then teardown kept deleting it by id until EC2 knew it, and saw it deleted: it replaces nothing
    assert _fleet_state(world, api, fleet_id) in (None, "deleted", "deleted_terminating")
    assert set(world.instance_states(instances).values()) <= {"shutting-down", "terminated"}
    assert outcome.fleets_deleted == [fleet_id] and outcome.unconfirmed == []
    assert torn.timeline.fleet_deleted_at == run.timeline.fleet_requested_at + timedelta(seconds=60)


def test_a_fleet_ec2_never_showed_is_reported_unconfirmed(world, lambda_context, fleet_lag):
    from spotfill_control.aws import Clients
    from spotfill_control.finishing import teardown as teardown_logic
    from spotfill_control.fleet.fleet import CONSISTENCY_GRACE
    from spotfill_control.run import RunState

    # given a fleet EC2 still does not know when the grace after its request is over
    run = RunState.model_validate(_requested_run(world, lambda_context, "ec2-fleet"))
    after = run.timeline.fleet_requested_at + CONSISTENCY_GRACE
    clients = Clients(s3=world.s3, sqs=world.sqs, ec2=world.ec2, ecs=world.ecs)

    # when teardown runs then
    torn, outcome = teardown_logic.teardown(
        run,
        clients,
        control_bucket=CONTROL_BUCKET,
        launch_template_id=world.settings.launch_template_id,
        now=lambda: after,
        sleep=lambda _: pytest.fail("no wait once the grace is over"),
    )

    # then it says the deletion is not confirmed, in its outcome and in the run it returns
    fleet_id = run.resources.fleet_id
    note = (
        f"ec2-fleet {fleet_id}: EC2 answered that it does not exist and never showed it deleted, so its "
        "deletion is not confirmed"
    )
    assert outcome.unconfirmed == [note]
    assert torn.teardown_unconfirmed == [note]
    assert torn.timeline.fleet_deleted_at is None


def test_teardown_short_of_time_while_ec2_does_not_know_the_fleet_retries(world, lambda_context, fleet_lag):
    from spotfill_control.aws import Clients
    from spotfill_control.errors import TransientAwsError
    from spotfill_control.finishing import teardown as teardown_logic
    from spotfill_control.run import RunState

    run = RunState.model_validate(_requested_run(world, lambda_context, "ec2-fleet"))
    clients = Clients(s3=world.s3, sqs=world.sqs, ec2=world.ec2, ecs=world.ecs)
    with pytest.raises(TransientAwsError, match="not known to EC2 yet 10 s after its request"):
        teardown_logic.teardown(
            run,
            clients,
            control_bucket=CONTROL_BUCKET,
            launch_template_id=world.settings.launch_template_id,
            now=lambda: run.timeline.fleet_requested_at + timedelta(seconds=10),
            sleep=lambda _: pytest.fail("no wait with the invocation's time short"),
            time_left=lambda: teardown_logic.FLEET_WAIT_RESERVE_SECONDS - 1,
        )


def test_a_second_teardown_within_the_grace_does_not_wait_for_a_fleet_ec2_forgot(world, lambda_context):
    from spotfill_control.aws import Clients
    from spotfill_control.finishing import teardown as teardown_logic
    from spotfill_control.run import RunState

    # given a Spot Fleet request torn down once, seconds after it was requested (moto forgets a cancelled
    # request at once; EC2 after a while)
    run = RunState.model_validate(_requested_run(world, lambda_context, "spot-fleet"))
    clients = Clients(s3=world.s3, sqs=world.sqs, ec2=world.ec2, ecs=world.ecs)
    soon = run.timeline.fleet_requested_at + timedelta(seconds=20)
    options = {
        "control_bucket": CONTROL_BUCKET,
        "launch_template_id": world.settings.launch_template_id,
        "now": lambda: soon,
        "sleep": lambda _: pytest.fail("no wait for a fleet seen deleted"),
    }
    first, outcome = teardown_logic.teardown(run, clients, **options)
    assert outcome.fleets_deleted == [run.resources.fleet_id]

    # when teardown runs again within the grace (cleanup_on_exit after the ASL's Teardown)
    second, outcome = teardown_logic.teardown(first, clients, **options)

    # then the fleet EC2 no longer knows is done: no wait, nothing unconfirmed
    assert outcome.unconfirmed == [] and second.teardown_unconfirmed == []
    assert second.timeline.fleet_deleted_at == soon
