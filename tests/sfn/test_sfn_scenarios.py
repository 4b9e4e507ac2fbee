"""The real backfill ASL, executed by moto's Step Functions interpreter on the stack deployed from
template.yaml, with every Lambda running the real handler in process and simulated EC2/ECS/workers.

After every path the run must leave nothing behind: no active fleet, no running instance, no run-scoped queue,
service or cluster.
"""

from __future__ import annotations

import itertools
import json

import pytest
from spotfill_control import shards
from spotfill_control.setup import checks, prepare

from spotfill import iam
from spotfill.localcloud import pricing

from .harness import Cloud, Knobs, Outcome, assert_nothing_left, spot_quota

pytestmark = pytest.mark.sfn

TASKS = [
    "Validate",
    "PrepareRun",
    "RequestFleet",
    "CheckRegistration",
    "ScaleService",
    "Monitor",
    "ContinueAsNew",
    "Teardown",
    "Report",
]
HANDLERS = {
    "Validate": "validate",
    "PrepareRun": "prepare_run",
    "RequestFleet": "request_fleet",
    "CheckRegistration": "check_registration",
    "ScaleService": "scale_service",
    "Monitor": "monitor",
    "ContinueAsNew": "continue_as_new",
    "Teardown": "teardown",
    "Report": "report",
}
SLOW_WORKERS = Knobs(tick_seconds=0.6)  # about 1.7 shards/s: a 1 s poll sees outputs arrive
# The core scenarios (happy path, fleet failures, a fault in a fleet state, teardown leaving nothing) run on
# both fleet APIs; the rest run on the default, EC2 Fleet.
FLEET_APIS = ["ec2-fleet", "spot-fleet"]
FLEET_ID_PREFIX = {"ec2-fleet": "fleet-", "spot-fleet": "sfr-"}


class InjectedFault(Exception):
    """A fault no Retry names: the state's Catch must take it."""


def _cause_message(outcome: Outcome) -> str:
    return json.loads(outcome.last.cause)["errorMessage"]


def _assert_failed_through_teardown_and_report(outcome: Outcome, error: str) -> None:
    assert outcome.status == "FAILED", outcome.entered()
    assert outcome.error == error
    entered = outcome.last.entered()
    assert entered[-4:] == ["Teardown", "Report", "DidItFail", "Failed"], entered


@pytest.fixture(scope="module", params=FLEET_APIS)
def happy(cloud: Cloud, request: pytest.FixtureRequest) -> Outcome:
    cloud.lambdas.clear_failures()
    return cloud.run(cloud.spec(f"happy-{request.param}", shards=4, fleet_api=request.param), SLOW_WORKERS)


def test_happy_path_writes_every_output_while_it_monitors_then_tears_down_and_reports(cloud, happy):
    assert happy.status == "SUCCEEDED", (happy.error, happy.last.cause)
    assert happy.entered()[-3:] == ["Report", "DidItFail", "Succeeded"]
    api = happy.report["capacity"]["fleet_api"]
    (fleet_id,) = happy.physics.fleets
    assert fleet_id.startswith(FLEET_ID_PREFIX[api])  # the fleet lives on the API the spec names
    assert len(cloud.outputs(f"happy-{api}")) == 4
    seen = [m["progress"]["outputs_done"] for m in happy.monitor_results()]
    assert any(0 < done < 4 for done in seen), f"no monitor iteration saw partial progress: {seen}"
    assert seen[-1] == 4
    assert happy.report["status"] == "succeeded"
    assert happy.report["run_id"] == happy.run_id
    assert happy.report["predictions"]["total"] == 4 * SLOW_WORKERS.rows_per_shard
    assert_nothing_left(cloud.session, happy.run_id)


def test_happy_path_passes_preflight_against_the_account_in_validate(happy):
    (validate,) = [i for i in happy.invocations if i.name == "validate"]
    calls = {(call.service, call.operation) for call in validate.aws_calls}
    assert {
        ("service-quotas", "GetServiceQuota"),
        ("cloudwatch", "GetMetricStatistics"),
        ("ec2", "DescribeSubnets"),
        ("ec2", "DescribeInstanceTypeOfferings"),
        ("ecr", "DescribeImages"),
    } <= calls


def test_run_over_the_spot_quota_fails_in_validate_and_leaves_nothing(cloud, lambdas):
    # given an account whose Standard spot quota (3 vCPUs) is below the run's 2 x c5.large (4 vCPUs)
    with spot_quota("L-34B43A08", 3):
        # when the run starts
        outcome = cloud.run(cloud.spec("overquota", shards=2))

    # then Validate fails it, naming the quota, before anything is created, and it is reported as invalid
    _assert_failed_through_teardown_and_report(outcome, "InvalidSpecError")
    assert outcome.last.entered()[:2] == ["Validate", "NoRunYet"]
    message = _cause_message(outcome)
    assert message.startswith("fleet.target_capacity: 2 may launch up to 4 vCPUs of Standard spot instances")
    assert "(L-34B43A08) in us-east-1 is 3 vCPUs" in message
    assert not {"prepare_run", "request_fleet"} & set(outcome.invoked())
    report = cloud.report(outcome.last.arn.rsplit(":", 1)[-1])
    assert report is not None and report["status"] == "invalid"
    assert_nothing_left(cloud.session)


def test_monitoring_iteration_costs_three_state_transitions_and_nine_history_events(happy):
    history = happy.last.history
    starts = [
        i
        for i, e in enumerate(history)
        if e["type"] == "WaitStateEntered" and e["stateEnteredEventDetails"]["name"] == "WaitForWork"
    ]
    assert len(starts) >= 2, "the happy path should monitor more than once"
    for begin, end in itertools.pairwise(starts):
        iteration = history[begin:end]
        entered = [
            e["stateEnteredEventDetails"]["name"] for e in iteration if "stateEnteredEventDetails" in e
        ]
        assert entered == ["WaitForWork", "Monitor", "IsWorkDone"]
        assert [e["type"] for e in iteration] == [
            "WaitStateEntered",
            "WaitStateExited",
            "TaskStateEntered",
            "LambdaFunctionScheduled",
            "LambdaFunctionStarted",
            "LambdaFunctionSucceeded",
            "TaskStateExited",
            "ChoiceStateEntered",
            "ChoiceStateExited",
        ]


