"""Monitor: one iteration of the WaitForWork → Monitor → IsWorkDone loop (`monitoring.progress`)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.typing import LambdaContext

from spotfill_control import state_store
from spotfill_control.aws import client, transient_errors_retried
from spotfill_control.config import settings
from spotfill_control.deadline import Deadline
from spotfill_control.monitoring import budget, finish_by, progress, projection
from spotfill_control.monitoring.series import Series, load_series, save_series
from spotfill_control.run import RunEvent, utcnow

logger = Logger()
# Embedded-metric-format records on stdout: Lambda's logs turn them into the dashboard's "shards done vs
# total" and dead-letter series without a PutMetricData call (namespace and dimension as the worker's).
metrics = Metrics(namespace="spotfill")


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run = parse(event=event, model=RunEvent).run
    logger.append_keys(run_id=run.run_id)
    now = utcnow()
    clients = progress.Clients(s3=client("s3"), sqs=client("sqs"), ec2=client("ec2"), ecs=client("ecs"))
    config = settings()
    bucket = config.control_bucket
    with transient_errors_retried("monitor"):
        # A run's first poll (no projection yet: also a run begun before the series existed) starts the
        # series, since a GetObject of a key never written is denied, not 404, to a role whose ListBucket is
        # limited to a prefix; later polls read it, add their sample and write it back.
        first = run.projection is None
        # Half the invocation's remaining time for moving dead letters and verifying parts; the rest
        # continues next poll (docs/state-machine.md, "Monitor").
        budget_left = Deadline.of_invocation(context, progress.DEFAULT_BUDGET_SECONDS)
        run = state_store.with_known_instances(run, clients.s3, bucket)
        known_before = list(run.progress.known_instances)
        run, seen = progress.iterate(run, clients, bucket, now, budget_left, config)
        state_store.save_known_instances(run, known_before, clients.s3, bucket)
        poll = float(run.spec.limits.poll_interval_seconds)
        series = Series(interval_seconds=poll) if first else load_series(clients.s3, bucket, run.run_id)
        series.add(projection.sample_of(run, seen, now, series.last))
        run.projection = projected = projection.project(run, series, now)
        # The series first: a persisted run that has polled always has one (the report reads it).
        save_series(clients.s3, bucket, run.run_id, series)
        state_store.persist(run, clients.s3, bucket)
    logger.info(
        "monitored",
        extra={
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
        },
    )
    metrics.add_dimension(name="RunId", value=run.run_id)
    metrics.add_metric(name="ShardsTotal", unit=MetricUnit.Count, value=run.shards_total)
    metrics.add_metric(name="ShardsDone", unit=MetricUnit.Count, value=seen.outputs_done)
    metrics.add_metric(name="DeadLetters", unit=MetricUnit.Count, value=seen.dead_letters)
    metrics.add_metric(name="CostSoFarUsd", unit=MetricUnit.NoUnit, value=run.budget.accrued_usd)
    if projected.eta_seconds is not None:
        metrics.add_metric(name="EtaSeconds", unit=MetricUnit.Seconds, value=projected.eta_seconds)
    if projected.projected_total_usd is not None:
        value = projected.projected_total_usd
        metrics.add_metric(name="ProjectedTotalUsd", unit=MetricUnit.NoUnit, value=value)
    if run.spec.limits.max_total_usd is not None:
        metrics.add_metric(name="MaxTotalUsd", unit=MetricUnit.NoUnit, value=run.spec.limits.max_total_usd)
    budget.check_budget(run, seen.queue.in_flight, now)
    finish_by.check_feasible(run)
    progress.check_model(run, seen)
    progress.check_fleet(run, seen)
    progress.enforce_limits(run, now)
    return run.model_dump(mode="json")
