"""Shards: which objects are shards, where each one's output and error go, and how they are queued."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from spotfill_control import queues, shards
from spotfill_control.errors import InvalidSpecError, SpotfillError, TransientAwsError
from spotfill_control.setup import inputs
from spotfill_control.shards import Shard
from spotfill_control.spec import BackfillSpec

from .conftest import CONTROL_BUCKET, DATA_BUCKET, FailingClient, sample_spec


def spec(**overrides: Any) -> BackfillSpec:
    return BackfillSpec.model_validate(sample_spec(**overrides))


@pytest.mark.parametrize(
    ("input_format", "output_format", "shard_key", "expected_output_key"),
    [
        ("npy", "parquet", "inputs/digits/part-00001.npy", "outputs/digits/part-00001.parquet"),
        ("npy", "parquet", "inputs/digits/2026/11/part-7.NPY", "outputs/digits/2026/11/part-7.parquet"),
        ("jsonl", "jsonl", "inputs/digits/a.ndjson", "outputs/digits/a.jsonl"),
        ("images", "npy", "inputs/digits/batch.v2.tar", "outputs/digits/batch.v2.npy"),
        ("csv", "jsonl", "inputs/digits/x.csv", "outputs/digits/x.jsonl"),
    ],
)
def test_output_key_is_the_relative_path_with_the_output_extension(
    input_format, output_format, shard_key, expected_output_key
):
    backfill = spec(input__format=input_format, output__format=output_format)
    shard = f"s3://{DATA_BUCKET}/{shard_key}"
    assert shards.output_uri(shard, backfill) == f"s3://{DATA_BUCKET}/{expected_output_key}"


def test_error_record_goes_to_the_control_bucket_under_the_run_never_the_output_prefix():
    shard = f"s3://{DATA_BUCKET}/inputs/digits/sub/part-00001.npy"
    uri = shards.error_uri(shard, spec(), CONTROL_BUCKET, "demo-20261127060000-abcdef")
    assert uri == f"s3://{CONTROL_BUCKET}/runs/demo-20261127060000-abcdef/errors/sub/part-00001.npy.json"


def test_shard_list_paths_are_relative_to_the_list_folder_or_name_their_bucket():
    backfill = spec(input__uri=f"s3://{DATA_BUCKET}/lists/today.txt")
    near = f"s3://{DATA_BUCKET}/lists/2026/a.npy"
    far = "s3://other-bucket/deep/b.npy"
    assert shards.output_uri(near, backfill) == f"s3://{DATA_BUCKET}/outputs/digits/2026/a.parquet"
    assert (
        shards.output_uri(far, backfill) == f"s3://{DATA_BUCKET}/outputs/digits/other-bucket/deep/b.parquet"
    )


def test_two_shards_that_would_write_one_output_are_a_spec_error():
    backfill = spec(input__format="jsonl")
    inputs = [f"s3://{DATA_BUCKET}/inputs/digits/a.jsonl", f"s3://{DATA_BUCKET}/inputs/digits/a.ndjson"]
    with pytest.raises(InvalidSpecError, match=r"^input\.uri: shards .* would both write .*a\.parquet"):
        shards.output_uris(backfill, inputs)


def test_message_body_is_the_contract():
    shard = Shard(
        shard="s3://b/in/a.npy", output="s3://b/out/a.parquet", error="s3://c/runs/r/errors/a.npy.json"
    )
    assert json.loads(shard.message("r")) == {
        "run_id": "r",
        "shard": "s3://b/in/a.npy",
        "output": "s3://b/out/a.parquet",
        "error": "s3://c/runs/r/errors/a.npy.json",
    }


# ---------------------------------------------------------------------------------------------- listing, moto


@pytest.mark.aws
def test_prefix_listing_keeps_only_the_formats_extension_including_nested_folders(s3_world):
    s3_world.s3.put_object(Bucket=DATA_BUCKET, Key="inputs/digits/nested/part-9.npy", Body=b"x")
    s3_world.s3.put_object(Bucket=DATA_BUCKET, Key="inputs/digits/readme.txt", Body=b"x")
    s3_world.s3.put_object(Bucket=DATA_BUCKET, Key="inputs/digits/folder/", Body=b"")
    found = inputs.list_shards(spec().input, s3_world.s3)
    assert found == [
        f"s3://{DATA_BUCKET}/{k}" for k in sorted([*s3_world.shard_keys, "inputs/digits/nested/part-9.npy"])
    ]


@pytest.mark.aws
def test_text_shard_list_ignores_blank_lines_and_comments(s3_world):
    body = f"# today's shards\n\ns3://{DATA_BUCKET}/a/1.npy\n  s3://{DATA_BUCKET}/a/2.npy  \n"
    s3_world.s3.put_object(Bucket=DATA_BUCKET, Key="lists/today.txt", Body=body.encode())
    found = inputs.list_shards(spec(input__uri=f"s3://{DATA_BUCKET}/lists/today.txt").input, s3_world.s3)
    assert found == [f"s3://{DATA_BUCKET}/a/1.npy", f"s3://{DATA_BUCKET}/a/2.npy"]


@pytest.mark.aws
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"shards": []}', "must be a JSON array of s3:// URIs"),
        ("[1, 2]", "must be a JSON array of s3:// URIs"),
        ("[not json", "is not a valid shard list"),
        (f'["s3://{DATA_BUCKET}/a/1.npy", "s3://{DATA_BUCKET}/a/1.npy"]', "entry 2: .* is listed twice"),
        (f'["s3://{DATA_BUCKET}/a/1.parquet"]', r"entry 1: .* does not end in \.npy"),
    ],
)
def test_malformed_json_shard_list_names_input_uri(s3_world, body, reason):
    s3_world.s3.put_object(Bucket=DATA_BUCKET, Key="lists/today.json", Body=body.encode())
    with pytest.raises(InvalidSpecError, match=rf"^input\.uri: .*{reason}"):
        inputs.list_shards(spec(input__uri=f"s3://{DATA_BUCKET}/lists/today.json").input, s3_world.s3)


# ---------------------------------------------------------------------------------------------- sending


class FlakySqs:
    """Fails the entries of the given shards their first `times` sends, as SQS does under load."""

    def __init__(self, inner: Any, failing_shards: set[str], times: int):
        self.inner, self.failures_left = inner, dict.fromkeys(failing_shards, times)
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        passing, failing = [], []
        with self.lock:
            self.batches.append([json.loads(e["MessageBody"])["shard"] for e in Entries])
            for entry in Entries:
                shard = json.loads(entry["MessageBody"])["shard"]
                if self.failures_left.get(shard, 0) > 0:
                    self.failures_left[shard] -= 1
                    failing.append(entry)
                else:
                    passing.append(entry)
        response = self.inner.send_message_batch(QueueUrl=QueueUrl, Entries=passing) if passing else {}
        response["Failed"] = [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
            for e in failing
        ]
        return response


def _shards(count: int) -> list[Shard]:
    return [
        Shard(shard=f"s3://b/in/{i}.npy", output=f"s3://b/out/{i}.parquet", error=f"s3://c/e/{i}.npy.json")
        for i in range(count)
    ]


def _received_shards(sqs: Any, queue_url: str) -> list[str]:
    seen = []
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return seen
        seen.extend(json.loads(m["Body"])["shard"] for m in messages)


@pytest.mark.aws
def test_partially_failed_batches_are_resent_until_every_shard_is_queued(s3_world):
    # given 23 shards and an SQS that fails the entries of shards 3 and 12 twice each
    queue = s3_world.sqs.create_queue(QueueName="q")["QueueUrl"]
    flaky = FlakySqs(s3_world.sqs, failing_shards={"s3://b/in/3.npy", "s3://b/in/12.npy"}, times=2)
    # when the shards are sent
    sent = queues.send_shards("r", _shards(23), queue, flaky, sleep=lambda _: None)
    # then batches hold at most ten, only the failed entries were resent, and each shard is queued once
    assert sent == 23
    assert all(len(batch) <= 10 for batch in flaky.batches)
    resent = [batch for batch in flaky.batches if len(batch) == 1]
    assert sorted(resent) == [["s3://b/in/12.npy"]] * 2 + [["s3://b/in/3.npy"]] * 2
    assert sorted(_received_shards(s3_world.sqs, queue)) == sorted(s.shard for s in _shards(23))


@pytest.mark.aws
def test_an_entry_that_never_sends_fails_the_state_instead_of_being_dropped(s3_world):
    queue = s3_world.sqs.create_queue(QueueName="q")["QueueUrl"]
    flaky = FlakySqs(s3_world.sqs, failing_shards={"s3://b/in/4.npy"}, times=100)
    with pytest.raises(
        TransientAwsError,
        match=r"1 shard message\(s\) not sent after 5 attempts \(s3://b/in/4\.npy: InternalError",
    ):
        queues.send_shards("r", _shards(8), queue, flaky, sleep=lambda _: None)


@pytest.mark.aws
def test_a_refused_send_is_not_retried_as_transient(s3_world):
    queue = s3_world.sqs.create_queue(QueueName="q")["QueueUrl"]
    denied = FailingClient(s3_world.sqs, "send_message_batch", code="AccessDenied")
    with pytest.raises(SpotfillError, match="AccessDenied") as raised:
        queues.send_shards("r", _shards(3), queue, denied, sleep=lambda _: None)
    assert not isinstance(raised.value, TransientAwsError)
    assert denied.calls == 1
