"""The scale rehearsal's world: the emulator process, the stack's resources, and the fleet's stand-in workers.

`Emulator` starts `bench.scale_emulator` (moto's server, patched to scale) in a process of its own and
sends it the commands AWS has no verb for. `build_world` creates what the stack would have (buckets, launch
template, roles, security group, topic, event bus, the worker image in ECR) and the run's input shards, and
sets the functions' environment as template.yaml does. `StandInFleet` is the fleet: one light stand-in per
emulated instance, registered as an ECS container instance of the run's cluster, taking shard messages from
the run's queue and writing outputs and error records with the worker's own S3 and SQS calls
(worker/spotfill_worker).
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from bench.scale_emulator import ACCOUNT_ID, REGION, serve

CONTROL_BUCKET = "spotfill-control-scale"
DATA_BUCKET = "spotfill-data-scale"
INPUT_PREFIX = "inputs/scale/"
OUTPUT_PREFIX = "outputs/scale/"
MODEL_KEY = "models/scale.keras"
INSTANCE_TYPE = "c5.xlarge"
ROWS_PER_SHARD = 7
RECEIVE_BATCH = 10  # SQS's most messages per ReceiveMessage
STAND_IN_CALLS = ("boto3", "backend")
_FAKE_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class EmulatorError(RuntimeError):
    """A command to the emulator process failed (its message names the command)."""


class Emulator:
    """`bench.scale_emulator.serve` in a spawned process; `call(command, *arguments)` runs a Physics one."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=serve, args=(self.port, child), daemon=True)
        self.endpoint_url = ""

    def __enter__(self) -> Emulator:
        self._process.start()
        if not self._connection.poll(120):
            self._process.kill()
            raise EmulatorError("the emulator process did not start within 120 s")
        _, self.endpoint_url = self._connection.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process.is_alive():
            try:
                self._connection.send(("stop", ()))
                self._connection.poll(10)
            finally:
                self._process.join(timeout=10)
                if self._process.is_alive():
                    self._process.kill()
                    self._process.join(timeout=5)

    def call(self, command: str, *arguments: Any) -> Any:
        self._connection.send((command, arguments))
        status, value = self._connection.recv()
        if status != "ok":
            raise EmulatorError(value)
        return value


def npy_body(rows: int) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((rows, 4), dtype=np.float32))
    return buffer.getvalue()


def input_key(index: int) -> str:
    return f"{INPUT_PREFIX}day-{index % 31:02d}/part-{index:09d}.npy"


def spec(instances: int, poll_seconds: int) -> dict[str, Any]:
    from spotfill_control.spec import MAX_HANDOVER_AFTER_ITERATIONS

    return {
        "name": "scale-rehearsal",
        "input": {"uri": f"s3://{DATA_BUCKET}/{INPUT_PREFIX}", "format": "npy"},
        "output": {"uri": f"s3://{DATA_BUCKET}/{OUTPUT_PREFIX}", "format": "npy"},
        "model": {"uri": f"s3://{DATA_BUCKET}/{MODEL_KEY}"},
        "fleet": {"instance_types": [INSTANCE_TYPE], "target_capacity": instances},
        "service": {"tasks_per_instance": 1, "cpu": 1024, "memory": 2048},
        "limits": {
            "max_runtime_seconds": 86_400,
            "registration_timeout_seconds": 3_600,
            "stall_timeout_seconds": 7_200,
            "poll_interval_seconds": poll_seconds,
            "handover_after_iterations": MAX_HANDOVER_AFTER_ITERATIONS,
        },
    }


