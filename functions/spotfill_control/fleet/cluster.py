"""The run's ECS side: its own cluster, task definition revision and service.

One cluster per run (`spotfill-<run id>`) is the run's placement scope: the fleet's instances join it from
their user data, so two runs never share instances.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NoReturn

from botocore.exceptions import ClientError

from spotfill_control.aws import is_transient
from spotfill_control.config import Settings
from spotfill_control.errors import SpotfillError, TransientAwsError
from spotfill_control.queues import VISIBILITY_TIMEOUT_SECONDS
from spotfill_control.run import RUN_ID_TAG, RunState, utcnow
from spotfill_control.shards import model_error_key
from spotfill_control.spec import ECS_TASKS_PER_SERVICE

STOP_TIMEOUT_SECONDS = 120  # SIGTERM → SIGKILL; also the worker's SPOTFILL_STOP_TIMEOUT
CONTAINER_NAME = "worker"


def _tags(run: RunState) -> list[dict[str, str]]:
    return [{"key": RUN_ID_TAG, "value": run.run_id}]


def _raise(what: str, exc: ClientError) -> NoReturn:
    if is_transient(exc):
        raise TransientAwsError(f"{what}: {exc}") from exc
    raise SpotfillError(f"{what}: {exc}") from exc


def create_cluster(run: RunState, ecs: Any) -> str:
    try:
        # Container Insights gives the dashboard its running-task counts per run cluster.
        ecs.create_cluster(
            clusterName=run.scoped_name,
            tags=_tags(run),
            settings=[{"name": "containerInsights", "value": "enabled"}],
        )
    except ClientError as exc:
        _raise("ecs.create_cluster", exc)
    return run.scoped_name


# ECS's names (RuntimePlatform.cpuArchitecture) for EC2's architectures.
ECS_CPU_ARCHITECTURE = {"x86_64": "X86_64", "arm64": "ARM64"}


def worker_environment(run: RunState, queue_url: str, control_bucket: str | None = None) -> dict[str, str]:
    """The worker's configuration (docs/contracts/worker-environment.md, "Worker environment"); optional
    values are left out."""
    spec = run.spec
    env = {
        "SPOTFILL_RUN_ID": run.run_id,
        "SPOTFILL_QUEUE_URL": queue_url,
        "SPOTFILL_MODEL_URI": spec.model.uri,
        # Always set, defaults included: the run's choice, not whatever default the image was built with.
        "SPOTFILL_MODEL_RUNTIME": spec.model.runtime,
        "SPOTFILL_MODEL_PRECISION": spec.model.precision,
        "SPOTFILL_INPUT_FORMAT": spec.input.format,
        "SPOTFILL_OUTPUT_FORMAT": spec.output.format,
        "SPOTFILL_IMAGE_SCALE": spec.input.image.scale,
        "SPOTFILL_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_SECONDS),
        "SPOTFILL_STOP_TIMEOUT": str(STOP_TIMEOUT_SECONDS),
    }
    if spec.input.id_column:
        env["SPOTFILL_ID_COLUMN"] = spec.input.id_column
    if spec.input.tfrecord is not None:
        options = spec.input.tfrecord
        env["SPOTFILL_TFRECORD_FEATURE"] = options.feature
        env["SPOTFILL_TFRECORD_SHAPE"] = ",".join(str(d) for d in options.shape)
        env["SPOTFILL_TFRECORD_DTYPE"] = options.dtype
        if options.compression:
            env["SPOTFILL_TFRECORD_COMPRESSION"] = options.compression
    if spec.service.batch_size:
        env["SPOTFILL_BATCH_SIZE"] = str(spec.service.batch_size)
    if run.resources.dead_letter_queue_url:
        env["SPOTFILL_DEAD_LETTER_QUEUE_URL"] = run.resources.dead_letter_queue_url
    if control_bucket:
        env["SPOTFILL_MODEL_ERROR_URI"] = f"s3://{control_bucket}/{model_error_key(run.run_id)}"
    return env


def task_definition(run: RunState, settings: Settings, queue_url: str, region: str) -> dict[str, Any]:
    """The `RegisterTaskDefinition` request for the run (pure)."""
    spec = run.spec
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": settings.worker_image_of(run.architecture),
        "essential": True,
        "cpu": spec.service.cpu,
        "memoryReservation": spec.service.memory,
        "environment": [
            {"name": k, "value": v}
            for k, v in sorted(worker_environment(run, queue_url, settings.control_bucket).items())
        ],
        "stopTimeout": STOP_TIMEOUT_SECONDS,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": settings.worker_log_group,
                "awslogs-region": region,
                "awslogs-stream-prefix": run.run_id,
            },
        },
    }
    if run.uses_gpu:
        container["resourceRequirements"] = [{"type": "GPU", "value": "1"}]
    return {
        "family": run.scoped_name,
        "taskRoleArn": settings.task_role_arn,
        "executionRoleArn": settings.execution_role_arn,
        "networkMode": "bridge",
        "requiresCompatibilities": ["EC2"],
        # ECS places the task only on instances of this architecture; the image is built for it.
        "runtimePlatform": {
            "cpuArchitecture": ECS_CPU_ARCHITECTURE[run.architecture],
            "operatingSystemFamily": "LINUX",
        },
        # Task-level sizes are what placement reserves on an instance (and the task's memory ceiling).
        "cpu": str(spec.service.cpu),
        "memory": str(spec.service.memory),
        "containerDefinitions": [container],
        "tags": _tags(run),
    }


def register_task_definition(run: RunState, ecs: Any, settings: Settings, queue_url: str) -> str:
    try:
        response = ecs.register_task_definition(
            **task_definition(run, settings, queue_url, ecs.meta.region_name)
        )
    except ClientError as exc:
        _raise("ecs.register_task_definition", exc)
    return response["taskDefinition"]["taskDefinitionArn"]


def count_registered_instances(run: RunState, ecs: Any) -> int:
    """Container instances registered in the run's cluster, ACTIVE or DRAINING (ECS's
    `registeredContainerInstancesCount`): one DescribeClusters call whatever the fleet's size, where listing
    them would take a call per 100; 0 while the cluster is not active."""
    try:
        clusters = ecs.describe_clusters(clusters=[run.scoped_name]).get("clusters", [])
    except ClientError as exc:
        _raise("ecs.describe_clusters", exc)
    return sum(
        int(c.get("registeredContainerInstancesCount", 0)) for c in clusters if c.get("status") == "ACTIVE"
    )


def desired_count(registered_instances: int, tasks_per_instance: int, remaining_shards: int) -> int:
    """The service's desired count: a task per task slot of the registered instances (so it rises as capacity
    registers), a task per remaining shard at most (so it falls as work runs out, and capacity that registers
    late never raises it past the work left), never more than ECS's tasks-per-service quota (Validate refuses
    a spec that could need more; the fleet may still overshoot its target by an instance), and never zero
    while work remains."""
    slots = min(registered_instances * tasks_per_instance, ECS_TASKS_PER_SERVICE)
    return max(1, min(slots, remaining_shards))


def desired_tasks(run: RunState, registered_instances: int) -> int:
    """Tasks for the service when it starts: every shard the run queued is still to do."""
    pending = max(0, run.shards_total - run.shards_skipped)
    return desired_count(registered_instances, run.spec.service.tasks_per_instance, pending)


def create_service(run: RunState, ecs: Any, desired: int) -> str:
    """Create the run's service (or, when a retried Lambda finds it, set its desired count)."""
    if run.resources.cluster_name is None or run.resources.task_definition_arn is None:
        raise SpotfillError("the run has no cluster or task definition: PrepareRun did not finish")
    name = run.scoped_name
    try:
        found = ecs.describe_services(cluster=run.resources.cluster_name, services=[name])["services"]
        if any(s.get("status") == "ACTIVE" for s in found):
            ecs.update_service(cluster=run.resources.cluster_name, service=name, desiredCount=desired)
            return name
        ecs.create_service(
            cluster=run.resources.cluster_name,
            serviceName=name,
            taskDefinition=run.resources.task_definition_arn,
            desiredCount=desired,
            launchType="EC2",
            schedulingStrategy="REPLICA",
            placementStrategy=[{"type": "spread", "field": "instanceId"}],
            # Never stop a running task to make room: a stopped task loses its shard's work in progress.
            deploymentConfiguration={"maximumPercent": 200, "minimumHealthyPercent": 100},
            tags=_tags(run),
            propagateTags="SERVICE",
        )
    except ClientError as exc:
        _raise("ecs.create_service", exc)
    return name


def scale_to(run: RunState, desired: int, ecs: Any) -> None:
    """Set the run's service to `desired` tasks (monitor uses it as capacity registers or work runs out)."""
    if run.resources.service_name is None or run.resources.cluster_name is None:
        raise SpotfillError("the run has no service yet")
    try:
        ecs.update_service(
            cluster=run.resources.cluster_name, service=run.resources.service_name, desiredCount=desired
        )
    except ClientError as exc:
        _raise("ecs.update_service", exc)


def start_service(run: RunState, ecs: Any, now: datetime | None = None) -> RunState:
    """ScaleService: one service sized to the registered instances x tasks per instance (at most a task per
    shard); monitor raises it as more instances register (`desired_count`)."""
    now = now or utcnow()
    desired = desired_tasks(run, count_registered_instances(run, ecs))
    name = create_service(run, ecs, desired)
    return run.stepped("monitoring", "processing_started_at", now, service_name=name)
