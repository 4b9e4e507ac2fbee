"""The model: loaded once per process from S3, run in fixed-size batches through a runtime (``runtimes``).

What a loaded model is (``LoadedModel``) and how a ``.keras`` file is read live in ``loaded_model``, which the
runtimes use too: imports point one way, ``model`` -> ``runtimes`` -> ``loaded_model``.
TensorFlow is imported on first use only, so importing the package stays cheap.
"""

from __future__ import annotations

import contextlib
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spotfill_worker.clients import S3Uri
from spotfill_worker.formats import ModelInput
from spotfill_worker.loaded_model import LoadedModel, ModelLoadError, load_keras_model
from spotfill_worker.reasons import one_line
from spotfill_worker.runtimes import Runtime, padded_size, tensorflow_runtime

DEFAULT_BATCH_SIZE = {"CPU": 64, "GPU": 256}


class ShardAborted(Exception):
    """Prediction stopped between batches because the shard cannot finish before the stop deadline."""


def configure_devices() -> str:
    """GPU memory growth on (several tasks may share a GPU instance); returns ``"GPU"`` or ``"CPU"``.

    Reduced precision is set per loaded model (``runtimes.tensorflow_runtime``), never as the global policy.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised in this process
            tf.config.experimental.set_memory_growth(gpu, True)
    return "GPU" if gpus else "CPU"


def download_model(s3: Any, uri: str, directory: Path) -> Path:
    location = S3Uri.parse(uri)
    path = directory / Path(location.key).name
    try:
        s3.download_file(location.bucket, location.key, str(path))
    except Exception as exc:
        raise ModelLoadError(f"cannot download model {uri}: {exc}") from exc
    return path


def load_model(path: Path, mixed_precision: bool = False) -> LoadedModel:
    if path.name.endswith(".keras"):
        return _load_keras(path, mixed_precision)
    if path.name.endswith((".tar.gz", ".tgz")):
        return _load_savedmodel_archive(path)
    raise ModelLoadError(f"unsupported model file {path.name}: expected .keras or .tar.gz (SavedModel)")


def _load_keras(path: Path, mixed_precision: bool) -> LoadedModel:
    import keras

    model = load_keras_model(path, "mixed_float16" if mixed_precision else None)
    inputs = getattr(model, "inputs", None) or []
    outputs = getattr(model, "outputs", None) or [None]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelLoadError(
            f"Keras model {path.name} has {len(inputs)} input(s) and {len(outputs)} output(s), "
            "but the worker serves models with exactly one input and one output"
        )
    shape = tuple(inputs[0].shape)[1:]
    dtype = np.dtype(str(inputs[0].dtype))
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    classifier = isinstance(last, keras.layers.Softmax) or activation is keras.activations.softmax
    return LoadedModel(
        forward=lambda x: model(x, training=False),
        model_input=ModelInput(shape, dtype),
        classifier=classifier,
        kind="keras",
        keras_model=model,
        source=path,
    )


def _load_savedmodel_archive(path: Path) -> LoadedModel:
    import tensorflow as tf

    directory = Path(tempfile.mkdtemp(prefix="spotfill-savedmodel-"))
    try:
        with tarfile.open(path, "r:*") as archive:
            _extract_safely(archive, directory)
    except tarfile.ReadError:
        # tarfile's own message lists every compression it tried, a line each.
        raise ModelLoadError(
            f"cannot unpack SavedModel archive {path.name}: not a tar file, gzip-compressed or not"
        ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"cannot unpack SavedModel archive {path.name}: {' '.join(str(exc).split())}"
        ) from exc
    found = sorted(directory.rglob("saved_model.pb"), key=lambda p: len(p.parts))
    if not found:
        raise ModelLoadError(f"{path.name} holds no saved_model.pb")
    loaded = tf.saved_model.load(str(found[0].parent))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ModelLoadError("the SavedModel has no serving_default signature")
    _, input_specs = signature.structured_input_signature
    output_names = list(signature.structured_outputs)
    if len(input_specs) != 1 or len(output_names) != 1:
        raise ModelLoadError("the worker serves SavedModels with exactly one input and one output")
    (input_name, spec), output_name = next(iter(input_specs.items())), output_names[0]

    def forward(x: Any) -> Any:
        return signature(**{input_name: x})[output_name]

    forward.keep_alive = loaded  # type: ignore[attr-defined]  # the signature needs its trackable objects
    return LoadedModel(
        forward=forward,
        model_input=ModelInput(tuple(spec.shape)[1:], np.dtype(spec.dtype.as_numpy_dtype)),
        classifier=False,
        kind="savedmodel",
        source=found[0].parent,
    )


def _extract_safely(archive: tarfile.TarFile, directory: Path) -> None:
    """Members may not escape ``directory`` (the ``data`` filter where this Python has it)."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(directory, filter="data")
        return
    root = directory.resolve()
    for member in archive.getmembers():
        target = (directory / member.name).resolve()
        if root not in (target, *target.parents) or member.issym() or member.islnk() or member.isdev():
            raise ModelLoadError(f"unsafe member in model archive: {member.name}")
    archive.extractall(directory)