def client_environment(endpoint_url: str) -> dict[str, str]:
    return {
        **_FAKE_KEYS,
        "AWS_SESSION_TOKEN": "",
        "AWS_SECURITY_TOKEN": "",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def build_world(emulator: Emulator, shards: int) -> dict[str, str]:
    """Create the stack's resources and `shards` input objects; returns the functions' environment (set in
    os.environ too)."""
    session = boto3.session.Session(region_name=REGION, **_aws_keys())
    make = lambda name: session.client(name, endpoint_url=emulator.endpoint_url)  # noqa: E731
    s3, ec2, iam, logs, sns, events, ecr = (
        make(n) for n in ("s3", "ec2", "iam", "logs", "sns", "events", "ecr")
    )
    for bucket in (CONTROL_BUCKET, DATA_BUCKET):
        s3.create_bucket(Bucket=bucket)
    body = npy_body(ROWS_PER_SHARD)
    for start in range(0, shards, 50_000):
        keys = [input_key(i) for i in range(start, min(shards, start + 50_000))]
        emulator.call("put_objects", DATA_BUCKET, keys, body, {})
    s3.put_object(Bucket=DATA_BUCKET, Key=MODEL_KEY, Body=b"a model")

    profile = iam.create_instance_profile(InstanceProfileName="spotfill-instance")["InstanceProfile"]
    template_id = ec2.create_launch_template(
        LaunchTemplateName="spotfill-fleet",
        LaunchTemplateData={
            "ImageId": "ami-0123456789abcdef0",
            "IamInstanceProfile": {"Arn": profile["Arn"]},
        },
    )["LaunchTemplate"]["LaunchTemplateId"]
    trust = json.dumps({"Version": "2012-10-17", "Statement": []})
    roles = {
        name: iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        for name in ("spotfill-fleet", "spotfill-task", "spotfill-execution")
    }
    subnets = sorted(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s.get("DefaultForAz"))[:2]
    group = ec2.create_security_group(GroupName="spotfill-fleet", Description="no ingress")["GroupId"]
    logs.create_log_group(logGroupName="/spotfill/worker")
    topic = sns.create_topic(Name="spotfill-runs")["TopicArn"]
    events.create_event_bus(Name="spotfill-bus")
    ecr.create_repository(repositoryName="spotfill-worker")
    config = {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {**config, "digest": "sha256:" + "7e" * 32},
        "layers": [],
    }
    ecr.put_image(repositoryName="spotfill-worker", imageManifest=json.dumps(manifest), imageTag="scale")
    environment = {
        "CONTROL_BUCKET": CONTROL_BUCKET,
        "WORKER_IMAGE": f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/spotfill-worker:scale",
        "TASK_ROLE_ARN": roles["spotfill-task"],
        "EXECUTION_ROLE_ARN": roles["spotfill-execution"],
        "FLEET_ROLE_ARN": roles["spotfill-fleet"],
        "INSTANCE_PROFILE_ARN": profile["Arn"],
        "LAUNCH_TEMPLATE_ID": template_id,
        "LAUNCH_TEMPLATE_VERSION": "1",
        "SECURITY_GROUP_ID": group,
        "DEFAULT_SUBNETS": ",".join(subnets),
        "WORKER_LOG_GROUP": "/spotfill/worker",
        "NOTIFICATION_TOPIC_ARN": topic,
        "EVENT_BUS_NAME": "spotfill-bus",
        "POWERTOOLS_SERVICE_NAME": "spotfill-scale",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_METRICS_NAMESPACE": "spotfill",
    }
    os.environ.update(environment)
    return environment


def _aws_keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass
class StandIn:
    """One emulated instance's worker: what it holds received and not yet finished."""

    instance_id: str
    container_instance_arn: str
    held: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FleetTally:
    receives: int = 0
    outputs_written: int = 0
    outputs_refused: int = 0  # conditional puts that found the output already there (412)
    failures: int = 0
    error_records: int = 0
    interrupted_instances: int = 0
    messages_lost_to_interruptions: int = 0
    instances_booted: int = 0
    instances_gone: int = 0


class StandInFleet:
    """The run's fleet of light stand-in workers, in the emulator's process (`Physics.start_fleet`), whose
    boto3 clients moto serves in process (`mock_aws`) from the same backends as the endpoint: `sync` boots and
    retires them with the emulated EC2, `work` has them process up to N shard messages, `interrupt` reclaims
    some mid-shard.

    A shard whose key is in `poisoned` always fails: the stand-in writes the worker's error record and makes
    its message visible again, so SQS redrives it to the dead-letter queue after the receive limit."""

    def __init__(
        self,
        physics: Any,
        run: dict[str, Any],
        poisoned: set[str],
        visibility_timeout: int,
        model_etag: str,
        seed: int = 17,
        calls: str = "boto3",
    ) -> None:
        session = boto3.session.Session(region_name=REGION, **_aws_keys())
        config = Config(retries={"mode": "standard", "max_attempts": 5})
        self.s3 = session.client("s3", config=config)
        self.sqs = session.client("sqs", config=config)
        self.ecs = session.client("ecs", config=config)
        if calls not in STAND_IN_CALLS:
            raise ValueError(f"stand-in calls must be one of {', '.join(STAND_IN_CALLS)}, not {calls!r}")
        # what the stand-ins take shards and write outputs with (`check` lists with the boto3 client)
        self.shard_sqs: Any = self.sqs if calls == "boto3" else BackendSqs()
        self.shard_s3: Any = self.s3 if calls == "boto3" else BackendS3()
        self.physics = physics
        self.run_id = run["run_id"]
        self.queue_url = run["resources"]["queue_url"]
        self.cluster = run["resources"]["cluster_name"]
        self.poisoned = poisoned
        self.visibility_timeout = visibility_timeout
        self.model_etag = model_etag
        self.instances: dict[str, StandIn] = {}
        self.outputs: dict[str, str] = {}  # shard -> the output its stand-in wrote
        self.tally = FleetTally()
        self.random = random.Random(seed)
        self._turn = 0

    def sync(self) -> None:
        """One EC2 tick: each booted instance's ECS agent joins the run's cluster and its stand-in starts; a
        terminated instance's stand-in stops (what it held comes back after the visibility timeout) and ECS
        deregisters it, as it does a terminated instance."""
        changes = self.physics.step_fleet()
        for instance_id, instance_type in changes["booted"]:
            document = {
                "instanceId": instance_id,
                "instanceType": instance_type,
                "region": REGION,
                "availabilityZone": f"{REGION}a",
            }
            registered = self.ecs.register_container_instance(
                cluster=self.cluster, instanceIdentityDocument=json.dumps(document)
            )
            arn = registered["containerInstance"]["containerInstanceArn"]
            self.instances[instance_id] = StandIn(instance_id, arn)
            self.tally.instances_booted += 1
        for instance_id in changes["gone"]:
            stand_in = self.instances.pop(instance_id, None)
            if stand_in is None:
                continue
            self.tally.instances_gone += 1
            with contextlib.suppress(ClientError):  # the cluster is gone already (teardown)
                self.ecs.deregister_container_instance(
                    cluster=self.cluster, containerInstance=stand_in.container_instance_arn, force=True
                )

    def check(self, shards: int) -> dict[str, Any]:
        """Every shard but the poisoned ones has exactly one output, the one its stand-in wrote."""
        expected = {f"s3://{DATA_BUCKET}/{input_key(i)}" for i in range(shards)} - self.poisoned
        listed: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=DATA_BUCKET, Prefix=OUTPUT_PREFIX
        ):
            listed.extend(f"s3://{DATA_BUCKET}/{o['Key']}" for o in page.get("Contents", []))
        return {
            "outputs_listed": len(listed),
            "outputs_expected": len(expected),
            "every_shard_one_output": set(self.outputs) == expected
            and len(listed) == len(set(listed)) == len(expected)
            and set(listed) == set(self.outputs.values()),
            "no_output_for_poisoned": not (self.poisoned & set(self.outputs)),
        }

    def work(self, shards: int) -> int:
        """Process up to `shards` messages across the live stand-ins in turn; returns how many were taken
        (0: the queue had none visible)."""
        taken = 0
        idle_in_a_row = 0
        while taken < shards and self.instances and idle_in_a_row < len(self.instances):
            ids = sorted(self.instances)
            stand_in = self.instances[ids[self._turn % len(ids)]]
            self._turn += 1
            got = self._take(stand_in, min(RECEIVE_BATCH, shards - taken))
            if not got:
                idle_in_a_row += 1
                continue
            idle_in_a_row = 0
            taken += len(got)
            self._process(got)
        return taken

    def interrupt(self, count: int) -> list[str]:
        """Spot reclaims `count` instances, each holding a batch of messages it received and never ends."""
        live = sorted(self.instances)
        chosen = self.random.sample(live, min(count, len(live)))
        for instance_id in chosen:
            held = self._take(self.instances[instance_id], RECEIVE_BATCH)
            self.tally.messages_lost_to_interruptions += len(held)
        self.physics.interrupt(chosen)
        self.tally.interrupted_instances += len(chosen)
        return chosen

    def _take(self, stand_in: StandIn, count: int) -> list[dict[str, Any]]:
        response = self.shard_sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=0,
            VisibilityTimeout=self.visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        self.tally.receives += 1
        return response.get("Messages", [])

    def _process(self, messages: list[dict[str, Any]]) -> None:
        done, failed = [], []
        for message in messages:
            body = json.loads(message["Body"])
            if body["shard"] in self.poisoned:
                self._write_error_record(body, message)
                failed.append(message)
                continue
            bucket, key = body["output"][len("s3://") :].split("/", 1)
            try:
                self.shard_s3.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=b"ok",
                    IfNoneMatch="*",
                    Metadata={
                        "spotfill-rows": str(ROWS_PER_SHARD),
                        "spotfill-run-id": self.run_id,
                        "spotfill-model-etag": self.model_etag,
                        "spotfill-purchase-option": "spot",
                        "spotfill-instance-type": INSTANCE_TYPE,
                    },
                )
                self.tally.outputs_written += 1
                if body["shard"] in self.outputs:
                    raise AssertionError(f"shard {body['shard']} got a second output")
                self.outputs[body["shard"]] = body["output"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                    raise
                self.tally.outputs_refused += 1
            done.append(message)
        if done:
            self.shard_sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
        if failed:
            self.tally.failures += len(failed)
            self.shard_sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(failed)
                ],
            )

    def _write_error_record(self, body: dict[str, Any], message: dict[str, Any]) -> None:
        """The record worker.Worker._fail writes at the message's `error` URI."""
        reason = "ValueError: the stand-in refuses this poisoned shard"
        record = {
            "run_id": self.run_id,
            "shard": body["shard"],
            "output": body["output"],
            "message_id": message["MessageId"],
            "receive_count": int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
            "error_type": "ValueError",
            "error": "the stand-in refuses this poisoned shard",
            "reason": reason,
            "traceback": f"Traceback (most recent call last):\n{reason}\n",
            "worker": "scale-stand-in",
            "time": datetime.now(UTC).isoformat(),
        }
        bucket, key = body["error"][len("s3://") :].split("/", 1)
        self.shard_s3.put_object(
            Bucket=bucket, Key=key, Body=json.dumps(record, indent=2).encode(), ContentType="application/json"
        )
        self.tally.error_records += 1


