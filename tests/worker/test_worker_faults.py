"""Faults fail fast and say why: opaque shard keys, poison shards straight to the dead-letter queue, a
shard the model fails on retried at once and dead-lettered after the queue's receive limit, a model that
cannot load recorded where the monitor looks, and the pre-check of a model against a sample shard."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import CONTROL, DATA, RUN_ID

pytestmark = pytest.mark.worker

MODEL_ERROR_URI = f"s3://{CONTROL}/runs/{RUN_ID}/errors/model-load.json"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def rows(seed: int, n: int = 12, width: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)


@pytest.fixture(scope="module")
def two_input_model(tmp_path_factory) -> Path:
    import keras

    a, b = keras.Input((5,), name="a"), keras.Input((3,), name="b")
    merged = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], keras.layers.Dense(2)(merged))
    path = tmp_path_factory.mktemp("two-input") / "two_inputs.keras"
    model.save(path)
    return path


def test_shards_whose_keys_hold_hash_question_mark_and_percent_are_processed_to_their_outputs(
    cloud, run_worker, tabular_classifier
):
    # given shards whose keys a URL parser would cut at '#' or '?' (or decode at '%')
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    keys = ["inputs/part#1.npy", "inputs/part?x=2.npy", "inputs/a b%20+#?c.npy"]
    messages = []
    for number, key in enumerate(keys):
        cloud.put(key, npy_bytes(rows(number)))
        messages.append(cloud.send_shard(key, "parquet"))

    # when
    run = run_worker(model_uri, "npy")

    # then each shard has its output under its own verbatim key, and every message is deleted
    assert run.exit_code == 0
    assert not run.events("shard_failed")
    assert sorted(e["shard"] for e in run.events("shard_done")) == sorted(f"s3://{DATA}/{k}" for k in keys)
    assert sorted(cloud.keys(DATA, "outputs/")) == sorted(
        ["outputs/part#1.parquet", "outputs/part?x=2.parquet", "outputs/a b%20+#?c.parquet"]
    )
    assert all(cloud.exists(m["output"]) for m in messages)
    assert cloud.queue_counts() == (0, 0)


@pytest.mark.parametrize(
    ("body", "error_type", "says"),
    [
        (b"\x93NUMPY corrupt header", "ShardFormatError", "cannot decode shard as npy"),
        (npy_bytes(rows(5, n=6, width=7)), "ShapeMismatchError", "(None, 5)"),
    ],
    ids=["corrupt-npy", "row-shape-mismatch"],
)
def test_a_shard_no_retry_can_fix_goes_to_the_dead_letter_queue_on_its_first_failure_with_its_error(
    cloud, run_worker, tabular_classifier, body, error_type, says
):
    # given a poison shard next to a good one, and a queue that would redrive only after 2 receives
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/good.npy", npy_bytes(rows(1)))
    good = cloud.send_shard("inputs/good.npy", "parquet")
    cloud.put("inputs/poison.npy", body)
    poison = cloud.send_shard("inputs/poison.npy", "parquet")

    # when the worker runs with the run's dead-letter queue (a visibility timeout far beyond the run)
    run = run_worker(model_uri, "npy", visibility_timeout=300, dead_letter_queue_url=cloud.dlq_url)

    # then the poison shard failed once, sits in the dead-letter queue, and its error record says why
    assert run.exit_code == 0
    assert cloud.exists(good["output"]) and not cloud.exists(poison["output"])
    failed = run.events("shard_failed")
    assert [(e["shard"], e["receive_count"]) for e in failed] == [(poison["shard"], 1)]
    assert [e["shard"] for e in run.events("shard_dead_lettered")] == [poison["shard"]]
    dead = cloud.visible_messages(cloud.dlq_url)
    assert [json.loads(m["Body"]) for m in dead] == [poison]
    assert cloud.queue_counts() == (0, 0)
    record = json.loads(cloud.get(poison["error"]))
    assert record["error_type"] == error_type and says in record["error"]


def test_a_shard_the_model_fails_on_is_retried_at_once_then_dead_lettered_with_a_one_line_reason(
    cloud, run_worker, lookup_model
):
    # given a good shard and one whose rows the model fails on (an id past its embedding), a queue that
    # redrives to the dead-letter queue after 2 receives, and a visibility timeout far beyond the run
    model_uri = cloud.put("models/lookup.keras", lookup_model.path.read_bytes())
    cloud.put("inputs/good.npy", npy_bytes(np.full((6, 3), 4, np.float32)))
    good = cloud.send_shard("inputs/good.npy", "parquet")
    cloud.put("inputs/bad.npy", npy_bytes(np.full((6, 3), 50, np.float32)))
    bad = cloud.send_shard("inputs/bad.npy", "parquet")

    # when the worker runs (and waits a few seconds for redeliveries before it exits idle)
    run = run_worker(
        model_uri, "npy", visibility_timeout=300, exit_when_idle_seconds=5, model_runtime="tensorflow"
    )

    # then the failing shard was delivered again at once, not after the 300 s visibility timeout, failed on
    # each of its 2 receives, and SQS moved it to the dead-letter queue; the good shard has its output
    assert run.exit_code == 0
    assert cloud.exists(good["output"]) and not cloud.exists(bad["output"])
    failed = run.events("shard_failed")
    assert [(e["shard"], e["receive_count"]) for e in failed] == [(bad["shard"], 1), (bad["shard"], 2)]
    assert [json.loads(m["Body"]) for m in cloud.visible_messages(cloud.dlq_url)] == [bad]
    assert cloud.queue_counts() == (0, 0)
    # and its error record says why in one line, the full error and traceback beside it
    record = json.loads(cloud.get(bad["error"]))
    assert record["error_type"] == "InvalidArgumentError" and record["receive_count"] == 2
    assert record["reason"] == "InvalidArgumentError: indices[0,0] = 50 is not in [0, 10)"
    assert "Graph execution error" in record["error"] and record["traceback"]
    assert failed[-1]["reason"] == record["reason"]


@pytest.mark.parametrize("model", ["not-a-model", "two-inputs"])
def test_a_model_that_cannot_load_exits_at_once_and_records_the_loaders_reason_for_the_monitor(
    cloud, run_worker, two_input_model, model
):
    # given a .keras file that is not a model, or a model with two inputs, and a shard waiting for it
    if model == "not-a-model":
        model_uri = cloud.put("models/broken.keras", b"PK\x03\x04 this is not a keras archive")
        says = "cannot load Keras model broken.keras"
    else:
        model_uri = cloud.put("models/two_inputs.keras", two_input_model.read_bytes())
        says = "has 2 input(s) and 1 output(s), but the worker serves models with exactly one input"
    cloud.put("inputs/waiting.npy", npy_bytes(rows(2)))
    waiting = cloud.send_shard("inputs/waiting.npy", "parquet")

    # when
    run = run_worker(model_uri, "npy", model_error_uri=MODEL_ERROR_URI)

    # then the worker exits 1 without touching the queue, and the record names the model and the reason
    assert run.exit_code == 1
    assert says in run.events("model_load_failed")[0]["error"]
    record = json.loads(cloud.get(MODEL_ERROR_URI))
    assert record["run_id"] == RUN_ID and record["model"] == model_uri
    assert record["error_type"] == "ModelLoadError" and says in record["error"]
    assert [json.loads(m["Body"]) for m in cloud.visible_messages()] == [waiting]


# ----------------------------------------------------------------------------- pre-check (run --local)


def test_check_model_and_sample_accepts_a_sample_that_fits_and_returns_the_models_input(
    tabular_classifier, tmp_path
):
    from spotfill_worker.model import check_model_and_sample

    sample = tmp_path / "sample.npy"
    sample.write_bytes(npy_bytes(rows(3)))
    model_input = check_model_and_sample(tabular_classifier.path, sample, "npy")
    assert model_input.shape == (None, 5)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            b"garbage",
            r"sample shard sample\.npy does not fit model tabular\.keras .*cannot decode shard as npy",
        ),
        (npy_bytes(rows(4, width=7)), r"sample shard sample\.npy does not fit .*\(7,\).*\(None, 5\)"),
    ],
    ids=["corrupt-npy", "row-shape-mismatch"],
)
def test_check_model_and_sample_names_the_sample_and_the_model_when_the_sample_does_not_fit(
    tabular_classifier, tmp_path, body, says
):
    from spotfill_worker.model import SampleMismatchError, check_model_and_sample

    sample = tmp_path / "sample.npy"
    sample.write_bytes(body)
    with pytest.raises(SampleMismatchError, match=says):
        check_model_and_sample(tabular_classifier.path, sample, "npy")


def test_check_model_and_sample_refuses_a_model_the_worker_cannot_serve(two_input_model, tmp_path):
    from spotfill_worker.loaded_model import ModelLoadError
    from spotfill_worker.model import check_model_and_sample

    sample = tmp_path / "sample.npy"
    sample.write_bytes(npy_bytes(rows(3)))
    not_a_model = tmp_path / "broken.keras"
    not_a_model.write_bytes(b"not a keras archive")
    with pytest.raises(ModelLoadError, match=r"two_inputs\.keras has 2 input\(s\)"):
        check_model_and_sample(two_input_model, sample, "npy")
    with pytest.raises(ModelLoadError, match=r"^cannot load Keras model broken\.keras"):
        check_model_and_sample(not_a_model, sample, "npy")
