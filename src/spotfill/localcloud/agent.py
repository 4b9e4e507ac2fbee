"""An emulated ECS agent on every fleet instance: it joins the cluster its user data names and runs the
services' tasks as local worker processes.

moto keeps ECS bookkeeping (clusters, services, task definitions, container instances) but runs nothing; it
reports a service's running count equal to its desired count. This agent is the part of ECS that a backfill
feels: a task is a real `python -m spotfill_worker` process with the task definition's environment, stopped
with SIGTERM then SIGKILL after the container's stop timeout, as ECS does on scale-down and on spot
draining, and replaced when it dies while its service still wants it.

Anyone who can register a task definition could otherwise run any program on this machine, so the agent runs
only the worker: a container whose entry point is set, whose command is anything but the image's default
(the worker) or `python -m spotfill_worker`, or whose environment names a variable other than the worker's
`SPOTFILL_*` settings, is refused: no process starts, the refusal goes to the agent's log and the task shows
as STOPPED with the reason as its `stoppedReason` (`ListTasks` with `desiredStatus=STOPPED`, `DescribeTasks`),
as ECS shows a task that cannot start. The process gets only the agent's own variables (the emulator's
endpoint and credentials, the task role's) and the task definition's `SPOTFILL_*` ones.

One module of about 670 lines: most of it is one class, `EcsAgent`, whose methods are the life of a task on
one instance (register, start, watch, stop, replace) over the same state behind one lock; split across
files, each part would reach into that state.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from spotfill.localcloud.fleet import Machine
from spotfill.localcloud.forkserver import ForkedProcess, ForkServer, ForkServerError
from spotfill.localcloud.guard import Credentials
from spotfill.localcloud.imds import InstanceMetadataService
from spotfill.localcloud.worker_iam import (
    ROLE_VARIABLE,
    SESSION_VARIABLE,
    lifeline_environment,
    site_directory,
)
from spotfill.localcloud.worker_iam import (
    task_environment as task_role_environment,
)

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0  # ECS's default when a container definition sets no stopTimeout
SHUTDOWN_GRACE = 10.0  # an instance's shutdown gives its containers this long after SIGTERM
DEREGISTRATION_DELAY = 5.0  # ECS notices a terminated instance and deregisters it after this long
_CLUSTER_LINE = re.compile(r"ECS_CLUSTER=([A-Za-z0-9_\-]+)")
_PYTHON = re.compile(r"^(python|python3(\.\d+)?)$")
WORKER_MODULE = "spotfill_worker"
# What a task definition's environment may set: the worker's settings (spotfill_worker.config), except the
# variables by which the agent makes a task act as its task role.
_TASK_VARIABLE = re.compile(r"^SPOTFILL_[A-Z0-9_]+$")
_AGENT_VARIABLES = frozenset({ROLE_VARIABLE, SESSION_VARIABLE})
# The parent's variables a worker process may inherit; everything AWS_* comes from the emulator instead.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "SYSTEMROOT", "TZ")
# The worker's local-cloud-only pacing (spotfill_worker.config `local_cloud_speed`): set by the agent alone,
# for the tasks of an instance type the local cloud slows (`LocalCloudOptions.instance_speed`).
SPEED_VARIABLE = "SPOTFILL_LOCAL_CLOUD_SPEED"


@dataclass
class Task:
    task_id: str
    cluster: str
    service: str
    task_definition_arn: str
    instance_id: str
    process: subprocess.Popen[bytes] | ForkedProcess
    log_path: Path
    stop_timeout: float
    scratch: Path | None = None  # its TMPDIR, gone with it (a container's /tmp goes with the container)
    started_at: float = field(default_factory=time.monotonic)
    stopping_since: float | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def shards_done(self) -> int:
        """The shards the worker has finished, by its log."""
        try:
            with open(self.log_path, "rb") as log:
                return log.read().count(b'"shard_done"')
        except OSError:
            return 0

    @property
    def busy(self) -> bool:
        """The worker has finished at least one shard (its model is loaded and it is pulling work)."""
        return self.shards_done > 0


class TaskRefused(Exception):
    """The task definition asks for something other than the worker; the message says what."""


@dataclass
class Registration:
    machine: Machine
    cluster: str
    container_instance_arn: str | None = None


class EcsAgent:
    """One agent loop for all instances (each instance's agent would do the same, just less efficiently)."""

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        environment: dict[str, str],
        log_dir: Path,
        tick: float = 0.5,
        credentials: Credentials | None = None,
        extra_worker_modules: tuple[str, ...] = (),
        instance_speed: dict[str, float] | None = None,
        fork_workers: bool = False,
    ) -> None:
        self.endpoint_url = endpoint_url
        # instance type -> relative speed (1: full speed); a slower type's tasks pace their predictions
        self.instance_speed = check_instance_speed(instance_speed or {})
        self.region = region
        self.environment = environment  # AWS_ENDPOINT_URL, the emulator's credentials, region
        self.log_dir = log_dir
        self.tick = tick
        # Test-only: modules besides the worker that a task may run with `python -m` (the CLI sets none).
        self.worker_modules = (WORKER_MODULE, *extra_worker_modules)
        # Tasks forked from a Python with TensorFlow imported (spotfill.localcloud.forkserver), or fresh ones.
        self.fork_server = (
            ForkServer(_process_environment(), log_dir.parent / "fork-server.log", self.worker_modules)
            if fork_workers
            else None
        )
        keys = (
            {
                "aws_access_key_id": credentials.access_key_id,
                "aws_secret_access_key": credentials.secret_access_key,
            }
            if credentials
            else {}
        )
        self.ec2 = boto3.client("ec2", endpoint_url=endpoint_url, region_name=region, **keys)
        self.ecs = boto3.client("ecs", endpoint_url=endpoint_url, region_name=region, **keys)
        self.refused: dict[str, str] = {}  # task definition ARN -> why the agent will not run it
        self.registrations: dict[str, Registration] = {}
        self.instance_clusters: dict[str, str] = {}  # every instance that ever joined -> its cluster
        self.tasks: list[Task] = []
        # Sessions of exited tasks (task id -> the worker's pid, which led its session) while anything
        # the worker started is still in them: on ECS nothing of a container outlives it.
        self._ended_sessions: dict[str, int] = {}
        self.tasks_started = 0
        self.tasks_died = 0
        self._task_definitions: dict[str, dict[str, Any]] = {}
        self._iam_site: Path | None = None  # the sitecustomize that makes a task act as its task role
        self.metadata = InstanceMetadataService(self._registered_machine)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="localcloud-ecs-agent", daemon=True)

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._iam_site = site_directory(self.log_dir.parent)
        if self.fork_server is not None:
            self.fork_server.start()
        self.metadata.start()
        self._thread.start()

    def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.metadata.stop()
        with self._lock:
            for task in self.tasks:
                self._signal(task, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for task in self.tasks:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    task.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                self._signal(task, signal.SIGKILL)
                task.process.wait()
                _remove_scratch(task)
                self._ended_sessions[task.task_id] = task.process.pid
            self.tasks.clear()
            if self.fork_server is not None:
                self.fork_server.close()
            # What a worker left behind goes with the local cloud, as a container's processes go with it.
            for session in self._ended_sessions.values():
                for pid, _ in session_processes(session):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self._ended_sessions.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.step()
            except Exception:
                log.exception("ECS agent tick failed")

    # --- instances -------------------------------------------------------------------------------------

    def on_boot(self, machine: Machine) -> None:
        """The instance finished booting: its user data says which cluster to join."""
        user_data = self.ec2.describe_instance_attribute(InstanceId=machine.instance_id, Attribute="userData")
        encoded = user_data.get("UserData", {}).get("Value") or ""
        text = _decode_user_data(encoded)
        match = _CLUSTER_LINE.search(text)
        if self.fork_server is not None:
            self.fork_server.preload()  # its imports run while the instance registers and its service scales
        with self._lock:
            self.instance_clusters[machine.instance_id] = match.group(1) if match else "default"
            self.registrations[machine.instance_id] = Registration(
                machine, match.group(1) if match else "default"
            )

    def _registered_machine(self, instance_id: str) -> Machine | None:
        with self._lock:
            registration = self.registrations.get(instance_id)
        return registration.machine if registration else None

    def on_terminate(self, machine: Machine) -> None:
        """The instance is shutting down: its OS stops the containers (SIGTERM, then SIGKILL after a short
        shutdown grace), as when a fleet's lowered capacity or its cancellation terminates it."""
        with self._lock:
            registration = self.registrations.pop(machine.instance_id, None)
            for task in [t for t in self.tasks if t.instance_id == machine.instance_id]:
                task.stop_timeout = min(task.stop_timeout, SHUTDOWN_GRACE)
                self._begin_stop(task)
        if registration and registration.container_instance_arn:
            # ECS deregisters a terminated instance on its own, a little later (teardown may do it first).
            timer = threading.Timer(DEREGISTRATION_DELAY, self._deregister, args=(registration,))
            timer.daemon = True
            timer.start()

    def _deregister(self, registration: Registration) -> None:
        if self._stop.is_set() or not self._still_registered(registration):
            return
        with contextlib.suppress(ClientError):
            self.ecs.deregister_container_instance(
                cluster=registration.cluster,
                containerInstance=registration.container_instance_arn,
                force=True,
            )

    def _still_registered(self, registration: Registration) -> bool:
        # moto answers a deregistration from a deleted cluster with a 500, not ECS's ClusterNotFoundException.
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ecs.models import ecs_backends

        backend = ecs_backends[DEFAULT_ACCOUNT_ID][self.region]
        instances = backend.container_instances.get(registration.cluster, {})
        return registration.cluster in backend.clusters and any(
            ci.container_instance_arn == registration.container_instance_arn for ci in instances.values()
        )

    def drain(self, instance_id: str) -> list[Task]:
        """Spot draining: SIGTERM to every task on the instance; the stop timeout then runs as usual."""
        with self._lock:
            registration = self.registrations.get(instance_id)
            if registration:
                registration.machine.interrupted = True
            tasks = [t for t in self.tasks if t.instance_id == instance_id and t.alive]
            for task in tasks:
                self._begin_stop(task)
            return tasks

    def kill_task(self, task: Task) -> None:
        """SIGKILL, as the kernel's OOM killer or a crash would: the service replaces it."""
        self._signal(task, signal.SIGKILL)

    # --- the loop ------------------------------------------------------------------------------------

    def step(self) -> None:
        self._register_pending()
        with self._lock:
            self._reap()
            clusters = {r.cluster for r in self.registrations.values() if r.container_instance_arn}
        wanted: dict[tuple[str, str], tuple[int, str]] = {}
        for cluster in clusters:
            wanted.update(self._services(cluster))
        with self._lock:
            self._reconcile(wanted)
            self._enforce_stop_timeouts()

    def _register_pending(self) -> None:
        for registration in list(self.registrations.values()):
            if registration.container_instance_arn:
                continue
            machine = registration.machine
            document = {
                "instanceId": machine.instance_id,
                "instanceType": machine.instance_type,
                "region": self.region,
                "availabilityZone": f"{self.region}a",
            }
            try:
                response = self.ecs.register_container_instance(
                    cluster=registration.cluster, instanceIdentityDocument=_json(document)
                )
            except Exception:  # cluster not created yet: the real agent retries too
                continue
            registration.container_instance_arn = response["containerInstance"]["containerInstanceArn"]

    def _services(self, cluster: str) -> dict[tuple[str, str], tuple[int, str]]:
        try:
            arns = []
            for page in self.ecs.get_paginator("list_services").paginate(cluster=cluster):
                arns.extend(page["serviceArns"])
            found: dict[tuple[str, str], tuple[int, str]] = {}
            for i in range(0, len(arns), 10):
                described = self.ecs.describe_services(cluster=cluster, services=arns[i : i + 10])
                for service in described["services"]:
                    desired = service["desiredCount"] if service.get("status") == "ACTIVE" else 0
                    found[(cluster, service["serviceName"])] = (desired, service["taskDefinition"])
            return found
        except ClientError:
            return {}  # cluster deleted: its services' tasks stop below

    def _reap(self) -> None:
        for task in [t for t in self.tasks if not t.alive]:
            code = task.process.returncode
            if task.stopping_since is None:
                self.tasks_died += 1
                log.info("task %s on %s exited with %s", task.task_id, task.instance_id, code)
            _remove_scratch(task)
            self.tasks.remove(task)
            self._ended_sessions[task.task_id] = task.process.pid

    def _reconcile(self, wanted: dict[tuple[str, str], tuple[int, str]]) -> None:
        for task in self.tasks:
            if task.stopping_since is None and (task.cluster, task.service) not in wanted:
                self._begin_stop(task)
        for (cluster, service), (desired, task_definition) in wanted.items():
            running = [
                t
                for t in self.tasks
                if t.cluster == cluster and t.service == service and t.stopping_since is None
            ]
            for task in sorted(running, key=lambda t: t.started_at, reverse=True)[
                : max(0, len(running) - desired)
            ]:
                self._begin_stop(task)
            for _ in range(max(0, desired - len(running))):
                if task_definition in self.refused:
                    break
                instance_id = self._place(cluster, task_definition)
                if instance_id is None:
                    break
                self._start_task(cluster, service, task_definition, instance_id)

    def _place(self, cluster: str, task_definition_arn: str) -> str | None:
        """ECS spread placement: the registered, undrained instance with the fewest tasks that has room and
        the task definition's CPU architecture (`runtimePlatform.cpuArchitecture`, X86_64 when unset)."""
        from moto.ec2.models.instance_types import INSTANCE_TYPES

        definition = self._task_definition(task_definition_arn)
        cpu = int(definition.get("cpu") or definition["containerDefinitions"][0].get("cpu") or 0)
        memory = int(definition.get("memory") or definition["containerDefinitions"][0].get("memory") or 0)
        wanted = ((definition.get("runtimePlatform") or {}).get("cpuArchitecture") or "X86_64").lower()
        candidates = []
        for registration in self.registrations.values():
            machine = registration.machine
            if (
                registration.cluster != cluster
                or not registration.container_instance_arn
                or machine.interrupted
            ):
                continue
            on_it = [t for t in self.tasks if t.instance_id == machine.instance_id and t.alive]
            kind = INSTANCE_TYPES.get(machine.instance_type)
            if kind is not None:
                if wanted not in kind["ProcessorInfo"]["SupportedArchitectures"]:
                    continue
                used_cpu = sum(int(self._cpu_of(t.task_definition_arn)) for t in on_it)
                used_memory = sum(int(self._memory_of(t.task_definition_arn)) for t in on_it)
                vcpus, memory_mib = kind["VCpuInfo"]["DefaultVCpus"], kind["MemoryInfo"]["SizeInMiB"]
                if used_cpu + cpu > vcpus * 1024 or used_memory + memory > memory_mib:
                    continue
            candidates.append((len(on_it), machine.launched_at, machine.instance_id))
        return min(candidates)[2] if candidates else None

    def _cpu_of(self, arn: str) -> int:
        definition = self._task_definition(arn)
        return int(definition.get("cpu") or definition["containerDefinitions"][0].get("cpu") or 0)

    def _memory_of(self, arn: str) -> int:
        definition = self._task_definition(arn)
        return int(definition.get("memory") or definition["containerDefinitions"][0].get("memory") or 0)

    def _task_definition(self, arn: str) -> dict[str, Any]:
        if arn not in self._task_definitions:
            self._task_definitions[arn] = self.ecs.describe_task_definition(taskDefinition=arn)[
                "taskDefinition"
            ]
        return self._task_definitions[arn]

    def _start_task(self, cluster: str, service: str, task_definition_arn: str, instance_id: str) -> None:
        task_definition = self._task_definition(task_definition_arn)
        try:
            if len(task_definition["containerDefinitions"]) != 1:
                raise TaskRefused("the task definition must have exactly one container, the worker")
            container = task_definition["containerDefinitions"][0]
            command = worker_command(
                container.get("command"), container.get("entryPoint"), self.worker_modules
            )
            task_variables = task_environment(container.get("environment", []))
        except TaskRefused as refused:
            self._refuse(cluster, service, task_definition_arn, instance_id, str(refused))
            return
        environment = _process_environment()
        environment.update(task_variables)
        environment.update(self.environment)
        environment["ECS_CONTAINER_INSTANCE_ID"] = instance_id
        # The instance's metadata (purchase option, type) comes from the agent's IMDS, never the link-local
        # address of a developer's machine; interruptions arrive as SIGTERM, so no notice is watched for.
        environment["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = self.metadata.endpoint_for(instance_id)
        environment["SPOTFILL_SPOT_NOTICE"] = "false"
        environment.pop(SPEED_VARIABLE, None)  # only the agent slows a task, never its task definition
        machine = self._registered_machine(instance_id)
        if machine is not None:
            environment.update(speed_environment(machine.instance_type, self.instance_speed))
        task_id = uuid.uuid4().hex
        # The worker exits when this process is gone (killed, even with SIGKILL), never orphaned.
        if self._iam_site is not None:
            environment.update(lifeline_environment(self._iam_site, environment.get("PYTHONPATH")))
        # The task acts as its task role: every AWS call of the worker is evaluated against its policies.
        if task_definition.get("taskRoleArn") and self._iam_site is not None:
            environment.update(
                task_role_environment(
                    task_definition["taskRoleArn"], task_id, self._iam_site, environment.get("PYTHONPATH")
                )
            )
        log_path = self.log_dir / cluster / f"{service}-{task_id[:12]}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Its own temporary folder (the worker's model copy, TensorFlow's generated code), inside the run's
        # folder rather than the user's TMPDIR, and removed when the task ends.
        scratch = self.log_dir.parent / "scratch" / task_id[:12]
        scratch.mkdir(parents=True, exist_ok=True)
        environment["TMPDIR"] = str(scratch)
        process = self._start_process(command, environment, log_path)
        stop_timeout = float(container.get("stopTimeout") or DEFAULT_STOP_TIMEOUT)
        self.tasks.append(
            Task(
                task_id,
                cluster,
                service,
                task_definition_arn,
                instance_id,
                process,
                log_path,
                stop_timeout,
                scratch,
            )
        )
        self.tasks_started += 1

    def _start_process(
        self, command: list[str], environment: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes] | ForkedProcess:
        if self.fork_server is not None:
            try:
                return self.fork_server.spawn(command[-1], environment, self.log_dir, log_path)
            except ForkServerError as exc:
                log.warning("starting the task as a fresh process: %s", exc)
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(
                command,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.log_dir,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the local cloud, not the workers
            )

    def _refuse(
        self, cluster: str, service: str, task_definition_arn: str, instance_id: str, reason: str
    ) -> None:
        """Start no process; the task shows as STOPPED with the reason, as ECS shows one that cannot start."""
        self.refused[task_definition_arn] = reason
        log.error(
            "refused to start a task of %s (service %s, cluster %s): %s",
            task_definition_arn,
            service,
            cluster,
            reason,
        )
        registration = self.registrations.get(instance_id)
        if registration is None or not registration.container_instance_arn:
            return
        # moto's StartTask cannot size a container that sets only memoryReservation: the stopped task is
        # recorded in its ECS backend directly, where ListTasks and DescribeTasks find it.
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ecs.models import Task as EcsTask
        from moto.ecs.models import ecs_backends

        backend = ecs_backends[DEFAULT_ACCOUNT_ID][self.region]
        task = EcsTask(
            backend.clusters[cluster],
            backend.describe_task_definition(task_definition_arn),
            registration.container_instance_arn,
            None,
            backend=backend,
            group=f"service:{service}",
            launch_type="EC2",
            started_by=f"ecs-svc/{service}"[:36],
        )
        task.desired_status = "STOPPED"
        task.last_status = "STOPPED"
        task.stopped_reason = f"CannotStartContainerError: {reason}"[:255]
        backend.tasks.setdefault(cluster, {})[task.task_arn] = task

    def _begin_stop(self, task: Task) -> None:
        if task.stopping_since is None:
            task.stopping_since = time.monotonic()
            self._signal(task, signal.SIGTERM)

    def _enforce_stop_timeouts(self) -> None:
        now = time.monotonic()
        for task in self.tasks:
            if (
                task.stopping_since is not None
                and task.alive
                and now - task.stopping_since >= task.stop_timeout
            ):
                self._signal(task, signal.SIGKILL)

    @staticmethod
    def _signal(task: Task, signum: int) -> None:
        """SIGTERM to the worker alone, SIGKILL to every process of its task: ECS's stop sends SIGTERM to the
        container's main process, then kills what is left of the container, children included (each worker
        leads a process group of its own, start_new_session)."""
        with contextlib.suppress(ProcessLookupError):
            if signum == signal.SIGKILL:
                os.killpg(task.process.pid, signum)
            else:
                task.process.send_signal(signum)

    def stray_processes(self) -> list[str]:
        """Processes still running in the session of a task that has exited: what its worker started and
        left behind (a child that outlived it), each as `process <pid> of task <id>: <command line>`."""
        with self._lock:
            ended = list(self._ended_sessions.items())
        found = []
        for task_id, session in ended:
            members = session_processes(session)
            if not members:  # an empty session gains no process: forget it
                with self._lock:
                    self._ended_sessions.pop(task_id, None)
            found.extend(f"process {pid} of task {task_id}: {command}" for pid, command in members)
        return found

    # --- what the progress display shows ---------------------------------------------------------------

    def running_tasks(self) -> list[Task]:
        with self._lock:
            return [t for t in self.tasks if t.alive and t.stopping_since is None]


def _process_environment() -> dict[str, str]:
    """What every worker process starts from, before its task's variables: this process's few inherited
    ones, unbuffered output (its log is read while it runs) and TensorFlow's C++ logging at warnings."""
    environment = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    environment.update({"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    return environment


def worker_command(
    command: list[str] | None,
    entry_point: list[str] | None = None,
    modules: tuple[str, ...] = (WORKER_MODULE,),
) -> list[str]:
    """The worker's command line, run with this interpreter (the image's `python` is this venv's here): the
    image's default (no command) or `python -m spotfill_worker`; anything else raises TaskRefused."""
    if entry_point:
        raise TaskRefused(f"the local cloud runs only the worker, not the entry point {entry_point!r}")
    if not command:
        return [sys.executable, "-m", WORKER_MODULE]
    if (
        len(command) == 3
        and _PYTHON.match(os.path.basename(command[0]))
        and command[1] == "-m"
        and command[2] in modules
    ):
        return [sys.executable, "-m", command[2]]
    raise TaskRefused(f"the local cloud runs only the worker (python -m {WORKER_MODULE}), not {command!r}")


def check_instance_speed(speeds: dict[str, float]) -> dict[str, float]:
    """The local cloud's per-type speeds, each in (0, 1]: a type can be slowed, never made faster than the
    machine runs it. ValueError naming the type otherwise."""
    for name, speed in speeds.items():
        if not 0 < speed <= 1:
            raise ValueError(
                f"instance_speed[{name!r}] = {speed!r}: a relative speed must be above 0 and at most 1 "
                "(1 is full speed; 0.5 makes the type's workers predict at half their speed)"
            )
    return dict(speeds)


def speed_environment(instance_type: str, speeds: dict[str, float]) -> dict[str, str]:
    """The variable that paces the workers of an instance of a slowed type; none at full speed."""
    speed = speeds.get(instance_type, 1.0)
    return {} if speed >= 1 else {SPEED_VARIABLE: repr(speed)}


def _remove_scratch(task: Task) -> None:
    if task.scratch is not None:
        shutil.rmtree(task.scratch, ignore_errors=True)


def task_environment(variables: list[dict[str, str]]) -> dict[str, str]:
    """The task definition's environment, which may set only the worker's SPOTFILL_* settings (a variable
    such as PYTHONPATH, PYTHONSTARTUP or LD_PRELOAD would run code of the task definition's choosing)."""
    environment = {}
    for variable in variables:
        name = variable.get("name", "")
        if not _TASK_VARIABLE.match(name) or name in _AGENT_VARIABLES:
            raise TaskRefused(
                "the task definition's environment may set only the worker's SPOTFILL_* settings, "
                f"not {name!r}"
            )
        environment[name] = variable.get("value", "")
    return environment


def _decode_user_data(value: str) -> str:
    # EC2 returns user data base64-encoded; launch templates hold it base64-encoded too (so possibly twice).
    text = value
    for _ in range(2):
        try:
            decoded = base64.b64decode(text, validate=True).decode()
        except Exception:
            break
        text = decoded
    return text


def _json(document: dict[str, Any]) -> str:
    import json

    return json.dumps(document)


def session_processes(session: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in the session `session` leads, the leader itself left out
    (a worker that exited; a process reusing its pid is not one of its children). Empty without /proc."""
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == session:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[3]) == session and fields[0] not in ("Z", "X"):  # a zombie has exited already
            found.append((int(entry.name), command))
    return found
