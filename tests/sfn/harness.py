"""A reusable harness: the real stack and ASL in moto, the real handlers in process, and simulated physics.

What is real: `template.yaml` deployed with `spotfill.deploy.deploy_stack` (SAM-translated, created by moto's
CloudFormation), `statemachine/backfill.asl.json` executed by moto's Step Functions interpreter (Wait states
really wait), and every Lambda invocation running the real handler in this process (`spotfill.lambdas`).

What is simulated (`Physics`, a background thread), the two things the state machine depends on but moto does
not do:

- the ECS agent: every instance of an active fleet (EC2 Fleet or Spot Fleet) registers into the ECS cluster
  named in the user data
  it booted with (`ECS_CLUSTER=...`, from the run's launch template version), as the ECS-optimized AMI's agent
  does, after a boot time and one at a time (`register_after_seconds`, `register_interval_seconds`): on AWS
  a fleet's instances register over minutes, not at once.
- EC2's side of a fleet on either API, from the local cloud's model of it (`spotfill.localcloud.patches`):
  launches from the request's own launch template version into every override, `ActivityStatus`, the history
  (`DescribeFleetHistory`, `DescribeSpotFleetRequestHistory`), ModifyFleet, spot that is short
  (`spot_capacity`), maintain fleets replacing lost instances, pools that fail (`failing_pools`: an error
  event per pool while the others fill) and `ValidUntil` (an expired request's instances are terminated on
  the physics' clock).
- the workers: while the run's service has desired tasks, they receive shard messages from the queue named in
  the service's task definition (`SPOTFILL_QUEUE_URL`), write the output object each message names (with
  `spotfill-rows` and `spotfill-run-id` metadata) and delete the message.

Knobs (`Knobs`) bend the physics: never register, stop after N shards, lose a shard (delete its message and
write nothing, as when an instance vanishes), poison a shard (the worker fails on it every time, so SQS moves
it to the dead-letter queue), or have EC2 report the fleet failed.

Use it from another module (the least-privilege test records each handler's AWS calls this way):

    from sfn.harness import Knobs, assert_nothing_left, deployed_cloud   # tests/ is on sys.path

    with deployed_cloud("privilege") as cloud:
        outcome = cloud.run(cloud.spec("calls", shards=2), Knobs())
        for invocation in cloud.lambdas.invocations:
            print(invocation.name, [call.iam_action for call in invocation.aws_calls])
        assert_nothing_left(cloud.session)
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import quote_plus

import boto3
from moto import mock_aws

from spotfill.deploy import StackOutputs, deploy_stack, update_stack
from spotfill.lambdas import Dispatcher, Invocation, inprocess_lambdas
from spotfill.localcloud.patches.eventbridge import target_input
from spotfill.localcloud.patches.fleet_clock import maintain_fleets
from spotfill.localcloud.patches.fleet_visibility import FLEET_VISIBILITY
from spotfill.localcloud.patches.fleets import (
    expired_fleets,
    set_failing_pools,
    set_spot_capacity,
)

REGION = "us-east-1"
SFN_CONFIG = {"stepfunctions": {"execute_state_machine": True}}
RUN_TAG = "spotfill:run-id"
ACTIVE_FLEET_STATES = ("submitted", "active", "modifying")
# How long a test waits for an execution to end: a run takes seconds, far longer on a machine busy with other
# work; waiting ends as soon as the execution does.
RUN_TIMEOUT = 300.0
_CLUSTER_IN_USER_DATA = re.compile(r"^ECS_CLUSTER=(\S+)\s*$", re.MULTILINE)


@dataclass
class Knobs:
    """How the simulated EC2, ECS agent and workers behave in one run."""

    register: bool = True  # False: instances never join the cluster (registration timeout)
    register_after_seconds: float = 0.0  # boot time before an instance registers
    register_interval_seconds: float = 0.0  # instances register one at a time, at least this far apart
    # Pools EC2 cannot launch into: instance type (or "type@zone") -> error code (POOL_ERRORS)
    failing_pools: dict[str, str] = field(default_factory=dict)
    # EC2 expires a fleet this long after the physics first sees it, not at the ValidUntil the run asked for
    # (limits.max_runtime_seconds, 60 s at least): an expiry without the wait. None: the ValidUntil requested.
    fleet_valid_for_seconds: float | None = None
    fleet_fails: bool = False  # EC2 reports the fleet `failed` right after it is requested
    # EC2's API does not know a new fleet for this long (NotFound to calls naming it: eventual consistency,
    # `patches.fleet_visibility.FLEET_VISIBILITY`); its instances boot all the same
    fleet_visibility_lag: float = 0.0
    # Spot is short: a fleet gets at most this many spot units of each type named (set_spot_capacity)
    spot_capacity: dict[str, float] = field(default_factory=dict)
    tick_seconds: float = 0.25  # the physics' clock
    shards_per_tick: int = 1  # how fast the workers are, so outputs appear while the run monitors
    stop_after: int | None = None  # workers hang after writing this many outputs (a stall)
    lose: frozenset[str] = frozenset()  # shard file names whose first message is lost without an output
    poison: frozenset[str] = frozenset()  # shard file names the workers fail on every time
    # The workers cannot load the model: each writes this reason in the model-load error record (at the
    # task definition's SPOTFILL_MODEL_ERROR_URI, as the real worker does) and processes nothing.
    model_cannot_load: str | None = None
    rows_per_shard: int = 16
    # Workers report their throughput per instance type: each output is attributed to the run's registered
    # instances in turn and carries its type and this worker rate (`spotfill-instance-type`,
    # `spotfill-worker-rows-per-second`), as the real worker writes them on EC2. {}: outputs carry neither.
    worker_rates: dict[str, float] = field(default_factory=dict)


@dataclass
class PhysicsLog:
    fleets: dict[str, str | None] = field(default_factory=dict)  # every fleet seen active -> its run id tag
    registered: list[tuple[str, str]] = field(default_factory=list)  # (cluster, instance id)
    written: list[str] = field(default_factory=list)  # output URIs
    lost: list[str] = field(default_factory=list)  # shard URIs
    poisoned_receives: int = 0
    errors: list[str] = field(default_factory=list)
    expired: dict[str, list[str]] = field(
        default_factory=dict
    )  # fleet expired on ValidUntil -> its instances
    desired_counts: list[int] = field(default_factory=list)  # every desired count the run's service had


class Physics(threading.Thread):
    """EC2 boot, the ECS agent and the workers, simulated against moto while an execution runs."""

    def __init__(self, session: boto3.session.Session, knobs: Knobs) -> None:
        super().__init__(daemon=True, name="sfn-physics")
        self.knobs = knobs
        self.log = PhysicsLog()
        self._halt = threading.Event()
        self._ec2 = session.client("ec2")
        self._ecs = session.client("ecs")
        self._sqs = session.client("sqs")
        self._s3 = session.client("s3")
        self._first_seen: dict[str, float] = {}
        self._registered: set[str] = set()
        self._last_registered_at: float | None = None
        self._valid_until_set: set[str] = set()
        self._clusters: dict[str, str | None] = {}  # instance id -> cluster named in its user data
        self._types: dict[str, str] = {}  # instance id -> its type
        self._turn = 0  # the next registered instance an output is attributed to (`Knobs.worker_rates`)

    def start(self) -> None:
        set_failing_pools(self.knobs.failing_pools)
        set_spot_capacity(self.knobs.spot_capacity)
        FLEET_VISIBILITY.set(self.knobs.fleet_visibility_lag)
        super().start()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        set_failing_pools({})
        set_spot_capacity({})
        FLEET_VISIBILITY.set(0.0)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._expire()
                self._boot_and_register()
                self._work()
            except Exception as exc:  # the physics must not die silently: tests assert on log.errors
                self.log.errors.append(f"{type(exc).__name__}: {exc}")
            self._halt.wait(self.knobs.tick_seconds)

    # ---- EC2 and the ECS agent

    def _expire(self) -> None:
        """EC2's clock: requests past their ValidUntil expire and their instances are terminated."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
        if self.knobs.fleet_valid_for_seconds is not None:
            for fleet in [*backend.spot_fleet_requests.values(), *backend.fleets.values()]:
                if fleet.id not in self._valid_until_set:
                    self._valid_until_set.add(fleet.id)
                    fleet.valid_until = datetime.now(UTC) + timedelta(
                        seconds=self.knobs.fleet_valid_for_seconds
                    )
        maintain_fleets(backend)
        self.log.expired.update(expired_fleets(backend))

    def _boot_and_register(self) -> None:
        for fleet_id, state, tags in live_fleets(self._ec2):
            if state not in ACTIVE_FLEET_STATES:
                continue
            self.log.fleets[fleet_id] = tags.get(RUN_TAG)
            if self.knobs.fleet_fails:
                _set_fleet_state(fleet_id, "failed")
                continue
            if not self.knobs.register:
                continue
            if FLEET_VISIBILITY.hidden(fleet_id):
                continue  # the API does not name it yet; its instances register once it does
            instances = fleet_active_instances(self._ec2, fleet_id)
            for instance in instances:
                instance_id = instance["InstanceId"]
                booted_at = self._first_seen.setdefault(instance_id, time.monotonic())
                if instance_id in self._registered:
                    continue
                if time.monotonic() - booted_at < self.knobs.register_after_seconds:
                    continue
                if (
                    self._last_registered_at is not None
                    and time.monotonic() - self._last_registered_at < self.knobs.register_interval_seconds
                ):
                    return  # one at a time: the next instance registers on a later tick
                cluster = self._cluster_of(instance_id)
                if cluster is None:
                    continue
                document = {
                    "instanceId": instance_id,
                    "instanceType": instance["InstanceType"],
                    "region": REGION,
                }
                self._ecs.register_container_instance(
                    cluster=cluster, instanceIdentityDocument=json.dumps(document)
                )
                self._types[instance_id] = instance["InstanceType"]
                self._registered.add(instance_id)
                self._last_registered_at = time.monotonic()
                self.log.registered.append((cluster, instance_id))

    def _cluster_of(self, instance_id: str) -> str | None:
        """The cluster the instance's ECS agent joins: `ECS_CLUSTER` in the user data it booted with."""
        if instance_id not in self._clusters:
            attribute = self._ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
            encoded = attribute.get("UserData", {}).get("Value", "")
            match = _CLUSTER_IN_USER_DATA.search(base64.b64decode(encoded).decode() if encoded else "")
            self._clusters[instance_id] = match.group(1) if match else None
        cluster = self._clusters[instance_id]
        if cluster is None:
            return None
        described = self._ecs.describe_clusters(clusters=[cluster])["clusters"]
        return cluster if any(c.get("status") == "ACTIVE" for c in described) else None

    # ---- the workers

    def _work(self) -> None:
        budget = self.knobs.shards_per_tick
        for queue_url, run_id, model_error_uri in self._queues_with_running_tasks():
            if self.knobs.model_cannot_load is not None:
                self._record_model_error(run_id, model_error_uri)
                continue
            while budget > 0:
                if self.knobs.stop_after is not None and len(self.log.written) >= self.knobs.stop_after:
                    return
                messages = self._sqs.receive_message(
                    QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=0
                ).get("Messages", [])
                if not messages:
                    break
                budget -= 1
                self._handle(queue_url, run_id, messages[0])

    def _record_model_error(self, run_id: str, model_error_uri: str) -> None:
        bucket, key = model_error_uri[len("s3://") :].split("/", 1)
        record = {"run_id": run_id, "error_type": "ModelLoadError", "error": self.knobs.model_cannot_load}
        self._s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode())

    def _queues_with_running_tasks(self) -> Iterator[tuple[str, str, str]]:
        for cluster_arn in self._ecs.list_clusters()["clusterArns"]:
            if not self._ecs.list_container_instances(cluster=cluster_arn, status="ACTIVE")[
                "containerInstanceArns"
            ]:
                continue  # tasks need instances to run on
            service_arns = self._ecs.list_services(cluster=cluster_arn)["serviceArns"]
            if not service_arns:
                continue
            for service in self._ecs.describe_services(cluster=cluster_arn, services=service_arns)[
                "services"
            ]:
                if service.get("status") != "ACTIVE":
                    continue
                if self.log.desired_counts[-1:] != [service["desiredCount"]]:
                    self.log.desired_counts.append(service["desiredCount"])
                if service["desiredCount"] <= 0:
                    continue
                task = self._ecs.describe_task_definition(taskDefinition=service["taskDefinition"])
                (container,) = task["taskDefinition"]["containerDefinitions"]
                environment = {e["name"]: e["value"] for e in container.get("environment", [])}
                yield (
                    environment["SPOTFILL_QUEUE_URL"],
                    environment["SPOTFILL_RUN_ID"],
                    environment["SPOTFILL_MODEL_ERROR_URI"],
                )

    def _handle(self, queue_url: str, run_id: str, message: dict[str, Any]) -> None:
        body = json.loads(message["Body"])
        shard_name = body["shard"].rsplit("/", 1)[-1]
        if shard_name in self.knobs.poison:
            self.log.poisoned_receives += 1
            self._sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
            return
        if shard_name in self.knobs.lose and body["shard"] not in self.log.lost:
            self.log.lost.append(body["shard"])
            self._sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            return
        bucket, key = body["output"][len("s3://") :].split("/", 1)
        self._s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=json.dumps(
                {"shard": body["shard"], "predictions": [0] * self.knobs.rows_per_shard}
            ).encode(),
            Metadata={
                "spotfill-rows": str(self.knobs.rows_per_shard),
                "spotfill-run-id": run_id,
                **self._instance_metadata(run_id),
            },
        )
        self.log.written.append(body["output"])
        self._sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    def _instance_metadata(self, run_id: str) -> dict[str, str]:
        """With `Knobs.worker_rates`: the type of the run's next registered instance in turn, and its rate."""
        if not self.knobs.worker_rates:
            return {}
        mine = [i for cluster, i in self.log.registered if cluster.endswith(run_id)]
        if not mine:
            return {}
        instance_type = self._types[mine[self._turn % len(mine)]]
        self._turn += 1
        rate = self.knobs.worker_rates.get(instance_type)
        return {
            "spotfill-instance-type": instance_type,
            **({} if rate is None else {"spotfill-worker-rows-per-second": f"{rate:.3f}"}),
        }