def test_run_history_is_42_events_outside_the_loops_and_9_per_poll(happy):
    """The arithmetic behind the continue-as-new threshold (docs/state-machine.md)."""
    history = happy.last.history
    registration_polls = happy.last.entered().count("CheckRegistration")
    monitor_polls = happy.last.entered().count("Monitor")
    first_wait = next(i for i, e in enumerate(history) if e["type"] == "WaitStateEntered")
    first_teardown = next(
        i for i, e in enumerate(history) if e.get("stateEnteredEventDetails", {}).get("name") == "Teardown"
    )

    # ExecutionStarted, Validate, IsResumed, PrepareRun, IsPrepared, HasPendingShards, RequestFleet
    assert first_wait == 22
    assert len(history) - first_teardown == 15  # Teardown, Report, DidItFail, Succeeded, ExecutionSucceeded
    assert len(history) == 22 + 5 + 15 + 9 * (registration_polls + monitor_polls)  # 5: ScaleService


def test_a_collision_past_validates_sample_fails_in_prepare_with_its_sentence_and_leaves_nothing(
    cloud, lambdas, monkeypatch
):
    # given b.jsonl and b.ndjson (both write b.jsonl's output) past the keys Validate looks at
    monkeypatch.setattr(checks, "SHARD_SAMPLE_KEYS", 2)
    spec = cloud.spec("collide-late", shards=0)
    bucket = cloud.stack.data_bucket
    for name in ("a.jsonl", "b.jsonl", "b.ndjson"):
        cloud.s3.put_object(Bucket=bucket, Key=f"inputs/collide-late/{name}", Body=b'{"x": 1}\n')
    spec["input"]["format"] = "jsonl"
    # when the run starts
    outcome = cloud.run(spec)
    # then Validate let it through, PrepareRun refused it with Validate's sentence, before any fleet
    _assert_failed_through_teardown_and_report(outcome, "InvalidSpecError")
    assert outcome.last.entered()[:4] == ["Validate", "IsResumed", "PrepareRun", "Teardown"]
    inputs = f"s3://{bucket}/inputs/collide-late"
    assert _cause_message(outcome) == (
        f"input.uri: shards {inputs}/b.jsonl and {inputs}/b.ndjson would both write "
        f"s3://{bucket}/outputs/collide-late/b.jsonl."
    )
    assert "request_fleet" not in outcome.invoked()
    assert outcome.report is not None and outcome.report["status"] == "invalid"
    assert_nothing_left(cloud.session, outcome.run_id)


def test_a_prepare_run_out_of_time_is_invoked_again_and_continues_from_its_checkpoint(
    cloud, lambdas, monkeypatch
):
    # given parts of 2 shards and a PrepareRun whose time budget is spent after its first part
    monkeypatch.setattr(shards, "PART_SIZE", 2)
    monkeypatch.setattr(prepare, "TIME_SHARE", 0.0)
    # when a run of 5 shards (3 parts) starts
    outcome = cloud.run(cloud.spec("prepare-loop", shards=5), SLOW_WORKERS)
    # then IsPrepared sent it back to PrepareRun until every part was queued, and every shard was done once
    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    entered = outcome.last.entered()
    assert entered[: entered.index("RequestFleet")] == [
        "Validate",
        "IsResumed",
        *["PrepareRun", "IsPrepared"] * 3,
        "HasPendingShards",
    ]
    assert [run["phase"] for run in outcome.last.lambda_outputs("PrepareRun")] == ["preparing"] * 2 + [
        "prepared"
    ]
    assert len(cloud.outputs("prepare-loop")) == 5
    assert outcome.report["shards"]["succeeded"] == 5
    # and each further invocation cost the history 7 events
    history = outcome.last.history
    first_wait = next(i for i, e in enumerate(history) if e["type"] == "WaitStateEntered")
    assert first_wait == 22 + 7 * 2
    assert_nothing_left(cloud.session, outcome.run_id)


@pytest.mark.parametrize(
    "execution_input", [[{"name": "an-array"}], "a string", 7], ids=["array", "string", "number"]
)
def test_an_input_that_is_not_a_json_object_fails_in_validate_with_its_sentence(
    cloud, lambdas, execution_input
):
    # when an execution starts with JSON that is not an object
    outcome = cloud.run(execution_input)

    # then Validate names the problem (not the interpreter's TypeError), through teardown and the report
    _assert_failed_through_teardown_and_report(outcome, "InvalidSpecError")
    assert outcome.last.entered()[:2] == ["Validate", "NoRunYet"]
    assert _cause_message(outcome) == f"input: must be a JSON object, got {type(execution_input).__name__}."
    assert not {"prepare_run", "request_fleet"} & set(outcome.invoked())
    assert_nothing_left(cloud.session)


def test_invalid_input_fails_before_anything_is_created_with_an_error_naming_the_field(cloud, lambdas):
    spec = cloud.spec("invalid", shards=1)
    spec["fleet"]["instance_types"] = ["x9.huge"]

    outcome = cloud.run(spec)

    _assert_failed_through_teardown_and_report(outcome, "InvalidSpecError")
    assert outcome.last.entered()[:2] == ["Validate", "NoRunYet"]
    assert "fleet.instance_types" in _cause_message(outcome)
    assert "x9.huge" in _cause_message(outcome)
    assert outcome.invoked()[0] == "validate"
    assert not {"prepare_run", "request_fleet"} & set(outcome.invoked())
    # one report, filed under the execution's name, so cleanup-on-exit recognises it and files no second one
    execution_name = outcome.last.arn.rsplit(":", 1)[-1]
    report = cloud.report(execution_name)
    assert report is not None and report["status"] == "invalid"
    listing = cloud.s3.list_objects_v2(Bucket=cloud.stack.control_bucket, Prefix="reports/invalid-")
    assert listing["KeyCount"] == 0
    assert_nothing_left(cloud.session)


