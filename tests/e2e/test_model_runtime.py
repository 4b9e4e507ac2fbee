"""`model.runtime` on the local cloud: whichever runtime computes a run (TensorFlow, OpenVINO, ONNX Runtime),
its outputs equal `model.predict`, and the report names the runtime its outputs record; a model OpenVINO
cannot reproduce within 1e-5 falls back to TensorFlow, the reason in the report and the worker's log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spotfill.demo import check_outputs
from spotfill.localrun import download_outputs, follow_run, manifest, upload_and_trigger

from .helpers import Digits, worker_records, write_digits

pytestmark = pytest.mark.e2e

RUNTIMES = ("tensorflow", "openvino", "onnxruntime")
TOLERANCE = 1e-5  # docs/contracts/spec.md, "Model runtime and precision"


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory) -> Digits:
    """The digits CNN (its outputs vary, so agreement means something) and two shards of 300 rows."""
    return write_digits(tmp_path_factory.mktemp("runtime-digits"), shards=2, rows=300)


@pytest.fixture(scope="module")
def unreproducible(tmp_path_factory, two_shards) -> Digits:
    """A model OpenVINO's FP32 CPU plugin does not reproduce within 1e-5: its GELU differs from TensorFlow's
    by about 1e-7, and a last layer scaled by 1e6 makes that about 0.3 (TensorFlow reproduces itself
    exactly at any batch size, so `model.predict` is still the reference)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="gelu"),
            keras.layers.Dense(10),
        ]
    )
    last = model.layers[-1]
    last.set_weights([w * 1e6 for w in last.get_weights()])
    directory = tmp_path_factory.mktemp("unreproducible")
    path = directory / "scaled.keras"
    model.save(path)
    reference = {
        shard.name: model.predict(np.load(shard), batch_size=8192, verbose=0) for shard in two_shards.shards()
    }
    return Digits(path, two_shards.input_dir, reference)


def _run(cloud, digits: Digits, name: str, runtime: str, console, tmp_path: Path):
    spec = manifest(
        name, cloud.outputs.data_bucket, f"models/{name}/model.keras", "npy", "npy", 1, runtime=runtime
    )
    arn = upload_and_trigger(cloud, spec, digits.model_path, digits.shards(), digits.input_dir)
    result = follow_run(cloud, arn, console, timeout=240)
    assert result.snapshot.status == "SUCCEEDED", result.snapshot.error
    assert result.report["status"] == "succeeded", result.report["reason"]
    result.outputs = download_outputs(cloud, spec, digits.shards(), digits.input_dir, tmp_path / name)
    return spec, result


def _recorded_runtimes(cloud, spec) -> dict[str, int]:
    """How many of the run's outputs record each runtime (`spotfill-runtime` of each output object)."""
    s3 = cloud.client("s3")
    bucket, prefix = spec["output"]["uri"][len("s3://") :].split("/", 1)
    counts: dict[str, int] = {}
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        runtime = s3.head_object(Bucket=bucket, Key=item["Key"])["Metadata"].get("spotfill-runtime", "none")
        counts[runtime] = counts.get(runtime, 0) + 1
    return counts


def _runtime_events(cloud, run_id: str) -> list[dict]:
    logs = (cloud.run_dir / "logs" / f"spotfill-{run_id}").glob("*.log")
    return [r for log in logs for r in worker_records(log) if r.get("event") == "runtime_chosen"]


@pytest.mark.parametrize("runtime", ["auto", *RUNTIMES])
def test_every_runtime_computes_outputs_equal_to_model_predict_and_the_report_names_it(
    local_cloud, two_shards, quiet_console, tmp_path, runtime
):
    # given the digits CNN, which OpenVINO and ONNX Runtime reproduce within the tolerance
    # when a backfill runs with model.runtime set
    spec, result = _run(local_cloud, two_shards, f"runtime-{runtime}", runtime, quiet_console, tmp_path)

    # then every output equals model.predict within 1e-5
    assert check_outputs(result, two_shards.reference, atol=TOLERANCE) == []
    # and the report names the runtime the outputs record: the one asked for, or for auto one of them
    section = result.report["model_runtime"]
    assert (section["requested"], section["precision"]) == (runtime, "fp32")
    assert section["by_runtime"] == _recorded_runtimes(local_cloud, spec)
    assert sum(section["by_runtime"].values()) == 2
    used = set(section["by_runtime"])
    if runtime == "auto":
        assert used and used <= set(RUNTIMES)
    else:
        assert section["by_runtime"] == {runtime: 2}
        assert section["fallbacks"] == []
    # and what the calibration measured: the runtime's agreement with TensorFlow and its speed
    if used & {"openvino", "onnxruntime"}:
        assert section["max_abs_diff"] is not None and section["max_abs_diff"] <= TOLERANCE
    assert set(section["rows_per_second"]) == used and all(v > 0 for v in section["rows_per_second"].values())
    # and each worker logged the runtime it chose
    events = _runtime_events(local_cloud, result.report["run_id"])
    assert events and used <= {e["runtime"] for e in events}


def test_openvino_that_cannot_reproduce_the_model_falls_back_to_tensorflow_with_the_reason_reported(
    local_cloud, unreproducible, quiet_console, tmp_path
):
    # given a model whose OpenVINO outputs differ from TensorFlow's by far more than 1e-5
    # when a backfill asks for OpenVINO
    spec, result = _run(local_cloud, unreproducible, "runtime-fallback", "openvino", quiet_console, tmp_path)

    # then TensorFlow computed every output, and each equals model.predict
    assert check_outputs(result, unreproducible.reference, atol=TOLERANCE) == []
    section = result.report["model_runtime"]
    assert section["requested"] == "openvino"
    assert section["by_runtime"] == {"tensorflow": 2} == _recorded_runtimes(local_cloud, spec)
    # and the report and the worker's log say why OpenVINO was refused
    assert section["fallbacks"] and all(reason.strip() for reason in section["fallbacks"])
    events = _runtime_events(local_cloud, result.report["run_id"])
    assert events and all(e["runtime"] == "tensorflow" and e.get("fallback_reason") for e in events)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc for the workers' processes")
def test_a_run_converting_to_openvino_sends_no_telemetry_and_leaves_no_process_of_its_workers_behind(
    local_cloud, two_shards, quiet_console, tmp_path, monkeypatch
):
    # given a backfill computed by OpenVINO, whose converter would report to Google Analytics from a forked
    # process (which, with no route out, blocks in getaddrinfo and outlives its worker), and workers whose
    # home folder (where that telemetry keeps its client id and usage counts) is empty
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the agent passes HOME on to the workers
    _spec, result = _run(local_cloud, two_shards, "no-strays", "openvino", quiet_console, tmp_path)
    assert result.report["model_runtime"]["by_runtime"] == {"openvino": 2}

    # when the run has ended and its fleet is gone
    local_cloud.wait_idle()

    # then nothing of it is left: no task, and no process any of its workers started
    assert local_cloud.leftovers() == []
    # and no worker's OpenVINO telemetry ran (it writes its usage counts under the home folder first)
    assert not (home / "intel").exists()
