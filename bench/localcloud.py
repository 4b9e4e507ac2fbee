"""The local demo as a benchmark: wall time, the run's phase durations (from its report) and the
orchestration overhead (last output written → the run's last instance terminated).

`measure_local_demo()` returns a JSON-ready dict; `table(result)` formats it. Run on its own with
`python -m bench.localcloud` (prints the table and the JSON).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def measure_local_demo(shards: int = 50, rows_per_shard: int = 2_000, instances: int = 2) -> dict[str, Any]:
    """Run `spotfill demo` in this process (quietly) and return its figures; `ok` says whether it passed."""
    from rich.console import Console

    from spotfill.demo import run_demo

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spotfill-bench-") as work_dir:
        ok, result = run_demo(
            Console(quiet=True),
            work_dir=Path(work_dir),
            shards=shards,
            rows_per_shard=rows_per_shard,
            instances=instances,
        )
    wall = time.monotonic() - started
    report = result.report or {}
    return {
        "ok": ok,
        "shards": shards,
        "predictions": shards * rows_per_shard,
        "instances": instances,
        "wall_seconds": round(wall, 2),
        "local_run_wall_seconds": round(result.wall_seconds, 2),
        "status": report.get("status"),
        "phases_seconds": report.get("phases_seconds", {}),
        "orchestration_overhead_seconds": None
        if result.orchestration_overhead_seconds is None
        else round(result.orchestration_overhead_seconds, 2),
    }


def table(result: dict[str, Any]) -> str:
    phases = result.get("phases_seconds") or {}
    rows = [
        ("local demo", "passed" if result.get("ok") else "FAILED"),
        ("predictions", f"{result.get('predictions', 0):,} in {result.get('shards')} shards"),
        ("wall time (train, data, cloud, run, check)", f"{result.get('wall_seconds')} s"),
        ("local cloud up to checked outputs", f"{result.get('local_run_wall_seconds')} s"),
        *((f"phase {name}", f"{value} s") for name, value in phases.items()),
        (
            "orchestration overhead (last output -> fleet terminated)",
            f"{result.get('orchestration_overhead_seconds')} s",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


if __name__ == "__main__":
    figures = measure_local_demo()
    print(table(figures))
    print(json.dumps(figures, indent=2))
    sys.exit(0 if figures["ok"] else 1)
