"""How a fleet's workers come up, and when they have done the run's work: the plan's processing phase.

Workers do not start together. The service starts with the tasks of the instances registered when a poll
first sees one (`cluster.start_service`); the monitor raises its desired count at each later poll as more
register (`cluster.desired_count`), so a worker whose instance registered after that first poll starts a poll
cycle (or more) later. Each worker then pays its own start: its imports, the model loaded and warmed up, and
its runtime calibrated on its first shard, which it holds meanwhile. Only then does it predict.

`processing` integrates the capacity actually working over time, from these arrivals, piecewise: between two
events (a worker launched, a worker's start done, the work done) every rate is constant, so the work done is
exact arithmetic. Two machines:

- `shared_cores=None` (AWS): each instance has its own cores. A worker's start takes `start_seconds`; once
  started it predicts at `worker_rate` whatever the others do.
- `shared_cores=C` (the local cloud): every worker is a process on one machine of C cores, whose predictor
  alone does `worker_rate` (the whole machine's rate). A starting worker needs `start_seconds` of one core
  (what plan measured, a fresh process alone); the local cloud answering the starting workers (their model
  downloads, role sessions, first receives) takes `cloud_cores` of the machine while any start, whatever the
  number of workers: it mostly waits on requests, so the scheduler gives it what it asks for. The workers
  share the rest fairly, a starting one using at most `start_cores` (a model whose start computes on several
  threads, such as a runtime calibration of a large CNN, needs `start_seconds x start_cores` of CPU): the
  predicting workers get what the starting ones leave, and predict at that fraction of the machine's rate.

Per shard a worker also pays `shard_overhead_seconds` besides predicting (its round trips), which overlap
across workers; so n predicting workers at a combined predict rate P do `shard_rows / (shard_rows / P +
overhead / n)` rows per second.

A worker's first shard is done no sooner than its start plus that shard's predicting: however little work
is left when a late worker starts, the run waits for the shard it held (`tail`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_EPSILON = 1e-9


@dataclass(frozen=True)
class Workers:
    """The fleet's workers as they arrive: seconds from the first worker's launch to each one's."""

    launches: tuple[float, ...]
    start_seconds: float  # a worker's own start, alone (imports, model load, calibration)
    worker_rate: float  # predictions/s of one started worker alone (local: the whole machine's)
    shared_cores: int | None = None  # None: each instance has its own cores (AWS)
    # With shared cores: the cores the local cloud keeps busy answering workers while any start
    cloud_cores: float = 0.0
    # The cores a starting worker keeps busy when it has them (its start's CPU seconds over its wall seconds,
    # alone): its start needs start_seconds x start_cores of CPU, at most start_cores at once
    start_cores: float = 1.0

    def __post_init__(self) -> None:
        if not self.launches:
            raise ValueError("workers: no launches, so no worker ever predicts")
        if self.worker_rate <= 0:
            raise ValueError(f"workers: worker_rate {self.worker_rate} must be above 0")
        if self.start_seconds < 0 or min(self.launches) < 0:
            raise ValueError("workers: launches and start_seconds must not be negative")
        if self.shared_cores is not None and self.shared_cores < 1:
            raise ValueError(f"workers: shared_cores {self.shared_cores} must be at least 1")
        if self.cloud_cores < 0 or (self.shared_cores is not None and self.cloud_cores >= self.shared_cores):
            raise ValueError(
                f"workers: cloud_cores {self.cloud_cores} must be at least 0 and less than the shared cores"
            )
        if self.start_cores < 1:
            raise ValueError(f"workers: start_cores {self.start_cores} must be at least 1")


@dataclass(frozen=True)
class Processing:
    seconds: float  # from the first worker's launch to the last output
    ready_at: tuple[float, ...]  # each worker's start done (math.inf: never needed: the work ended first)
    tail: bool  # the end is a late worker's held first shard, not the fluid work running out


