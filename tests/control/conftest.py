"""Control-plane test scaffolding: moto, the functions' environment, and the minimal AWS world they need.

`world` builds what the stack would have created (control and data buckets, the fleet launch template,
roles, log group, topic) in moto and sets the functions' environment to point at it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws
from spotfill_control import aws
from spotfill_control.config import Settings, settings

REGION = "us-east-1"
CONTROL_BUCKET = "spotfill-control-test"
DATA_BUCKET = "spotfill-data-test"
EXECUTION_ARN = f"arn:aws:states:{REGION}:123456789012:execution:spotfill-backfill:exec-0001"
STATE_MACHINE_ARN = f"arn:aws:states:{REGION}:123456789012:stateMachine:spotfill-backfill"
CPU_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"


def sample_spec(**overrides: Any) -> dict[str, Any]:
    """A valid spec over the data bucket's `inputs/digits/` (three .npy shards in `world`)."""
    spec: dict[str, Any] = {
        "name": "digits-demo",
        "input": {"uri": f"s3://{DATA_BUCKET}/inputs/digits/", "format": "npy"},
        "output": {"uri": f"s3://{DATA_BUCKET}/outputs/digits/", "format": "parquet"},
        "model": {"uri": f"s3://{DATA_BUCKET}/models/digits.keras"},
        "fleet": {"instance_types": ["c5.xlarge", "c5.2xlarge"], "target_capacity": 4},
        "service": {"tasks_per_instance": 1, "cpu": 1024, "memory": 2048},
        "limits": {
            "max_runtime_seconds": 3600,
            "registration_timeout_seconds": 600,
            "poll_interval_seconds": 5,
        },
    }
    for dotted, value in overrides.items():
        node = spec
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return spec


def npy_bytes(rows: int = 4) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((rows, 64), dtype=np.float32))
    return buffer.getvalue()


@dataclass
class World:
    settings: Settings
    s3: Any
    sqs: Any
    ec2: Any
    ecs: Any
    ssm: Any
    subnets: list[str]
    shard_keys: list[str] = field(default_factory=list)

    def put_json(self, bucket: str, key: str, document: Any) -> str:
        self.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(document).encode())
        return f"s3://{bucket}/{key}"

    def validate_event(
        self, execution_input: Any, started_at: str = "2026-11-27T06:00:00Z"
    ) -> dict[str, Any]:
        return {
            "input": execution_input,
            "execution_arn": EXECUTION_ARN,
            "state_machine_arn": STATE_MACHINE_ARN,
            "started_at": started_at,
        }

    def register_instance(self, cluster: str) -> str:
        """What an instance's ECS agent does at boot: join the cluster named in its user data."""
        instance = self.ec2.run_instances(ImageId=self._ami(), MinCount=1, MaxCount=1)["Instances"][0]
        document = json.dumps(
            {"instanceId": instance["InstanceId"], "region": REGION, "instanceType": "c5.xlarge"}
        )
        return self.ecs.register_container_instance(cluster=cluster, instanceIdentityDocument=document)[
            "containerInstance"
        ]["containerInstanceArn"]

    def _ami(self) -> str:
        return self.ssm.get_parameter(Name=CPU_AMI_PARAMETER)["Parameter"]["Value"]


@pytest.fixture
def moto_aws() -> Iterator[None]:
    with mock_aws():
        aws.reset_clients()
        yield
    aws.reset_clients()


def _build_world(monkeypatch: pytest.MonkeyPatch) -> World:
    s3 = boto3.client("s3", region_name=REGION)
    ec2 = boto3.client("ec2", region_name=REGION)
    ssm = boto3.client("ssm", region_name=REGION)
    iam = boto3.client("iam", region_name=REGION)
    logs = boto3.client("logs", region_name=REGION)
    sns = boto3.client("sns", region_name=REGION)

    for bucket in (CONTROL_BUCKET, DATA_BUCKET):
        s3.create_bucket(Bucket=bucket)
    shard_keys = [f"inputs/digits/part-{i:05d}.npy" for i in range(3)]
    for key in shard_keys:
        s3.put_object(Bucket=DATA_BUCKET, Key=key, Body=npy_bytes())
    s3.put_object(Bucket=DATA_BUCKET, Key="inputs/digits/_SUCCESS", Body=b"")
    s3.put_object(Bucket=DATA_BUCKET, Key="models/digits.keras", Body=b"not really a model")

    ami = ssm.get_parameter(Name=CPU_AMI_PARAMETER)["Parameter"]["Value"]
    profile = iam.create_instance_profile(InstanceProfileName="spotfill-instance")["InstanceProfile"]
    template_id = ec2.create_launch_template(
        LaunchTemplateName="spotfill-fleet",
        LaunchTemplateData={
            "ImageId": ami,
            "IamInstanceProfile": {"Arn": profile["Arn"]},
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
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

    environment = {
        "CONTROL_BUCKET": CONTROL_BUCKET,
        "WORKER_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/spotfill-worker:test",
        "TASK_ROLE_ARN": roles["spotfill-task"],
        "EXECUTION_ROLE_ARN": roles["spotfill-execution"],
        "FLEET_ROLE_ARN": roles["spotfill-fleet"],
        "INSTANCE_PROFILE_ARN": profile["Arn"],
        "LAUNCH_TEMPLATE_ID": template_id,
        "SECURITY_GROUP_ID": group,
        "DEFAULT_SUBNETS": ",".join(subnets),
        "WORKER_LOG_GROUP": "/spotfill/worker",
        "NOTIFICATION_TOPIC_ARN": topic,
        "EVENT_BUS_NAME": "default",
        "POWERTOOLS_SERVICE_NAME": "spotfill-test",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings.cache_clear()
    aws.reset_clients()
    return World(
        settings=settings(),
        s3=s3,
        sqs=boto3.client("sqs", region_name=REGION),
        ec2=ec2,
        ecs=boto3.client("ecs", region_name=REGION),
        ssm=ssm,
        subnets=subnets,
        shard_keys=shard_keys,
    )


@pytest.fixture
def world(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield _build_world(monkeypatch)
    settings.cache_clear()


@pytest.fixture
def now() -> datetime:
    return datetime(2026, 11, 27, 6, 0, 5, tzinfo=UTC)
