"""Runtimes: what runs the forward pass (TensorFlow, or OpenVINO or ONNX Runtime converted from the same
model), and which.

``choose_runtime`` checks each candidate against TensorFlow at FP32 on calibration rows (the first shard's),
keeps it only when it reproduces TensorFlow's outputs (FP32: every output within ``DEFAULT_TOLERANCE``,
absolute) and then runs the fastest of those that pass. Reduced precision is opt in: its agreement with FP32
is measured and recorded, not enforced. A refused candidate leaves TensorFlow running, with the reason.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spotfill_worker.loaded_model import LoadedModel, load_keras_model
from spotfill_worker.third_party import turn_off_dependency_telemetry

RUNTIMES = ("tensorflow", "openvino", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_TOLERANCE = 1e-5  # absolute, FP32 calibration against TensorFlow

# Keras dtype policies of TensorFlow's reduced precisions (variables stay float32, layers compute in these).
KERAS_POLICIES = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
TIMED_REPETITIONS = 2
REASON_CHARS = 200
# A line of a converter's message that names what failed (the first line often only introduces it).
DETAIL = re.compile(r"^\w*(Error|Exception)\b|No conversion rule|not supported|unsupported")


class RuntimeUnavailable(Exception):
    """The runtime cannot serve this model here; ``str()`` is the reason."""


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process can keep busy: those its affinity allows, and no more than its cgroup's CPU quota
    (cgroup v2 ``cpu.max``: a container's CPU limit), rounded up."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
    except (OSError, ValueError):  # no cgroup v2 here, or not that file's shape
        return count
    if quota == "max":
        return count
    return max(1, min(count, math.ceil(int(quota) / int(period))))


class Runtime(Protocol):
    name: str  # "tensorflow" | "openvino" | "onnxruntime"
    precision: str  # "fp32" | "bf16" | "fp16"

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...  # one batch -> float32 outputs


# ------------------------------------------------------------------------------------------------ TensorFlow


class TensorFlowRuntime:
    """The forward pass as one ``tf.function`` (XLA optional), reduced-precision outputs cast to float32.

    ``dispatch`` returns the tensor without waiting for it, so a GPU can queue the next batch meanwhile.
    """

    name = "tensorflow"

    def __init__(self, forward: Any, *, xla: bool, precision: str) -> None:
        import tensorflow as tf

        self.precision = precision
        self.xla = xla

        def compiled(x: Any) -> Any:
            y = forward(x)
            return tf.cast(y, tf.float32) if y.dtype in (tf.float16, tf.bfloat16) else y

        self._compiled = tf.function(compiled, jit_compile=xla, reduce_retracing=False)
        self._tf = tf

    def dispatch(self, batch: np.ndarray) -> Any:
        return self._compiled(self._tf.constant(batch))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.dispatch(batch).numpy()


def tensorflow_runtime(model: LoadedModel, *, xla: bool = False, precision: str = "fp32") -> Runtime:
    """TensorFlow at ``precision``: FP32 as loaded; bf16/fp16 a copy of a ``.keras`` model whose layers
    compute in ``mixed_bfloat16`` / ``mixed_float16`` (a SavedModel's dtypes are fixed: RuntimeUnavailable).
    One per model, precision and XLA setting in a process, so a warm-up's traces serve the calibration too."""
    _check_precision(precision)
    key = f"tensorflow:{precision}:{'xla' if xla else 'graph'}"
    runtime = model.runtime_cache.get(key)
    if runtime is not None:  # the same tf.function: its traces are reused
        return runtime
    if precision == "fp32":
        forward = model.forward
    elif model.kind != "keras" or model.source is None:
        raise RuntimeUnavailable(f"tensorflow {precision} needs a .keras model; a SavedModel runs in fp32")
    else:
        reduced = load_keras_model(model.source, KERAS_POLICIES[precision])
        forward = lambda x: reduced(x, training=False)  # noqa: E731
    runtime = model.runtime_cache[key] = TensorFlowRuntime(forward, xla=xla, precision=precision)
    return runtime


# ------------------------------------------------------------------------------------------------ OpenVINO


class OpenVinoRuntime:
    """A compiled OpenVINO model on the CPU, one synchronous request per batch."""

    name = "openvino"

    def __init__(self, compiled: Any, precision: str) -> None:
        self.precision = precision
        self._request = compiled.create_infer_request()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        result = self._request.infer([np.ascontiguousarray(batch)])
        return np.array(result[0], dtype=np.float32)  # a copy: the request reuses its output buffer


def openvino_runtime(model: LoadedModel, *, precision: str = "fp32") -> Runtime:
    """OpenVINO on the CPU, converted once per process (``model.runtime_cache``), its batch size dynamic.

    Raises RuntimeUnavailable when openvino is not installed, cannot convert or compile the model, or the CPU
    does not offer ``precision`` (fp16 is not offered on CPUs; bf16 needs BF16 in the CPU's capabilities).
    """
    _check_precision(precision)
    turn_off_dependency_telemetry()  # before the converter loads: it reports to Google Analytics otherwise
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeUnavailable("openvino is not installed") from None
    core = ov.Core()
    if precision not in OPENVINO_PRECISIONS:
        raise RuntimeUnavailable(f"openvino does not offer {precision} on CPU")
    if precision == "bf16":
        capabilities = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        if "BF16" not in capabilities:
            raise RuntimeUnavailable(
                f"this CPU has no bf16 (openvino CPU capabilities: {', '.join(capabilities)})"
            )
    compiled_key = f"openvino:{precision}"
    compiled = model.runtime_cache.get(compiled_key)
    if compiled is None:
        converted = _converted(model, ov)
        # LATENCY: one stream over all cores, one request per batch. On 2 cores THROUGHPUT (2 streams, a
        # batch split over an AsyncInferQueue) measured the same at the worker's batch sizes (digits CNN
        # 1024 and 64, MobileNetV2 32 and 64), so the simpler one serves.
        try:
            compiled = core.compile_model(
                converted,
                "CPU",
                {
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
                },
            )
        except Exception as exc:
            raise RuntimeUnavailable(f"openvino cannot compile the model: {_short(exc)}") from exc
        model.runtime_cache[compiled_key] = compiled
    return OpenVinoRuntime(compiled, precision)


def _converted(model: LoadedModel, ov: Any) -> Any:
    """The model in OpenVINO's form, batch dimension dynamic; a failed conversion is cached as its reason."""
    converted = model.runtime_cache.get("openvino")
    if isinstance(converted, RuntimeUnavailable):
        raise converted
    if converted is not None:
        return converted
    row_shape = [-1 if d is None else int(d) for d in model.model_input.row_shape]
    try:
        if model.kind == "keras":
            example = np.zeros((1, *[max(d, 1) for d in row_shape]), dtype=model.model_input.dtype)
            converted = ov.convert_model(model.keras_model, example_input=example)
        else:
            converted = ov.convert_model(str(model.source))
        if len(converted.inputs) != 1 or len(converted.outputs) != 1:
            raise ValueError(
                f"converted model has {len(converted.inputs)} inputs and {len(converted.outputs)} outputs"
            )
        converted.reshape({0: ov.PartialShape([-1, *row_shape])})
    except Exception as exc:
        refused = RuntimeUnavailable(f"openvino cannot convert the model: {_short(exc)}")
        model.runtime_cache["openvino"] = refused
        raise refused from exc
    model.runtime_cache["openvino"] = converted
    return converted


# -------------------------------------------------------------------------------------------- ONNX Runtime


class OnnxRuntime:
    """An ONNX Runtime session on the CPU, one ``run`` per batch."""

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, session: Any) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (outputs,) = self._session.run(None, {self._input: np.ascontiguousarray(batch)})
        return np.asarray(outputs, dtype=np.float32)


