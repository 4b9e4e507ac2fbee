"""The ``aws`` setting: the worker on cores of its own, as on an instance, the emulator elsewhere; its tables.

The emulator (the moto server, with ``bench.latency``'s latency) runs on the first CPU the bench may use (CPU
0 unless the bench itself is restricted); a second bench process, which measures the ceilings in itself and
starts the worker (which inherits its affinity), runs on every other CPU the bench may use: on a 2-core
machine CPU 1 alone. Linux only (``taskset`` from util-linux): the affinity is
set before each process starts, so every thread the runtimes create later inherits it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def unavailable() -> str | None:
    """Why the ``aws`` setting cannot run here; ``None`` when it can."""
    if not hasattr(os, "sched_getaffinity"):
        return "this platform has no CPU affinity"
    if shutil.which("taskset") is None:
        return "taskset (util-linux) is not installed"
    if len(cpus()) < 2:
        return "one CPU: the emulator cannot have a core of its own"
    return None


def split(available: list[int]) -> tuple[list[int], list[int]]:
    """(the emulator's CPUs, the worker's): the first CPU, and the rest."""
    return available[:1], available[1:]


def pinned(command: list[str], on: list[int]) -> list[str]:
    """``command`` run on the CPUs ``on`` only."""
    return ["taskset", "--cpu-list", ",".join(str(cpu) for cpu in on), *command]


def run_case(name: str, arguments: list[str], emulator: list[int], worker: list[int]) -> dict[str, Any]:
    """Measure case ``name`` in a bench process pinned to ``worker`` (``python -m bench --setting aws``, with
    ``arguments``) whose emulator runs on ``emulator``: its ``aws`` block (latency model, pinning, the case's
    figures)."""
    with tempfile.TemporaryDirectory(prefix="spotfill-bench-aws-") as directory:
        results = Path(directory) / "results.json"
        command = [
            sys.executable,
            "-m",
            "bench",
            "--setting",
            "aws",
            "--only",
            name,
            "--results",
            str(results),
            "--emulator-cpus",
            ",".join(str(cpu) for cpu in emulator),
            *arguments,
        ]
        subprocess.run(pinned(command, worker), check=True)
        return json.loads(results.read_text())["aws"]


def tables(results: dict[str, Any]) -> list[str]:
    """The aws setting's figures, the two settings side by side, and the cost per million predictions."""
    aws = results.get("aws", {})
    if not aws.get("cases"):
        return []
    pinning, model = aws["pinning"], aws["latency"]
    rows = [
        "",
        f"aws setting: emulator on CPU {pinning['emulator_cpus']}, worker and ceilings on CPU "
        f"{pinning['worker_cpus']}; S3 {model['s3_ms']} ms, SQS {model['sqs_ms']} ms per request, "
        f"{model['connection_mb_per_s']} MB/s per connection, {model['instance_mb_per_s']} MB/s per instance",
        "",
        "| case | raw TF | raw best | pipeline ceiling | worker | worker/raw best | worker/pipeline | "
        "pipeline/raw best | CPU/shard: pipeline / worker | depth chosen | max diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in aws["cases"].values():
        depths = r["worker_detail"]["prefetch_depths"]
        cpu = r["pipeline_cpu_over_worker_cpu"]
        cpu_cell = (
            "-"
            if cpu is None
            else (
                f"{r['pipeline']['cpu_seconds_per_shard']:.3f} / "
                f"{r['worker_detail']['cpu_seconds_per_shard_steady']:.3f} = {cpu:.2f}"
            )
        )
        rows.append(
            f"| {r['title']} | {r['raw_tensorflow']:.1f} | {r['raw_best']:.1f} ({r['runtime']['best']}) | "
            f"{r['pipeline_ceiling']:.1f} | {r['worker']:.1f} ({r['runtime']['worker']}) | "
            f"{r['worker_over_raw_best']:.2f} | {r['worker_over_pipeline']:.2f} | "
            f"{r['pipeline_over_raw_best']:.2f} | {cpu_cell} | {'-> '.join(map(str, depths)) or '-'} | "
            f"{r['outputs_max_abs_diff']:.1e} |"
        )
    rows += [
        "",
        "seconds per shard in the aws setting, steady state",
        "",
        "| case | s/shard | receive | download | decode | predict | encode | upload | predict share |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in aws["cases"].values():
        d = r["worker_detail"]
        s = d["stage_seconds_per_shard"]
        rows.append(
            f"| {r['title']} | {d['seconds_per_shard']:.3f} | {s['receive']:.3f} | {s['download']:.3f} | "
            f"{s['decode']:.3f} | {s['predict']:.3f} | {s['encode']:.3f} | {s['upload']:.3f} | "
            f"{d['predict_share_of_shard_interval']:.0%} |"
        )
    rows += [
        "",
        "both settings side by side",
        "",
        "| case | shared: worker | worker/raw best | worker/pipeline | aws: worker | worker/raw best | "
        "worker/pipeline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in aws["cases"].items():
        before = results["cases"].get(name)
        shared = "- | - | -"
        if before:
            shared = (
                f"{before['worker']:.1f} | {before['worker_over_raw_best']:.2f} | "
                f"{before['worker_over_pipeline']:.2f}"
            )
        rows.append(
            f"| {r['title']} | {shared} | {r['worker']:.1f} | {r['worker_over_raw_best']:.2f} | "
            f"{r['worker_over_pipeline']:.2f} |"
        )
    if "costs" in results:
        from bench.cost import table as cost_table

        rows += ["", *cost_table(results["costs"])]
    return rows
