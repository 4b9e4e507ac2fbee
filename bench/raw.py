"""The raw ceilings: each runtime's FP32 forward pass over batches already in memory, measured side by side.

Self-contained on purpose (it does not ask the worker which runtime it would pick): TensorFlow is the worker's
own compiled forward pass (``spotfill_worker.model.Predictor``); OpenVINO converts the Keras model in memory
(``ov.convert_model`` with a dynamic batch) and runs it at FP32 (``INFERENCE_PRECISION_HINT`` f32: on CPUs
with bf16 instructions OpenVINO's default is bf16); ONNX Runtime runs the model as the worker converts it
(``spotfill_worker.runtimes.onnxruntime_runtime``: tf2onnx, a dynamic batch). A runtime that cannot be set up
here is reported with its reason instead of a figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES = ("tensorflow", "openvino", "onnxruntime")


class Unavailable(Exception):
    """The runtime cannot serve this model here; ``str()`` is the reason."""


@dataclass
class RawRuntime:
    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    setup_seconds: float
    rounds: list[float] = field(default_factory=list)  # predictions/s of each timed round, in order


def _tensorflow(model_path: Path, keras_model: Any, batch: np.ndarray) -> Callable:
    from spotfill_worker.model import Predictor, load_model

    return Predictor(load_model(model_path), len(batch)).predict


def _openvino(model_path: Path, keras_model: Any, batch: np.ndarray) -> Callable:
    from spotfill_worker.third_party import turn_off_dependency_telemetry

    turn_off_dependency_telemetry()  # as the worker does: the converter reports to Google Analytics otherwise
    try:
        import openvino as ov
    except ImportError as exc:
        raise Unavailable(f"openvino is not installed ({exc})") from None
    try:
        converted = ov.convert_model(
            keras_model, example_input=batch[:1], input=[(-1, *batch.shape[1:])]
        )  # -1: any batch size
        compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except Exception as exc:
        raise Unavailable(f"OpenVINO cannot convert the model: {type(exc).__name__}: {exc}") from None
    return lambda x: compiled(x)[0]


def _onnxruntime(model_path: Path, keras_model: Any, batch: np.ndarray) -> Callable:
    from spotfill_worker.model import load_model
    from spotfill_worker.runtimes import RuntimeUnavailable, onnxruntime_runtime

    try:
        return onnxruntime_runtime(load_model(model_path))
    except RuntimeUnavailable as exc:
        raise Unavailable(str(exc)) from None


_SETUP = {"tensorflow": _tensorflow, "openvino": _openvino, "onnxruntime": _onnxruntime}


def set_up(model_path: Path, batch: np.ndarray) -> tuple[list[RawRuntime], dict[str, str]]:
    """Every runtime that can serve the model (TensorFlow first), and why each other one cannot."""
    import keras

    keras_model = keras.models.load_model(model_path, compile=False)
    ready, unavailable = [], {}
    for name in RUNTIMES:
        started = time.perf_counter()
        try:
            forward = _SETUP[name](model_path, keras_model, batch)
        except Unavailable as exc:
            if name == "tensorflow":
                raise
            unavailable[name] = str(exc)
            continue
        forward(batch)  # trace, compile, allocate
        forward(batch)
        ready.append(RawRuntime(name, forward, time.perf_counter() - started))
    return ready, unavailable


def agreement(runtimes: list[RawRuntime], batch: np.ndarray) -> dict[str, float]:
    """Each runtime's largest absolute difference from TensorFlow's outputs on the same batch."""
    reference = np.asarray(runtimes[0].forward(batch), dtype=np.float32)
    return {
        r.name: float(np.max(np.abs(np.asarray(r.forward(batch), dtype=np.float32) - reference)))
        for r in runtimes
    }


def measure(runtimes: list[RawRuntime], batch: np.ndarray, seconds: float, rounds: int) -> dict[str, float]:
    """``rounds`` rounds of (TensorFlow, OpenVINO, ONNX Runtime, ...), each runtime ``seconds / rounds /
    len(runtimes)`` per round, so a shared machine's load falls on every runtime alike; predictions/s each."""
    share = seconds / rounds / len(runtimes)
    totals = {r.name: [0, 0.0] for r in runtimes}
    for _ in range(rounds):
        for runtime in runtimes:
            rows, started = 0, time.perf_counter()
            while True:
                runtime.forward(batch)
                rows += len(batch)
                elapsed = time.perf_counter() - started
                if elapsed >= share:
                    break
            totals[runtime.name][0] += rows
            totals[runtime.name][1] += elapsed
            runtime.rounds.append(rows / elapsed)
    return {name: rows / elapsed for name, (rows, elapsed) in totals.items()}


def measure_pipeline(
    forward: Callable[[np.ndarray], np.ndarray],
    shards: list[bytes],
    decode_shard: Callable[[bytes], np.ndarray],
    batch_size: int,
    seconds: float,
) -> tuple[float, float]:
    """The pipeline ceiling: rows per second of decoding shards from memory (``decode_shard``, the worker's
    decoder) and running ``forward`` over their batches, one after the other on the same cores, no I/O;
    through the shards in turn until ``seconds`` have passed (at least one shard). Also the CPU seconds per
    row it took (this process's, every thread's)."""
    rows, shard = 0, 0
    started, cpu_started = time.perf_counter(), time.process_time()
    while True:
        features = decode_shard(shards[shard % len(shards)])
        for start in range(0, len(features), batch_size):
            forward(features[start : start + batch_size])
        rows += len(features)
        shard += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return rows / elapsed, (time.process_time() - cpu_started) / rows