def onnxruntime_runtime(model: LoadedModel, *, precision: str = "fp32") -> Runtime:
    """ONNX Runtime on the CPU, the model converted by tf2onnx and loaded once per process
    (``model.runtime_cache``), its batch size dynamic.

    Raises RuntimeUnavailable when onnxruntime, tf2onnx or onnx is not installed, the model cannot be
    converted or loaded, or ``precision`` is not fp32 (ONNX Runtime's CPU provider computes in FP32).
    """
    _check_precision(precision)
    if precision != "fp32":
        raise RuntimeUnavailable(f"onnxruntime does not offer {precision} on CPU")
    turn_off_dependency_telemetry()  # before onnxruntime loads: its uploader starts at import otherwise
    try:
        import onnx  # noqa: F401  # tf2onnx builds its graph with it
        import onnxruntime
        import tf2onnx
    except ImportError as exc:
        raise RuntimeUnavailable(f"{exc.name or 'onnxruntime'} is not installed") from None
    session = model.runtime_cache.get("onnxruntime")
    if isinstance(session, RuntimeUnavailable):
        raise session
    if session is None:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: the worker's stdout carries its JSON records alone
        # Threads: ONNX Runtime's default (one intra-op thread per physical core) measured as fast as any
        # explicit setting on 2 cores (digits CNN batch 1024, MobileNetV2 batch 32), so it serves, but it
        # counts the machine's cores, not those this process may use: pinned to one of 2 cores, its two
        # spinning threads ran the digits CNN at half the speed of one thread (124k against 258k rows/s).
        cpus = usable_cpus()
        if cpus < (os.cpu_count() or cpus):
            options.intra_op_num_threads = cpus
        try:
            session = onnxruntime.InferenceSession(
                _onnx_model(model, tf2onnx), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            refused = RuntimeUnavailable(f"onnxruntime cannot convert or load the model: {_short(exc)}")
            model.runtime_cache["onnxruntime"] = refused  # the conversion is not tried again
            raise refused from exc
        model.runtime_cache["onnxruntime"] = session
    return OnnxRuntime(session)


def _onnx_model(model: LoadedModel, tf2onnx: Any) -> bytes:
    """The model as a serialized ONNX graph with a dynamic batch dimension, converted by tf2onnx from the
    forward pass TensorFlow runs (a ``.keras`` model, called before or not, or a SavedModel's serving
    signature)."""
    import tensorflow as tf

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)  # it logs every conversion step at INFO
    spec = tf.TensorSpec(
        [None, *model.model_input.row_shape], tf.as_dtype(model.model_input.dtype), name="input"
    )
    forward = tf.function(lambda x: model.forward(x), input_signature=[spec])
    proto, _ = tf2onnx.convert.from_function(forward, input_signature=[spec])
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise ValueError(
            f"converted model has {len(proto.graph.input)} inputs and {len(proto.graph.output)} outputs"
        )
    return proto.SerializeToString()


