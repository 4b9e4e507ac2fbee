"""TFRecord input: `input.tfrecord` is validated strictly, picks the shards and reaches the worker."""

from __future__ import annotations

import re
from typing import Any

import pytest
from spotfill_control import shards
from spotfill_control.errors import InvalidSpecError
from spotfill_control.fleet.cluster import worker_environment
from spotfill_control.run import RunState
from spotfill_control.setup import inputs
from spotfill_control.setup.triggers import spec_from_document
from spotfill_control.spec import BackfillSpec

from .conftest import CONTROL_BUCKET, DATA_BUCKET, sample_spec

TFRECORD = {"feature": "image", "shape": [8, 8, 1]}


def tfrecord_spec(**tfrecord: Any) -> dict[str, Any]:
    return sample_spec(input__format="tfrecord", input__tfrecord={**TFRECORD, **tfrecord})


def test_tfrecord_input_gets_its_defaults_float32_and_no_compression():
    spec = spec_from_document(tfrecord_spec())
    assert spec.input.format == "tfrecord"
    options = spec.input.tfrecord
    assert (options.feature, options.shape, options.dtype, options.compression) == (
        "image",
        [8, 8, 1],
        "float32",
        None,
    )
    assert spec.input.extensions == (".tfrecord", ".tfrecords")
    gzip = spec_from_document(tfrecord_spec(compression="GZIP"))
    assert gzip.input.extensions == (".tfrecord.gz", ".tfrecords.gz")


def _with(document: dict[str, Any], **input_fields: Any) -> dict[str, Any]:
    document["input"].update(input_fields)
    return document


