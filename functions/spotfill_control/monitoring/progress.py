"""One monitoring iteration: how far the run is, what to queue again, how much fleet it still needs.

Done means every shard has an output object or sits in the dead-letter queue (docs/contracts.md). Monitor
reads the depth of the queue and the dead-letter queue first, then moves the dead letters into S3 records
(`monitoring.dead_letters`: counted, never peeked). While the queue holds work, progress is estimated
from the depths and the dead letters stored; a run of more than one part settles its finished parts ahead
(`reconcile.settle_ahead`), a run of one part reads neither outputs nor its shard list. Once the queue
and the dead-letter queue are idle, it verifies the run's shard list part by part against the output key
range each part spans (`monitoring.reconcile`: a checkpoint kept across polls, settled parts never
listed again, within the poll's time budget), and from that:

- queues again the shards that have neither an output nor a dead letter while the queue is empty and nothing
  is in flight (a message lost with an instance, or an output deleted by hand), once per finding;
- sizes the service to the capacity that registered: a task per task slot of the registered instances
  (raised as instances join), never more than the remaining shards, never zero while work remains;
- lowers the fleet's target capacity once fewer shards remain than the fleet has task slots, so nobody pays
  for idle instances;
- counts spot interruptions (fleet instances that went away while the fleet is active and not because we
  lowered its capacity);
- keeps throughput figures (shards/s, and predictions/s estimated from a sample of outputs' `spotfill-rows`);
- decides the next step: `running`, `done`, or `handover` (continue-as-new before the history limit).

The pure arithmetic sits in small functions at the top; the AWS reads and writes take clients as arguments.
Limits (stall, maximum runtime) are enforced by `enforce_limits`, after the handler persisted what this
iteration saw, so the report of a stalled run still has its last figures. Each iteration with a fleet also
accrues the run's cost and drains the run before it would cross `limits.max_total_usd`
(`spotfill_control.monitoring.budget`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control import shards
from spotfill_control.aws import Clients, is_missing_key, read_object
from spotfill_control.config import Settings
from spotfill_control.deadline import Deadline
from spotfill_control.errors import (
    FleetRequestError,
    ModelLoadError,
    RunTimeoutError,
    SpotfillError,
    StallError,
)
from spotfill_control.fleet import fleet, on_demand, weights
from spotfill_control.fleet.cluster import count_registered_instances, desired_count
from spotfill_control.fleet.fleet_api import LIVE_STATES, FleetStatus
from spotfill_control.monitoring import budget, cost, dead_letters, finish_by, reconcile
from spotfill_control.run import Progress, RunState
from spotfill_control.shards import (
    Shard,
    ShardRef,
    model_error_key,
    output_uri_for,
    read_shard_index,
    send_shards,
    shard_index_key,
    split_s3_uri,
)

# Outputs whose `spotfill-rows` metadata is read per iteration to estimate rows (predictions) per shard.
ROWS_SAMPLE_SIZE = 5
# Once this many outputs were sampled the mean is good enough: later iterations read no more metadata.
ROWS_SAMPLE_LIMIT = 200
# The time budget of a poll's long work (moving dead letters, verifying parts) without a Lambda context: half
# the Monitor's Timeout, as `Deadline.of_invocation` gives it on Lambda.
DEFAULT_BUDGET_SECONDS = 300.0
# Instances that count: pending and running ones work (or will); the rest are going away.
ALIVE_STATES = frozenset({"pending", "running"})
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


# ------------------------------------------------------------------------------------------ pure arithmetic


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


def instances_needed(remaining_shards: int, tasks_per_instance: int) -> int:
    """Instances that keep every remaining shard busy (the service runs `tasks_per_instance` per instance)."""
    return math.ceil(remaining_shards / tasks_per_instance)


def lowered_capacity(
    current: float, remaining_shards: int, tasks_per_instance: int, max_weight: float
) -> int | None:
    """The fleet's new target capacity (weighted units), or None when it should stay.

    Only ever lowered, never to zero while work remains, and never below what the remaining shards need: the
    fleet may keep its heaviest instances, so each needed instance is counted at the heaviest weight.
    """
    needed = max(1, math.ceil(instances_needed(remaining_shards, tasks_per_instance) * max_weight))
    return needed if needed < current else None


def count_interruptions(
    known_weights: Mapping[str, float], alive: set[str], target_capacity: float, fleet_active: bool
) -> int:
    """Instances seen last time and gone now that the fleet did not remove on our request.

    After we lower the target capacity the fleet may remove instances worth `known - target` units; anything
    beyond that (and everything while the fleet is not lowered) went away on its own: a spot interruption.
    Disappearances are explained heaviest first, so the count of interruptions is never overstated.
    """
    if not fleet_active:
        return 0
    gone = sorted((known_weights[i] for i in known_weights if i not in alive), reverse=True)
    allowance = max(0.0, sum(known_weights.values()) - target_capacity)
    interrupted = 0
    for weight in gone:
        if weight <= allowance + 1e-9:
            allowance -= weight
        else:
            interrupted += 1
    return interrupted


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
    403, not 404, to a role whose ListBucket is limited to a prefix (docs/contracts.md, "IAM")."""
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