@pytest.mark.parametrize("api", FLEET_APIS)
def test_a_fleet_ec2_does_not_know_at_first_is_waited_for_and_the_run_completes(cloud, lambdas, api):
    # EC2's API is eventually consistent: for 3 s after the request, calls naming the fleet answer NotFound
    # (describe) and "does not exist" (delete); CheckRegistration runs right after RequestFleet
    outcome = cloud.run(cloud.spec(f"unseen-{api}", shards=2, fleet_api=api), Knobs(fleet_visibility_lag=3.0))

    assert outcome.last.status == "SUCCEEDED", outcome.last.cause
    assert outcome.last.entered().count("CheckRegistration") >= 2
    assert outcome.report["status"] == "succeeded"
    assert_nothing_left(cloud.session, outcome.run_id)


@pytest.mark.parametrize("api", FLEET_APIS)
def test_fleet_that_never_registers_times_out_and_is_cancelled(cloud, lambdas, api):
    outcome = cloud.run(
        # long enough for a second poll even when an iteration is slow on a loaded machine
        cloud.spec(
            f"unregistered-{api}", shards=2, limits={"registration_timeout_seconds": 6}, fleet_api=api
        ),
        Knobs(register=False),
    )

    _assert_failed_through_teardown_and_report(outcome, "RegistrationTimeoutError")
    assert outcome.last.entered().count("CheckRegistration") >= 2
    assert outcome.report["status"] == "failed"
    assert_nothing_left(cloud.session, outcome.run_id)


def test_subnet_that_does_not_exist_fails_in_validate(cloud, lambdas):
    spec = cloud.spec("nosubnet", shards=1)
    spec["fleet"]["subnets"] = ["subnet-00000000"]

    outcome = cloud.run(spec)

    _assert_failed_through_teardown_and_report(outcome, "InvalidSpecError")
    assert outcome.last.failures() == [("Validate", "InvalidSpecError")]
    assert _cause_message(outcome).startswith("fleet.subnets: ")
    assert "subnet-00000000" in _cause_message(outcome)
    assert_nothing_left(cloud.session)


def test_fleet_request_rejected_by_ec2_fails_the_run(cloud, lambdas, monkeypatch):
    # given a subnet that passes Validate and is deleted once the run is prepared
    from spotfill_control.handlers import prepare_run

    ec2 = cloud.session.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="172.31.200.0/24", AvailabilityZone="us-east-1a")
    subnet_id = subnet["Subnet"]["SubnetId"]
    prepare = prepare_run.handler

    def prepare_then_delete_the_subnet(event, context):
        result = prepare(event, context)
        with iam.acting_as(None):  # the test deletes it, not the function's role
            ec2.delete_subnet(SubnetId=subnet_id)
        return result

    monkeypatch.setattr(prepare_run, "handler", prepare_then_delete_the_subnet)
    spec = cloud.spec("rejected", shards=2)
    spec["fleet"]["subnets"] = [subnet_id]

    # when the run requests its fleet / then EC2 rejects it and the run fails there
    outcome = cloud.run(spec)

    _assert_failed_through_teardown_and_report(outcome, "FleetRequestError")
    assert outcome.last.failures() == [("RequestFleet", "FleetRequestError")]
    assert subnet_id in _cause_message(outcome)
    assert_nothing_left(cloud.session, outcome.run_id)


@pytest.mark.parametrize("api", FLEET_APIS)
def test_fleet_that_ec2_reports_failed_ends_the_run(cloud, lambdas, api):
    outcome = cloud.run(cloud.spec(f"fleetfails-{api}", shards=2, fleet_api=api), Knobs(fleet_fails=True))

    _assert_failed_through_teardown_and_report(outcome, "FleetRequestError")
    assert outcome.last.failures() == [("CheckRegistration", "FleetRequestError")]
    assert_nothing_left(cloud.session, outcome.run_id)


def test_run_without_progress_for_the_stall_timeout_fails_as_stalled(cloud, lambdas):
    outcome = cloud.run(
        cloud.spec("stall", shards=3, limits={"stall_timeout_seconds": 2}), Knobs(stop_after=1)
    )

    _assert_failed_through_teardown_and_report(outcome, "StallError")
    assert len(cloud.outputs("stall")) == 1
    assert outcome.report["status"] == "failed"
    assert_nothing_left(cloud.session, outcome.run_id)


def test_model_the_workers_cannot_load_fails_the_run_at_once_with_the_loaders_reason(cloud, lambdas):
    # given workers that cannot load the model, and a stall timeout far beyond the test
    reason = "cannot load Keras model digits.keras: File is not a zip file"
    spec = cloud.spec("badmodel", shards=2, limits={"stall_timeout_seconds": 3600})

    # when the run starts
    outcome = cloud.run(spec, Knobs(model_cannot_load=reason))

    # then the monitor fails it with ModelLoadError, torn down and reported with the reason
    _assert_failed_through_teardown_and_report(outcome, "ModelLoadError")
    assert reason in _cause_message(outcome)
    assert outcome.report["status"] == "failed"
    assert reason in outcome.report["reason"]
    assert cloud.outputs("badmodel") == []
    assert_nothing_left(cloud.session, outcome.run_id)


