"""The run report in words: the rows `spotfill report` prints and the HTML page ends with, its sentences, and
the SNS notification. Pure functions of the report's document (`report.build_report`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spotfill_control.monitoring.budget import format_usd

NOTIFIED_FAILED_ERRORS = 3  # the notification quotes this many of them


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


def deadline_sentence(deadline: Mapping[str, Any]) -> str:
    """`met, 12.5 min to spare (deadline ...)`, `missed by 3.0 min (...)`, or `not finished (...)`."""
    at = f"deadline {deadline.get('at')}"
    if deadline.get("met") is None:
        return f"not finished ({at})"
    spare = float(deadline.get("seconds_to_spare") or 0.0)
    if deadline["met"]:
        return f"met, {spare / 60:.1f} min to spare ({at})"
    return f"missed by {-spare / 60:.1f} min ({at})"


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
