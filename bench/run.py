"""Measure ``raw`` (compiled forward pass, in memory), ``worker`` (end to end through the S3 and SQS APIs of a
moto server on loopback) and ``naive`` (one ``model.predict`` per row) for each case; print a table and write
``bench/results.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).with_name("results.json")
RUN_ID = "bench"


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }


def measure_raw(case, seconds: float) -> float:
    """The ceiling: the worker's own compiled forward pass over batches already in memory."""
    from spotfill_worker.model import Predictor, load_model

    predictor = Predictor(load_model(case.model_path), case.batch_size)
    batch = np.resize(case.sample, (case.batch_size, *case.sample.shape[1:]))
    predictor.predict(batch)  # trace
    predictor.predict(batch)
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict(batch)
        rows += len(batch)
    return rows / (time.perf_counter() - started)


def measure_naive(case) -> float:
    """The article's style: one model.predict call per row, timed on a sample and extrapolated."""
    import keras

    model = keras.models.load_model(case.model_path, compile=False)
    rows = case.sample[: case.naive_rows]
    model.predict(rows[:1], verbose=0)
    started = time.perf_counter()
    for i in range(len(rows)):
        model.predict(rows[i : i + 1], verbose=0)
    return len(rows) / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server, endpoint
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("moto server did not start")


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure_worker(case, endpoint: str, server_pid: int) -> dict[str, Any]:
    """Run ``python -m spotfill_worker`` against the moto server until the queue is drained."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    bucket = f"bench-{case.name.replace('_', '-')}"
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(QueueName=bucket)["QueueUrl"]
    s3.upload_file(str(case.model_path), bucket, f"models/{case.model_path.name}")
    for i, body in enumerate(case.shards):
        key = f"inputs/part-{i:05d}.{case.shard_suffix}"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        message = {
            "run_id": RUN_ID,
            "shard": f"s3://{bucket}/{key}",
            "output": f"s3://{bucket}/outputs/part-{i:05d}.parquet",
            "error": f"s3://{bucket}/runs/{RUN_ID}/errors/part-{i:05d}.json",
        }
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(message))
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "SPOTFILL_RUN_ID": RUN_ID,
        "SPOTFILL_QUEUE_URL": queue_url,
        "SPOTFILL_MODEL_URI": f"s3://{bucket}/models/{case.model_path.name}",
        "SPOTFILL_INPUT_FORMAT": case.input_format,
        "SPOTFILL_IMAGE_SCALE": case.image_scale,
        "SPOTFILL_BATCH_SIZE": str(case.batch_size),
        "SPOTFILL_RECEIVE_WAIT_SECONDS": "1",
        "SPOTFILL_EXIT_WHEN_IDLE_SECONDS": "2",
        "SPOTFILL_SPOT_NOTICE": "false",
    }
    started = time.monotonic()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = process_cpu_seconds(server_pid)
    done = subprocess.run(
        [sys.executable, "-m", "spotfill_worker"], env=env, capture_output=True, text=True, timeout=900
    )
    wall = time.monotonic() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    server_cpu = process_cpu_seconds(server_pid) - server_before
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    shards = [line for line in lines if line.get("event") == "shard_done"]
    failed = [line for line in lines if line.get("event") == "shard_failed"]
    if done.returncode != 0 or failed or len(shards) != len(case.shards):
        raise RuntimeError(f"worker run failed (exit {done.returncode}): {failed[:1] or done.stdout[-2000:]}")
    # After warm-up: from the moment the second shard starts predicting until the last output is written
    # (so the final encode and upload, which nothing overlaps, count against the worker).
    shards.sort(key=lambda line: line["time"])
    steady = shards[1:]
    second_started = sorted(line["time"] for line in lines if line.get("event") == "shard_started")[1]
    span = shards[-1]["time"] - second_started
    throughput = sum(s["rows"] for s in steady) / span
    stages = ("download", "decode", "predict", "encode", "upload")
    per_shard = {k: float(np.mean([s["timings"].get(k, 0.0) for s in steady])) for k in stages}
    interval = span / len(steady)
    loaded = next(line for line in lines if line.get("event") == "model_loaded")
    return {
        "predictions_per_second": throughput,
        "shards": len(shards),
        "rows": sum(s["rows"] for s in shards),
        "process_wall_seconds": wall,
        "model_load_seconds": loaded["seconds"],
        "seconds_per_shard": interval,
        "stage_seconds_per_shard": per_shard,
        "predict_share_of_shard_interval": per_shard["predict"] / interval,
        # CPU seconds over the whole worker process (start-up and model load included) and the emulated AWS
        "worker_process_cpu_seconds": worker_cpu,
        "moto_server_cpu_seconds": server_cpu,
    }


def run_case(case, endpoint: str, server_pid: int, raw_seconds: float) -> dict[str, Any]:
    print(
        f"\n== {case.title}: {len(case.shards)} shards x {case.shard_rows} rows, batch {case.batch_size}",
        flush=True,
    )
    # The machine is shared: raw is measured just before and just after the worker, and averaged.
    raw_before = measure_raw(case, raw_seconds / 2)
    worker = measure_worker(case, endpoint, server_pid)
    print(f"   worker  {worker['predictions_per_second']:10.1f} predictions/s", flush=True)
    raw_after = measure_raw(case, raw_seconds / 2)
    raw = (raw_before + raw_after) / 2
    print(
        f"   raw     {raw:10.1f} predictions/s (before {raw_before:.1f}, after {raw_after:.1f})", flush=True
    )
    naive = measure_naive(case)
    print(f"   naive   {naive:10.1f} predictions/s ({case.naive_rows} rows timed, extrapolated)", flush=True)
    return {
        "title": case.title,
        "batch_size": case.batch_size,
        "shards": len(case.shards),
        "shard_rows": case.shard_rows,
        "raw": raw,
        "raw_before_after": [raw_before, raw_after],
        "worker": worker["predictions_per_second"],
        "naive": naive,
        "naive_sample_rows": case.naive_rows,
        "worker_over_raw": worker["predictions_per_second"] / raw,
        "worker_over_naive": worker["predictions_per_second"] / naive,
        "worker_detail": worker,
    }


def table(results: dict[str, Any]) -> str:
    head = "| case | batch | raw (pred/s) | worker (pred/s) | naive (pred/s) | worker/raw | worker/naive |"
    rows = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["cases"].values():
        rows.append(
            f"| {r['title']} | {r['batch_size']} | {r['raw']:.1f} | {r['worker']:.1f} | {r['naive']:.1f} | "
            f"{r['worker_over_raw']:.2f} | {r['worker_over_naive']:.1f} |"
        )
    rows.append("")
    rows.append(
        "seconds per shard, steady state (download+decode and encode+upload overlap predict in other threads)"
    )
    rows.append("")
    rows.append(
        "| case | s/shard | download | decode | predict | encode | upload | predict share | moto CPU/shard |"
    )
    rows.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results["cases"].values():
        d = r["worker_detail"]
        s = d["stage_seconds_per_shard"]
        rows.append(
            f"| {r['title']} | {d['seconds_per_shard']:.3f} | {s['download']:.3f} | {s['decode']:.3f} | "
            f"{s['predict']:.3f} | {s['encode']:.3f} | {s['upload']:.3f} | "
            f"{d['predict_share_of_shard_interval']:.0%} | {d['moto_server_cpu_seconds'] / d['shards']:.3f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the harness works")
    parser.add_argument("--only", choices=["mobilenetv2", "digits_cnn", "local_demo"], help="run one case")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)

    from bench.cases import digits_case, mobilenet_case

    started = time.monotonic()
    info = machine()
    print(f"machine: {info['nproc']} x {info['cpu']}, load average {info['load_average']}", flush=True)
    results: dict[str, Any] = {"machine": info, "cases": {}}
    server, endpoint = start_moto()
    try:
        with tempfile.TemporaryDirectory(prefix="spotfill-bench-") as tmp:
            directory = Path(tmp)
            builders = []
            if args.only in (None, "mobilenetv2"):
                size = (3, 32) if args.quick else (10, 128)
                builders.append(functools.partial(mobilenet_case, directory, *size, batch_size=32))
            if args.only in (None, "digits_cnn"):
                size = (3, 1000) if args.quick else (16, 8192)
                builders.append(functools.partial(digits_case, directory, *size, batch_size=1024))
            for build in builders:
                case = build()
                results["cases"][case.name] = run_case(
                    case, endpoint, server.pid, raw_seconds=3 if args.quick else 15
                )
    finally:
        server.terminate()
        server.wait(timeout=10)
    if args.only in (None, "local_demo"):
        # The whole system on the local cloud: wall time, phase durations, orchestration overhead.
        from bench.localcloud import measure_local_demo

        results["local_demo"] = (
            measure_local_demo(shards=10, rows_per_shard=500) if args.quick else measure_local_demo()
        )
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["wall_seconds"] = time.monotonic() - started
    print("\n" + table(results), flush=True)
    if "local_demo" in results:
        from bench.localcloud import table as local_demo_table

        print("\n" + local_demo_table(results["local_demo"]), flush=True)
    print(f"\nwall time {results['wall_seconds']:.0f} s; results in {RESULTS}", flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0