# ------------------------------------------------------------------------------------------ AWS reads


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


@dataclass(frozen=True)
class FleetView:
    status: FleetStatus
    weights: dict[str, float]  # instance type → weighted capacity (as the fleet was requested)
    alive: dict[str, str]  # instance id → type, for pending/running instances
    known_types: dict[str, str]  # instance id → type, for instances described this time

    @property
    def state(self) -> str:
        return self.status.state

    @property
    def active(self) -> bool:
        return self.status.active

    @property
    def target_capacity(self) -> int:
        return int(self.status.target_capacity)

    @property
    def valid_until(self) -> datetime | None:
        return self.status.valid_until


def describe_fleet(
    run: RunState,
    extra_ids: Iterable[str],
    weights: Mapping[str, float],
    ec2: Any,
    described: Sequence[Mapping[str, Any]] | None = None,
) -> FleetView | None:
    """The run's fleet: state, targets and live instances; None when EC2 does not know it (any more, or yet).
    `described`: the run's instances as this poll already read them (`cost.run_instances`)."""
    status = fleet.fleet_status(run, ec2)
    if status is None or run.resources.fleet_id is None:
        return None
    active = fleet.api_of(run).instances(run.resources.fleet_id, ec2)
    if active is None:  # DescribeFleetInstances does not know it (yet, or any more): as DescribeFleets would
        return None
    listed = [i.instance_id for i in active]
    if described is not None:  # an instance launched since that read: described by id
        read = {i["InstanceId"] for i in described}
        described = [*described, *cost.instances_by_id(set(listed) - read, ec2).values()]
    states = describe_instance_states(run.run_id, set(listed) | set(extra_ids), ec2, described)
    return FleetView(
        status=status,
        weights=dict(weights),
        alive={i: states[i][1] for i in listed if i in states and states[i][0] in ALIVE_STATES},
        known_types={i: t for i, (_, t) in states.items()},
    )


def describe_instance_states(
    run_id: str, instance_ids: set[str], ec2: Any, described: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, tuple[str, str]]:
    """instance id → (state, type) for those of `instance_ids` EC2 still knows: from `described` (the run's
    instances as this poll read them), else read as the run's instances by their run-id tag (a
    DescribeInstances page per 1,000) and by id only those the tag misses; never a call per 200 ids."""
    if described is None:
        described = cost.run_instances(run_id, instance_ids, ec2)
    return {
        i["InstanceId"]: (i["State"]["Name"], i["InstanceType"])
        for i in described
        if i["InstanceId"] in instance_ids
    }


def service_counts(cluster: str, service: str, ecs: Any) -> tuple[int, int] | None:
    """(desired, running) tasks of the service; None when it is not active."""
    services = ecs.describe_services(cluster=cluster, services=[service]).get("services", [])
    active = [s for s in services if s.get("status") == "ACTIVE"]
    if not active:
        return None
    return int(active[0]["desiredCount"]), int(active[0].get("runningCount", 0))


# ------------------------------------------------------------------------------------------ the iteration


