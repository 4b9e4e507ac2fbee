"""Every input and output format round-trips through the worker, and its predictions equal model.predict."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from .conftest import DATA

pytestmark = pytest.mark.worker

ATOL = 1e-5
ROWS = 37  # not a multiple of the batch size (16): the padded last batch is exercised too


def features(rows: int = ROWS, width: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def read_parquet(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def assert_classifier_table(table: pa.Table, expected: np.ndarray, ids: list) -> None:
    assert table.column("id").to_pylist() == ids
    predictions = np.asarray(table.column("prediction").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(predictions, expected, atol=ATOL)
    assert table.column("top_class").to_pylist() == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose(table.column("top_probability").to_numpy(), expected.max(axis=1), atol=ATOL)


def tabular_shard(fmt: str, x: np.ndarray, ids: list[str] | None) -> bytes:
    columns = {f"f{i}": x[:, i] for i in range(x.shape[1])}
    if fmt == "npy":
        return npy_bytes(x)
    if fmt == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, x=x, row_id=np.asarray(ids))
        return buffer.getvalue()
    if fmt == "parquet":
        buffer = io.BytesIO()
        pq.write_table(pa.table({"row_id": ids, **columns}), buffer)
        return buffer.getvalue()
    if fmt == "csv":
        buffer = io.BytesIO()
        pacsv.write_csv(pa.table({"row_id": ids, **columns}), buffer)
        return buffer.getvalue()
    if fmt == "jsonl":
        lines = [json.dumps({"row_id": i, "features": row.tolist()}) for i, row in zip(ids, x, strict=True)]
        return "\n".join(lines).encode()
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["npy", "npz", "parquet", "csv", "jsonl"])
def test_tabular_input_formats_predict_like_model_predict_and_carry_ids(
    fmt, cloud, run_worker, tabular_classifier
):
    # given a shard of 37 rows in this format, with an id column where the format has one
    x = features()
    ids = [f"row-{i:03d}" for i in range(ROWS)]
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put(f"inputs/part-0.{fmt}", tabular_shard(fmt, x, ids))
    message = cloud.send_shard(f"inputs/part-0.{fmt}", "parquet")

    # when the worker drains the queue
    run = run_worker(model_uri, fmt, id_column=None if fmt == "npy" else "row_id")

    # then one Parquet output holds the model's predictions, the ids (row index for .npy) and top classes
    assert run.exit_code == 0
    expected_ids = list(range(ROWS)) if fmt == "npy" else ids
    assert_classifier_table(
        read_parquet(cloud.get(message["output"])), tabular_classifier.predict(x), expected_ids
    )
    assert cloud.queue_counts() == (0, 0)
    assert run.events("shard_done")[0]["rows"] == ROWS


def test_csv_without_id_column_uses_row_index_and_flat_rows_fill_image_model(cloud, run_worker, digits_cnn):
    # given 64 pixel columns per row and a CNN that takes 8x8x1 images
    x = np.random.default_rng(5).uniform(0, 16, size=(20, 64)).astype(np.float32)
    buffer = io.BytesIO()
    pacsv.write_csv(pa.table({f"p{i}": x[:, i] for i in range(64)}), buffer)
    model_uri = cloud.put("models/digits.keras", digits_cnn.path.read_bytes())
    cloud.put("inputs/digits.csv", buffer.getvalue())
    message = cloud.send_shard("inputs/digits.csv", "parquet")

    # when
    run_worker(model_uri, "csv")

    # then each flat row was reshaped (row-major) to the model's input
    expected = digits_cnn.predict(x.reshape(-1, 8, 8, 1))
    assert_classifier_table(read_parquet(cloud.get(message["output"])), expected, list(range(20)))


def image_tar(images: dict[str, np.ndarray], fmt: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, pixels in images.items():
            encoded = io.BytesIO()
            Image.fromarray(pixels).save(encoded, fmt)
            info = tarfile.TarInfo(name)
            info.size = encoded.tell()
            encoded.seek(0)
            tar.addfile(info, encoded)
    return buffer.getvalue()


def test_png_images_at_model_size_predict_like_model_predict_on_unit_scaled_pixels(
    cloud, run_worker, image_classifier
):
    # given PNG (lossless) images at the model's 16x16 size, in tar order c, a, b
    rng = np.random.default_rng(6)
    images = {
        name: rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for name in ("c.png", "a.png", "b.png")
    }
    model_uri = cloud.put("models/images.keras", image_classifier.path.read_bytes())
    cloud.put("inputs/images-0.tar", image_tar(images, "PNG"))
    message = cloud.send_shard("inputs/images-0.tar", "parquet")

    # when
    run_worker(model_uri, "images", image_scale="unit")

    # then rows follow tar order, ids are the member names, predictions are those of x / 255
    x = np.stack(list(images.values())).astype(np.float32) / 255.0
    assert_classifier_table(
        read_parquet(cloud.get(message["output"])), image_classifier.predict(x), list(images)
    )


def test_larger_jpeg_images_are_resized_to_model_input_and_scaled_symmetrically(
    cloud, run_worker, image_classifier
):
    # given 40x30 JPEG images (smooth, so JPEG keeps them close) and a 16x16 model
    yy, xx = np.mgrid[0:30, 0:40]
    images = {
        f"img-{i}.jpg": np.stack([(xx * 6 + i * 20) % 256, (yy * 8) % 256, (xx + yy + i) % 256], -1).astype(
            np.uint8
        )
        for i in range(5)
    }
    data = image_tar(images, "JPEG")
    model_uri = cloud.put("models/images.keras", image_classifier.path.read_bytes())
    cloud.put("inputs/images-1.tar", data)
    message = cloud.send_shard("inputs/images-1.tar", "jsonl")

    # when
    run_worker(model_uri, "images", image_scale="symmetric", output_format="jsonl")

    # then predictions equal model.predict on the decoded, bilinear-resized pixels scaled to [-1, 1]
    decoded = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            with Image.open(tar.extractfile(member)) as image:
                resized = image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)
                decoded.append(np.asarray(resized, dtype=np.float32))
    expected = image_classifier.predict(np.stack(decoded) / 127.5 - 1.0)
    records = [json.loads(line) for line in cloud.get(message["output"]).decode().splitlines()]
    assert [r["id"] for r in records] == list(images)
    np.testing.assert_allclose([r["prediction"] for r in records], expected, atol=ATOL)
    assert [r["top_class"] for r in records] == expected.argmax(axis=1).tolist()


def test_photo_sized_jpegs_are_decoded_at_a_reduced_scale_then_resized_to_the_model_input():
    from spotfill_worker.config import ImageScale, InputFormat
    from spotfill_worker.formats import ModelInput, decode

    # given 640x480 photo-like JPEGs (gradients and grain) and a 224x224 model
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:480, 0:640]
    images = {
        f"photo-{i}.jpg": np.clip(
            np.stack([xx * 0.3 + i * 20, yy * 0.4, (xx + yy) * 0.2], -1) + rng.normal(0, 8, (480, 640, 3)),
            0,
            255,
        ).astype(np.uint8)
        for i in range(3)
    }
    data = image_tar(images, "JPEG")

    # when the worker's decoder reads the shard
    model_input = ModelInput((224, 224, 3), np.dtype(np.float32))
    rows = decode(data, InputFormat.IMAGES, model_input, None, ImageScale.UNIT)

    # then each image was decoded by JPEG draft mode at 320x240 (the smallest DCT scale not below 224x224,
    # about 0.6x the CPU of a full decode) and resized bilinearly to 224x224
    def resized(raw: bytes, draft: bool) -> np.ndarray:
        with Image.open(io.BytesIO(raw)) as image:
            if draft:
                image.draft("RGB", (224, 224))
                assert image.size == (320, 240)
            pixels = image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
            return np.asarray(pixels, dtype=np.float32) / np.float32(255.0)

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        raws = [tar.extractfile(member).read() for member in tar]
    drafted = np.stack([resized(raw, draft=True) for raw in raws])
    np.testing.assert_array_equal(rows.features, drafted)
    assert rows.ids == list(images)
    # (a full-size decode gives other pixels, so the equality above tells the two paths apart)
    assert not np.array_equal(drafted, np.stack([resized(raw, draft=False) for raw in raws]))


def test_npy_output_is_exactly_the_model_output_in_input_order(cloud, run_worker, tabular_classifier):
    # given
    x = features(seed=7)
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/part-7.npy", npy_bytes(x))
    message = cloud.send_shard("inputs/part-7.npy", "npy")

    # when
    run_worker(model_uri, "npy", output_format="npy")

    # then
    output = np.load(io.BytesIO(cloud.get(message["output"])))
    expected = tabular_classifier.predict(x)
    assert output.shape == expected.shape and output.dtype == expected.dtype
    np.testing.assert_allclose(output, expected, atol=ATOL)
    bucket, _, key = message["output"][len("s3://") :].partition("/")
    metadata = cloud.s3.head_object(Bucket=bucket, Key=key)["Metadata"]
    runtime = {k: v for k, v in metadata.items() if k.startswith(("spotfill-runtime", "spotfill-precision"))}
    model_bucket, _, model_key = model_uri[len("s3://") :].partition("/")
    model_etag = cloud.s3.head_object(Bucket=model_bucket, Key=model_key)["ETag"].strip('"')
    assert metadata == {
        "spotfill-rows": str(len(x)),
        "spotfill-run-id": message["run_id"],
        "spotfill-model-etag": model_etag,  # which model made it
        **runtime,
    }
    from spotfill_worker.runtimes import RUNTIMES

    assert runtime["spotfill-runtime"] in RUNTIMES
    assert runtime["spotfill-precision"] == "fp32"


def test_jsonl_output_carries_ids_predictions_and_top_classes(cloud, run_worker, tabular_classifier):
    # given
    x = features(rows=9, seed=8)
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/part-8.npy", npy_bytes(x))
    message = cloud.send_shard("inputs/part-8.npy", "jsonl")

    # when
    run_worker(model_uri, "npy", output_format="jsonl")

    # then
    records = [json.loads(line) for line in cloud.get(message["output"]).decode().splitlines()]
    expected = tabular_classifier.predict(x)
    assert [r["id"] for r in records] == list(range(9))
    np.testing.assert_allclose([r["prediction"] for r in records], expected, atol=ATOL)
    assert [r["top_class"] for r in records] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([r["top_probability"] for r in records], expected.max(axis=1), atol=ATOL)


def test_savedmodel_archive_serves_like_the_keras_model_it_was_exported_from(
    cloud, run_worker, regressor_savedmodel
):
    # given a SavedModel .tar.gz of a regressor (not a classifier: no top class columns)
    archive, model = regressor_savedmodel
    x = features(rows=21, width=4, seed=9)
    model_uri = cloud.put("models/regressor.tar.gz", archive.read_bytes())
    cloud.put("inputs/reg.npy", npy_bytes(x))
    message = cloud.send_shard("inputs/reg.npy", "parquet")

    # when
    run = run_worker(model_uri, "npy")

    # then
    assert run.events("model_loaded")[0]["kind"] == "savedmodel"
    assert run.events("model_loaded")[0]["input_shape"] == [None, 4]
    table = read_parquet(cloud.get(message["output"]))
    assert table.column_names == ["id", "prediction"]
    predictions = np.asarray(table.column("prediction").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(predictions, model.predict(x, verbose=0), atol=ATOL)


def test_logs_are_json_lines_with_shard_rows_and_throughput_plus_emf_metrics(
    cloud, run_worker, tabular_classifier
):
    # given
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/part-9.npy", npy_bytes(features(seed=10)))
    cloud.send_shard("inputs/part-9.npy", "parquet")

    # when
    run = run_worker(model_uri, "npy")

    # then
    done = run.events("shard_done")[0]
    assert done["shard"] == f"s3://{DATA}/inputs/part-9.npy"
    assert done["rows"] == ROWS and done["seconds"] > 0 and done["predictions_per_second"] > 0
    assert done["errors"] == 0
    emf = [line for line in run.lines if "_aws" in line]
    directive = emf[0]["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "spotfill" and directive["Dimensions"] == [["RunId"]]
    assert {m["Name"] for m in directive["Metrics"]} >= {"Predictions", "Shards", "ShardSeconds"}
    assert emf[0]["RunId"] == "run-test" and emf[0]["Predictions"] == ROWS and emf[0]["Shards"] == 1


def test_xla_compiled_forward_pass_predicts_like_model_predict(cloud, run_worker, digits_cnn):
    # given
    x = np.random.default_rng(11).uniform(size=(19, 8, 8, 1)).astype(np.float32)
    model_uri = cloud.put("models/digits.keras", digits_cnn.path.read_bytes())
    cloud.put("inputs/xla.npy", npy_bytes(x))
    message = cloud.send_shard("inputs/xla.npy", "npy")

    # when
    run = run_worker(model_uri, "npy", output_format="npy", xla=True)

    # then
    assert run.events("model_loaded")[0]["xla"] is True
    np.testing.assert_allclose(
        np.load(io.BytesIO(cloud.get(message["output"]))), digits_cnn.predict(x), atol=ATOL
    )


def test_mixed_precision_runs_layers_in_float16_and_returns_float32_close_to_model_predict(
    tabular_classifier,
):
    import keras
    from spotfill_worker.model import Predictor, load_model

    # given
    x = features(seed=12)
    try:
        # when the model is loaded with mixed precision
        loaded = load_model(tabular_classifier.path, mixed_precision=True)
        output = Predictor(loaded, batch_size=16).predict(x)
    finally:
        keras.mixed_precision.set_global_policy("float32")

    # then layers compute in float16, outputs come back as float32 within half precision of model.predict
    assert loaded.keras_model.layers[-1].compute_dtype == "float16"
    assert output.dtype == np.float32
    np.testing.assert_allclose(output, tabular_classifier.predict(x), atol=5e-3)


def test_parquet_output_stores_predictions_plainly_and_reads_back_exactly():
    from spotfill_worker.config import OutputFormat
    from spotfill_worker.formats import encode

    # given a shard's classifier outputs
    predictions = np.random.default_rng(0).random((512, 10)).astype(np.float32)

    # when encoded as Parquet
    table_file = pq.ParquetFile(io.BytesIO(encode(OutputFormat.PARQUET, predictions, None, True)))

    # then no column is dictionary-encoded (distinct floats: a dictionary only costs CPU and bytes), and every
    # value reads back as it was
    row_group = table_file.metadata.row_group(0)
    encodings = {row_group.column(i).path_in_schema: row_group.column(i).encodings for i in range(4)}
    assert not any("DICTIONARY" in e for column in encodings.values() for e in column), encodings
    table = table_file.read()
    got = np.asarray(table.column("prediction").combine_chunks().flatten()).reshape(predictions.shape)
    np.testing.assert_array_equal(got, predictions)
    assert table.column("top_class").to_pylist() == predictions.argmax(axis=1).tolist()
