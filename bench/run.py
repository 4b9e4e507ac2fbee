"""Measure, for each case, ``raw_tensorflow`` and ``raw_best`` (each runtime's FP32 forward pass in memory,
interleaved), ``worker`` (end to end through the S3 and SQS APIs of a moto server on loopback, its outputs
checked against ``model.predict``) and ``naive`` (one ``model.predict`` per row); check the issue's targets,
print a table and write ``bench/results.json``.

One module of about 670 lines because it is the benchmark's driver: its cases, settings and figures are in
modules of their own (`bench.cases`, `bench.raw`, `bench.latency`, `bench.pinning`, `bench.cost`), and what is
left is the order they run in and the table that reports them, read top to bottom.
"""

from __future__ import annotations

import argparse
import contextlib
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
TOLERANCE = 1e-5  # absolute, the worker's outputs against model.predict (FP32)
CHECKED_SHARDS = 2  # shards whose outputs are read back and compared
# The targets on a 2-core machine: worker / raw TensorFlow per case, worker / raw best, and the
# 640x480 case's worker throughput / the 224x224 case's.
OVER_RAW_TENSORFLOW = {"mobilenetv2": 1.6, "digits_cnn": 1.0}
OVER_RAW_BEST = 0.9
PHOTO_OVER_224 = 0.8
# Issue 19's, with the emulator on its own core and latency injected (the aws setting): the worker against the
# pipeline ceiling on every case, and against raw best on (a) and (b).
AWS_OVER_PIPELINE = 0.9
AWS_OVER_RAW_BEST = {"mobilenetv2": 0.8, "digits_cnn": 0.8}


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


def start_moto(latency: Any = None, cpus: list[int] | None = None) -> tuple[subprocess.Popen, str]:
    """A moto server on loopback, its own process: as fast as it answers, or as AWS would (``latency``, a
    ``bench.latency.LatencyModel``); pinned to ``cpus`` when given."""
    port = free_port()
    if latency is None:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    else:
        command = [sys.executable, "-m", "bench.latency", "-p", str(port), *latency.arguments()]
    if cpus is not None:
        from bench.pinning import pinned

        command = pinned(command, cpus)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def measure_worker(case, endpoint: str, server_pid: int, runtime: str) -> dict[str, Any]:
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
        "SPOTFILL_MODEL_RUNTIME": runtime,
    }
    started = time.monotonic()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = process_cpu_seconds(server_pid)
    done, cpu_samples = run_sampling_cpu([sys.executable, "-m", "spotfill_worker"], env, timeout=900)
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
    steady_cpu = cpu_between(cpu_samples, second_started, shards[-1]["time"])
    stages = ("receive", "download", "decode", "predict", "encode", "upload")
    per_shard = {k: float(np.mean([s["timings"].get(k, 0.0) for s in steady])) for k in stages}
    interval = span / len(steady)
    loaded = next(line for line in lines if line.get("event") == "model_loaded")
    chosen = next((line for line in lines if line.get("event") == "runtime_chosen"), None)
    calibration = {k: v for k, v in (chosen or {}).items() if k not in ("event", "time", "level", "run_id")}
    depths = [line for line in lines if line.get("event") == "prefetch_depth"]
    return {
        "predictions_per_second": throughput,
        "runtime_requested": runtime,
        # a worker without runtime choice (no runtime_chosen event) serves through TensorFlow
        "runtime": calibration.get("runtime", "tensorflow"),
        "runtime_calibration": calibration or None,
        "outputs_max_abs_diff": outputs_max_abs_diff(case, s3, bucket),
        "outputs_checked_shards": min(CHECKED_SHARDS, len(case.shards)),
        "shards": len(shards),
        "rows": sum(s["rows"] for s in shards),
        "process_wall_seconds": wall,
        "model_load_seconds": loaded["seconds"],
        "seconds_per_shard": interval,
        "stage_seconds_per_shard": per_shard,
        "predict_share_of_shard_interval": per_shard["predict"] / interval,
        # decode runs in the receiver thread beside predict: on 2 cores its CPU is taken from the forward pass
        "decode_over_predict": per_shard["decode"] / per_shard["predict"],
        # CPU seconds over the whole worker process (start-up and model load included) and the emulated AWS
        "worker_process_cpu_seconds": worker_cpu,
        "moto_server_cpu_seconds": server_cpu,
        # the worker process's CPU seconds per shard over the same span as the throughput: what its design
        # costs in CPU, which other load on the machine does not change (its wall time it does)
        "cpu_seconds_per_shard_steady": steady_cpu / len(steady) if steady_cpu is not None else None,
        # the shards the worker chose to fetch ahead, each time it changed (none: a fixed depth)
        "prefetch_depths": [line["depth"] for line in depths],
        "prefetch_depth_last": depths[-1] if depths else None,
    }


