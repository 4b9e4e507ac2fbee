"""TFRecord shards (tf.train.Example records) predict like model.predict; bad records are poison shards."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.worker

ATOL = 1e-5
ROWS = 37  # not a multiple of the batch size (16) nor of the parse batch (patched to 16 below)


def digits(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    """8x8x1 images with values 0..16, as scikit-learn's digits hold them (the digits CNN's input)."""
    return np.random.default_rng(seed).integers(0, 17, size=(rows, 8, 8, 1)).astype(np.float32)


def example(**features: Any) -> bytes:
    """One serialized tf.train.Example; each value is a list of floats, ints or bytes (its list kind)."""
    import tensorflow as tf

    def feature(values: Any) -> tf.train.Feature:
        values = list(values)
        if values and isinstance(values[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if values and isinstance(values[0], (int, np.integer)):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    return tf.train.Example(
        features=tf.train.Features(feature={k: feature(v) for k, v in features.items()})
    ).SerializeToString()


def tfrecord_file(records: list[bytes], tmp_path: Path, gzip: bool = False) -> bytes:
    """The bytes of a TFRecord file TensorFlow's own writer makes of ``records``."""
    import tensorflow as tf

    path = tmp_path / f"records-{len(list(tmp_path.iterdir()))}.tfrecord"
    options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip else "")
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for record in records:
            writer.write(record)
    return path.read_bytes()


def image_records(x: np.ndarray, ids: list[Any] | None = None, feature: str = "image") -> list[bytes]:
    records = []
    for i, row in enumerate(x):
        values = row.reshape(-1)
        values = values.tolist() if values.dtype.kind == "f" else [int(v) for v in values]
        fields: dict[str, Any] = {feature: values}
        if ids is not None:
            fields["key"] = [ids[i].encode() if isinstance(ids[i], str) else ids[i]]
        records.append(example(**fields))
    return records


@pytest.fixture(autouse=True)
def small_parse_batches(monkeypatch):
    """Several tf.io.parse_example batches per shard, the last one partial, as a large shard has."""
    from spotfill_worker import formats

    monkeypatch.setattr(formats, "TFRECORD_PARSE_BATCH", 16)


def read_parquet(data: bytes):
    return pq.read_table(io.BytesIO(data))


