"""The run report's document: `reports/<run id>.json` in the control bucket, built from the run and its facts.

Written at the end of every run, success or failure, and for invalid input too (no run yet: the report's
run id then comes from the execution name). The figures (docs/contracts/report.md, "The run report"):
status and reason; shard and prediction counts; phase durations; instance-hours by type; the cost in all and
per purchase option (spot, on demand), the on-demand equivalent and where each on-demand price came from,
cost per million predictions; mean and peak throughput; interruptions seen.

`build_report` is pure: the facts it needs from AWS are read by `report_facts.gather`; the document is put in
words by `report_text` and drawn by `report_html`, and written and announced by `publish`.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from spotfill_control.errors import BudgetReached
from spotfill_control.finishing.report_facts import FALLBACKS_LIMIT, Facts, OutputRuntime
from spotfill_control.fleet.fleet import requested_capacity
from spotfill_control.fleet.weights import per_instance_rates
from spotfill_control.instance_types import capacity_weights
from spotfill_control.monitoring import cost, finish_by
from spotfill_control.monitoring.series import series_key
from spotfill_control.run import RunState
from spotfill_control.spec import ModelSpec

Status = Literal["succeeded", "completed_with_failures", "budget_reached", "failed", "invalid"]


# the report lists at most this many failed shards (all of them: the records in runs/<id>/dead-letters/)
FAILED_KEYS_LIMIT = 1_000


# Dollar figures keep 8 decimals: a local-cloud run costs fractions of a cent, and so does its cap.
USD_DIGITS = 8


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