def iterate(
    run: RunState,
    clients: Clients,
    control_bucket: str,
    now: datetime,
    deadline: Deadline | None = None,
    settings: Settings | None = None,
) -> tuple[RunState, Iteration]:
    """One monitoring iteration: returns the updated run (not yet persisted) and what it saw.

    Dead letters are moved into S3 records first (bounded by `deadline`). While the queue holds work
    (visible, in flight or delayed) the iteration is cheap: progress is estimated from the queues' depths and
    the dead letters stored, and only the parts finished since the last poll are listed (`_settle_ahead`, in
    runs of more than one part). Once the queue and the
    dead-letter queue are idle, the exact reconciliation verifies the open parts of the shard list (within
    `deadline`, continuing next poll), requeues lost shards and decides whether the run is done.

    With `settings` (the stack's launch template and subnets), a deadline run of several instance types may
    re-weight its fleet by measured throughput (`spotfill_control.fleet.weights`).
    """
    deadline = deadline or Deadline(DEFAULT_BUDGET_SECONDS)
    run = run.model_copy(deep=True)
    progress = run.progress
    resources = run.resources
    seen = Iteration()
    if run.timeline.processing_started_at is None:
        run.timeline.processing_started_at = now
    run.phase = "monitoring"

    # Queue depth first, outputs second: a worker writes its output before it deletes its message, so a
    # queue seen idle here means every output of a finished shard is already in the listing below.
    seen.queue = queue_depth(resources.queue_url, clients.sqs)
    seen.dead_letter_queue = queue_depth(resources.dead_letter_queue_url, clients.sqs)
    dead_letters_clear = _store_dead_letters(run, clients, control_bucket, seen, deadline)
    if seen.queue.idle and dead_letters_clear:
        done, done_sample = _reconcile(run, clients, control_bucket, seen, deadline)
    else:
        done, done_sample = False, None
        _estimate(run, seen)
        if run.shards_total > shards.PART_SIZE:  # a run of one part has nothing to settle ahead
            _settle_ahead(run, clients, control_bucket, seen, deadline)

    shards_per_second = rate(progress.outputs_done, seen.outputs_done, progress.last_checked_at, now)
    _update_throughput(run, shards_per_second, done_sample, clients.s3, control_bucket)
    # Requeued shards count as progress: they deserve a stall timeout of their own to be picked up.
    # So do parts newly verified settled: a long verification over several polls is not a stall.
    moved = seen.outputs_done + seen.dead_letters > progress.outputs_done + progress.dead_letters
    moved = moved or seen.parts_settled > 0
    if not moved:  # a model no worker can load moves nothing: look for its error record (one small listing)
        seen.model_error = read_model_error(run.run_id, clients.s3, control_bucket)
    if moved or seen.requeued or progress.last_progress_at is None:
        progress.last_progress_at = now
    progress.outputs_done = seen.outputs_done
    progress.dead_letters = seen.dead_letters
    progress.requeued += seen.requeued
    progress.iterations += 1
    progress.iterations_this_execution += 1
    progress.last_checked_at = now

    if resources.fleet_id:
        # The budget first: the instances the last poll saw alive tell when those terminated without a stated
        # time ended, and a drain it starts keeps the fleet look below from resizing anything.
        # One read of the run's instances serves both (DescribeInstances pages of 1,000 are the poll's
        # costliest calls to parse).
        instances = cost.run_instances(run.run_id, progress.known_instances, clients.ec2)
        billed = budget.accrue_run(run, now, clients.ec2, instances)
        seen.capacity = budget.capacity_by_pool(billed)
        if not done:
            budget.drain_if_due(run, budget.project_run(run, billed), clients.ecs, now)
        _watch_fleet(run, clients, seen, done, now, instances, settings)

    if done:
        progress.state = "done"
        run.phase = "done"
        run.timeline.processing_ended_at = now
    elif handover_due(run):
        progress.state = "handover"
    else:
        progress.state = "running"
    return run, seen


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


def _estimate(run: RunState, seen: Iteration) -> None:
    # The dead-letter queue is drained into S3 every poll: its dead letters are those stored plus those left
    # (its depth was read before this poll moved some).
    left = max(0, seen.dead_letter_queue.total - seen.dead_letters_stored)
    dead = QueueDepth(visible=run.progress.dead_letters_stored + left)
    seen.outputs_done, seen.dead_letters, seen.remaining = estimated_progress(
        pending_shards(run), seen.queue, dead, run.progress.outputs_done
    )


