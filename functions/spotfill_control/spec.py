"""The backfill spec: the one validated request that every trigger normalises to."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from spotfill_control.instance_types import check_name

InputFormat = Literal["npy", "npz", "parquet", "csv", "jsonl", "images", "tfrecord"]
OutputFormat = Literal["parquet", "npy", "jsonl"]
AllocationStrategy = Literal[
    "priceCapacityOptimized",
    "capacityOptimized",
    "lowestPrice",
    "diversified",
    "capacityOptimizedPrioritized",
]
# The EC2 API that holds the run's fleet: EC2 Fleet (CreateFleet) or the legacy Spot Fleet (RequestSpotFleet).
FleetApiName = Literal["ec2-fleet", "spot-fleet"]
# What serves the model's forward pass in the worker: "auto" lets the worker's calibration on the first shard
# pick the fastest runtime whose outputs match TensorFlow's (docs/contracts/spec.md, "Model runtime and
# precision").
ModelRuntime = Literal["auto", "tensorflow", "openvino", "onnxruntime"]
ModelPrecision = Literal["fp32", "bf16", "fp16"]

# File extensions of each input format: a shard under an input prefix is an object with one of these.
INPUT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "npy": (".npy",),
    "npz": (".npz",),
    "parquet": (".parquet",),
    "csv": (".csv",),
    "jsonl": (".jsonl", ".ndjson"),
    "images": (".tar",),
    # Plain TFRecord files; with `input.tfrecord.compression: "GZIP"`, TFRECORD_GZIP_EXTENSIONS instead.
    "tfrecord": (".tfrecord", ".tfrecords"),
}
TFRECORD_GZIP_EXTENSIONS: tuple[str, ...] = (".tfrecord.gz", ".tfrecords.gz")
OUTPUT_EXTENSIONS: dict[str, str] = {"parquet": ".parquet", "npy": ".npy", "jsonl": ".jsonl"}


class _Model(BaseModel):
    # Numbers are strict (each numeric field has `strict=True`): `true` or `"2"` is refused, not read as 1.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_s3_uri(value: str) -> str:
    if not value.startswith("s3://"):
        raise ValueError(f"must be an s3:// URI, got {value!r}")
    bucket, _, _ = value[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"names no bucket: {value!r}")
    return value


class ImageOptions(_Model):
    size: tuple[StrictInt, StrictInt] | None = Field(
        default=None, description="resize to (height, width); default: the model's input"
    )
    scale: Literal["unit", "symmetric", "none"] = "unit"


# What a TFRecord feature may hold: the `tf.train.Example` list it is read from is float_list or int64_list.
TFRecordDtype = Literal["float32", "int64"]
MAX_TFRECORD_VALUES = 64 * 1024 * 1024  # values per record: a shape beyond this is a typo, not an input


class TFRecordOptions(_Model):
    """How to read `tf.train.Example` records (`input.format: "tfrecord"`)."""

    feature: str = Field(min_length=1, description="the feature holding the model's input in every record")
    shape: list[StrictInt] = Field(
        min_length=1,
        max_length=8,
        description="the feature's shape per record (its values, row-major), e.g. [28, 28, 1]",
    )
    dtype: TFRecordDtype = Field(
        default="float32", description="float32 (the feature is a float_list) or int64 (an int64_list)"
    )
    compression: Literal["GZIP"] | None = Field(
        default=None, description="null: plain TFRecord files; GZIP: gzip-compressed ones (.tfrecord.gz)"
    )

    @field_validator("shape")
    @classmethod
    def _positive_dimensions(cls, value: list[int]) -> list[int]:
        if any(d < 1 for d in value):
            raise ValueError(f"every dimension must be at least 1, got {value}")
        size = 1
        for d in value:
            size *= d
        if size > MAX_TFRECORD_VALUES:
            raise ValueError(f"{value} is {size} values per record, more than {MAX_TFRECORD_VALUES}")
        return value


class InputSpec(_Model):
    uri: str = Field(
        description="s3:// prefix ending in '/', or s3:// URI of a .txt/.json manifest listing shard URIs"
    )
    format: InputFormat
    id_column: str | None = Field(
        default=None,
        description="the id column (CSV, Parquet), field (JSON Lines), array (.npz) or feature (TFRecord)",
    )
    image: ImageOptions = ImageOptions()
    tfrecord: TFRecordOptions | None = Field(
        default=None, description="required with format tfrecord, refused with any other format"
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        _check_s3_uri(value)
        key = value[len("s3://") :].partition("/")[2]
        if key.strip("/") == "":
            raise ValueError("must not be a whole bucket: name a prefix such as s3://bucket/inputs/")
        if not (key.endswith("/") or key.endswith((".txt", ".json"))):
            raise ValueError("must be a prefix ending in '/' or a shard list ending in .txt or .json")
        return value

    @property
    def is_prefix(self) -> bool:
        return self.uri.endswith("/")

    @property
    def extensions(self) -> tuple[str, ...]:
        """The file extensions of this input's shards (a shard list's entries must end in one of them)."""
        if self.tfrecord is not None and self.tfrecord.compression == "GZIP":
            return TFRECORD_GZIP_EXTENSIONS
        return INPUT_EXTENSIONS[self.format]


class OutputSpec(_Model):
    uri: str = Field(description="s3:// prefix ending in '/' that receives one output object per shard")
    format: OutputFormat = "parquet"

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        _check_s3_uri(value)
        if not value.endswith("/"):
            raise ValueError("must be a prefix ending in '/'")
        return value


class ModelSpec(_Model):
    uri: str = Field(description="s3:// URI of a .keras file or a SavedModel .tar.gz archive")
    runtime: ModelRuntime = Field(
        default="auto",
        description="auto: the fastest runtime whose FP32 outputs are within 1e-5 of TensorFlow's on "
        "calibration rows of the first shard; tensorflow; openvino or onnxruntime (CPU types only; falls "
        "back to TensorFlow, with the reason reported, where it cannot reproduce the model)",
    )
    precision: ModelPrecision = Field(
        default="fp32",
        description="fp32; bf16 (CPU types with bf16 instructions) or fp16 (GPU types, mixed precision) opt "
        "in to faster, less exact outputs, their agreement with FP32 reported",
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        _check_s3_uri(value)
        if not value.endswith((".keras", ".tar.gz", ".tgz")):
            raise ValueError("must end in .keras (Keras file) or .tar.gz (SavedModel archive)")
        return value


# Amazon ECS quotas a run's one cluster and one service live under (5,000 each by default; ECS lists neither
# as adjustable). A capacity unit is at least one instance (the smallest type weighs 1), so the fleet's
# target capacity bounds its instances, and x tasks_per_instance the service's tasks.
ECS_CONTAINER_INSTANCES_PER_CLUSTER = 5000
ECS_TASKS_PER_SERVICE = 5000


class FleetSpec(_Model):
    instance_types: list[str] = Field(min_length=1, max_length=20)
    target_capacity: int = Field(
        default=2,
        ge=1,
        le=ECS_CONTAINER_INSTANCES_PER_CLUSTER,
        strict=True,
        description="capacity units: the smallest type weighs 1, others by vCPUs (GPUs for GPU types)",
    )
    allocation_strategy: AllocationStrategy = "priceCapacityOptimized"
    max_hourly_price: float | None = Field(
        default=None, gt=0, strict=True, description="cap on the fleet's total spend per hour"
    )
    subnets: list[str] = Field(default_factory=list, description="empty: the stack's default subnets")
    api: FleetApiName = Field(
        default="ec2-fleet", description="ec2-fleet (CreateFleet) or spot-fleet (the legacy RequestSpotFleet)"
    )
    on_demand_base: int = Field(
        default=0, ge=0, le=5000, strict=True, description="capacity units that are always on demand"
    )
    on_demand_fallback_after_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86_400,
        strict=True,
        description="spot still short this long: the shortfall runs on demand till spot returns; null: never",
    )

    @field_validator("instance_types")
    @classmethod
    def _type_names(cls, value: list[str]) -> list[str]:
        # Only the shape of each name: which types exist (and their architecture, GPUs, price) is EC2's
        # answer, read at Validate (`spotfill_control.instance_types.describe_instance_types`).
        for name in value:
            check_name(name)
        if len(set(value)) != len(value):
            raise ValueError("lists an instance type twice")
        return value

    @field_validator("subnets")
    @classmethod
    def _subnets(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not s.startswith("subnet-")]
        if bad:
            raise ValueError(f"not subnet ids: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _on_demand_within_target(self) -> FleetSpec:
        if self.on_demand_base > self.target_capacity:
            raise ValueError(
                f"on_demand_base ({self.on_demand_base}) exceeds target_capacity ({self.target_capacity})"
            )
        return self


class ServiceSpec(_Model):
    tasks_per_instance: int = Field(default=1, ge=1, le=64, strict=True)
    cpu: int = Field(
        default=1024,
        ge=128,
        le=196608,
        strict=True,
        description="CPU units reserved per task (1024 = 1 vCPU)",
    )
    memory: int = Field(default=3072, ge=256, le=786432, strict=True, description="MiB reserved per task")
    batch_size: int | None = Field(default=None, ge=1, le=65536, strict=True)


# Step Functions keeps at most 25,000 events in one execution's history, so the monitor loop hands the run
# over to a fresh execution (continue-as-new) before it gets there. One loop iteration costs 9 events:
# WaitForWork (WaitStateEntered, WaitStateExited) + Monitor (TaskStateEntered, LambdaFunctionScheduled,
# LambdaFunctionStarted, LambdaFunctionSucceeded, TaskStateExited) + IsWorkDone (ChoiceStateEntered,
# ChoiceStateExited), and each Lambda retry adds 3 more (LambdaFunctionFailed, ...Scheduled, ...Started).
# Budgeting 12 events per iteration (one retry each) and keeping 10,000 events for the states before the loop
# (the registration loop included) and after it (teardown, report, fail) gives (25,000 - 10,000) // 12 = 1,250
# iterations: about 21 hours per execution at the default 60 s poll interval.
HISTORY_EVENT_LIMIT = 25_000
EVENTS_PER_MONITOR_ITERATION = 9
EVENTS_PER_LAMBDA_RETRY = 3
HISTORY_EVENTS_RESERVED = 10_000
DEFAULT_HANDOVER_AFTER_ITERATIONS = (HISTORY_EVENT_LIMIT - HISTORY_EVENTS_RESERVED) // (
    EVENTS_PER_MONITOR_ITERATION + EVENTS_PER_LAMBDA_RETRY
)
# Registration polls cost as many events as monitor iterations and must fit the reserve beside them.
MAX_REGISTRATION_POLLS = (HISTORY_EVENTS_RESERVED - 1_000) // EVENTS_PER_MONITOR_ITERATION
# A larger override could run an execution past the limit even without retries.
MAX_HANDOVER_AFTER_ITERATIONS = (
    HISTORY_EVENT_LIMIT - HISTORY_EVENTS_RESERVED
) // EVENTS_PER_MONITOR_ITERATION


# SQS keeps a message at most 14 days, and a dead letter keeps the enqueue time of its first queue (standard
# queues), so a shard queued at PrepareRun is gone from both queues 14 days later. Both run queues keep the
# maximum; a run must end, be torn down and have its dead letters read before then. The day of margin covers
# the last poll (at most an hour), Lambda retries and teardown.
SQS_MAX_RETENTION_SECONDS = 14 * 86_400
RETENTION_MARGIN_SECONDS = 86_400
MAX_RUNTIME_SECONDS = SQS_MAX_RETENTION_SECONDS - RETENTION_MARGIN_SECONDS  # 13 days


# `limits.finish_by` as a duration from the run's start: an ISO 8601 duration of days, hours, minutes and
# seconds (`PT6H`, `PT90M`, `P1DT12H`); years and months have no fixed length and are refused.
FINISH_BY_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def parse_finish_by(value: str) -> datetime | timedelta:
    """`limits.finish_by` as written: an ISO 8601 time with a time zone (a `datetime`), or an ISO 8601
    duration from the run's start (a `timedelta`). ValueError with a sentence for anything else."""
    text = value.strip()
    if text.upper().startswith("P"):
        match = FINISH_BY_DURATION.match(text.upper())
        if match is None or text.upper() in ("P", "PT") or text.upper().endswith("T"):
            raise ValueError(
                f"{value!r} is not an ISO 8601 duration of days, hours, minutes and seconds such as "
                "'PT6H', 'PT90M' or 'P1DT12H' (years and months have no fixed length)"
            )
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if duration <= timedelta(0):
            raise ValueError(f"{value!r} is no time at all: give a duration greater than 0")
        return duration
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither an ISO 8601 time with a time zone (e.g. '2026-12-07T06:00:00Z') nor an "
            "ISO 8601 duration from the run's start (e.g. 'PT6H')"
        ) from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(
            f"{value!r} has no time zone, so it names no one instant: add one (e.g. 'Z' or '+01:00')"
        )
    return at


