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


def test_a_bad_chaos_spec_is_rejected_with_the_offending_part(capsys):
    code = main(["demo", "--chaos", "kill=3,explode=1"])
    assert code == 2
    assert "explode=1" in _one_sentence_error(capsys)


def test_chaos_spec_parses_and_spreads_kills_and_interruptions():
    spec = ChaosSpec.parse("kill=10,interrupt=5,every=0.5")
    assert (spec.kill, spec.interrupt, spec.every) == (10, 5, 0.5)
    order = interleave(10, 5)
    assert order.count("kill") == 10 and order.count("interrupt") == 5
    # interruptions are spread over the run, never bunched at one end
    positions = [i for i, event in enumerate(order) if event == "interrupt"]
    assert positions[0] < 4 and positions[-1] > 10
