"""Shard bytes in, rows out; predictions in, output bytes out.

Decoding runs in the prefetch thread and encoding in the upload threads, so neither sits on the compute path.
Every decoder returns ``Rows``: the feature array (rows on axis 0, in input order) and the ids carried to the
output (the id column's values, the image's name inside the tar, or ``None`` for the row index).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from spotfill_worker.config import ImageScale, InputFormat, OutputFormat

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


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
) -> Rows:
    """Decode one shard and fit its rows to the model input (cast; flat rows reshaped if sizes agree)."""
    try:
        if fmt is InputFormat.IMAGES:
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
    pq.write_table(table, buffer, compression="snappy")  # cheapest CPU: predictions barely compress anyway
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
