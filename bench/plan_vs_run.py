"""`spotfill plan --local`'s estimate against the run that follows it, on two workloads (issue 20's check that
the estimate holds within 15 % whatever the instance count).

Each run plans itself the way `spotfill demo` does (`plan --local --write-estimate` on the run's manifest, in
the local cloud the run uses) and compares the estimate with the report (`spotfill.demo.estimate_vs_actual`):

- `digits`: `spotfill demo` itself (the bundled digits CNN, `.npy` shards of 2,000 rows);
- `mobilenetv2`: MobileNetV2 with random weights over 224x224 JPEGs in `.tar` shards (bench case (a)'s data),
  a workload the local overheads were not measured on.

    python -m bench.plan_vs_run --workload digits mobilenetv2 --instances 2 3 4

One line per run: actual / planned for duration, cost and predictions/s (1.00 = exact), with the plan's own
measurements (rows/s, worker start) and the load average at the start, since this machine's other load moves
both the plan's measurements and the run. Results as JSON lines to `--results` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from spotfill.demo import actual_figures

# Each run starts this long after the last one ended, as a user's run starts on a machine that has settled:
# its load average down, and the memory its workers freed no longer cheap to touch (on a VM whose host takes
# freed memory back, memory freed moments ago is reused at a twentieth of the CPU fresh memory costs, so a
# plan that followed a run at once measured its worker's start on warm memory and the run's workers paid for
# cold; plan charges what it can see of that, `plan.fresh_memory_seconds_per_gib`, but not a run's worth of
# warm memory).
PAUSE_SECONDS = 60.0
RATIOS = (("duration", "seconds"), ("cost", "total_usd"), ("predictions/s", "predictions_per_second"))


def ratios(estimate: dict[str, Any], report: dict[str, Any]) -> dict[str, float | None]:
    """actual / planned per figure; None where either is missing."""
    actual = actual_figures(report)
    result: dict[str, float | None] = {}
    for label, key in RATIOS:
        planned, happened = estimate.get(key), actual[key]
        result[label] = round(happened / planned, 3) if planned and happened is not None else None
    return result


def _digits(instances: int, work_dir: Path, shards: int) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    from rich.console import Console

    from spotfill.demo import run_demo

    planned: dict[str, Any] = {}
    ok, result = run_demo(
        Console(quiet=True), work_dir=work_dir, shards=shards, instances=instances, planned=planned
    )
    return ok, planned, result.report or {}


def _mobilenet(instances: int, work_dir: Path, shards: int) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    from rich.console import Console

    from bench.cases import mobilenet_case
    from spotfill.demo import plan_run
    from spotfill.localrun import run_local

    console = Console(quiet=True)
    case = mobilenet_case(work_dir, shards=shards, shard_rows=64, batch_size=32)
    inputs = work_dir / "inputs"
    inputs.mkdir()
    for number, data in enumerate(case.shards):
        (inputs / f"shard-{number:03d}.tar").write_bytes(data)
    planned: dict[str, Any] = {}
    result = run_local(
        case.model_path,
        inputs,
        work_dir / "outputs",
        input_format="images",
        output_format="npy",
        instances=instances,
        chaos=None,
        console=console,
        name="plan-vs-run",
        run_dir=work_dir / "local",
        overwrite=True,
        before_trigger=lambda cloud, spec: plan_run(cloud, spec, work_dir / "spec.json", console, planned),
    )
    return result.succeeded, planned, result.report or {}


# Each runs its workload and returns (it succeeded, what its plan gave `spotfill.demo.plan_run`: the estimate
# and the plan's own measurements, the report).
WORKLOADS = {"digits": (_digits, 40), "mobilenetv2": (_mobilenet, 12)}


def measure(
    workload: str, instances: int, shards: int | None = None, keep: Path | None = None
) -> dict[str, Any]:
    """Plan and run `workload` at `instances`; its folder (data, worker logs, the report page) is kept under
    `keep` when given, else removed."""
    run, default_shards = WORKLOADS[workload]
    load = os.getloadavg()[0]
    started = time.monotonic()
    if keep is not None:
        directory = keep / f"{workload}-{instances}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        ok, planned, report = run(instances, directory, shards or default_shards)
    else:
        with tempfile.TemporaryDirectory(prefix="spotfill-plan-vs-run-") as temporary:
            ok, planned, report = run(instances, Path(temporary), shards or default_shards)
    estimate = planned.get("estimate") or {}
    return {
        "workload": workload,
        "instances": instances,
        "shards": shards or default_shards,
        "ok": ok,
        "load_average_at_start": round(load, 2),
        "wall_seconds": round(time.monotonic() - started, 1),
        "planned": {key: estimate.get(key) for _, key in RATIOS},
        "actual": actual_figures(report),
        "actual_over_planned": ratios(estimate, report),
        "actual_phases_seconds": report.get("phases_seconds"),
        "plan_measurement": planned.get("measurement"),
    }


def line(result: dict[str, Any]) -> str:
    shown = ", ".join(
        f"{label} x{value:.2f}" if value is not None else f"{label} -"
        for label, value in result["actual_over_planned"].items()
    )
    return (
        f"{result['workload']:<12} {result['instances']} instances, {result['shards']} shards, "
        f"load {result['load_average_at_start']:.1f}: {shown}" + ("" if result["ok"] else " (the run FAILED)")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", nargs="+", choices=sorted(WORKLOADS), default=sorted(WORKLOADS))
    parser.add_argument("--instances", nargs="+", type=int, default=[2, 3, 4])
    parser.add_argument("--shards", type=int, help="shards per run (default: 40 digits, 12 mobilenetv2)")
    parser.add_argument("--results", type=Path, help="append each run's figures here as a JSON line")
    parser.add_argument("--keep", type=Path, help="keep each run's folder (worker logs) under this one")
    parser.add_argument(
        "--pause",
        type=float,
        default=PAUSE_SECONDS,
        help=f"seconds before each run (default {PAUSE_SECONDS:g}): the last run's load and memory settle",
    )
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.instances):
        parser.error("--instances must each be at least 1")
    if args.pause < 0:
        parser.error("--pause must not be negative")
    failed = False
    for workload in args.workload:
        for instances in args.instances:
            time.sleep(args.pause)
            result = measure(workload, instances, args.shards, args.keep)
            print(line(result), flush=True)
            failed |= not result["ok"]
            if args.results:
                with args.results.open("a") as out:
                    out.write(json.dumps(result) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