def _set_fleet_state(fleet_id: str, state: str) -> None:
    """EC2 reporting a fleet error: moto has no ActivityStatus, so the request state says so (in process)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
    (backend.spot_fleet_requests.get(fleet_id) or backend.fleets[fleet_id]).state = state


def live_fleets(ec2: Any) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(id, state, tags) of every fleet on either API: EC2 Fleets and Spot Fleet requests."""
    for fleet in ec2.describe_fleets()["Fleets"]:
        yield fleet["FleetId"], fleet["FleetState"], {t["Key"]: t["Value"] for t in fleet.get("Tags", [])}
    for config in ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]:
        tags = {t["Key"]: t["Value"] for t in config.get("Tags", [])}
        yield config["SpotFleetRequestId"], config["SpotFleetRequestState"], tags


def fleet_active_instances(ec2: Any, fleet_id: str) -> list[dict[str, Any]]:
    if fleet_id.startswith("sfr-"):
        return ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"]
    return ec2.describe_fleet_instances(FleetId=fleet_id)["ActiveInstances"]


# ------------------------------------------------------------------------------------------- executions


@dataclass
class ExecutionResult:
    arn: str
    status: str
    error: str | None
    cause: str | None
    output: Any
    history: list[dict[str, Any]]

    def entered(self) -> list[str]:
        """State names in the order they were entered."""
        return [
            e["stateEnteredEventDetails"]["name"] for e in self.history if "stateEnteredEventDetails" in e
        ]

    def lambda_outputs(self, state: str) -> list[Any]:
        """The results of every successful invocation of a Task state, in order."""
        outputs, current = [], None
        for event in self.history:
            if "stateEnteredEventDetails" in event:
                current = event["stateEnteredEventDetails"]["name"]
            details = event.get("lambdaFunctionSucceededEventDetails")
            if details and current == state:
                outputs.append(json.loads(details["output"]))
        return outputs

    def failures(self) -> list[tuple[str, str]]:
        """(state, error) for every failed Lambda invocation."""
        failed, current = [], None
        for event in self.history:
            if "stateEnteredEventDetails" in event:
                current = event["stateEnteredEventDetails"]["name"]
            details = event.get("lambdaFunctionFailedEventDetails")
            if details:
                failed.append((current, details.get("error")))
        return failed