# (case id, spec document, field path the message must name, reason it must give)
INVALID = [
    ("missing-options", sample_spec(input__format="tfrecord"), "input.tfrecord", "is required with"),
    ("options-for-npy", sample_spec(input__tfrecord=TFRECORD), "input.tfrecord", "tfrecord only, not npy"),
    ("missing-feature", sample_spec(input__format="tfrecord", input__tfrecord={"shape": [8]}),
     "input.tfrecord.feature", "required field is missing"),
    ("missing-shape", sample_spec(input__format="tfrecord", input__tfrecord={"feature": "image"}),
     "input.tfrecord.shape", "required field is missing"),
    ("empty-feature", tfrecord_spec(feature=""), "input.tfrecord.feature", "at least 1 character"),
    ("empty-shape", tfrecord_spec(shape=[]), "input.tfrecord.shape", "at least 1 item"),
    ("zero-dimension", tfrecord_spec(shape=[28, 0]), "input.tfrecord.shape", "at least 1, got [28, 0]"),
    ("text-dimension", tfrecord_spec(shape=["28", 28]), "input.tfrecord.shape[0]", "valid integer"),
    ("bool-dimension", tfrecord_spec(shape=[True]), "input.tfrecord.shape[0]", "valid integer"),
    ("float-dimension", tfrecord_spec(shape=[28.0]), "input.tfrecord.shape[0]", "valid integer"),
    ("huge-shape", tfrecord_spec(shape=[100_000, 100_000]), "input.tfrecord.shape", "values per record"),
    ("float64", tfrecord_spec(dtype="float64"), "input.tfrecord.dtype", "'float32' or 'int64'"),
    ("lower-case-gzip", tfrecord_spec(compression="gzip"), "input.tfrecord.compression", "'GZIP'"),
    ("unknown-field", tfrecord_spec(id_feature="key"), "input.tfrecord.id_feature", "unknown field"),
    ("id-is-the-feature", _with(tfrecord_spec(), id_column="image"), "input.id_column",
     "names the feature the model reads"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("document", "field", "reason"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_tfrecord_options_are_refused_naming_the_field(document, field, reason):
    with pytest.raises(InvalidSpecError) as raised:
        spec_from_document(document)
    message = str(raised.value)
    assert re.search(rf"(^|\. ){re.escape(field)}:", message), message
    assert reason in message


@pytest.mark.parametrize(
    ("compression", "shard_key", "expected_output_key"),
    [
        (None, "inputs/digits/part-1.tfrecord", "outputs/digits/part-1.parquet"),
        (None, "inputs/digits/day/part-2.TFRecords", "outputs/digits/day/part-2.parquet"),
        ("GZIP", "inputs/digits/part-3.tfrecord.gz", "outputs/digits/part-3.parquet"),
        ("GZIP", "inputs/digits/part-4.tfrecords.gz", "outputs/digits/part-4.parquet"),
    ],
)
def test_tfrecord_output_key_drops_the_whole_extension(compression, shard_key, expected_output_key):
    spec = BackfillSpec.model_validate(tfrecord_spec(compression=compression))
    shard = f"s3://{DATA_BUCKET}/{shard_key}"
    assert shards.output_uri(shard, spec) == f"s3://{DATA_BUCKET}/{expected_output_key}"
    namer = shards.ShardNamer(spec.input, spec.output, CONTROL_BUCKET, "run-1")
    assert namer.ref(shard, skipped=False).output == shards.output_uri(shard, spec)


@pytest.mark.aws
@pytest.mark.parametrize(
    ("compression", "expected"),
    [(None, ["a.tfrecord", "b.tfrecords"]), ("GZIP", ["c.tfrecord.gz", "d.tfrecords.gz"])],
)
def test_prefix_listing_keeps_the_shards_of_the_configured_compression(s3_world, compression, expected):
    for name in ("a.tfrecord", "b.tfrecords", "c.tfrecord.gz", "d.tfrecords.gz", "e.gz", "f.npy"):
        s3_world.s3.put_object(Bucket=DATA_BUCKET, Key=f"inputs/records/{name}", Body=b"x")
    document = tfrecord_spec(compression=compression)
    document["input"]["uri"] = f"s3://{DATA_BUCKET}/inputs/records/"
    spec = BackfillSpec.model_validate(document)
    found = inputs.list_shards(spec.input, s3_world.s3)
    assert found == [f"s3://{DATA_BUCKET}/inputs/records/{name}" for name in expected]


@pytest.mark.aws
def test_a_shard_list_entry_of_the_other_compression_is_refused_naming_the_extensions(s3_world):
    listing = f"s3://{DATA_BUCKET}/lists/records.txt"
    s3_world.s3.put_object(
        Bucket=DATA_BUCKET, Key="lists/records.txt", Body=f"s3://{DATA_BUCKET}/in/a.tfrecord\n".encode()
    )
    document = tfrecord_spec(compression="GZIP")
    document["input"]["uri"] = listing
    with pytest.raises(InvalidSpecError, match=r"does not end in \.tfrecord\.gz or \.tfrecords\.gz"):
        inputs.list_shards(BackfillSpec.model_validate(document).input, s3_world.s3)


@pytest.mark.parametrize(
    ("tfrecord", "expected"),
    [
        (TFRECORD, {"SPOTFILL_TFRECORD_FEATURE": "image", "SPOTFILL_TFRECORD_SHAPE": "8,8,1",
                    "SPOTFILL_TFRECORD_DTYPE": "float32"}),
        ({"feature": "pixels", "shape": [64], "dtype": "int64", "compression": "GZIP"},
         {"SPOTFILL_TFRECORD_FEATURE": "pixels", "SPOTFILL_TFRECORD_SHAPE": "64",
          "SPOTFILL_TFRECORD_DTYPE": "int64", "SPOTFILL_TFRECORD_COMPRESSION": "GZIP"}),
    ],
)  # fmt: skip
def test_worker_environment_carries_the_tfrecord_options_the_worker_reads(tfrecord, expected):
    from spotfill_worker.config import WorkerConfig

    document = sample_spec(input__format="tfrecord", input__tfrecord=tfrecord, input__id_column="key")
    run = RunState(run_id="run-1", spec=BackfillSpec.model_validate(document))
    env = worker_environment(run, "https://sqs.example/queue")
    assert {k: v for k, v in env.items() if k.startswith("SPOTFILL_TFRECORD_")} == expected
    config = WorkerConfig.from_env(env)
    assert config.id_column == "key"
    assert config.tfrecord.model_dump(mode="json") == {
        "feature": tfrecord["feature"],
        "shape": tfrecord["shape"],
        "dtype": tfrecord.get("dtype", "float32"),
        "compression": tfrecord.get("compression", "none"),
    }


def test_npy_spec_sets_no_tfrecord_variables():
    run = RunState(run_id="run-1", spec=BackfillSpec.model_validate(sample_spec()))
    assert not [k for k in worker_environment(run, "https://sqs.example/q") if "TFRECORD" in k]