class LimitsSpec(_Model):
    max_runtime_seconds: int = Field(default=86_400, ge=60, strict=True)
    registration_timeout_seconds: int = Field(default=900, ge=1, le=7_200, strict=True)
    stall_timeout_seconds: int = Field(default=1_800, ge=1, le=86_400, strict=True)
    poll_interval_seconds: int = Field(default=60, ge=1, le=3_600, strict=True)
    handover_after_iterations: int | None = Field(
        default=DEFAULT_HANDOVER_AFTER_ITERATIONS,
        ge=1,
        le=MAX_HANDOVER_AFTER_ITERATIONS,
        strict=True,
        description="monitor iterations per execution before continue-as-new; null: the computed default",
    )
    max_total_usd: float | None = Field(
        default=None,
        gt=0,
        strict=True,
        allow_inf_nan=False,
        description="cap on the whole run's instance cost in USD; the monitor drains the run before its "
        "projected cost crosses it (docs/contracts/dollar-cap.md, 'The dollar cap'); null: no cap",
    )
    finish_by: str | None = Field(
        default=None,
        description="the deadline: an ISO 8601 time with a time zone ('2026-12-07T06:00:00Z') or an ISO "
        "8601 duration from the run's start ('PT6H'); the monitor keeps the fleet at the capacity that "
        "finishes by then (docs/contracts/deadline.md, 'The deadline'); null: no deadline",
    )

    @field_validator("finish_by")
    @classmethod
    def _finish_by_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_finish_by(value)
        return value

    @field_validator("max_runtime_seconds")
    @classmethod
    def _runtime_fits_queue_retention(cls, value: int) -> int:
        if value > MAX_RUNTIME_SECONDS:
            raise ValueError(
                f"at most {MAX_RUNTIME_SECONDS} s (13 days), because SQS keeps a run's shard messages and "
                f"dead letters at most {SQS_MAX_RETENTION_SECONDS // 86_400} days from when they were queued"
            )
        return value

    @model_validator(mode="after")
    def _registration_loop_fits_history(self) -> LimitsSpec:
        # The registration loop runs before any handover is possible, so its polls must fit the history
        # events reserved for everything outside the monitor loop.
        polls = -(-self.registration_timeout_seconds // self.poll_interval_seconds)
        if polls > MAX_REGISTRATION_POLLS:
            raise ValueError(
                f"registration_timeout_seconds / poll_interval_seconds = {polls} polls, more than "
                f"{MAX_REGISTRATION_POLLS} fit one execution's history: raise poll_interval_seconds"
            )
        return self

    @model_validator(mode="after")
    def _finish_by_within_runtime(self) -> LimitsSpec:
        # A time is checked against the run's start at Validate (`finish_by.resolve`); a duration here.
        if self.finish_by is not None:
            parsed = parse_finish_by(self.finish_by)
            if isinstance(parsed, timedelta) and parsed.total_seconds() > self.max_runtime_seconds:
                raise ValueError(
                    # Reported under `limits` (a check across its fields): the sentence names both fields.
                    f"finish_by {self.finish_by} ({int(parsed.total_seconds())} s from the run's start) is "
                    f"beyond max_runtime_seconds ({self.max_runtime_seconds} s): the run is stopped before "
                    "then; raise max_runtime_seconds or choose an earlier deadline"
                )
        return self

    @property
    def effective_handover_after_iterations(self) -> int:
        return self.handover_after_iterations or DEFAULT_HANDOVER_AFTER_ITERATIONS


class Estimate(_Model):
    """What `spotfill plan --write-estimate` projected for the run (its best row): informational only, so the
    report can set what happened against it. Validate checks its shape and nothing else."""

    made_at: AwareDatetime
    instance_type: str
    target_capacity: int = Field(ge=1, strict=True)
    predictions: int = Field(ge=0, strict=True)
    predictions_per_second: float = Field(gt=0, allow_inf_nan=False)
    seconds: float = Field(gt=0, allow_inf_nan=False)
    total_usd: float = Field(ge=0, allow_inf_nan=False)


class BackfillSpec(_Model):
    name: str = Field(
        default="backfill", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    )
    input: InputSpec
    output: OutputSpec
    model: ModelSpec
    fleet: FleetSpec
    service: ServiceSpec = ServiceSpec()
    limits: LimitsSpec = LimitsSpec()
    estimate: Estimate | None = Field(default=None, description="spotfill plan's projection; informational")

    @model_validator(mode="after")
    def _consistent(self) -> BackfillSpec:
        source = self.input
        if source.format == "tfrecord" and source.tfrecord is None:
            raise ValueError(
                'input.tfrecord is required with input.format tfrecord: {"feature": <name>, "shape": [...]}'
            )
        if source.format != "tfrecord" and source.tfrecord is not None:
            raise ValueError(f"input.tfrecord is for input.format tfrecord only, not {source.format}")
        if source.tfrecord is not None and source.id_column == source.tfrecord.feature:
            raise ValueError(f"input.id_column names the feature the model reads ({source.id_column!r})")
        if self.input.is_prefix and self.output.uri.startswith(self.input.uri):
            raise ValueError("output.uri lies inside input.uri: outputs would be read back as shards")
        if self.limits.registration_timeout_seconds >= self.limits.max_runtime_seconds:
            raise ValueError(
                "limits.registration_timeout_seconds must be shorter than limits.max_runtime_seconds"
            )
        tasks = self.fleet.target_capacity * self.service.tasks_per_instance
        if tasks > ECS_TASKS_PER_SERVICE:
            per_instance = self.service.tasks_per_instance
            raise ValueError(
                f"fleet.target_capacity ({self.fleet.target_capacity}) x service.tasks_per_instance "
                f"({per_instance}) = {tasks} tasks may run in the run's ECS service, above ECS's quota of "
                f"{ECS_TASKS_PER_SERVICE} tasks per service: lower fleet.target_capacity to "
                f"{ECS_TASKS_PER_SERVICE // per_instance} or less, or service.tasks_per_instance to "
                f"{max(1, ECS_TASKS_PER_SERVICE // self.fleet.target_capacity)} or less"
            )
        return self
