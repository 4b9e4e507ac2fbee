"""Scaffolding of the monitor / teardown / report tier: moto, the functions' environment, and runs in flight.

`world` builds what the stack would have created (buckets, the fleet launch template, roles, topic, an event
bus rule and SNS subscription that land in SQS so tests can read what the report published) and points the
functions' environment at it. `running_run` drives the first half of the control plane (validate, prepare,
request the fleet, register its instances, scale the service) through the real handlers, so monitor,
teardown and report are tested on runs shaped exactly as the state machine hands them over.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from moto import mock_aws
from spotfill_control import aws, shards
from spotfill_control.config import Settings, settings

from spotfill.localcloud.patches.account_limits import patch_account_limits, set_service_quota

REGION = "us-east-1"
ACCOUNT = "123456789012"
CONTROL_BUCKET = "spotfill-control-monitor"
DATA_BUCKET = "spotfill-data-monitor"
STATE_MACHINE_ARN = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:spotfill-backfill"
EXECUTION_ARN = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:spotfill-backfill:exec-0001"
AMI_ID = "ami-0123456789abcdef0"
ROWS_PER_SHARD = 7


def sample_spec(shards: int = 3, fleet: dict[str, Any] | None = None, **limits: Any) -> dict[str, Any]:
    """The monitor tests' spec: `fleet` adds to (or replaces) its fleet's fields, `limits` to its limits."""
    return {
        "name": "monitor-test",
        "input": {"uri": f"s3://{DATA_BUCKET}/inputs/digits/", "format": "npy"},
        "output": {"uri": f"s3://{DATA_BUCKET}/outputs/digits/", "format": "npy"},
        "model": {"uri": f"s3://{DATA_BUCKET}/models/digits.keras"},
        "fleet": {"instance_types": ["c5.xlarge", "c5.2xlarge"], "target_capacity": 4, **(fleet or {})},
        "service": {"tasks_per_instance": 1, "cpu": 1024, "memory": 2048},
        "limits": {
            "max_runtime_seconds": 3600,
            "registration_timeout_seconds": 600,
            "stall_timeout_seconds": 600,
            "poll_interval_seconds": 5,
            **limits,
        },
    }


def npy_bytes(rows: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((rows, 4), dtype=np.float32))
    return buffer.getvalue()


@dataclass
class World:
    settings: Settings
    s3: Any
    sqs: Any
    ec2: Any
    ecs: Any
    sfn: Any
    published_events_queue: str
    notifications_queue: str
    shard_keys: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ what workers and AWS do

    def write_output(
        self,
        run: dict[str, Any],
        shard_index: int,
        rows: int = ROWS_PER_SHARD,
        purchase_option: str = "spot",
        instance_type: str = "c5.xlarge",
        worker_rate: float | None = None,
    ) -> str:
        """What a worker does when it finishes a shard: the output object, with its metadata (rows, run, the
        purchase option and type of its instance, and with `worker_rate` the worker's rows per second), then
        the shard's message deleted (if it is still queued)."""
        rate = {} if worker_rate is None else {"spotfill-worker-rows-per-second": f"{worker_rate:.3f}"}
        entry = self.shard_list(run)["shards"][shard_index]
        bucket, key = entry["output"][len("s3://") :].split("/", 1)
        self.s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=npy_bytes(rows),
            Metadata={
                "spotfill-rows": str(rows),
                "spotfill-run-id": run["run_id"],
                "spotfill-purchase-option": purchase_option,
                "spotfill-instance-type": instance_type,
                **rate,
            },
        )
        self.delete_message_of(run, entry["shard"])
        return entry["output"]

    def delete_message_of(self, run: dict[str, Any], shard: str) -> None:
        """Delete the visible message of `shard` from the run's queue; the others stay visible."""
        url = run["resources"]["queue_url"]
        held = []
        while messages := self.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30
        ).get("Messages", []):
            held.extend(messages)
        for message in held:
            if json.loads(message["Body"])["shard"] == shard:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            else:
                self.sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )

    def write_error_record(self, run: dict[str, Any], shard_index: int) -> None:
        entry = self.shard_list(run)["shards"][shard_index]
        bucket, key = entry["error"][len("s3://") :].split("/", 1)
        self.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"error": "boom"}).encode())

    def drain_queue(self, run: dict[str, Any]) -> list[str]:
        """Receive and delete every message of the run's queue (workers took them); returns their shards."""
        shards = []
        url = run["resources"]["queue_url"]
        while True:
            messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return shards
            for message in messages:
                shards.append(json.loads(message["Body"])["shard"])
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def dead_letter(self, run: dict[str, Any], shard_index: int) -> str:
        """A shard that failed too often: its message sits in the dead-letter queue."""
        entry = self.shard_list(run)["shards"][shard_index]
        body = json.dumps({"run_id": run["run_id"], **{k: entry[k] for k in ("shard", "output", "error")}})
        self.sqs.send_message(QueueUrl=run["resources"]["dead_letter_queue_url"], MessageBody=body)
        return entry["shard"]

    def queue_shards(self, queue_url: str) -> list[str]:
        """The shards queued now (read, then made visible again)."""
        shards = []
        messages = self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=1)
        for message in messages.get("Messages", []):
            shards.append(json.loads(message["Body"])["shard"])
            self.sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        return shards

    def shard_list(self, run: dict[str, Any]) -> dict[str, Any]:
        found = shards.read_shard_list(run["run_id"], self.s3, CONTROL_BUCKET)
        assert found is not None, f"run {run['run_id']} has no shard list"
        return found.model_dump(mode="json")

    def fleet_instances(self, run: dict[str, Any]) -> list[str]:
        """The run's fleet's active instances, on whichever API it lives."""
        from spotfill_control.fleet.fleet import fleet_instances
        from spotfill_control.run import RunState

        return sorted(i.instance_id for i in fleet_instances(RunState.model_validate(run), self.ec2))

    def instance_states(self, instance_ids: list[str]) -> dict[str, str]:
        reservations = self.ec2.describe_instances(InstanceIds=instance_ids)["Reservations"]
        return {i["InstanceId"]: i["State"]["Name"] for r in reservations for i in r["Instances"]}

    def received(self, queue_url: str) -> list[dict[str, Any]]:
        messages = self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]

    def report(self, run_id: str) -> dict[str, Any]:
        body = self.s3.get_object(Bucket=CONTROL_BUCKET, Key=f"reports/{run_id}.json")["Body"]
        return json.loads(body.read())

    def stored_run(self, run_id: str) -> dict[str, Any]:
        body = self.s3.get_object(Bucket=CONTROL_BUCKET, Key=f"runs/{run_id}/state.json")["Body"]
        return json.loads(body.read())

    def known_instances(self, run_id: str) -> list[str]:
        """The instances the Monitor saw alive at its last poll (`runs/<run id>/instances.json`)."""
        body = self.s3.get_object(Bucket=CONTROL_BUCKET, Key=f"runs/{run_id}/instances.json")["Body"]
        return list(json.loads(body.read())["instances"])