def test_shard_that_always_fails_ends_in_the_dead_letter_queue_and_the_run_completes(cloud, lambdas):
    outcome = cloud.run(cloud.spec("poison", shards=3), Knobs(poison=frozenset({"part-00001.npy"})))

    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    assert len(cloud.outputs("poison")) == 2
    assert outcome.monitor_results()[-1]["progress"]["dead_letters"] == 1
    assert outcome.report["status"] == "completed_with_failures"
    assert [key.rsplit("/", 1)[-1] for key in outcome.report["shards"]["failed_keys"]] == ["part-00001.npy"]
    assert outcome.physics.poisoned_receives >= 3
    assert_nothing_left(cloud.session, outcome.run_id)


def test_lost_shard_is_queued_again_and_the_run_succeeds(cloud, lambdas):
    outcome = cloud.run(cloud.spec("lost", shards=3), Knobs(lose=frozenset({"part-00002.npy"})))

    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    assert [uri.rsplit("/", 1)[-1] for uri in outcome.physics.lost] == ["part-00002.npy"]
    assert len(cloud.outputs("lost")) == 3
    assert outcome.monitor_results()[-1]["progress"]["requeued"] >= 1
    assert outcome.report["shards"]["requeued"] >= 1
    assert_nothing_left(cloud.session, outcome.run_id)


def test_transient_error_is_retried_with_backoff_and_the_run_succeeds(cloud, lambdas):
    from spotfill_control.errors import TransientAwsError

    lambdas.inject_failure("monitor", TransientAwsError("throttled"), times=1)

    outcome = cloud.run(cloud.spec("transient", shards=2))

    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    assert outcome.last.failures() == [("Monitor", "TransientAwsError")]
    assert_nothing_left(cloud.session, outcome.run_id)


@pytest.mark.parametrize("handler", ["request_fleet", "prepare_run"])
def test_transient_failure_after_the_work_is_retried_without_a_second_fleet_or_duplicate_shards(
    cloud, lambdas, handler
):
    from spotfill_control.errors import TransientAwsError

    lambdas.inject_failure(handler, TransientAwsError("timed out after the work"), when="after", times=1)

    outcome = cloud.run(cloud.spec(f"retried-{handler.replace('_', '-')}", shards=3))

    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    assert [i.name for i in outcome.invocations].count(handler) == 2
    assert list(outcome.physics.fleets.values()) == [outcome.run_id]  # one fleet, seen while it lived
    assert len(outcome.physics.written) == len(set(outcome.physics.written)) == 3  # each shard queued once
    assert_nothing_left(cloud.session, outcome.run_id)


def test_retried_continue_as_new_starts_exactly_one_new_execution(cloud, lambdas):
    from spotfill_control.errors import TransientAwsError

    lambdas.inject_failure(
        "continue_as_new", TransientAwsError("timed out after starting"), when="after", times=1
    )
    before = {e["executionArn"] for e in _executions(cloud)}

    outcome = cloud.run(
        cloud.spec("handover-retried", shards=4, limits={"handover_after_iterations": 1}), SLOW_WORKERS
    )

    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    assert outcome.executions[0].failures() == [("ContinueAsNew", "TransientAwsError")]
    started = [e for e in _executions(cloud) if e["executionArn"] not in before]
    assert sorted(e["executionArn"] for e in started) == sorted(e.arn for e in outcome.executions)
    assert_nothing_left(cloud.session, outcome.run_id)


def _executions(cloud: Cloud) -> list[dict]:
    pages = cloud.sfn.get_paginator("list_executions").paginate(stateMachineArn=cloud.stack.state_machine_arn)
    return [execution for page in pages for execution in page["executions"]]


def test_aborted_execution_is_torn_down_and_reported_by_the_status_change_rule(cloud, lambdas):
    outcome = cloud.run(cloud.spec("aborted", shards=3), Knobs(stop_after=0), abort_in="Monitor")

    assert outcome.status == "ABORTED"
    assert "Teardown" not in outcome.entered()
    assert outcome.invoked()[-1] == "cleanup_on_exit"
    assert outcome.report is not None and outcome.report["status"] != "succeeded"
    assert_nothing_left(cloud.session, outcome.run_id)


def test_monitor_hands_the_run_over_to_a_fresh_execution_which_finishes_it(cloud, lambdas):
    spec = cloud.spec("handover", shards=6, limits={"handover_after_iterations": 2})

    outcome = cloud.run(spec, SLOW_WORKERS)

    assert len(outcome.executions) >= 2
    first, last = outcome.executions[0], outcome.last
    assert first.status == "SUCCEEDED"
    assert first.entered()[-2:] == ["ContinueAsNew", "HandedOver"]
    assert first.entered().count("Monitor") == 2
    assert "PrepareRun" not in last.entered() and "RequestFleet" not in last.entered()
    assert last.entered()[:3] == ["Validate", "IsResumed", "WaitForWork"]
    assert last.status == "SUCCEEDED", (last.error, last.cause)
    assert {r["run"]["run_id"] for e in outcome.executions for r in e.lambda_outputs("Validate")} == {
        outcome.run_id
    }
    assert len(cloud.outputs("handover")) == 6
    assert outcome.report["executions"] == len(outcome.executions)
    assert_nothing_left(cloud.session, outcome.run_id)


