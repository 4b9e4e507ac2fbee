"""How far a run is: what a Monitor poll saw (`Iteration`), the arithmetic of done, lost and estimated shards
and of throughput, the reads of queues and outputs it comes from, and the checks that end a run.

Done means every shard has an output object or sits in the dead-letter queue (docs/contracts/monitoring.md).
The checks
(`check_model`, `check_fleet`, `enforce_limits`: a model no worker can load, a fleet gone with work left, a
stall, the maximum runtime) run after the poll persisted what it saw, so the report of a stalled run still has
its last figures. `monitoring.poll` runs the iteration that uses all of these.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control.aws import is_missing_key, read_object
from spotfill_control.errors import (
    FleetRequestError,
    ModelLoadError,
    RunTimeoutError,
    StallError,
)
from spotfill_control.fleet.fleet_api import LIVE_STATES
from spotfill_control.run import Progress, RunState
from spotfill_control.shards import (
    Shard,
    model_error_key,
    split_s3_uri,
)

# Outputs whose `spotfill-rows` metadata is read per iteration to estimate rows (predictions) per shard.
ROWS_SAMPLE_SIZE = 5


# Once this many outputs were sampled the mean is good enough: later iterations read no more metadata.
ROWS_SAMPLE_LIMIT = 200


ACTIVE_FLEET_STATES = LIVE_STATES


@dataclass(frozen=True)
class QueueDepth:
    visible: int = 0
    in_flight: int = 0
    delayed: int = 0

    @property
    def total(self) -> int:
        return self.visible + self.in_flight + self.delayed

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being worked on."""
        return self.total == 0


@dataclass
class Iteration:
    """What one iteration saw and did; the handler logs it."""

    outputs_done: int = 0
    dead_letters: int = 0
    remaining: int = 0
    requeued: int = 0
    queue: QueueDepth = field(default_factory=QueueDepth)
    dead_letter_queue: QueueDepth = field(default_factory=QueueDepth)
    interruptions: int = 0
    fleet_target_capacity: int | None = None
    service_desired_count: int | None = None
    running_tasks: int = 0  # the service's running tasks when it was looked at
    capacity: dict[str, float] = field(default_factory=dict)  # "<type>/<spot|on-demand>" -> live instances
    # None: no fleet to look at (or EC2 does not know the one it just made yet); "gone": it no longer exists
    fleet_state: str | None = None
    fleet_valid_until: datetime | None = None  # the request's ValidUntil, when EC2 reports it
    model_error: dict[str, Any] | None = None  # the record a worker wrote when the model could not load
    dead_letters_stored: int = 0  # dead-letter messages moved into S3 records by this poll
    parts_verified: int = 0  # shard-list parts whose outputs this poll listed
    parts_settled: int = 0  # of those, parts found settled (never listed again)
    listed_pages: int = 0  # ListObjectsV2 pages of outputs read
    exact: bool = False  # the counts come from every part's verification (not from the queues' depths)


def count_present(expected: Iterable[str], present: set[str]) -> int:
    return sum(1 for uri in expected if uri in present)


def is_done(total: int, outputs_done: int, dead_lettered: int) -> bool:
    return outputs_done + dead_lettered >= total


def lost_shards(shards: Iterable[Shard], present_outputs: set[str], dead_lettered: set[str]) -> list[Shard]:
    """Shards with neither an output nor a dead letter."""
    return [s for s in shards if s.output not in present_outputs and s.shard not in dead_lettered]


def rate(before: int, after: int, since: datetime | None, now: datetime) -> float:
    """Items per second between two observations; 0 when there is no earlier one or no time passed."""
    if since is None:
        return 0.0
    seconds = (now - since).total_seconds()
    if seconds <= 0:
        return 0.0
    return max(0, after - before) / seconds


def mean_rows_per_shard(progress: Progress) -> float | None:
    if progress.rows_sampled_outputs == 0:
        return None
    return progress.rows_sampled_total / progress.rows_sampled_outputs


def handover_due(run: RunState) -> bool:
    return run.progress.iterations_this_execution >= run.spec.limits.effective_handover_after_iterations


def check_fleet(run: RunState, seen: Iteration, now: datetime | None = None) -> None:
    """Raise when work remains but the fleet was cancelled, failed, expired or is gone: no instance will come
    to do it, so waiting for the stall timeout would only delay the report. A fleet past its ValidUntil
    expired (EC2 terminated its instances): RunTimeoutError; any other end: FleetRequestError. `now` is when
    the fleet was looked at or later (by default: the time of this check)."""
    if run.progress.state == "done" or seen.fleet_state is None:
        return
    if seen.fleet_state not in ACTIVE_FLEET_STATES:
        valid_until = seen.fleet_valid_until
        if valid_until is not None and (now or datetime.now(UTC)) >= valid_until:
            raise RunTimeoutError(
                f"fleet {run.resources.fleet_id} expired at {valid_until.isoformat()} "
                "(its ValidUntil, set from limits.max_runtime_seconds = "
                f"{run.spec.limits.max_runtime_seconds}) and EC2 terminated its instances while "
                f"{seen.remaining} shard(s) remain"
            )
        raise FleetRequestError(
            f"fleet {run.resources.fleet_id} is {seen.fleet_state} while {seen.remaining} shard(s) remain"
        )


