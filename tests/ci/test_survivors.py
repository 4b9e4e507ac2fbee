"""`.ci/survivors`, the check `make test` ends with: no process a run started outlives it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SURVIVORS = Path(__file__).resolve().parents[2] / ".ci" / "survivors"


def _check(run_tmpdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SURVIVORS, str(run_tmpdir)], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_process_left_alive_by_a_run_fails_the_check_named_and_is_stopped(tmp_path):
    # given a process a run started (it inherited the run's TMPDIR) still alive after the run
    run_tmpdir = tmp_path / "run"
    left = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={**os.environ, "TMPDIR": str(run_tmpdir)},
        start_new_session=True,
    )
    try:
        # when the run is checked
        checked = _check(run_tmpdir)

        # then the check fails naming the process, and the process is stopped
        assert checked.returncode == 1
        assert f"  {left.pid} {sys.executable} -c" in checked.stderr
        assert left.wait(timeout=30) == -9
    finally:
        left.kill()
        left.wait()


def test_a_run_that_left_nothing_alive_passes_the_check_and_other_runs_processes_are_not_touched(tmp_path):
    # given a live process of another run (another TMPDIR)
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={**os.environ, "TMPDIR": str(tmp_path / "other-run")},
        start_new_session=True,
    )
    try:
        # when a run that left nothing is checked / then it passes and the other run's process lives on
        checked = _check(tmp_path / "run")
        assert (checked.returncode, checked.stderr) == (0, "")
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_process_whose_tmpdir_lies_below_the_runs_fails_the_check(tmp_path):
    # given a process left alive with a TMPDIR of its own inside the run's (as a local-cloud worker has)
    run_tmpdir = tmp_path / "run"
    left = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={**os.environ, "TMPDIR": str(run_tmpdir / "spotfill-local-x" / "tasks" / "t-1" / "tmp")},
        start_new_session=True,
    )
    try:
        # when the run is checked / then it fails naming the process, which is stopped
        checked = _check(run_tmpdir)
        assert checked.returncode == 1 and f"  {left.pid} " in checked.stderr
        assert left.wait(timeout=30) == -9
    finally:
        left.kill()
        left.wait()
