"""The CLI's contract with its user: errors are one sentence and a non-zero exit status, never a traceback."""

from __future__ import annotations

import pytest

from spotfill.cli import main
from spotfill.localcloud.chaos import Chaos, ChaosSpec, interleave
from spotfill.localcloud.server import free_port
from spotfill.model_record import RECORD_NAME

pytestmark = pytest.mark.e2e


def _one_sentence_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("spotfill: error: ")
    return " ".join(lines)


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


def test_run_local_of_a_spec_validate_refuses_prints_its_one_sentence_not_the_lambda_payload(
    capsys, tmp_path, digits
):
    # given a model and a shard that fit, and a run asking more instances than the local cloud's spot vCPU
    # quota allows
    from spotfill.localcloud.patches.account_limits import LOCAL_CLOUD_SPOT_VCPUS

    (tmp_path / "in").mkdir()
    shard = digits.shards()[0]
    (tmp_path / "in" / shard.name).write_bytes(shard.read_bytes())
    model = digits.model_path
    c5_xlarge_vcpus = 4
    instances = int(LOCAL_CLOUD_SPOT_VCPUS["L-34B43A08"]) // c5_xlarge_vcpus + 1

    # when `spotfill run --local` runs it, so Validate fails it on the local cloud
    code = main(
        [
            "run",
            "--local",
            "--model",
            str(model),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            "--instances",
            str(instances),
        ]
    )

    # then the error is the errorMessage of Validate's Lambda error, with no stack trace or payload around it
    assert code == 2
    error = _one_sentence_error(capsys)
    assert error.startswith("spotfill: error: the run ended failed: invalid input: fleet.target_capacity: ")
    for payload_word in ("stackTrace", "errorType", "errorMessage"):
        assert payload_word not in error


def _demo_stderr(tmp_path, *extra: str) -> str:
    """stderr of a real `spotfill demo` (another process: TensorFlow loads once per process) that trains its
    model, predicts with it in-process, then stops at the local cloud's port, which the test holds."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(root / d) for d in ("src", "functions", "worker"))}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                *("-m", "spotfill.cli", "demo", "--shards", "1", "--rows-per-shard", "10"),
                *("--port", str(port), "--work-dir", str(tmp_path / "demo"), *extra),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    # it got past training and predicting; the busy port is refused as `local up` refuses it (exit 2)
    assert done.returncode == 2 and "model " in done.stdout
    return done.stderr


TENSORFLOW_START_UP = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard")


def test_demo_prints_only_spotfills_own_lines_and_shows_tensorflows_start_up_with_verbose(tmp_path):
    # when the demo runs without --verbose / then stderr is spotfill's own error line only
    quiet = _demo_stderr(tmp_path / "quiet")
    assert [line for line in quiet.splitlines() if line.strip()] == [
        line for line in quiet.splitlines() if line.startswith("spotfill: error: ") and "in use" in line
    ]
    assert not any(marker in quiet for marker in TENSORFLOW_START_UP)
    # when it runs with --verbose / then TensorFlow's start-up lines are there
    verbose = _demo_stderr(tmp_path / "verbose", "--verbose")
    assert "oneDNN custom operations" in verbose and "absl::InitializeLog" in verbose


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


def test_chaos_waits_for_two_shards_per_running_worker_between_events_so_no_shard_is_caught_twice():
    # given three busy workers past their warm-up, whose logs count the shards they finished
    class Worker:
        def __init__(self, task_id: str) -> None:
            self.task_id, self.instance_id, self.started_at, self.shards_done = task_id, "i-1", 0.0, 1

        @property
        def busy(self) -> bool:
            return self.shards_done > 0

    class Agent:
        def __init__(self) -> None:
            self.tasks = [Worker(f"t{i}") for i in range(3)]
            self.killed: list[str] = []

        def running_tasks(self):
            return [t for t in self.tasks if t.task_id not in self.killed]

        def kill_task(self, task) -> None:
            self.killed.append(task.task_id)

    agent = Agent()
    chaos = Chaos(ChaosSpec(kill=2, every=0.0, warmup=0.0), fleet=None, agent=agent, seed=1)
    assert chaos.due() and chaos.progress() == 3

    # when one is killed
    assert chaos.kill_one()

    # then the next event waits until the fleet finished two shards per running worker (2 x 2 = 4) more,
    # counting what the killed worker had finished
    survivors = agent.running_tasks()
    survivors[0].shards_done += 3
    assert chaos.progress() == 6 and not chaos.due()
    survivors[1].shards_done += 1
    assert chaos.progress() == 7 and chaos.due()


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
    # (beside the outputs, the record of the model that made them)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [RECORD_NAME] + [s.name for s in shards]
    for shard in shards:
        np.testing.assert_allclose(
            np.load(tmp_path / "out" / shard.name), digits.reference[shard.name], atol=1e-5
        )
