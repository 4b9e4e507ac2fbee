"""Report, continue-as-new and cleanup-on-exit handlers against moto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from spotfill_control.handlers import cleanup_on_exit, continue_as_new, monitor, report, teardown

from .conftest import EXECUTION_ARN, ROWS_PER_SHARD, STATE_MACHINE_ARN
from .test_teardown_handler import assert_nothing_left

pytestmark = pytest.mark.aws


def finish_processing(world, run: dict, lambda_context, dead_letter: int | None = None) -> dict:
    """Workers finish every shard (one of them dead-lettered, if asked); monitor sees the run done."""
    world.drain_queue(run)
    for index in range(3):
        if index == dead_letter:
            world.dead_letter(run, index)
        else:
            world.write_output(run, index)
    run = monitor.handler({"run": run}, lambda_context)
    assert run["progress"]["state"] == "done"
    return run


# ------------------------------------------------------------------------------------------ report


def test_report_of_a_successful_run_has_every_figure(world, running_run, lambda_context):
    # given a run that finished every shard (one after a retry) and was torn down
    run = monitor.handler({"run": running_run}, lambda_context)
    world.write_error_record(run, 1)
    run = finish_processing(world, run, lambda_context)
    state = {"run": teardown.handler({"run": run}, lambda_context)}

    # when it is reported
    summary = report.handler(state, lambda_context)

    # then the report in S3 carries the status, counts, phases, instance-hours, cost and throughput
    document = world.report(run["run_id"])
    assert summary["status"] == document["status"] == "succeeded"
    assert summary["report_uri"] == f"s3://{world.settings.control_bucket}/reports/{run['run_id']}.json"
    assert document["shards"] == {
        "total": 3,
        "skipped_existing": 0,
        "succeeded": 3,
        "failed": 0,
        "failed_keys": [],
        "failed_keys_truncated": False,
        "failed_errors": [],
        "unprocessed": 0,
        "retried": 1,
        "requeued": 0,
        "verified": True,
        "unverified": 0,
        "verification": None,
    }
    assert document["predictions"] == {
        "total": 3 * ROWS_PER_SHARD,
        "exact": True,
        "by_purchase_option": {"spot": 3 * ROWS_PER_SHARD},
    }
    phases = document["phases_seconds"]
    for phase in ("validate", "registration", "processing", "teardown", "total"):
        assert phases[phase] is not None and phases[phase] >= 0, phase
    instances = document["instances"]
    assert instances["count"] == len(world.known_instances(run["run_id"])) > 0
    assert set(instances["hours_by_type"]) <= {"c5.xlarge", "c5.2xlarge"}
    assert instances["interruptions"] == 0
    cost = document["cost_usd"]
    assert cost["spot"] >= 0 and cost["on_demand_equivalent"] >= cost["spot"]
    assert "per_million_predictions" in cost
    throughput = document["throughput"]
    assert throughput["peak_shards_per_second"] > 0
    assert throughput["mean_shards_per_second"] is not None

    # and a small summary, an EventBridge event and an SNS message say so
    assert len(json.dumps(summary)) < 1_000
    events = world.received(world.published_events_queue)
    assert [e["detail-type"] for e in events] == ["Backfill Run Finished"]
    assert events[0]["source"] == "spotfill"
    assert events[0]["detail"]["status"] == "succeeded"
    assert events[0]["detail"]["run_id"] == run["run_id"]
    messages = world.received(world.notifications_queue)
    assert len(messages) == 1
    assert messages[0]["Subject"] == f"spotfill run {run['run_id']} succeeded"


def _series(run_id: str, samples: int) -> dict:
    return {
        "interval_seconds": 5.0,
        "samples": [
            {
                "t": 1_700_000_000.0 + 5 * i,
                "shards_done": min(3, i),
                "shards_total": 3,
                "predictions": min(3, i) * ROWS_PER_SHARD,
                "predictions_per_second": 1.4,
                "capacity": {"c5.xlarge/spot": 1.0},
                "running_tasks": 2,
                "cost_usd": 0.0001 * i,
                "interruptions": 0,
            }
            for i in range(samples)
        ],
    }


def test_report_writes_its_html_page_beside_the_json_with_the_runs_series(world, running_run, lambda_context):
    # given a finished run whose Monitor kept a series
    run = finish_processing(world, running_run, lambda_context)
    state = {"run": teardown.handler({"run": run}, lambda_context)}
    world.s3.put_object(
        Bucket=world.settings.control_bucket,
        Key=f"runs/{run['run_id']}/series.json",
        Body=json.dumps(_series(run["run_id"], 4)).encode(),
    )

    # when it is reported
    report.handler(state, lambda_context)

    # then reports/<run id>.html is an HTML page drawing every chart of the series, and the JSON names it
    document = world.report(run["run_id"])
    assert document["html_key"] == f"reports/{run['run_id']}.html"
    page = world.s3.get_object(Bucket=world.settings.control_bucket, Key=document["html_key"])
    assert page["ContentType"] == "text/html; charset=utf-8"
    text = page["Body"].read().decode()
    assert text.startswith("<!DOCTYPE html>") and f"spotfill run {run['run_id']}" in text
    for chart in ("progress", "throughput", "fleet", "cost"):
        assert f'data-chart="{chart}" data-empty="false"><h2>' in text, chart


def test_a_page_that_cannot_be_drawn_leaves_the_report_whole(world, running_run, lambda_context, monkeypatch):
    # given a finished run, and a page renderer that fails
    from spotfill_control.finishing import report_html

    def broken(*_):
        raise ValueError("no fonts here")

    monkeypatch.setattr(report_html, "render_html", broken)
    run = finish_processing(world, running_run, lambda_context)
    state = {"run": teardown.handler({"run": run}, lambda_context)}

    # when it is reported
    summary = report.handler(state, lambda_context)

    # then the JSON report, the event and the notification go out, without a page
    document = world.report(run["run_id"])
    assert summary["status"] == document["status"] == "succeeded"
    assert document["html_key"] is None
    listed = world.s3.list_objects_v2(Bucket=world.settings.control_bucket, Prefix="reports/")["Contents"]
    assert [o["Key"] for o in listed] == [f"reports/{run['run_id']}.json"]
    assert len(world.received(world.notifications_queue)) == 1


def test_report_lists_dead_lettered_shards_as_failed(world, running_run, lambda_context):
    # given a run that ended with one shard in the dead-letter queue
    run = finish_processing(world, running_run, lambda_context, dead_letter=2)
    failed = world.shard_list(run)["shards"][2]["shard"]
    state = {"run": teardown.handler({"run": run}, lambda_context)}

    # when it is reported
    summary = report.handler(state, lambda_context)

    # then it completed with failures, naming the failed shard
    document = world.report(run["run_id"])
    assert summary["status"] == document["status"] == "completed_with_failures"
    assert document["shards"]["failed"] == 1
    assert document["shards"]["failed_keys"] == [failed]
    assert document["shards"]["succeeded"] == 2
    assert document["predictions"]["total"] == 2 * ROWS_PER_SHARD
    assert "succeeded with failed shards" in world.received(world.notifications_queue)[0]["Subject"]


def test_report_names_each_failed_shard_with_the_error_its_record_holds(world, running_run, lambda_context):
    # given a run whose third shard went to the dead-letter queue with an error record
    entry = world.shard_list(running_run)["shards"][2]
    bucket, key = entry["error"][len("s3://") :].split("/", 1)
    record = {
        "error_type": "InvalidArgumentError",
        "error": "Graph execution error:\n\nDetected at node x defined at (most recent call last):\n...",
        "reason": "InvalidArgumentError: indices[0,0] = 50 is not in [0, 10)",
        "receive_count": 3,
    }
    world.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode())
    run = finish_processing(world, running_run, lambda_context, dead_letter=2)
    state = {"run": teardown.handler({"run": run}, lambda_context)}

    # when it is reported
    report.handler(state, lambda_context)

    # then the failed shard is listed with its error
    document = world.report(run["run_id"])
    assert document["shards"]["failed_errors"] == [
        {"shard": entry["shard"], **record, "error_record": entry["error"]}
    ]
    message = world.received(world.notifications_queue)[0]["Message"]
    assert f"{entry['shard']}: InvalidArgumentError: indices[0,0] = 50 is not in [0, 10)\n" in message + "\n"


def test_an_error_record_without_a_reason_is_quoted_by_its_type_and_first_line(
    world, running_run, lambda_context
):
    # given a failed shard whose error record (written before workers wrote a reason) has none
    entry = world.shard_list(running_run)["shards"][2]
    bucket, key = entry["error"][len("s3://") :].split("/", 1)
    record = {"error_type": "ShardFormatError", "error": "cannot decode shard as npy:\nbad header"}
    world.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode())
    run = finish_processing(world, running_run, lambda_context, dead_letter=2)
    state = {"run": teardown.handler({"run": run}, lambda_context)}

    # when it is reported / then its reason is its type and its message's first line
    report.handler(state, lambda_context)
    (failed,) = world.report(run["run_id"])["shards"]["failed_errors"]
    assert failed["reason"] == "ShardFormatError: cannot decode shard as npy:"


def test_report_of_a_run_whose_model_cannot_load_carries_the_loaders_reason(
    world, running_run, lambda_context
):
    # given a worker's model-load error record, and the monitor's error as the ASL's Catch hands it on
    from .test_monitor_handler import write_model_error

    write_model_error(world, running_run, "cannot load Keras model broken.keras: not a zip file")
    with pytest.raises(Exception) as raised:
        monitor.handler({"run": running_run}, lambda_context)
    cause = json.dumps({"errorType": type(raised.value).__name__, "errorMessage": str(raised.value)})
    state = {"run": running_run, "error": {"Error": type(raised.value).__name__, "Cause": cause}}
    state["run"] = teardown.handler(state, lambda_context)

    # when it is reported
    summary = report.handler(state, lambda_context)

    # then the run failed with ModelLoadError, and the reason is the loader's
    document = world.report(running_run["run_id"])
    assert summary["status"] == document["status"] == "failed"
    assert document["error"]["type"] == "ModelLoadError"
    assert document["reason"].startswith("ModelLoadError: the model ")
    assert "cannot load Keras model broken.keras: not a zip file" in document["reason"]


def test_report_of_a_failed_run_names_the_error(world, running_run, lambda_context):
    # given a run that stalled, as the ASL's Catch hands it to Teardown and Report
    cause = json.dumps({"errorType": "StallError", "errorMessage": "run x made no progress for 601 s"})
    error = {"Error": "StallError", "Cause": cause}
    state = {"run": running_run, "error": error}
    state["run"] = teardown.handler(state, lambda_context)

    # when it is reported
    summary = report.handler(state, lambda_context)

    # then the report says failed, with the error and its message, and the unfinished shards
    document = world.report(running_run["run_id"])
    assert summary["status"] == document["status"] == "failed"
    assert document["error"] == {"type": "StallError", "message": "run x made no progress for 601 s"}
    assert document["reason"] == "StallError: run x made no progress for 601 s"
    assert document["shards"]["unprocessed"] == 3
    assert world.received(world.notifications_queue)[0]["Subject"].endswith("failed")
    assert world.received(world.published_events_queue)[0]["detail"]["status"] == "failed"


def test_report_of_invalid_input_is_written_under_the_execution_name(world, lambda_context):
    # given an execution whose input failed validation: no run exists, only the error
    cause = json.dumps({"errorType": "InvalidSpecError", "errorMessage": "fleet.instance_types: unknown x1"})
    state = {"error": {"Error": "InvalidSpecError", "Cause": cause}, "execution_arn": EXECUTION_ARN}
    state["run"] = teardown.handler(state, lambda_context)

    # when it is reported
    summary = report.handler(state, lambda_context)

    # then the report is written under the execution's name, with status invalid and the field at fault
    document = world.report("exec-0001")
    assert summary["status"] == document["status"] == "invalid"
    assert "fleet.instance_types" in document["reason"]
    assert (
        world.received(world.notifications_queue)[0]["Subject"]
        == "spotfill run exec-0001 failed: invalid input"
    )


# ------------------------------------------------------------------------------------------ continue-as-new


def test_continue_as_new_starts_the_next_execution_with_the_run(world, start_run, lambda_context):
    # given the state machine, and a run that monitor asked to hand over
    world.sfn.create_state_machine(
        name="spotfill-backfill",
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
        roleArn="arn:aws:iam::123456789012:role/spotfill-sfn",
    )
    run = start_run(handover_after_iterations=1)
    run = monitor.handler({"run": run}, lambda_context)
    assert run["progress"]["state"] == "handover"

    # when it continues as new
    result = continue_as_new.handler({"run": run}, lambda_context)

    # then execution <run id>-2 runs with {"resume": run}, and the persisted run points at it
    expected_arn = STATE_MACHINE_ARN.replace(":stateMachine:", ":execution:") + f":{run['run_id']}-2"
    assert result == {"execution_arn": expected_arn, "executions": 2}
    started = world.sfn.describe_execution(executionArn=expected_arn)
    resumed = json.loads(started["input"])["resume"]
    assert resumed["run_id"] == run["run_id"]
    assert resumed["executions"] == 2
    assert resumed["progress"]["iterations_this_execution"] == 0
    assert resumed["progress"]["state"] == "running"
    assert resumed["phase"] == "monitoring"
    stored = world.stored_run(run["run_id"])
    assert stored["execution_arn"] == expected_arn
    index = world.s3.get_object(
        Bucket=world.settings.control_bucket, Key=f"executions/{run['run_id']}-2.json"
    )
    assert json.loads(index["Body"].read())["run_id"] == run["run_id"]

    # and a retried invocation does not start a third execution
    assert continue_as_new.handler({"run": run}, lambda_context) == result
    executions = world.sfn.list_executions(stateMachineArn=STATE_MACHINE_ARN)["executions"]
    assert [e["name"] for e in executions] == [f"{run['run_id']}-2"]


# ------------------------------------------------------------------------------------------ cleanup on exit


def status_change(execution_arn: str, status: str) -> dict:
    return {
        "version": "0",
        "id": "315c1398-40ff-a850-213b-158f73e60175",
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": "123456789012",
        "time": "2026-11-27T06:00:00Z",
        "region": "us-east-1",
        "resources": [execution_arn],
        "detail": {
            "executionArn": execution_arn,
            "stateMachineArn": STATE_MACHINE_ARN,
            "name": execution_arn.rsplit(":", 1)[-1],
            "status": status,
            "startDate": 1764223200000,
            "stopDate": 1764226800000,
            "input": "{}",
            "output": None,
        },
    }


def test_cleanup_on_exit_tears_down_and_reports_a_timed_out_execution(world, running_run, lambda_context):
    # given a run in flight whose execution timed out (the ASL could not catch it)
    event = status_change(EXECUTION_ARN, "TIMED_OUT")

    # when the status-change rule invokes cleanup
    result = cleanup_on_exit.handler(event, lambda_context)

    # then nothing of the run is left and the report says why it failed
    assert result["action"] == "torn_down" and result["reported"] is True
    assert_nothing_left(world, running_run)
    document = world.report(running_run["run_id"])
    assert document["status"] == "failed"
    assert document["error"]["type"] == "States.Timeout"


def test_cleanup_on_exit_does_not_report_a_run_twice(world, running_run, lambda_context):
    # given a run that failed through the ASL's own Teardown and Report
    state = {"run": running_run, "error": {"Error": "StallError", "Cause": "stalled"}}
    state["run"] = teardown.handler(state, lambda_context)
    report.handler(state, lambda_context)
    world.received(world.notifications_queue)

    # when the FAILED status change arrives
    result = cleanup_on_exit.handler(status_change(EXECUTION_ARN, "FAILED"), lambda_context)

    # then teardown ran again harmlessly, and the report was left as it was
    assert result["reported"] is False
    assert world.report(running_run["run_id"])["error"]["type"] == "StallError"


def test_cleanup_on_exit_ignores_an_execution_the_run_has_moved_on_from(world, running_run, lambda_context):
    # given a run handed over to execution 2 (its old execution's index still points at it)
    moved = dict(running_run, execution_arn=EXECUTION_ARN.replace("exec-0001", f"{running_run['run_id']}-2"))
    world.s3.put_object(
        Bucket=world.settings.control_bucket,
        Key=f"runs/{running_run['run_id']}/state.json",
        Body=json.dumps(moved).encode(),
    )

    # when the old execution is reported aborted
    result = cleanup_on_exit.handler(status_change(EXECUTION_ARN, "ABORTED"), lambda_context)

    # then the run keeps running
    assert result["action"] == "ignored"
    assert world.fleet_instances(running_run)
    assert world.sqs.list_queues(QueueNamePrefix=f"spotfill-{running_run['run_id']}")["QueueUrls"]


def test_cleanup_on_exit_reports_an_execution_that_failed_before_a_run_existed(world, lambda_context):
    # given an aborted execution that never got past Validate
    arn = EXECUTION_ARN.replace("exec-0001", "exec-0042")

    # when cleanup runs
    result = cleanup_on_exit.handler(status_change(arn, "ABORTED"), lambda_context)

    # then a failed report is written under the execution's name
    assert result["reported"] is True
    document = world.report("exec-0042")
    assert document["status"] == "failed"
    assert document["error"]["type"] == "ExecutionAborted"


def test_cleanup_on_exit_takes_the_sample_status_change_event(world, lambda_context):
    # given the sample event of an aborted execution (events/), whose run never existed
    sample = Path(__file__).resolve().parents[2] / "events" / "execution_aborted.json"
    event = json.loads(sample.read_text())

    # when cleanup runs on it
    result = cleanup_on_exit.handler(event, lambda_context)

    # then it reports the aborted execution under its name
    assert result == {
        "execution_arn": event["detail"]["executionArn"],
        "run_id": "sfn-4f1c2a9b7d3e",
        "action": "torn_down",
        "reported": True,
        "status": "failed",
    }
    assert world.report("sfn-4f1c2a9b7d3e")["error"]["type"] == "ExecutionAborted"


def test_cleanup_on_exit_ignores_statuses_it_does_not_handle(world, running_run, lambda_context):
    result = cleanup_on_exit.handler(status_change(EXECUTION_ARN, "SUCCEEDED"), lambda_context)
    assert result["action"] == "ignored"
    assert world.fleet_instances(running_run)