@dataclass
class Outcome:
    """A backfill from its first execution to the last one it handed over to."""

    executions: list[ExecutionResult]
    run_id: str | None
    report: dict[str, Any] | None
    physics: PhysicsLog
    invocations: list[Invocation]  # every Lambda invocation of this run, cleanup_on_exit included
    seconds: float

    @property
    def last(self) -> ExecutionResult:
        return self.executions[-1]

    @property
    def status(self) -> str:
        return self.last.status

    @property
    def error(self) -> str | None:
        return self.last.error

    def entered(self) -> list[str]:
        return [name for execution in self.executions for name in execution.entered()]

    def invoked(self) -> list[str]:
        """Handler names in the order this run invoked them."""
        return [invocation.name for invocation in self.invocations]

    def monitor_results(self) -> list[dict[str, Any]]:
        return [run for execution in self.executions for run in execution.lambda_outputs("Monitor")]


class Cloud:
    """One deployed stack in moto, its Lambda dispatcher, and helpers to run backfills on it."""

    def __init__(self, session: boto3.session.Session, stack: StackOutputs, lambdas: Dispatcher) -> None:
        self.session = session
        self.stack = stack
        self.lambdas = lambdas
        self.sfn = session.client("stepfunctions")
        self.s3 = session.client("s3")

    def update_stack(self, parameters: dict[str, str]) -> StackOutputs:
        """Update the deployed stack with new parameter values, as `sam deploy` does (others keep theirs)."""
        self.stack = update_stack(self.stack.stack_name, parameters, session=self.session)
        return self.stack

    # ---- inputs

    def put_inputs(self, name: str, shards: int) -> str:
        """`shards` input objects under `inputs/<name>/` in the data bucket, and a model; the input prefix."""
        for index in range(shards):
            self.s3.put_object(
                Bucket=self.stack.data_bucket, Key=f"inputs/{name}/part-{index:05d}.npy", Body=b"\x93NUMPY"
            )
        self.s3.put_object(Bucket=self.stack.data_bucket, Key=f"models/{name}.keras", Body=b"PK\x03\x04")
        return f"s3://{self.stack.data_bucket}/inputs/{name}/"

    def spec(
        self,
        name: str,
        *,
        shards: int = 3,
        limits: dict[str, Any] | None = None,
        fleet_api: str = "ec2-fleet",
        **overrides: Any,
    ) -> dict:
        """A small backfill spec over fresh inputs: 1 s polls, so a run takes seconds. Its registration and
        stall timeouts are far above what a run takes even on a machine busy with other work (each test of a
        timeout sets its own short one), so a slow machine does not end a run that would succeed."""
        input_uri = self.put_inputs(name, shards)
        spec: dict[str, Any] = {
            "name": name,
            "input": {"uri": input_uri, "format": "npy"},
            "output": {"uri": f"s3://{self.stack.data_bucket}/outputs/{name}/", "format": "jsonl"},
            "model": {"uri": f"s3://{self.stack.data_bucket}/models/{name}.keras"},
            "fleet": {"instance_types": ["c5.large"], "target_capacity": 2, "api": fleet_api},
            "service": {"tasks_per_instance": 1, "cpu": 1024, "memory": 2048},
            "limits": {
                "max_runtime_seconds": 600,
                "registration_timeout_seconds": 30,
                "stall_timeout_seconds": 30,
                "poll_interval_seconds": 1,
                **(limits or {}),
            },
        }
        spec.update(overrides)
        return spec

    # ---- runs

    def start(self, execution_input: Any, name: str | None = None) -> str:
        # Always named: moto's interpreter names an unnamed execution "None", so every one would share an ARN.
        return self.sfn.start_execution(
            stateMachineArn=self.stack.state_machine_arn,
            name=name or f"sfn-{uuid.uuid4().hex[:12]}",
            input=json.dumps(execution_input),
        )["executionArn"]

    def wait(self, execution_arn: str, timeout: float = RUN_TIMEOUT) -> ExecutionResult:
        deadline = time.monotonic() + timeout
        while True:
            described = self.sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"execution {execution_arn} still RUNNING after {timeout} s")
            time.sleep(0.1)
        history: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
        while True:
            page = self.sfn.get_execution_history(**kwargs)
            history.extend(page["events"])
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        return ExecutionResult(
            arn=execution_arn,
            status=described["status"],
            error=described.get("error"),
            cause=described.get("cause"),
            output=json.loads(described["output"]) if described.get("output") else None,
            history=history,
        )

    def run(
        self,
        execution_input: Any,
        knobs: Knobs | None = None,
        *,
        timeout: float = RUN_TIMEOUT,
        abort_in: str | None = None,
    ) -> Outcome:
        """Start an execution, run the physics while it (and any execution it hands over to) runs, and
        return what happened: statuses, histories, the run id and its report.

        `abort_in`: stop the execution (StopExecution, as a user in the console) once it enters that state.
        A FAILED, TIMED_OUT or ABORTED end is delivered to the status-change rule's Lambda (cleanup_on_exit).
        """
        started = time.monotonic()
        first_invocation = len(self.lambdas.invocations)
        physics = Physics(self.session, knobs or Knobs())
        physics.start()
        try:
            execution_arn = self.start(execution_input)
            if abort_in is not None:
                self._abort_in(execution_arn, abort_in, timeout)
            executions = [self.wait(execution_arn, timeout)]
            while executions[-1].entered()[-1:] == ["HandedOver"]:
                (handover,) = executions[-1].lambda_outputs("ContinueAsNew")
                executions.append(self.wait(handover["execution_arn"], timeout))
            self.deliver_status_change(executions[-1])
        finally:
            physics.stop()
        run_id = _run_id(executions)
        return Outcome(
            executions=executions,
            run_id=run_id,
            report=self.report(run_id) if run_id else None,
            physics=physics.log,
            invocations=self.lambdas.invocations[first_invocation:],
            seconds=time.monotonic() - started,
        )

    def _abort_in(self, execution_arn: str, state: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            events = self.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
            if any(e.get("stateEnteredEventDetails", {}).get("name") == state for e in events):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"execution {execution_arn} never entered {state}")
            time.sleep(0.1)
        self.sfn.stop_execution(
            executionArn=execution_arn, error="Aborted", cause=f"stopped by the test in {state}"
        )

    def deliver_status_change(self, execution: ExecutionResult) -> list[str]:
        """Deliver the execution's "Step Functions Execution Status Change" event to the Lambda targets of the
        rules it matches, synchronously (moto matches rules but delivers no Lambda targets). Returns the
        function ARNs invoked."""
        described = self.sfn.describe_execution(executionArn=execution.arn)
        detail = {
            "executionArn": execution.arn,
            "stateMachineArn": described["stateMachineArn"],
            "name": described["name"],
            "status": described["status"],
            "startDate": int(described["startDate"].timestamp() * 1000),
            "stopDate": int(described["stopDate"].timestamp() * 1000) if described.get("stopDate") else None,
            "input": described.get("input"),
            "output": described.get("output"),
            "error": described.get("error"),
            "cause": described.get("cause"),
        }
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Step Functions Execution Status Change",
            "source": "aws.states",
            "account": execution.arn.split(":")[4],
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": REGION,
            "resources": [execution.arn],
            "detail": detail,
        }
        return [arn for arn, _ in self.deliver(event)]

    def deliver(self, event: dict[str, Any]) -> list[tuple[str, Any]]:
        """Deliver an event to the Lambda and state machine targets of the enabled rules it matches,
        synchronously, as EventBridge would (moto matches rules but delivers neither). Returns (target ARN,
        the function's result or `{"execution_arn"}` of the execution started) for each target."""
        events, lambda_ = self.session.client("events"), self.session.client("lambda")
        invoked: list[tuple[str, Any]] = []
        for rule in events.list_rules()["Rules"]:
            # a schedule rule (no pattern) matches no event
            if rule.get("State") != "ENABLED" or not rule.get("EventPattern"):
                continue
            if not _matches(json.loads(rule["EventPattern"]), event):
                continue
            for target in events.list_targets_by_rule(Rule=rule["Name"])["Targets"]:
                payload = json.dumps(target_input(target, event))
                if ":lambda:" in target["Arn"]:
                    response = lambda_.invoke(FunctionName=target["Arn"], Payload=payload.encode())
                    invoked.append((target["Arn"], json.loads(response["Payload"].read() or b"null")))
                elif ":states:" in target["Arn"]:
                    # EventBridge names no execution: each delivery is a new one (a uuid, as AWS names it)
                    started = self.sfn.start_execution(
                        stateMachineArn=target["Arn"], name=str(uuid.uuid4()), input=payload
                    )
                    invoked.append((target["Arn"], {"execution_arn": started["executionArn"]}))
        return invoked

    def upload_manifest(self, key: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Put a manifest into the control bucket; returns the S3 "Object Created" event AWS sends EventBridge
        for it (URL-encoded key, the new version's id and ETag), for `deliver`."""
        put = self.s3.put_object(Bucket=self.stack.control_bucket, Key=key, Body=json.dumps(spec).encode())
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Object Created",
            "source": "aws.s3",
            "account": self.stack.state_machine_arn.split(":")[4],
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": REGION,
            "resources": [f"arn:aws:s3:::{self.stack.control_bucket}"],
            "detail": {
                "version": "0",
                "bucket": {"name": self.stack.control_bucket},
                "object": {
                    "key": quote_plus(key, safe="/"),
                    "size": len(json.dumps(spec)),
                    "etag": put["ETag"].strip('"'),
                    "version-id": put["VersionId"],
                    "sequencer": f"{time.time_ns():018X}",
                },
                "request-id": uuid.uuid4().hex[:16].upper(),
                "requester": self.stack.state_machine_arn.split(":")[4],
                "source-ip-address": "203.0.113.15",
                "reason": "PutObject",
            },
        }

    def report(self, run_id: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=self.stack.control_bucket, Key=f"reports/{run_id}.json")["Body"]
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(body.read())

    def outputs(self, name: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.stack.data_bucket, Prefix=f"outputs/{name}/")
        return sorted(o["Key"] for o in listed.get("Contents", []))


def _matches(pattern: Any, value: Any) -> bool:
    """EventBridge pattern matching, for the exact-value lists and prefixes spotfill's rules use."""
    if isinstance(pattern, dict) and set(pattern) == {"prefix"}:
        return isinstance(value, str) and value.startswith(pattern["prefix"])
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(_matches(p, value.get(k)) for k, p in pattern.items())
    if isinstance(pattern, list):
        return (
            any(_matches(p, value) for p in pattern)
            if not isinstance(value, list)
            else any(_matches(pattern, v) for v in value)
        )
    return pattern == value


def _run_id(executions: list[ExecutionResult]) -> str | None:
    for execution in executions:
        for result in execution.lambda_outputs("Validate"):
            return result["run"]["run_id"]
    return None


# ------------------------------------------------------------------------------------------- the cloud


_gaps_filled = False


def fill_moto_gaps() -> None:
    """Implement the AWS APIs spotfill calls that moto 5.2.5 lacks (in process, idempotent).

    - `ec2:DeleteLaunchTemplateVersions` (teardown removes the run's launch template version), which moto
      lacks: the local cloud's `patches.launch_templates.delete_launch_template_versions_as_ec2_does`, shared.
    - EC2 Spot vCPU quotas in Service Quotas and settable instance type offerings: the local cloud's
      `patches.account_limits.patch_account_limits`, shared.
    - The launch template physics the local cloud has too (`spotfill.localcloud.patches`): a Spot Fleet
      launches from the version its request names; `CreateLaunchTemplateVersion` inherits its
      `SourceVersion`; a stack update updates what references an updated resource, and a launch template's
      `LatestVersionNumber` is the version CloudFormation made.
    - Spot Fleet's ActivityStatus, request history, failing pools and ValidUntil: the local cloud's model of
      them (`spotfill.localcloud.patches.install_fleet_model`).
    - The Price List Query API (`pricing:GetProducts`) and spot prices in DescribeSpotPriceHistory:
      `patches.account_limits.patch_account_limits` too (`spotfill.localcloud.pricing`).
    """
    from spotfill.localcloud.patches import install_fleet_model
    from spotfill.localcloud.patches.account_limits import patch_account_limits
    from spotfill.localcloud.patches.cloudformation import update_stacks_as_cloudformation_does
    from spotfill.localcloud.patches.launch_templates import (
        delete_launch_template_versions_as_ec2_does,
        inherit_launch_template_source_versions,
    )
    from spotfill.localcloud.patches.spot_prices import quote_spot_prices

    patch_account_limits()
    global _gaps_filled
    if _gaps_filled:
        return
    install_fleet_model()
    inherit_launch_template_source_versions()
    update_stacks_as_cloudformation_does()
    delete_launch_template_versions_as_ec2_does()
    quote_spot_prices()
    _gaps_filled = True


# The account the stack is deployed into: its Standard Spot quota never changed (a new account's 5 vCPUs,
# which the scenarios' 2 x c5.large fit), its G and VT quota raised from 0 (for GPU runs), and its worker
# image pushed to its ECR, so Validate's preflight passes.
ACCOUNT_SPOT_VCPUS: dict[str, float | None] = {"L-34B43A08": None, "L-3819A6DF": 64}
WORKER_REPOSITORY = "spotfill-worker"
WORKER_IMAGE = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/{WORKER_REPOSITORY}:sfn"
# The arm64 (Graviton) image, in a repository of its own so that its grant is exercised apart.
WORKER_REPOSITORY_ARM64 = "spotfill-worker-arm64"
WORKER_IMAGE_ARM64 = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/{WORKER_REPOSITORY_ARM64}:sfn"


def set_spot_quota(code: str, vcpus: float | None) -> None:
    """Apply a Spot vCPU quota value in the cloud's account (None: never changed, the AWS default applies)."""
    from spotfill.localcloud.patches.account_limits import set_service_quota

    set_service_quota(code, vcpus, region=REGION)


@contextmanager
def spot_quota(code: str, vcpus: float | None) -> Iterator[None]:
    """The account's Spot vCPU quota `code` is `vcpus` for the block, then as the account had it."""
    set_spot_quota(code, vcpus)
    try:
        yield
    finally:
        set_spot_quota(code, ACCOUNT_SPOT_VCPUS.get(code))


def _prepare_account(session: boto3.session.Session) -> None:
    for code, vcpus in ACCOUNT_SPOT_VCPUS.items():
        set_spot_quota(code, vcpus)
    ecr = session.client("ecr")
    config = {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023}
    for repository, digit in ((WORKER_REPOSITORY, "5f"), (WORKER_REPOSITORY_ARM64, "a6")):
        ecr.create_repository(repositoryName=repository)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {**config, "digest": "sha256:" + digit * 32},
            "layers": [],
        }
        ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag="sfn")