def _store_dead_letters(
    run: RunState, clients: Clients, control_bucket: str, seen: Iteration, deadline: Deadline
) -> bool:
    """Move the dead-letter queue's messages into S3 records (within `deadline`); True when the queue is
    clear afterwards: nothing left visible and nothing in flight (a batch an earlier, crashed poll received
    comes back when its visibility times out). An idle queue is drained even when the dead-letter queue's
    approximate depth says empty: that figure lags, and a missed dead letter would be requeued as lost."""
    url = run.resources.dead_letter_queue_url
    if url is None:
        return True
    depth = seen.dead_letter_queue
    if depth.visible == 0 and not seen.queue.idle:
        return depth.in_flight == 0
    drained = dead_letters.drain(
        run.run_id, url, clients.sqs, clients.s3, control_bucket, deadline, expected=depth.visible
    )
    seen.dead_letters_stored = drained.messages
    run.progress.dead_letters_stored += drained.messages
    return drained.empty and depth.in_flight == 0


def _settle_ahead(
    run: RunState, clients: Clients, control_bucket: str, seen: Iteration, deadline: Deadline
) -> None:
    """While work is queued, settle the parts that are finished already (`reconcile.settle_ahead`): the
    figures stay the estimate, but the idle polls at the end of a large run have only the last parts left."""
    index = read_shard_index(run.run_id, clients.s3, control_bucket)
    if index is None or deadline.expired:
        return
    checkpoint = reconcile.load_checkpoint(run.run_id, clients.s3, control_bucket)
    if checkpoint.settled(len(index.parts)):
        return
    dead = set(dead_letters.read_dead_letters(run.run_id, clients.s3, control_bucket) or [])
    ahead = reconcile.settle_ahead(index, checkpoint, clients.s3, control_bucket, dead, deadline)
    seen.parts_verified, seen.parts_settled = len(ahead.verified), ahead.settled_now
    seen.listed_pages = ahead.pages


def _reconcile(
    run: RunState, clients: Clients, control_bucket: str, seen: Iteration, deadline: Deadline
) -> tuple[bool, list[str] | None]:
    """The exact count: the open parts of the shard list verified against their outputs' key ranges, lost
    shards queued again (`monitoring.reconcile`). Returns (done, a random sample of done outputs for
    the rows estimate, or None when no part was listed)."""
    resources = run.resources
    index = read_shard_index(run.run_id, clients.s3, control_bucket)
    if index is None:
        raise SpotfillError(
            f"s3://{control_bucket}/{shard_index_key(run.run_id)} is missing: was the run prepared?"
        )
    checkpoint = reconcile.load_checkpoint(run.run_id, clients.s3, control_bucket)
    dead = set(dead_letters.read_dead_letters(run.run_id, clients.s3, control_bucket) or [])

    def requeue(lost: list[ShardRef]) -> int:
        if not resources.queue_url:
            return 0
        return send_shards(run.run_id, [s.as_shard() for s in lost], resources.queue_url, clients.sqs)

    passed = reconcile.advance(
        index, checkpoint, clients.s3, control_bucket, dead, deadline, requeue, sample_size=ROWS_SAMPLE_SIZE
    )
    seen.requeued = passed.requeued
    seen.parts_verified, seen.parts_settled = len(passed.verified), passed.settled_now
    seen.listed_pages = passed.pages
    parts = len(index.parts)
    if checkpoint.verified_all(parts):
        seen.exact = True
        seen.outputs_done, seen.dead_letters = checkpoint.done, checkpoint.failed
        seen.remaining = max(0, index.pending - seen.outputs_done - seen.dead_letters)
    else:  # the first pass is still on its way: the idle queues' estimate until every part was counted
        seen.outputs_done, seen.dead_letters, seen.remaining = estimated_progress(
            pending_shards(run), seen.queue, QueueDepth(visible=len(dead)), run.progress.outputs_done
        )
    done = checkpoint.settled(parts)
    sample = random.sample(passed.outputs, min(ROWS_SAMPLE_SIZE, len(passed.outputs)))
    return done, (sample if passed.verified else None)


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