def launch_offsets(
    instances: int, registration_interval: float, cycle: float, seen_after: float = 0.0
) -> tuple[float, ...]:
    """When each instance's worker starts, from the first's: the first poll sees instance 0 `seen_after`
    seconds after it registered and starts its task with those of every instance registered by then;
    instance i registers `i x registration_interval` after instance 0, and a later one's task starts at the
    first poll cycle at or after its registration (the monitor raising the service's desired count)."""
    if instances < 1:
        raise ValueError(f"instances {instances} must be at least 1")
    offsets = [0.0]
    for i in range(1, instances):
        registered = i * registration_interval - seen_after  # from the first poll that saw one
        if registered <= 0:
            offsets.append(0.0)
        else:
            offsets.append(cycle * math.ceil(registered / cycle - _EPSILON) if cycle > 0 else registered)
    return tuple(offsets)


def _rates(
    workers: Workers, starting: list[int], predicting: int, shard_rows: float, overhead: float
) -> tuple[float, float]:
    """(progress of each starting worker in start-seconds per second, rows per second of the predicting)."""
    cores = workers.shared_cores
    if cores is None:
        machine_share = float(predicting)  # each instance's own machine
        start_speed = 1.0
    else:
        cloud = workers.cloud_cores if starting else 0.0  # the local cloud's, while workers start
        available = cores - cloud
        busy = len(starting) + predicting
        share = available / busy if busy else 0.0
        starting_cores = min(workers.start_cores, share) if starting else 0.0  # each starting worker's
        start_speed = starting_cores / workers.start_cores
        left = max(0.0, available - len(starting) * starting_cores)
        machine_share = left / cores if predicting else 0.0
    if not predicting:
        return start_speed, 0.0
    predict_rate = workers.worker_rate * machine_share
    if overhead <= 0 or shard_rows <= 0:
        return start_speed, predict_rate
    return start_speed, shard_rows / (shard_rows / predict_rate + overhead / predicting)


def processing(
    workers: Workers, predictions: float, shard_rows: float, shard_overhead_seconds: float = 0.0
) -> Processing:
    """Seconds from the first worker's launch until `predictions` are made (see the module's docstring)."""
    if predictions < 0 or shard_rows < 0:
        raise ValueError("processing: predictions and shard_rows must not be negative")
    n = len(workers.launches)
    order = sorted(range(n), key=lambda i: workers.launches[i])
    left_to_start = {i: workers.start_seconds for i in range(n)}
    launched: list[int] = []
    ready_at = [math.inf] * n
    first_shard_done = [0.0] * n  # each started worker's first shard, at its rate when it started
    t, work = 0.0, float(predictions)
    pending = list(order)
    while work > _EPSILON:
        while pending and workers.launches[pending[0]] <= t + _EPSILON:
            launched.append(pending.pop(0))
        starting = [i for i in launched if i in left_to_start]
        for i in [i for i in starting if left_to_start[i] <= _EPSILON]:
            del left_to_start[i]
            ready_at[i] = t
        starting = [i for i in launched if i in left_to_start]
        predicting = sum(1 for i in launched if i not in left_to_start)
        start_speed, rate = _rates(workers, starting, predicting, shard_rows, shard_overhead_seconds)
        for i in launched:
            if ready_at[i] == t and predicting:
                first_shard_done[i] = t + (shard_rows / (rate / predicting) if shard_rows else 0.0)
        steps = [work / rate] if rate > 0 else []
        if pending:
            steps.append(workers.launches[pending[0]] - t)
        steps += [left_to_start[i] / start_speed for i in starting if start_speed > 0]
        if not steps:
            raise ValueError("processing: no worker can make progress")  # unreachable with valid Workers
        step = max(0.0, min(steps))
        t += step
        work -= rate * step
        for i in starting:
            left_to_start[i] -= start_speed * step
    started = [first_shard_done[i] for i in range(n) if ready_at[i] < math.inf]
    end = max([t, *started])
    return Processing(seconds=end, ready_at=tuple(ready_at), tail=end > t + _EPSILON)


def steady_rate(
    workers: Workers, predicting: int, shard_rows: float, shard_overhead_seconds: float = 0.0
) -> float:
    """Predictions/s once `predicting` workers have all started: the rate the run's average approaches."""
    return _rates(workers, [], predicting, shard_rows, shard_overhead_seconds)[1]
