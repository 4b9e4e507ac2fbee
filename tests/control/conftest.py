"""Control-plane test scaffolding: moto, the functions' environment, and the minimal AWS world they need.

`world` builds what the stack would have created (control and data buckets, the fleet launch template,
roles, log group, topic) in moto and sets the functions' environment to point at it.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from spotfill_control import aws
from spotfill_control.config import Settings, settings

from spotfill.localcloud.patches import install_fleet_model
from spotfill.localcloud.patches.account_limits import patch_account_limits, set_service_quota
from spotfill.localcloud.patches.launch_templates import inherit_launch_template_source_versions

REGION = "us-east-1"
CONTROL_BUCKET = "spotfill-control-test"
DATA_BUCKET = "spotfill-data-test"
EXECUTION_ARN = f"arn:aws:states:{REGION}:123456789012:execution:spotfill-backfill:exec-0001"
STATE_MACHINE_ARN = f"arn:aws:states:{REGION}:123456789012:stateMachine:spotfill-backfill"
CPU_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
WORKER_REPOSITORY = "spotfill-worker"
# An account that has run spot before: its quotas were raised from a new account's (5 Standard vCPUs, 0 GPU).
ACCOUNT_SPOT_VCPUS = {"L-34B43A08": 256, "L-3819A6DF": 64}


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
    """The moto world plus clients: the same cached clients the handlers use (an EC2 client costs ~1 s)."""

    settings: Settings
    subnets: list[str]
    shard_keys: list[str] = field(default_factory=list)

    @property
    def s3(self) -> Any:
        return aws.client("s3")

    @property
    def sqs(self) -> Any:
        return aws.client("sqs")

    @property
    def ec2(self) -> Any:
        return aws.client("ec2")

    @property
    def ecs(self) -> Any:
        return aws.client("ecs")

    @property
    def ssm(self) -> Any:
        return aws.client("ssm")

    def put_json(self, bucket: str, key: str, document: Any) -> str:
        self.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(document).encode())
        return f"s3://{bucket}/{key}"

    def validate_event(self, execution_input: Any, started_at: str | None = None) -> dict[str, Any]:
        return {
            "input": execution_input,
            "execution_arn": EXECUTION_ARN,
            "state_machine_arn": STATE_MACHINE_ARN,
            "started_at": started_at or datetime.now(UTC).isoformat(),
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


# Building a botocore client costs up to a second (EC2's model is large). A client is not tied to one moto
# mock (each `mock_aws()` intercepts every client's requests with fresh state), so this tier builds each
# client once per session; clients are still created lazily, inside a mock, with this tier's environment.
_CLIENT_POOL: dict[tuple[str, int], Any] = {}
_boto3_client = boto3.client


def _pooled_client(service: str, *args: Any, **kwargs: Any) -> Any:
    if args or set(kwargs) - {"config"}:
        return _boto3_client(service, *args, **kwargs)
    key = (service, id(kwargs.get("config")))
    if key not in _CLIENT_POOL:
        _CLIENT_POOL[key] = _boto3_client(service, **kwargs)
    return _CLIENT_POOL[key]


@pytest.fixture
def moto_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # EC2's launch template physics, which moto lacks: a new version inherits its SourceVersion, and a fleet
    # launches from the version it names; its request history, ActivityStatus and ValidUntil.
    inherit_launch_template_source_versions()
    install_fleet_model()
    with mock_aws():
        aws.reset_clients()
        monkeypatch.setattr(boto3, "client", _pooled_client)
        yield
    aws.reset_clients()


FAKE_ENVIRONMENT = {
    "CONTROL_BUCKET": CONTROL_BUCKET,
    "WORKER_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/spotfill-worker:test",
    "WORKER_IMAGE_ARM64": "123456789012.dkr.ecr.us-east-1.amazonaws.com/spotfill-worker:test-arm64",
    "TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/spotfill-task",
    "EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/spotfill-execution",
    "FLEET_ROLE_ARN": "arn:aws:iam::123456789012:role/spotfill-fleet",
    "INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/spotfill-instance",
    "LAUNCH_TEMPLATE_ID": "lt-0123456789abcdef0",
    "LAUNCH_TEMPLATE_VERSION": "1",
    "SECURITY_GROUP_ID": "sg-0123456789abcdef0",
    "DEFAULT_SUBNETS": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
    "WORKER_LOG_GROUP": "/spotfill/worker",
    "NOTIFICATION_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:spotfill-runs",
    "EVENT_BUS_NAME": "default",
    "POWERTOOLS_SERVICE_NAME": "spotfill-test",
}


def _apply_environment(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]) -> Settings:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings.cache_clear()
    return settings()


def _build_s3_world(monkeypatch: pytest.MonkeyPatch) -> World:
    """Buckets, three .npy shards and a model object: all Validate needs."""
    aws.reset_clients()
    s3 = aws.client("s3")
    for bucket in (CONTROL_BUCKET, DATA_BUCKET):
        s3.create_bucket(Bucket=bucket)
    shard_keys = [f"inputs/digits/part-{i:05d}.npy" for i in range(3)]
    for key in shard_keys:
        s3.put_object(Bucket=DATA_BUCKET, Key=key, Body=npy_bytes())
    s3.put_object(Bucket=DATA_BUCKET, Key="inputs/digits/_SUCCESS", Body=b"")
    s3.put_object(Bucket=DATA_BUCKET, Key="models/digits.keras", Body=b"not really a model")
    return World(
        settings=_apply_environment(monkeypatch, FAKE_ENVIRONMENT),
        subnets=FAKE_ENVIRONMENT["DEFAULT_SUBNETS"].split(","),
        shard_keys=shard_keys,
    )


def stack_launch_template_data(group: str) -> dict[str, Any]:
    """The launch template data `template.yaml` gives the stack's version (no AMI: each run sets its own)."""
    stack_tag = [{"Key": "spotfill:stack", "Value": "spotfill"}]
    return {
        "IamInstanceProfile": {"Arn": FAKE_ENVIRONMENT["INSTANCE_PROFILE_ARN"]},
        "SecurityGroupIds": [group],
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 2,
        },
        "BlockDeviceMappings": [
            {
                "DeviceName": "/dev/xvda",
                "Ebs": {
                    "VolumeSize": 40,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": stack_tag},
            {"ResourceType": "volume", "Tags": stack_tag},
        ],
    }


def _build_world(monkeypatch: pytest.MonkeyPatch) -> World:
    """What the stack creates for the fleet: launch template (IMDSv2), subnets, security group, log group.

    Roles and the instance profile are ARNs only: nothing in moto checks them."""
    world = _build_s3_world(monkeypatch)
    ec2 = world.ec2
    subnets = sorted(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s.get("DefaultForAz"))[:2]
    group = ec2.create_security_group(GroupName="spotfill-fleet", Description="no ingress")["GroupId"]
    template_id = ec2.create_launch_template(
        LaunchTemplateName="spotfill-fleet", LaunchTemplateData=stack_launch_template_data(group)
    )["LaunchTemplate"]["LaunchTemplateId"]
    aws.client("logs").create_log_group(logGroupName="/spotfill/worker")
    topic = aws.client("sns").create_topic(Name="spotfill-runs")["TopicArn"]
    environment = {
        **FAKE_ENVIRONMENT,
        "LAUNCH_TEMPLATE_ID": template_id,
        "LAUNCH_TEMPLATE_VERSION": "1",
        "SECURITY_GROUP_ID": group,
        "DEFAULT_SUBNETS": ",".join(subnets),
        "NOTIFICATION_TOPIC_ARN": topic,
    }
    world.settings = _apply_environment(monkeypatch, environment)
    world.subnets = subnets
    _build_account(world)
    return world


def push_worker_image(repository: str, tag: str) -> str:
    """An image in the account's ECR, as `docker push` leaves it; its digest."""
    ecr = aws.client("ecr")
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName=repository)
    config = {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {**config, "digest": "sha256:" + repository.encode().hex()[:64].ljust(64, "0")},
        "layers": [],
    }
    pushed = ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
    return pushed["image"]["imageId"]["imageDigest"]


