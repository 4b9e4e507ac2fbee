"""A real client: the AWS CLI drives a backfill on `spotfill local up`, knowing only the endpoint and the
credentials it prints."""

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


def _printed_credentials(log: str) -> dict[str, str]:
    """The variables of the `export ...` line `spotfill local up` prints."""
    line = next(line for line in log.splitlines() if line.startswith("export AWS_ENDPOINT_URL="))
    return dict(item.split("=", 1) for item in line.split()[1:])


def _aws(credentials: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(credentials)
    return subprocess.run(
        [str(BIN / "aws"), "--endpoint-url", credentials["AWS_ENDPOINT_URL"], "--output", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


@pytest.fixture
def local_up(tmp_path):
    port = free_port()
    log = open(tmp_path / "local-up.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [str(BIN / "spotfill"), "local", "up", "--port", str(port), "--run-dir", str(tmp_path / "run")],
        stdout=log,
        stderr=subprocess.STDOUT,
        # as a user runs it: without the suite's warm workers (tests/conftest.py), each task a fresh process
        env={
            k: v
            for k, v in os.environ.items()
            if k not in ("AWS_ENDPOINT_URL", "SPOTFILL_LOCAL_CLOUD_FORK_WORKERS")
        },
    )
    try:
        eventually(
            lambda: "READY" in (tmp_path / "local-up.log").read_text() or process.poll() is not None, 90
        )
        assert process.poll() is None, (tmp_path / "local-up.log").read_text()
        yield port, _printed_credentials((tmp_path / "local-up.log").read_text())
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_the_aws_cli_drives_a_backfill_on_spotfill_local_up(local_up, digits, tmp_path):
    port, credentials = local_up
    # given the credentials `local up` printed (the endpoint refuses any other), and the stack outputs, as
    # `spotfill local outputs` prints them with those credentials
    assert credentials["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
    refused = _aws({**credentials, "AWS_ACCESS_KEY_ID": "testing"}, "s3", "ls", check=False)
    assert refused.returncode != 0 and "InvalidClientTokenId" in refused.stderr
    printed = subprocess.run(
        [str(BIN / "spotfill"), "local", "outputs", "--port", str(port)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **credentials},
    ).stdout
    outputs = json.loads(printed)
    data, control = outputs["DataBucket"], outputs["ControlBucket"]

    # when the AWS CLI uploads the model, the shards and then a manifest under backfills/
    _aws(credentials, "s3", "cp", str(digits.model_path), f"s3://{data}/models/cli/model.keras")
    for shard in digits.shards()[:3]:
        _aws(credentials, "s3", "cp", str(shard), f"s3://{data}/inputs/cli/{shard.name}")
    spec = manifest("cli", data, "models/cli/model.keras", "npy", "npy", instances=1)
    manifest_path = tmp_path / "cli.json"
    manifest_path.write_text(json.dumps(spec))
    _aws(credentials, "s3", "cp", str(manifest_path), f"s3://{control}/backfills/cli.json")

    # then an execution starts, and describe-execution sees it succeed
    def executions():
        listed = json.loads(
            _aws(
                credentials,
                "stepfunctions",
                "list-executions",
                "--state-machine-arn",
                outputs["StateMachineArn"],
            ).stdout
        )
        return listed["executions"]

    execution_arn = eventually(lambda: executions() and executions()[0]["executionArn"], timeout=30)

    def finished():
        described = json.loads(
            _aws(credentials, "stepfunctions", "describe-execution", "--execution-arn", execution_arn).stdout
        )
        return described if described["status"] != "RUNNING" else None

    described = eventually(finished, timeout=240, interval=2.0)
    assert described["status"] == "SUCCEEDED", described.get("cause")
    listed = json.loads(
        _aws(credentials, "s3api", "list-objects-v2", "--bucket", data, "--prefix", "outputs/cli/").stdout
    )
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        f"outputs/cli/{s.name}" for s in digits.shards()[:3]
    ]
