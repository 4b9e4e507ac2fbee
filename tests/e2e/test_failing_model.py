"""A model that fails on some shards: `spotfill run --local` retries each as the queue's redrive says,
dead-letters it, ends promptly with the good outputs kept, and says why in one line per shard; a model that
fails on every shard is one sentence, never a TensorFlow trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from spotfill_control.queues import MAX_RECEIVES

from spotfill.localrun import run_local
from spotfill.progress_display import report_table
from spotfill.runs import CliError

pytestmark = pytest.mark.e2e

OUT_OF_RANGE = "InvalidArgumentError: indices[8,0] = 50 is not in [0, 10)"


@pytest.fixture(scope="module")
def lookup_model(tmp_path_factory) -> tuple[Path, object]:
    """3 token ids (float32) -> 2 classes through an Embedding of 10 ids: a row holding an id of 10 or more
    fails the forward pass (TensorFlow's InvalidArgumentError, 50 lines of frames before the reason)."""
    import keras

    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Embedding(10, 2),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    path = tmp_path_factory.mktemp("lookup") / "lookup.keras"
    model.save(path)
    return path, model


def _shard(directory: Path, name: str, bad_from: int | None = None, rows: int = 40) -> Path:
    """Ids 0-9; from row `bad_from` on, 50 (past the embedding), after rows the pre-check can take."""
    ids = (np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) % 10).astype(np.float32)
    if bad_from is not None:
        ids[bad_from:] = 50
    path = directory / name
    np.save(path, ids)
    return path


def _run(model: Path, input_dir: Path, output_dir: Path):
    return run_local(
        model,
        input_dir,
        output_dir,
        input_format="npy",
        output_format="npy",
        instances=1,
        chaos=None,
        console=Console(quiet=True),
        runtime="tensorflow",  # the reason's exact words are TensorFlow's
        timeout=900,
    )


def _printed_table(report: dict) -> str:
    """The report table as `spotfill run --local` prints it, on a console wide enough for one row a line."""
    console = Console(width=400, color_system=None, record=True)
    with console.capture() as captured:
        console.print(report_table(report))
    return captured.get()


def _one_line(reason: str) -> None:
    assert "\n" not in reason and "Traceback" not in reason and 'File "' not in reason, reason
    assert "Graph execution error" not in reason and "[[{{node" not in reason, reason


def test_a_shard_the_model_fails_on_is_dead_lettered_and_named_with_its_reason_and_the_rest_are_kept(
    lookup_model, tmp_path
):
    # given three shards the model serves, one whose rows it fails on (past the first, which the pre-check
    # takes) and one that is not a numpy file, run with the queue's default visibility timeout (120 s) and
    # stall timeout (180 s)
    model, keras_model = lookup_model
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    good = [_shard(input_dir, f"part-{i}.npy") for i in range(3)]
    _shard(input_dir, "part-9-bad.npy", bad_from=8)
    (input_dir / "part-8-corrupt.npy").write_bytes(b"this is not a numpy file")

    # when it runs
    result = _run(model, input_dir, tmp_path / "out")

    # then the run ended by its own logic (not by the stall timeout), completed with two failures
    report = result.report
    assert result.snapshot.status == "SUCCEEDED", result.snapshot.error
    assert report["status"] == "completed_with_failures", report["reason"]
    assert report["reason"] == "2 shard(s) failed and were set aside as dead letters"
    assert report["shards"]["failed"] == 2 and report["shards"]["succeeded"] == 3
    # and names each failed shard with a one-line reason, in the report and in the table run --local prints
    corrupt, bad = report["shards"]["failed_errors"]
    assert [corrupt["shard"], bad["shard"]] == report["shards"]["failed_keys"]
    assert bad["shard"].endswith("/part-9-bad.npy") and bad["reason"] == OUT_OF_RANGE
    assert corrupt["shard"].endswith("/part-8-corrupt.npy")
    assert corrupt["reason"].startswith("ShardFormatError: cannot decode shard as npy")
    table = _printed_table(report)
    for failed in (corrupt, bad):
        _one_line(failed["reason"])
        assert f"{failed['shard']}: {failed['reason']}" in table
    # and the shard the model fails on was tried as often as the queue's redrive allows (3 receives) before it
    # was dead-lettered; the corrupt one, which no retry can fix, went there on its first
    assert (bad["receive_count"], corrupt["receive_count"]) == (MAX_RECEIVES, 1)
    # and the good outputs are kept, equal to model.predict
    assert sorted(result.outputs) == [p.name for p in good]
    for shard in good:
        expected = keras_model.predict(np.load(shard), verbose=0)
        np.testing.assert_allclose(np.load(result.outputs[shard.name]), expected, atol=1e-5)
    assert result.leftovers == []


def test_a_model_that_fails_on_every_shard_is_one_sentence_in_the_report_and_the_table(
    lookup_model, tmp_path
):
    # given shards whose first rows the model serves (the pre-check passes) and whose later rows it fails on
    model, _ = lookup_model
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    for i in range(2):
        _shard(input_dir, f"part-{i}.npy", bad_from=8)

    # when it runs
    result = _run(model, input_dir, tmp_path / "out")

    # then the run says why in one sentence: every shard failed, and the model's one-line reason
    report = result.report
    assert report["status"] == "completed_with_failures" and report["shards"]["failed"] == 2
    assert report["reason"] == f"2 shard(s) failed and were set aside as dead letters: {OUT_OF_RANGE}"
    _one_line(report["reason"])
    table = _printed_table(report)
    assert "Graph execution error" not in table and 'File "' not in table
    assert result.outputs == {}


def test_a_model_that_fails_on_the_first_shards_rows_is_refused_before_any_work_in_one_sentence(
    lookup_model, tmp_path
):
    # given shards whose every row the model fails on
    model, _ = lookup_model
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    for i in range(2):
        _shard(input_dir, f"part-{i}.npy", bad_from=0)

    # when it runs / then the pre-check refuses it in one sentence: the shard, the model and the reason
    with pytest.raises(CliError) as refused:
        _run(model, input_dir, tmp_path / "out")
    message = str(refused.value)
    _one_line(message)
    assert message == (
        "model lookup.keras cannot predict the rows of sample shard part-0.npy: "
        "InvalidArgumentError: indices[0,0] = 50 is not in [0, 10)"
    )