class BackendSqs:
    """The stand-ins' SQS calls (`--stand-in-calls backend`) made on moto's backend in this process: the same
    operations on the same queues (receive with a visibility timeout, delete, visibility back to 0, redrive
    after the receive limit), without boto3's request building and moto's parsing and serialising, which cost
    a few milliseconds a shard and would make most of a million-shard rehearsal. The handlers' calls are never
    made this way."""

    def __init__(self) -> None:
        from moto.sqs.models import sqs_backends

        self.backend = sqs_backends[ACCOUNT_ID][REGION]

    @staticmethod
    def _queue(url: str) -> str:
        return url.rstrip("/").rsplit("/", 1)[-1]

    def receive_message(
        self,
        QueueUrl: str,
        MaxNumberOfMessages: int,
        WaitTimeSeconds: int,
        VisibilityTimeout: int,
        MessageSystemAttributeNames: list[str] | None = None,
    ) -> dict[str, Any]:
        messages = self.backend.receive_message(
            self._queue(QueueUrl), MaxNumberOfMessages, WaitTimeSeconds, VisibilityTimeout
        )
        return {
            "Messages": [
                {
                    "MessageId": m.id,
                    "ReceiptHandle": m.receipt_handle,
                    "Body": m.body,
                    "Attributes": {"ApproximateReceiveCount": str(m.approximate_receive_count)},
                }
                for m in messages
            ]
        }

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        from moto.sqs.exceptions import ReceiptHandleIsInvalid

        failed = []
        for entry in Entries:
            try:
                self.backend.delete_message(self._queue(QueueUrl), entry["ReceiptHandle"])
            except ReceiptHandleIsInvalid as exc:
                failed.append({"Id": entry["Id"], "SenderFault": True, "Code": exc.code})
        return {"Successful": [], "Failed": failed}

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        _, failed = self.backend.change_message_visibility_batch(self._queue(QueueUrl), Entries)
        return {"Failed": failed}


