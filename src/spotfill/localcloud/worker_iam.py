"""IAM in the local cloud's worker processes: each acts as its ECS task role, as a container does on ECS.

The emulated ECS agent starts a task as `python -m spotfill_worker`, unchanged. It puts a directory holding a
`sitecustomize` module first on the child's PYTHONPATH (with this package's own source after it, so the child
imports this very code) and names the role in `SPOTFILL_IAM_ROLE_ARN` (the task definition's `taskRoleArn`)
and the session in `SPOTFILL_IAM_SESSION_NAME` (the task id). Python imports `sitecustomize` at start-up,
before any of the worker's code: it reads the role's policies from the emulator's IAM (inline and attached)
and installs `spotfill.iam`'s enforcement for the whole process, so every AWS call of the worker is evaluated
against the task role and a call the role does not grant fails as it would on AWS. When the enforcement
cannot be installed the process exits with an error instead of running unchecked.

The same `sitecustomize` ties every worker to the local cloud's process (`SPOTFILL_LOCAL_CLOUD_PID`): a
watchdog thread exits the worker as soon as its parent changes, so killing the local cloud (SIGKILL included)
never leaves workers behind retrying a dead endpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import spotfill

ROLE_VARIABLE = "SPOTFILL_IAM_ROLE_ARN"
SESSION_VARIABLE = "SPOTFILL_IAM_SESSION_NAME"
ENFORCED_LINE = "spotfill: IAM enforced, acting as "  # written to a task's log at start, then the session ARN

LIFELINE_VARIABLE = "SPOTFILL_LOCAL_CLOUD_PID"  # the local cloud's process: the worker exits when it is gone

_SITECUSTOMIZE = '''"""Written by spotfill's local cloud: this process dies with the local cloud and acts as
its ECS task role."""

import os

_cloud = os.environ.pop("SPOTFILL_LOCAL_CLOUD_PID", "")
if _cloud.isdigit():
    # The local cloud (the emulator these workers call) is this process's parent. When it is gone (killed,
    # even with SIGKILL), the parent changes (the orphan is adopted): exit at once instead of retrying a dead
    # endpoint. A watchdog thread, not PR_SET_PDEATHSIG, which fires when the forking *thread* exits and is
    # Linux-only. Popped, so processes this one starts do not watch the wrong parent.
    import signal
    import sys
    import threading
    import time

    def _lifeline(cloud: int = int(_cloud)) -> None:
        while os.getppid() == cloud:
            time.sleep(0.5)
        print(f"spotfill: the local cloud (process {cloud}) is gone; exiting", file=sys.stderr, flush=True)
        if os.getpgrp() == os.getpid():
            # A task's worker leads its process group: what it started goes with it, as a container's
            # processes go with the container (a child forked by a library has no lifeline of its own).
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=_lifeline, name="spotfill-lifeline", daemon=True).start()

if os.environ.get("SPOTFILL_IAM_ROLE_ARN"):
    from spotfill.localcloud.worker_iam import install_from_environment

    install_from_environment()
'''


def site_directory(parent: Path) -> Path:
    """A directory holding the `sitecustomize` that installs the enforcement in a worker process."""
    directory = parent / "iam-site"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return directory


def task_environment(role_arn: str, task_id: str, site: Path, pythonpath: str | None) -> dict[str, str]:
    """The variables that make a worker process act as `role_arn`."""
    return {ROLE_VARIABLE: role_arn, SESSION_VARIABLE: task_id, "PYTHONPATH": site_path(site, pythonpath)}


def lifeline_environment(site: Path, pythonpath: str | None) -> dict[str, str]:
    """The variables that make a worker process exit when this process (the local cloud) is gone."""
    return {LIFELINE_VARIABLE: str(os.getpid()), "PYTHONPATH": site_path(site, pythonpath)}


def site_path(site: Path, pythonpath: str | None) -> str:
    """PYTHONPATH with the `sitecustomize` directory first and this package's own source after it."""
    source = str(Path(spotfill.__file__).resolve().parents[1])
    parts = [str(site), source, *(pythonpath.split(os.pathsep) if pythonpath else [])]
    return os.pathsep.join(dict.fromkeys(p for p in parts if p))


def install_from_environment() -> None:
    """Act as the role `SPOTFILL_IAM_ROLE_ARN` names for the rest of this process, or exit saying why not."""
    from spotfill import iam

    role_arn = os.environ[ROLE_VARIABLE]
    try:
        iam.enforce_in_this_process(role_arn, os.environ.get(SESSION_VARIABLE) or "task")
    except Exception as exc:
        print(
            f"spotfill: cannot act as the task role {role_arn}: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        raise SystemExit(1) from exc
    principal = iam.current_principal()
    print(f"{ENFORCED_LINE}{principal.arn if principal else role_arn}", file=sys.stderr, flush=True)
