"""Runtimes: the worker serves through TensorFlow, OpenVINO or ONNX Runtime, chosen on the first shard's rows,
and its outputs stay those of model.predict; a runtime that cannot reproduce TensorFlow FP32 is refused, with
why."""

from __future__ import annotations

import io
import sys
import tarfile

import numpy as np
import pytest

from .conftest import DATA

pytestmark = pytest.mark.worker

ATOL = 1e-5
CONVERTED = ("openvino", "onnxruntime")  # runtimes converted from the model, calibrated against TensorFlow
ROWS = 37  # not a multiple of the batch size (16): the padded last batch is calibrated and served too


@pytest.fixture(autouse=True)
def fresh_process_caches(monkeypatch):
    """Each test chooses its runtime afresh: the worker caches models and predictors per process."""
    from spotfill_worker import worker

    monkeypatch.setattr(worker, "_MODELS", {})
    monkeypatch.setattr(worker, "_PREDICTORS", {})


def digits(rows: int = ROWS) -> np.ndarray:
    return np.random.default_rng(7).random((rows, 8, 8, 1), dtype=np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def serve(cloud, run_worker, model_key: str, model_bytes: bytes, x: np.ndarray, **settings):
    """One shard of ``x`` through the worker; (run, outputs, the output's metadata)."""
    model_uri = cloud.put(model_key, model_bytes)
    cloud.put("inputs/part-0.npy", npy_bytes(x))
    message = cloud.send_shard("inputs/part-0.npy", "npy")
    run = run_worker(model_uri, "npy", output_format="npy", **settings)
    assert run.exit_code == 0
    assert run.events("shard_done"), run.lines
    outputs = np.load(io.BytesIO(cloud.get(message["output"])))
    key = message["output"][len(f"s3://{DATA}/") :]
    return run, outputs, cloud.s3.head_object(Bucket=DATA, Key=key)["Metadata"]


def chosen(run) -> dict:
    (event,) = run.events("runtime_chosen")
    return event


def cpu_has_bf16() -> tuple[bool, str]:
    import openvino as ov

    capabilities = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return "BF16" in capabilities, f"this CPU has no bf16 (OpenVINO capabilities: {capabilities})"


@pytest.fixture(scope="module")
def unreproducible_keras(tmp_path_factory):
    """Conv2D + BatchNormalization with weights of 1e3: OpenVINO folds the normalisation into the kernel,
    and at outputs near 1e8 that summation order shows far beyond 1e-5."""
    import keras

    keras.utils.set_random_seed(5)
    big = keras.initializers.RandomNormal(stddev=1e3)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, kernel_initializer=big),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(4, kernel_initializer=big),
        ]
    )
    model.layers[1].set_weights([np.full(8, value, np.float32) for value in (1.7, 0.3, 0.11, 3.3)])
    path = tmp_path_factory.mktemp("unreproducible") / "huge.keras"
    model.save(path)
    return path, model