@pytest.mark.parametrize(
    ("state", "api"),
    [(state, "ec2-fleet") for state in TASKS]
    + [(state, "spot-fleet") for state in ("RequestFleet", "Monitor", "Teardown")],
)
def test_failure_in_each_task_state_is_caught_torn_down_and_reported(cloud, lambdas, state, api):
    handler = HANDLERS[state]
    # The handler does its work and then fails (a crash after its side effects), except ContinueAsNew, which
    # fails before starting the next execution (a run reaches it only when it hands over), and Report, which
    # fails before writing: the report then comes from cleanup_on_exit, run by the rule on FAILED.
    when = "before" if state in ("ContinueAsNew", "Report") else "after"
    lambdas.inject_failure(handler, InjectedFault(f"injected into {state}"), when=when)
    limits = {"handover_after_iterations": 1} if state == "ContinueAsNew" else {}

    outcome = cloud.run(
        cloud.spec(f"fault-{handler.replace('_', '-')}-{api}", shards=3, limits=limits, fleet_api=api),
        SLOW_WORKERS,
    )

    assert outcome.status == "FAILED", outcome.entered()
    assert outcome.error == "InjectedFault"
    assert (state, "InjectedFault") in outcome.last.failures()
    entered = outcome.last.entered()
    if state == "Teardown":
        assert entered[-3:] == ["Report", "DidItFail", "TeardownFailed"]
    elif state == "Report":
        assert entered[-3:] == ["Report", "DidItFail", "ReportFailed"]
    else:
        _assert_failed_through_teardown_and_report(outcome, "InjectedFault")
    if state != "Validate":
        assert outcome.report is not None and outcome.report["status"] == "failed"
    assert_nothing_left(cloud.session, outcome.run_id)


# ------------------------------------------------------------------------------ capacity as EC2 delivers it


def _rises_then_falls(counts: list[int]) -> bool:
    peak = counts.index(max(counts))
    return counts[: peak + 1] == sorted(counts[: peak + 1]) and counts[peak:] == sorted(
        counts[peak:], reverse=True
    )


def test_service_grows_a_task_for_every_instance_as_instances_register_one_by_one(cloud, lambdas):
    # given a 4-instance fleet whose instances register two seconds apart, work for all of them, and a Spot
    # quota its 8 vCPUs fit
    spec = cloud.spec("staggered", shards=24, fleet={"instance_types": ["c5.large"], "target_capacity": 4})

    with spot_quota("L-34B43A08", 8):
        outcome = cloud.run(spec, Knobs(tick_seconds=0.6, register_interval_seconds=2.0))

    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    assert len(cloud.outputs("staggered")) == 24
    registered = len(outcome.physics.registered)
    assert registered == 4
    counts = outcome.physics.desired_counts
    # then the service started on what had registered, grew to a task per registered instance, and only fell
    # once the shards ran out (raising and lowering never fight)
    assert counts[0] < registered, counts
    assert max(counts) == registered, counts
    assert _rises_then_falls(counts), counts
    assert_nothing_left(cloud.session, outcome.run_id)


def test_fleet_asks_no_more_capacity_than_the_shards_use_and_the_report_says_it_was_capped(cloud, lambdas):
    # given 4 shards, one task per instance, a spec asking 6 c5.large, and a Spot quota that fits the 6
    spec = cloud.spec("capped", shards=4, fleet={"instance_types": ["c5.large"], "target_capacity": 6})

    with spot_quota("L-34B43A08", 64):
        outcome = cloud.run(spec, SLOW_WORKERS)

    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    assert len(cloud.outputs("capped")) == 4
    # then the fleet was requested with the 4 units the 4 shards use, and no more than 4 instances came up
    assert len(outcome.physics.registered) == 4
    assert max(m["progress"]["fleet_target_capacity"] for m in outcome.monitor_results()) <= 4
    assert max(outcome.physics.desired_counts) <= 4
    # and the report says so
    assert outcome.report["capacity"] == {
        "fleet_api": "ec2-fleet",
        "fleet_id": outcome.report["capacity"]["fleet_id"],
        "on_demand_base": 0,
        "on_demand_fallback_after_seconds": None,
        "on_demand_fallback_units": 0,
        "spec_target_capacity": 6,
        "fleet_target_capacity": 4,
        "capped": True,
        "reason": "capped at 4: 4 pending shard(s) at 1 task(s) per instance keep at most 4 instance(s) busy",
    }
    assert_nothing_left(cloud.session, outcome.run_id)


@pytest.mark.parametrize("api", FLEET_APIS)
def test_one_pool_failing_while_the_others_fill_does_not_stop_the_run_and_is_reported(cloud, lambdas, api):
    # given c5.large not supported in any zone of the request, m5.large filling the fleet
    spec = cloud.spec(
        f"onepool-{api}",
        shards=3,
        fleet={"instance_types": ["c5.large", "m5.large"], "target_capacity": 2, "api": api},
    )

    outcome = cloud.run(spec, Knobs(failing_pools={"c5.large": "Unsupported"}))

    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    assert len(cloud.outputs(f"onepool-{api}")) == 3
    failed = outcome.report["instances"]["failed_pools"]
    assert failed and {(p["instance_type"], p["error"]) for p in failed} == {("c5.large", "Unsupported")}
    assert all(p["availability_zone"] for p in failed)
    assert_nothing_left(cloud.session, outcome.run_id)


@pytest.mark.parametrize("api", FLEET_APIS)
def test_every_pool_failing_fails_the_run_before_any_instance_with_a_reason_naming_the_pools(
    cloud, lambdas, api
):
    spec = cloud.spec(
        f"nopool-{api}",
        shards=2,
        fleet={"instance_types": ["c5.large", "m5.large"], "target_capacity": 2, "api": api},
    )

    outcome = cloud.run(
        spec, Knobs(failing_pools={"c5.large": "InsufficientInstanceCapacity", "m5.large": "Unsupported"})
    )

    _assert_failed_through_teardown_and_report(outcome, "FleetRequestError")
    assert outcome.last.failures() == [("CheckRegistration", "FleetRequestError")]
    reason = _cause_message(outcome)
    assert "c5.large in us-east-1" in reason and "InsufficientInstanceCapacity" in reason
    assert "m5.large in us-east-1" in reason and "Unsupported" in reason
    assert outcome.physics.registered == []  # nothing launched, nothing paid for
    assert outcome.report["status"] == "failed"
    assert_nothing_left(cloud.session, outcome.run_id)


