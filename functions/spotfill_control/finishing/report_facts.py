"""What the run report reads from AWS (`gather`): shard counts, predictions, the runtimes behind them, cost.

The shard counts come from the Monitor's verified parts (`monitoring.reconcile`) and the dead-letter records,
without listing every output; the predictions from the `spotfill-rows` metadata of the outputs, every one up
to EXACT_PREDICTION_COUNT_LIMIT and a random sample beyond; the cost from the run's instances
(`monitoring.cost`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control.aws import is_missing_key, read_object
from spotfill_control.deadline import Deadline
from spotfill_control.errors import SpotfillError
from spotfill_control.monitoring import cost, reconcile
from spotfill_control.monitoring.dead_letters import read_dead_letters
from spotfill_control.monitoring.progress import Reservoir
from spotfill_control.monitoring.series import Series, load_series
from spotfill_control.run import RunState
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

# Outputs whose `spotfill-rows` are read one by one; beyond this the total is estimated from a sample.
EXACT_PREDICTION_COUNT_LIMIT = 2_000


PREDICTION_SAMPLE_SIZE = 500


PREDICTION_SAMPLE_PARTS = 8  # parts of the shard list read for that sample, beyond the exact limit


# The budget for verifying parts the Monitor left open, without a Lambda context: half the Report's Timeout.
DEFAULT_BUDGET_SECONDS = 150.0


FAILED_ERRORS_LIMIT = 100  # the report quotes the error records of at most this many failed shards


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


# The output metadata keys where the worker records how it computed each output
# (docs/contracts/output-objects.md, "Output objects").
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