class Predictor:
    """Fixed-size batches through a runtime (default: TensorFlow's ``tf.function``, XLA optional).

    Full batches share one shape; the last, partial batch is padded to the next power of two, so a process
    traces at most log2(batch size) + 1 shapes however its shards are sized. A runtime that can ``dispatch``
    (TensorFlow) keeps one batch in flight, so a GPU queues batch i+1 before batch i is copied back.
    """

    def __init__(
        self, model: LoadedModel, batch_size: int, xla: bool = False, runtime: Runtime | None = None
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.runtime = runtime if runtime is not None else tensorflow_runtime(model, xla=xla)
        self.calibration: Any = None  # the runtimes.Calibration that chose the runtime, where one did

    def predict(
        self, features: np.ndarray, should_abort: Callable[[int, int, float], bool] | None = None
    ) -> np.ndarray:
        """Predict all rows in order; ``should_abort(done, total, seconds)`` runs between batches."""
        total = len(features)
        if total == 0:
            empty = np.zeros((1, *features.shape[1:]), dtype=features.dtype)
            return self.runtime(empty)[:0]
        dispatch = getattr(self.runtime, "dispatch", None)
        started = time.perf_counter()
        outputs: list[np.ndarray] = []
        pending = None  # (result not yet read back, rows): the batch in flight
        done = 0
        for start in range(0, total, self.batch_size):
            batch = features[start : start + self.batch_size]
            rows = len(batch)
            size = padded_size(rows, self.batch_size)
            if size != rows:
                batch = np.concatenate([batch, np.zeros((size - rows, *batch.shape[1:]), dtype=batch.dtype)])
            result = dispatch(batch) if dispatch is not None else self.runtime(batch)
            if pending is not None:
                outputs.append(_read_back(pending[0])[: pending[1]])
                done += pending[1]
            pending = (result, rows)
            if should_abort is not None and done and should_abort(done, total, time.perf_counter() - started):
                raise ShardAborted(f"stopped after {done} of {total} rows")
        outputs.append(_read_back(pending[0])[: pending[1]])  # type: ignore[index]
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]


def _read_back(result: Any) -> np.ndarray:
    return result if isinstance(result, np.ndarray) else result.numpy()


class SampleMismatchError(ValueError):
    """A sample shard cannot be decoded, or its rows do not fit the model (one sentence naming both)."""


def check_model_and_sample(
    model_path: Path | str,
    sample_shard_path: Path | str,
    input_format: str,
    id_column: str | None = None,
    image_scale: str = "unit",
    rows: int = 8,
    tfrecord: Any = None,
) -> ModelInput:
    """Load the model and push the first ``rows`` rows of a sample shard through it, as the worker would.

    Meant for a pre-check before a run starts (``spotfill run --local``): raises ``ModelLoadError`` when the
    model cannot load or has a form the worker cannot serve, and ``SampleMismatchError`` when the sample
    cannot be decoded as ``input_format`` or its rows do not fit the model; each message is one sentence.
    ``tfrecord`` (a ``TFRecordOptions`` or a mapping of its fields, as ``input.tfrecord`` of the spec) is
    required for the tfrecord format. Returns what the model accepts.
    """
    from spotfill_worker.config import ImageScale, InputFormat, TFRecordOptions
    from spotfill_worker.formats import ShapeMismatchError, ShardFormatError, decode

    model_path, sample_shard_path = Path(model_path), Path(sample_shard_path)
    if tfrecord is not None and not isinstance(tfrecord, TFRecordOptions):
        tfrecord = TFRecordOptions.model_validate({k: v for k, v in dict(tfrecord).items() if v is not None})
    model = load_model(model_path)
    try:
        data = sample_shard_path.read_bytes()
        decoded = decode(
            data,
            InputFormat(input_format),
            model.model_input,
            id_column,
            ImageScale(image_scale),
            tfrecord=tfrecord,
        )
        batch = decoded.features[:rows]
        if len(batch):
            Predictor(model, batch_size=max(1, len(batch))).predict(batch)
    except (OSError, ValueError, ShardFormatError, ShapeMismatchError) as exc:
        raise SampleMismatchError(
            f"sample shard {sample_shard_path.name} does not fit model {model_path.name} "
            f"(input shape {model.model_input.shape}, dtype {model.model_input.dtype}): {exc}"
        ) from exc
    except Exception as exc:  # the forward pass itself refused the rows
        raise SampleMismatchError(
            f"model {model_path.name} cannot predict the rows of sample shard {sample_shard_path.name}: "
            f"{one_line(exc)}"
        ) from exc
    return model.model_input
