"""`spotfill run --local` loses nothing and leaves nothing: the output folder is checked before any work,
inputs are never overwritten, finished outputs survive a re-run and an interruption, and no worker process
or temporary folder outlives the run."""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spotfill import localrun
from spotfill.cli import main
from spotfill.local_folders import plan_outputs
from spotfill.localcloud import LocalCloud, LocalCloudOptions
from spotfill.localcloud.cloud import OWNER_FILE, reclaim_abandoned_run_dirs
from spotfill.model_record import LocalModel, record_models, recorded_models
from spotfill.runs import CliError

from .helpers import eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _error(capsys) -> str:
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    lines = [line for line in printed.err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("spotfill: error: "), printed.err
    assert "local cloud at" not in printed.out  # refused before any work
    return " ".join(lines)


# The runs here are about the local run's outputs, re-runs and signals, not about choosing a runtime: their
# workers run TensorFlow (`--runtime auto`, the default, converts the model twice and times three runtimes in
# every worker; tests/e2e/test_model_runtime.py runs it end to end).
RUNTIME = ("--runtime", "tensorflow")


def _run(model: Path, input_dir: Path, output_dir: Path, *extra: str) -> int:
    return main(
        [
            "run",
            "--local",
            "--model",
            str(model),
            "--input",
            str(input_dir),
            "--output",
            str(output_dir),
            "--input-format",
            "npy",
            "--output-format",
            "npy",
            "--instances",
            "1",
            *RUNTIME,
            *extra,
        ]
    )


@pytest.fixture
def shards(tmp_path):
    """A model file and a folder of two small npy shards (what is checked before any work needs no TF)."""
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    for i in range(2):
        np.save(input_dir / f"part-{i:05d}.npy", np.zeros((3, 4), dtype=np.float32))
    return model, input_dir


# --- item 2: the output location is checked before any work ---------------------------------------------


def test_an_output_path_that_is_a_file_is_refused_before_any_work(shards, tmp_path, capsys):
    model, input_dir = shards
    output = tmp_path / "out.npy"
    output.write_bytes(b"not a folder")
    assert _run(model, input_dir, output) == 2
    assert f"--output {output} is a file, not a folder" in _error(capsys)


def test_an_output_folder_that_cannot_be_created_is_refused_before_any_work(shards, tmp_path, capsys):
    model, input_dir = shards
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file where a folder would go")
    assert _run(model, input_dir, blocker / "out") == 2
    assert f"cannot create the output folder {blocker / 'out'}" in _error(capsys)


# --- item 3: inputs are never overwritten -------------------------------------------------------------


@pytest.mark.parametrize(
    ("output_of", "relation"),
    [
        (lambda i: i, "is"),
        (lambda i: i / "predictions", "is inside"),
        (lambda i: i / "sub" / ".." / "..", "contains"),
        (lambda i: i.parent / "link-to-in", "is"),
    ],
    ids=["same-folder", "inside", "contains-via-dotdot", "symlink-to-input"],
)
def test_an_output_folder_overlapping_the_input_is_refused_and_no_shard_is_touched(
    shards, tmp_path, capsys, output_of, relation
):
    # given an output folder that is, is inside or contains the input folder (through `..` or a symlink)
    model, input_dir = shards
    (tmp_path / "link-to-in").symlink_to(input_dir)
    before = {p.name: p.read_bytes() for p in input_dir.iterdir()}
    output = output_of(input_dir)

    # when run --local is asked to write there
    code = _run(model, input_dir, output)

    # then it refuses in one sentence, and every input shard is as it was
    assert code == 2
    assert f"{relation} --input {input_dir}" in _error(capsys)
    assert {p.name: p.read_bytes() for p in input_dir.iterdir()} == before


# --- item 5: re-runs skip what is complete -------------------------------------------------------------


def test_a_rerun_whose_outputs_are_all_complete_computes_nothing_and_reports_stale_files(
    shards, tmp_path, capsys
):
    # given an output folder holding a complete output for every shard, and one for a shard since removed
    model, input_dir = shards
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    for shard in input_dir.iterdir():
        np.save(output_dir / shard.name, np.full((3, 10), 7.0, dtype=np.float32))
    np.save(output_dir / "part-09999.npy", np.ones((2, 10), dtype=np.float32))
    before = {p.name: p.read_bytes() for p in output_dir.iterdir()}

    # when run --local runs again (with a model that could not even load: nothing is computed)
    code = _run(model, input_dir, output_dir)

    # then it succeeds without starting anything, keeps every output and names the stale one, deleting nothing
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "local cloud at" not in printed.out
    assert "2 of 2 shard(s) already have a complete output" in printed.out
    assert "match no input shard (left alone): part-09999.npy" in printed.out
    assert {p.name: p.read_bytes() for p in output_dir.iterdir()} == before


def test_piped_output_keeps_each_sentence_on_one_line_however_deep_the_output_folder(
    shards, tmp_path, capsys, monkeypatch
):
    # given complete outputs in a folder whose path alone is longer than any terminal, and a narrow width
    monkeypatch.setenv("COLUMNS", "40")
    model, input_dir = shards
    output_dir = tmp_path / ("d" * 60) / ("e" * 60) / "out"
    output_dir.mkdir(parents=True)
    for shard in input_dir.iterdir():
        np.save(output_dir / shard.name, np.full((3, 10), 7.0, dtype=np.float32))
    np.save(output_dir / "part-09999.npy", np.ones((2, 10), dtype=np.float32))

    # when run --local prints to a pipe (not a terminal)
    assert _run(model, input_dir, output_dir) == 0

    # then every sentence is whole on its own line, the path unbroken, as grep would find it
    lines = capsys.readouterr().out.splitlines()
    assert (
        f"2 of 2 shard(s) already have a complete output in {output_dir}: skipped (--overwrite computes them "
        "again)" in lines
    )
    assert f"1 file(s) in {output_dir} match no input shard (left alone): part-09999.npy" in lines
    assert f"2 output file(s) in {output_dir} (2 kept from an earlier run)" in lines


def test_outputs_with_the_wrong_row_count_or_cut_short_are_computed_again_and_overwrite_recomputes_all(
    shards, tmp_path
):
    # given one complete output, one with too few rows and one cut short
    _, input_dir = shards
    np.save(input_dir / "part-00002.npy", np.zeros((3, 4), dtype=np.float32))
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    np.save(output_dir / "part-00000.npy", np.zeros((3, 10), dtype=np.float32))
    np.save(output_dir / "part-00001.npy", np.zeros((2, 10), dtype=np.float32))
    np.save(output_dir / "part-00002.npy", np.zeros((3, 10), dtype=np.float32))
    cut = output_dir / "part-00002.npy"
    cut.write_bytes(cut.read_bytes()[:-20])
    shard_paths = sorted(input_dir.iterdir())

    # when the run is planned
    plan = plan_outputs(shard_paths, input_dir, output_dir, "npy", "npy")
    everything = plan_outputs(shard_paths, input_dir, output_dir, "npy", "npy", overwrite=True)

    # then only the complete output is kept; with --overwrite every shard runs
    assert list(plan.complete) == ["part-00000.npy"]
    assert [p.name for p in plan.to_run] == ["part-00001.npy", "part-00002.npy"]
    assert plan.incomplete == ["part-00001.npy", "part-00002.npy"]
    assert everything.to_run == shard_paths and not everything.complete


def test_a_rerun_computes_only_missing_outputs_and_a_failed_download_is_an_error_naming_it(
    digits, tmp_path, capsys
):
    # given three shards: one whose output is already complete (from an earlier run, values the model would
    # not give), one whose output cannot be written (a folder stands at its name), one with no output yet
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    shards = digits.shards()[:3]
    for shard in shards:
        (input_dir / shard.name).write_bytes(shard.read_bytes())
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    earlier = np.full_like(digits.reference[shards[0].name], 0.5)
    np.save(output_dir / shards[0].name, earlier)
    (output_dir / shards[1].name).mkdir()

    # when run --local runs
    code = _run(digits.model_path, input_dir, output_dir)

    # then it fails naming the output it could not write and why, once and with that reason alone, after
    # downloading the others
    printed = capsys.readouterr()
    assert code != 0
    assert "Traceback" not in printed.err
    error = [line for line in printed.err.splitlines() if line.startswith("spotfill: error: ")]
    assert len(error) == 1 and shards[1].name in error[0] and "Is a directory" in error[0], printed.err
    assert "1 output(s) are missing" in error[0] and "wrote no such output" not in printed.err, printed.err
    np.testing.assert_allclose(
        np.load(output_dir / shards[2].name), digits.reference[shards[2].name], atol=1e-5
    )
    # and the complete output was kept, not computed again
    assert "1 of 3 shard(s) already have a complete output" in printed.out
    np.testing.assert_array_equal(np.load(output_dir / shards[0].name), earlier)
    # and the run's report (its local cloud is gone) is written beside the output folder, and said where
    pages = list(tmp_path.glob("out-report-*.html"))
    assert len(pages) == 1 and pages[0].read_text().lstrip().lower().startswith("<!doctype html"), printed.out
    report = json.loads(pages[0].with_suffix(".json").read_text())
    assert pages[0].name == f"out-report-{report['run_id']}.html"
    assert f"report: {pages[0]} and {pages[0].with_suffix('.json')}" in printed.out.splitlines()
    # and its page advises what works once this local cloud is gone, not `spotfill redrive`
    page = pages[0].read_text()
    assert "spotfill redrive" not in page and html.escape(localrun.LOCAL_REDRIVE) in page
    # and the output computed now is recorded as this model's (the kept one's model is not known)
    assert recorded_models(output_dir) == {shards[2].name: LocalModel.of(digits.model_path)}


def _outputs_of_another_model(shards, tmp_path) -> tuple[Path, Path, Path, LocalModel]:
    """Complete outputs for both shards, recorded as made by another model file than the shards fixture's."""
    model, input_dir = shards
    other = tmp_path / "other.keras"
    other.write_bytes(b"another model")
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    for shard in input_dir.iterdir():
        np.save(output_dir / shard.name, np.full((3, 10), 7.0, dtype=np.float32))
    record_models(output_dir, [p.name for p in input_dir.iterdir()], LocalModel.of(other))
    return model, input_dir, output_dir, LocalModel.of(other)


def test_outputs_made_by_another_model_are_refused_naming_both_models_and_overwrite_recomputes_them(
    shards, tmp_path
):
    # given complete outputs that the folder's record says another model made
    model, input_dir, output_dir, other = _outputs_of_another_model(shards, tmp_path)
    shard_paths = sorted(input_dir.iterdir())
    asked = LocalModel.of(model)

    # when the run is planned with this model / then it is refused, naming both models
    with pytest.raises(CliError) as refused:
        plan_outputs(shard_paths, input_dir, output_dir, "npy", "npy", model=asked)
    message = str(refused.value)
    assert "2 output(s)" in message and "part-00000.npy" in message
    assert f"made by model {other.describe()}, not by {asked.describe()}" in message
    # with --overwrite every shard is computed again; with the model that made them, they are complete
    overwritten = plan_outputs(shard_paths, input_dir, output_dir, "npy", "npy", overwrite=True, model=asked)
    assert overwritten.to_run == shard_paths
    same = plan_outputs(shard_paths, input_dir, output_dir, "npy", "npy", model=other)
    assert sorted(same.complete) == ["part-00000.npy", "part-00001.npy"] and not same.to_run


def test_a_rerun_with_another_model_exits_non_zero_before_any_work_and_keeps_every_output(
    shards, tmp_path, capsys
):
    # given outputs another model made
    model, input_dir, output_dir, other = _outputs_of_another_model(shards, tmp_path)
    before = {p.name: p.read_bytes() for p in output_dir.iterdir()}

    # when run --local runs with this model
    code = _run(model, input_dir, output_dir)

    # then it refuses before any work, naming both models, and changes nothing
    assert code == 2
    error = _error(capsys)
    assert other.sha256[:12] in error and LocalModel.of(model).sha256[:12] in error and "--overwrite" in error
    assert {p.name: p.read_bytes() for p in output_dir.iterdir()} == before


# --- item 6: a model or shards that can never work are refused before the local cloud starts ----------------


def test_a_keras_file_that_is_not_a_model_is_refused_before_any_work_and_creates_nothing(
    shards, tmp_path, capsys
):
    model, input_dir = shards  # m.keras holds one byte, not a model (a .keras file is a zip archive)
    assert _run(model, input_dir, tmp_path / "out") == 2
    error = _error(capsys)
    assert "m.keras: not a valid .keras file (a zip archive)" in error and "File not found" not in error
    assert not (tmp_path / "out").exists()  # a refused run creates nothing


def test_a_junk_savedmodel_archive_is_refused_in_one_sentence(shards, tmp_path, capsys):
    _, input_dir = shards
    model = tmp_path / "model.tar.gz"
    model.write_bytes(b"not a tar file, compressed or not")
    assert _run(model, input_dir, tmp_path / "out") == 2
    printed = capsys.readouterr()
    lines = [line for line in printed.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("spotfill: error: "), printed.err
    assert "SavedModel archive model.tar.gz: not a tar file, gzip-compressed or not" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_busy_port_is_refused_first_as_local_up_refuses_it_and_creates_nothing(shards, tmp_path, capsys):
    # given a port something listens on, and a model that could not load either
    import socket

    model, input_dir = shards
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        # when run --local is asked to use it
        code = _run(model, input_dir, tmp_path / "out", "--port", str(port))

    # then the port is what it refuses, in local up's words, before the model check and creating nothing
    assert code == 2
    error = _error(capsys)
    assert (
        f"spotfill: error: cannot start the local cloud: port {port} on 127.0.0.1 is already in use" in error
    )
    assert not (tmp_path / "out").exists()


def test_shards_whose_rows_do_not_fit_the_model_are_refused_before_any_work(digits, shards, tmp_path, capsys):
    _, input_dir = shards  # rows of 4 features; the digits model takes 8x8 images
    assert _run(digits.model_path, input_dir, tmp_path / "out") == 2
    error = _error(capsys)
    assert "part-00000.npy" in error and digits.model_path.name in error


# --- items 5 and 7: interrupted and killed runs ---------------------------------------------------------


def test_a_local_cloud_removes_its_temporary_folder_and_those_of_killed_runs_but_never_a_kept_one(
    tmp_path, monkeypatch
):
    # given the temporary folder of a killed run, that of a live local cloud, and one kept (no owner file)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    killed, kept = tmp_path / "spotfill-local-killed", tmp_path / "spotfill-local-kept"
    killed.mkdir()
    kept.mkdir()
    (killed / OWNER_FILE).write_text(f"{int(finished.stdout)}:1")
    live = LocalCloud(LocalCloudOptions())

    # when another local cloud is made with no run folder given, and then stopped
    cloud = LocalCloud(LocalCloudOptions())
    own = cloud.run_dir
    assert own.parent == tmp_path and own.is_dir()
    cloud.stop()

    # then the killed run's folder went when it was made, its own when it stopped; the others stay
    assert not killed.exists() and not own.exists()
    assert live.run_dir.is_dir() and kept.is_dir()
    live.stop()
    assert not live.run_dir.exists()
    # and a folder asked to be kept stays after stop
    kept_cloud = LocalCloud(LocalCloudOptions(keep_run_dir=True))
    kept_cloud.stop()
    assert kept_cloud.run_dir.is_dir() and not (kept_cloud.run_dir / OWNER_FILE).exists()


def _environment(tmp: Path) -> dict[str, str]:
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("src", "functions", "worker"))
    env["TMPDIR"] = str(tmp)  # the run's temporary folder lands here
    env["COLUMNS"] = "200"  # one line per message
    return env


def _start_run(input_dir: Path, output_dir: Path, model: Path, tmp: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "spotfill.cli", "run", "--local", "--model", str(model)]
    command += ["--input", str(input_dir), "--output", str(output_dir), "--output-format", "npy"]
    command += ["--instances", "1", *RUNTIME]
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, env=_environment(tmp), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _workers_of(pid: int) -> set[int]:
    """Worker processes (`spotfill_worker` in the command line) below `pid`: its children, or the children of
    the fork server it started (tests/conftest.py has the suite's local clouds fork their workers)."""
    parents: dict[int, int] = {}
    commands: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            commands[int(entry.name)] = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, below = set(), {pid}
    while True:
        more = {child for child, parent in parents.items() if parent in below and child not in below}
        if not more:
            break
        below |= more
    for child in below - {pid}:
        if b"spotfill_worker" in commands.get(child, b""):
            found.add(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's wait is left


def _shards_done(tmp: Path) -> int:
    """Shards done by the workers of the run whose temporary folder is under `tmp` (their logs)."""
    logs = tmp.glob("spotfill-local-*/logs/*/*.log")
    return sum(log.read_text(errors="replace").count('"shard_done"') for log in logs)


def _poisoned_input(digits, tmp_path: Path) -> Path:
    """Good shards and one that cannot be decoded: the run stays open (the bad shard waits out its SQS
    visibility timeout before each retry) long after the good ones are done."""
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    for shard in digits.shards()[:3]:
        (input_dir / shard.name).write_bytes(shard.read_bytes())
    (input_dir / "part-90000.npy").write_bytes(b"this is not a numpy file")
    return input_dir


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc for worker processes")
def test_sigkill_of_run_local_leaves_no_worker_process_behind(digits, tmp_path):
    # given run --local whose worker is busy (past its start-up, pulling shards from the queue)
    input_dir = _poisoned_input(digits, tmp_path)
    tmp = tmp_path / "tmp"
    process = _start_run(input_dir, tmp_path / "out", digits.model_path, tmp, tmp_path / "log")
    try:
        eventually(lambda: process.poll() is not None or _shards_done(tmp) >= 3, timeout=300)
        assert process.poll() is None, (tmp_path / "log").read_text()
        workers = _workers_of(process.pid)
        assert workers

        # when the run is killed with SIGKILL (no chance to clean up)
        process.kill()
        process.wait(timeout=30)

        # then every worker it started exits on its own
        eventually(lambda: not any(_alive(pid) for pid in workers), timeout=60)
        # and the temporary folder it had no chance to remove is removed by the next local cloud
        abandoned = list(tmp.glob("spotfill-local-*"))
        assert len(abandoned) == 1 and reclaim_abandoned_run_dirs(tmp) == abandoned
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc for worker processes")
def test_sigterm_of_run_local_keeps_finished_outputs_stops_workers_and_removes_its_folder(digits, tmp_path):
    # given run --local whose good shards are done while a poison shard keeps the run open
    input_dir = _poisoned_input(digits, tmp_path)
    output_dir, tmp = tmp_path / "out", tmp_path / "tmp"
    process = _start_run(input_dir, output_dir, digits.model_path, tmp, tmp_path / "log")

    try:
        eventually(lambda: process.poll() is not None or _shards_done(tmp) >= 3, timeout=300)
        assert process.poll() is None, (tmp_path / "log").read_text()
        workers = _workers_of(process.pid)
        assert workers

        # when the run gets SIGTERM (as from `kill` or a service manager)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()

    # then it ends as Ctrl-C does, having downloaded the finished outputs, and says how many
    printed = (tmp_path / "log").read_text()
    assert code == 130, printed
    assert "interrupted: 3 finished output(s) of 4 downloaded" in printed
    for shard in digits.shards()[:3]:
        np.testing.assert_allclose(np.load(output_dir / shard.name), digits.reference[shard.name], atol=1e-5)
    # and its workers are gone and its temporary folder removed
    assert not any(_alive(pid) for pid in workers)
    assert not list(tmp.glob("spotfill-local-*"))


def _workers_with_temp_under(tmp: Path) -> set[int]:
    """Worker processes whose temporary folder is under `tmp` (a local cloud task has one in its run's)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline, environ = (entry / "cmdline").read_bytes(), (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"spotfill_worker" in cmdline and str(tmp).encode() in environ:
            found.add(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc for worker processes")
@pytest.mark.parametrize(
    ("phase", "how"),
    [
        ("model-checked", "finaliser"),
        ("stack-deploying", "finaliser"),
        ("cloud-started", "ignored-at-start"),
        ("triggered", "finaliser"),
        ("following", "signal"),
    ],
)
def test_an_interrupt_at_any_moment_of_start_up_stops_the_run_and_leaves_nothing(
    digits, tmp_path, phase, how
):
    # given run --local, interrupted (Ctrl-C) when a phase of its start-up is reached: also where Python would
    # lose the KeyboardInterrupt (inside a finaliser) and where the shell started it ignoring SIGINT
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    for shard in digits.shards()[:2]:
        (input_dir / shard.name).write_bytes(shard.read_bytes())
    tmp, marker, log = tmp_path / "tmp", tmp_path / "phase-reached", tmp_path / "log"
    command = [sys.executable, str(ROOT / "tests" / "e2e" / "standin" / "spotfill_interrupted_run.py")]
    command += [phase, how, str(marker), "--", "run", "--local", "--model", str(digits.model_path)]
    command += ["--input", str(input_dir), "--output", str(tmp_path / "out"), "--instances", "1"]

    # when it runs
    with open(log, "wb") as out:
        code = subprocess.run(
            command, env=_environment(tmp), stdout=out, stderr=subprocess.STDOUT, timeout=600
        ).returncode

    # then it stopped there with 130, removed its temporary folders and left no worker running
    printed = log.read_text(errors="replace")
    assert marker.read_text() == phase, printed
    assert code == 130, printed
    assert "spotfill: interrupted" in printed
    assert sorted(p.name for p in tmp.iterdir()) == [], printed
    assert not _workers_with_temp_under(tmp)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_local_up_stopped_by_a_closed_terminal_or_sigterm_removes_its_temporary_folder(tmp_path, signum):
    # given `spotfill local up` ready, its run folder a temporary one
    from spotfill.localcloud.server import free_port

    tmp, log = tmp_path / "tmp", tmp_path / "local-up.log"
    command = [sys.executable, "-m", "spotfill.cli", "local", "up", "--port", str(free_port())]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=_environment(tmp), stdout=out, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: "READY" in log.read_text() or process.poll() is not None, timeout=300)
        assert process.poll() is None, log.read_text()
        assert list(tmp.glob("spotfill-local-*")), log.read_text()

        # when its terminal closes (SIGHUP) or it is told to stop (SIGTERM)
        process.send_signal(signum)
        code = process.wait(timeout=120)

        # then it stops as on Ctrl-C: exit 0, its temporary folder gone
        assert code == 0, log.read_text()
        assert "stopping the local cloud" in log.read_text()
        assert not list(tmp.glob("spotfill-local-*")), log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