@pytest.fixture
def moto_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from spotfill.localcloud.patches import install_fleet_model
    from spotfill.localcloud.patches.launch_templates import delete_launch_template_versions_as_ec2_does
    from spotfill.localcloud.patches.spot_prices import quote_spot_prices

    delete_launch_template_versions_as_ec2_does()
    install_fleet_model()  # EC2's Spot Fleet history, ActivityStatus and ValidUntil (moto has none)
    quote_spot_prices()  # spot prices the budget and the report can price runs with
    # moto parses thousands of public AMIs per fresh EC2 backend; these tests need none of them (and moto
    # does not validate image ids), which keeps each test's setup well under a second.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        aws.reset_clients()
        yield
    aws.reset_clients()


def _build_world(monkeypatch: pytest.MonkeyPatch, shards: int) -> World:
    # The tests share the handlers' own cached clients: creating an EC2 client costs more than a test.
    s3, ec2, iam, logs = aws.client("s3"), aws.client("ec2"), aws.client("iam"), aws.client("logs")
    sns, sqs, events = aws.client("sns"), aws.client("sqs"), aws.client("events")

    for bucket in (CONTROL_BUCKET, DATA_BUCKET):
        s3.create_bucket(Bucket=bucket)
    shard_keys = [f"inputs/digits/part-{i:05d}.npy" for i in range(shards)]
    for key in shard_keys:
        s3.put_object(Bucket=DATA_BUCKET, Key=key, Body=npy_bytes(ROWS_PER_SHARD))
    s3.put_object(Bucket=DATA_BUCKET, Key="models/digits.keras", Body=b"a model")

    ami = AMI_ID
    profile = iam.create_instance_profile(InstanceProfileName="spotfill-instance")["InstanceProfile"]
    template_id = ec2.create_launch_template(
        LaunchTemplateName="spotfill-fleet",
        LaunchTemplateData={"ImageId": ami, "IamInstanceProfile": {"Arn": profile["Arn"]}},
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

    # Where the report's announcements land, so tests can read them.
    notifications = sqs.create_queue(QueueName="notifications")["QueueUrl"]
    notifications_arn = sqs.get_queue_attributes(QueueUrl=notifications, AttributeNames=["QueueArn"])
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=notifications_arn["Attributes"]["QueueArn"],
        Attributes={"RawMessageDelivery": "false"},
    )
    bus = "spotfill-bus"
    events.create_event_bus(Name=bus)
    published = sqs.create_queue(QueueName="published-events")["QueueUrl"]
    published_arn = sqs.get_queue_attributes(QueueUrl=published, AttributeNames=["QueueArn"])["Attributes"]
    events.put_rule(Name="run-finished", EventBusName=bus, EventPattern=json.dumps({"source": ["spotfill"]}))
    events.put_targets(
        Rule="run-finished", EventBusName=bus, Targets=[{"Id": "q", "Arn": published_arn["QueueArn"]}]
    )

    environment = {
        "CONTROL_BUCKET": CONTROL_BUCKET,
        "WORKER_IMAGE": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/spotfill-worker:test",
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
        "EVENT_BUS_NAME": bus,
        "POWERTOOLS_SERVICE_NAME": "spotfill-test",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings.cache_clear()
    _prepare_account()
    return World(
        settings=settings(),
        s3=s3,
        sqs=sqs,
        ec2=ec2,
        ecs=aws.client("ecs"),
        sfn=aws.client("stepfunctions"),
        published_events_queue=published,
        notifications_queue=notifications,
        shard_keys=shard_keys,
    )


def _prepare_account() -> None:
    """What Validate's preflight reads: a raised Standard Spot quota (the sample fleet may run 20 vCPUs, a new
    account has 5) and the worker image in ECR."""
    patch_account_limits()
    set_service_quota("L-34B43A08", 256, region=REGION, account_id=ACCOUNT)
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName="spotfill-worker")
    config = {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {**config, "digest": "sha256:" + "7e" * 32},
        "layers": [],
    }
    ecr.put_image(repositoryName="spotfill-worker", imageManifest=json.dumps(manifest), imageTag="test")


