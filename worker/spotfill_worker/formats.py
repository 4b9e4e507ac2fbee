"""Shard bytes in, rows out; predictions in, output bytes out.

Decoding runs in the prefetch thread and encoding in the upload threads, so neither sits on the compute path.
Every decoder returns ``Rows``: the feature array (rows on axis 0, in input order) and the ids carried to the
output (the id column's or feature's values, the image's name inside the tar, or ``None`` for the row index).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from spotfill_worker.config import (
    ImageScale,
    InputFormat,
    OutputFormat,
    TFRecordCompression,
    TFRecordDtype,
    TFRecordOptions,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TFRECORD_PARSE_BATCH = 1024  # serialized records per tf.io.parse_example call


class ShardFormatError(ValueError):
    """The shard cannot be decoded in the configured format (a poison shard)."""


class ShapeMismatchError(ValueError):
    """The shard's rows do not fit the model's input (a poison shard)."""


@dataclass(frozen=True)
class ModelInput:
    """What the model accepts: the shape of one row (``None`` where any size fits) and its dtype."""

    row_shape: tuple[int | None, ...]
    dtype: np.dtype

    @property
    def shape(self) -> tuple[int | None, ...]:
        return (None, *self.row_shape)


@dataclass
class Rows:
    features: np.ndarray
    ids: list[Any] | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])


# ---------------------------------------------------------------------------------------------- decoding


def decode(
    data: bytes,
    fmt: InputFormat,
    model_input: ModelInput,
    id_column: str | None = None,
    image_scale: ImageScale = ImageScale.UNIT,
    tfrecord: TFRecordOptions | None = None,
) -> Rows:
    """Decode one shard and fit its rows to the model input (cast; flat rows reshaped if sizes agree).

    ``tfrecord`` (the feature, its shape and dtype, the compression) is required for ``InputFormat.TFRECORD``.
    """
    try:
        if fmt is InputFormat.TFRECORD:
            rows = _decode_tfrecord(data, tfrecord, id_column)
        elif fmt is InputFormat.IMAGES:
            rows = _decode_images(data, model_input, image_scale)
        elif fmt is InputFormat.NPY:
            rows = Rows(np.load(io.BytesIO(data), allow_pickle=False))
        elif fmt is InputFormat.NPZ:
            rows = _decode_npz(data, id_column)
        elif fmt is InputFormat.PARQUET:
            import pyarrow.parquet as pq

            rows = _table_rows(pq.read_table(io.BytesIO(data)), id_column)
        elif fmt is InputFormat.CSV:
            import pyarrow.csv as pacsv

            rows = _table_rows(pacsv.read_csv(io.BytesIO(data)), id_column)
        elif fmt is InputFormat.JSONL:
            rows = _decode_jsonl(data, id_column)
        else:  # pragma: no cover - the config model admits only the formats above
            raise ShardFormatError(f"unsupported input format {fmt}")
    except (ShardFormatError, ShapeMismatchError):
        raise
    except Exception as exc:
        raise ShardFormatError(f"cannot decode shard as {fmt.value}: {type(exc).__name__}: {exc}") from exc
    rows.features = fit_to_model(rows.features, model_input)
    return rows


def fit_to_model(features: np.ndarray, model_input: ModelInput) -> np.ndarray:
    """Check the rows against the model's input shape; flat rows with the right element count are reshaped."""
    if features.ndim == 0:
        raise ShapeMismatchError(
            f"shard holds a scalar (shape {features.shape}), "
            f"but the model expects input shape {model_input.shape}"
        )
    row_shape = tuple(features.shape[1:])
    expected = model_input.row_shape
    if not _fits(row_shape, expected):
        known = all(d is not None for d in expected)
        width = math.prod(row_shape)
        if known and len(row_shape) <= 1 and width == math.prod(expected):  # type: ignore[arg-type]
            features = features.reshape((features.shape[0], *expected))
        else:
            raise ShapeMismatchError(
                f"shard rows have shape {row_shape} (shard shape {tuple(features.shape)}), "
                f"but the model expects input shape {model_input.shape}"
            )
    if not np.issubdtype(features.dtype, np.number) and features.dtype != np.bool_:
        raise ShardFormatError(f"shard values are not numeric (dtype {features.dtype})")
    return np.ascontiguousarray(features, dtype=model_input.dtype)


