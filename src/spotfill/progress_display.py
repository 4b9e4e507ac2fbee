"""The live progress display: shards done/total, predictions per second, ETA, instances and tasks, the
workflow's current state, the cost so far against the run's dollar cap; and the run report as a table."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from spotfill_control.budget import format_usd
from spotfill_control.report import runtime_sentence

from spotfill.runs import RunRow, RunWatcher, Snapshot

# States the workflow cycles through while it waits: a plain log skips them.
_LOOP_STATES = ("WaitForWork", "Monitor", "WaitForRegistration", "CheckRegistration")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def render(snap: Snapshot) -> Group:
    total = snap.shards_total
    bar = ProgressBar(total=float(total or 1), completed=float(snap.shards_done if total else 0), width=40)
    line = Text.assemble(
        ("shards ", "bold"),
        f"{snap.shards_done}/{total if total is not None else '?'}  ",
        ("predictions ", "bold"),
        f"{snap.predictions:,}  ",
        f"{snap.predictions_per_second:,.0f}/s  ",
        ("ETA ", "bold"),
        _duration(snap.eta_seconds),
    )
    status = Text.assemble(
        ("state ", "bold"),
        f"{snap.state or '-'} ({snap.status.lower()})  ",
        ("instances ", "bold"),
        f"{snap.instances}  ",
        ("tasks ", "bold"),
        f"{snap.tasks}  ",
        ("elapsed ", "bold"),
        _duration(snap.elapsed),
    )
    header = Text(f"run {snap.run_id or '(starting)'}", style="cyan")
    outlook = projection_line(snap)
    return Group(header, bar, line, status, spending(snap), *([Text(outlook)] if outlook else []))


def projection_line(snap: Snapshot) -> str | None:
    """The monitor's projection, e.g. `ETA 4m12s, cost $0.0021 so far, projected $0.0043`; None before the
    monitor projected anything."""
    if not snap.projected and snap.projected_total_usd is None:
        return None
    parts = [f"ETA {_duration(snap.eta_seconds) if snap.projected else '-'}"]
    if snap.cost_usd is not None:
        parts.append(f"cost ${format_usd(snap.cost_usd)} so far")
    if snap.projected_total_usd is not None:
        parts.append(f"projected ${format_usd(snap.projected_total_usd)}")
    return ", ".join(parts)


def spending(snap: Snapshot) -> Text:
    """The cost so far against the cap, e.g. `cost $0.0001532 of $0.0002000 cap (77%)  draining`."""
    cost = "-" if snap.cost_usd is None else f"${format_usd(snap.cost_usd)}"
    parts: list[str | tuple[str, str]] = [("cost ", "bold"), cost]
    if snap.max_total_usd is not None:
        share = f" ({(snap.cost_usd or 0.0) / snap.max_total_usd:.0%})" if snap.cost_usd is not None else ""
        parts.append(f" of ${format_usd(snap.max_total_usd)} cap{share}")
    if snap.draining:
        parts.append(("  draining: budget nearly reached", "yellow"))
    return Text.assemble(*parts)


def follow(
    watcher: RunWatcher,
    console: Console,
    interval: float = 0.5,
    timeout: float | None = None,
    on_poll: Callable[[Snapshot], None] | None = None,
) -> Snapshot:
    """Poll until the execution ends (or `timeout`), showing a live display on a terminal and a line per
    state change otherwise; returns the last snapshot."""
    deadline = None if timeout is None else time.monotonic() + timeout
    snap = watcher.poll()
    if console.is_terminal:
        with Live(render(snap), console=console, refresh_per_second=4, transient=False) as live:
            while not snap.finished and (deadline is None or time.monotonic() < deadline):
                time.sleep(interval)
                snap = watcher.poll()
                if on_poll:
                    on_poll(snap)
                live.update(render(snap))
    else:
        last = None
        while True:
            total = snap.shards_total if snap.shards_total is not None else "?"
            line = f"{snap.state or '-'} {snap.status.lower()}: shards {snap.shards_done}/{total}"
            outlook = projection_line(snap)
            key = (snap.status, snap.shards_done, "" if snap.state in _LOOP_STATES else snap.state)
            if key != last:
                console.print(
                    f"[{_duration(snap.elapsed)}] {line}, {snap.predictions:,} predictions "
                    f"({snap.predictions_per_second:,.0f}/s), {snap.instances} instances, {snap.tasks} tasks"
                    + (f"; {outlook}" if outlook else ""),
                    markup=False,
                )
                last = key
            if snap.finished or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(interval)
            snap = watcher.poll()
            if on_poll:
                on_poll(snap)
    return snap


def report_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"run {report.get('run_id')}: {report.get('status')}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("reason", str(report.get("reason") or "-"))
    shards = report.get("shards", {})
    if shards:
        table.add_row(
            "shards",
            f"{shards.get('succeeded', 0)} succeeded, {shards.get('failed', 0)} failed, "
            f"{shards.get('skipped_existing', 0)} skipped (output existed), "
            f"{shards.get('retried', 0)} retried, "
            f"{shards.get('unprocessed', 0)} unfinished (spotfill redrive), "
            f"of {shards.get('total', 0)}",
        )
        for key in shards.get("failed_keys", [])[:10]:
            table.add_row("  failed", str(key))
    predictions = report.get("predictions", {})
    if predictions:
        table.add_row("predictions", f"{predictions.get('total', 0):,}")
    phases = report.get("phases_seconds", {})
    if phases:
        table.add_row(
            "phases",
            ", ".join(f"{k} {v:.1f}s" for k, v in phases.items() if isinstance(v, int | float)),
        )
    throughput = report.get("throughput", {})
    if throughput:
        table.add_row(
            "throughput",
            f"mean {throughput.get('mean_predictions_per_second') or 0:,.0f}/s, "
            f"peak {throughput.get('peak_predictions_per_second') or 0:,.0f}/s",
        )
    runtime = runtime_sentence(report.get("model_runtime") or {})
    if runtime:
        table.add_row("model", Text(runtime))  # a fallback reason may hold brackets: not markup
    instances = report.get("instances", {})
    if instances:
        hours = ", ".join(f"{k} {v:.4f}h" for k, v in instances.get("hours_by_type", {}).items())
        table.add_row(
            "instances",
            f"{instances.get('count', 0)} ({hours or '-'}), {instances.get('interruptions', 0)} interrupted",
        )
    cap = report.get("budget", {}).get("max_total_usd")
    if cap is not None:
        accrued = report["budget"].get("accrued_usd") or 0.0
        table.add_row("budget", f"${format_usd(accrued)} accrued of ${format_usd(cap)} cap")
    cost = report.get("cost_usd", {})
    if cost:
        options = cost.get("by_purchase_option", {})
        split = ", ".join(
            f"{name} ${format_usd(spent.get('usd', 0))} ({spent.get('hours', 0):.4f}h)"
            for name, spent in options.items()
            if spent.get("instances")
        )
        static = cost.get("static_table_prices") or []
        table.add_row(
            "cost",
            f"${format_usd(cost.get('total', cost.get('spot', 0)))}{f' ({split})' if split else ''} vs "
            f"${format_usd(cost.get('on_demand_equivalent', 0))} on demand; "
            f"${cost.get('per_million_predictions') or 0:.4f} per million predictions"
            + (f"; on-demand prices of {', '.join(static)} from the static table" if static else ""),
        )
    versus = estimate_line(report.get("estimate_vs_actual"))
    if versus:
        table.add_row("estimate", versus)
    table.add_row("report", str(report.get("report_uri", "-")))
    return table


def estimate_line(section: dict[str, Any] | None) -> str | None:
    """The plan's estimate against the run, e.g. `planned 25s, $0.0004, 12,000/s; took 31s (x1.24), $0.0005
    (x1.25), 10,500/s (x0.88)`; None when the spec carried no estimate."""
    if not section:
        return None
    estimate, actual, error = section.get("estimate", {}), section.get("actual", {}), section.get("error", {})

    def figures(values: dict[str, Any], ratios: dict[str, Any] | None = None) -> str:
        shown = []
        for name, show in (
            ("seconds", lambda v: _duration(v)),
            ("total_usd", lambda v: f"${format_usd(v)}"),
            ("predictions_per_second", lambda v: f"{v:,.0f}/s"),
        ):
            value = values.get(name)
            text = "-" if value is None else show(value)
            ratio = (ratios or {}).get(name)
            shown.append(f"{text} (x{ratio:.2f})" if ratio is not None else text)
        return ", ".join(shown)

    return f"planned {figures(estimate)}; took {figures(actual, error)}"


def runs_table(rows: list[RunRow]) -> Table:
    """`spotfill runs`: one line per run, newest first."""
    table = Table(title="recent runs")
    longest = max((len(row.run_id) for row in rows), default=3)
    table.add_column("run", no_wrap=True, min_width=longest)  # a run id is what `report` and `watch` take
    for name in ("state", "shards", "cost", "per million", "started"):
        table.add_column(name, justify="right" if name in ("shards", "cost", "per million") else "left")
    for row in rows:
        total = "?" if row.shards_total is None else str(row.shards_total)
        table.add_row(
            row.run_id,
            row.state,
            "-" if row.shards_done is None else f"{row.shards_done}/{total}",
            "-" if row.cost_usd is None else f"${format_usd(row.cost_usd)}",
            "-" if row.cost_per_million is None else f"${format_usd(row.cost_per_million)}",
            "-" if row.started_at is None else f"{row.started_at:%Y-%m-%d %H:%M:%S}Z",
        )
    return table