@pytest.mark.parametrize("api", FLEET_APIS)
def test_fleet_expiry_terminates_its_instances_and_the_run_fails_as_timed_out(cloud, lambdas, api):
    # given workers that never finish a shard, and EC2 expiring the fleet (ValidUntil) 4 s after its request
    spec = cloud.spec(f"expired-{api}", shards=3, limits={"stall_timeout_seconds": 60}, fleet_api=api)

    outcome = cloud.run(spec, Knobs(stop_after=0, fleet_valid_for_seconds=4))

    # then EC2 terminated the fleet's instances, and the run failed with a reason naming the expiry
    (fleet_id,) = outcome.physics.fleets
    assert sorted(outcome.physics.expired[fleet_id]) == sorted(i for _, i in outcome.physics.registered)
    _assert_failed_through_teardown_and_report(outcome, "RunTimeoutError")
    assert f"fleet {fleet_id} expired" in _cause_message(outcome)
    assert "limits.max_runtime_seconds" in _cause_message(outcome)
    assert_nothing_left(cloud.session, outcome.run_id)


@pytest.mark.parametrize(
    ("name", "instance_type", "architecture"),
    [("graviton", "m7g.large", "arm64"), ("current-gen", "c7i.large", "x86_64")],
)
def test_any_instance_type_ec2_offers_validates_and_runs_on_its_own_architecture(
    cloud, lambdas, name, instance_type, architecture
):
    # given a run of an arm64 (Graviton) type, or of an x86_64 type outside the old price table
    spec = cloud.spec(name, shards=3, fleet={"instance_types": [instance_type], "target_capacity": 2})

    outcome = cloud.run(spec, SLOW_WORKERS)

    # then it validates and runs to the end
    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    assert len(cloud.outputs(name)) == 3
    (validated,) = outcome.executions[0].lambda_outputs("Validate")
    facts = validated["run"]["instance_types"][instance_type]
    assert (facts["vcpus"], facts["architecture"], facts["gpus"]) == (2, architecture, 0)
    # on instances of that type, booted from the ECS-optimized AMI of its architecture
    ec2, ssm = cloud.session.client("ec2"), cloud.session.client("ssm")
    instance_ids = [instance for _, instance in outcome.physics.registered]
    described = [
        i for r in ec2.describe_instances(InstanceIds=instance_ids)["Reservations"] for i in r["Instances"]
    ]
    assert {i["InstanceType"] for i in described} == {instance_type}
    variant = "arm64/" if architecture == "arm64" else ""
    parameter = f"/aws/service/ecs/optimized-ami/amazon-linux-2023/{variant}recommended/image_id"
    expected_ami = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
    assert {i["ImageId"] for i in described} == {expected_ami}
    # running the worker image of that architecture, placed on that architecture only
    (prepared,) = outcome.executions[0].lambda_outputs("PrepareRun")
    definition = cloud.session.client("ecs").describe_task_definition(
        taskDefinition=prepared["resources"]["task_definition_arn"]
    )["taskDefinition"]
    assert (
        definition["runtimePlatform"]["cpuArchitecture"]
        == {"arm64": "ARM64", "x86_64": "X86_64"}[architecture]
    )
    image = definition["containerDefinitions"][0]["image"]
    assert image.endswith("spotfill-worker-arm64:sfn" if architecture == "arm64" else "spotfill-worker:sfn")
    # and the report prices its hours: spot from the spot price history, the on-demand equivalent from the
    # Price List of the run's region
    spent = outcome.report["cost_usd"]
    assert spent["on_demand_prices"] == {
        instance_type: {
            "usd_per_hour": pricing.on_demand_price(instance_type, "us-east-1"),
            "source": "price-list",
        }
    }
    assert spent["static_table_prices"] == [] and spent["unpriced"] == []
    hours = outcome.report["instances"]["hours_by_type"][instance_type]
    assert spent["by_purchase_option"]["spot"]["hours"] == pytest.approx(hours, abs=1e-5)
    assert spent["spot"] == pytest.approx(hours * pricing.spot_price(instance_type), abs=1e-5)
    assert spent["on_demand_equivalent"] == pytest.approx(
        hours * pricing.on_demand_price(instance_type, "us-east-1"), abs=1e-5
    )
    assert_nothing_left(cloud.session, outcome.run_id)


def test_a_refusing_price_list_falls_back_to_the_static_table_and_the_report_flags_it(cloud, lambdas):
    # given the Price List API refusing (an account without pricing:GetProducts, say)
    pricing.PRICE_LIST_OUTAGE.refuse("AccessDeniedException")
    try:
        outcome = cloud.run(cloud.spec("price-fallback", shards=2), SLOW_WORKERS)
    finally:
        pricing.PRICE_LIST_OUTAGE.restore()

    # then the run still validates and runs, its on-demand figures from the static table, flagged as such
    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    spent = outcome.report["cost_usd"]
    assert spent["on_demand_prices"] == {"c5.large": {"usd_per_hour": 0.085, "source": "static-table"}}
    assert spent["static_table_prices"] == ["c5.large"]
    hours = outcome.report["instances"]["hours_by_type"]["c5.large"]
    assert spent["on_demand_equivalent"] == pytest.approx(hours * 0.085, abs=1e-5)
    # while spot prices still come from the spot price history
    assert spent["spot"] == pytest.approx(hours * pricing.spot_price("c5.large"), abs=1e-5)
    assert_nothing_left(cloud.session, outcome.run_id)


