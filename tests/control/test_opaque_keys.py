"""S3 keys are opaque: every valid key survives the control plane's and the worker's URI handling verbatim.

One table of hostile keys is run through both ways to split an ``s3://`` URI (the control plane's
``shards.split_s3_uri`` and the worker's ``S3Uri.parse``: the worker image does not ship
spotfill_control), and through shard listing and output/error-key derivation in moto.
"""

from __future__ import annotations

from typing import Any

import pytest
from spotfill_control import shards
from spotfill_control.setup import inputs
from spotfill_control.spec import INPUT_EXTENSIONS, TFRECORD_GZIP_EXTENSIONS, BackfillSpec
from spotfill_worker.clients import S3Uri

from .conftest import CONTROL_BUCKET, DATA_BUCKET, sample_spec

RUN_ID = "demo-20261127060000-abcdef"

# (key under inputs/digits/, the output key's part after outputs/digits/): the stem keeps every character.
HOSTILE_KEYS = [
    ("with space.npy", "with space.parquet"),
    ("frag#ment.npy", "frag#ment.parquet"),
    ("query?x=1&y=2.npy", "query?x=1&y=2.parquet"),
    ("percent%20not-decoded%.npy", "percent%20not-decoded%.parquet"),
    ("plus+sign.npy", "plus+sign.parquet"),
    ("naïve-日本語-😀.npy", "naïve-日本語-😀.parquet"),
    ("/double-slash.npy", "/double-slash.parquet"),
    ("trailing space /part.npy", "trailing space /part.parquet"),
    ("semi;colon,comma=eq@at:colon.npy", "semi;colon,comma=eq@at:colon.parquet"),
    ("#?%+ all.npy", "#?%+ all.parquet"),
]

WHOLE_KEYS = [f"inputs/digits/{key}" for key, _ in HOSTILE_KEYS] + [
    "/leading-slash.npy",
    "a//b///c.npy",
    "ends with spaces  ",
    "?",
    "#",
]


def spec(**overrides: Any) -> BackfillSpec:
    return BackfillSpec.model_validate(sample_spec(**overrides))


@pytest.mark.parametrize("key", WHOLE_KEYS)
def test_control_plane_and_worker_split_an_s3_uri_into_the_same_verbatim_bucket_and_key(key):
    # given a URI whose key holds characters a URL parser would cut, decode or strip
    uri = f"s3://{DATA_BUCKET}/{key}"

    # when both sides split it
    control = shards.split_s3_uri(uri)
    worker = S3Uri.parse(uri)

    # then both keep the key exactly, and the worker's URI prints back unchanged
    assert control == (DATA_BUCKET, key)
    assert (worker.bucket, worker.key) == (DATA_BUCKET, key)
    assert str(worker) == uri


@pytest.mark.parametrize(
    "uri", ["", "s3://", "s3://bucket", "s3://bucket/", "s3:///key", "https://b/k", "b/k"]
)
def test_worker_refuses_a_uri_without_an_s3_scheme_bucket_and_key(uri):
    with pytest.raises(ValueError, match="not an s3://bucket/key URI"):
        S3Uri.parse(uri)


@pytest.mark.parametrize(("key", "output"), HOSTILE_KEYS)
def test_output_and_error_keys_keep_a_hostile_shard_key_verbatim(key, output):
    # given a shard with a hostile key under the input prefix
    backfill = spec()
    shard = f"s3://{DATA_BUCKET}/inputs/digits/{key}"

    # when its output and error URIs are derived (the per-shard functions and the streaming namer)
    namer = shards.ShardNamer(backfill.input, backfill.output, CONTROL_BUCKET, RUN_ID)
    ref = namer.ref(shard, skipped=False)

    # then both keep every character of the key, and the worker splits them back to the same keys
    assert shards.output_uri(shard, backfill) == ref.output == f"s3://{DATA_BUCKET}/outputs/digits/{output}"
    error = shards.error_uri(shard, backfill, CONTROL_BUCKET, RUN_ID)
    assert error == ref.error == f"s3://{CONTROL_BUCKET}/runs/{RUN_ID}/errors/{key}.json"
    assert S3Uri.parse(ref.output).key == f"outputs/digits/{output}"
    assert S3Uri.parse(ref.error).key == f"runs/{RUN_ID}/errors/{key}.json"


@pytest.mark.aws
def test_prefix_listing_finds_every_hostile_key_and_its_output_key_round_trips_through_s3(s3_world):
    # given shards with hostile keys in S3
    backfill = spec()
    for key, _ in HOSTILE_KEYS:
        s3_world.s3.put_object(Bucket=DATA_BUCKET, Key=f"inputs/digits/{key}", Body=b"x")

    # when the input prefix is listed and each output is written where its URI says
    found = inputs.list_shards(backfill.input, s3_world.s3)
    for shard in found:
        location = S3Uri.parse(shards.output_uri(shard, backfill))
        s3_world.s3.put_object(Bucket=location.bucket, Key=location.key, Body=b"y")

    # then every hostile shard was found, and the outputs listed back are exactly the derived ones
    expected = {f"s3://{DATA_BUCKET}/inputs/digits/{key}" for key, _ in HOSTILE_KEYS}
    assert expected <= set(found)
    derived = {shards.output_uri(s, backfill) for s in found}
    assert {f"s3://{DATA_BUCKET}/outputs/digits/{output}" for _, output in HOSTILE_KEYS} <= derived
    assert inputs.existing_among(derived, backfill.output, s3_world.s3) == derived


def test_the_model_error_record_key_can_be_no_shards_error_record_key():
    # a shard's error key ends in its input extension and ".json"; the model's ends in "model-load.json"
    key = shards.model_error_key(RUN_ID)
    assert key == f"runs/{RUN_ID}/errors/model-load.json"
    every = {**INPUT_EXTENSIONS, "tfrecord (GZIP)": TFRECORD_GZIP_EXTENSIONS}
    for fmt, extensions in every.items():
        for extension in extensions:
            assert not "model-load".endswith(extension), fmt
