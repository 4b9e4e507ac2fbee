"""The worker's configuration: environment variables parsed once, at start, into a typed model.

The task definition sets these (see docs/contracts/worker-environment.md). A missing or invalid
variable stops the worker before it touches AWS, with an error that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PREFIX = "SPOTFILL_"


class InputFormat(StrEnum):
    NPY = "npy"
    NPZ = "npz"
    PARQUET = "parquet"
    CSV = "csv"
    JSONL = "jsonl"
    IMAGES = "images"
    TFRECORD = "tfrecord"


class OutputFormat(StrEnum):
    PARQUET = "parquet"
    NPY = "npy"
    JSONL = "jsonl"


class ImageScale(StrEnum):
    UNIT = "unit"  # x / 255 -> [0, 1]
    SYMMETRIC = "symmetric"  # x / 127.5 - 1 -> [-1, 1] (MobileNet-style preprocessing)
    NONE = "none"  # raw 0..255 values


class TFRecordDtype(StrEnum):
    FLOAT32 = "float32"  # the feature is a float_list
    INT64 = "int64"  # the feature is an int64_list


class TFRecordCompression(StrEnum):
    NONE = "none"
    GZIP = "GZIP"


class TFRecordOptions(BaseModel):
    """How a TFRecord shard's ``tf.train.Example`` records become rows (``input.tfrecord`` of the spec)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    feature: str = Field(min_length=1)
    shape: tuple[int, ...] = Field(min_length=1)
    dtype: TFRecordDtype = TFRecordDtype.FLOAT32
    compression: TFRecordCompression = TFRecordCompression.NONE

    @field_validator("shape")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < 1 for d in value):
            raise ValueError(f"every dimension must be at least 1, got {list(value)}")
        return value


class ModelRuntime(StrEnum):
    AUTO = "auto"  # the fastest runtime that reproduces TensorFlow FP32 on the first shard's rows
    TENSORFLOW = "tensorflow"
    OPENVINO = "openvino"
    ONNXRUNTIME = "onnxruntime"


class ModelPrecision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Classifier(StrEnum):
    AUTO = "auto"  # a Keras model whose last layer applies softmax
    TRUE = "true"
    FALSE = "false"


class ConfigError(Exception):
    """A worker environment variable is missing or invalid; the message names it."""