def _fits(row_shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(row_shape) == len(expected) and all(
        e is None or e == r for r, e in zip(row_shape, expected, strict=True)
    )


def _decode_npz(data: bytes, id_column: str | None) -> Rows:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        names = list(archive.files)
        ids = archive[id_column].tolist() if id_column and id_column in names else None
        candidates = [n for n in names if n != id_column]
        if "x" in candidates:
            name = "x"
        elif len(candidates) == 1:
            name = candidates[0]
        else:
            raise ShardFormatError(
                f"npz shard must hold an array named 'x' or exactly one feature array; got {names}"
            )
        return Rows(archive[name], ids)


def _table_rows(table: Any, id_column: str | None) -> Rows:
    import pyarrow as pa

    ids = None
    if id_column:
        if id_column not in table.column_names:
            raise ShardFormatError(f"id column {id_column!r} not in shard columns {table.column_names}")
        ids = table.column(id_column).to_pylist()
        table = table.drop_columns([id_column])
    if table.num_columns == 0:
        raise ShardFormatError("shard has no feature columns")
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if column.null_count:
            raise ShardFormatError(f"column {name!r} has {column.null_count} missing values")
        kind = column.type
        if pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind):
            if table.num_columns != 1:
                raise ShardFormatError("a list-valued feature column must be the only feature column")
            values = column.to_pylist()
            return Rows(np.asarray(values) if values else np.zeros((0, 0)), ids)
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise ShardFormatError(f"feature column {name!r} is not numeric (type {kind})")
        columns.append(column.to_numpy())
    return Rows(np.column_stack(columns), ids)


def _decode_jsonl(data: bytes, id_column: str | None) -> Rows:
    ids: list[Any] | None = [] if id_column else None
    rows: list[Any] = []
    keys: list[str] | None = None
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ShardFormatError(f"line {number} is not JSON: {exc}") from exc
        if isinstance(record, list):
            rows.append(record)
            continue
        if not isinstance(record, dict):
            raise ShardFormatError(f"line {number} is neither a JSON array nor an object")
        if id_column:
            if id_column not in record:
                raise ShardFormatError(f"line {number} has no id field {id_column!r}")
            ids.append(record.pop(id_column))  # type: ignore[union-attr]
        if keys is None:
            keys = list(record)
        if len(keys) == 1:
            rows.append(record[keys[0]])
        else:
            try:
                rows.append([record[k] for k in keys])
            except KeyError as exc:
                raise ShardFormatError(f"line {number} lacks field {exc.args[0]!r}") from exc
    try:
        features = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ShardFormatError(f"JSON Lines rows are not a rectangular numeric array: {exc}") from exc
    return Rows(features, ids)


def _decode_images(data: bytes, model_input: ModelInput, scale: ImageScale) -> Rows:
    from PIL import Image, ImageOps

    if len(model_input.row_shape) != 3 or model_input.row_shape[2] not in (1, 3, 4):
        raise ShapeMismatchError(
            f"image shards need a model input of shape (None, height, width, channels), "
            f"but the model expects input shape {model_input.shape}"
        )
    height, width, channels = model_input.row_shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]  # type: ignore[index]
    names: list[str] = []
    images: list[np.ndarray] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        for member in archive:
            if not member.isfile() or not member.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            raw = archive.extractfile(member).read()  # type: ignore[union-attr]
            try:
                with Image.open(io.BytesIO(raw)) as image:
                    if height and width:
                        image.draft(mode, (width, height))  # JPEG: decode at a reduced scale when much larger
                    if "exif" in image.info:  # camera orientation, as image viewers apply it
                        image = ImageOps.exif_transpose(image)
                    image = image.convert(mode)
                    if height and width and image.size != (width, height):
                        image = image.resize((width, height), Image.Resampling.BILINEAR)
                    pixels = np.asarray(image, dtype=np.uint8)
            except Exception as exc:
                raise ShardFormatError(f"cannot decode image {member.name!r}: {exc}") from exc
            images.append(pixels.reshape(pixels.shape[0], pixels.shape[1], channels))
            names.append(member.name)
    if not images:
        raise ShardFormatError("tar shard holds no .jpg/.jpeg/.png images")
    try:
        stacked = np.stack(images)
    except ValueError as exc:  # a model with a free spatial size still needs equal-size images per shard
        raise ShapeMismatchError(f"images in one shard differ in size: {exc}") from exc
    dtype = model_input.dtype if np.issubdtype(model_input.dtype, np.floating) else np.dtype(np.float32)
    pixels = stacked.astype(dtype)
    if scale is ImageScale.UNIT:
        pixels /= dtype.type(255.0)
    elif scale is ImageScale.SYMMETRIC:
        pixels /= dtype.type(127.5)
        pixels -= dtype.type(1.0)
    return Rows(pixels, names)


