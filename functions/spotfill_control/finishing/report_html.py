"""The run report as a page people look at: `reports/<run id>.html` beside the JSON, and `spotfill report
RUN --html FILE`.

One self-contained page that opens offline (no script, no network): charts of the run's series (progress,
throughput, fleet size, cost against the cap, spot interruptions marked on each timeline), throughput and
cost per million by instance type from the report's figures, then the report's table. Charts are matplotlib
figures inlined as SVG with their text kept as text, so a month-long run (at most 720 samples) stays small.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotfill_control.finishing.report_text import REDRIVE, report_rows
from spotfill_control.monitoring.budget import format_usd

INTERRUPTION_COLOR = "#d62728"
WIDTH_INCHES, HEIGHT_INCHES = 9.0, 3.0


def samples_of(series: Any) -> list[Mapping[str, Any]]:
    """The samples of a series given as a dict, a pydantic model or None, oldest first."""
    if series is None:
        return []
    if hasattr(series, "model_dump"):
        series = series.model_dump()
    samples = [s for s in series.get("samples") or [] if isinstance(s, Mapping) and "t" in s]
    return sorted(samples, key=lambda s: s["t"])


@dataclass(frozen=True)
class Chart:
    name: str  # the figure's id on the page
    title: str
    caption: str
    svg: str | None  # None: no data to draw


# ------------------------------------------------------------------------------------------ the time axis


@dataclass(frozen=True)
class TimeAxis:
    """Elapsed time since the first sample, in the unit that suits the run's length."""

    start: float
    unit: str
    seconds: float

    @classmethod
    def of(cls, samples: Sequence[Mapping[str, Any]]) -> TimeAxis:
        start, span = samples[0]["t"], samples[-1]["t"] - samples[0]["t"]
        for unit, seconds, up_to in (("s", 1, 180), ("min", 60, 3 * 3600), ("h", 3600, 3 * 86400)):
            if span <= up_to:
                return cls(start, unit, seconds)
        return cls(start, "days", 86400)

    def values(self, samples: Sequence[Mapping[str, Any]]) -> list[float]:
        return [(s["t"] - self.start) / self.seconds for s in samples]

    @property
    def label(self) -> str:
        return f"time since the first sample ({self.unit})"


def interruption_times(samples: Sequence[Mapping[str, Any]], axis: TimeAxis) -> list[float]:
    """Where the cumulative interruption count rose: one mark per sample span that saw any."""
    marks, seen = [], 0
    for sample in samples:
        count = int(sample.get("interruptions") or 0)
        if count > seen:
            marks.append((sample["t"] - axis.start) / axis.seconds)
        seen = max(seen, count)
    return marks


# ------------------------------------------------------------------------------------------ drawing


def _figure(columns: int = 1, height: float = HEIGHT_INCHES):
    """A figure (not pyplot's global state: the Lambda may draw pages one after another) and its axes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_INCHES, height), layout="constrained")
    return figure, figure.subplots(1, columns)


def _svg(figure, salt: str) -> str:
    """The figure as an inline `<svg>` element: text as text (small, selectable), ids unique per chart."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg") :], flags=re.S)


def _timeline(axes, axis: TimeAxis, marks: list[float], ylabel: str) -> None:
    for i, x in enumerate(marks):
        axes.axvline(
            x,
            color=INTERRUPTION_COLOR,
            linestyle=":",
            linewidth=1,
            label="spot interruption" if i == 0 else None,
        )
    axes.set_xlabel(axis.label)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=5, fontsize="small", frameon=False)


def progress_chart(samples: Sequence[Mapping[str, Any]]) -> Chart:
    name, title = "progress", "Progress"
    if not samples:
        return Chart(name, title, "shards done over time", None)
    axis = TimeAxis.of(samples)
    x = axis.values(samples)
    figure, axes = _figure()
    axes.step(x, [s.get("shards_done", 0) for s in samples], where="post", label="shards done")
    axes.plot(x, [s.get("shards_total", 0) for s in samples], linestyle="--", color="grey", label="shards")
    _timeline(axes, axis, interruption_times(samples, axis), "shards")
    return Chart(name, title, "shards done (outputs and dead letters) over time", _svg(figure, name))


def throughput_chart(samples: Sequence[Mapping[str, Any]]) -> Chart:
    name, title = "throughput", "Throughput"
    if not samples:
        return Chart(name, title, "predictions per second over time", None)
    axis = TimeAxis.of(samples)
    figure, axes = _figure()
    axes.plot(axis.values(samples), [s.get("predictions_per_second", 0.0) for s in samples])
    _timeline(axes, axis, interruption_times(samples, axis), "predictions / s")
    return Chart(name, title, "predictions per second over each span between samples", _svg(figure, name))