# ------------------------------------------------------------------------------------------------ the choice


CANDIDATES = {"openvino": openvino_runtime, "onnxruntime": onnxruntime_runtime}  # served on CPU only


@dataclass(frozen=True)
class Calibration:
    runtime: str  # the runtime chosen
    requested: str  # "auto" | "tensorflow" | "openvino" | "onnxruntime"
    precision: str
    rows: int  # calibration rows used
    max_abs_diff: float | None  # chosen runtime vs TensorFlow FP32 (None: TensorFlow itself at FP32)
    # Share of rows whose argmax differs from TensorFlow FP32 (None: not computed).
    top_class_changed_share: float | None
    rows_per_second: float  # the chosen runtime's throughput on the calibration rows
    tensorflow_rows_per_second: float | None
    fallback_reason: str | None  # why a candidate was refused (None when nothing was refused)
    # Every runtime timed, as (name, rows/s): the log shows what the chosen one was faster than.
    measured: tuple[tuple[str, float], ...] = ()

    def as_metadata(self) -> dict[str, str]:
        """The output object's user metadata (docs/contracts/output-objects.md): short ASCII values."""
        return {
            "spotfill-runtime": self.runtime,
            "spotfill-precision": self.precision,
            "spotfill-runtime-max-abs-diff": "" if self.max_abs_diff is None else repr(self.max_abs_diff),
            "spotfill-runtime-rows-per-second": f"{self.rows_per_second:.1f}",
            "spotfill-runtime-top-class-changed": (
                "" if self.top_class_changed_share is None else repr(self.top_class_changed_share)
            ),
            "spotfill-runtime-fallback": _ascii(self.fallback_reason or ""),
        }

    def as_log(self) -> dict[str, Any]:
        """The fields of the worker's ``runtime_chosen`` log event."""
        return {
            "runtime": self.runtime,
            "requested": self.requested,
            "precision": self.precision,
            "rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "top_class_changed_share": self.top_class_changed_share,
            "rows_per_second": round(self.rows_per_second, 1),
            "tensorflow_rows_per_second": (
                None if self.tensorflow_rows_per_second is None else round(self.tensorflow_rows_per_second, 1)
            ),
            "fallback_reason": self.fallback_reason,
            "measured_rows_per_second": {name: round(rate, 1) for name, rate in self.measured},
        }


