"""Whole backfills on the local cloud: a manifest upload in, a report and checked outputs out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from spotfill import iam
from spotfill.demo import check_outputs
from spotfill.localcloud import pricing, worker_iam
from spotfill.localrun import download_outputs, follow_run, manifest, upload_and_trigger

from .helpers import eventually, worker_records

pytestmark = pytest.mark.e2e


def _spec(cloud, name: str, instances: int = 1, runtime: str = "tensorflow") -> dict:
    """A manifest of npy shards. Its workers run TensorFlow unless told otherwise: these backfills are about
    triggers, keys, prices and redrives, not about choosing a runtime (`auto` converts the model twice and
    times three runtimes in every worker; test_model_runtime.py runs it end to end, and so does the first
    test here)."""
    return manifest(
        name,
        cloud.outputs.data_bucket,
        f"models/{name}/model.keras",
        "npy",
        "npy",
        instances=instances,
        runtime=runtime,
    )


def test_a_manifest_upload_runs_a_backfill_whose_outputs_equal_model_predict(
    local_cloud, digits, quiet_console, tmp_path
):
    # given the model and eight shards, and a manifest naming them
    spec = _spec(local_cloud, "digits", instances=2, runtime="auto")  # as a user's manifest gets it

    # when the manifest is uploaded under backfills/ in the control bucket
    execution_arn = upload_and_trigger(
        local_cloud, spec, digits.model_path, digits.shards(), digits.input_dir
    )
    result = follow_run(local_cloud, execution_arn, quiet_console, timeout=240)

    # then the execution started by EventBridge succeeds and reports every shard
    assert result.snapshot.status == "SUCCEEDED", result.snapshot.error
    report = result.report
    assert report["status"] == "succeeded"
    assert report["shards"]["total"] == 8 and report["shards"]["succeeded"] == 8
    assert report["shards"]["failed_keys"] == []
    assert report["predictions"]["total"] == 8 * 300
    assert report["source"] == "s3"
    assert set(report["phases_seconds"]) >= {"validate", "registration", "processing", "teardown"}
    # the emulated spot market prices instances at 35% of on demand, so the saving is real and measured
    cost = report["cost_usd"]
    assert cost["unpriced"] == [] and 0 < cost["spot"] < cost["on_demand_equivalent"]
    assert cost["savings_fraction"] == pytest.approx(0.65, abs=0.01)
    # and every output exists once and equals the model's own predictions
    result.outputs = download_outputs(local_cloud, spec, digits.shards(), digits.input_dir, tmp_path / "out")
    assert check_outputs(result, digits.reference) == []
    s3 = local_cloud.client("s3")
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=local_cloud.outputs.data_bucket, Prefix="outputs/digits/")[
            "Contents"
        ]
    ]
    assert sorted(keys) == [f"outputs/digits/part-{i:05d}.npy" for i in range(8)]
    # and IAM was enforced on every call: functions as their roles, none denied, each worker as the task role
    assert local_cloud.dispatcher.iam.evaluated
    assert iam.describe(local_cloud.dispatcher.iam.denied) == []
    # (a task stopped at teardown before its interpreter got as far as sitecustomize wrote nothing at all)
    task_logs = [log.read_text() for log in (local_cloud.run_dir / "logs").rglob("*.log")]
    worked = [text for text in task_logs if '"shard_done"' in text]
    assert worked
    assert all(worker_iam.ENFORCED_LINE in text for text in task_logs if text.strip())
    # and nothing is left running or allocated
    assert local_cloud.wait_idle(), local_cloud.leftovers()


def test_an_arm64_graviton_backfill_runs_and_is_priced_from_the_price_list(
    local_cloud, digits, quiet_console, tmp_path
):
    # given a manifest whose fleet is an arm64 (Graviton) type, outside the old price table
    spec = _spec(local_cloud, "graviton")
    spec["fleet"]["instance_types"] = ["m7g.xlarge"]

    # when it is uploaded
    execution_arn = upload_and_trigger(
        local_cloud, spec, digits.model_path, digits.shards(), digits.input_dir
    )
    result = follow_run(local_cloud, execution_arn, quiet_console, timeout=240)

    # then it validates and runs on m7g.xlarge instances, and every output equals the model's predictions
    assert result.snapshot.status == "SUCCEEDED", result.snapshot.error
    report = result.report
    assert report["shards"]["succeeded"] == 8
    assert list(report["instances"]["hours_by_type"]) == ["m7g.xlarge"]
    result.outputs = download_outputs(local_cloud, spec, digits.shards(), digits.input_dir, tmp_path / "out")
    assert check_outputs(result, digits.reference) == []
    # and its on-demand price came from the Price List the local cloud serves over HTTP, not the static table
    cost = report["cost_usd"]
    assert cost["on_demand_prices"] == {
        "m7g.xlarge": {
            "usd_per_hour": pricing.on_demand_price("m7g.xlarge", "us-east-1"),
            "source": "price-list",
        }
    }
    assert cost["static_table_prices"] == [] and cost["unpriced"] == []
    assert cost["by_purchase_option"]["spot"]["instances"] >= 1
    assert 0 < cost["total"] < cost["on_demand_equivalent"]
    assert iam.describe(local_cloud.dispatcher.iam.denied) == []
    assert local_cloud.wait_idle(), local_cloud.leftovers()


def test_a_malformed_manifest_fails_fast_naming_the_field_and_requests_no_fleet(
    local_cloud, digits, quiet_console
):
    # given a manifest whose fleet names an instance type that does not exist (well formed, so only EC2 can
    # tell), its model and a shard in place so that nothing else is wrong
    spec = _spec(local_cloud, "broken")
    spec["fleet"]["instance_types"] = ["c5.huge"]
    s3 = local_cloud.client("s3")
    bucket = local_cloud.outputs.data_bucket
    s3.upload_file(str(digits.model_path), bucket, "models/broken/model.keras")
    shard = digits.shards()[0]
    s3.upload_file(str(shard), bucket, f"inputs/broken/{shard.name}")
    before = datetime.now(UTC).replace(microsecond=0)
    ec2 = local_cloud.client("ec2")
    fleets_before = ec2.describe_fleets()["Fleets"]

    # when it is uploaded
    local_cloud.client("s3").put_object(
        Bucket=local_cloud.outputs.control_bucket, Key="backfills/broken.json", Body=json.dumps(spec).encode()
    )
    from spotfill.runs import Session, wait_for_execution_started_after

    session = Session(local_cloud.endpoint_url, local_cloud.region)
    stack = session.stack()
    execution_arn = wait_for_execution_started_after(session, stack, before)
    sfn = local_cloud.client("stepfunctions")
    described = eventually(
        lambda: (d := sfn.describe_execution(executionArn=execution_arn))["status"] != "RUNNING" and d,
        timeout=120,
    )

    # then the run fails, the error names the field, and no fleet was ever requested
    assert described["status"] == "FAILED"
    assert "fleet.instance_types" in (described.get("cause", "") + described.get("error", ""))
    assert "c5.huge" in described.get("cause", "")
    assert ec2.describe_fleets()["Fleets"] == fleets_before
    # and the failed execution's status change reached the cleanup_on_exit rule, as in AWS
    cleanup = eventually(
        lambda: [
            i
            for i in local_cloud.dispatcher.invocations
            if i.name == "cleanup_on_exit" and i.event.get("detail", {}).get("executionArn") == execution_arn
        ],
        timeout=30,
    )
    assert cleanup[0].event["detail-type"] == "Step Functions Execution Status Change"
    assert cleanup[0].event["detail"]["status"] == "FAILED"


def test_an_invocation_leaves_the_functions_shared_variables_in_the_process_while_the_cloud_runs(local_cloud):
    # given the functions' shared environment (the template's Globals), which the local cloud holds while it
    # runs: an invocation that removed a variable on its way out would fail another thread copying the
    # process's environment at that moment (KeyError)
    import os

    functions = local_cloud.client("lambda").list_functions()["Functions"]
    variables = functions[0]["Environment"]["Variables"]
    assert os.environ["CONTROL_BUCKET"] == variables["CONTROL_BUCKET"] == local_cloud.outputs.control_bucket

    # when a function is invoked (with an event it refuses)
    local_cloud.client("lambda").invoke(FunctionName=functions[0]["FunctionName"], Payload=b"{}")

    # then the shared variables are still set, with the same values
    shared = ("CONTROL_BUCKET", "WORKER_IMAGE", "TASK_ROLE_ARN", "EVENT_BUS_NAME")
    assert {k: os.environ.get(k) for k in shared} == {k: variables[k] for k in shared}


def test_an_upload_event_delivered_again_starts_no_second_execution(local_cloud):
    # given a manifest uploaded under backfills/ (one that fails in Validate, so the run ends at once)
    spec = _spec(local_cloud, "redelivered")
    spec["fleet"]["instance_types"] = ["c5.huge"]
    before = datetime.now(UTC).replace(microsecond=0)
    local_cloud.client("s3").put_object(
        Bucket=local_cloud.outputs.control_bucket,
        Key="backfills/redelivered.json",
        Body=json.dumps(spec).encode(),
    )
    sfn = local_cloud.client("stepfunctions")
    machine = local_cloud.outputs.state_machine_arn

    def executions_of_the_upload() -> list[str]:
        found = []
        for execution in sfn.list_executions(stateMachineArn=machine)["executions"]:
            if execution["startDate"] < before:
                continue
            started = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
            if started.get("detail", {}).get("object", {}).get("key") == "backfills/redelivered.json":
                found.append(execution["executionArn"])
        return found

    # (found by its key: another test's upload may start its execution in the same second)
    (execution_arn,) = eventually(executions_of_the_upload, timeout=60)
    delivered = json.loads(sfn.describe_execution(executionArn=execution_arn)["input"])
    assert delivered["detail"]["object"]["version-id"]  # the control bucket is versioned

    # when EventBridge delivers the upload's S3 event again (another event id, as at-least-once delivery may)
    local_cloud.client("events").put_events(
        Entries=[
            {
                "Source": "aws.s3",
                "DetailType": "Object Created",
                "Resources": delivered["resources"],
                "Detail": json.dumps(delivered["detail"]),
            }
        ]
    )

    # then Step Functions refused a second execution: one run for the upload
    def starts() -> list:
        return [
            i
            for i in local_cloud.dispatcher.invocations
            if i.name == "start_backfill"
            and i.event.get("detail", {}).get("object", {}).get("key") == "backfills/redelivered.json"
            and i.ended_at is not None
        ]

    eventually(lambda: len(starts()) == 2 or len(executions_of_the_upload()) > 1, timeout=30)
    assert executions_of_the_upload() == [execution_arn]
    assert all(i.succeeded for i in starts()), [(i.error_type, i.error_message) for i in starts()]
    eventually(lambda: sfn.describe_execution(executionArn=execution_arn)["status"] != "RUNNING", 60)


def test_a_schedule_rule_fired_on_demand_starts_an_execution_with_the_event_time(local_cloud):
    # given the stack's schedule rule (disabled by default, as deployed)
    events = local_cloud.client("events")
    rule = next(r["Name"] for r in events.list_rules()["Rules"] if r.get("ScheduleExpression"))
    sfn = local_cloud.client("stepfunctions")
    known = {
        e["executionArn"]
        for e in sfn.list_executions(stateMachineArn=local_cloud.outputs.state_machine_arn)["executions"]
    }

    # when it is fired for a given time
    when = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
    assert local_cloud.fire_schedule(rule, when) == 1

    # then an execution starts whose input is the rule target's transformed input, with the event's time
    def started():
        executions = sfn.list_executions(stateMachineArn=local_cloud.outputs.state_machine_arn)["executions"]
        return [e for e in executions if e["executionArn"] not in known]

    execution = eventually(started, timeout=30)[0]
    execution_input = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert execution_input["time"] == "2026-11-26T03:00:00Z"
    assert "manifest" in execution_input
    eventually(
        lambda: sfn.describe_execution(executionArn=execution["executionArn"])["status"] != "RUNNING", 60
    )


def test_two_manifests_uploaded_at_once_make_two_isolated_runs(local_cloud, digits, quiet_console, tmp_path):
    # given two backfills of different shards into different output prefixes
    first, second = _spec(local_cloud, "first"), _spec(local_cloud, "second")
    half = len(digits.shards()) // 2
    first_shards, second_shards = digits.shards()[:half], digits.shards()[half:]

    # when both manifests are uploaded, one right after the other
    first_arn = upload_and_trigger(local_cloud, first, digits.model_path, first_shards, digits.input_dir)
    second_arn = upload_and_trigger(local_cloud, second, digits.model_path, second_shards, digits.input_dir)
    first_result = follow_run(local_cloud, first_arn, quiet_console, timeout=240)
    second_result = follow_run(local_cloud, second_arn, quiet_console, timeout=240)

    # then both succeed, each with its own run id, report and outputs, and only its own shards
    assert first_arn != second_arn
    for result, spec, shards in ((first_result, first, first_shards), (second_result, second, second_shards)):
        assert result.snapshot.status == "SUCCEEDED", result.snapshot.error
        assert result.report["status"] == "succeeded"
        assert result.report["shards"]["total"] == len(shards)
        assert result.report["output_uri"] == spec["output"]["uri"]
        result.outputs = download_outputs(
            local_cloud, spec, shards, digits.input_dir, tmp_path / spec["name"]
        )
        expected = {s.name: digits.reference[s.name] for s in shards}
        assert check_outputs(result, expected) == []
    assert first_result.report["run_id"] != second_result.report["run_id"]
    # and the two runs never shared a worker: every worker in a run's cluster worked on that run's shards only
    for result in (first_result, second_result):
        run_id = result.report["run_id"]
        logs = list((local_cloud.run_dir / "logs" / f"spotfill-{run_id}").glob("*.log"))
        records = [record for log in logs for record in worker_records(log)]
        assert any(r.get("event") == "shard_done" for r in records)
        assert {r.get("run_id", r.get("RunId")) for r in records} == {run_id}
    assert local_cloud.wait_idle(), local_cloud.leftovers()


def test_shards_named_with_hash_question_mark_percent_and_spaces_are_backfilled_to_their_own_keys(
    local_cloud, digits, quiet_console, tmp_path
):
    # given shards whose keys a URL parser would cut ('#', '?') or decode ('%', '+')
    import shutil

    input_dir = tmp_path / "inputs"
    input_dir.mkdir()
    names = ["part #1.npy", "part?x=2.npy", "100% + naïve.npy"]
    originals = sorted(digits.input_dir.glob("*.npy"))[: len(names)]
    shards = []
    for name, original in zip(names, originals, strict=True):
        shutil.copy(original, input_dir / name)
        shards.append(input_dir / name)
    spec = _spec(local_cloud, "hostile")

    # when the backfill runs
    arn = upload_and_trigger(local_cloud, spec, digits.model_path, shards, input_dir)
    result = follow_run(local_cloud, arn, quiet_console, timeout=240)

    # then every shard succeeded, and its output sits at its own verbatim key with the model's predictions
    assert result.report["status"] == "succeeded", result.report.get("reason")
    assert result.report["shards"]["succeeded"] == len(names)
    result.outputs = download_outputs(local_cloud, spec, shards, input_dir, tmp_path / "out")
    reference = {n: digits.reference[o.name] for n, o in zip(names, originals, strict=True)}
    assert check_outputs(result, reference) == []
    assert local_cloud.wait_idle(), local_cloud.leftovers()


def test_poison_shards_are_reported_and_redrive_completes_them_once_fixed(
    local_cloud, digits, quiet_console, tmp_path
):
    # given good shards and two corrupt ones
    import shutil

    input_dir = tmp_path / "inputs"
    shutil.copytree(digits.input_dir, input_dir)
    shards = sorted(input_dir.glob("*.npy"))[:4]
    for shard in sorted(input_dir.glob("*.npy"))[4:]:
        shard.unlink()
    poison = [input_dir / "part-90000.npy", input_dir / "part-90001.npy"]
    for path in poison:
        path.write_bytes(b"this is not a numpy file")
    spec = _spec(local_cloud, "poisoned")

    # when the backfill runs
    arn = upload_and_trigger(local_cloud, spec, digits.model_path, shards + poison, input_dir)
    result = follow_run(local_cloud, arn, quiet_console, timeout=240)

    # then the good outputs complete and the run ends completed with failures, listing the bad shards
    assert result.report["status"] == "completed_with_failures", result.report.get("reason")
    assert result.report["shards"]["succeeded"] == 4
    bucket = local_cloud.outputs.data_bucket
    assert sorted(result.report["shards"]["failed_keys"]) == [
        f"s3://{bucket}/inputs/poisoned/part-90000.npy",
        f"s3://{bucket}/inputs/poisoned/part-90001.npy",
    ]
    # each with the error its worker recorded, sent to the dead-letter queue on its first failure
    failed_errors = result.report["shards"]["failed_errors"]
    assert [e["shard"] for e in failed_errors] == result.report["shards"]["failed_keys"]
    assert all(e["error_type"] == "ShardFormatError" for e in failed_errors), failed_errors
    assert all("cannot decode shard as npy" in e["error"] for e in failed_errors), failed_errors
    records = [r for log in (local_cloud.run_dir / "logs").rglob("*.log") for r in worker_records(log)]
    dead_lettered = {r["shard"] for r in records if r.get("event") == "shard_dead_lettered"}
    assert (
        sorted(s for s in dead_lettered if "/inputs/poisoned/" in s) == result.report["shards"]["failed_keys"]
    )
    assert local_cloud.wait_idle(), local_cloud.leftovers()

    # when the shards are fixed and the run is redriven with the CLI
    import numpy as np

    from spotfill.cli import main

    s3 = local_cloud.client("s3")
    fixed = {}
    for i, path in enumerate(poison):
        rows = np.load(shards[i])
        np.save(path, rows)
        s3.upload_file(str(path), bucket, f"inputs/poisoned/{path.name}")
        fixed[path.name] = digits.reference[shards[i].name]
    code = main(["redrive", result.report["run_id"], "--watch", "--endpoint-url", local_cloud.endpoint_url])

    # then the redriven run completes every shard: the fixed ones now have their outputs
    assert code == 0
    redriven = download_outputs(local_cloud, spec, poison, input_dir, tmp_path / "redriven")
    result.outputs = redriven
    assert check_outputs(result, fixed) == []
    assert local_cloud.wait_idle(), local_cloud.leftovers()


def _tfrecord_shard(path, images, keys, gzip: bool) -> None:
    """A TFRecord file of tf.train.Example records: `image` (64 floats) and `key` (bytes) per row."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip else "")
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for image, key in zip(images, keys, strict=True):
            feature = {
                "image": tf.train.Feature(float_list=tf.train.FloatList(value=image.reshape(-1).tolist())),
                "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_a_gzip_tfrecord_backfill_predicts_like_model_predict_and_reports_a_bad_record_by_feature(
    local_cloud, digits, quiet_console, tmp_path
):
    # given two GZIP TFRecord shards of the digits (feature "image", 8x8x1 floats; ids in "key"), and one
    # whose records hold the image under another feature name
    import io

    import numpy as np
    import pyarrow.parquet as pq
    import tensorflow as tf

    input_dir = tmp_path / "inputs"
    input_dir.mkdir()
    names = ["part-00000", "part-00001"]
    for name in names:
        images = np.load(digits.input_dir / f"{name}.npy")
        _tfrecord_shard(
            input_dir / f"{name}.tfrecord.gz", images, [f"{name}/{i}" for i in range(len(images))], gzip=True
        )
    bad = input_dir / "renamed.tfrecord.gz"
    with tf.io.TFRecordWriter(str(bad), tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        pixels = tf.train.Feature(float_list=tf.train.FloatList(value=[0.0] * 64))
        record = tf.train.Example(features=tf.train.Features(feature={"pixels": pixels}))
        writer.write(record.SerializeToString())
    shards = sorted(input_dir.iterdir())
    spec = manifest(
        "records",
        local_cloud.outputs.data_bucket,
        "models/records/model.keras",
        "tfrecord",
        "parquet",
        1,
        runtime="tensorflow",  # about reading records, not choosing a runtime
    )
    spec["input"]["id_column"] = "key"
    spec["input"]["tfrecord"] = {"feature": "image", "shape": [8, 8, 1], "compression": "GZIP"}

    # when the backfill runs
    arn = upload_and_trigger(local_cloud, spec, digits.model_path, shards, input_dir)
    result = follow_run(local_cloud, arn, quiet_console, timeout=240)

    # then both good shards hold model.predict of their rows with the records' keys, in record order
    assert result.report["status"] == "completed_with_failures", result.report.get("reason")
    assert result.report["shards"]["succeeded"] == 2
    s3 = local_cloud.client("s3")
    bucket = local_cloud.outputs.data_bucket
    for name in names:
        body = s3.get_object(Bucket=bucket, Key=f"outputs/records/{name}.parquet")["Body"].read()
        table = pq.read_table(io.BytesIO(body))
        expected = digits.reference[f"{name}.npy"]
        assert table.column("id").to_pylist() == [f"{name}/{i}" for i in range(len(expected))]
        predictions = np.asarray(table.column("prediction").to_pylist(), dtype=np.float32)
        np.testing.assert_allclose(predictions, expected, atol=1e-5, rtol=0)
    # and the bad shard was dead-lettered, the report naming it, its feature and the record
    assert result.report["shards"]["failed_keys"] == [f"s3://{bucket}/inputs/records/renamed.tfrecord.gz"]
    (failure,) = result.report["shards"]["failed_errors"]
    assert failure["shard"] == f"s3://{bucket}/inputs/records/renamed.tfrecord.gz"
    assert failure["error_type"] == "ShardFormatError"
    assert "record 0 has no feature 'image' (its features: ['pixels'])" in failure["error"]
    assert local_cloud.wait_idle(), local_cloud.leftovers()