def fleet_chart(samples: Sequence[Mapping[str, Any]]) -> Chart:
    name, title = "fleet", "Fleet"
    if not samples:
        return Chart(name, title, "running instances by type and purchase option, and running tasks", None)
    axis = TimeAxis.of(samples)
    x = axis.values(samples)
    pools = sorted({pool for s in samples for pool in (s.get("capacity") or {})})
    figure, axes = _figure()
    if pools:
        layers = [[float((s.get("capacity") or {}).get(pool, 0)) for s in samples] for pool in pools]
        axes.stackplot(x, layers, labels=pools, step="post", alpha=0.7)
    axes.step(
        x, [s.get("running_tasks", 0) for s in samples], where="post", color="black", label="running tasks"
    )
    _timeline(axes, axis, interruption_times(samples, axis), "instances / tasks")
    return Chart(
        name,
        title,
        "running instances stacked by instance type and purchase option, and the running tasks",
        _svg(figure, name),
    )


def cost_chart(samples: Sequence[Mapping[str, Any]], report: Mapping[str, Any]) -> Chart:
    name, title = "cost", "Cost against the cap"
    cap = (report.get("budget") or {}).get("max_total_usd")
    if not samples:
        return Chart(name, title, "cost accrued over time", None)
    axis = TimeAxis.of(samples)
    figure, axes = _figure()
    axes.plot(axis.values(samples), [s.get("cost_usd", 0.0) for s in samples], label="accrued")
    if cap is not None:
        axes.axhline(cap, color="black", linestyle="--", label=f"cap ${format_usd(cap)}")
    _timeline(axes, axis, interruption_times(samples, axis), "USD")
    caption = "cost accrued so far" + (" against limits.max_total_usd" if cap is not None else " (no cap)")
    return Chart(name, title, caption, _svg(figure, name))


def deadline_chart(samples: Sequence[Mapping[str, Any]], report: Mapping[str, Any]) -> Chart:
    """A run with `limits.finish_by`: the fleet's target capacity against its running capacity, and the
    projected finish against the deadline (minutes late, negative: early) over time."""
    name, title = "deadline", "The deadline"
    deadline = report.get("deadline") or {}
    caption = (
        "left: the fleet's target capacity (weighted units) against the running instances; right: the "
        "projected finish against the deadline, minutes late (below 0: early)"
    )
    tracked = [s for s in samples if s.get("target_capacity") is not None]
    if not tracked or not deadline.get("at"):
        return Chart(name, title, caption, None)
    axis = TimeAxis.of(samples)
    x = axis.values(tracked)
    figure, (left, right) = _figure(columns=2)
    left.step(x, [s["target_capacity"] for s in tracked], where="post", label="target")
    running = [sum(float(n) for n in (s.get("capacity") or {}).values()) for s in tracked]
    left.step(x, running, where="post", color="black", label="running")
    _timeline(left, axis, interruption_times(samples, axis), "capacity")
    at = datetime.fromisoformat(deadline["at"]).timestamp()
    late = [
        (xi, (s["projected_finish"] - at) / 60)
        for xi, s in zip(x, tracked, strict=True)
        if s.get("projected_finish") is not None
    ]
    if late:
        right.plot([p[0] for p in late], [p[1] for p in late], label="projected finish - deadline")
    right.axhline(0, color="black", linestyle="--", label="deadline")
    right.set_xlabel(axis.label)
    right.set_ylabel("minutes late")
    right.grid(alpha=0.3)
    right.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=2, fontsize="small", frameon=False)
    return Chart(name, title, caption, _svg(figure, name))


def by_instance_type(report: Mapping[str, Any]) -> dict[str, tuple[float, float | None]]:
    """Per instance type: (predictions per second per instance, USD per million predictions).

    The report counts predictions and dollars for the whole run; they are shared out to types by
    instance-hours (predictions) and by instance-hours at each type's on-demand price (dollars): exact for a
    one-type fleet, an estimate for a mixed one (the page says so).
    """
    hours: Mapping[str, float] = (report.get("instances") or {}).get("hours_by_type") or {}
    hours = {t: h for t, h in hours.items() if h and h > 0}
    predictions = (report.get("predictions") or {}).get("total") or 0
    spent = report.get("cost_usd") or {}
    total_usd = spent.get("total") or 0.0
    if not hours or predictions <= 0:
        return {}
    prices = {
        t: ((spent.get("on_demand_prices") or {}).get(t) or {}).get("usd_per_hour") or 0.0 for t in hours
    }
    all_hours = sum(hours.values())
    weighted = sum(hours[t] * prices[t] for t in hours)
    figures: dict[str, tuple[float, float | None]] = {}
    for t, h in sorted(hours.items()):
        made = predictions * h / all_hours
        usd = total_usd * (h * prices[t] / weighted if weighted > 0 else h / all_hours)
        figures[t] = (made / (h * 3600), usd / made * 1_000_000 if made else None)
    return figures