def assert_matches_model(table, expected: np.ndarray, ids: list) -> None:
    assert table.column("id").to_pylist() == ids
    predictions = np.asarray(table.column("prediction").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(predictions, expected, atol=ATOL)
    assert table.column("top_class").to_pylist() == expected.argmax(axis=1).tolist()


# ----------------------------------------------------------------------------------------- the worker loop


@pytest.mark.parametrize("gzip", [False, True], ids=["uncompressed", "gzip"])
def test_tfrecord_shard_predicts_like_model_predict_with_ids_from_the_id_feature(
    cloud, run_worker, digits_cnn, tmp_path, gzip
):
    # given 37 tf.train.Example records holding an 8x8x1 float image and a string key each
    x = digits()
    ids = [f"digit-{i:03d}" for i in range(ROWS)]
    key = "inputs/part-0.tfrecord.gz" if gzip else "inputs/part-0.tfrecord"
    model_uri = cloud.put("models/digits.keras", digits_cnn.path.read_bytes())
    cloud.put(key, tfrecord_file(image_records(x, ids), tmp_path, gzip=gzip))
    message = cloud.send_shard(key, "parquet")

    # when the worker drains the queue, reading feature "image" of shape 8x8x1 and ids from "key"
    run = run_worker(
        model_uri,
        "tfrecord",
        id_column="key",
        tfrecord_feature="image",
        tfrecord_shape="8,8,1",
        tfrecord_compression="GZIP" if gzip else "none",
    )

    # then the output holds model.predict of the same rows, in record order, with the records' keys
    assert run.exit_code == 0
    assert_matches_model(read_parquet(cloud.get(message["output"])), digits_cnn.predict(x), ids)
    assert run.events("shard_done")[0]["rows"] == ROWS
    assert cloud.queue_counts() == (0, 0)


def test_int64_flat_feature_is_reshaped_to_the_model_input_and_int_ids_are_kept(
    cloud, run_worker, digits_cnn, tmp_path
):
    # given records whose "pixels" is an int64_list of 64 values and whose "key" is an int64
    x = digits(seed=1)
    ids = [1000 + i for i in range(ROWS)]
    records = image_records(x.astype(np.int64).reshape(ROWS, 64), ids, feature="pixels")
    model_uri = cloud.put("models/digits.keras", digits_cnn.path.read_bytes())
    cloud.put("inputs/flat.tfrecords", tfrecord_file(records, tmp_path))
    message = cloud.send_shard("inputs/flat.tfrecords", "jsonl")

    # when
    run = run_worker(
        model_uri,
        "tfrecord",
        output_format="jsonl",
        id_column="key",
        tfrecord_feature="pixels",
        tfrecord_shape="64",
        tfrecord_dtype="int64",
    )

    # then the flat rows were reshaped (row-major) to 8x8x1 and cast to the model's float32
    assert run.exit_code == 0
    lines = [json.loads(line) for line in cloud.get(message["output"]).decode().splitlines()]
    assert [line["id"] for line in lines] == ids
    np.testing.assert_allclose(
        np.asarray([line["prediction"] for line in lines]), digits_cnn.predict(x), atol=ATOL
    )


def test_without_an_id_feature_the_id_is_the_record_index(cloud, run_worker, digits_cnn, tmp_path):
    x = digits(seed=2)
    model_uri = cloud.put("models/digits.keras", digits_cnn.path.read_bytes())
    cloud.put("inputs/p.tfrecord", tfrecord_file(image_records(x), tmp_path))
    message = cloud.send_shard("inputs/p.tfrecord", "parquet")

    run_worker(model_uri, "tfrecord", tfrecord_feature="image", tfrecord_shape="8,8,1")

    assert_matches_model(read_parquet(cloud.get(message["output"])), digits_cnn.predict(x), list(range(ROWS)))


def test_a_corrupt_tfrecord_shard_goes_to_the_dead_letter_queue_at_once_saying_why(
    cloud, run_worker, digits_cnn, tmp_path
):
    # given a good shard and one whose second record's bytes were damaged (its CRC no longer matches)
    good_x = digits(rows=3)
    data = bytearray(tfrecord_file(image_records(digits(rows=3)), tmp_path))
    first_length = int.from_bytes(data[:8], "little")
    data[8 + 4 + first_length + 4 + 8 + 4 + 10] ^= 0xFF  # a byte inside record 1's payload
    model_uri = cloud.put("models/digits.keras", digits_cnn.path.read_bytes())
    cloud.put("inputs/good.tfrecord", tfrecord_file(image_records(good_x), tmp_path))
    good = cloud.send_shard("inputs/good.tfrecord", "parquet")
    cloud.put("inputs/corrupt.tfrecord", bytes(data))
    poison = cloud.send_shard("inputs/corrupt.tfrecord", "parquet")

    # when the worker runs with the run's dead-letter queue
    run = run_worker(
        model_uri,
        "tfrecord",
        tfrecord_feature="image",
        tfrecord_shape="8,8,1",
        visibility_timeout=300,
        dead_letter_queue_url=cloud.dlq_url,
    )

    # then the good shard is predicted, the corrupt one dead-lettered on its first failure with its reason
    assert run.exit_code == 0
    assert_matches_model(read_parquet(cloud.get(good["output"])), digits_cnn.predict(good_x), [0, 1, 2])
    assert not cloud.exists(poison["output"])
    assert [e["shard"] for e in run.events("shard_dead_lettered")] == [poison["shard"]]
    assert [json.loads(m["Body"]) for m in cloud.visible_messages(cloud.dlq_url)] == [poison]
    record = json.loads(cloud.get(poison["error"]))
    assert record["shard"] == poison["shard"] and record["error_type"] == "ShardFormatError"
    assert "shard is not an uncompressed TFRecord file" in record["error"]
    assert "corrupted record" in record["error"]


# ----------------------------------------------------------------------------------------- decoding errors


def _decode(data: bytes, id_column: str | None = None, **options: Any):
    from spotfill_worker.config import InputFormat, TFRecordOptions
    from spotfill_worker.formats import ModelInput, decode

    tfrecord = TFRecordOptions.model_validate({"feature": "image", "shape": (8, 8, 1), **options})
    return decode(
        data, InputFormat.TFRECORD, ModelInput((8, 8, 1), np.dtype("float32")), id_column, tfrecord=tfrecord
    )


def _records_with_bad_row(bad: bytes, rows: int = 20, at: int = 17) -> list[bytes]:
    records = image_records(digits(rows=rows), [f"k{i}" for i in range(rows)])
    records[at] = bad
    return records


@pytest.mark.parametrize(
    ("records", "options", "id_column", "error_type", "says"),
    [
        (
            _records_with_bad_row(example(pixels=[1.0] * 64, key=[b"k17"])),
            {},
            None,
            "ShardFormatError",
            "record 17 has no feature 'image' (its features: ['key', 'pixels'])",
        ),
        (
            _records_with_bad_row(example(image=[1.0] * 60, key=[b"k17"])),
            {},
            None,
            "ShardFormatError",
            "record 17: feature 'image' holds 60 values, but input.tfrecord.shape [8, 8, 1] needs 64",
        ),
        (
            _records_with_bad_row(example(image=[1] * 64, key=[b"k17"])),
            {},
            None,
            "ShardFormatError",
            "record 17: feature 'image' is an int64_list, but input.tfrecord.dtype float32 reads float_list",
        ),
        (
            image_records(digits(rows=3), [b"a", b"b", b"c"]),
            {"dtype": "int64"},
            None,
            "ShardFormatError",
            "record 0: feature 'image' is a float_list, but input.tfrecord.dtype int64 reads int64_list",
        ),
        (
            _records_with_bad_row(example(image=[1.0] * 64)),
            {},
            "key",
            "ShardFormatError",
            "record 17 has no id feature 'key'",
        ),
        (
            _records_with_bad_row(example(pixels=[1.0] * 64), at=0),
            {},
            "key",
            "ShardFormatError",
            "record 0 has no feature 'image' (its features: ['pixels'])",
        ),
        (
            _records_with_bad_row(example(image=[1.0] * 64, key=[b"a", b"b"])),
            {},
            "key",
            "ShardFormatError",
            "record 17: id feature 'key' holds 2 values, not 1",
        ),
        (
            _records_with_bad_row(example(image=[1.0] * 64, key=[17])),
            {},
            "key",
            "ShardFormatError",
            "record 17: id feature 'key' is an int64_list, but record 0 holds it as a bytes_list",
        ),
        (
            _records_with_bad_row(b"\xff\xff not a protocol buffer"),
            {},
            None,
            "ShardFormatError",
            "record 17 is not a tf.train.Example",
        ),
        (
            image_records(digits(rows=3)),
            {"shape": (64, 1)},
            None,
            "ShapeMismatchError",
            "the model expects input shape (None, 8, 8, 1)",
        ),
    ],
    ids=[
        "missing-feature",
        "wrong-size",
        "int64-read-as-float32",
        "float-read-as-int64",
        "missing-id",
        "first-record-lacks-feature-and-id",
        "two-ids",
        "id-of-another-kind",
        "not-an-example",
        "shape-does-not-fit-model",
    ],
)
def test_bad_records_are_poison_errors_naming_the_record_and_the_feature(
    tmp_path, records, options, id_column, error_type, says
):
    from spotfill_worker.worker import POISON_ERRORS

    with pytest.raises(POISON_ERRORS) as raised:
        _decode(tfrecord_file(records, tmp_path), id_column, **options)
    assert type(raised.value).__name__ == error_type
    assert says in str(raised.value)


@pytest.mark.parametrize(
    ("gzip_file", "compression", "says"),
    [
        (False, "GZIP", "shard is not a GZIP-compressed TFRecord file"),
        (True, "none", "shard is not an uncompressed TFRecord file"),
    ],
)
def test_a_file_of_the_other_compression_is_a_format_error(tmp_path, gzip_file, compression, says):
    from spotfill_worker.formats import ShardFormatError

    data = tfrecord_file(image_records(digits(rows=2)), tmp_path, gzip=gzip_file)
    with pytest.raises(ShardFormatError, match=says):
        _decode(data, compression=compression)


def test_a_truncated_file_is_a_format_error(tmp_path):
    from spotfill_worker.formats import ShardFormatError

    data = tfrecord_file(image_records(digits(rows=2)), tmp_path)
    with pytest.raises(ShardFormatError, match=r"shard is not an uncompressed TFRecord file: .*truncated"):
        _decode(data[:-7])


def test_a_file_of_no_records_is_no_rows(tmp_path):
    rows = _decode(tfrecord_file([], tmp_path), "key")
    assert rows.features.shape == (0, 8, 8, 1) and rows.ids == []


# ----------------------------------------------------------------------------------- configuration, pre-check


def test_worker_config_needs_the_feature_and_shape_for_tfrecord_input():
    from spotfill_worker.config import ConfigError, WorkerConfig

    base = {
        "SPOTFILL_RUN_ID": "r",
        "SPOTFILL_QUEUE_URL": "q",
        "SPOTFILL_MODEL_URI": "s3://b/m.keras",
        "SPOTFILL_INPUT_FORMAT": "tfrecord",
    }
    with pytest.raises(
        ConfigError, match="SPOTFILL_TFRECORD_FEATURE and SPOTFILL_TFRECORD_SHAPE must be set"
    ):
        WorkerConfig.from_env(base)
    with pytest.raises(ConfigError, match=r"SPOTFILL_TFRECORD_SHAPE .*comma-separated.*\(got '28x28'\)"):
        WorkerConfig.from_env(
            {**base, "SPOTFILL_TFRECORD_FEATURE": "image", "SPOTFILL_TFRECORD_SHAPE": "28x28"}
        )
    with pytest.raises(ConfigError, match=r"SPOTFILL_TFRECORD_SHAPE .*at least 1.*\(got '28,0'\)"):
        WorkerConfig.from_env(
            {**base, "SPOTFILL_TFRECORD_FEATURE": "image", "SPOTFILL_TFRECORD_SHAPE": "28,0"}
        )
    config = WorkerConfig.from_env(
        {**base, "SPOTFILL_TFRECORD_FEATURE": "image", "SPOTFILL_TFRECORD_SHAPE": " 28, 28,1"}
    )
    assert config.tfrecord.shape == (28, 28, 1) and config.tfrecord.compression.value == "none"


def test_check_model_and_sample_reads_a_tfrecord_sample_with_the_specs_options(digits_cnn, tmp_path):
    from spotfill_worker.model import SampleMismatchError, check_model_and_sample

    sample = tmp_path / "sample.tfrecord.gz"
    sample.write_bytes(tfrecord_file(image_records(digits(rows=5)), tmp_path, gzip=True))
    options = {"feature": "image", "shape": [8, 8, 1], "dtype": "float32", "compression": "GZIP"}

    model_input = check_model_and_sample(digits_cnn.path, sample, "tfrecord", tfrecord=options)
    assert model_input.shape == (None, 8, 8, 1)

    with pytest.raises(SampleMismatchError) as raised:
        check_model_and_sample(digits_cnn.path, sample, "tfrecord", tfrecord={**options, "feature": "img"})
    message = str(raised.value)
    assert message.startswith("sample shard sample.tfrecord.gz does not fit model digits.keras")
    assert "record 0 has no feature 'img'" in message
