"""Teardown: remove everything a run created, from whatever part of the run exists.

Idempotent step by step: each step looks before it acts and treats "already gone" as done, so teardown can
run twice (the ASL's Teardown, then `cleanup_on_exit`), after a partial PrepareRun, or after a Lambda retry.
Real errors are never swallowed: every step still runs (one failure must not leave a fleet running), then
the first error is raised; a transient one as `TransientAwsError` so the ASL retries the whole teardown.

Order: stop the service (no new work is taken), cancel the fleet with its instances (stops the spend), then
the cluster (once its service is gone), task definition, launch template version, and last the queues,
after the dead-letter queue's messages are moved into S3 records (`runs/<run id>/dead-letters/`,
`monitoring.dead_letters`) for the report: batch by batch within a time budget, and a teardown that
runs out of it is retried and goes on where it stopped, so the queue is deleted only once it is empty.
Resources the run state does not name (a Lambda that died between creating and recording) are found by
their run-scoped names (`spotfill-<run id>`) and tags.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control import state_store
from spotfill_control.aws import Clients, is_transient
from spotfill_control.config import Settings
from spotfill_control.deadline import Deadline
from spotfill_control.errors import SpotfillError, TransientAwsError
from spotfill_control.fleet import fleet
from spotfill_control.fleet.fleet_api import GONE_STATES
from spotfill_control.monitoring import dead_letters
from spotfill_control.queues import dead_letter_queue_name
from spotfill_control.run import RUN_ID_TAG, RunState

ALIVE_INSTANCE_STATES = frozenset({"pending", "running", "stopping", "stopped"})
CLUSTER_BUSY_CODES = frozenset(
    {
        "ClusterContainsServicesException",
        "ClusterContainsContainerInstancesException",
        "ClusterContainsTasksException",
        "UpdateInProgressException",
    }
)
CLUSTER_DELETE_ATTEMPTS = 12
CLUSTER_DELETE_PAUSE_SECONDS = 5.0
FLEET_TERMINATION_CHECKS = 6
FLEET_TERMINATION_PAUSE_SECONDS = 5.0
# While EC2 may not know the run's fleet yet (`fleet.CONSISTENCY_GRACE` after its request), its delete is
# tried again this often; with less than FLEET_WAIT_RESERVE_SECONDS of the invocation left, teardown stops
# waiting with TransientAwsError and the retried teardown goes on.
FLEET_UNSEEN_PAUSE_SECONDS = 5.0
FLEET_WAIT_RESERVE_SECONDS = 180.0
# DeregisterContainerInstance calls in flight at once: 1,000 instances take ~100 rounds, not 1,000 (boto3
# backs off on ECS's ThrottlingException). Deregistration stops while this much of the invocation is left,
# for the steps after it; the retried teardown continues (docs/state-machine.md, "Teardown").
DEREGISTER_CONCURRENCY = 10
DEREGISTER_BATCH = 100
DEREGISTER_RESERVE_SECONDS = 120.0


# The time budget of the dead-letter drain without a Lambda context: half the Teardown's Timeout.
DEFAULT_BUDGET_SECONDS = 300.0
# On Lambda the drain may use the invocation's remaining time but this much, kept for deleting the queues
# and persisting the run.
RESERVE_SECONDS = 60.0


def drain_deadline(time_left: Callable[[], float] | None) -> Deadline:
    """The drain's budget: what the invocation has left (`time_left`, seconds) less RESERVE_SECONDS, or
    DEFAULT_BUDGET_SECONDS without a Lambda context."""
    if time_left is None:
        return Deadline(DEFAULT_BUDGET_SECONDS)
    return Deadline(max(0.0, time_left() - RESERVE_SECONDS))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


@dataclass
class Outcome:
    """What teardown did; `errors` are raised after every step has had its turn."""

    removed: list[str] = field(default_factory=list)
    errors: list[tuple[str, Exception]] = field(default_factory=list)
    instances_terminated: list[str] = field(default_factory=list)
    dead_letters: int | None = None  # dead-letter messages moved into S3 records; None: no dead-letter queue
    fleets_deleted: list[str] = field(default_factory=list)  # fleets EC2 answered deleted (or cancelled)
    unconfirmed: list[str] = field(default_factory=list)  # deletions EC2 never confirmed, each with why


# ------------------------------------------------------------------------------------------ ECS


def remove_services(cluster: str, service_name: str | None, ecs: Any, outcome: Outcome) -> None:
    """Scale every service of the run's cluster to zero and delete it (the cluster is the run's own)."""
    try:
        names = set(_list_services(cluster, ecs))
    except ClientError as exc:
        if _code(exc) == "ClusterNotFoundException":
            return
        raise
    if service_name:
        names.add(service_name)
    if not names:
        return
    for service in _describe_services(cluster, sorted(names), ecs):
        if service.get("status") != "ACTIVE":
            continue  # DRAINING or INACTIVE: already deleted
        name = service["serviceName"]
        try:
            ecs.update_service(cluster=cluster, service=name, desiredCount=0)
            ecs.delete_service(cluster=cluster, service=name, force=True)
        except ClientError as exc:
            if _code(exc) in (
                "ServiceNotFoundException",
                "ServiceNotActiveException",
                "ClusterNotFoundException",
            ):
                continue
            raise
        outcome.removed.append(f"service {name}")


def _list_services(cluster: str, ecs: Any) -> list[str]:
    arns: list[str] = []
    for page in ecs.get_paginator("list_services").paginate(cluster=cluster):
        arns.extend(page.get("serviceArns", []))
    return [arn.rsplit("/", 1)[-1] for arn in arns]


def _describe_services(cluster: str, names: list[str], ecs: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for start in range(0, len(names), 10):  # DescribeServices takes at most 10 names
        found += ecs.describe_services(cluster=cluster, services=names[start : start + 10]).get(
            "services", []
        )
    return found


def services_gone(cluster: str, ecs: Any) -> bool:
    try:
        names = _list_services(cluster, ecs)
    except ClientError as exc:
        if _code(exc) == "ClusterNotFoundException":
            return True
        raise
    if not names:
        return True
    return all(s.get("status") == "INACTIVE" for s in _describe_services(cluster, names, ecs))


def deregister_container_instances(
    cluster: str,
    ecs: Any,
    outcome: Outcome,
    time_left: Callable[[], float] | None = None,
) -> None:
    """Deregister the cluster's container instances that are still registered, DEREGISTER_CONCURRENCY at a
    time, DEREGISTER_BATCH after another.

    Instances terminated just before have mostly been deregistered by ECS already (a terminated instance whose
    agent was connected is), and the listing leaves INACTIVE ones out, so only the rest cost a call. Before
    each batch, when `time_left()` (the Lambda's time left) is under DEREGISTER_RESERVE_SECONDS, it
    stops with TransientAwsError: the retried teardown lists what is still registered and goes on from there.
    """
    try:
        # Listed in full first (at most 5,000 ARNs, the cluster's quota): paging on while the list shrinks
        # under deregistration could skip instances.
        listed: list[str] = []
        for page in ecs.get_paginator("list_container_instances").paginate(cluster=cluster):
            listed.extend(page.get("containerInstanceArns", []))
        with ThreadPoolExecutor(max_workers=DEREGISTER_CONCURRENCY) as pool:
            for start in range(0, len(listed), DEREGISTER_BATCH):
                arns = listed[start : start + DEREGISTER_BATCH]
                if time_left is not None and time_left() < DEREGISTER_RESERVE_SECONDS:
                    raise TransientAwsError(
                        f"cluster {cluster}: stopped deregistering container instances with "
                        f"{time_left():.0f} s of this invocation left; teardown will retry and go on"
                    )
                done = pool.map(lambda a: _deregister(cluster, a, ecs), arns)
                for arn, removed in zip(arns, done, strict=True):
                    if removed:
                        outcome.removed.append(f"container instance {arn.rsplit('/', 1)[-1]}")
    except ClientError as exc:
        if _code(exc) == "ClusterNotFoundException":
            return
        raise


def _deregister(cluster: str, arn: str, ecs: Any) -> bool:
    """Deregister one container instance; False when it is already gone."""
    try:
        ecs.deregister_container_instance(cluster=cluster, containerInstance=arn, force=True)
    except ClientError as exc:
        if _code(exc) == "ClusterNotFoundException":
            return False
        if _code(exc) == "InvalidParameterException" and "not found" in _message(exc).lower():
            return False
        raise
    return True


def delete_cluster(
    cluster: str, ecs: Any, outcome: Outcome, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Delete the cluster, waiting while its deleted service drains; TransientAwsError if it will not go."""
    found = ecs.describe_clusters(clusters=[cluster]).get("clusters", [])
    if not found or all(c.get("status") == "INACTIVE" for c in found):
        return
    for attempt in range(CLUSTER_DELETE_ATTEMPTS):
        if services_gone(cluster, ecs):
            try:
                ecs.delete_cluster(cluster=cluster)
            except ClientError as exc:
                if _code(exc) == "ClusterNotFoundException":
                    return
                if _code(exc) not in CLUSTER_BUSY_CODES:
                    raise
            else:
                outcome.removed.append(f"cluster {cluster}")
                return
        if attempt < CLUSTER_DELETE_ATTEMPTS - 1:
            sleep(CLUSTER_DELETE_PAUSE_SECONDS)
    raise TransientAwsError(f"cluster {cluster} still holds a draining service or tasks; teardown will retry")


def deregister_task_definitions(family: str, known_arn: str | None, ecs: Any, outcome: Outcome) -> None:
    arns: set[str] = set()
    for page in ecs.get_paginator("list_task_definitions").paginate(familyPrefix=family, status="ACTIVE"):
        # familyPrefix is a prefix: keep the run's own family only (`...:task-definition/<family>:<revision>`)
        arns.update(
            a for a in page.get("taskDefinitionArns", []) if a.rsplit("/", 1)[-1].rsplit(":", 1)[0] == family
        )
    if known_arn:
        try:
            status = ecs.describe_task_definition(taskDefinition=known_arn)["taskDefinition"].get("status")
        except ClientError as exc:
            if _code(exc) != "ClientException":  # "Unable to describe task definition": it no longer exists
                raise
        else:
            if status == "ACTIVE":
                arns.add(known_arn)
    for arn in sorted(arns):
        ecs.deregister_task_definition(taskDefinition=arn)
        outcome.removed.append(f"task definition {arn.rsplit('/', 1)[-1]}")


# ------------------------------------------------------------------------------------------ EC2


def delete_fleet(
    run: RunState,
    fleet_id: str,
    ec2: Any,
    outcome: Outcome,
    now: Callable[[], datetime],
    sleep: Callable[[float], None] = time.sleep,
    time_left: Callable[[], float] | None = None,
) -> list[str]:
    """Delete the fleet with its instances by its id (DeleteFleets or CancelSpotFleetRequests,
    TerminateInstances) and see EC2 answer it deleted; returns the instances it had (to verify they go).

    A describe's "not found" never skips the delete: EC2's API is eventually consistent, and a fleet made
    moments ago may be unknown to one call and live on, replacing what was terminated, until its ValidUntil.
    While EC2 may not know the run's fleet yet (`fleet.unseen_is_transient`) the delete is tried again every
    FLEET_UNSEEN_PAUSE_SECONDS (TransientAwsError once the invocation runs short: the retried teardown goes
    on); after that a fleet EC2 does not know is gone, and unless teardown saw it deleted before (the
    timeline's `fleet_deleted_at`) the outcome says its deletion was not confirmed."""
    api = fleet.api_of(run)
    while True:
        status = api.describe(fleet_id, ec2)
        if status is not None and status.state in GONE_STATES:
            _confirmed(run, fleet_id, now(), outcome)
            return []
        instance_ids = [i.instance_id for i in api.instances(fleet_id, ec2) or []] if status else []
        deletions = [d for d in fleet.delete_fleets(run, ec2, [fleet_id]) if d.fleet_id == fleet_id]
        if any(d.ended for d in deletions):
            if any(d.state is not None for d in deletions):
                outcome.removed.append(f"{run.spec.fleet.api} {fleet_id}")
            _confirmed(run, fleet_id, now(), outcome)
            return instance_ids
        # EC2 does not know the fleet (its delete answered fleetIdDoesNotExist / fleetRequestIdDoesNotExist).
        if fleet_id == run.resources.fleet_id and run.timeline.fleet_deleted_at is not None:
            return instance_ids  # seen deleted before: EC2 forgets a deleted fleet (moto a cancelled request)
        at = now()
        if not fleet.unseen_is_transient(run, fleet_id, at):
            outcome.unconfirmed.append(
                f"{run.spec.fleet.api} {fleet_id}: EC2 answered that it does not exist and never showed it "
                "deleted, so its deletion is not confirmed"
            )
            return instance_ids
        if time_left is not None and time_left() < FLEET_WAIT_RESERVE_SECONDS:
            requested = run.timeline.fleet_requested_at
            age = f" {(at - requested).total_seconds():.0f} s after its request" if requested else ""
            raise TransientAwsError(
                f"{run.spec.fleet.api} {fleet_id} is not known to EC2 yet{age} (eventual consistency); "
                "teardown will retry its delete"
            )
        sleep(FLEET_UNSEEN_PAUSE_SECONDS)


def _confirmed(run: RunState, fleet_id: str, at: datetime, outcome: Outcome) -> None:
    outcome.fleets_deleted.append(fleet_id)
    if fleet_id == run.resources.fleet_id and run.timeline.fleet_deleted_at is None:
        run.timeline.fleet_deleted_at = at


def run_instance_ids(run_id: str, ec2: Any) -> list[str]:
    """Instances tagged with the run id (the launch template version tags them) that are not terminated."""
    ids: list[str] = []
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": f"tag:{RUN_ID_TAG}", "Values": [run_id]},
            {"Name": "instance-state-name", "Values": sorted(ALIVE_INSTANCE_STATES)},
        ]
    )
    for page in pages:
        for reservation in page.get("Reservations", []):
            ids.extend(i["InstanceId"] for i in reservation.get("Instances", []))
    return ids