def instance_type_chart(report: Mapping[str, Any]) -> Chart:
    name, title = "instance-types", "By instance type"
    figures = by_instance_type(report)
    mixed = len(figures) > 1
    caption = "predictions per second per instance, and USD per million predictions" + (
        " (predictions shared out by instance-hours, dollars by instance-hours at on-demand prices)"
        if mixed
        else ""
    )
    if not figures:
        return Chart(name, title, caption, None)
    names = list(figures)
    figure, (speed, price) = _figure(columns=2, height=1.2 + 0.5 * len(names))
    speed.barh(names, [figures[t][0] for t in names], color="#1f77b4")
    speed.set_xlabel("predictions / s per instance")
    price.barh(names, [figures[t][1] or 0.0 for t in names], color="#ff7f0e")
    price.set_xlabel("USD per million predictions")
    price.tick_params(labelleft=False)
    for axes in (speed, price):
        axes.grid(axis="x", alpha=0.3)
    return Chart(name, title, caption, _svg(figure, name))


# ------------------------------------------------------------------------------------------ the page


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1000px;
padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}.reason{color:#555;margin-top:0}
.status-succeeded{color:#2a7d2a}.status-failed,.status-invalid,.status-budget_reached{color:#b22}
.status-completed_with_failures{color:#b60}
figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}figure h2{font-size:1.1em;margin:0}
figure svg{width:100%;height:auto}.no-data{color:#888;font-style:italic;border:1px dashed #ccc;padding:1em}
table{border-collapse:collapse;width:100%;font-size:.9em}th,td{text-align:left;vertical-align:top;
padding:.3em .6em;border-bottom:1px solid #eee}th{white-space:nowrap}td{word-break:break-word}
"""


def _chart_html(chart: Chart) -> str:
    body = chart.svg if chart.svg is not None else '<p class="no-data">no data</p>'
    return (
        f'<figure class="chart" id="chart-{chart.name}" data-chart="{chart.name}" '
        f'data-empty="{"true" if chart.svg is None else "false"}">'
        f"<h2>{html.escape(chart.title)}</h2><figcaption>{html.escape(chart.caption)}</figcaption>"
        f"{body}</figure>"
    )


def charts(report: Mapping[str, Any], series: Any) -> list[Chart]:
    samples = samples_of(series)
    return [
        progress_chart(samples),
        throughput_chart(samples),
        fleet_chart(samples),
        cost_chart(samples, report),
        instance_type_chart(report),
        *([deadline_chart(samples, report)] if report.get("deadline") else []),
    ]


def render_html(report: Mapping[str, Any], series: Any, redrive: str = REDRIVE) -> str:
    """The page: a heading with the status and reason, the charts, then the report's table. `series` is the
    run's series as a dict (`{"interval_seconds", "samples"}`), a model with `model_dump()`, or None;
    `redrive` names what queues unfinished shards again, as in `report_rows`."""
    run_id = str(report.get("run_id", "?"))
    status = str(report.get("status", "?"))
    rows = "".join(
        f"<tr><th>{html.escape(what)}</th><td>{html.escape(value)}</td></tr>"
        for what, value in report_rows(report, redrive)
    )
    figures = "".join(_chart_html(chart) for chart in charts(report, series))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>spotfill run {html.escape(run_id)}: {html.escape(status)}</title>"
        f"<style>{STYLE}</style></head><body>"
        f'<h1>spotfill run {html.escape(run_id)}: <span class="status-{html.escape(status)}">'
        f"{html.escape(status)}</span></h1>"
        f'<p class="reason">{html.escape(str(report.get("reason") or ""))}</p>'
        f"{figures}"
        f'<h2>Report</h2><table class="report">{rows}</table>'
        f'<p class="reason">generated {html.escape(str(report.get("generated_at") or ""))}</p>'
        "</body></html>\n"
    )
