"""The run report: `reports/<run id>.json` in the control bucket, an EventBridge event and an SNS message.

Written at the end of every run, success or failure, and for invalid input too (no run yet: the report's
run id then comes from the execution name). The figures (docs/contracts.md, "The run report"):
status and reason; shard and prediction counts; phase durations; instance-hours by type; the cost in all and
per purchase option (spot, on demand), the on-demand equivalent and where each on-demand price came from,
cost per million predictions; mean and peak throughput; interruptions seen.

`build_report` is pure; `gather` reads what it needs from AWS; `publish` writes and announces it.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from spotfill_control import state_store
from spotfill_control.aws import is_missing_key, read_object
from spotfill_control.config import Settings
from spotfill_control.deadline import Deadline
from spotfill_control.errors import BudgetReached, SpotfillError, TransientAwsError
from spotfill_control.finishing.teardown import teardown_and_persist
from spotfill_control.fleet.fleet import requested_capacity
from spotfill_control.fleet.weights import per_instance_rates
from spotfill_control.instance_types import capacity_weights
from spotfill_control.monitoring import cost, finish_by, reconcile
from spotfill_control.monitoring.budget import format_usd
from spotfill_control.monitoring.dead_letters import read_dead_letters
from spotfill_control.monitoring.progress import Clients, Reservoir
from spotfill_control.monitoring.series import Series, load_series, series_key
from spotfill_control.run import RunState, utcnow
from spotfill_control.shards import (
    Shard,
    ShardIndex,
    ShardNamer,
    ShardRef,
    iter_shards,
    model_error_key,
    read_shard_index,
    shards_of_part,
    split_s3_uri,
)
from spotfill_control.spec import ModelSpec

logger = Logger(child=True)

Status = Literal["succeeded", "completed_with_failures", "budget_reached", "failed", "invalid"]
EVENT_SOURCE = "spotfill"
EVENT_DETAIL_TYPE = "Backfill Run Finished"
# Outputs whose `spotfill-rows` are read one by one; beyond this the total is estimated from a sample.
EXACT_PREDICTION_COUNT_LIMIT = 2_000
PREDICTION_SAMPLE_SIZE = 500
PREDICTION_SAMPLE_PARTS = 8  # parts of the shard list read for that sample, beyond the exact limit
# the report lists at most this many failed shards (all of them: the records in runs/<id>/dead-letters/)
FAILED_KEYS_LIMIT = 1_000
# The budget for verifying parts the Monitor left open, without a Lambda context: half the Report's Timeout.
DEFAULT_BUDGET_SECONDS = 150.0
# Dollar figures keep 8 decimals: a local-cloud run costs fractions of a cent, and so does its cap.
USD_DIGITS = 8
FAILED_ERRORS_LIMIT = 100  # the report quotes the error records of at most this many failed shards
NOTIFIED_FAILED_ERRORS = 3  # the notification quotes this many of them


class StepError(BaseModel):
    """A Step Functions error as a Catch puts it in the state (`Cause`: the Lambda's JSON error, or text)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    Error: str = "States.TaskFailed"
    Cause: str | None = None

    @property
    def message(self) -> str:
        if not self.Cause:
            return ""
        try:
            cause = json.loads(self.Cause)
        except json.JSONDecodeError:
            return self.Cause
        if isinstance(cause, dict):
            return str(cause.get("errorMessage") or cause.get("Cause") or self.Cause)
        return self.Cause


class FinishEvent(BaseModel):
    """What Teardown and Report receive: the state as the run left it (`run` absent or null if none yet)."""

    model_config = ConfigDict(extra="ignore")

    run: RunState | None = None
    error: StepError | None = None
    teardown_error: StepError | None = None
    execution_arn: str | None = None


def report_key(run_id: str) -> str:
    return f"reports/{run_id}.json"


def run_id_for_execution(execution_arn: str | None, now: datetime) -> str:
    """The report's run id when validation failed before a run existed: the execution's name."""
    if execution_arn:
        name = execution_arn.rsplit(":", 1)[-1]
        if name:
            return name
    return f"invalid-{now:%Y%m%d%H%M%S}"


# ------------------------------------------------------------------------------------------ facts


@dataclass
class Facts:
    """Everything the report says that is not in the run state, read from AWS by `gather`."""

    shards_total: int = 0
    shards_skipped: int = 0
    succeeded: int = 0
    failed_keys: list[str] = field(default_factory=list)
    failed_errors: list[dict[str, Any]] = field(default_factory=list)
    unprocessed: int = 0
    retried: int = 0
    predictions: int = 0
    predictions_exact: bool = True
    # predictions by the purchase option of the instance that made them (`spotfill-purchase-option`)
    predictions_by_purchase_option: dict[str, int] = field(default_factory=dict)
    # how the sampled outputs were computed (their `spotfill-runtime*` metadata)
    runtimes: list[OutputRuntime] = field(default_factory=list)
    usages: list[cost.InstanceUsage] = field(default_factory=list)
    # False when the report ran out of time before every part of the shard list was verified: `unverified`
    # pending shards are then in neither count, and `verification` says so in a sentence.
    verified: bool = True
    unverified: int = 0
    verification: str | None = None
    cost: cost.CostSummary | None = None
    series: Series = field(default_factory=Series)  # the Monitor's samples (empty when it never polled)


def count_rows(output_uris: list[str], s3: Any) -> tuple[int, bool]:
    """Total `spotfill-rows` of the outputs: exact up to EXACT_PREDICTION_COUNT_LIMIT, else estimated."""
    sample = OutputSample()
    for uri in output_uris:
        sample.add(uri)
    return count_sampled_rows(sample, s3)


def count_sampled_rows(sample: OutputSample, s3: Any) -> tuple[int, bool]:
    """Total `spotfill-rows` of `sample.count` outputs from those kept: exact when all are kept, else the
    sample's mean times the count (at most PREDICTION_SAMPLE_SIZE HeadObject calls beyond the limit)."""
    total, exact, _ = count_sampled_rows_by_purchase_option(sample, s3)
    return total, exact


def count_sampled_rows_by_purchase_option(sample: OutputSample, s3: Any) -> tuple[int, bool, dict[str, int]]:
    """`count_sampled_rows`, and the rows split by the purchase option the worker recorded with each output
    (`spotfill-purchase-option`: spot, on-demand; `unknown` for an output without it), scaled like the
    total when estimated."""
    read = read_sampled_outputs(sample, s3)
    return read.predictions, read.exact, read.by_purchase_option


# The output metadata keys where the worker records how it computed each output (docs/contracts.md, "Output
# objects").
RUNTIME_KEY = "spotfill-runtime"
PRECISION_KEY = "spotfill-precision"
MAX_ABS_DIFF_KEY = "spotfill-runtime-max-abs-diff"
ROWS_PER_SECOND_KEY = "spotfill-runtime-rows-per-second"
TOP_CLASS_CHANGED_KEY = "spotfill-runtime-top-class-changed"
FALLBACK_KEY = "spotfill-runtime-fallback"
FALLBACKS_LIMIT = 5  # distinct fallback reasons the report quotes


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


@dataclass(frozen=True)
class OutputRuntime:
    """How the worker computed one output: the runtime its calibration chose and what it measured there."""

    runtime: str
    precision: str
    max_abs_diff: float | None
    top_class_changed: float | None
    rows_per_second: float | None
    fallback: str | None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> OutputRuntime | None:
        """None for an output without the runtime keys (a worker from before they existed)."""
        runtime = metadata.get(RUNTIME_KEY)
        if not runtime:
            return None
        return cls(
            runtime=runtime,
            precision=metadata.get(PRECISION_KEY) or "unknown",
            max_abs_diff=_number(metadata.get(MAX_ABS_DIFF_KEY)),
            top_class_changed=_number(metadata.get(TOP_CLASS_CHANGED_KEY)),
            rows_per_second=_number(metadata.get(ROWS_PER_SECOND_KEY)),
            fallback=metadata.get(FALLBACK_KEY) or None,
        )


@dataclass
class SampledOutputs:
    """What one HeadObject per sampled output tells: the rows (total, exact or estimated, and by purchase
    option) and, for each output that records it, the runtime that computed it."""

    predictions: int = 0
    exact: bool = True
    by_purchase_option: dict[str, int] = field(default_factory=dict)
    runtimes: list[OutputRuntime] = field(default_factory=list)


_MISSING = object()  # a sampled output that does not exist


def read_sampled_outputs(sample: OutputSample, s3: Any) -> SampledOutputs:
    """Read the metadata of the sample's outputs once each: `spotfill-rows` (exact when every output is
    kept, else the sample's mean times the count), the purchase option (`unknown` for an output without
    it; the split scales like the total) and the runtime keys."""
    if sample.count == 0:
        return SampledOutputs()
    chosen = sample.items

    def head(uri: str) -> tuple[int, str, OutputRuntime | None] | object | None:
        bucket, key = split_s3_uri(uri)
        try:
            metadata = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
        except ClientError as exc:
            if is_missing_key(exc):
                return _MISSING
            raise
        value = metadata.get("spotfill-rows")
        if value is None:
            return None
        option = metadata.get("spotfill-purchase-option") or "unknown"
        return int(value), option, OutputRuntime.from_metadata(metadata)

    with ThreadPoolExecutor(max_workers=16) as pool:
        present = [r for r in pool.map(head, chosen) if r is not _MISSING]
    counted = [r for r in present if isinstance(r, tuple)]
    by_option: dict[str, int] = {}
    for value, option, _ in counted:
        by_option[option] = by_option.get(option, 0) + value
    runtimes = [runtime for _, _, runtime in counted if runtime is not None]
    # Exact when every output was read and each told its rows; candidates without an output (a shard that
    # failed or never ran) are no outputs, not unknown ones.
    if sample.exact and len(counted) == len(present) == sample.count:
        return SampledOutputs(sum(by_option.values()), True, by_option, runtimes)
    if not counted:
        return SampledOutputs(0, False)
    scale = sample.count / len(counted)
    return SampledOutputs(
        round(sum(by_option.values()) * scale),
        False,
        {k: round(v * scale) for k, v in by_option.items()},
        runtimes,
    )


def error_record_uris(run_id: str, s3: Any, bucket: str) -> set[str]:
    """Error records the worker wrote (one per shard that failed at least once)."""
    uris: set[str] = set()
    prefix = f"runs/{run_id}/errors/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        uris.update(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    return uris


@dataclass
class ShardTally:
    """The report's per-shard counts, built one shard at a time (`add`), with bounded memory beyond the
    dead letters: the outputs it keeps for the rows count are capped (`OutputSample`)."""

    total: int = 0
    skipped: int = 0
    succeeded: int = 0
    failed: list[str] = field(default_factory=list)
    failed_error_uris: dict[str, str] = field(default_factory=dict)  # failed shard -> its error record
    unprocessed: int = 0
    retried: int = 0
    outputs: OutputSample = field(default_factory=lambda: OutputSample())

    def add(
        self, shard: Shard | ShardRef, present_outputs: set[str], dead: set[str], error_records: set[str]
    ) -> None:
        self.total += 1
        if shard.skipped:
            self.skipped += 1
        elif shard.output in present_outputs:
            self.succeeded += 1
            self.retried += shard.error in error_records
            self.outputs.add(shard.output)
        elif shard.shard in dead:
            self.failed.append(shard.shard)
            if shard.error in error_records and len(self.failed_error_uris) < FAILED_ERRORS_LIMIT:
                self.failed_error_uris[shard.shard] = shard.error
        else:
            self.unprocessed += 1


class OutputSample:
    """Every output while there are at most EXACT_PREDICTION_COUNT_LIMIT, then a uniform random sample of
    PREDICTION_SAMPLE_SIZE (reservoir sampling); `count` is the number of outputs seen."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.count = 0
        self.items: list[str] = []

    def add(self, uri: str) -> None:
        self.count += 1
        if self.count <= EXACT_PREDICTION_COUNT_LIMIT:
            self.items.append(uri)
            return
        if len(self.items) > PREDICTION_SAMPLE_SIZE:  # past the exact limit: keep a uniform sample of them
            self.items = self.rng.sample(self.items, PREDICTION_SAMPLE_SIZE)
        slot = self.rng.randrange(self.count)
        if slot < PREDICTION_SAMPLE_SIZE:
            self.items[slot] = uri

    @property
    def exact(self) -> bool:
        return self.count <= EXACT_PREDICTION_COUNT_LIMIT


def shard_facts(
    shards: Iterable[Shard | ShardRef],
    present_outputs: set[str],
    dead_letters: Iterable[str],
    error_records: set[str],
) -> tuple[int, list[str], int, int]:
    """(succeeded, failed shard keys, unprocessed, retried) for the shards the run had to process.

    A shard failed when it is a dead letter without an output; one with neither was never finished (a run
    that failed or timed out); one that has an output and an error record failed at least once, then
    succeeded on a retry.
    """
    tally = tally_shards(shards, present_outputs, dead_letters, error_records)
    return tally.succeeded, tally.failed, tally.unprocessed, tally.retried


def tally_shards(
    shards: Iterable[Shard | ShardRef],
    present_outputs: set[str],
    dead_letters: Iterable[str],
    error_records: set[str],
) -> ShardTally:
    dead = set(dead_letters)
    tally = ShardTally()
    for shard in shards:
        tally.add(shard, present_outputs, dead, error_records)
    tally.failed.sort()
    return tally


def read_failed_errors(error_uris: Mapping[str, str], s3: Any) -> list[dict[str, Any]]:
    """Each failed shard with the error its record names (the worker's last failure), sorted by shard."""

    def read(item: tuple[str, str]) -> dict[str, Any] | None:
        shard, uri = item
        bucket, key = split_s3_uri(uri)
        body = read_object(s3, bucket, key)
        if body is None:
            return None
        try:
            record = json.loads(body)
        except ValueError:
            record = {}
        record = record if isinstance(record, dict) else {}
        error = record.get("error") or body.decode(errors="replace")[:2000]
        return {
            "shard": shard,
            "error_type": record.get("error_type"),
            "error": error,
            "reason": record.get("reason") or reason_of(record.get("error_type"), error),
            "receive_count": record.get("receive_count"),  # of its last failure: how often it was tried
            "error_record": uri,
        }

    with ThreadPoolExecutor(max_workers=16) as pool:
        found = [r for r in pool.map(read, sorted(error_uris.items())) if r is not None]
    return found


def reason_of(error_type: str | None, error: str) -> str:
    """One line for an error record that carries no `reason` (written before workers wrote one): its type and
    its message's first line."""
    first = next((line.strip() for line in error.splitlines() if line.strip()), "")
    return f"{error_type}: {first}" if error_type else first


def gather(
    run: RunState, s3: Any, ec2: Any, bucket: str, now: datetime, deadline: Deadline | None = None
) -> Facts:
    """The report's facts. The shard counts come from the Monitor's verified parts (`spotfill_control.
    reconcile`) and the dead-letter records, without listing every output: parts the Monitor left open (a
    run that failed, stalled or hit its budget) are verified here within `deadline`, and those it cannot
    reach are reported as unverified."""
    facts = Facts(shards_total=run.shards_total, shards_skipped=run.shards_skipped)
    index = read_shard_index(run.run_id, s3, bucket)
    if index is not None:
        _count_shards(run, index, s3, bucket, facts, deadline or Deadline(DEFAULT_BUDGET_SECONDS))
    else:
        _count_legacy_shards(run, s3, bucket, facts)
    facts.series = load_series(s3, bucket, run.run_id)
    window_start = run.timeline.fleet_requested_at or run.timeline.started_at or now
    window_end = run.timeline.teardown_ended_at or now
    if run.resources.fleet_id or run.progress.known_instances:
        facts.usages, facts.cost = cost.run_cost(
            run.run_id, run.progress.known_instances, window_start, window_end, ec2, run.instance_types
        )
    return facts


def _count_shards(
    run: RunState, index: ShardIndex, s3: Any, bucket: str, facts: Facts, deadline: Deadline
) -> None:
    checkpoint = reconcile.load_checkpoint(run.run_id, s3, bucket)
    dead = set(read_dead_letters(run.run_id, s3, bucket) or [])
    failed: list[str] = []
    unfinished_errors: set[str] = set()  # error records of shards verified here without output or dead letter
    unverified_parts = 0
    for number, part in enumerate(index.parts):
        known = checkpoint.parts.get(number)
        if known is not None and known.settled:
            facts.succeeded += known.done
            if known.failed:
                failed += reconcile.read_failed(run.run_id, number, s3, bucket)
            continue
        if not deadline.fits_another():
            facts.unverified += part.pending
            unverified_parts += 1
            continue
        with deadline.step():
            result = reconcile.verify_part(index, number, s3, bucket, dead)
        facts.succeeded += result.done
        failed += result.failed
        facts.unprocessed += len(result.lost)
        unfinished_errors.update(ref.error for ref in result.lost)
    facts.shards_total, facts.shards_skipped = index.total, index.skipped
    facts.failed_keys = sorted(failed)
    if unverified_parts:
        facts.verified = False
        facts.verification = (
            f"the count is incomplete: {facts.unverified} shard(s) in {unverified_parts} part(s) of the "
            f"shard list were not verified within the report's time budget ({deadline.seconds:.0f} s)"
        )

    # Error records: one per shard that failed at least once (as many as the failures, not the shards).
    namer = ShardNamer(index.input, index.output, bucket, run.run_id)
    records = error_record_uris(run.run_id, s3, bucket) - {f"s3://{bucket}/{model_error_key(run.run_id)}"}
    failed_errors = {shard: namer.ref(shard, False).error for shard in facts.failed_keys}
    quoted = {shard: uri for shard, uri in failed_errors.items() if uri in records}
    facts.failed_errors = read_failed_errors(dict(list(quoted.items())[:FAILED_ERRORS_LIMIT]), s3)
    facts.retried = len(records - set(failed_errors.values()) - unfinished_errors)

    outputs = read_sampled_outputs(prediction_sample(index, s3, bucket, facts.succeeded), s3)
    facts.predictions, facts.predictions_exact = outputs.predictions, outputs.exact
    facts.predictions_by_purchase_option = outputs.by_purchase_option
    facts.runtimes = outputs.runtimes


def prediction_sample(
    index: ShardIndex, s3: Any, bucket: str, succeeded: int, rng: random.Random | None = None
) -> OutputSample:
    """The outputs whose metadata gives the predictions, as an `OutputSample` of `succeeded` outputs: every
    pending shard's output while the run has at most EXACT_PREDICTION_COUNT_LIMIT pending shards (those
    without one are skipped when read), else PREDICTION_SAMPLE_SIZE drawn at random from
    PREDICTION_SAMPLE_PARTS parts chosen at random (by their pending shards): a few part reads, never all."""
    rng = rng or random.Random()
    numbers = [n for n, part in enumerate(index.parts) if part.pending]
    sampled = index.pending > EXACT_PREDICTION_COUNT_LIMIT
    if sampled:
        weights = [index.parts[n].pending for n in numbers]
        numbers = sorted(set(rng.choices(numbers, weights=weights, k=PREDICTION_SAMPLE_PARTS)))
    candidates = Reservoir(PREDICTION_SAMPLE_SIZE if sampled else index.pending, rng)
    for number in numbers:
        key = index.parts[number].key
        body = read_object(s3, bucket, key)
        if body is None:
            raise SpotfillError(f"s3://{bucket}/{key} is missing from the run's shard list")
        for ref in shards_of_part(index, body, bucket):
            if not ref.skipped:
                candidates.add(ref.output)
    sample = OutputSample(rng)
    sample.items, sample.count = candidates.items, succeeded
    return sample


def _count_legacy_shards(run: RunState, s3: Any, bucket: str, facts: Facts) -> None:
    """Runs prepared before the parts layout (`shards.json`, small by construction): tallied against a listing
    of the output prefix, as they always were."""
    stream = iter_shards(run.run_id, s3, bucket)
    if stream is None:
        return
    out_bucket, prefix = split_s3_uri(run.spec.output.uri)
    present: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=out_bucket, Prefix=prefix):
        present.update(f"s3://{out_bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    dead = read_dead_letters(run.run_id, s3, bucket)
    tally = tally_shards(stream, present, dead or [], error_record_uris(run.run_id, s3, bucket))
    facts.succeeded, facts.failed_keys = tally.succeeded, tally.failed
    facts.failed_errors = read_failed_errors(tally.failed_error_uris, s3)
    facts.unprocessed, facts.retried = tally.unprocessed, tally.retried
    facts.shards_total, facts.shards_skipped = tally.total, tally.skipped
    outputs = read_sampled_outputs(tally.outputs, s3)
    facts.predictions, facts.predictions_exact = outputs.predictions, outputs.exact
    facts.predictions_by_purchase_option = outputs.by_purchase_option
    facts.runtimes = outputs.runtimes


# ------------------------------------------------------------------------------------------ the report


def cost_section(summary: cost.CostSummary | None, predictions: int, run: RunState) -> dict[str, Any]:
    """The report's `cost_usd`: what the run cost in all and per purchase option, the on-demand equivalent,
    and where each on-demand figure came from (Price List, or the flagged static fallback table)."""
    total_usd = summary.total_usd if summary else 0.0
    on_demand_usd = summary.on_demand_usd if summary else 0.0
    options = summary.by_purchase_option if summary else {}
    return {
        "total": round(total_usd, USD_DIGITS),
        "spot": round(summary.spot_usd if summary else 0.0, USD_DIGITS),
        "by_purchase_option": {
            option: {
                "instances": spent.instances,
                "hours": round(spent.hours, 6),
                "usd": round(spent.usd, USD_DIGITS),
                "price": "spot price history" if option == "spot" else "on-demand price",
            }
            for option, spent in options.items()
        },
        "on_demand_equivalent": round(on_demand_usd, USD_DIGITS),
        "savings_fraction": _round(summary.savings_fraction if summary else None, 4),
        "per_million_predictions": _round(cost.cost_per_million(total_usd, predictions)),
        "on_demand_per_million_predictions": _round(cost.cost_per_million(on_demand_usd, predictions)),
        "on_demand_prices": {
            name: {"usd_per_hour": f.on_demand_hourly_usd, "source": f.price_source}
            for name, f in run.instance_types.items()
        },
        "static_table_prices": summary.static_table_types if summary else [],
        "types_without_on_demand_price": summary.types_without_on_demand_price if summary else [],
        "unpriced": summary.unpriced if summary else [],
    }


def model_runtime_section(model: ModelSpec, runtimes: list[OutputRuntime]) -> dict[str, Any]:
    """The report's `model_runtime`: what the spec asked for and, over the sampled outputs, the runtimes
    that computed them, their largest difference from TensorFlow FP32 and share of changed top classes on
    the calibration rows, each runtime's median calibration throughput and why candidates were refused."""
    by_runtime: dict[str, int] = {}
    speeds: dict[str, list[float]] = {}
    for output in runtimes:
        by_runtime[output.runtime] = by_runtime.get(output.runtime, 0) + 1
        if output.rows_per_second is not None:
            speeds.setdefault(output.runtime, []).append(output.rows_per_second)
    diffs = [o.max_abs_diff for o in runtimes if o.max_abs_diff is not None]
    changed = [o.top_class_changed for o in runtimes if o.top_class_changed is not None]
    return {
        "requested": model.runtime,
        "precision": model.precision,
        "by_runtime": dict(sorted(by_runtime.items(), key=lambda item: (-item[1], item[0]))),
        "max_abs_diff": max(diffs) if diffs else None,
        "top_class_changed_share": max(changed) if changed else None,
        "rows_per_second": {name: round(statistics.median(v), 1) for name, v in sorted(speeds.items())},
        "fallbacks": sorted({o.fallback for o in runtimes if o.fallback})[:FALLBACKS_LIMIT],
    }


def runtime_sentence(section: Mapping[str, Any]) -> str | None:
    """The report's runtime in one line, e.g. `runtime openvino (fp32, max diff 3.1e-08 vs TensorFlow) 812
    rows/s at calibration`; None when no sampled output recorded its runtime."""
    by_runtime: Mapping[str, int] = section.get("by_runtime") or {}
    if not by_runtime:
        return None
    if len(by_runtime) == 1:
        used = next(iter(by_runtime))
    else:
        used = ", ".join(f"{name} on {count} output(s)" for name, count in by_runtime.items())
    details = [str(section.get("precision"))]
    if section.get("requested") not in ("auto", None) and set(by_runtime) != {section["requested"]}:
        details.insert(0, f"{section['requested']} requested")
    if section.get("max_abs_diff") is not None:
        details.append(f"max diff {section['max_abs_diff']:.1e} vs TensorFlow")
    if section.get("top_class_changed_share") is not None:
        details.append(f"top class changed on {section['top_class_changed_share']:.2%} of rows")
    speeds: Mapping[str, float] = section.get("rows_per_second") or {}
    if len(speeds) == 1 and len(by_runtime) == 1:
        speed = f" {next(iter(speeds.values())):,.0f} rows/s at calibration"
    elif speeds:
        each = ", ".join(f"{name} {value:,.0f}" for name, value in speeds.items())
        speed = f" {each} rows/s at calibration"
    else:
        speed = ""
    fallbacks = section.get("fallbacks") or []
    fell_back = f"; fell back to TensorFlow: {'; '.join(fallbacks)}" if fallbacks else ""
    return f"runtime {used} ({', '.join(details)}){speed}{fell_back}"


def duration_text(seconds: float | None) -> str:
    """`4m12s`, `1h02m03s`; `-` for None."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def estimate_line(section: Mapping[str, Any] | None) -> str | None:
    """The plan's estimate against the run, e.g. `planned 25s, $0.0004, 12,000/s; took 31s (x1.24), $0.0005
    (x1.25), 10,500/s (x0.88)`; None when the spec carried no estimate."""
    if not section:
        return None
    estimate, actual, error = section.get("estimate", {}), section.get("actual", {}), section.get("error", {})

    def figures(values: dict[str, Any], ratios: Mapping[str, Any] | None = None) -> str:
        shown = []
        for name, show in (
            ("seconds", lambda v: duration_text(v)),
            ("total_usd", lambda v: f"${format_usd(v)}"),
            ("predictions_per_second", lambda v: f"{v:,.0f}/s"),
        ):
            value = values.get(name)
            text = "-" if value is None else show(value)
            ratio = (ratios or {}).get(name)
            shown.append(f"{text} (x{ratio:.2f})" if ratio is not None else text)
        return ", ".join(shown)

    return f"planned {figures(estimate)}; took {figures(actual, error)}"


REDRIVE = "spotfill redrive"


def report_rows(report: Mapping[str, Any], redrive: str = REDRIVE) -> list[tuple[str, str]]:
    """The report as (what, value) lines: the table `spotfill report` prints and the HTML page ends with;
    `redrive` names what queues unfinished shards again (`run --local` names its own re-run)."""
    rows = [("reason", str(report.get("reason") or "-"))]
    shards = report.get("shards", {})
    if shards:
        rows.append(
            (
                "shards",
                f"{shards.get('succeeded', 0)} succeeded, {shards.get('failed', 0)} failed, "
                f"{shards.get('skipped_existing', 0)} skipped (output existed), "
                f"{shards.get('retried', 0)} retried, "
                f"{shards.get('unprocessed', 0)} unfinished ({redrive}), "
                f"of {shards.get('total', 0)}",
            )
        )
        if shards.get("verification"):
            rows.append(("  count", str(shards["verification"])))
        reasons = {e.get("shard"): e.get("reason") for e in shards.get("failed_errors", [])}
        rows += [
            ("  failed", f"{key}: {reasons[key]}" if reasons.get(key) else str(key))
            for key in shards.get("failed_keys", [])[:10]
        ]
    predictions = report.get("predictions", {})
    if predictions:
        rows.append(("predictions", f"{predictions.get('total', 0):,}"))
    phases = report.get("phases_seconds", {})
    if phases:
        rows.append(
            ("phases", ", ".join(f"{k} {v:.1f}s" for k, v in phases.items() if isinstance(v, int | float)))
        )
    throughput = report.get("throughput", {})
    if throughput:
        rows.append(
            (
                "throughput",
                f"mean {throughput.get('mean_predictions_per_second') or 0:,.0f}/s, "
                f"peak {throughput.get('peak_predictions_per_second') or 0:,.0f}/s",
            )
        )
    runtime = runtime_sentence(report.get("model_runtime") or {})
    if runtime:
        rows.append(("model", runtime))
    instances = report.get("instances", {})
    if instances:
        hours = ", ".join(f"{k} {v:.4f}h" for k, v in instances.get("hours_by_type", {}).items())
        rows.append(
            (
                "instances",
                f"{instances.get('count', 0)} ({hours or '-'}), "
                f"{instances.get('interruptions', 0)} interrupted",
            )
        )
    deadline = report.get("deadline")
    if deadline:
        rows.append(("deadline", deadline_sentence(deadline)))
    if report.get("weights"):
        rows.append(("weights", weights_sentence(report["weights"])))
    cap = (report.get("budget") or {}).get("max_total_usd")
    if cap is not None:  # the run's one cost figure (`cost_usd.total`) against the cap
        spent_usd = (report.get("cost_usd") or {}).get("total") or 0.0
        drained = " (drained)" if report["budget"].get("drain_started_at") else ""
        rows.append(("budget", f"${format_usd(spent_usd)} of ${format_usd(cap)} cap{drained}"))
    spent = report.get("cost_usd", {})
    if spent:
        options = spent.get("by_purchase_option", {})
        split = ", ".join(
            f"{name} ${format_usd(option.get('usd', 0))} ({option.get('hours', 0):.4f}h)"
            for name, option in options.items()
            if option.get("instances")
        )
        static = spent.get("static_table_prices") or []
        rows.append(
            (
                "cost",
                f"${format_usd(spent.get('total', spent.get('spot', 0)))}{f' ({split})' if split else ''} vs "
                f"${format_usd(spent.get('on_demand_equivalent', 0))} on demand; "
                f"${spent.get('per_million_predictions') or 0:.4f} per million predictions"
                + (f"; on-demand prices of {', '.join(static)} from the static table" if static else ""),
            )
        )
    versus = estimate_line(report.get("estimate_vs_actual"))
    if versus:
        rows.append(("estimate", versus))
    rows.append(("report", str(report.get("report_uri", "-"))))
    return rows


def status_of(
    run: RunState | None,
    error: StepError | None,
    teardown_error: StepError | None,
    failed: int,
    failed_reasons: Sequence[str] = (),
) -> tuple[Status, str]:
    """The run's status and why, in one sentence. `failed_reasons`: the one-line reasons of the failed shards
    the report quotes; when every failed shard is quoted with the same one (a model that fails on every
    shard), the sentence says it."""
    if error is not None:
        if error.Error == "InvalidSpecError":
            return "invalid", f"invalid input: {error.message}"
        if error.Error == BudgetReached.__name__:
            return "budget_reached", f"budget reached: {error.message}"
        return "failed", f"{error.Error}: {error.message}".rstrip(": ")
    if run is None:
        return "failed", "the execution ended before a run existed"
    if teardown_error is not None:
        return "failed", f"teardown failed: {teardown_error.Error}: {teardown_error.message}".rstrip(": ")
    if failed:
        said = f"{failed} shard(s) failed and were set aside as dead letters"
        if len(failed_reasons) == failed and len(set(failed_reasons)) == 1:
            said += f": {failed_reasons[0]}"
        return "completed_with_failures", said
    return "succeeded", "every shard has its output"


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def per_second(count: float, seconds: float | None) -> float | None:
    if not seconds or seconds <= 0:
        return None
    return count / seconds


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def build_report(
    run: RunState | None,
    *,
    run_id: str,
    error: StepError | None,
    teardown_error: StepError | None,
    facts: Facts,
    now: datetime,
    execution_arn: str | None = None,
    control_bucket: str,
) -> dict[str, Any]:
    """The report document (pure)."""
    status, reason = status_of(
        run, error, teardown_error, len(facts.failed_keys), [e["reason"] for e in facts.failed_errors]
    )
    if facts.verification:
        reason = f"{reason}; {facts.verification}"
    document: dict[str, Any] = {
        "run_id": run_id,
        "status": status,
        "reason": reason,
        "error": None if error is None else {"type": error.Error, "message": error.message},
        "teardown_error": None
        if teardown_error is None
        else {"type": teardown_error.Error, "message": teardown_error.message},
        "report_uri": f"s3://{control_bucket}/{report_key(run_id)}",
        "generated_at": now.isoformat(),
    }
    if run is None:
        document["execution_arn"] = execution_arn
        return document

    t = run.timeline
    processing_end = t.processing_ended_at or t.teardown_started_at or now
    processing_seconds = seconds_between(t.processing_started_at, processing_end)
    summary = facts.cost
    document.update(
        {
            "name": run.spec.name,
            "teardown_unconfirmed": list(run.teardown_unconfirmed),
            "execution_arn": run.execution_arn or execution_arn,
            "executions": run.executions,
            "source": run.source,
            "manifest_uri": run.manifest_uri,
            "input_uri": run.spec.input.uri,
            "output_uri": run.spec.output.uri,
            "model_uri": run.spec.model.uri,
            "shards": {
                "total": facts.shards_total,
                "skipped_existing": facts.shards_skipped,
                "succeeded": facts.succeeded,
                "failed": len(facts.failed_keys),
                "failed_keys": facts.failed_keys[:FAILED_KEYS_LIMIT],
                "failed_keys_truncated": len(facts.failed_keys) > FAILED_KEYS_LIMIT,
                "failed_errors": facts.failed_errors,
                "unprocessed": facts.unprocessed,
                "retried": facts.retried,
                "requeued": run.progress.requeued,
                "verified": facts.verified,
                "unverified": facts.unverified,
                "verification": facts.verification,
            },
            "predictions": {
                "total": facts.predictions,
                "exact": facts.predictions_exact,
                "by_purchase_option": facts.predictions_by_purchase_option,
            },
            "capacity": capacity_of(run),
            "phases_seconds": {
                "validate": seconds_between(t.started_at, t.validated_at),
                "fleet_fulfilled": seconds_between(t.fleet_requested_at, t.fleet_fulfilled_at),
                "registration": seconds_between(t.fleet_requested_at, t.registered_at),
                "processing": processing_seconds,
                "teardown": seconds_between(t.teardown_started_at, t.teardown_ended_at),
                "total": seconds_between(t.started_at, t.teardown_ended_at or now),
            },
            "timeline": {k: (v.isoformat() if v else None) for k, v in t.model_dump().items()},
            "instances": {
                "count": len(facts.usages),
                "hours_by_type": {
                    k: round(v, 6) for k, v in (summary.hours_by_type if summary else {}).items()
                },
                "interruptions": run.progress.interruptions,
                "failed_pools": [pool.model_dump() for pool in run.failed_pools],
            },
            "cost_usd": cost_section(summary, facts.predictions, run),
            "model_runtime": model_runtime_section(run.spec.model, facts.runtimes),
            "budget": budget_of(run, summary.total_usd if summary else 0.0),
            "throughput": {
                "mean_shards_per_second": _round(per_second(facts.succeeded, processing_seconds)),
                "peak_shards_per_second": round(run.progress.peak_shards_per_second, 6),
                "mean_predictions_per_second": _round(per_second(facts.predictions, processing_seconds)),
                "peak_predictions_per_second": round(run.progress.peak_predictions_per_second, 6),
            },
            "series": {
                "samples": len(facts.series.samples),
                "interval_seconds": facts.series.interval_seconds if facts.series.samples else None,
                "key": series_key(run.run_id) if facts.series.samples else None,
            },
        }
    )
    estimate = getattr(run.spec, "estimate", None)
    if estimate is not None:
        document["estimate_vs_actual"] = estimate_vs_actual(estimate, document)
    if run.finish_by is not None:
        document["deadline"] = deadline_of(run)
    if run.weighting is not None:
        document["weights"] = weights_of(run)
    return document


def weights_of(run: RunState) -> dict[str, Any]:
    """The fleet's weights (`fleet.weights`): as requested (by vCPUs or GPUs), what each type was
    measured to deliver per instance and over how many outputs, every re-weighting (the latest
    `weights.CHANGES_KEPT`) and the weights at the end."""
    weighting = run.weighting
    assert weighting is not None
    rates = per_instance_rates(weighting.measured, run.spec.service.tasks_per_instance)
    return {
        "requested": capacity_weights(run.instance_types) if run.instance_types else {},
        "final": run.capacity_weights,
        "per_instance_predictions_per_second": {t: round(r, 3) for t, r in rates.items()},
        "measured_outputs": {t: m.outputs for t, m in sorted(weighting.measured.items())},
        "changes": [change.model_dump(mode="json") for change in weighting.changes],
    }


def weights_sentence(section: Mapping[str, Any]) -> str:
    """`c5.2xlarge 2 -> 1 (1.0/s per instance), c5.xlarge 1 -> 2 (2.0/s per instance); re-weighted 1 time`,
    or `by vCPUs, not re-weighted (...)`."""
    requested, final = section.get("requested") or {}, section.get("final") or {}
    rates = section.get("per_instance_predictions_per_second") or {}
    changes = len(section.get("changes") or [])

    def one(name: str) -> str:
        rate = f" ({rates[name]:,.1f}/s per instance)" if name in rates else ""
        before, after = requested.get(name), final.get(name)
        return f"{name} {before:g} -> {after:g}{rate}" if before != after else f"{name} {after:g}{rate}"

    described = ", ".join(one(name) for name in sorted(final))
    if not changes:
        return f"as requested, not re-weighted ({described})"
    return f"{described}; re-weighted {changes} time" + ("" if changes == 1 else "s")


def deadline_of(run: RunState) -> dict[str, Any]:
    """`limits.finish_by` against when processing ended (the poll that saw the last output): met or missed
    and by how many seconds (None for a run that never finished processing), and the Monitor's last view."""
    state = run.finish_by
    assert state is not None
    outcome = finish_by.met(state, run.timeline.processing_ended_at)
    last = state.projected_finish_at
    return {
        "finish_by": run.spec.limits.finish_by,
        "at": state.at.isoformat(),
        "met": None if outcome is None else outcome[0],
        "seconds_to_spare": None if outcome is None else round(outcome[1], 3),
        "checked_at_validate": state.start_units is not None,
        "start_units": state.start_units,
        "last_target_units": state.target_units,
        "last_needed_units": state.needed_units,
        "limited_by": state.limited_by,
        "last_projected_finish_at": last.isoformat() if last else None,
    }


def deadline_sentence(deadline: Mapping[str, Any]) -> str:
    """`met, 12.5 min to spare (deadline ...)`, `missed by 3.0 min (...)`, or `not finished (...)`."""
    at = f"deadline {deadline.get('at')}"
    if deadline.get("met") is None:
        return f"not finished ({at})"
    spare = float(deadline.get("seconds_to_spare") or 0.0)
    if deadline["met"]:
        return f"met, {spare / 60:.1f} min to spare ({at})"
    return f"missed by {-spare / 60:.1f} min ({at})"


def estimate_vs_actual(estimate: Any, document: Mapping[str, Any]) -> dict[str, Any]:
    """The plan's estimate (the spec's `estimate`) beside what happened, and actual / estimate per figure.

    The actual seconds are the whole run's (`phases_seconds.total`: validation to the end of teardown, as
    `spotfill plan` estimates them), the actual cost the report's `cost_usd.total`, and the actual throughput
    the predictions over the processing phase (`predictions.total / phases_seconds.processing`)."""
    given = estimate.model_dump(mode="json") if isinstance(estimate, BaseModel) else dict(estimate)
    processing = document["phases_seconds"]["processing"]
    actual = {
        "seconds": document["phases_seconds"]["total"],
        "total_usd": document["cost_usd"]["total"],
        "predictions_per_second": _round(per_second(document["predictions"]["total"], processing)),
    }
    return {
        "estimate": given,
        "actual": actual,
        "error": {name: _ratio(value, given.get(name)) for name, value in actual.items()},
    }


def _ratio(actual: float | None, estimated: Any) -> float | None:
    if actual is None or not isinstance(estimated, int | float) or estimated <= 0:
        return None
    return round(actual / estimated, 4)


def capacity_of(run: RunState) -> dict[str, Any]:
    """The fleet capacity the spec asked for and the capacity the fleet was requested with (None when no
    fleet was requested), and why they differ: the request never asks more than the pending shards use."""
    asked = run.spec.fleet.target_capacity
    requested = requested_capacity(run) if run.resources.fleet_id else None
    capped = requested is not None and requested < asked
    pending = max(0, run.shards_total - run.shards_skipped)
    per_instance = run.spec.service.tasks_per_instance
    return {
        "fleet_api": run.spec.fleet.api,
        "fleet_id": run.resources.fleet_id,
        "on_demand_base": run.spec.fleet.on_demand_base,
        "on_demand_fallback_after_seconds": run.spec.fleet.on_demand_fallback_after_seconds,
        "on_demand_fallback_units": run.progress.on_demand_fallback_units,
        "spec_target_capacity": asked,
        "fleet_target_capacity": requested,
        "capped": capped,
        "reason": (
            f"capped at {requested}: {pending} pending shard(s) at {per_instance} task(s) per instance "
            f"keep at most {requested} instance(s) busy"
            if capped
            else None
        ),
    }


def budget_of(run: RunState, spent_usd: float) -> dict[str, Any]:
    """The dollar cap against what the run cost, `spent_usd`: the report's one cost figure (`cost_usd.total`,
    each instance from launch to termination). The monitor's own accrual stops at its last poll, before the
    drain's end and teardown, so it is a running figure only (`spotfill watch`, the series) and never reported
    as the run's cost: two totals for one run would contradict each other."""
    b = run.budget
    return {
        "max_total_usd": run.spec.limits.max_total_usd,
        "spent_usd": round(spent_usd, USD_DIGITS),
        "last_projected_usd": round(b.projected_usd, USD_DIGITS),
        "fleet_hourly_usd": round(b.hourly_usd, USD_DIGITS),
        "drain_started_at": b.draining_since.isoformat() if b.draining_since else None,
    }


def summary_of(report: Mapping[str, Any]) -> dict[str, Any]:
    """The small summary the Report state returns and the EventBridge event carries."""
    shards = report.get("shards", {})
    return {
        "run_id": report["run_id"],
        "status": report["status"],
        "reason": report["reason"],
        "report_uri": report["report_uri"],
        "execution_arn": report.get("execution_arn"),
        "shards_succeeded": shards.get("succeeded", 0),
        "shards_failed": shards.get("failed", 0),
        "predictions": report.get("predictions", {}).get("total", 0),
        "spot_cost_usd": report.get("cost_usd", {}).get("spot"),
        "cost_usd": report.get("cost_usd", {}).get("total"),
    }


SUBJECT_WORDS: dict[str, str] = {
    "succeeded": "succeeded",
    "completed_with_failures": "succeeded with failed shards",
    "budget_reached": "stopped: budget reached",
    "failed": "failed",
    "invalid": "failed: invalid input",
}


def notification(report: Mapping[str, Any]) -> tuple[str, str]:
    """(subject, message) of the SNS notification; subjects are ASCII and at most 100 characters."""
    subject = f"spotfill run {report['run_id']} {SUBJECT_WORDS[report['status']]}"
    if len(subject) > 100:
        subject = subject[:97] + "..."
    lines = [subject, "", f"Reason: {report['reason']}"]
    if "shards" in report:
        s = report["shards"]
        lines.append(
            f"Shards: {s['succeeded']} succeeded, {s['failed']} failed, {s['unprocessed']} unprocessed"
        )
        for failed in s.get("failed_errors", [])[:NOTIFIED_FAILED_ERRORS]:
            why = failed.get("reason") or f"{failed['error_type']}: {failed['error']}"
            lines.append(f"Failed: {failed['shard']}: {why}"[:500])
        lines.append(f"Predictions: {report['predictions']['total']}")
        lines.append(f"Cost: ${format_usd(report['cost_usd']['total'])}")
        runtime = runtime_sentence(report.get("model_runtime") or {})
        if runtime:
            lines.append(f"Model {runtime}"[:500])
        cap = report.get("budget", {}).get("max_total_usd")
        if cap is not None:
            lines.append(f"Cap: ${format_usd(cap)} (limits.max_total_usd)")
        if report.get("deadline"):
            lines.append(f"Deadline: {deadline_sentence(report['deadline'])} (limits.finish_by)")
    lines.append(f"Report: {report['report_uri']}")
    return subject.encode("ascii", "replace").decode(), "\n".join(lines)


def publish(
    report: Mapping[str, Any], *, s3: Any, events: Any, sns: Any, bucket: str, bus: str, topic: str
) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=report_key(report["run_id"]),
        Body=json.dumps(report, indent=2).encode(),
        ContentType="application/json",
    )
    entry: dict[str, Any] = {
        "Source": EVENT_SOURCE,
        "DetailType": EVENT_DETAIL_TYPE,
        "Detail": json.dumps(summary_of(report)),
        "EventBusName": bus,
    }
    if report.get("execution_arn"):
        entry["Resources"] = [report["execution_arn"]]
    response = events.put_events(Entries=[entry])
    if response.get("FailedEntryCount"):
        failure = response.get("Entries", [{}])[0]
        problem = f"events.put_events: {failure.get('ErrorCode')}: {failure.get('ErrorMessage')}"
        if failure.get("ErrorCode") in ("ThrottlingException", "InternalFailure", "InternalException"):
            raise TransientAwsError(problem)
        raise SpotfillError(problem)
    subject, message = notification(report)
    sns.publish(TopicArn=topic, Subject=subject, Message=message)


def report_run(
    run: RunState | None,
    *,
    error: StepError | None,
    teardown_error: StepError | None,
    execution_arn: str | None,
    clients: ReportClients,
    settings: Settings,
    now: datetime,
    deadline: Deadline | None = None,
) -> dict[str, Any]:
    """Gather, build, write and announce the run's report; returns its small summary. `deadline` bounds the
    verification of the parts the Monitor left open (`gather`)."""
    bucket = settings.control_bucket
    if run is None:
        run_id, facts = run_id_for_execution(execution_arn, now), Facts()
    else:
        run_id, facts = run.run_id, gather(run, clients.s3, clients.ec2, bucket, now, deadline)
    document = build_report(
        run,
        run_id=run_id,
        error=error,
        teardown_error=teardown_error,
        facts=facts,
        now=now,
        execution_arn=execution_arn,
        control_bucket=bucket,
    )
    page = render_page(document, facts.series)
    document["html_key"] = None if page is None else report_html_key(run_id)
    if page is not None:
        clients.s3.put_object(
            Bucket=bucket, Key=document["html_key"], Body=page.encode(), ContentType=HTML_CONTENT_TYPE
        )
    publish(
        document,
        s3=clients.s3,
        events=clients.events,
        sns=clients.sns,
        bucket=bucket,
        bus=settings.event_bus_name,
        topic=settings.notification_topic_arn,
    )
    return summary_of(document)


HTML_CONTENT_TYPE = "text/html; charset=utf-8"


def report_html_key(run_id: str) -> str:
    return f"reports/{run_id}.html"


def render_page(document: Mapping[str, Any], series: Series | None) -> str | None:
    """The report's HTML page with the run's series (finishing.report_html); None, logged, when it
    cannot be drawn: the page is a view of the report, whose JSON, event and notification go out anyway."""
    from spotfill_control.finishing import report_html  # matplotlib loads only where a page is drawn

    try:
        return report_html.render_html(document, series)
    except Exception:
        logger.exception("the report's HTML page could not be drawn", extra={"run_id": document["run_id"]})
        return None


@dataclass
class ReportClients:
    s3: Any
    ec2: Any
    events: Any
    sns: Any


# ------------------------------------------------------------------------------------------ cleanup on exit


class ExecutionDetail(BaseModel):
    model_config = ConfigDict(extra="ignore")

    executionArn: str
    stateMachineArn: str | None = None
    name: str | None = None
    status: str
    error: str | None = None
    cause: str | None = None


class ExecutionStatusChange(BaseModel):
    """The EventBridge event "Step Functions Execution Status Change" (source aws.states)."""

    model_config = ConfigDict(extra="ignore")

    detail: ExecutionDetail


CLEANUP_STATUSES = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})


def error_of(detail: ExecutionDetail) -> StepError:
    if detail.status == "TIMED_OUT":
        return StepError(Error="States.Timeout", Cause=detail.cause or "the execution timed out")
    if detail.status == "ABORTED":
        return StepError(Error="ExecutionAborted", Cause=detail.cause or "the execution was aborted")
    return StepError(Error=detail.error or "States.Runtime", Cause=detail.cause or "the execution failed")


def report_exists(run_id: str, s3: Any, bucket: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=report_key(run_id))
    except ClientError as exc:
        if is_missing_key(exc):
            return False
        raise
    return True


def clean_up_after(
    change: ExecutionStatusChange,
    *,
    teardown_clients: Clients,
    report_clients: ReportClients,
    settings: Settings,
    now: Callable[[], datetime] = utcnow,
    time_left: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Tear down and report the run of an execution that ended without doing so itself (`time_left`:
    the invocation's time left, which bounds teardown's deregistration of container instances).

    Ignored: other statuses, and an execution whose run lives on in a newer execution (continue-as-new).
    The report is written unless the run already has one (an execution that failed through the ASL's own
    Teardown and Report states, which this rule also hears about).
    """
    detail = change.detail
    arn = detail.executionArn
    if detail.status not in CLEANUP_STATUSES:
        return {"execution_arn": arn, "action": "ignored", "why": f"status {detail.status}"}
    bucket = settings.control_bucket
    run = state_store.load_by_execution(arn, report_clients.s3, bucket)
    if run is not None and run.execution_arn and run.execution_arn != arn:
        return {
            "execution_arn": arn,
            "action": "ignored",
            "why": f"run {run.run_id} continues in {run.execution_arn}",
        }
    error = error_of(detail)
    if run is not None:
        run, _ = teardown_and_persist(run, teardown_clients, settings, now, time_left)
    run_id = run.run_id if run is not None else run_id_for_execution(arn, now())
    if report_exists(run_id, report_clients.s3, bucket):
        return {"execution_arn": arn, "run_id": run_id, "action": "torn_down", "reported": False}
    summary = report_run(
        run,
        error=error,
        teardown_error=None,
        execution_arn=arn,
        clients=report_clients,
        settings=settings,
        now=now(),
    )
    return {
        "execution_arn": arn,
        "run_id": run_id,
        "action": "torn_down",
        "reported": True,
        "status": summary["status"],
    }