def test_a_dollar_cap_below_the_least_a_run_can_cost_is_refused_in_validate_naming_the_least_cap(
    cloud, lambdas
):
    # given a cap far below one instance's boot and first poll (the issue's `--max-total-usd 0.000001`)
    from spotfill_control.monitoring import budget

    from spotfill.localcloud.pricing import spot_price

    spec = cloud.spec("tiny-cap", shards=2, limits={"max_total_usd": 0.000001, "poll_interval_seconds": 1})

    # when the run goes
    outcome = cloud.run(spec)

    # then Validate refuses it, naming the least cap: one c5.large at its spot price, booted and polled once
    _assert_failed_through_teardown_and_report(outcome, "InvalidSpecError")
    assert outcome.last.failures() == [("Validate", "InvalidSpecError")]
    least = spot_price("c5.large") * (budget.BOOT_ALLOWANCE_SECONDS + 1) / 3600
    message = _cause_message(outcome)
    assert message.startswith("limits.max_total_usd: $0.000001000 is below the least this run can cost")
    assert f"the least cap that could is ${budget.format_usd_up(least)}: one c5.large" in message
    # and nothing was launched or queued
    assert not outcome.physics.fleets
    assert not outcome.physics.registered
    assert not [u for u in cloud.session.client("sqs").list_queues().get("QueueUrls", []) if "tiny-cap" in u]
    assert_nothing_left(cloud.session)


def test_run_that_would_cross_its_dollar_cap_drains_and_ends_budget_reached_with_nothing_left(cloud, lambdas):
    # given a cap that pays for the projection's reserve (a poll and a drain at the fleet's hourly price) and
    # about four seconds of the fleet beyond it, and more shards than the workers finish in that time
    from spotfill_control.monitoring import budget

    from spotfill.localcloud.pricing import on_demand_price, spot_price

    hourly = 2 * spot_price("c5.large")
    poll = 1
    cap = hourly * (budget.horizon_seconds(poll) + 4) / 3600
    assert spot_price("c5.large") < on_demand_price("c5.large", "us-east-1")
    spec = cloud.spec("budget", shards=40, limits={"max_total_usd": cap, "poll_interval_seconds": poll})

    # when the run goes
    outcome = cloud.run(spec, SLOW_WORKERS, timeout=120)

    # then it drains (no new capacity, no tasks) and fails with BudgetReached through teardown and report
    _assert_failed_through_teardown_and_report(outcome, "BudgetReached")
    assert outcome.last.failures()[-1] == ("Monitor", "BudgetReached")
    draining = [m for m in outcome.monitor_results() if m["budget"]["draining_since"]]
    assert draining, "no monitor poll drained the run"
    assert draining[0]["progress"]["fleet_target_capacity"] == 0
    assert outcome.physics.desired_counts[-1] == 0
    report = outcome.report
    assert report["status"] == "budget_reached"
    assert "budget reached" in report["reason"] and "spotfill redrive" in report["reason"]
    assert 0 < report["shards"]["succeeded"] < 40
    assert report["shards"]["unprocessed"] == 40 - report["shards"]["succeeded"]
    # the monitor's accrual stayed under the cap, and the run's cost (through teardown) within a poll of it
    assert report["budget"]["max_total_usd"] == cap
    assert 0 < outcome.monitor_results()[-1]["budget"]["accrued_usd"] < cap
    assert report["budget"]["spent_usd"] == report["cost_usd"]["total"] <= cap + poll * hourly / 3600
    assert_nothing_left(cloud.session, outcome.run_id)


@pytest.mark.parametrize("api", FLEET_APIS)
def test_a_capped_run_with_an_on_demand_base_drains_both_targets_and_ends_budget_reached(cloud, lambdas, api):
    # given a fleet of 2 units, 1 of them always on demand, and a cap a few seconds past the projection's
    # reserve: EC2 refuses a total target below the on-demand one, so the drain must lower both
    from spotfill_control.monitoring import budget

    from spotfill.localcloud.pricing import on_demand_price, spot_price

    hourly = spot_price("c5.large") + on_demand_price("c5.large", "us-east-1")
    poll = 1
    cap = hourly * (budget.horizon_seconds(poll) + 4) / 3600
    name = f"budget-od-{api}"
    fleet = {"instance_types": ["c5.large"], "target_capacity": 2, "on_demand_base": 1, "api": api}
    spec = cloud.spec(
        name, shards=40, fleet=fleet, limits={"max_total_usd": cap, "poll_interval_seconds": poll}
    )

    # when the run goes
    outcome = cloud.run(spec, SLOW_WORKERS, timeout=120)

    # then it drains and ends with BudgetReached (not an EC2 error from the Monitor), through teardown and
    # report
    _assert_failed_through_teardown_and_report(outcome, "BudgetReached")
    assert outcome.last.failures()[-1] == ("Monitor", "BudgetReached")
    draining = [m for m in outcome.monitor_results() if m["budget"]["draining_since"]]
    assert draining and draining[0]["progress"]["fleet_target_capacity"] == 0
    assert outcome.report["status"] == "budget_reached"
    assert_nothing_left(cloud.session, outcome.run_id)


# ------------------------------------------------------------------------------------- on demand, spot short


@pytest.mark.parametrize("api", FLEET_APIS)
def test_spot_short_past_the_fallback_wait_runs_the_shortfall_on_demand_and_the_run_completes(
    cloud, lambdas, api
):
    # given a fleet of 2 units, spot holding only 1 c5.large, and a 2 s fallback wait
    name = f"fallback-{api}"
    fleet = {"instance_types": ["c5.large"], "target_capacity": 2, "on_demand_fallback_after_seconds": 2}
    spec = cloud.spec(name, shards=8, fleet={**fleet, "api": api}, limits={"stall_timeout_seconds": 30})

    outcome = cloud.run(spec, Knobs(tick_seconds=1.0, spot_capacity={"c5.large": 1}))

    # then the run completes, the Monitor moved the missing unit on demand, and an on-demand instance ran
    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    assert len(cloud.outputs(name)) == 8
    moved = [m["progress"]["on_demand_fallback_units"] for m in outcome.monitor_results()]
    assert 1 in moved, moved
    ec2 = cloud.session.client("ec2")
    instances = [
        i
        for r in ec2.describe_instances(
            Filters=[{"Name": "tag:spotfill:run-id", "Values": [outcome.run_id]}]
        )["Reservations"]
        for i in r["Instances"]
    ]
    lifecycles = sorted(i.get("InstanceLifecycle", "on-demand") for i in instances)
    assert "on-demand" in lifecycles and "spot" in lifecycles, lifecycles
    registered = {instance for _, instance in outcome.physics.registered}
    assert {i["InstanceId"] for i in instances if "InstanceLifecycle" not in i} & registered
    assert_nothing_left(cloud.session, outcome.run_id)