def _update_throughput(
    run: RunState, shards_per_second: float, done_sample: list[str] | None, s3: Any, control_bucket: str
) -> None:
    progress = run.progress
    # Predictions per second are estimated as shards per second x the mean rows per shard of a sample of
    # outputs, refined while it is small. An exact iteration samples the outputs it listed; a cheap one
    # reads the index's few sample shards (a few KB) and looks for their outputs.
    wants_rows = progress.rows_sampled_outputs < ROWS_SAMPLE_LIMIT and (
        shards_per_second > 0 or progress.rows_sampled_outputs == 0
    )
    # A deadline run of several types also measures each type's throughput from the same reads, each output
    # once (`spotfill_control.fleet.weights`).
    wants_types = weights.wants_measurements(run) and shards_per_second > 0
    if (wants_rows or wants_types) and (
        done_sample or (done_sample is None and run.shards_total > run.shards_skipped)
    ):
        candidates = done_sample if done_sample is not None else _sample_outputs(run, s3, control_bucket)
        if wants_types and not wants_rows:
            candidates = weights.unmeasured(run, candidates)
        sampled, rows, read = sample_outputs(candidates, s3, ROWS_SAMPLE_SIZE)
        if wants_rows:
            progress.rows_sampled_outputs += sampled
            progress.rows_sampled_total += rows
        weights.record(run, read)
    progress.peak_shards_per_second = max(progress.peak_shards_per_second, shards_per_second)
    mean_rows = mean_rows_per_shard(progress)
    if mean_rows is not None:
        progress.peak_predictions_per_second = max(
            progress.peak_predictions_per_second, shards_per_second * mean_rows
        )


def _sample_outputs(run: RunState, s3: Any, control_bucket: str) -> list[str]:
    index = read_shard_index(run.run_id, s3, control_bucket)
    if index is None:
        return []
    return [output_uri_for(shard, index.input, index.output) for shard in index.sample]


def _watch_fleet(
    run: RunState,
    clients: Clients,
    seen: Iteration,
    done: bool,
    now: datetime,
    instances: Sequence[Mapping[str, Any]] | None = None,
    settings: Settings | None = None,
) -> None:
    progress = run.progress
    type_weights = run.capacity_weights
    view = describe_fleet(run, progress.known_instances, type_weights, clients.ec2, instances)
    if view is None:
        if fleet.unseen_is_transient(run, run.resources.fleet_id, now):
            # EC2 does not know the fleet it made moments ago yet (eventual consistency): nothing is known of
            # it this poll, not that it is gone.
            seen.fleet_state = None
            return
        progress.known_instances = []
        seen.fleet_state = "gone"
        return
    seen.fleet_state = view.state
    seen.fleet_valid_until = view.valid_until
    known_weights = {i: view.weights.get(view.known_types.get(i, ""), 1.0) for i in progress.known_instances}
    removable = view.target_capacity
    if run.finish_by is not None and run.finish_by.shrunk_without_termination:
        removable = max(removable, math.ceil(sum(known_weights.values())))  # the fleet removed none
    seen.interruptions = count_interruptions(known_weights, set(view.alive), removable, view.active)
    progress.interruptions += seen.interruptions
    progress.known_instances = sorted(view.alive)
    progress.fleet_target_capacity = view.target_capacity
    seen.fleet_target_capacity = view.target_capacity
    if done or not view.active:
        # Done: teardown removes everything, resizing now would only race it. A fleet that ended brings no
        # capacity: check_fleet fails the run.
        return
    if run.budget.draining_since is not None:
        # Draining for the dollar cap: the service stays at 0 tasks, and the fleet goes to target 0 once it
        # takes a new target (not while it is still modifying).
        if view.state == "active" and view.target_capacity > 0:
            budget.stop_new_capacity(run, clients.ec2)
            progress.fleet_target_capacity = seen.fleet_target_capacity = 0
        return
    _size_service(run, clients, seen)
    if view.state != "active":
        # Submitted or modifying: the fleet takes no new target until it settles; the next iteration
        # lowers it.
        return

    if settings is not None and weights.reweigh(run, clients.ec2, settings, seen.capacity, now):
        # The fleet is modifying: the next poll sizes it (under the new weights).
        return
    tasks_per_instance = run.spec.service.tasks_per_instance
    max_weight = max(view.weights.values(), default=1.0)
    target = on_demand.work_target(progress, view.status)
    new_target = lowered_capacity(target, seen.remaining, tasks_per_instance, max_weight)
    if new_target is not None:
        # The tail keeps its on-demand units only as far as the new target reaches; a fallback is over.
        od = min(view.status.on_demand_target_capacity, float(new_target))
        fleet.set_target_capacity(run, clients.ec2, new_target, od)
        on_demand.after_scale_down(progress, new_target, run.spec.fleet.on_demand_base)
        if run.finish_by is not None:  # this lowering terminates: the allowance holds again
            run.finish_by.shrunk_without_termination = False
        progress.fleet_target_capacity = new_target
        seen.fleet_target_capacity = new_target
        return
    if run.finish_by is not None:
        # The deadline sets the target (`finish_by.steer`); the on-demand fallback joins only while the
        # running capacity would finish late (or before any rate, as without a deadline), and not on a poll
        # that changed the target (its view of the fleet is stale).
        tracking = finish_by.steer(run, clients.ec2, view.status, seen.capacity, seen.remaining, now)
        if tracking is not None and run.finish_by.added_units:
            progress.fleet_target_capacity = seen.fleet_target_capacity = run.finish_by.target_units
            return
        if tracking is not None and not tracking.at_risk:
            return
    fleet.rebalance(run, clients.ec2, view.status, now)