def choose_runtime(
    model: LoadedModel,
    requested: str,
    precision: str,
    calibration_rows: np.ndarray,
    *,
    batch_size: int,
    xla: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    device: str = "CPU",
) -> tuple[Runtime, Calibration]:
    """The runtime to serve ``model`` with, and what calibrating it on ``calibration_rows`` measured.

    ``auto`` runs the fastest of TensorFlow, OpenVINO and ONNX Runtime among those that reproduce TensorFlow
    FP32 within ``tolerance`` (at FP32; at reduced precision their agreement is recorded); ``openvino`` or
    ``onnxruntime`` runs that runtime when it does, else TensorFlow; ``tensorflow`` runs TensorFlow only. On
    a GPU (``device``) TensorFlow serves (XLA and mixed precision as configured): an OpenVINO or ONNX Runtime
    request is refused there. Every refusal is in ``fallback_reason``, "; "-joined.
    """
    if requested not in ("auto", *RUNTIMES):
        raise ValueError(f"runtime must be auto or one of {RUNTIMES}, got {requested!r}")
    _check_precision(precision)
    rows = np.asarray(calibration_rows)
    reasons: list[str] = []

    reference = tensorflow_runtime(model, xla=xla)
    expected = _predict_all(reference, rows, batch_size)
    tensorflow = reference
    if precision != "fp32":
        try:
            tensorflow = tensorflow_runtime(model, xla=xla, precision=precision)
        except RuntimeUnavailable as exc:
            reasons.append(str(exc))

    names = list(CANDIDATES) if requested == "auto" else [requested] if requested in CANDIDATES else []
    candidates: list[tuple[Runtime, tuple[float, float | None]]] = []
    if not len(rows) and requested != "tensorflow":
        reasons.append("no calibration rows (the first shard is empty): TensorFlow serves")
    elif requested in CANDIDATES and device != "CPU":
        reasons.append(f"{requested} serves on CPU only; this worker has a {device}")
    elif device == "CPU":
        for name in names:
            tried = _try_candidate(name, model, precision, rows, batch_size, expected, tolerance, reasons)
            if tried is not None:
                candidates.append(tried)

    reduced_agreement = None  # TensorFlow at reduced precision against FP32; the pass is its warm-up too
    if tensorflow is not reference:
        reduced_agreement = _agreement(_predict_all(tensorflow, rows, batch_size), expected)
    timed = [tensorflow] + [runtime for runtime, _ in candidates]
    measured = list(zip(timed, _rows_per_second(timed, rows, batch_size), strict=True))
    tensorflow_rate = measured[0][1]
    if requested in CANDIDATES and candidates:
        chosen, rate = measured[1]
    else:
        chosen, rate = max(measured, key=lambda pair: pair[1])

    agreements = {id(runtime): agreement for runtime, agreement in candidates}
    if chosen is reference:
        max_abs_diff, changed = None, None
    elif chosen is tensorflow:
        assert reduced_agreement is not None
        max_abs_diff, changed = reduced_agreement
    else:
        max_abs_diff, changed = agreements[id(chosen)]
    calibration = Calibration(
        runtime=chosen.name,
        requested=requested,
        precision=chosen.precision,
        rows=len(rows),
        max_abs_diff=max_abs_diff,
        top_class_changed_share=changed,
        rows_per_second=rate,
        tensorflow_rows_per_second=tensorflow_rate,
        fallback_reason="; ".join(reasons) or None,
        measured=tuple((f"{runtime.name} {runtime.precision}", r) for runtime, r in measured),
    )
    return chosen, calibration