def instance_states(instance_ids: list[str], ec2: Any) -> dict[str, str]:
    states: dict[str, str] = {}
    for start in range(0, len(instance_ids), 200):
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-id", "Values": instance_ids[start : start + 200]}]
        )
        for page in pages:
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    states[instance["InstanceId"]] = instance["State"]["Name"]
    return states


def alive_instances(instance_ids: Iterable[str], ec2: Any) -> set[str]:
    ids = sorted(set(instance_ids))
    return (
        {i for i, state in instance_states(ids, ec2).items() if state in ALIVE_INSTANCE_STATES}
        if ids
        else set()
    )


def terminate_leftovers(
    instance_ids: list[str],
    cancelled_with_fleet: set[str],
    ec2: Any,
    outcome: Outcome,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Make sure every instance of the run is shutting down or terminated.

    The instances of a fleet deleted just now are terminated by EC2 itself, a little later: they get
    FLEET_TERMINATION_CHECKS looks before they count as left over. Left-overs are terminated here and must be
    seen going, else TransientAwsError (the ASL retries teardown).
    """
    alive = alive_instances(instance_ids, ec2)
    for _ in range(FLEET_TERMINATION_CHECKS):
        if not alive & cancelled_with_fleet:
            break
        sleep(FLEET_TERMINATION_PAUSE_SECONDS)
        alive = alive_instances(alive, ec2)
    if not alive:
        return
    ec2.terminate_instances(InstanceIds=sorted(alive))
    still = alive_instances(alive, ec2)
    if still:
        raise TransientAwsError(
            f"instances {', '.join(sorted(still))} are not terminating yet; teardown will retry"
        )
    outcome.instances_terminated.extend(sorted(alive))


def delete_launch_template_version(template_id: str, version: int, ec2: Any, outcome: Outcome) -> None:
    response = ec2.delete_launch_template_versions(LaunchTemplateId=template_id, Versions=[str(version)])
    for failure in response.get("UnsuccessfullyDeletedLaunchTemplateVersions", []):
        info = failure.get("ResponseError", {})
        if info.get("Code") == "launchTemplateVersionDoesNotExist":
            return
        raise SpotfillError(
            f"ec2.delete_launch_template_versions {template_id} v{version}: "
            f"{info.get('Code')}: {info.get('Message', '')}"
        )
    outcome.removed.append(f"launch template {template_id} version {version}")


# ------------------------------------------------------------------------------------------ SQS


def queue_url(known: str | None, name: str, sqs: Any) -> str | None:
    if known:
        return known
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        if _queue_gone(exc):
            return None
        raise


def _queue_gone(exc: ClientError) -> bool:
    return _code(exc) in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue")


def save_dead_letters(
    run_id: str, dlq_url: str, sqs: Any, s3: Any, bucket: str, deadline: Deadline
) -> int | None:
    """Move every message of the dead-letter queue into S3 records (`dead_letters.drain`, to the end); the
    number moved, or None when the queue is gone. Raises TransientAwsError when `deadline` passes first: the
    ASL retries Teardown, which goes on with the messages left (those stored stay stored)."""
    try:
        drained = dead_letters.drain(run_id, dlq_url, sqs, s3, bucket, deadline, until_empty=True)
    except ClientError as exc:
        if _queue_gone(exc):
            return None
        raise
    if not drained.empty:
        raise TransientAwsError(
            f"the dead-letter queue of run {run_id} still holds messages after {deadline.seconds:.0f} s "
            f"({drained.messages} moved to s3://{bucket}/{dead_letters.records_prefix(run_id)}); "
            "teardown goes on when retried"
        )
    return drained.messages


def delete_queue(url: str, sqs: Any, outcome: Outcome) -> None:
    try:
        sqs.delete_queue(QueueUrl=url)
    except ClientError as exc:
        if _queue_gone(exc):
            return
        raise
    outcome.removed.append(f"queue {url.rsplit('/', 1)[-1]}")


# ------------------------------------------------------------------------------------------ the teardown


def teardown(
    run: RunState,
    clients: Clients,
    *,
    control_bucket: str,
    launch_template_id: str,
    now: Callable[[], datetime],
    sleep: Callable[[float], None] = time.sleep,
    time_left: Callable[[], float] | None = None,
) -> tuple[RunState, Outcome]:
    """Remove everything the run created; returns the run with its teardown timestamps and what was done.
    `time_left` (the seconds the invocation has left) bounds the dead-letter drain (`drain_deadline`) and the
    deregistration of container instances.

    Raises (after every step had its turn) the first error met: TransientAwsError when any error is
    transient (the ASL retries teardown, which is idempotent), else that error.
    """
    run = run.model_copy(deep=True)
    run.timeline.teardown_started_at = run.timeline.teardown_started_at or now()
    resources = run.resources
    cluster = resources.cluster_name or run.scoped_name
    outcome = Outcome()

    def step(name: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as exc:  # kept and raised once every other step has run
            outcome.errors.append((name, exc))
            return None

    ecs, ec2, sqs = clients.ecs, clients.ec2, clients.sqs
    step("service", lambda: remove_services(cluster, resources.service_name, ecs, outcome))

    fleets = step("find fleets", lambda: fleet.run_fleet_ids(run, ec2, live_only=False)) or []
    if resources.fleet_id and resources.fleet_id not in fleets:
        fleets.insert(0, resources.fleet_id)
    cancelled: set[str] = set()
    for fleet_id in fleets:
        cancelled.update(
            step(
                f"fleet {fleet_id}",
                lambda f=fleet_id: delete_fleet(run, f, ec2, outcome, now, sleep, time_left),
            )
            or []
        )
    run.teardown_unconfirmed = sorted(set(run.teardown_unconfirmed) | set(outcome.unconfirmed))
    instance_ids = [*run.progress.known_instances, *cancelled]
    instance_ids += step("instances", lambda: run_instance_ids(run.run_id, ec2)) or []
    step("terminate", lambda: terminate_leftovers(instance_ids, cancelled, ec2, outcome, sleep))

    step(
        "container instances",
        lambda: deregister_container_instances(cluster, ecs, outcome, time_left),
    )
    if not any(name == "container instances" for name, _ in outcome.errors):
        # A cluster that still holds instances cannot go (ClusterContainsContainerInstancesException).
        step("cluster", lambda: delete_cluster(cluster, ecs, outcome, sleep))
    step(
        "task definition",
        lambda: deregister_task_definitions(run.scoped_name, resources.task_definition_arn, ecs, outcome),
    )
    if resources.launch_template_version is not None:
        version = resources.launch_template_version
        step(
            "launch template version",
            lambda: delete_launch_template_version(launch_template_id, version, ec2, outcome),
        )

    dlq = step(
        "dead-letter queue",
        lambda: queue_url(resources.dead_letter_queue_url, dead_letter_queue_name(run), sqs),
    )
    if dlq:
        outcome.dead_letters = step(
            "dead letters",
            lambda: save_dead_letters(
                run.run_id, dlq, sqs, clients.s3, control_bucket, drain_deadline(time_left)
            ),
        )
        if not any(name == "dead letters" for name, _ in outcome.errors):
            step("delete dead-letter queue", lambda: delete_queue(dlq, sqs, outcome))
    queue = step("queue", lambda: queue_url(resources.queue_url, run.scoped_name, sqs))
    if queue:
        step("delete queue", lambda: delete_queue(queue, sqs, outcome))

    if outcome.errors:
        if run.timeline.fleet_deleted_at is not None:
            # A retried teardown must know the fleet was seen deleted (EC2 forgets it after a while).
            step("persist", lambda: state_store.persist(run, clients.s3, control_bucket))
        raise _first_error(run.run_id, outcome.errors) from outcome.errors[0][1]
    run.timeline.teardown_ended_at = run.timeline.teardown_ended_at or now()
    return run, outcome


def _first_error(run_id: str, errors: list[tuple[str, Exception]]) -> Exception:
    summary = "; ".join(f"{name}: {exc}" for name, exc in errors)
    transient = any(
        isinstance(e, TransientAwsError) or (isinstance(e, ClientError) and is_transient(e))
        for _, e in errors
    )
    if transient:
        return TransientAwsError(f"teardown of run {run_id} is incomplete, will retry: {summary}")
    return SpotfillError(f"teardown of run {run_id} failed: {summary}")


def latest_run(run: RunState, s3: Any, bucket: str) -> RunState:
    """The persisted run (handlers persist as they go, a Catch hands on the failed state's *input*), with
    any resource only the given run names filled in."""
    stored = state_store.load(run.run_id, s3, bucket)
    if stored is None:
        return run
    known = {k: v for k, v in run.resources.model_dump().items() if v is not None}
    merged = {**known, **{k: v for k, v in stored.resources.model_dump().items() if v is not None}}
    return stored.model_copy(update={"resources": stored.resources.model_copy(update=merged)})


def teardown_and_persist(
    run: RunState,
    clients: Clients,
    settings: Settings,
    now: Callable[[], datetime],
    time_left: Callable[[], float] | None = None,
) -> tuple[RunState, Outcome]:
    run = latest_run(run, clients.s3, settings.control_bucket)
    run, outcome = teardown(
        run,
        clients,
        control_bucket=settings.control_bucket,
        launch_template_id=settings.launch_template_id,
        now=now,
        time_left=time_left,
    )
    state_store.persist(run, clients.s3, settings.control_bucket)
    return run, outcome
