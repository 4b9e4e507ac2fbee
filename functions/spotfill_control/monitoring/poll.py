"""One Monitor poll end to end, as the Monitor handler runs it: the iteration, its sample, the checks.

`poll` reads the run's known instances, runs one `progress.iterate`, stores the instances it saw, adds the
poll's sample to the run's series (`projection.record_poll`) and persists the run; `check` then raises what
ends the run (the dollar cap, an infeasible deadline, a model that cannot load, a fleet gone, a stall or the
maximum runtime), after the run was persisted so the report still has this poll's figures. `log_fields` and
`metric_values` are what the handler logs and emits as metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotfill_control import state_store
from spotfill_control.aws import Clients
from spotfill_control.config import Settings
from spotfill_control.deadline import Deadline
from spotfill_control.monitoring import budget, finish_by, progress, projection
from spotfill_control.monitoring.progress import Iteration
from spotfill_control.run import Projection, RunState


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
    run, seen = progress.iterate(run, clients, bucket, now, budget_left, settings)
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