def check_model(run: RunState, seen: Iteration) -> None:
    """Raise ModelLoadError when a worker recorded that the model cannot load: no worker will ever process a
    shard, so the run fails now (teardown and the report follow) instead of at the stall timeout."""
    record = seen.model_error
    if record is None:
        return
    reason = f"{record.get('error_type') or 'Error'}: {record.get('error') or 'no reason given'}"
    raise ModelLoadError(f"the model {run.spec.model.uri} cannot be loaded by the workers: {reason}")


def read_model_error(run_id: str, s3: Any, control_bucket: str) -> dict[str, Any] | None:
    """The model-load error record, or None. Listed before it is read: a GetObject of a missing key answers
    403, not 404, to a role whose ListBucket is limited to a prefix (docs/contracts/iam.md, "IAM")."""
    key = model_error_key(run_id)
    listed = s3.list_objects_v2(Bucket=control_bucket, Prefix=key, MaxKeys=1).get("Contents", [])
    if not any(obj["Key"] == key for obj in listed):
        return None
    body = read_object(s3, control_bucket, key)
    if body is None:
        return None
    try:
        record = json.loads(body)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return {"error_type": "ModelLoadError", "error": body.decode(errors="replace")[:2000]}
    return record


def enforce_limits(run: RunState, now: datetime) -> None:
    """Raise when the run stalled or outlived its maximum runtime (never for a finished run)."""
    if run.progress.state == "done":
        return
    limits = run.spec.limits
    started = run.timeline.started_at or run.timeline.validated_at
    if started is not None and (now - started).total_seconds() > limits.max_runtime_seconds:
        raise RunTimeoutError(
            f"run {run.run_id} has run for {int((now - started).total_seconds())} s, longer than "
            f"limits.max_runtime_seconds = {limits.max_runtime_seconds}; "
            f"{run.progress.outputs_done} outputs, {run.progress.dead_letters} dead letters"
        )
    last = run.progress.last_progress_at
    draining = run.budget.draining_since is not None  # no progress is the point: the drain has its own end
    if not draining and last is not None and (now - last).total_seconds() > limits.stall_timeout_seconds:
        raise StallError(
            f"run {run.run_id} made no progress for {int((now - last).total_seconds())} s "
            f"(limits.stall_timeout_seconds = {limits.stall_timeout_seconds}): "
            f"{run.progress.outputs_done} outputs and {run.progress.dead_letters} dead letters "
            f"since {last.isoformat()}"
        )


def queue_depth(queue_url: str | None, sqs: Any) -> QueueDepth:
    if queue_url is None:
        return QueueDepth()
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return QueueDepth(
        visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
        in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        delayed=int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
    )


def sample_rows(output_uris: list[str], s3: Any, size: int = ROWS_SAMPLE_SIZE) -> tuple[int, int]:
    """(outputs read, rows in them) from the `spotfill-rows` metadata of up to `size` outputs."""
    sampled, rows, _ = sample_outputs(output_uris, s3, size)
    return sampled, rows


def sample_outputs(
    output_uris: list[str], s3: Any, size: int = ROWS_SAMPLE_SIZE
) -> tuple[int, int, list[tuple[str, dict[str, str]]]]:
    """`sample_rows`, and the user metadata of every output it read (URI, metadata)."""
    sampled = rows = 0
    read: list[tuple[str, dict[str, str]]] = []
    for uri in random.sample(output_uris, min(size, len(output_uris))):
        bucket, key = split_s3_uri(uri)
        try:
            metadata = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
        except ClientError as exc:
            if is_missing_key(exc):
                continue  # overwritten or removed between the listing and now
            raise
        read.append((uri, metadata))
        if "spotfill-rows" in metadata:
            sampled += 1
            rows += int(metadata["spotfill-rows"])
    return sampled, rows, read


def pending_shards(run: RunState) -> int:
    """Shards the run queued (every shard but those whose output existed before it)."""
    return max(0, run.shards_total - run.shards_skipped)


def estimated_progress(
    pending: int, queue: QueueDepth, dead_letter_queue: QueueDepth, previous_done: int
) -> tuple[int, int, int]:
    """(outputs done, dead letters, remaining) estimated from the queues' approximate depths.

    Every queued shard that is neither in the queue nor in the dead-letter queue is counted done. SQS's
    counts are approximate and may dip for a moment, so the estimate never falls below the last figure
    (which a later exact reconciliation may still correct): a dip and its recovery are not progress.
    """
    dead = min(pending, dead_letter_queue.total)
    estimate = pending - queue.total - dead
    done = max(0, min(pending - dead, max(estimate, previous_done)))
    return done, dead, max(0, pending - done - dead)


class Reservoir:
    """A uniform random sample of at most `size` of the items added (reservoir sampling, O(size) memory)."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size, self.rng = size, rng
        self.items: list[str] = []
        self.seen = 0

    def add(self, item: str) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        slot = self.rng.randrange(self.seen)
        if slot < self.size:
            self.items[slot] = item