@pytest.mark.parametrize("api", FLEET_APIS)
def test_no_spot_at_all_falls_back_on_demand_while_waiting_for_registration(cloud, lambdas, api):
    # given spot that cannot launch a single c5.large, and a 2 s fallback wait well inside the registration
    # timeout
    name = f"nospot-{api}"
    fleet = {"instance_types": ["c5.large"], "target_capacity": 1, "on_demand_fallback_after_seconds": 2}
    spec = cloud.spec(
        name, shards=2, fleet={**fleet, "api": api}, limits={"registration_timeout_seconds": 20}
    )

    outcome = cloud.run(spec, Knobs(spot_capacity={"c5.large": 0}))

    # then CheckRegistration moved the unit on demand, its instance registered, and the run completed
    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    checks = outcome.last.lambda_outputs("CheckRegistration")
    assert checks[-1]["progress"]["on_demand_fallback_units"] == 1
    assert outcome.last.entered().count("CheckRegistration") >= 2  # it waited the fallback out first
    assert len(cloud.outputs(name)) == 2
    assert_nothing_left(cloud.session, outcome.run_id)


# ------------------------------------------------------------------------------------------------- deadline


def test_a_deadline_the_cap_cannot_pay_for_is_refused_in_validate_with_both_numbers(cloud, lambdas):
    # given the plan's estimate (156,000 predictions at 50 per second per unit: 3,120 unit-seconds), a
    # deadline half an hour away that needs the fleet's 2 units, and a cap that pays for the work on 1 unit
    from spotfill_control.monitoring import budget, finish_by

    from spotfill.localcloud.pricing import spot_price

    price = spot_price("c5.large")
    overhead = finish_by.validate_overhead_seconds(1)
    cap = price * (3_120 + 1.5 * overhead) / 3600
    estimate = {
        "made_at": "2026-12-06T00:00:00Z",
        "instance_type": "c5.large",
        "target_capacity": 2,
        "predictions": 156_000,
        "predictions_per_second": 100.0,
        "seconds": 1_000.0,
        "total_usd": 0.001,
    }
    spec = cloud.spec(
        "deadline-cap",
        shards=2,
        limits={"max_total_usd": cap, "finish_by": "PT30M", "max_runtime_seconds": 3600},
        estimate=estimate,
    )

    # when the run goes
    outcome = cloud.run(spec)

    # then Validate refuses it, naming the least cap for the deadline and the earliest deadline for the cap
    _assert_failed_through_teardown_and_report(outcome, "InvalidSpecError")
    assert outcome.last.failures() == [("Validate", "InvalidSpecError")]
    message = _cause_message(outcome)
    # 1,800 s less an instance's boot and two polls leaves 1,738 s: 2 units; the cap pays for 1
    assert finish_by.units_needed(156_000, 50.0, 1800 - finish_by.validate_lead_seconds(1)) == 2
    least = price * (3_120 + 2 * overhead) / 3600
    assert "needs 2 capacity units" in message
    assert f"the least cap for that deadline is ${budget.format_usd_up(least)}" in message
    assert "the earliest deadline for that cap is " in message and "(with 1 capacity unit)" in message
    # and nothing was launched or queued
    assert not outcome.physics.fleets
    assert not [u for u in cloud.session.client("sqs").list_queues().get("QueueUrls", []) if "deadline" in u]
    assert_nothing_left(cloud.session)


def test_a_deadline_run_takes_weight_from_the_type_its_workers_measure_slow(cloud, lambdas, monkeypatch):
    # given a deadline run on c5.large (1 unit by vCPUs) and c5.xlarge (2), spot holding one c5.large, so the
    # fleet's 3 units are one of each, and workers that make 2 rows/s on c5.large and only 1 on c5.xlarge
    from spotfill_control.monitoring import progress

    monkeypatch.setattr(progress, "ROWS_SAMPLE_SIZE", 64)  # every output is measured once it exists
    fleet = {"instance_types": ["c5.large", "c5.xlarge"], "target_capacity": 3}
    spec = cloud.spec(
        "reweigh", shards=20, fleet=fleet, limits={"finish_by": "PT10M", "stall_timeout_seconds": 30}
    )
    knobs = Knobs(spot_capacity={"c5.large": 1}, worker_rates={"c5.large": 2.0, "c5.xlarge": 1.0})

    # when it runs (the fleet may launch up to 8 vCPUs: a quota above the new account's 5)
    with spot_quota("L-34B43A08", 16):
        outcome = cloud.run(spec, knobs)

    # then the Monitor re-weighted the fleet by what each type delivers, keeping the running 3 units:
    # c5.large 2 x 3 / 3 = 2 (from 1), c5.xlarge 1 x 3 / 3 = 1 (from 2): the report shows the slow type's fall
    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.last.cause)
    report = cloud.report(outcome.run_id)
    assert report is not None
    assert report["weights"]["requested"] == {"c5.large": 1.0, "c5.xlarge": 2.0}
    assert report["weights"]["final"] == {"c5.large": 2.0, "c5.xlarge": 1.0}
    assert report["weights"]["changes"][0]["per_instance"] == {"c5.large": 2.0, "c5.xlarge": 1.0}
    assert len(cloud.outputs("reweigh")) == 20
    assert_nothing_left(cloud.session, outcome.run_id)