def _size_service(run: RunState, clients: Clients, seen: Iteration) -> None:
    """Desired tasks follow the capacity that registered and the work left (`desired_count`)."""
    cluster, service = run.resources.cluster_name, run.resources.service_name
    if not (cluster and service):
        return
    counts = service_counts(cluster, service, clients.ecs)
    if counts is None:
        return
    desired, seen.running_tasks = counts
    wanted = desired_count(
        count_registered_instances(run, clients.ecs), run.spec.service.tasks_per_instance, seen.remaining
    )
    if wanted != desired:
        clients.ecs.update_service(cluster=cluster, service=service, desiredCount=wanted)
    seen.service_desired_count = wanted


# ------------------------------------------------------------------------------------------ continue-as-new


def execution_name(run: RunState, number: int) -> str:
    return f"{run.run_id}-{number}"


def execution_arn_for(state_machine_arn: str, name: str) -> str:
    """`arn:<partition>:states:<region>:<account>:stateMachine:<sm>` → the ARN of its execution `name`."""
    head, kind, machine = state_machine_arn.rsplit(":", 2)
    if kind != "stateMachine":
        raise ValueError(f"not a state machine ARN: {state_machine_arn!r}")
    return f"{head}:execution:{machine}:{name}"


def resumed_run(run: RunState) -> RunState:
    """The run as the next execution starts it: one more execution, a fresh iteration count, still running."""
    return run.model_copy(
        update={
            "executions": run.executions + 1,
            "progress": run.progress.model_copy(update={"iterations_this_execution": 0, "state": "running"}),
        },
        deep=True,
    )


def continue_as_new(run: RunState, sfn: Any) -> RunState:
    """Start execution `<run id>-<n>` of this state machine with `{"resume": run}`; return the run it carries.

    The name makes a retried Lambda harmless: the second StartExecution finds the execution already there
    (`ExecutionAlreadyExists`), which is the one this run handed over to.
    """
    if run.state_machine_arn is None:
        raise ValueError(f"run {run.run_id} does not know its state machine: cannot continue as new")
    nxt = resumed_run(run)
    name = execution_name(run, nxt.executions)
    try:
        arn = sfn.start_execution(
            stateMachineArn=run.state_machine_arn,
            name=name,
            input=json.dumps({"resume": nxt.model_dump(mode="json")}),
        )["executionArn"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
            raise
        arn = execution_arn_for(run.state_machine_arn, name)
    return nxt.model_copy(update={"execution_arn": arn})
