"""One Monitor poll: one monitoring iteration (`iterate`), its sample of the run's series, the checks after.

Monitor reads the depth of the queue and the dead-letter queue first, then moves the dead letters into S3
records (`monitoring.dead_letters`: counted, never peeked). While the queue holds work, progress is estimated
from the depths and the dead letters stored; a run of more than one part settles its finished parts ahead
(`reconcile.settle_ahead`), a run of one part reads neither outputs nor its shard list. Once the queue
and the dead-letter queue are idle, it verifies the run's shard list part by part against the output key
range each part spans (`monitoring.reconcile`: a checkpoint kept across polls, settled parts never listed
again, within the poll's time budget), and from that:

- queues again the shards that have neither an output nor a dead letter while the queue is empty and nothing
  is in flight (a message lost with an instance, or an output deleted by hand), once per finding;
- keeps throughput figures (shards/s, and predictions/s estimated from a sample of outputs' `spotfill-rows`);
- watches and sizes the fleet and the service (`monitoring.fleet_watch`), after accruing the run's cost and
  draining the run before it would cross `limits.max_total_usd` (`monitoring.budget`);
- decides the next step: `running`, `done`, or `handover` (continue-as-new before the history limit).

`poll` is the Monitor handler's work: the known instances read, one `iterate`, the instances it saw stored,
the poll's sample added to the run's series (`projection.record_poll`) and the run persisted; `check` then
raises what ends the run, after the run was persisted so the report still has this poll's figures.
`log_fields` and `metric_values` are what the handler logs and emits as metrics.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotfill_control import shards, state_store
from spotfill_control.aws import Clients
from spotfill_control.config import Settings
from spotfill_control.deadline import Deadline
from spotfill_control.errors import SpotfillError
from spotfill_control.fleet import weights
from spotfill_control.monitoring import budget, cost, dead_letters, finish_by, progress, projection, reconcile
from spotfill_control.monitoring.fleet_watch import watch_fleet
from spotfill_control.monitoring.progress import (
    Iteration,
    QueueDepth,
    estimated_progress,
    handover_due,
    mean_rows_per_shard,
    pending_shards,
    queue_depth,
    rate,
    read_model_error,
    sample_outputs,
)
from spotfill_control.queues import send_shards
from spotfill_control.run import Projection, RunState
from spotfill_control.shards import ShardRef, output_uri_for, read_shard_index, shard_index_key

# The time budget of a poll's long work (moving dead letters, verifying parts) without a Lambda context: half
# the Monitor's Timeout, as `Deadline.of_invocation` gives it on Lambda.
DEFAULT_BUDGET_SECONDS = 300.0


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
    figures = run.progress
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

    shards_per_second = rate(figures.outputs_done, seen.outputs_done, figures.last_checked_at, now)
    _update_throughput(run, shards_per_second, done_sample, clients.s3, control_bucket)
    # Requeued shards count as progress: they deserve a stall timeout of their own to be picked up.
    # So do parts newly verified settled: a long verification over several polls is not a stall.
    moved = seen.outputs_done + seen.dead_letters > figures.outputs_done + figures.dead_letters
    moved = moved or seen.parts_settled > 0
    if not moved:  # a model no worker can load moves nothing: look for its error record (one small listing)
        seen.model_error = read_model_error(run.run_id, clients.s3, control_bucket)
    if moved or seen.requeued or figures.last_progress_at is None:
        figures.last_progress_at = now
    figures.outputs_done = seen.outputs_done
    figures.dead_letters = seen.dead_letters
    figures.requeued += seen.requeued
    figures.iterations += 1
    figures.iterations_this_execution += 1
    figures.last_checked_at = now

    if resources.fleet_id:
        # The budget first: the instances the last poll saw alive tell when those terminated without a stated
        # time ended, and a drain it starts keeps the fleet look below from resizing anything.
        # One read of the run's instances serves both (DescribeInstances pages of 1,000 are the poll's
        # costliest calls to parse).
        instances = cost.run_instances(run.run_id, figures.known_instances, clients.ec2)
        billed = budget.accrue_run(run, now, clients.ec2, instances)
        seen.capacity = budget.capacity_by_pool(billed)
        if not done:
            budget.drain_if_due(run, budget.project_run(run, billed), clients.ecs, now)
        watch_fleet(run, clients, seen, done, now, instances, settings)

    if done:
        figures.state = "done"
        run.phase = "done"
        run.timeline.processing_ended_at = now
    elif handover_due(run):
        figures.state = "handover"
    else:
        figures.state = "running"
    return run, seen


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
        index,
        checkpoint,
        clients.s3,
        control_bucket,
        dead,
        deadline,
        requeue,
        sample_size=progress.ROWS_SAMPLE_SIZE,
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
    sample = random.sample(passed.outputs, min(progress.ROWS_SAMPLE_SIZE, len(passed.outputs)))
    return done, (sample if passed.verified else None)


def _update_throughput(
    run: RunState, shards_per_second: float, done_sample: list[str] | None, s3: Any, control_bucket: str
) -> None:
    figures = run.progress
    # Predictions per second are estimated as shards per second x the mean rows per shard of a sample of
    # outputs, refined while it is small. An exact iteration samples the outputs it listed; a cheap one
    # reads the index's few sample shards (a few KB) and looks for their outputs.
    wants_rows = figures.rows_sampled_outputs < progress.ROWS_SAMPLE_LIMIT and (
        shards_per_second > 0 or figures.rows_sampled_outputs == 0
    )
    # A deadline run of several types also measures each type's throughput from the same reads, each output
    # once (`fleet.weights`).
    wants_types = weights.wants_measurements(run) and shards_per_second > 0
    if (wants_rows or wants_types) and (
        done_sample or (done_sample is None and run.shards_total > run.shards_skipped)
    ):
        candidates = done_sample if done_sample is not None else _sample_outputs(run, s3, control_bucket)
        if wants_types and not wants_rows:
            candidates = weights.unmeasured(run, candidates)
        sampled, rows, read = sample_outputs(candidates, s3, progress.ROWS_SAMPLE_SIZE)
        if wants_rows:
            figures.rows_sampled_outputs += sampled
            figures.rows_sampled_total += rows
        weights.record(run, read)
    figures.peak_shards_per_second = max(figures.peak_shards_per_second, shards_per_second)
    mean_rows = mean_rows_per_shard(figures)
    if mean_rows is not None:
        figures.peak_predictions_per_second = max(
            figures.peak_predictions_per_second, shards_per_second * mean_rows
        )


def _sample_outputs(run: RunState, s3: Any, control_bucket: str) -> list[str]:
    index = read_shard_index(run.run_id, s3, control_bucket)
    if index is None:
        return []
    return [output_uri_for(shard, index.input, index.output) for shard in index.sample]


@dataclass(frozen=True)
class Poll:
    """The run after one poll, what the poll saw, and where the run is heading."""

    run: RunState
    seen: Iteration
    projected: Projection


def poll(run: RunState, clients: Clients, settings: Settings, now: datetime, budget_left: Deadline) -> Poll:
    """One monitoring iteration, its sample added to the series, the run persisted. `budget_left` bounds
    moving dead letters and verifying parts; the rest continues next poll (docs/state-machine.md)."""
    bucket = settings.control_bucket
    run = state_store.with_known_instances(run, clients.s3, bucket)
    known_before = list(run.progress.known_instances)
    run, seen = iterate(run, clients, bucket, now, budget_left, settings)
    state_store.save_known_instances(run, known_before, clients.s3, bucket)
    run.projection = projected = projection.record_poll(run, seen, now, clients.s3, bucket)
    state_store.persist(run, clients.s3, bucket)
    return Poll(run, seen, projected)


def check(polled: Poll, now: datetime) -> None:
    """Raise what ends the run after this poll, in this order: the cap, the deadline, the model, the fleet,
    then stall and maximum runtime."""
    run, seen = polled.run, polled.seen
    budget.check_budget(run, seen.queue.in_flight, now)
    finish_by.check_feasible(run)
    progress.check_model(run, seen)
    progress.check_fleet(run, seen)
    progress.enforce_limits(run, now)


def log_fields(polled: Poll) -> dict[str, Any]:
    """What the handler logs of one poll."""
    run, seen, projected = polled.run, polled.seen, polled.projected
    return {
        "state": run.progress.state,
        "outputs_done": seen.outputs_done,
        "dead_letters": seen.dead_letters,
        "remaining": seen.remaining,
        "requeued": seen.requeued,
        "exact": seen.exact,
        "dead_letters_stored": seen.dead_letters_stored,
        "parts_verified": seen.parts_verified,
        "parts_settled": seen.parts_settled,
        "output_pages_listed": seen.listed_pages,
        "queue_visible": seen.queue.visible,
        "queue_in_flight": seen.queue.in_flight,
        "interruptions": seen.interruptions,
        "fleet_target_capacity": seen.fleet_target_capacity,
        "service_desired_count": seen.service_desired_count,
        "cost_so_far_usd": run.budget.accrued_usd,
        "projected_usd": run.budget.projected_usd,
        "max_total_usd": run.spec.limits.max_total_usd,
        "predictions_per_second": projected.predictions_per_second,
        "eta_seconds": projected.eta_seconds,
        "projected_total_usd": projected.projected_total_usd,
        "draining_since": run.budget.draining_since and run.budget.draining_since.isoformat(),
        "finish_by": run.finish_by and run.finish_by.model_dump(mode="json"),
        "weights": run.weighting and run.weighting.weights,
    }


def metric_values(polled: Poll) -> list[tuple[str, str, float]]:
    """The dashboard's figures of one poll as (name, unit, value), the unit a Powertools `MetricUnit` name:
    shards done against the total, dead letters, the cost so far, and the ETA, projected total and cap when
    there are any."""
    run, seen, projected = polled.run, polled.seen, polled.projected
    values: list[tuple[str, str, float]] = [
        ("ShardsTotal", "Count", run.shards_total),
        ("ShardsDone", "Count", seen.outputs_done),
        ("DeadLetters", "Count", seen.dead_letters),
        ("CostSoFarUsd", "NoUnit", run.budget.accrued_usd),
    ]
    if projected.eta_seconds is not None:
        values.append(("EtaSeconds", "Seconds", projected.eta_seconds))
    if projected.projected_total_usd is not None:
        values.append(("ProjectedTotalUsd", "NoUnit", projected.projected_total_usd))
    if run.spec.limits.max_total_usd is not None:
        values.append(("MaxTotalUsd", "NoUnit", run.spec.limits.max_total_usd))
    return values