@pytest.fixture(scope="module")
def unconvertible_savedmodel(tmp_path_factory):
    """A SavedModel whose graph holds string ops (AsString, StringToNumber) OpenVINO has no conversion for."""
    import tensorflow as tf

    class Rounding(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return {"out": tf.strings.to_number(tf.strings.as_string(x * 2.0, precision=3)) + 1.0}

    module = Rounding()
    directory = tmp_path_factory.mktemp("unconvertible")
    tf.saved_model.save(module, str(directory / "rounding"), signatures={"serving_default": module.serve})
    archive = directory / "rounding.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory / "rounding", arcname="rounding")
    return archive, lambda x: module.serve(tf.constant(x))["out"].numpy()


# ------------------------------------------------------------------------------------------ the worker


@pytest.mark.parametrize("runtime", ["auto", "tensorflow", "openvino", "onnxruntime"])
def test_each_runtime_predicts_like_model_predict_and_names_itself_in_the_output(
    runtime, cloud, run_worker, digits_cnn, capfd
):
    # given a digits shard and the runtime asked for
    x = digits()

    # when the worker serves it
    run, outputs, metadata = serve(
        cloud, run_worker, "models/digits.keras", digits_cnn.path.read_bytes(), x, model_runtime=runtime
    )

    # then nothing but its records (here in run.lines) reached stdout: the converters print nothing there
    assert capfd.readouterr().out == ""

    # then its outputs are model.predict's
    np.testing.assert_allclose(outputs, digits_cnn.predict(x), atol=ATOL, rtol=0)
    # and the output and the log name one runtime, calibrated on the shard's rows (2 x batch size at most)
    event = chosen(run)
    assert metadata["spotfill-runtime"] == event["runtime"]
    assert metadata["spotfill-precision"] == event["precision"] == "fp32"
    assert event["requested"] == runtime and event["rows"] == 32
    assert event["fallback_reason"] is None and metadata["spotfill-runtime-fallback"] == ""
    if runtime != "auto":
        assert event["runtime"] == runtime
    # auto runs whichever it measured faster
    measured = event["measured_rows_per_second"]
    if runtime == "auto":
        assert set(measured) == {"tensorflow fp32", "openvino fp32", "onnxruntime fp32"}
        assert measured[f"{event['runtime']} fp32"] == max(measured.values())
        assert event["rows_per_second"] == max(measured.values())
    assert float(metadata["spotfill-runtime-rows-per-second"]) == pytest.approx(event["rows_per_second"])
    if event["runtime"] in CONVERTED:
        assert float(metadata["spotfill-runtime-max-abs-diff"]) <= ATOL
        assert metadata["spotfill-runtime-top-class-changed"] == "0.0"
    else:
        assert metadata["spotfill-runtime-max-abs-diff"] == ""


@pytest.mark.parametrize("runtime", CONVERTED)
def test_a_converted_runtime_serves_a_savedmodel_archive(runtime, cloud, run_worker, regressor_savedmodel):
    # given a SavedModel archive (a regressor) and runtime openvino or onnxruntime
    archive, model = regressor_savedmodel
    x = np.random.default_rng(3).normal(size=(ROWS, 4)).astype(np.float32)

    # when the worker serves a shard
    run, outputs, metadata = serve(
        cloud, run_worker, "models/regressor.tar.gz", archive.read_bytes(), x, model_runtime=runtime
    )

    # then that runtime served it, converted from the extracted SavedModel, with model.predict's outputs
    assert chosen(run)["runtime"] == metadata["spotfill-runtime"] == runtime
    assert float(metadata["spotfill-runtime-max-abs-diff"]) <= ATOL
    np.testing.assert_allclose(outputs, model.predict(x, verbose=0), atol=ATOL, rtol=0)


def test_a_model_no_converted_runtime_reproduces_falls_back_to_tensorflow(
    cloud, run_worker, unreproducible_keras
):
    # given a model OpenVINO and ONNX Runtime convert, but whose outputs they compute in another order
    # (checked: > 1e-5 apart)
    path, model = unreproducible_keras
    x = digits()

    # when the worker serves it with runtime auto
    run, outputs, metadata = serve(cloud, run_worker, "models/huge.keras", path.read_bytes(), x)

    # then TensorFlow serves, both refusals are logged once with their differences, and outputs are
    # model.predict's
    event = chosen(run)
    assert event["level"] == "WARNING"
    assert event["runtime"] == metadata["spotfill-runtime"] == "tensorflow"
    reasons = event["fallback_reason"].split("; ")
    assert [reason.split(" ")[0] for reason in reasons] == list(CONVERTED)
    for reason in reasons:
        assert " outputs differ from TensorFlow's by up to" in reason
        assert float(reason.split("by up to ")[1].split(" ")[0]) > ATOL
    assert metadata["spotfill-runtime-fallback"] == event["fallback_reason"]
    np.testing.assert_allclose(outputs, model.predict(x, verbose=0), atol=ATOL, rtol=0)


def test_a_savedmodel_openvino_cannot_convert_falls_back_to_tensorflow(
    cloud, run_worker, unconvertible_savedmodel
):
    # given a SavedModel with ops OpenVINO cannot convert, and runtime openvino asked for
    archive, reference = unconvertible_savedmodel
    x = np.random.default_rng(4).normal(size=(ROWS, 4)).astype(np.float32)

    # when the worker serves a shard
    run, outputs, metadata = serve(
        cloud, run_worker, "models/rounding.tar.gz", archive.read_bytes(), x, model_runtime="openvino"
    )

    # then TensorFlow serves it, the converter's reason (short, naming the ops) logged and recorded
    event = chosen(run)
    assert event["level"] == "WARNING" and event["runtime"] == "tensorflow"
    reason = event["fallback_reason"]
    assert reason.startswith("openvino cannot convert the model:") and "AsString" in reason
    assert len(reason) <= 200 and metadata["spotfill-runtime-fallback"] == reason
    np.testing.assert_allclose(outputs, reference(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("missing", "runtime", "reason"),
    [
        (("openvino", "onnxruntime"), "auto", "openvino is not installed; onnxruntime is not installed"),
        (("onnxruntime",), "onnxruntime", "onnxruntime is not installed"),
        (("tf2onnx",), "onnxruntime", "tf2onnx is not installed"),
    ],
)
def test_without_a_runtime_the_worker_serves_through_tensorflow_and_says_so_once(
    missing, runtime, reason, monkeypatch, cloud, run_worker, digits_cnn
):
    # given a process where the runtime (or its converter) cannot be imported
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)
    x = digits()

    # when the worker serves two shards with the runtime asked for
    cloud.put("inputs/part-1.npy", npy_bytes(x[:5]))
    cloud.send_shard("inputs/part-1.npy", "npy")
    run, outputs, metadata = serve(
        cloud, run_worker, "models/digits.keras", digits_cnn.path.read_bytes(), x, model_runtime=runtime
    )

    # then TensorFlow serves both, and the reason is logged once
    assert len(run.events("shard_done")) == 2
    event = chosen(run)
    assert event["level"] == "WARNING"
    assert event["runtime"] == metadata["spotfill-runtime"] == "tensorflow"
    assert event["fallback_reason"] == metadata["spotfill-runtime-fallback"] == reason
    np.testing.assert_allclose(outputs, digits_cnn.predict(x), atol=ATOL, rtol=0)


def test_bf16_records_its_agreement_with_fp32(cloud, run_worker, digits_cnn):
    # given a CPU with bf16 instructions
    has_bf16, reason = cpu_has_bf16()
    if not has_bf16:
        pytest.skip(reason)
    x = digits()

    # when the worker serves a shard in bf16
    run, outputs, metadata = serve(
        cloud, run_worker, "models/digits.keras", digits_cnn.path.read_bytes(), x, model_precision="bf16"
    )

    # then the output records bf16 and its measured agreement with TensorFlow FP32 (not held to 1e-5)
    event = chosen(run)
    assert metadata["spotfill-precision"] == event["precision"] == "bf16"
    assert event["fallback_reason"] == "onnxruntime does not offer bf16 on CPU"
    difference = float(metadata["spotfill-runtime-max-abs-diff"])
    assert difference == event["max_abs_diff"] and 0 < difference < 0.1
    assert 0.0 <= float(metadata["spotfill-runtime-top-class-changed"]) <= 1.0
    np.testing.assert_allclose(outputs, digits_cnn.predict(x), atol=0.1)


FP16_REFUSED = "openvino does not offer fp16 on CPU; onnxruntime does not offer fp16 on CPU"


def test_mixed_precision_is_fp16_through_tensorflow(cloud, run_worker, digits_cnn):
    # given the older switch SPOTFILL_MIXED_PRECISION on (a CPU here: OpenVINO and ONNX Runtime offer no fp16)
    x = digits()

    # when the worker serves a shard
    run, outputs, metadata = serve(
        cloud, run_worker, "models/digits.keras", digits_cnn.path.read_bytes(), x, mixed_precision=True
    )

    # then TensorFlow's mixed_float16 serves it, its agreement with FP32 recorded, outputs float32
    event = chosen(run)
    assert (event["runtime"], event["precision"]) == ("tensorflow", "fp16")
    assert metadata["spotfill-precision"] == "fp16"
    assert metadata["spotfill-runtime-fallback"] == FP16_REFUSED
    assert 0 < float(metadata["spotfill-runtime-max-abs-diff"]) < 0.1
    assert outputs.dtype == np.float32
    np.testing.assert_allclose(outputs, digits_cnn.predict(x), atol=0.1)


def test_runtime_and_precision_are_read_from_the_environment():
    from spotfill_worker.config import ConfigError, WorkerConfig

    base = {
        "SPOTFILL_RUN_ID": "r",
        "SPOTFILL_QUEUE_URL": "q",
        "SPOTFILL_MODEL_URI": "s3://b/m.keras",
        "SPOTFILL_INPUT_FORMAT": "npy",
    }
    config = WorkerConfig.from_env(base)
    assert (config.model_runtime, config.precision) == ("auto", "fp32")
    config = WorkerConfig.from_env(
        {**base, "SPOTFILL_MODEL_RUNTIME": "openvino", "SPOTFILL_MODEL_PRECISION": "bf16"}
    )
    assert (config.model_runtime, config.precision) == ("openvino", "bf16")
    onnx = WorkerConfig.from_env({**base, "SPOTFILL_MODEL_RUNTIME": "onnxruntime"})
    assert onnx.model_runtime == "onnxruntime"
    assert WorkerConfig.from_env({**base, "SPOTFILL_MIXED_PRECISION": "true"}).precision == "fp16"
    with pytest.raises(ConfigError, match="SPOTFILL_MODEL_RUNTIME"):
        WorkerConfig.from_env({**base, "SPOTFILL_MODEL_RUNTIME": "onnx"})
    both = {**base, "SPOTFILL_MIXED_PRECISION": "true", "SPOTFILL_MODEL_PRECISION": "bf16"}
    with pytest.raises(ConfigError, match="MIXED_PRECISION=true means SPOTFILL_MODEL_PRECISION=fp16"):
        WorkerConfig.from_env(both)


# ------------------------------------------------------------------------------------------ choose_runtime


@pytest.fixture(scope="module")
def loaded_digits(digits_cnn):
    from spotfill_worker.model import load_model

    return load_model(digits_cnn.path)


def choose(model, requested="auto", precision="fp32", rows=None, **options):
    from spotfill_worker.runtimes import choose_runtime

    return choose_runtime(
        model, requested, precision, digits(32) if rows is None else rows, batch_size=16, **options
    )


def test_auto_runs_the_faster_of_the_runtimes_that_reproduce_tensorflow(loaded_digits):
    runtime, calibration = choose(loaded_digits)
    rates = dict(calibration.measured)
    assert set(rates) == {"tensorflow fp32", "openvino fp32", "onnxruntime fp32"}
    assert runtime.name == calibration.runtime and calibration.rows_per_second == max(rates.values())
    assert calibration.tensorflow_rows_per_second == rates["tensorflow fp32"]
    if runtime.name in CONVERTED:
        assert calibration.max_abs_diff <= ATOL and calibration.top_class_changed_share == 0.0


@pytest.mark.parametrize("requested", CONVERTED)
def test_a_converted_runtime_asked_for_serves_when_it_reproduces_tensorflow(requested, loaded_digits):
    runtime, calibration = choose(loaded_digits, requested)
    assert runtime.name == calibration.runtime == requested and calibration.fallback_reason is None
    assert 0 <= calibration.max_abs_diff <= ATOL and calibration.top_class_changed_share == 0.0
    assert dict(calibration.measured).keys() == {"tensorflow fp32", f"{requested} fp32"}
    assert calibration.rows_per_second == dict(calibration.measured)[f"{requested} fp32"]
    assert runtime(digits(5)).shape == (5, 10)  # any batch size


@pytest.mark.parametrize("requested", ["auto", *CONVERTED])
def test_a_candidate_outside_the_tolerance_is_refused(requested, loaded_digits):
    # a negative tolerance no difference meets: each converted runtime is refused however close it is
    runtime, calibration = choose(loaded_digits, requested, tolerance=-1.0)
    assert runtime.name == "tensorflow" and calibration.max_abs_diff is None
    reasons = calibration.fallback_reason.split("; ")
    assert [reason.split(" ")[0] for reason in reasons] == (
        list(CONVERTED) if requested == "auto" else [requested]
    )
    assert all("differ from TensorFlow's" in r and r.endswith("(tolerance -1 absolute)") for r in reasons)
    assert dict(calibration.measured).keys() == {"tensorflow fp32"}


def test_tensorflow_asked_for_calibrates_nothing_else(loaded_digits):
    runtime, calibration = choose(loaded_digits, "tensorflow")
    assert runtime.name == "tensorflow" and calibration.fallback_reason is None
    assert dict(calibration.measured).keys() == {"tensorflow fp32"}
    assert calibration.rows_per_second == calibration.tensorflow_rows_per_second > 0


def test_on_a_gpu_tensorflow_serves_and_converted_runtimes_are_refused(loaded_digits):
    runtime, calibration = choose(loaded_digits, device="GPU")
    assert runtime.name == "tensorflow" and calibration.fallback_reason is None
    assert dict(calibration.measured).keys() == {"tensorflow fp32"}
    for requested in CONVERTED:
        runtime, calibration = choose(loaded_digits, requested, device="GPU")
        assert runtime.name == "tensorflow"
        assert calibration.fallback_reason == f"{requested} serves on CPU only; this worker has a GPU"


def test_fp16_on_cpu_is_tensorflow_mixed_float16_with_its_agreement(loaded_digits):
    runtime, calibration = choose(loaded_digits, precision="fp16")
    assert (runtime.name, runtime.precision) == ("tensorflow", "fp16")
    assert calibration.fallback_reason == FP16_REFUSED
    assert 0 < calibration.max_abs_diff < 0.1 and calibration.top_class_changed_share is not None


def test_a_savedmodel_runs_fp32_when_tensorflow_reduced_precision_is_asked(regressor_savedmodel):
    from spotfill_worker.model import load_model

    model = load_model(regressor_savedmodel[0])
    rows = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    runtime, calibration = choose(model, "tensorflow", "bf16", rows=rows)
    assert (runtime.name, calibration.precision) == ("tensorflow", "fp32")
    assert "needs a .keras model" in calibration.fallback_reason
    assert calibration.max_abs_diff is None


def test_no_calibration_rows_means_tensorflow(loaded_digits):
    runtime, calibration = choose(loaded_digits, rows=digits(0))
    assert runtime.name == "tensorflow" and "no calibration rows" in calibration.fallback_reason


def test_metadata_values_are_short_ascii():
    from spotfill_worker.runtimes import Calibration

    calibration = Calibration(
        runtime="tensorflow",
        requested="openvino",
        precision="fp32",
        rows=32,
        max_abs_diff=None,
        top_class_changed_share=None,
        rows_per_second=1234.56,
        tensorflow_rows_per_second=1234.56,
        fallback_reason="openvino cannot convert the model: \u00e9" + "x" * 400,
    )
    metadata = calibration.as_metadata()
    assert all(value.isascii() for value in metadata.values())
    assert len(metadata["spotfill-runtime-fallback"]) == 200
    assert metadata["spotfill-runtime-rows-per-second"] == "1234.6"
    assert metadata["spotfill-runtime-max-abs-diff"] == metadata["spotfill-runtime-top-class-changed"] == ""


# ------------------------------------------------------------------------------------------ CPUs and threads


def test_usable_cpus_are_the_affinity_capped_by_the_cgroup_quota_rounded_up(tmp_path, monkeypatch):
    from spotfill_worker.runtimes import usable_cpus

    # given a process allowed on 4 CPUs
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})

    # then a quota of 1.5 CPUs allows 2, no quota or no cgroup v2 all 4, and a larger quota no more than 4
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cpus(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == 4
    assert usable_cpus(tmp_path / "absent") == 4
    (tmp_path / "cpu.max").write_text("800000 100000\n")
    assert usable_cpus(tmp_path) == 4


def test_onnxruntime_runs_as_many_threads_as_the_process_may_use(monkeypatch, digits_cnn):
    from spotfill_worker import runtimes
    from spotfill_worker.model import load_model

    # given a process pinned to one CPU of a machine with more
    monkeypatch.setattr(runtimes, "usable_cpus", lambda: 1)
    monkeypatch.setattr("os.cpu_count", lambda: 2)

    # when ONNX Runtime is set up for a model
    runtime = runtimes.onnxruntime_runtime(load_model(digits_cnn.path))

    # then its session runs one intra-op thread, not one per core of the machine
    assert runtime._session.get_session_options().intra_op_num_threads == 1