class BackendS3:
    """The stand-ins' PutObject (`--stand-in-calls backend`) on moto's backend in this process: the
    conditional write (`IfNoneMatch: *` refused with PreconditionFailed when the key exists) and the user
    metadata as S3 keeps them, without the HTTP layer (see `BackendSqs`). Parameters keep boto3's names."""

    def __init__(self) -> None:
        from moto.s3.models import s3_backends

        self.backend = s3_backends[ACCOUNT_ID]["aws"]

    def put_object(
        self,
        Bucket: str,
        Key: str,
        Body: bytes,
        IfNoneMatch: str | None = None,
        Metadata: dict[str, str] | None = None,
        ContentType: str | None = None,
    ) -> dict[str, Any]:
        if IfNoneMatch == "*" and self.backend.get_object(Bucket, Key) is not None:
            raise ClientError(
                {
                    "Error": {
                        "Code": "PreconditionFailed",
                        "Message": "At least one of the pre-conditions you specified did not hold",
                    }
                },
                "PutObject",
            )
        stored = self.backend.put_object(Bucket, Key, Body)
        metadata = {f"x-amz-meta-{name}": value for name, value in (Metadata or {}).items()}
        if ContentType:
            metadata["Content-Type"] = ContentType
        if metadata:
            stored.set_metadata(metadata)
        return {"ETag": stored.etag}
