"""AWS scaffolding shared by every test tier: fake credentials, a Lambda context, moto.

Tiers keep their own fixtures in their own folders (tests/control, tests/sfn, tests/worker, tests/e2e);
this file holds only what all of them need.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from spotfill.service_models import share_service_models

REGION = "us-east-1"
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
# The workers (and the physics tests' stand-in) by their command lines: `python -m <module>`.
WORKER_COMMANDS = (b"spotfill_worker", b"spotfill_fake_worker")
SURVIVOR_GRACE_SECONDS = 15.0  # how long a worker stopped at the very end may take to exit
_SUBREAPER = pytest.StashKey[bool]()  # whether this session became its processes' subreaper


# --- local-cloud workers forked warm ---------------------------------------------------------------------

# Every local cloud the tests start (in this process, or in a `spotfill run --local` / `local up` they run)
# forks its workers from a Python that has TensorFlow imported (spotfill.localcloud.forkserver) instead of
# starting each fresh: the suite starts about a hundred workers, and each fresh one spends seconds of CPU on
# imports. tests/e2e/test_real_client.py runs `local up` as a user does (fresh processes, the default), and
# tests/e2e/test_fork_server.py holds a forked task to what a fresh one sees.
os.environ.setdefault("SPOTFILL_LOCAL_CLOUD_FORK_WORKERS", "1")


# --- botocore's service models parsed once ------------------------------------------------------------------

# `mock_aws` gives every test a fresh default session, which would parse again the JSON model of every service
# the test makes a client of (spotfill.service_models). Not in the worker tier (tests/worker alone): its
# workers run in the test process as in their image, where every session parses its own.
WORKER_TESTS = Path(__file__).resolve().parent / "worker"


def pytest_configure(config):
    paths = [Path(str(arg).split("::")[0]).resolve() for arg in config.args]
    if not paths or not all(path.is_relative_to(WORKER_TESTS) for path in paths):
        share_service_models()


# --- the longest modules first ----------------------------------------------------------------------------

# The modules that take longest (most of their time is waiting on polls of a local cloud or a deployed
# stack), longest first. Spread over xdist workers a module to a worker (.ci/test), a suite ends when its
# last module does: these start first, so the many short modules fill the workers' time around them instead
# of one of these starting last and running alone. Only the order changes; a module missing here runs after.
LONGEST_MODULES = (
    "tests/sfn/test_sfn_scenarios.py",
    "tests/e2e/test_chaos.py",
    "tests/e2e/test_backfill.py",
    "tests/e2e/test_run_local.py",
    "tests/e2e/test_model_runtime.py",
    "tests/benchmarks/test_scale_rehearsal.py",
    "tests/e2e/test_budget.py",
    "tests/e2e/test_failing_model.py",
    "tests/e2e/test_cli.py",
    "tests/e2e/test_physics.py",
    "tests/stack/test_iam_least_privilege.py",
    "tests/control_monitor/test_fleet_scale.py",
    "tests/sfn/test_sfn_watch.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {str(config.rootpath / module): i for i, module in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(str(item.path), len(rank)))


# --- no spotfill_worker process the tests started outlives them --------------------------------------------


def pytest_sessionstart(session):
    """Make this process the subreaper of everything the tests start (Linux): a process orphaned by its
    parent (a worker's forked child, a worker whose local cloud died) is adopted by this one instead of
    init, so at the end of the session it can still be told apart from other sessions' processes."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        session.config.stash[_SUBREAPER] = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def pytest_sessionfinish(session, exitstatus):
    """Fail the session when a `spotfill_worker` process it started is still running (and end it)."""
    if not session.config.stash.get(_SUBREAPER, False):
        return
    deadline = time.monotonic() + SURVIVOR_GRACE_SECONDS
    survivors = _descendant_workers(os.getpid())
    while survivors and time.monotonic() < deadline:
        time.sleep(0.5)
        survivors = _descendant_workers(os.getpid())
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if survivors:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        listed = "; ".join(f"{pid}: {command}" for pid, command in survivors.items())
        message = f"spotfill_worker processes outlived the tests that started them (killed now): {listed}"
        if reporter is not None:
            reporter.write_line(message, red=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _descendant_workers(root: int) -> dict[int, str]:
    """Live processes under `root` whose command line names the worker: pid -> command line."""
    parents: dict[int, int] = {}
    commands: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):  # a zombie has exited; only its parent's wait is left
            parents[int(entry.name)] = int(fields[1])
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, stack = {}, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if any(name in commands.get(pid, b"") for name in WORKER_COMMANDS):
            found[pid] = commands[pid].replace(b"\0", b" ").decode(errors="replace").strip()
        stack.extend(children.get(pid, []))
    return found


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch):
    """Fake credentials so no test can ever reach a real account."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    if "AWS_ENDPOINT_URL" in os.environ and not os.environ.get("SPOTFILL_KEEP_ENDPOINT"):
        monkeypatch.delenv("AWS_ENDPOINT_URL")


@dataclass
class FakeLambdaContext:
    function_name: str = "spotfill-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:spotfill-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    log_group_name: str = "/aws/lambda/spotfill-test"
    log_stream_name: str = "2026/11/27/[$LATEST]test"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@pytest.fixture
def month_long_run() -> tuple[dict, dict]:
    """(report, series) of a synthetic month-long run at the series' bound of 720 samples (an hour apart):
    two instance types, spot and on demand, interruptions, a cap. The report page's size and browser tests
    (tests/control_monitor, tests/e2e) draw it."""
    import random

    rng = random.Random(11)
    samples, done, spent, interruptions = [], 0, 0.0, 0
    for i in range(720):
        done = min(100_000, done + rng.randint(100, 180))
        spent += rng.uniform(0.4, 0.6)
        interruptions += i % 53 == 7
        samples.append(
            {
                "t": 1_790_000_000.0 + 3600 * i,
                "shards_done": done,
                "shards_total": 100_000,
                "predictions": done * 10_000,
                "predictions_per_second": rng.uniform(350_000, 420_000),
                "capacity": {
                    "c5.xlarge/spot": float(rng.randint(6, 8)),
                    "c6i.xlarge/spot": float(rng.randint(0, 4)),
                    "c5.xlarge/on-demand": 1.0,
                },
                "running_tasks": rng.randint(20, 26),
                "cost_usd": round(spent, 6),
                "interruptions": interruptions,
            }
        )
    report = {
        "run_id": "month-20261101000000-abcdef",
        "status": "succeeded",
        "reason": "every shard has its output",
        "shards": {"total": 100_000, "succeeded": 100_000, "failed": 0, "failed_keys": []},
        "predictions": {"total": 1_000_000_000, "exact": False, "by_purchase_option": {}},
        "instances": {
            "count": 40,
            "hours_by_type": {"c5.xlarge": 5_800.0, "c6i.xlarge": 1_400.0},
            "interruptions": interruptions,
        },
        "budget": {"max_total_usd": 450.0, "spent_usd": round(spent, 6)},
        "cost_usd": {
            "total": round(spent, 6),
            "on_demand_equivalent": 1_230.0,
            "per_million_predictions": spent / 1_000,
            "on_demand_prices": {
                "c5.xlarge": {"usd_per_hour": 0.17, "source": "price-list"},
                "c6i.xlarge": {"usd_per_hour": 0.17, "source": "price-list"},
            },
        },
        "report_uri": "s3://control/reports/month-20261101000000-abcdef.json",
    }
    return report, {"interval_seconds": 3600.0, "samples": samples}


class FleetLag:
    """The local cloud's EC2 not knowing a new fleet for `seconds`
    (`patches.fleet_visibility.FLEET_VISIBILITY`), on a clock the test moves (`advance`)."""

    def __init__(self, seconds: float) -> None:
        from spotfill.localcloud.patches.fleet_visibility import FLEET_VISIBILITY

        self.now = 0.0
        self.seconds = seconds
        FLEET_VISIBILITY.set(seconds, clock=lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fleet_lag():
    """New fleets unknown to EC2 for 60 s of the test's clock, as EC2's eventually consistent API may answer
    ("Eventual consistency in the Amazon EC2 API", EC2 Developer Guide)."""
    from spotfill.localcloud.patches.fleet_visibility import FLEET_VISIBILITY

    yield FleetLag(60.0)
    FLEET_VISIBILITY.set(0.0)
