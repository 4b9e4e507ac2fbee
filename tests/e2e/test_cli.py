"""The CLI's contract with its user: errors are one sentence and a non-zero exit status, never a traceback."""

from __future__ import annotations

import pytest

from spotfill.cli import main
from spotfill.localcloud.chaos import ChaosSpec, interleave
from spotfill.localcloud.server import free_port

pytestmark = pytest.mark.e2e


def _one_sentence_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("spotfill: error: ")
    return " ".join(lines)


def test_run_without_local_says_what_to_use_instead(capsys, tmp_path):
    code = main(["run", "--model", "m.keras", "--input", str(tmp_path), "--output", str(tmp_path)])
    assert code == 2
    assert "--local" in _one_sentence_error(capsys)


def test_run_local_with_a_missing_model_names_it(capsys, tmp_path):
    code = main(
        [
            "run",
            "--local",
            "--model",
            str(tmp_path / "nope.keras"),
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "nope.keras does not exist" in _one_sentence_error(capsys)


def test_run_local_with_no_shards_of_the_format_says_so(capsys, tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    (tmp_path / "in").mkdir()
    code = main(
        ["run", "--local", "--model", str(model), "--input", str(tmp_path / "in"), "--output", str(tmp_path)]
    )
    assert code == 2
    assert "no npy shards" in _one_sentence_error(capsys)


def test_watch_against_an_unreachable_endpoint_is_one_sentence(capsys):
    code = main(
        [
            "watch",
            "some-execution",
            "--endpoint-url",
            f"http://127.0.0.1:{free_port()}",
            "--region",
            "us-east-1",
        ]
    )
    assert code != 0
    assert "cannot reach AWS" in _one_sentence_error(capsys)


def test_local_outputs_without_the_credentials_local_up_printed_says_so(capsys, monkeypatch):
    # given no credentials in the environment (the endpoint accepts only those `local up` printed)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    # when the outputs are asked for
    code = main(["local", "outputs", "--port", str(free_port())])

    # then one sentence says what is missing
    assert code != 0
    assert "credentials `spotfill local up` printed" in _one_sentence_error(capsys)


def test_a_bad_chaos_spec_is_rejected_with_the_offending_part(capsys):
    code = main(["demo", "--chaos", "kill=3,explode=1"])
    assert code == 2
    assert "explode=1" in _one_sentence_error(capsys)


def test_chaos_spec_parses_and_spreads_kills_and_interruptions():
    spec = ChaosSpec.parse("kill=10,interrupt=5,every=0.5")
    assert (spec.kill, spec.interrupt, spec.every, spec.conflict) == (10, 5, 0.5, 0)
    assert ChaosSpec.parse("conflict=3").conflict == 3 and not ChaosSpec.parse("conflict=3").empty
    order = interleave(10, 5)
    assert order.count("kill") == 10 and order.count("interrupt") == 5
    # interruptions are spread over the run, never bunched at one end
    positions = [i for i, event in enumerate(order) if event == "interrupt"]
    assert positions[0] < 4 and positions[-1] > 10


def test_the_live_display_shows_shards_rate_eta_instances_tasks_and_state():
    import io

    from rich.console import Console

    from spotfill.progress_display import render
    from spotfill.runs import Snapshot

    snap = Snapshot(
        "arn:aws:states:us-east-1:123456789012:execution:sm:x",
        state="Monitor",
        run_id="digits-1",
        shards_total=50,
        shards_done=20,
        predictions=40_000,
        predictions_per_second=5_000.0,
        eta_seconds=12.0,
        instances=2,
        tasks=2,
        elapsed=30.0,
    )
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=120, color_system=None).print(render(snap))
    text = out.getvalue()
    for expected in (
        "run digits-1",
        "20/50",
        "40,000",
        "5,000/s",
        "ETA 0m12s",
        "instances 2",
        "tasks 2",
        "Monitor",
    ):
        assert expected in text


def test_run_local_writes_one_output_per_shard_equal_to_model_predict(digits, tmp_path, capsys):
    # given the user's model and a folder of shards
    import numpy as np

    input_dir = tmp_path / "in"
    input_dir.mkdir()
    shards = digits.shards()[:3]
    for shard in shards:
        (input_dir / shard.name).write_bytes(shard.read_bytes())

    # when `spotfill run --local` runs them with .npy outputs
    code = main(
        [
            "run",
            "--local",
            "--model",
            str(digits.model_path),
            "--input",
            str(input_dir),
            "--output",
            str(tmp_path / "out"),
            "--input-format",
            "npy",
            "--output-format",
            "npy",
            "--instances",
            "1",
        ]
    )

    # then it succeeds, and each output, named after its shard, is exactly the model's output, rows in order
    printed = capsys.readouterr()
    assert code == 0, printed.err
    # what the handlers print (their metric records) went to the function log, not the user's terminal
    assert '"_aws"' not in printed.out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [s.name for s in shards]
    for shard in shards:
        np.testing.assert_allclose(
            np.load(tmp_path / "out" / shard.name), digits.reference[shard.name], atol=1e-5
        )