def _try_candidate(
    name: str,
    model: LoadedModel,
    precision: str,
    rows: np.ndarray,
    batch_size: int,
    expected: np.ndarray,
    tolerance: float,
    reasons: list[str],
) -> tuple[Runtime, tuple[float, float | None]] | None:
    """Runtime ``name`` at ``precision`` with its agreement, or None with the reason appended."""
    try:
        candidate = CANDIDATES[name](model, precision=precision)
        outputs = _predict_all(candidate, rows, batch_size)
    except RuntimeUnavailable as exc:
        reasons.append(str(exc))
        return None
    except Exception as exc:
        reasons.append(f"{name} failed on the calibration rows: {_short(exc)}")
        return None
    if outputs.shape != expected.shape:
        reasons.append(f"{name} outputs have shape {outputs.shape}, TensorFlow's {expected.shape}")
        return None
    agreement = _agreement(outputs, expected)
    max_abs_diff = agreement[0]
    if precision == "fp32" and not max_abs_diff <= tolerance:
        reasons.append(
            f"{name} outputs differ from TensorFlow's by up to {max_abs_diff:.3g} "
            f"(tolerance {tolerance:g} absolute)"
        )
        return None
    return candidate, agreement


def _agreement(outputs: np.ndarray, expected: np.ndarray) -> tuple[float, float | None]:
    """Max absolute difference, and the share of rows whose top class changed (2-D outputs of 2+ columns)."""
    if not len(expected):
        return 0.0, None
    diff = float(np.max(np.abs(outputs.astype(np.float64) - expected.astype(np.float64))))
    changed = None
    if expected.ndim == 2 and expected.shape[1] > 1:
        changed = float(np.mean(outputs.argmax(axis=1) != expected.argmax(axis=1)))
    return diff, changed


def padded_size(rows: int, batch_size: int) -> int:
    """The batch a runtime sees for ``rows`` rows: the next power of two, at most ``batch_size``, so a traced
    runtime sees at most log2(batch size) + 1 shapes however its shards are sized."""
    return min(batch_size, 1 << max(0, rows - 1).bit_length())


def _predict_all(runtime: Runtime, rows: np.ndarray, batch_size: int) -> np.ndarray:
    outputs = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        size = padded_size(len(batch), batch_size)
        if size != len(batch):
            batch = np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])
        outputs.append(runtime(batch)[: min(batch_size, len(rows) - start)])
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    return np.concatenate(outputs)


def _rows_per_second(runtimes: list[Runtime], rows: np.ndarray, batch_size: int) -> list[float]:
    """Each warm runtime's best of ``TIMED_REPETITIONS`` passes over the rows, the runtimes taking turns so
    that a neighbour's load on the machine falls on all of them alike."""
    best = [float("inf")] * len(runtimes)
    for _ in range(TIMED_REPETITIONS if len(rows) else 0):
        for i, runtime in enumerate(runtimes):
            started = time.perf_counter()
            _predict_all(runtime, rows, batch_size)
            best[i] = min(best[i], time.perf_counter() - started)
    return [len(rows) / max(seconds, 1e-9) if len(rows) else 0.0 for seconds in best]


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _short(exc: BaseException) -> str:
    """An error's first line, with the line naming the underlying failure where the first only introduces it
    (converters wrap tracebacks and assertion sites); ASCII, at most REASON_CHARS characters."""
    lines = [line.strip().removeprefix("-- ") for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    detail = next((line for line in lines[1:] if DETAIL.search(line)), None)
    if detail is None:
        return _ascii(lines[0])
    return _ascii(detail if lines[0].startswith("Check ") else f"{lines[0]} {detail}")


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()[:REASON_CHARS]