class WorkerConfig(BaseModel):
    """Field ``x`` is read from ``SPOTFILL_X`` (upper case)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field(min_length=1)
    queue_url: str = Field(min_length=1)
    model_uri: str
    input_format: InputFormat
    output_format: OutputFormat = OutputFormat.PARQUET
    id_column: str | None = None
    image_scale: ImageScale = ImageScale.UNIT
    # TFRecord input (input_format tfrecord, which requires feature and shape): SPOTFILL_TFRECORD_SHAPE is
    # comma-separated ("28,28,1").
    tfrecord_feature: str | None = None
    tfrecord_shape: tuple[int, ...] | None = None
    tfrecord_dtype: TFRecordDtype = TFRecordDtype.FLOAT32
    tfrecord_compression: TFRecordCompression = TFRecordCompression.NONE
    classifier: Classifier = Classifier.AUTO
    batch_size: int | None = Field(default=None, ge=1, le=65536)
    visibility_timeout: int = Field(default=120, ge=1, le=43200)
    stop_timeout: float = Field(default=120.0, gt=0, le=86400)
    # Long polls, but short enough that a stopping worker never waits long on one in flight.
    receive_wait_seconds: int = Field(default=5, ge=0, le=20)
    exit_when_idle_seconds: float | None = Field(default=None, gt=0)
    # Shards fetched (received, downloaded, decoded) ahead of the forward pass. Unset: chosen while running
    # from the measured fetch and compute seconds per shard (spotfill_worker.depth), at most
    # max_prefetch_shards and as many decoded shards as prefetch_memory_mib holds; set: exactly this many.
    prefetch_shards: int | None = Field(default=None, ge=1, le=64)
    max_prefetch_shards: int = Field(default=16, ge=1, le=64)
    prefetch_memory_mib: int = Field(default=512, ge=1)
    xla: bool = False
    model_runtime: ModelRuntime = ModelRuntime.AUTO
    model_precision: ModelPrecision = ModelPrecision.FP32
    # The older switch for mixed_float16: the same as model_precision fp16.
    mixed_precision: bool = False
    spot_notice: bool = True
    # Read the instance's purchase option and type from IMDS and record them with each output.
    instance_metadata: bool = True
    # Local cloud only: the local cloud's ECS agent sets it (SPOTFILL_LOCAL_CLOUD_SPEED) for the tasks of an
    # instance type it slows (`LocalCloudOptions.instance_speed`); the worker then sleeps after each batch so
    # it predicts at this fraction of its speed. 1, the default, is off; nothing on AWS sets it.
    local_cloud_speed: float = Field(default=1.0, gt=0, le=1)
    # Where a shard that can never succeed (undecodable, or rows that do not fit the model) is sent at once,
    # instead of waiting out the queue's maxReceiveCount; unset: it is left to SQS's redrive.
    dead_letter_queue_url: str | None = None
    # Where the worker writes its error record when the model cannot load (the monitor fails the run on it).
    model_error_uri: str | None = None

    @field_validator("model_uri")
    @classmethod
    def _model_uri_is_s3_keras_or_savedmodel(cls, value: str) -> str:
        if not value.startswith("s3://") or not value.endswith((".keras", ".tar.gz", ".tgz")):
            raise ValueError("must be s3://bucket/key ending in .keras or .tar.gz (a SavedModel archive)")
        return value

    @field_validator("model_error_uri")
    @classmethod
    def _model_error_uri_is_s3(cls, value: str | None) -> str | None:
        if value and not value.startswith("s3://"):
            raise ValueError("must be an s3://bucket/key URI")
        return value or None

    @field_validator("tfrecord_shape", mode="before")
    @classmethod
    def _shape_from_text(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return tuple(int(part) for part in value.split(","))
            except ValueError:
                raise ValueError("must be comma-separated whole numbers, e.g. 28,28,1") from None
        return value

    @field_validator("tfrecord_shape")
    @classmethod
    def _shape_positive(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or any(d < 1 for d in value)):
            raise ValueError("must be one or more dimensions of at least 1, e.g. 28,28,1")
        return value

    @model_validator(mode="after")
    def _tfrecord_needs_feature_and_shape(self) -> WorkerConfig:
        if self.input_format is InputFormat.TFRECORD:
            missing = [
                PREFIX + name.upper()
                for name in ("tfrecord_feature", "tfrecord_shape")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"{' and '.join(missing)} must be set with input format tfrecord")
        return self

    @model_validator(mode="after")
    def _mixed_precision_is_fp16(self) -> WorkerConfig:
        if self.mixed_precision and self.model_precision is ModelPrecision.BF16:
            raise ValueError(
                f"{PREFIX}MIXED_PRECISION=true means {PREFIX}MODEL_PRECISION=fp16, not bf16: set one of them"
            )
        return self

    @property
    def precision(self) -> ModelPrecision:
        """The precision asked for: ``model_precision``, or fp16 where ``mixed_precision`` is on."""
        return ModelPrecision.FP16 if self.mixed_precision else self.model_precision

    @property
    def tfrecord(self) -> TFRecordOptions | None:
        """The TFRecord options (input format tfrecord), else ``None``."""
        if self.input_format is not InputFormat.TFRECORD:
            return None
        return TFRecordOptions(
            feature=self.tfrecord_feature,
            shape=self.tfrecord_shape,
            dtype=self.tfrecord_dtype,
            compression=self.tfrecord_compression,
        )

    @field_validator("id_column")
    @classmethod
    def _empty_id_column_means_none(cls, value: str | None) -> str | None:
        return value or None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        env = os.environ if environ is None else environ
        values = {}
        for name in cls.model_fields:
            raw = env.get(PREFIX + name.upper())
            if raw is not None and raw.strip() != "":
                values[name] = raw.strip()
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                if not error["loc"]:  # a check across variables: its message names them
                    problems.append(str(error["msg"]).removeprefix("Value error, "))
                    continue
                field = str(error["loc"][0])
                variable = PREFIX + field.upper()
                reason = "is required but not set" if error["type"] == "missing" else error["msg"]
                shown = env.get(variable)
                problems.append(f"{variable} {reason}" + (f" (got {shown!r})" if shown is not None else ""))
            raise ConfigError("invalid worker configuration: " + "; ".join(problems)) from None
