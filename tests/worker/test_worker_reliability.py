"""One output per shard, poison shards to the dead-letter queue, clear errors for bad shapes and config."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from .conftest import CONTROL, RUN_ID

pytestmark = pytest.mark.worker


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def rows(seed: int, n: int = 24, width: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)


def predictions(data: bytes) -> np.ndarray:
    return np.asarray(pq.read_table(io.BytesIO(data)).column("prediction").to_pylist(), dtype=np.float32)


def test_same_shard_delivered_twice_leaves_one_correct_output_and_both_messages_deleted(
    cloud, run_worker, tabular_classifier
):
    # given two messages for one shard (at-least-once delivery)
    x = rows(1)
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/dup.npy", npy_bytes(x))
    first = cloud.send_shard("inputs/dup.npy", "parquet")
    cloud.send_shard("inputs/dup.npy", "parquet")

    # when
    run = run_worker(model_uri, "npy")

    # then one delivery writes the object; the other finds it (skipped, or its conditional put declined)
    assert cloud.keys("data-bucket", "outputs/") == ["outputs/dup.parquet"]
    np.testing.assert_allclose(
        predictions(cloud.get(first["output"])), tabular_classifier.predict(x), atol=1e-5
    )
    assert len(run.events("shard_done")) + len(run.events("shard_skipped")) == 2
    assert sum(e["written"] for e in run.events("shard_done")) == 1
    assert cloud.queue_counts() == (0, 0)


def test_shard_whose_output_exists_is_skipped_without_rewriting_it(cloud, run_worker, tabular_classifier):
    # given an output already written by an earlier delivery
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/done.npy", npy_bytes(rows(2)))
    message = cloud.send_shard("inputs/done.npy", "parquet")
    cloud.put("outputs/done.parquet", b"written before")

    # when
    run = run_worker(model_uri, "npy")

    # then the message is deleted and the object untouched
    assert cloud.get(message["output"]) == b"written before"
    assert run.events("shard_skipped")[0]["reason"] == "output exists"
    assert not run.events("shard_done")
    assert cloud.queue_counts() == (0, 0)


def test_two_workers_racing_on_one_shard_leave_exactly_one_correct_output(
    cloud, run_worker, tabular_classifier
):
    # given the same shard queued three times and two workers started together
    x = rows(3, n=400)
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/race.npy", npy_bytes(x))
    for _ in range(3):
        message = cloud.send_shard("inputs/race.npy", "parquet")
    results = []

    def work() -> None:
        results.append(run_worker(model_uri, "npy", batch_size=8))

    # when
    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    # then one object holds the right predictions, no errors, and every message is deleted
    assert [r.exit_code for r in results] == [0, 0]
    assert cloud.keys("data-bucket", "outputs/") == ["outputs/race.parquet"]
    np.testing.assert_allclose(
        predictions(cloud.get(message["output"])), tabular_classifier.predict(x), atol=1e-5
    )
    failed = [event for r in results for event in r.events("shard_failed")]
    assert not failed, failed  # with their reasons, should a race ever fail a shard
    handled = sum(len(r.events("shard_done")) + len(r.events("shard_skipped")) for r in results)
    assert handled == 3
    assert sum(e["written"] for r in results for e in r.events("shard_done")) == 1
    assert cloud.queue_counts() == (0, 0)


def test_poison_shard_leaves_error_record_and_reaches_dead_letter_queue_while_good_shards_complete(
    cloud, run_worker, tabular_classifier
):
    # given three good shards and one corrupt one, a redrive after 2 receives and a 1 s visibility
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    good = []
    for i in range(3):
        cloud.put(f"inputs/good-{i}.npy", npy_bytes(rows(10 + i)))
        good.append(cloud.send_shard(f"inputs/good-{i}.npy", "parquet"))
    cloud.put("inputs/bad.npy", b"this is not a numpy file")
    bad = cloud.send_shard("inputs/bad.npy", "parquet")

    # when the worker runs until the queue has been quiet longer than the visibility timeout
    run = run_worker(model_uri, "npy", visibility_timeout=1, exit_when_idle_seconds=2.5)

    # then the good shards have outputs, the bad one an error record and a place in the dead-letter queue
    assert run.exit_code == 0
    assert all(cloud.exists(m["output"]) for m in good)
    assert not cloud.exists(bad["output"])
    record = json.loads(cloud.get(bad["error"]))
    assert record["shard"] == bad["shard"] and record["run_id"] == RUN_ID
    assert record["error_type"] == "ShardFormatError" and "cannot decode shard as npy" in record["error"]
    assert "Traceback" in record["traceback"]
    assert bad["error"].startswith(f"s3://{CONTROL}/runs/{RUN_ID}/errors/")
    dead = cloud.visible_messages(cloud.dlq_url)
    assert [json.loads(m["Body"])["shard"] for m in dead] == [bad["shard"]]
    assert cloud.queue_counts() == (0, 0)
    assert len(run.events("shard_failed")) == 2  # one per receive, before the redrive


def test_shape_mismatch_names_shard_and_model_shapes_in_the_error_record(
    cloud, run_worker, tabular_classifier
):
    # given rows of 7 features for a model that takes 5
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/wide.npy", npy_bytes(rows(4, n=6, width=7)))
    message = cloud.send_shard("inputs/wide.npy", "parquet")

    # when
    run = run_worker(model_uri, "npy", visibility_timeout=30)

    # then
    record = json.loads(cloud.get(message["error"]))
    assert record["error_type"] == "ShapeMismatchError"
    assert "(7,)" in record["error"] and "(6, 7)" in record["error"] and "(None, 5)" in record["error"]
    assert "(None, 5)" in run.events("shard_failed")[0]["error"]
    assert not cloud.exists(message["output"])


def test_fit_to_model_error_names_both_shapes_for_images_of_the_wrong_size():
    from spotfill_worker.formats import ModelInput, ShapeMismatchError, fit_to_model

    with pytest.raises(ShapeMismatchError, match=r"\(32, 32, 3\).*\(None, 224, 224, 3\)"):
        fit_to_model(np.zeros((2, 32, 32, 3), np.float32), ModelInput((224, 224, 3), np.dtype("float32")))


def test_missing_environment_variable_stops_worker_at_start_naming_it(capsys):
    from spotfill_worker import main

    # given an environment without the queue URL
    env = {
        "SPOTFILL_RUN_ID": "r1",
        "SPOTFILL_MODEL_URI": "s3://b/m.keras",
        "SPOTFILL_INPUT_FORMAT": "npy",
    }

    # when / then
    assert main(env) == 2
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["event"] == "config_invalid" and "SPOTFILL_QUEUE_URL is required" in line["error"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SPOTFILL_INPUT_FORMAT", "xlsx"),
        ("SPOTFILL_BATCH_SIZE", "zero"),
        ("SPOTFILL_MODEL_URI", "s3://b/model.pkl"),
        ("SPOTFILL_VISIBILITY_TIMEOUT", "-5"),
    ],
)
def test_invalid_environment_variable_is_named_with_its_value(variable, value):
    from spotfill_worker.config import ConfigError, WorkerConfig

    env = {
        "SPOTFILL_RUN_ID": "r1",
        "SPOTFILL_QUEUE_URL": "https://sqs/q",
        "SPOTFILL_MODEL_URI": "s3://b/m.keras",
        "SPOTFILL_INPUT_FORMAT": "npy",
        variable: value,
    }
    with pytest.raises(ConfigError, match=variable) as error:
        WorkerConfig.from_env(env)
    assert repr(value) in str(error.value)


def test_importing_the_worker_package_does_not_import_tensorflow_or_create_clients():
    import subprocess
    import sys

    code = (
        "import sys, spotfill_worker, spotfill_worker.worker, spotfill_worker.config;"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules;"
        "assert 'boto3' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_many_shards_with_two_prefetching_receivers_each_get_exactly_one_correct_output(
    cloud, run_worker, tabular_classifier
):
    # given eight shards
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    shards = {}
    for i in range(8):
        shards[i] = rows(100 + i, n=40)
        cloud.put(f"inputs/many-{i}.npy", npy_bytes(shards[i]))
        cloud.send_shard(f"inputs/many-{i}.npy", "npy")

    # when two receiver threads download ahead of the compute loop
    run = run_worker(model_uri, "npy", output_format="npy", prefetch_shards=2)

    # then
    assert sorted(cloud.keys("data-bucket", "outputs/")) == [f"outputs/many-{i}.npy" for i in range(8)]
    for i, x in shards.items():
        output = np.load(io.BytesIO(cloud.get(f"s3://data-bucket/outputs/many-{i}.npy")))
        np.testing.assert_allclose(output, tabular_classifier.predict(x), atol=1e-5)
    assert len(run.events("shard_done")) == 8 and run.worker.shards_done == 8
    assert cloud.queue_counts() == (0, 0)


def test_heartbeat_keeps_a_slow_shard_invisible_so_it_is_not_received_twice(
    cloud, run_worker, tabular_classifier, aws_calls
):
    # given a 3 s visibility timeout, and a shard whose output write is held back until the queue has been
    # polled, and found empty, after that timeout had run out for the shard's first (and only) receive
    visibility = 3
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/slow.npy", npy_bytes(rows(20)))
    message = cloud.send_shard("inputs/slow.npy", "parquet")
    output_key = message["output"].split("/", 3)[3]
    received_at: list[float] = []
    lease_outlived = threading.Event()

    def watch(call) -> None:
        if call.operation != "ReceiveMessage" or call.status != 200:
            return
        if call.parsed.get("Messages"):
            received_at.append(call.ended)
        elif received_at and call.started > received_at[0] + visibility:
            lease_outlived.set()

    def hold_output_write(params, **_) -> None:
        if params.get("Key") == output_key and not lease_outlived.wait(timeout=120):
            raise AssertionError("no empty receive after the shard's first visibility timeout ran out")

    aws_calls.on_call.append(watch)
    cloud.s3.meta.events.register("before-parameter-build.s3.PutObject", hold_output_write)

    # when a worker with a second receiver polling the queue the whole time processes it
    run = run_worker(model_uri, "npy", visibility_timeout=visibility, prefetch_shards=2)

    # then the shard outlived its first lease (the heartbeat extended it), yet was received and predicted once
    assert lease_outlived.is_set()
    assert len(received_at) == 1, f"the shard was received {len(received_at)} times"
    extended = [
        entry
        for call in aws_calls.of("ChangeMessageVisibilityBatch")
        for entry in call.params["Entries"]
        if entry["VisibilityTimeout"] == visibility
    ]
    assert extended, "the heartbeat never extended the lease"
    done = run.events("shard_done")
    assert len(done) == 1 and done[0]["receive_count"] == 1 and done[0]["written"]
    assert not run.events("shard_skipped") and not run.events("shard_failed")
    assert cloud.queue_counts() == (0, 0)


def _receipt_handles_by_output(aws_calls) -> dict[str, list[str]]:
    handles: dict[str, list[str]] = {}
    for call in aws_calls.of("ReceiveMessage"):
        for received in call.parsed.get("Messages", []):
            handles.setdefault(json.loads(received["Body"])["output"], []).append(received["ReceiptHandle"])
    return handles


def _deleted(call) -> list[str]:
    if call.operation == "DeleteMessage":
        return [call.params["ReceiptHandle"]]
    if call.operation == "DeleteMessageBatch":
        return [entry["ReceiptHandle"] for entry in call.params["Entries"]]
    return []


def test_a_shards_message_is_deleted_only_after_its_output_is_written(
    cloud, run_worker, tabular_classifier, aws_calls
):
    # given three shards
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    messages = []
    for i in range(3):
        cloud.put(f"inputs/order-{i}.npy", npy_bytes(rows(30 + i)))
        messages.append(cloud.send_shard(f"inputs/order-{i}.npy", "parquet"))

    # when the worker processes them, every S3 and SQS call recorded in the order it completed
    run = run_worker(model_uri, "npy", prefetch_shards=2)

    # then each message was deleted, and only after the put that wrote its shard's output had succeeded
    assert len(run.events("shard_done")) == 3 and cloud.queue_counts() == (0, 0)
    handles = _receipt_handles_by_output(aws_calls)
    calls = list(aws_calls.calls)
    for message in messages:
        bucket, key = message["output"][len("s3://") :].split("/", 1)
        written = [
            i
            for i, c in enumerate(calls)
            if c.operation == "PutObject"
            and (c.params["Bucket"], c.params["Key"]) == (bucket, key)
            and c.status == 200
        ]
        deleted = [i for i, c in enumerate(calls) if set(_deleted(c)) & set(handles[message["output"]])]
        assert written and deleted, f"{key}: output puts {written}, message deletes {deleted}"
        assert written[0] < deleted[0], f"{key}: the message was deleted before its output was written"


def test_an_output_put_answering_409_conflict_is_retried_and_the_shard_completes_without_failing(
    cloud, run_worker, tabular_classifier, s3_conflicts
):
    # given a shard whose output put answers 409 ConditionalRequestConflict twice (a write racing it)
    x = rows(40)
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/conflict.npy", npy_bytes(x))
    message = cloud.send_shard("inputs/conflict.npy", "parquet")
    s3_conflicts.arm(writes=2, per_key=2)

    # when
    run = run_worker(model_uri, "npy")

    # then the put was retried, the output written once with the right predictions, and nothing failed
    assert s3_conflicts.answered == [("data-bucket", "outputs/conflict.parquet")] * 2
    assert [e["attempt"] for e in run.events("output_write_conflict")] == [1, 2]
    done = run.events("shard_done")
    assert len(done) == 1 and done[0]["written"] and done[0]["receive_count"] == 1
    assert not run.events("shard_failed") and run.worker.shards_failed == 0
    np.testing.assert_allclose(
        predictions(cloud.get(message["output"])), tabular_classifier.predict(x), atol=1e-5
    )
    assert not cloud.exists(message["error"])
    assert cloud.queue_counts() == (0, 0)


def test_an_output_put_that_keeps_answering_409_fails_the_shard_and_releases_its_message_for_redelivery(
    cloud, run_worker, tabular_classifier, s3_conflicts, aws_calls
):
    # given a shard whose output put answers 409 ConditionalRequestConflict every time
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/stuck.npy", npy_bytes(rows(41)))
    message = cloud.send_shard("inputs/stuck.npy", "parquet")
    s3_conflicts.arm(writes=1000, per_key=1000)

    # when
    run = run_worker(model_uri, "npy")

    # then after a bounded number of puts per receive the shard fails as any error does: an error record, no
    # output (the worker may have received it again before it went idle: each receive fails the same way)
    from spotfill_worker.worker import CONFLICT_ATTEMPTS, RETRY_BACKOFF

    failed = run.events("shard_failed")
    assert failed and all("OutputWriteConflict" in f["error"] and "409" in f["error"] for f in failed)
    record = json.loads(cloud.get(message["error"]))
    assert record["error_type"] == "OutputWriteConflict"
    assert len(s3_conflicts.answered) == CONFLICT_ATTEMPTS * len(failed)
    assert not cloud.exists(message["output"])
    # and its message was never deleted: it was made visible again after the retry backoff, not left to wait
    # out its visibility timeout, and SQS delivers it again (or, past the queue's 2 receives, redrives it to
    # the dead-letter queue)
    assert not any(_deleted(c) for c in aws_calls.calls)
    assert failed[0]["retry_in"] == RETRY_BACKOFF
    deadline = time.monotonic() + 30
    while not (again := cloud.visible_messages() or cloud.visible_messages(cloud.dlq_url)) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert [json.loads(m["Body"]) for m in again] == [message]


def test_clients_are_made_on_first_use_from_one_session_with_adaptive_retries_and_the_environment_endpoint(
    monkeypatch,
):
    from spotfill_worker.clients import Clients

    # given an emulator endpoint in the environment
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    clients = Clients()
    assert clients._s3 is None and clients._sqs is None

    # when / then
    for client in (clients.s3, clients.sqs):
        assert client.meta.endpoint_url == "http://127.0.0.1:4566"
        assert client.meta.config.retries["mode"] == "adaptive"
    assert clients.s3 is clients.s3
    # and both come from one session, whose service data (endpoints, partitions) botocore parsed once
    assert clients.s3._loader is clients.sqs._loader


def test_an_output_probe_answering_403_fails_the_shard_instead_of_counting_the_output_as_missing(
    cloud, run_worker, tabular_classifier
):
    from botocore.awsrequest import AWSResponse

    # given a shard whose output probe (HeadObject) answers 403, as S3 answers a missing key to a caller
    # without s3:ListBucket on the bucket (the task role grants it: template.yaml, FindOutputs)
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/forbidden.npy", npy_bytes(rows(50)))
    message = cloud.send_shard("inputs/forbidden.npy", "parquet")
    output_key = message["output"].split("/", 3)[3]

    def note_key(params, context, **_):
        context["probed_key"] = params.get("Key")

    def forbidden(context, **_):
        if context.get("probed_key") == output_key:
            error = {"Code": "403", "Message": "Forbidden"}
            return AWSResponse(message["output"], 403, {}, None), {
                "Error": error,
                "ResponseMetadata": {"HTTPStatusCode": 403},
            }
        return None

    cloud.s3.meta.events.register("before-parameter-build.s3.HeadObject", note_key)
    cloud.s3.meta.events.register("before-call.s3.HeadObject", forbidden)

    # when
    run = run_worker(model_uri, "npy")

    # then the shard is not processed as if its output were missing: it fails (on each receive before the
    # worker went idle), and its message stays queued (or, past the queue's 2 receives, dead-lettered)
    failed = run.events("shard_failed")
    assert failed and all("403" in f["error"] for f in failed)
    assert not run.events("shard_done") and not run.events("shard_skipped")
    assert not cloud.exists(message["output"])
    assert json.loads(cloud.get(message["error"]))["error_type"] == "ClientError"
    assert sum(cloud.queue_counts()) + len(cloud.visible_messages(cloud.dlq_url)) == 1
