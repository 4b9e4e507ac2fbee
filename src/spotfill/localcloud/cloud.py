"""The local cloud: the whole spotfill stack on one machine, no AWS account.

`LocalCloud` starts moto's server on loopback (Step Functions execution on), patches what moto lacks
(`spotfill.localcloud.patches`), runs Lambda invocations through the real handlers in process
(`spotfill.lambdas.inprocess_lambdas`), deploys `template.yaml` with `spotfill.deploy.deploy_stack`, and
runs the physics: the EC2 emulator (boot delay, maintained fleets), the ECS agent (real worker processes),
execution status events, and optionally chaos.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3

from spotfill.localcloud.agent import EcsAgent, check_instance_speed
from spotfill.localcloud.chaos import PROGRESS_PER_WORKER, Chaos, ChaosSpec
from spotfill.localcloud.events import ExecutionStatusEvents, fire_schedule_rule
from spotfill.localcloud.fleet import FleetEmulator
from spotfill.localcloud.forkserver import enabled_by_environment
from spotfill.localcloud.guard import Credentials
from spotfill.localcloud.patches import install as install_patches
from spotfill.localcloud.patches.account_limits import raise_spot_quotas
from spotfill.localcloud.patches.fleet_visibility import FLEET_VISIBILITY
from spotfill.localcloud.patches.fleets import set_failing_pools
from spotfill.localcloud.server import REGION, EmulatorServer, credential_environment
from spotfill.service_models import share_service_models

log = logging.getLogger(__name__)


RUN_DIR_PREFIX = "spotfill-local-"  # a temporary run folder's name
OWNER_FILE = ".spotfill-owner"  # in a temporary run folder: `pid:start time` of the process that removes it
# How long a finished run may take to leave nothing behind (workers stopping within their stop timeout, fleets
# and instances ending): generous, because a machine busy with other work stops workers slowly, and waiting
# ends as soon as nothing is left.
IDLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class LocalCloudOptions:
    port: int | None = None
    # EC2's physics, in seconds (on AWS: instances boot and register over minutes). A fleet's first instance
    # runs `boot_delay` after launch, the others one by one, `boot_interval` apart.
    boot_delay: float = 2.0
    boot_interval: float = 0.5
    # Pools EC2 cannot launch into: instance type (or "type@zone") -> error code (patches.fleets.POOL_ERRORS)
    failing_pools: dict[str, str] = field(default_factory=dict)
    # Seconds a new fleet stays unknown to the calls naming it, as EC2's eventually consistent API may answer
    # (`patches.fleet_visibility.FLEET_VISIBILITY`); 0: visible at once.
    fleet_visibility_lag: float = 0.0
    chaos: ChaosSpec | None = None
    # Worker logs, emulator and function logs. None: a temporary folder, removed when the cloud stops unless
    # keep_run_dir (a given run_dir is always kept).
    run_dir: Path | None = None
    keep_run_dir: bool = False
    stack_name: str = "spotfill"
    # Variables laid over every worker's task environment (tests shorten SQS leases with it).
    worker_environment: dict[str, str] = field(default_factory=dict)
    # The only credentials the endpoint accepts; None: a fresh random access key (what `local up` prints).
    credentials: Credentials | None = None
    # Test-only (the CLI never sets it): the agent may run `python -m MODULE` for these modules besides the
    # worker, so the physics tests can run a stand-in worker.
    extra_worker_modules: tuple[str, ...] = ()
    # How fast each instance type's workers predict relative to this machine, in (0, 1] (types not named: 1):
    # the agent has a slowed type's workers sleep after each batch (`spotfill_worker.pacing`) so that, burning
    # no CPU, the type delivers fewer predictions per second, as a slower instance type would.
    instance_speed: dict[str, float] = field(default_factory=dict)
    # Fork each task's worker from a Python that has imported TensorFlow already (spotfill.localcloud.
    # forkserver) instead of starting a fresh one: a worker is busy within a second of its task starting, not
    # after seconds of imports. Off by default, so that worker start costs here what `spotfill plan --local`
    # models; `SPOTFILL_LOCAL_CLOUD_FORK_WORKERS=1` turns it on (the test suite does).
    fork_workers: bool = field(default_factory=enabled_by_environment)

    def __post_init__(self) -> None:
        check_instance_speed(self.instance_speed)


class LocalCloud:
    """Use as a context manager: `with LocalCloud() as cloud: ...`; `cloud.endpoint_url`, `cloud.outputs`."""

    def __init__(self, options: LocalCloudOptions | None = None) -> None:
        self.options = options or LocalCloudOptions()
        self.server = EmulatorServer(self.options.port, self.options.credentials)
        self.region = REGION
        self._clients: dict[tuple[str, str | None, str], Any] = {}
        self._clients_lock = threading.Lock()
        self.run_dir = self.options.run_dir or Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
        self.removes_run_dir = self.options.run_dir is None and not self.options.keep_run_dir
        if self.removes_run_dir:
            # A process killed with SIGKILL cannot remove its folder: the next local cloud does.
            (self.run_dir / OWNER_FILE).write_text(_process_identity(os.getpid()) or "")
            reclaim_abandoned_run_dirs(self.run_dir.parent)
        self.outputs: Any = None
        self.fleet: FleetEmulator | None = None
        self.agent: EcsAgent | None = None
        self.chaos: Chaos | None = None
        self.dispatcher: Any = None
        self._execution_events: ExecutionStatusEvents | None = None
        self._stack = contextlib.ExitStack()
        self._saved_environment: dict[str, str | None] = {}

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    @property
    def client_environment(self) -> dict[str, str]:
        """What a client (the CLI, a worker, the AWS CLI) needs in its environment to reach this cloud."""
        return {**credential_environment(self.credentials), "AWS_ENDPOINT_URL": self.endpoint_url}

    @property
    def credentials(self) -> Credentials:
        """The only access key the endpoint accepts."""
        return self.server.credentials

    def client(self, service: str) -> Any:
        """A client of this cloud as its administrator, made once per service (a boto3 client is safe to share
        between threads, and making one costs tens of milliseconds of CPU: `wait_idle` asks every quarter
        second)."""
        key = (service, self.endpoint_url, self.credentials.access_key_id)
        with self._clients_lock:
            if key not in self._clients:
                self._clients[key] = boto3.client(
                    service,
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    aws_access_key_id=self.credentials.access_key_id,
                    aws_secret_access_key=self.credentials.secret_access_key,
                    aws_session_token=None,
                )
            return self._clients[key]

    def __enter__(self) -> LocalCloud:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log_emulator_to(self.run_dir / "emulator.log")
        self.server.start()
        self._stack.callback(self.server.stop)
        # The handlers run in this process and reach AWS through boto3: point it at the emulator.
        self._set_environment(self.client_environment)
        # This process makes sessions as it goes (one per endpoint and credentials, one per Task of moto's
        # Step Functions interpreter): one parse of each service's model serves them all.
        share_service_models()
        _forget_cached_clients()
        self._stack.callback(_forget_cached_clients)
        install_patches(self.endpoint_url)
        raise_spot_quotas(self.region)
        set_failing_pools(self.options.failing_pools)
        self._stack.callback(set_failing_pools, {})
        FLEET_VISIBILITY.set(self.options.fleet_visibility_lag)
        self._stack.callback(FLEET_VISIBILITY.set, 0.0)
        from spotfill.lambdas import inprocess_lambdas

        # IAM enforced: each handler acts as its function's role (the ECS agent's workers as the task role).
        self.dispatcher = self._stack.enter_context(inprocess_lambdas(enforce_iam=True, iam_log_size=10_000))
        from spotfill.deploy import deploy_stack

        self.outputs = deploy_stack(self.options.stack_name, region=self.region)
        self._set_environment(self._shared_function_environment())
        self._log_functions_to(self.run_dir / "lambda.log")
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        environment = {**self.options.worker_environment, **self.client_environment}
        if self.options.chaos and (self.options.chaos.kill or self.options.chaos.interrupt):
            # Chaos paces its events by the shards a worker holds: the one in hand and one fetched ahead.
            environment.setdefault("SPOTFILL_PREFETCH_SHARDS", str(PROGRESS_PER_WORKER - 1))
        self.agent = EcsAgent(
            self.endpoint_url,
            self.region,
            environment,
            self.run_dir / "logs",
            credentials=self.credentials,
            extra_worker_modules=self.options.extra_worker_modules,
            instance_speed=self.options.instance_speed,
            fork_workers=self.options.fork_workers,
        )
        self.fleet = FleetEmulator(
            self.region,
            self.options.boot_delay,
            on_boot=self.agent.on_boot,
            on_terminate=self.agent.on_terminate,
            boot_interval=self.options.boot_interval,
        )
        self._execution_events = ExecutionStatusEvents(self.endpoint_url, self.region)
        self.agent.start()
        self._stack.callback(self.agent.stop)
        self.fleet.start()
        self._stack.callback(self.fleet.stop)
        self._execution_events.start()
        self._stack.callback(self._execution_events.stop)
        if self.options.chaos and not self.options.chaos.empty:
            self.chaos = Chaos(self.options.chaos, self.fleet, self.agent)
            self.chaos.start()
            self._stack.callback(self.chaos.stop)

    def _log_emulator_to(self, path: Path) -> None:
        """The emulator's request log and server-side errors go to a file, not the user's terminal."""
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        for name in ("werkzeug", "moto", "spotfill.localcloud"):
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            logger.propagate = False
            self._stack.callback(logger.removeHandler, handler)
        logging.getLogger("spotfill.localcloud").setLevel(logging.INFO)
        self._stack.callback(handler.close)

    def _log_functions_to(self, path: Path) -> None:
        """What the handlers log (Lambda's CloudWatch Logs) goes to a file: their loggers write to stdout, so
        the handlers are imported now and their stream handlers pointed at the file."""
        import importlib

        for function in self.outputs.functions.values():
            with contextlib.suppress(ImportError, AttributeError, ValueError):
                importlib.import_module(function.handler.rsplit(".", 1)[0])
        stream = open(path, "a")  # noqa: SIM115 - closed by the exit stack
        self._stack.callback(stream.close)
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            if not isinstance(logger, logging.Logger) or logger.name.startswith(
                ("spotfill.localcloud", "werkzeug")
            ):
                continue
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr):
                    previous = handler.setStream(stream)
                    self._stack.callback(handler.setStream, previous)
        # Lambda sends a function's stdout to its logs, so what a handler prints (Powertools' metric records)
        # goes to the file too; other threads (the live display) keep the terminal. Installed after the
        # loggers above are re-pointed, which recognise the terminal by the stream object itself.
        routed = _InvocationStdout(sys.stdout, stream, self.dispatcher.current_invocation)
        sys.stdout, previous_stdout = routed, sys.stdout
        self._stack.callback(setattr, sys, "stdout", previous_stdout)

    def stop(self) -> None:
        try:
            self._stack.close()
        finally:
            self._restore_environment()
            if self.removes_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def _shared_function_environment(self) -> dict[str, str]:
        """The variables every deployed function has, with the same value (the template's `Globals`), held in
        this process's environment while the cloud runs. An invocation applies its function's variables to
        os.environ and restores them after (`spotfill.lambdas`); restoring a variable the process lacked
        removes it, and a thread copying os.environ meanwhile (moto's Step Functions interpreter making a
        client for another run's Task) fails with KeyError on the removed name. Held here, a restore puts back
        the same value and removes nothing."""
        shared: dict[str, str] | None = None
        for page in self.client("lambda").get_paginator("list_functions").paginate():
            for function in page["Functions"]:
                variables = function.get("Environment", {}).get("Variables", {})
                shared = (
                    dict(variables)
                    if shared is None
                    else {k: v for k, v in shared.items() if variables.get(k) == v}
                )
        return shared or {}

    def _set_environment(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self._saved_environment.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _restore_environment(self) -> None:
        for key, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_environment.clear()

    # --- for the CLI, tests and users -------------------------------------------------------------------

    def fire_schedule(self, rule_name: str, when: datetime | None = None) -> int:
        return fire_schedule_rule(self.region, rule_name, when)

    def stack_outputs(self) -> dict[str, str]:
        return {
            "Endpoint": self.endpoint_url,
            "Region": self.region,
            "ControlBucket": self.outputs.control_bucket,
            "DataBucket": self.outputs.data_bucket,
            "StateMachineArn": self.outputs.state_machine_arn,
            **self.outputs.outputs,
        }

    def wait_idle(self, timeout: float = IDLE_TIMEOUT) -> bool:
        """True once no instance, fleet or task is left (what a finished run must leave behind), checked every
        quarter second for `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.leftovers():
                return True
            time.sleep(0.25)
        return False

    def leftovers(self) -> list[str]:
        """Everything still running or allocated beyond the stack itself: fleets, instances, tasks (and any
        process an exited task's worker left running), services, clusters and queues (what a finished run
        must leave behind: nothing)."""
        found: list[str] = []
        ec2, ecs, sqs = self.client("ec2"), self.client("ecs"), self.client("sqs")
        stack_owned = self._stack_resources()
        for config in ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]:
            if config["SpotFleetRequestState"] in ("active", "modifying", "submitted", "cancelled_running"):
                found.append(f"fleet {config['SpotFleetRequestId']} {config['SpotFleetRequestState']}")
        for fleet in ec2.describe_fleets()["Fleets"]:
            if fleet["FleetState"] in ("active", "modifying", "submitted", "deleted_running"):
                found.append(f"fleet {fleet['FleetId']} {fleet['FleetState']}")
        for reservation in ec2.describe_instances(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )["Reservations"]:
            found.extend(f"instance {i['InstanceId']}" for i in reservation["Instances"])
        if self.agent is not None:
            found.extend(f"task {t.task_id} ({t.service})" for t in list(self.agent.tasks) if t.alive)
            found.extend(self.agent.stray_processes())
        for cluster_arn in ecs.list_clusters()["clusterArns"]:
            name = cluster_arn.rsplit("/", 1)[-1]
            services = ecs.list_services(cluster=cluster_arn)["serviceArns"]
            if services:
                described = ecs.describe_services(cluster=cluster_arn, services=services)["services"]
                found.extend(f"service {s['serviceName']}" for s in described if s["status"] == "ACTIVE")
            if name not in stack_owned and cluster_arn not in stack_owned:
                described = ecs.describe_clusters(clusters=[cluster_arn])["clusters"]
                if described and described[0]["status"] == "ACTIVE":
                    found.append(f"cluster {name}")
        # A queue's physical id is its URL, whose host is the emulator's own idea of it: compare by name.
        stack_queues = {owned.rsplit("/", 1)[-1] for owned in stack_owned}
        found.extend(
            f"queue {url}"
            for url in sqs.list_queues().get("QueueUrls", [])
            if url.rsplit("/", 1)[-1] not in stack_queues
        )
        return found

    def _stack_resources(self) -> set[str]:
        cloudformation = self.client("cloudformation")
        owned: set[str] = set()
        for page in cloudformation.get_paginator("list_stack_resources").paginate(
            StackName=self.options.stack_name
        ):
            owned.update(r.get("PhysicalResourceId", "") for r in page["StackResourceSummaries"])
        return owned


def reclaim_abandoned_run_dirs(parent: Path) -> list[Path]:
    """Remove the temporary folders (`spotfill-local-*` holding an owner file) whose local cloud's process is
    gone, as after a SIGKILL; kept folders have no owner file and are never touched. The folders removed."""
    removed = []
    for directory in parent.glob(f"{RUN_DIR_PREFIX}*"):
        try:
            owner = (directory / OWNER_FILE).read_text().strip()
        except OSError:
            continue
        pid = owner.split(":", 1)[0]
        if not pid.isdigit() or _process_identity(int(pid)) == owner:
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def _process_identity(pid: int) -> str | None:
    """`pid:start time` of a live process (the start time tells a reused pid apart, where /proc has it), or
    None when no such process exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "?"
    return f"{pid}:{started}"


def _forget_cached_clients() -> None:
    """The control plane caches boto3 clients per process (a Lambda container's lifetime); a new local cloud
    is a new endpoint with its own credentials, so clients made for an earlier one must go, and so must
    boto3's default session (it keeps the credentials it first resolved)."""
    boto3.DEFAULT_SESSION = None
    try:
        from spotfill_control import aws, config
    except ImportError:
        return
    aws.reset_clients()
    config.settings.cache_clear()


class _InvocationStdout:
    """sys.stdout for a process that runs Lambda handlers in threads: writes made while the calling thread
    runs an invocation go to the function log, every other write to the terminal as before."""

    def __init__(self, terminal: Any, function_log: Any, current_invocation: Any) -> None:
        self._terminal = terminal
        self._function_log = function_log
        self._current_invocation = current_invocation

    def _target(self) -> Any:
        return self._function_log if self._current_invocation() is not None else self._terminal

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._terminal, name)