def run_sampling_cpu(
    command: list[str], env: dict[str, str], timeout: float
) -> tuple[subprocess.CompletedProcess, list[tuple[float, float]]]:
    """Run ``command`` to its end, its output captured, and sample its CPU seconds every 20 ms: (its output,
    [(wall clock time, CPU seconds so far)])."""
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{command} ran past {timeout} s")
            with contextlib.suppress(OSError, IndexError):  # it ended between poll and read
                samples.append((time.time(), process_cpu_seconds(process.pid)))
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, process.returncode, out.read(), err.read()), samples


def cpu_between(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """CPU seconds between wall clock times ``start`` and ``end``, from the samples nearest each; ``None``
    without samples."""
    if not samples:
        return None

    def at(moment: float) -> float:
        return min(samples, key=lambda sample: abs(sample[0] - moment))[1]

    return at(end) - at(start)


def outputs_max_abs_diff(case, s3: Any, bucket: str) -> float:
    """The worker's outputs for the first shards, read back from S3, against ``model.predict`` on the rows the
    worker's decoder makes of the same shards: the largest absolute difference."""
    import io

    import keras
    import pyarrow.parquet as pq
    from spotfill_worker.config import ImageScale, InputFormat
    from spotfill_worker.formats import ModelInput, decode

    model = keras.models.load_model(case.model_path, compile=False)
    model_input = ModelInput(tuple(model.inputs[0].shape)[1:], np.dtype(np.float32))
    largest = 0.0
    for i, shard in enumerate(case.shards[:CHECKED_SHARDS]):
        rows = decode(shard, InputFormat(case.input_format), model_input, None, ImageScale(case.image_scale))
        expected = model.predict(rows.features, batch_size=case.batch_size, verbose=0)
        body = s3.get_object(Bucket=bucket, Key=f"outputs/part-{i:05d}.parquet")["Body"].read()
        column = pq.read_table(io.BytesIO(body)).column("prediction").combine_chunks()
        got = np.asarray(column.flatten()).reshape(expected.shape)
        largest = max(largest, float(np.max(np.abs(got - expected))))
    return largest


def measure_decode(case) -> float:
    """Seconds to decode one shard with the worker's decoder, alone on an otherwise idle process (best of 3):
    its CPU cost, which the worker's own decode timings (wall time beside the forward pass) overstate on 2
    cores."""
    from spotfill_worker.config import ImageScale, InputFormat
    from spotfill_worker.formats import ModelInput, decode

    model_input = ModelInput(case.sample.shape[1:], np.dtype(np.float32))
    fmt, scale = InputFormat(case.input_format), ImageScale(case.image_scale)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        decode(case.shards[0], fmt, model_input, None, scale)
        timings.append(time.perf_counter() - started)
    return min(timings)


def run_case(
    case, endpoint: str, server_pid: int, raw_seconds: float, runtime: str, setting: str = "shared"
) -> dict[str, Any]:
    """Every figure of one case in one setting: ``shared`` (the emulator on the worker's cores, answering at
    once; with the decode-alone and naive figures) or ``aws`` (pinned, latency injected:
    ``bench.pinning``)."""
    from spotfill_worker.config import ImageScale, InputFormat
    from spotfill_worker.formats import ModelInput, decode

    from bench import raw

    print(
        f"\n== {case.title} [{setting}]: {len(case.shards)} shards x {case.shard_rows} rows, "
        f"batch {case.batch_size}",
        flush=True,
    )
    batch = np.resize(case.sample, (case.batch_size, *case.sample.shape[1:]))
    runtimes, unavailable = raw.set_up(case.model_path, batch)
    for name, reason in unavailable.items():
        print(f"   {name}: not measured: {reason}", flush=True)
    agreement = raw.agreement(runtimes, batch)
    model_input = ModelInput(case.sample.shape[1:], np.dtype(np.float32))
    fmt, scale = InputFormat(case.input_format), ImageScale(case.image_scale)

    def decode_shard(data: bytes) -> np.ndarray:
        return decode(data, fmt, model_input, None, scale).features

    # The machine is shared: the runtimes are measured in interleaved rounds just before and just after the
    # worker, and each one's two figures averaged; the pipeline ceiling likewise, with the best runtime of the
    # rounds before.
    rounds = 2 if raw_seconds < 10 else 4
    pipeline_seconds = raw_seconds / 5
    before = raw.measure(runtimes, batch, raw_seconds / 2, rounds)
    best_before = next(r for r in runtimes if r.name == max(before, key=before.__getitem__))
    pipeline = [
        raw.measure_pipeline(
            best_before.forward, case.shards, decode_shard, case.batch_size, pipeline_seconds / 2
        )
    ]
    worker = measure_worker(case, endpoint, server_pid, runtime)
    after = raw.measure(runtimes, batch, raw_seconds / 2, rounds)
    pipeline.append(
        raw.measure_pipeline(
            best_before.forward, case.shards, decode_shard, case.batch_size, pipeline_seconds / 2
        )
    )
    figures = {name: (before[name] + after[name]) / 2 for name in before}
    best = max(figures, key=figures.__getitem__)
    raw_tensorflow, raw_best = figures["tensorflow"], figures[best]
    pipeline_ceiling = sum(rate for rate, _ in pipeline) / 2
    pipeline_cpu_per_shard = sum(cpu for _, cpu in pipeline) / 2 * case.shard_rows
    worker_cpu_per_shard = worker["cpu_seconds_per_shard_steady"]
    predictions = worker["predictions_per_second"]
    print(f"   worker  {predictions:10.1f} predictions/s (runtime {worker['runtime']})", flush=True)
    for r in runtimes:
        print(
            f"   raw {r.name:<12} {figures[r.name]:10.1f} predictions/s "
            f"(before {before[r.name]:.1f}, after {after[r.name]:.1f}; "
            f"max |diff| vs TensorFlow {agreement[r.name]:.2g})",
            flush=True,
        )
    print(
        f"   pipeline ceiling {pipeline_ceiling:10.1f} predictions/s (decode + {best_before.name}; "
        f"before {pipeline[0][0]:.1f}, after {pipeline[1][0]:.1f}); CPU s/shard: pipeline "
        f"{pipeline_cpu_per_shard:.4f}, worker {worker_cpu_per_shard or 0:.4f}",
        flush=True,
    )
    print(f"   outputs vs model.predict: max |diff| {worker['outputs_max_abs_diff']:.2g}", flush=True)
    per_runtime: dict[str, Any] = {
        r.name: {
            "raw": figures[r.name],
            "raw_before_after": [before[r.name], after[r.name]],
            "raw_rounds": r.rounds,
            "setup_seconds": r.setup_seconds,
            "max_abs_diff_vs_tensorflow": agreement[r.name],
        }
        for r in runtimes
    }
    per_runtime.update({name: {"unavailable": reason} for name, reason in unavailable.items()})
    result = {
        "title": case.title,
        "setting": setting,
        "batch_size": case.batch_size,
        "shards": len(case.shards),
        "shard_rows": case.shard_rows,
        "raw": raw_tensorflow,  # compatibility: raw is TensorFlow's raw forward pass
        "raw_before_after": per_runtime["tensorflow"]["raw_before_after"],
        "raw_tensorflow": raw_tensorflow,
        "raw_best": raw_best,
        "runtime": {"best": best, "worker": worker["runtime"], "per_runtime": per_runtime},
        "pipeline_ceiling": pipeline_ceiling,
        "pipeline": {
            "runtime": best_before.name,
            "before_after": [rate for rate, _ in pipeline],
            "cpu_seconds_per_shard": pipeline_cpu_per_shard,
        },
        # the pipeline's CPU per shard over the worker's: what worker / pipeline would be on a core of its own
        # that nothing else shares (the worker's CPU counts the emulator's client side: requests, encoding)
        "pipeline_cpu_over_worker_cpu": (
            pipeline_cpu_per_shard / worker_cpu_per_shard if worker_cpu_per_shard else None
        ),
        "worker": predictions,
        "worker_over_raw": predictions / raw_tensorflow,
        "worker_over_raw_tensorflow": predictions / raw_tensorflow,
        "worker_over_raw_best": predictions / raw_best,
        "worker_over_pipeline": predictions / pipeline_ceiling,
        "pipeline_over_raw_best": pipeline_ceiling / raw_best,
        "outputs_max_abs_diff": worker["outputs_max_abs_diff"],
        "worker_detail": worker,
    }
    if setting == "shared":
        decode_alone = measure_decode(case)
        predict_alone = case.shard_rows / raw_best  # the best runtime's forward pass over one shard
        print(
            f"   decode  {decode_alone * 1e3 / case.shard_rows:10.3f} ms per row alone "
            f"({decode_alone / predict_alone:.0%} of the best runtime's forward pass)",
            flush=True,
        )
        naive = measure_naive(case)
        print(
            f"   naive   {naive:10.1f} predictions/s ({case.naive_rows} rows timed, extrapolated)", flush=True
        )
        result.update(
            naive=naive,
            naive_sample_rows=case.naive_rows,
            worker_over_naive=predictions / naive,
            decode_seconds_per_shard_alone=decode_alone,
            decode_alone_over_raw_best_predict=decode_alone / predict_alone,
        )
    return result


def _check(name: str, measured: float | None, threshold: float, **detail: Any) -> dict[str, Any]:
    passed = None if measured is None else measured >= threshold
    return {"target": name, "measured": measured, "at_least": threshold, "pass": passed, **detail}


def targets(cases: dict[str, Any], aws_cases: dict[str, Any] | None = None) -> dict[str, Any]:
    """The issues' targets, each with its measured value and pass/fail (``pass`` null: case not run);
    ``aws_cases``: the cases measured pinned with latency injected (their checks carry ``setting: aws``)."""
    checks = []
    for name, threshold in OVER_RAW_TENSORFLOW.items():
        case = cases.get(name)
        measured = case["worker_over_raw_tensorflow"] if case else None
        checks.append(_check("worker / raw TensorFlow", measured, threshold, case=name))
    for name, case in cases.items():
        checks.append(_check("worker / raw best", case["worker_over_raw_best"], OVER_RAW_BEST, case=name))
    photo, square = cases.get("mobilenetv2_photo"), cases.get("mobilenetv2")
    measured = photo["worker"] / square["worker"] if photo and square else None
    checks.append(_check("worker 640x480 / 224x224", measured, PHOTO_OVER_224, case="mobilenetv2_photo"))
    checks.extend(_outputs_check(name, case) for name, case in cases.items())
    if aws_cases is not None:
        aws = [
            _check("worker / pipeline ceiling", case["worker_over_pipeline"], AWS_OVER_PIPELINE, case=name)
            for name, case in aws_cases.items()
        ]
        for name, threshold in AWS_OVER_RAW_BEST.items():
            case = aws_cases.get(name)
            measured = case["worker_over_raw_best"] if case else None
            aws.append(_check("worker / raw best", measured, threshold, case=name))
        aws.extend(_outputs_check(name, case) for name, case in aws_cases.items())
        checks.extend({**check, "setting": "aws"} for check in aws)
    judged = [c["pass"] for c in checks if c["pass"] is not None]
    return {"all_pass": bool(judged) and all(judged), "checks": checks}


def _outputs_check(name: str, case: dict[str, Any]) -> dict[str, Any]:
    diff = case["outputs_max_abs_diff"]
    return {
        "target": "outputs vs model.predict",
        "case": name,
        "measured": diff,
        "at_most": TOLERANCE,
        "pass": diff <= TOLERANCE,
    }


def table(results: dict[str, Any]) -> str:
    from bench.pinning import tables as aws_tables

    rows = shared_tables(results) if results["cases"] else []
    rows.extend(aws_tables(results))
    rows.append("")
    rows.append("targets")
    rows.append("")
    for c in results["targets"]["checks"]:
        verdict = {True: "pass", False: "MISS", None: "not measured"}[c["pass"]]
        bound = f">= {c['at_least']}" if "at_least" in c else f"<= {c['at_most']:.0e}"
        measured = "-" if c["measured"] is None else f"{c['measured']:.3g}"
        where = f"{c['case']}, {c['setting']}" if "setting" in c else c["case"]
        rows.append(f"- {c['target']} ({where}): {measured} (target {bound}): {verdict}")
    return "\n".join(rows)


def shared_tables(results: dict[str, Any]) -> list[str]:
    """The shared setting's figures (the emulator on the worker's cores, answering at once)."""
    from bench.raw import RUNTIMES as RAW_RUNTIMES

    head = (
        "| case | batch | raw TF (pred/s) | raw best (pred/s) | pipeline ceiling | worker (pred/s) | "
        "naive (pred/s) | worker/raw TF | worker/raw best | worker/pipeline | worker/naive | max diff |"
    )
    rows = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["cases"].values():
        rows.append(
            f"| {r['title']} | {r['batch_size']} | {r['raw_tensorflow']:.1f} | "
            f"{r['raw_best']:.1f} ({r['runtime']['best']}) | {r['pipeline_ceiling']:.1f} | "
            f"{r['worker']:.1f} ({r['runtime']['worker']}) | {r['naive']:.1f} | "
            f"{r['worker_over_raw_tensorflow']:.2f} | {r['worker_over_raw_best']:.2f} | "
            f"{r['worker_over_pipeline']:.2f} | {r['worker_over_naive']:.1f} | "
            f"{r['outputs_max_abs_diff']:.1e} |"
        )
    rows.append("")
    rows.append("raw per runtime (pred/s; max |diff| against TensorFlow on the same batch)")
    rows.append("")
    rows.append("| case | " + " | ".join(RAW_RUNTIMES) + " |")
    rows.append("| --- |" + " ---: |" * len(RAW_RUNTIMES))
    for r in results["cases"].values():
        cells = []
        for name in RAW_RUNTIMES:
            figure = r["runtime"]["per_runtime"].get(name, {"unavailable": "not tried"})
            cells.append(
                "n/a"
                if "unavailable" in figure
                else f"{figure['raw']:.1f} ({figure['max_abs_diff_vs_tensorflow']:.1e})"
            )
        rows.append(f"| {r['title']} | " + " | ".join(cells) + " |")
    rows.append("")
    rows.append(
        "seconds per shard, steady state (download+decode and encode+upload overlap predict in other threads)"
    )
    rows.append("")
    rows.append(
        "| case | s/shard | download | decode | predict | encode | upload | predict share | decode/predict "
        "| decode alone | moto CPU/shard |"
    )
    rows.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results["cases"].values():
        d = r["worker_detail"]
        s = d["stage_seconds_per_shard"]
        rows.append(
            f"| {r['title']} | {d['seconds_per_shard']:.3f} | {s['download']:.3f} | {s['decode']:.3f} | "
            f"{s['predict']:.3f} | {s['encode']:.3f} | {s['upload']:.3f} | "
            f"{d['predict_share_of_shard_interval']:.0%} | {d['decode_over_predict']:.0%} | "
            f"{r['decode_seconds_per_shard_alone']:.3f} | {d['moto_server_cpu_seconds'] / d['shards']:.3f} |"
        )
    return rows


def case_builders(directory: Path, quick: bool) -> dict[str, Any]:
    """Each case's builder, by name, at the bench's sizes (``quick``: small ones)."""
    from bench.cases import digits_case, mobilenet_case, mobilenet_photo_case

    images = (3, 32) if quick else (10, 128)  # (a) and (c): only the JPEGs differ
    return {
        "mobilenetv2": functools.partial(mobilenet_case, directory, *images, batch_size=32),
        "mobilenetv2_photo": functools.partial(mobilenet_photo_case, directory, *images, batch_size=32),
        "digits_cnn": functools.partial(
            digits_case, directory, *((3, 1000) if quick else (16, 8192)), batch_size=1024
        ),
    }


def measure_pinned_case(args: argparse.Namespace) -> int:
    """In the bench process pinned to the worker's CPUs (``bench.pinning``): case ``args.only`` against an
    emulator with latency on the other CPU; writes ``{"aws": ...}`` to ``args.results``."""
    from bench import latency, pinning

    model = latency.model_from(args)
    emulator = [int(cpu) for cpu in args.emulator_cpus.split(",")]
    block: dict[str, Any] = {
        "latency": model.as_dict(),
        "pinning": {"emulator_cpus": emulator, "worker_cpus": pinning.cpus()},
        "cases": {},
    }
    server, endpoint = start_moto(latency=model, cpus=emulator)
    try:
        with tempfile.TemporaryDirectory(prefix="spotfill-bench-") as tmp:
            case = case_builders(Path(tmp), args.quick)[args.only]()
            block["cases"][case.name] = run_case(
                case,
                endpoint,
                server.pid,
                raw_seconds=4 if args.quick else 30,
                runtime=args.runtime,
                setting="aws",
            )
    finally:
        server.terminate()
        server.wait(timeout=10)
    Path(args.results).write_text(json.dumps({"aws": block}, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    from bench import latency, pinning

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the harness works")
    parser.add_argument(
        "--only",
        choices=["mobilenetv2", "mobilenetv2_photo", "digits_cnn", "local_demo"],
        help="run one case",
    )
    parser.add_argument(
        "--runtime",
        choices=["auto", "tensorflow", "openvino", "onnxruntime"],
        default="auto",
        help="the worker's SPOTFILL_MODEL_RUNTIME (default auto)",
    )
    parser.add_argument(
        "--setting",
        choices=["both", "shared", "aws"],
        default="both",
        help="shared: the emulator on the worker's cores, answering at once (the figures before issue 19); "
        "aws: the emulator on a core of its own with S3's and SQS's latency; both (default): each case in "
        "both",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"where to write results (default {RESULTS})"
    )
    parser.add_argument("--in-pinned-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--emulator-cpus", default="0", help=argparse.SUPPRESS)
    latency.add_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    if args.in_pinned_process:
        return measure_pinned_case(args)

    started = time.monotonic()
    info = machine()
    print(f"machine: {info['nproc']} x {info['cpu']}, load average {info['load_average']}", flush=True)
    results: dict[str, Any] = {"machine": info, "cases": {}}
    shared = args.setting in ("both", "shared")
    aws = args.setting in ("both", "aws")
    if aws and (reason := pinning.unavailable()) is not None:
        print(f"aws setting not measured: {reason}", flush=True)
        results["aws"] = {"unavailable": reason}
        aws = False
    if aws:
        emulator, worker = pinning.split(pinning.cpus())
        model = latency.model_from(args)
        results["aws"] = {
            "latency": model.as_dict(),
            "pinning": {"emulator_cpus": emulator, "worker_cpus": worker},
            "cases": {},
        }
        pinned_arguments = ["--in-pinned-process", "--runtime", args.runtime, *model.arguments()]
        pinned_arguments += ["--quick"] if args.quick else []
    server, endpoint = start_moto() if shared else (None, "")
    try:
        with tempfile.TemporaryDirectory(prefix="spotfill-bench-") as tmp:
            for name, build in case_builders(Path(tmp), args.quick).items():
                if args.only not in (None, name):
                    continue
                if shared:
                    case = build()
                    results["cases"][name] = run_case(
                        case, endpoint, server.pid, raw_seconds=4 if args.quick else 30, runtime=args.runtime
                    )
                if aws:
                    measured = pinning.run_case(name, pinned_arguments, emulator, worker)
                    results["aws"]["cases"].update(measured["cases"])
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    if args.only in (None, "local_demo"):
        # The whole system on the local cloud: wall time, phase durations, orchestration overhead.
        from bench.localcloud import measure_local_demo

        results["local_demo"] = (
            measure_local_demo(shards=10, rows_per_shard=500) if args.quick else measure_local_demo()
        )
    aws_cases = results.get("aws", {}).get("cases")
    if aws_cases:
        from bench.cost import costs

        results["costs"] = costs(aws_cases, worker_vcpus=len(results["aws"]["pinning"]["worker_cpus"]))
    results["targets"] = targets(results["cases"], aws_cases)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["wall_seconds"] = time.monotonic() - started
    print("\n" + table(results), flush=True)
    if "local_demo" in results:
        from bench.localcloud import table as local_demo_table

        print("\n" + local_demo_table(results["local_demo"]), flush=True)
    print(f"\nwall time {results['wall_seconds']:.0f} s; results in {args.results}", flush=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    return 0