@contextmanager
def deployed_cloud(stack_name: str = "sfn") -> Iterator[Cloud]:
    """moto with Step Functions execution on, the stack deployed from template.yaml, Lambda in process; the
    worker image is in the account's ECR and Spot quotas are raised (`ACCOUNT_SPOT_VCPUS`)."""
    fill_moto_gaps()
    fake_account = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
    # Module-scoped fixtures start before the per-test credentials fixture, and the SAM translator reads the
    # region from the environment: set both for the life of the cloud.
    with (
        mock.patch.dict(os.environ, fake_account),
        mock_aws(config=SFN_CONFIG),
        inprocess_lambdas(enforce_iam=True) as lambdas,
    ):
        session = boto3.session.Session(region_name=REGION)
        _prepare_account(session)
        stack = deploy_stack(
            stack_name, {"WorkerImage": WORKER_IMAGE, "WorkerImageArm64": WORKER_IMAGE_ARM64}, session=session
        )
        yield Cloud(session, stack, lambdas)


def leftovers(session: boto3.session.Session, run_id: str | None = None) -> dict[str, list[str]]:
    """Everything of a run (or of any run) that should be gone after teardown, by kind."""
    ec2, ecs, sqs = session.client("ec2"), session.client("ecs"), session.client("sqs")
    scope = f"spotfill-{run_id}" if run_id else "spotfill-"
    left: dict[str, list[str]] = {}
    left["active fleets"] = [
        fleet_id
        for fleet_id, state, tags in live_fleets(ec2)
        if state in ACTIVE_FLEET_STATES and (run_id is None or tags.get(RUN_TAG) == run_id)
    ]
    reservations = ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    )["Reservations"]
    left["instances"] = [i["InstanceId"] for r in reservations for i in r["Instances"]]
    left["queues"] = sqs.list_queues(QueueNamePrefix=scope).get("QueueUrls", [])
    clusters = ecs.describe_clusters(clusters=ecs.list_clusters()["clusterArns"])["clusters"]
    run_clusters = [c for c in clusters if c["clusterName"].startswith(scope) and c["status"] == "ACTIVE"]
    left["clusters"] = [c["clusterName"] for c in run_clusters]
    left["services"] = [
        service["serviceArn"]
        for cluster in clusters
        if cluster["clusterName"].startswith(scope)
        for arns in [ecs.list_services(cluster=cluster["clusterArn"])["serviceArns"]]
        if arns
        for service in ecs.describe_services(cluster=cluster["clusterArn"], services=arns)["services"]
        if service["status"] in ("ACTIVE", "DRAINING")
    ]
    family = f"{scope}:" if run_id else scope  # a run's family is exactly `spotfill-<run id>`
    left["task definitions"] = [
        arn
        for page in ecs.get_paginator("list_task_definitions").paginate(status="ACTIVE")
        for arn in page["taskDefinitionArns"]
        if arn.split("/")[-1].startswith(family)
    ]
    return {kind: names for kind, names in left.items() if names}


def assert_nothing_left(session: boto3.session.Session, run_id: str | None = None) -> None:
    """No active fleet, no running instance, no run-scoped queue, service, cluster or task definition."""
    left = leftovers(session, run_id)
    assert not left, f"left behind after the run: {left}"
