"""A real client: the AWS CLI drives a backfill on `spotfill local up`, knowing only its endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spotfill.localcloud.server import free_port
from spotfill.localrun import manifest

from .helpers import eventually

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def _aws(endpoint: str, *args: str) -> str:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.pop("AWS_ENDPOINT_URL", None)
    completed = subprocess.run(
        [str(BIN / "aws"), "--endpoint-url", endpoint, "--output", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return completed.stdout


@pytest.fixture
def local_up(tmp_path):
    port = free_port()
    log = open(tmp_path / "local-up.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [str(BIN / "spotfill"), "local", "up", "--port", str(port), "--run-dir", str(tmp_path / "run")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"},
    )
    try:
        eventually(
            lambda: "READY" in (tmp_path / "local-up.log").read_text() or process.poll() is not None, 90
        )
        assert process.poll() is None, (tmp_path / "local-up.log").read_text()
        yield f"http://127.0.0.1:{port}", port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_the_aws_cli_drives_a_backfill_on_spotfill_local_up(local_up, digits, tmp_path):
    endpoint, port = local_up
    # given the stack outputs, as `spotfill local outputs` prints them
    printed = subprocess.run(
        [str(BIN / "spotfill"), "local", "outputs", "--port", str(port)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    outputs = json.loads(printed)
    data, control = outputs["DataBucket"], outputs["ControlBucket"]

    # when the AWS CLI uploads the model, the shards and then a manifest under backfills/
    _aws(endpoint, "s3", "cp", str(digits.model_path), f"s3://{data}/models/cli/model.keras")
    for shard in digits.shards()[:3]:
        _aws(endpoint, "s3", "cp", str(shard), f"s3://{data}/inputs/cli/{shard.name}")
    spec = manifest("cli", data, "models/cli/model.keras", "npy", "npy", instances=1)
    manifest_path = tmp_path / "cli.json"
    manifest_path.write_text(json.dumps(spec))
    _aws(endpoint, "s3", "cp", str(manifest_path), f"s3://{control}/backfills/cli.json")

    # then an execution starts, and describe-execution sees it succeed
    def executions():
        listed = json.loads(
            _aws(
                endpoint,
                "stepfunctions",
                "list-executions",
                "--state-machine-arn",
                outputs["StateMachineArn"],
            )
        )
        return listed["executions"]

    execution_arn = eventually(lambda: executions() and executions()[0]["executionArn"], timeout=30)

    def finished():
        described = json.loads(
            _aws(endpoint, "stepfunctions", "describe-execution", "--execution-arn", execution_arn)
        )
        return described if described["status"] != "RUNNING" else None

    described = eventually(finished, timeout=240, interval=2.0)
    assert described["status"] == "SUCCEEDED", described.get("cause")
    listed = json.loads(
        _aws(endpoint, "s3api", "list-objects-v2", "--bucket", data, "--prefix", "outputs/cli/")
    )
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        f"outputs/cli/{s.name}" for s in digits.shards()[:3]
    ]