_TF_DTYPES = {TFRecordDtype.FLOAT32: "float32", TFRecordDtype.INT64: "int64"}
_LIST_OF_DTYPE = {TFRecordDtype.FLOAT32: "float_list", TFRecordDtype.INT64: "int64_list"}
_DTYPE_OF_LIST = {"float_list": "float32", "int64_list": "int64", "bytes_list": "string"}


def _decode_tfrecord(data: bytes, options: TFRecordOptions | None, id_column: str | None) -> Rows:
    """Every ``tf.train.Example`` of a TFRecord file: ``options.feature`` as rows of ``options.shape``.

    TensorFlow reads the records (``tf.data.TFRecordDataset``, which checks each record's CRCs) and parses
    them in batches (``tf.io.parse_example``); when a batch does not parse, its records are examined one by
    one so the error names the record, the feature and what is wrong with it.
    """
    if options is None:
        raise ShardFormatError("tfrecord input needs the feature's name and shape (input.tfrecord)")
    import tensorflow as tf

    gzip = options.compression is TFRecordCompression.GZIP
    with tempfile.NamedTemporaryFile(prefix="spotfill-shard-", suffix=".tfrecord") as handle:
        handle.write(data)
        handle.flush()
        dataset = tf.data.TFRecordDataset(handle.name, compression_type="GZIP" if gzip else "")
        try:
            batches = list(dataset.batch(TFRECORD_PARSE_BATCH))
        except tf.errors.OpError as exc:
            kind = "a GZIP-compressed TFRecord file" if gzip else "an uncompressed TFRecord file"
            raise ShardFormatError(f"shard is not {kind}: {_first_line(exc.message)}") from None
    feature_dtype = getattr(tf, _TF_DTYPES[options.dtype])
    schema = {options.feature: tf.io.FixedLenFeature(options.shape, feature_dtype)}
    id_kind = None
    if id_column and batches:  # the id feature's value list as the first record holds it: bytes, int64, float
        first = _example(batches[0][0].numpy(), 0)
        _feature_kind(first, options.feature, 0, "feature")  # a record without the feature says so first
        id_kind = _feature_kind(first, id_column, 0, "id feature")
        schema[id_column] = tf.io.FixedLenFeature([], getattr(tf, _DTYPE_OF_LIST[id_kind]))
    features: list[np.ndarray] = []
    ids: list[Any] | None = [] if id_column else None
    offset = 0
    for batch in batches:
        try:
            parsed = tf.io.parse_example(batch, schema)
        except (tf.errors.OpError, UnicodeDecodeError) as exc:  # TF's message may quote the record's bytes
            why = _diagnose(batch.numpy(), offset, options, id_column, id_kind, schema, exc)
            raise ShardFormatError(why) from None
        features.append(parsed[options.feature].numpy())
        if ids is not None:
            ids.extend(_id_values(parsed[id_column].numpy(), id_column, offset))  # type: ignore[index]
        offset += int(batch.shape[0])
    if not features:  # a file of no records: no rows
        return Rows(np.zeros((0, *options.shape), dtype=_TF_DTYPES[options.dtype]), ids)
    return Rows(np.concatenate(features) if len(features) > 1 else features[0], ids)


def _id_values(values: np.ndarray, id_column: str, offset: int) -> list[Any]:
    if values.dtype != object:
        return values.tolist()
    try:
        return [value.decode("utf-8") for value in values]
    except UnicodeDecodeError:
        bad = next(i for i, v in enumerate(values) if not _is_utf8(v))
        raise ShardFormatError(
            f"record {offset + bad}: id feature {id_column!r} is not UTF-8 text ({values[bad][:32]!r})"
        ) from None


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _example(serialized: bytes, number: int) -> Any:
    from google.protobuf.message import DecodeError
    from tensorflow.core.example.example_pb2 import Example

    try:
        return Example.FromString(serialized)
    except DecodeError as exc:
        raise ShardFormatError(f"record {number} is not a tf.train.Example: {exc}") from None


def _feature_kind(example: Any, name: str, number: int, what: str) -> str:
    if name not in example.features.feature:
        present = sorted(example.features.feature)
        raise ShardFormatError(f"record {number} has no {what} {name!r} (its features: {present})")
    kind = example.features.feature[name].WhichOneof("kind")
    if kind is None:
        raise ShardFormatError(f"record {number}: {what} {name!r} holds no value list")
    return kind


