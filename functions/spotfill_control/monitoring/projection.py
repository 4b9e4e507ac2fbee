"""Live projections: each Monitor poll becomes a sample of the run's series, and the series' recent samples
give the throughput, the ETA and the projected total cost (`RunState.projection`).

- Predictions so far are the monitor's running estimate: shards with an output x the mean rows per shard of
  the outputs it sampled (`spotfill_control.monitoring.progress`); no per-output read here.
- The rate is taken over the samples of the last RATE_WINDOW_SECONDS (at least the last two samples).
- Per instance type: the fleet's rate split over its live instances by their capacity weights (an instance
  of weight 2 is assumed to do twice the work of one of weight 1): predictions/s of one instance of each
  type. An estimate, not a measurement per type.
- ETA: the remaining shards x the mean rows per shard, at that rate; None while there is no rate yet.
- Projected total: the cost accrued so far, plus the fleet's hourly price (the budget's) until the ETA and
  the poll that sees the end (`budget.projected_total_usd`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from itertools import pairwise
from typing import Any

from spotfill_control.monitoring import budget
from spotfill_control.monitoring.progress import Iteration, mean_rows_per_shard, pending_shards
from spotfill_control.monitoring.series import Sample, Series, load_series, save_series
from spotfill_control.run import Projection, RunState

RATE_WINDOW_SECONDS = 300.0


def predictions_so_far(run: RunState) -> int:
    mean_rows = mean_rows_per_shard(run.progress)
    return 0 if mean_rows is None else round(run.progress.outputs_done * mean_rows)


def sample_of(run: RunState, seen: Iteration, now: datetime, previous: Sample | None) -> Sample:
    """The poll's sample (after `poll.iterate` updated the run)."""
    t = now.timestamp()
    predictions = predictions_so_far(run)
    rate = 0.0
    deadline = run.finish_by
    finish = None if deadline is None else deadline.projected_finish_at
    if previous is not None and t > previous.t:
        rate = max(0, predictions - previous.predictions) / (t - previous.t)
    return Sample(
        t=t,
        shards_done=run.progress.outputs_done + run.progress.dead_letters,
        shards_total=pending_shards(run),
        predictions=predictions,
        predictions_per_second=rate,
        capacity=seen.capacity,
        running_tasks=seen.running_tasks,
        cost_usd=run.budget.accrued_usd,
        interruptions=run.progress.interruptions,
        target_capacity=None if deadline is None else seen.fleet_target_capacity,
        projected_finish=None if finish is None else finish.timestamp(),
    )


def recent_rate(series: Series, window_seconds: float = RATE_WINDOW_SECONDS) -> float | None:
    """Predictions per second from the oldest sample inside the window (or the one before the last) to the
    last; None with fewer than two samples or no time between them."""
    samples = series.samples
    if len(samples) < 2:
        return None
    last = samples[-1]
    inside = [s for s in samples[:-1] if last.t - s.t <= window_seconds]
    first = inside[0] if inside else samples[-2]
    if last.t <= first.t:
        return None
    return max(0, last.predictions - first.predictions) / (last.t - first.t)


def rate_by_instance_type(
    rate: float, capacity: Mapping[str, float], weights: Mapping[str, float]
) -> dict[str, float]:
    """The fleet's rate split over its live instances by capacity weight: predictions/s of one instance of
    each type (`capacity` keys are `<type>/<purchase option>`)."""
    counts: dict[str, float] = {}
    for pool, instances in capacity.items():
        name = pool.split("/", 1)[0]
        counts[name] = counts.get(name, 0.0) + instances
    units = sum(weights.get(name, 1.0) * n for name, n in counts.items())
    if units <= 0:
        return {}
    return {name: rate * weights.get(name, 1.0) / units for name in sorted(counts)}


def units_of(capacity: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """A sample's capacity (`<type>/<purchase option>` -> instances) in weighted units."""
    return sum(weights.get(pool.split("/", 1)[0], 1.0) * n for pool, n in capacity.items())


def unit_rate(
    series: Series, weights: Mapping[str, float], window_seconds: float = RATE_WINDOW_SECONDS
) -> float | None:
    """Predictions per second of one capacity unit: the predictions made over the window divided by the
    unit-seconds of capacity (pending and running instances, by weight) the samples saw in it, each span at
    the mean of its two ends. Unlike the fleet's rate split over the capacity of the last sample, it does not
    read a fleet that just lost half its instances as twice as fast per instance. None without work or
    capacity in the window."""
    samples = series.samples
    if len(samples) < 2:
        return None
    last = samples[-1]
    inside = [s for s in samples if last.t - s.t <= window_seconds]
    if len(inside) < 2:
        inside = samples[-2:]
    unit_seconds = sum(
        (units_of(a.capacity, weights) + units_of(b.capacity, weights)) / 2 * (b.t - a.t)
        for a, b in pairwise(inside)
    )
    made = inside[-1].predictions - inside[0].predictions
    if unit_seconds <= 0 or made <= 0:
        return None
    return made / unit_seconds


def project(run: RunState, series: Series, now: datetime) -> Projection:
    """The run's projection from its series (whose last sample is this poll's)."""
    rate = recent_rate(series)
    last = series.last
    capacity = last.capacity if last is not None else {}
    done = run.progress.state == "done"
    eta: float | None = None
    if done:
        eta = 0.0
    elif rate:
        mean_rows = mean_rows_per_shard(run.progress) or 0.0
        remaining = max(0, pending_shards(run) - run.progress.outputs_done - run.progress.dead_letters)
        eta = remaining * mean_rows / rate
    total: float | None = None
    if done:
        total = run.budget.accrued_usd
    elif eta is not None:
        poll = run.spec.limits.poll_interval_seconds
        total = budget.projected_total_usd(run.budget.accrued_usd, run.budget.hourly_usd, eta, poll)
    weights = run.capacity_weights
    return Projection(
        at=now.timestamp(),
        predictions_per_second=rate or 0.0,
        by_instance_type=rate_by_instance_type(rate or 0.0, capacity, weights),
        eta_seconds=eta,
        projected_total_usd=total,
        predictions_per_unit_second=None if run.finish_by is None else unit_rate(series, weights),
    )


def record_poll(run: RunState, seen: Iteration, now: datetime, s3: Any, bucket: str) -> Projection:
    """Add this poll's sample to the run's series, store the series and return the projection from it (the
    caller keeps it as `run.projection` and persists the run after: a persisted run that has polled always
    has a series, which the report reads).

    A run's first poll (no projection yet: also a run begun before the series existed) starts the series,
    since a GetObject of a key never written is denied, not 404, to a role whose ListBucket is limited to a
    prefix; later polls read it, add their sample and write it back."""
    first = run.projection is None
    poll = float(run.spec.limits.poll_interval_seconds)
    series = Series(interval_seconds=poll) if first else load_series(s3, bucket, run.run_id)
    series.add(sample_of(run, seen, now, series.last))
    projected = project(run, series, now)
    save_series(s3, bucket, run.run_id, series)
    return projected
