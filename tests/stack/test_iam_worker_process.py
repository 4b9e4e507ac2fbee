"""A process started as the local cloud's ECS agent starts a worker acts as its task role for every call."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from spotfill.localcloud import worker_iam

pytestmark = pytest.mark.aws

# What the child does: one call its role grants, one it does not; it prints each outcome.
CHILD = """
import json, boto3
s3 = boto3.client("s3")
outcome = {"get": s3.get_object(Bucket="work", Key="shard")["Body"].read().decode()}
try:
    s3.put_object(Bucket="work", Key="elsewhere", Body=b"x")
    outcome["put"] = "allowed"
except s3.exceptions.ClientError as error:
    outcome["put"] = error.response["Error"]["Code"]
    outcome["message"] = error.response["Error"]["Message"]
print(json.dumps(outcome))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch):
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    try:
        yield endpoint
    finally:
        server.stop()


def _role(name: str, statement: dict) -> str:
    client = boto3.client("iam")
    trust = {"Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}}]}
    arn = client.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    document = {"Version": "2012-10-17", "Statement": [statement]}
    client.put_role_policy(RoleName=name, PolicyName="work", PolicyDocument=json.dumps(document))
    return arn


def _run_child(endpoint: str, tmp_path: Path, role_arn: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environment.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    site = worker_iam.site_directory(tmp_path)
    environment.update(worker_iam.task_environment(role_arn, "task-1", site, environment.get("PYTHONPATH")))
    return subprocess.run(
        [sys.executable, "-c", CHILD],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_worker_process_acts_as_its_task_role_for_every_call(emulator, tmp_path):
    # given a bucket with a shard, and a task role that may read it and nothing else
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="work")
    s3.put_object(Bucket="work", Key="shard", Body=b"rows")
    role = _role("task", {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::work/*"})

    # when a process started with the agent's environment reads the shard and writes elsewhere
    child = _run_child(emulator, tmp_path, role)

    # then the read succeeds and the write is denied as AWS denies it, naming the task's role session
    assert child.returncode == 0, child.stderr
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    assert outcome["get"] == "rows"
    assert outcome["put"] == "AccessDenied"
    assert "assumed-role/task/task-1 is not authorized to perform: s3:PutObject" in outcome["message"]
    assert s3.list_objects_v2(Bucket="work")["KeyCount"] == 1


def test_a_worker_process_whose_role_cannot_be_read_exits_instead_of_running_unchecked(emulator, tmp_path):
    child = _run_child(emulator, tmp_path, "arn:aws:iam::123456789012:role/missing")
    assert child.returncode == 1
    assert "cannot act as the task role arn:aws:iam::123456789012:role/missing" in child.stderr