def _build_account(world: World) -> None:
    """What preflight reads of the account: raised Spot quotas and the worker image in ECR."""
    patch_account_limits()
    for code, vcpus in ACCOUNT_SPOT_VCPUS.items():
        set_service_quota(code, vcpus, region=REGION)
    push_worker_image(WORKER_REPOSITORY, world.settings.worker_image.rsplit(":", 1)[1])
    push_worker_image(WORKER_REPOSITORY, world.settings.worker_image_arm64.rsplit(":", 1)[1])


@pytest.fixture
def s3_world(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield _build_s3_world(monkeypatch)
    settings.cache_clear()


@pytest.fixture
def world(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield _build_world(monkeypatch)
    settings.cache_clear()


@pytest.fixture
def now() -> datetime:
    return datetime(2026, 11, 27, 6, 0, 5, tzinfo=UTC)


class FailingClient:
    """A real (moto) client whose named operation fails with the given AWS error code, `times` times."""

    def __init__(self, inner: Any, operation: str, code: str = "InvalidParameterValue", times: int = 10**9):
        self._inner, self._operation, self._code, self.remaining = inner, operation, code, times
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name != self._operation:
            return attribute

        def failing(**kwargs: Any) -> Any:
            self.calls += 1
            if self.remaining > 0:
                self.remaining -= 1
                raise ClientError(
                    {"Error": {"Code": self._code, "Message": "injected"}, "ResponseMetadata": {}}, name
                )
            return attribute(**kwargs)

        return failing


def validated_run(world: World, lambda_context: Any, **overrides: Any) -> dict[str, Any]:
    from spotfill_control.handlers import validate

    return validate.handler(world.validate_event(sample_spec(**overrides)), lambda_context)["run"]


def prepared_run(world: World, lambda_context: Any, **overrides: Any) -> dict[str, Any]:
    from spotfill_control.handlers import prepare_run

    return prepare_run.handler({"run": validated_run(world, lambda_context, **overrides)}, lambda_context)
