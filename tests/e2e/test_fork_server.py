"""The local cloud's fork server (spotfill.localcloud.forkserver): a task forked from it sees what the same
task started as a fresh `python -m` process sees, and ends the same ways."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from spotfill.localcloud.forkserver import ForkServer, ForkServerError

from .helpers import eventually

pytestmark = pytest.mark.e2e

STANDIN = Path(__file__).resolve().parent / "standin"
PROBE = "spotfill_probe_task"  # tests/e2e/standin/spotfill_probe_task.py
FORK_ONLY = ("draw", "tensorflow_loaded")  # what differs by design (a random draw; what the server imported)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fork-server")
    environment = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR", "PYTHONPATH") if k in os.environ}
    environment.update({"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    fork_server = ForkServer(environment, directory / "fork-server.log", (PROBE,))
    fork_server.start()
    fork_server.preload()  # as the agent asks when a local cloud's first instance boots
    yield fork_server
    fork_server.close()


@pytest.fixture
def task_environment(tmp_path):
    """A task's environment as the agent gives one: a few inherited variables, its own TMPDIR, and a
    PYTHONPATH whose first folder holds a `sitecustomize` (as the local cloud's IAM site does)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("PROBE_SITE = True\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return {
        "PATH": os.environ["PATH"],
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": str(scratch),
        "PYTHONPATH": os.pathsep.join([str(site), str(STANDIN)]),
        "SPOTFILL_PROBE": "a task variable",
    }


def _fresh(environment: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """The task started as the agent starts one without the fork server."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", PROBE],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )


def _seen(log: Path) -> dict:
    return json.loads(log.read_text().splitlines()[0])


def test_a_forked_task_sees_what_a_fresh_process_sees(server, task_environment, tmp_path):
    # given the same task started fresh and forked twice, in the same folder with the same environment
    fresh = _fresh(task_environment, tmp_path, tmp_path / "fresh.log")
    forked = [server.spawn(PROBE, task_environment, tmp_path, tmp_path / f"forked-{i}.log") for i in (0, 1)]

    # then each ends with status 0 and prints the same view of its start
    assert fresh.wait(timeout=120) == 0 and [task.wait(timeout=120) for task in forked] == [0, 0]
    expected = _seen(tmp_path / "fresh.log")
    for i in (0, 1):
        seen = _seen(tmp_path / f"forked-{i}.log")
        # (CPython adds LC_CTYPE to a fresh process's environment when the locale is C: not a task variable)
        for view in (seen, expected):
            view["environment"].pop("LC_CTYPE", None)
        assert {k: v for k, v in seen.items() if k not in FORK_ONLY} == {
            k: v for k, v in expected.items() if k not in FORK_ONLY
        }
        # and it starts with TensorFlow imported already, which a fresh process does not
        assert seen["tensorflow_loaded"] and not expected["tensorflow_loaded"]
    assert expected["name"] == "__main__" and expected["session_leader"] and expected["stdin_is_devnull"]
    assert expected["sitecustomize"] == str(tmp_path / "site" / "sitecustomize.py")
    assert expected["environment"]["SPOTFILL_PROBE"] == "a task variable"
    assert expected["tmp"] == task_environment["TMPDIR"]
    # and the output and error streams both reach the task's log
    assert "to stderr" in (tmp_path / "forked-0.log").read_text()
    # and each forked task draws its own random numbers (numpy's state is not the server's)
    assert _seen(tmp_path / "forked-0.log")["draw"] != _seen(tmp_path / "forked-1.log")["draw"]


@pytest.mark.parametrize(
    ("end", "status", "logged"), [("3", 3, ""), ("raise", 1, "RuntimeError: the probe failed")]
)
def test_a_forked_task_ends_with_the_status_a_fresh_process_ends_with(
    server, task_environment, tmp_path, end, status, logged
):
    environment = {**task_environment, "PROBE_END": end}
    fresh = _fresh(environment, tmp_path, tmp_path / "fresh.log")
    forked = server.spawn(PROBE, environment, tmp_path, tmp_path / "forked.log")

    assert fresh.wait(timeout=120) == status
    assert forked.wait(timeout=120) == status
    assert logged in (tmp_path / "forked.log").read_text()


def test_a_forked_task_is_stopped_by_signals_as_a_fresh_process_is(server, task_environment, tmp_path):
    # given a task that drains on SIGTERM and one that ignores nothing
    draining = server.spawn(PROBE, {**task_environment, "PROBE_END": "term"}, tmp_path, tmp_path / "term.log")
    waiting = server.spawn(PROBE, {**task_environment, "PROBE_END": "wait"}, tmp_path, tmp_path / "wait.log")
    for log in ("term.log", "wait.log"):
        eventually(lambda log=log: "waiting" in (tmp_path / log).read_text(), timeout=120)

    # when the agent stops them as ECS does: SIGTERM to the process, SIGKILL to its process group
    draining.send_signal(signal.SIGTERM)
    os.killpg(waiting.pid, signal.SIGKILL)

    # then the first drains and exits 0, the second is killed
    assert draining.wait(timeout=60) == 0
    assert "drained" in (tmp_path / "term.log").read_text()
    assert waiting.wait(timeout=60) == -signal.SIGKILL
    # and wait() before the end raises as subprocess.Popen's does
    still = server.spawn(PROBE, {**task_environment, "PROBE_END": "wait"}, tmp_path, tmp_path / "still.log")
    with pytest.raises(subprocess.TimeoutExpired):
        still.wait(timeout=0.1)
    still.kill()
    assert still.wait(timeout=60) == -signal.SIGKILL


def test_the_server_runs_only_its_modules_and_its_tasks_end_with_it(task_environment, tmp_path):
    # given a fork server of its own, running a task
    environment = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR", "PYTHONPATH") if k in os.environ}
    fork_server = ForkServer({**environment, "PYTHONUNBUFFERED": "1"}, tmp_path / "server.log", (PROBE,))
    try:
        # then a module it was not started for is refused
        with pytest.raises(ForkServerError, match="runs only spotfill_probe_task, not spotfill_worker"):
            fork_server.spawn("spotfill_worker", task_environment, tmp_path, tmp_path / "refused.log")
        task = fork_server.spawn(
            PROBE, {**task_environment, "PROBE_END": "wait"}, tmp_path, tmp_path / "task.log"
        )
        eventually(lambda: "waiting" in (tmp_path / "task.log").read_text(), timeout=120)
    finally:
        # when the server stops
        fork_server.close()

    # then its task is gone with it
    assert task.wait(timeout=60) == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(task.pid, 0)
    # and no new task can start
    with pytest.raises(ForkServerError, match="fork server exited"):
        fork_server.spawn(PROBE, task_environment, tmp_path, tmp_path / "late.log")