def _diagnose(
    serialized: np.ndarray,
    offset: int,
    options: TFRecordOptions,
    id_column: str | None,
    id_kind: str | None,
    schema: dict[str, Any],
    error: Exception,
) -> str:
    """Why a batch of records did not parse: the first record at fault, and what is wrong with it."""
    import tensorflow as tf

    values_needed = math.prod(options.shape)
    wanted = _LIST_OF_DTYPE[options.dtype]
    for index, raw in enumerate(serialized):
        number = offset + index
        example = _example(raw, number)
        kind = _feature_kind(example, options.feature, number, "feature")
        if kind != wanted:
            return (
                f"record {number}: feature {options.feature!r} is {_a(kind)}, "
                f"but input.tfrecord.dtype {options.dtype.value} reads {wanted}"
            )
        count = len(getattr(example.features.feature[options.feature], kind).value)
        if count != values_needed:
            return (
                f"record {number}: feature {options.feature!r} holds {count} values, but "
                f"input.tfrecord.shape {list(options.shape)} needs {values_needed}"
            )
        if id_column:
            kind = _feature_kind(example, id_column, number, "id feature")
            count = len(getattr(example.features.feature[id_column], kind).value)
            if kind != id_kind:
                return (
                    f"record {number}: id feature {id_column!r} is {_a(kind)}, "
                    f"but record 0 holds it as {_a(id_kind)} (one kind per shard)"
                )
            if count != 1:
                return f"record {number}: id feature {id_column!r} holds {count} values, not 1"
        try:
            tf.io.parse_single_example(raw, schema)
        except (tf.errors.OpError, UnicodeDecodeError) as exc:
            return f"record {number} does not parse: {_first_line(getattr(exc, 'message', str(exc)))}"
    return f"records {offset} to {offset + len(serialized) - 1} do not parse: {_first_line(str(error))}"


def _a(kind: str | None) -> str:
    return f"an {kind}" if kind and kind[0] in "aeiou" else f"a {kind}"


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


# ---------------------------------------------------------------------------------------------- encoding


def encode(fmt: OutputFormat, predictions: np.ndarray, ids: Any, classifier: bool) -> bytes:
    if fmt is OutputFormat.NPY:
        buffer = io.BytesIO()
        np.save(buffer, predictions, allow_pickle=False)
        return buffer.getvalue()
    ids = np.arange(len(predictions)) if ids is None else ids
    top = _top_classes(predictions) if classifier else None
    if fmt is OutputFormat.PARQUET:
        return _encode_parquet(predictions, ids, top)
    if fmt is OutputFormat.JSONL:
        return _encode_jsonl(predictions, ids, top)
    raise ValueError(f"unsupported output format {fmt}")  # pragma: no cover


def _top_classes(predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = predictions.reshape(len(predictions), -1)
    classes = flat.argmax(axis=1) if flat.shape[1] else np.zeros(len(flat), dtype=np.int64)
    return classes.astype(np.int64), flat[np.arange(len(flat)), classes].astype(np.float32)


def _encode_parquet(
    predictions: np.ndarray, ids: list[Any], top: tuple[np.ndarray, np.ndarray] | None
) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if predictions.ndim == 1:
        prediction = pa.array(predictions)
    else:
        flat = np.ascontiguousarray(predictions.reshape(len(predictions), -1))
        prediction = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    columns = {"id": pa.array(ids), "prediction": prediction}
    if top is not None:
        columns["top_class"] = pa.array(top[0])
        columns["top_probability"] = pa.array(top[1])
    metadata = {"spotfill.prediction_shape": json.dumps(list(predictions.shape[1:]))}
    table = pa.table(columns).replace_schema_metadata(metadata)
    buffer = io.BytesIO()
    # Snappy: the cheapest CPU (predictions barely compress anyway). No dictionary encoding: predictions are
    # almost all distinct floats, for which Parquet's dictionary attempt cost 6.3 ms of CPU per 8,192 x 10
    # outputs against 1.2 ms without, and made the file larger (600 against 412 KB).
    pq.write_table(table, buffer, compression="snappy", use_dictionary=False)
    return buffer.getvalue()


def _encode_jsonl(
    predictions: np.ndarray, ids: list[Any], top: tuple[np.ndarray, np.ndarray] | None
) -> bytes:
    values = predictions.tolist()
    lines = []
    for i, (row_id, value) in enumerate(zip(ids, values, strict=True)):
        record: dict[str, Any] = {"id": row_id, "prediction": value}
        if top is not None:
            record["top_class"] = int(top[0][i])
            record["top_probability"] = float(top[1][i])
        lines.append(json.dumps(record, default=_json_default, separators=(",", ":")))
    return ("\n".join(lines) + ("\n" if lines else "")).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