@pytest.fixture
def world(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield _build_world(monkeypatch, shards=3)
    settings.cache_clear()


def _register_fleet(world: World, run: dict[str, Any]) -> None:
    """What each fleet instance's ECS agent does at boot: join the cluster named in its user data."""
    for instance_id in world.fleet_instances(run):
        document = json.dumps({"instanceId": instance_id, "region": REGION, "instanceType": "c5.xlarge"})
        world.ecs.register_container_instance(
            cluster=run["resources"]["cluster_name"], instanceIdentityDocument=document
        )


@pytest.fixture
def start_run(world: World, lambda_context: Any) -> Callable[..., dict[str, Any]]:
    """Drive a run through the first half of the control plane, up to the point monitor takes over."""
    from spotfill_control.handlers import (
        check_registration,
        prepare_run,
        request_fleet,
        scale_service,
        validate,
    )

    def start(
        until: str = "monitoring", fleet: dict[str, Any] | None = None, **limits: Any
    ) -> dict[str, Any]:
        event = {
            "input": sample_spec(fleet=fleet, **limits),
            "execution_arn": EXECUTION_ARN,
            "state_machine_arn": STATE_MACHINE_ARN,
            "started_at": _now_iso(),
        }
        run = validate.handler(event, lambda_context)["run"]
        run = prepare_run.handler({"run": run}, lambda_context)
        if until == "prepared":
            return run
        run = request_fleet.handler({"run": run}, lambda_context)
        _register_fleet(world, run)
        run = check_registration.handler({"run": run}, lambda_context)
        assert run["phase"] == "registered"
        return scale_service.handler({"run": run}, lambda_context)

    return start


@pytest.fixture
def running_run(start_run: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return start_run()


def _now_iso() -> str:
    from datetime import UTC, datetime

    return _iso(datetime.now(UTC))


def _iso(moment: Any) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def validated_deadline_run(
    lambda_context: Any,
    started: Any,
    shards: int,
    fleet: dict[str, Any],
    predictions_per_second: float,
    seconds: float,
) -> dict[str, Any]:
    """Validate's run of a spec due an hour after `started` (`limits.finish_by` "PT1H") whose plan estimate,
    made for a c5.xlarge fleet of 2, measured `predictions_per_second` over `seconds`."""
    from spotfill_control.handlers import validate

    spec = sample_spec(shards=shards, fleet=fleet, finish_by="PT1H")
    spec["estimate"] = {
        "made_at": "2026-12-01T00:00:00Z",
        "instance_type": "c5.xlarge",
        "target_capacity": 2,
        "predictions": shards * ROWS_PER_SHARD,
        "predictions_per_second": predictions_per_second,
        "seconds": seconds,
        "total_usd": 0.1,
    }
    event = {
        "input": spec,
        "execution_arn": EXECUTION_ARN,
        "state_machine_arn": STATE_MACHINE_ARN,
        "started_at": _iso(started),
    }
    return validate.handler(event, lambda_context)["run"]
