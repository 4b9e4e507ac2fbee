"""The S3 trigger on the deployed stack: a manifest put under backfills/ starts one run per upload, however
often EventBridge delivers its "Object Created" event (the manifest rule targets StartBackfill, which names
the execution after the upload; Step Functions refuses a second execution of that name)."""

from __future__ import annotations

import copy

import pytest

from .harness import Cloud, ExecutionResult, Knobs, Physics, assert_nothing_left

pytestmark = pytest.mark.sfn


def _run_id(execution: ExecutionResult) -> str:
    (validated,) = execution.lambda_outputs("Validate")
    return validated["run"]["run_id"]


def test_upload_event_delivered_twice_starts_one_run_and_one_fleet_and_a_reupload_starts_another(
    cloud: Cloud, lambdas
):
    spec = cloud.spec("uploaded", shards=2)
    physics = Physics(cloud.session, Knobs(tick_seconds=0.6))
    physics.start()
    try:
        # given a manifest uploaded under backfills/
        event = cloud.upload_manifest("backfills/uploaded.json", spec)

        # when EventBridge delivers its event twice
        [(function, first)] = cloud.deliver(event)
        [(_, second)] = cloud.deliver(copy.deepcopy(event))

        # then both deliveries name one execution, which the manifest rule's StartBackfill started
        assert second["execution_arn"] == first["execution_arn"]
        assert function == cloud.stack.function("StartBackfillFunction").arn
        run = cloud.wait(first["execution_arn"])

        # and a delivery after the run ended is refused
        [(_, late)] = cloud.deliver(event)
        assert late == {**first, "refused": True}

        # when the manifest is uploaded again (a new version of the key)
        [(_, rerun_started)] = cloud.deliver(cloud.upload_manifest("backfills/uploaded.json", spec))
        rerun = cloud.wait(rerun_started["execution_arn"])
    finally:
        physics.stop()

    # then the first delivery ran one backfill with one fleet
    assert run.status == "SUCCEEDED", (run.error, run.cause)
    started = [
        e["name"]
        for e in cloud.sfn.list_executions(stateMachineArn=cloud.stack.state_machine_arn)["executions"]
        if e["name"] in (first["name"], rerun_started["name"])
    ]
    assert sorted(started) == sorted([first["name"], rerun_started["name"]])
    assert rerun_started["name"] != first["name"]
    assert list(physics.log.fleets.values()).count(_run_id(run)) == 1
    assert len(cloud.outputs("uploaded")) == 2
    # and the upload again is a run of its own (its shards' outputs exist: it skips them and needs no fleet)
    assert rerun.status == "SUCCEEDED", (rerun.error, rerun.cause)
    assert _run_id(rerun) != _run_id(run)
    assert _run_id(rerun) not in physics.log.fleets.values()
    assert cloud.report(_run_id(rerun))["source"] == "s3"
    assert_nothing_left(cloud.session)


def test_two_uploads_of_one_key_a_moment_apart_each_run_their_own_spec(cloud: Cloud, lambdas):
    physics = Physics(cloud.session, Knobs(tick_seconds=0.6))
    physics.start()
    try:
        # given two uploads to one manifest key, the second before the first's run has read it
        first_event = cloud.upload_manifest("backfills/tt.json", cloud.spec("tt-first", shards=1))
        second_event = cloud.upload_manifest("backfills/tt.json", cloud.spec("tt-second", shards=1))

        # when EventBridge delivers each upload's event
        [(_, first_started)] = cloud.deliver(first_event)
        [(_, second_started)] = cloud.deliver(second_event)
        first = cloud.wait(first_started["execution_arn"])
        second = cloud.wait(second_started["execution_arn"])
    finally:
        physics.stop()

    # then each execution ran the spec of the upload its event names (the control bucket is versioned)
    assert first.status == "SUCCEEDED", (first.error, first.cause)
    assert second.status == "SUCCEEDED", (second.error, second.cause)
    [(first_validated,)] = [first.lambda_outputs("Validate")]
    [(second_validated,)] = [second.lambda_outputs("Validate")]
    assert first_validated["run"]["spec"]["name"] == "tt-first"
    assert second_validated["run"]["spec"]["name"] == "tt-second"
    # and each spec's shard has its output, once each
    assert len(cloud.outputs("tt-first")) == 1
    assert len(cloud.outputs("tt-second")) == 1
    assert_nothing_left(cloud.session)
