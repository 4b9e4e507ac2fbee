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
from spotfill_control.finishing.report_text import REDRIVE, duration_text, report_rows
from spotfill_control.monitoring.budget import format_usd

from spotfill.runs import RunRow, RunWatcher, Snapshot

# States the workflow cycles through while it waits: a plain log skips them.
_LOOP_STATES = ("WaitForWork", "Monitor", "WaitForRegistration", "CheckRegistration")


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
        duration_text(snap.eta_seconds),
    )
    status = Text.assemble(
        ("state ", "bold"),
        f"{snap.state or '-'} ({snap.status.lower()})  ",
        ("instances ", "bold"),
        f"{snap.instances}  ",
        ("tasks ", "bold"),
        f"{snap.tasks}  ",
        ("elapsed ", "bold"),
        duration_text(snap.elapsed),
    )
    header = Text(f"run {snap.run_id or '(starting)'}", style="cyan")
    outlook = projection_line(snap)
    lines = [Text(text) for text in (outlook, snap.deadline, snap.weights) if text]
    return Group(header, bar, line, status, spending(snap), *lines)


def projection_line(snap: Snapshot) -> str | None:
    """The monitor's projection, e.g. `ETA 4m12s, cost $0.0021 so far, projected $0.0043`; None before the
    monitor projected anything."""
    if not snap.projected and snap.projected_total_usd is None:
        return None
    parts = [f"ETA {duration_text(snap.eta_seconds) if snap.projected else '-'}"]
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
                    f"[{duration_text(snap.elapsed)}] {line}, {snap.predictions:,} predictions "
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


def report_table(report: dict[str, Any], redrive: str = REDRIVE) -> Table:
    table = Table(title=f"run {report.get('run_id')}: {report.get('status')}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for what, value in report_rows(report, redrive):
        table.add_row(what, Text(value))  # keys and reasons may hold brackets: never markup
    return table


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
