"""deploy_stack against a moto server reached through AWS_ENDPOINT_URL (how the local cloud uses it)."""

from __future__ import annotations

import socket

import boto3
import pytest
import requests
from moto.core.config import default_user_config
from moto.server import ThreadedMotoServer

from spotfill.deploy import deploy_stack

pytestmark = pytest.mark.aws


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_stack_deploys_into_a_moto_server_through_the_endpoint_variable(monkeypatch):
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    # the server's /moto-api/config changes moto's process-wide configuration: put back after the test
    monkeypatch.setitem(default_user_config, "stepfunctions", default_user_config["stepfunctions"])
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        requests.post(f"{endpoint}/moto-api/config", json={"stepfunctions": {"execute_state_machine": True}})
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)

        stack = deploy_stack("served")

        sfn, lambda_ = boto3.client("stepfunctions"), boto3.client("lambda")
        assert sfn.meta.endpoint_url == endpoint
        definition = sfn.describe_state_machine(stateMachineArn=stack.state_machine_arn)["definition"]
        assert "${" not in definition
        assert stack.function("ValidateFunction").arn in definition
        environment = lambda_.get_function_configuration(FunctionName=stack.function("MonitorFunction").name)[
            "Environment"
        ]["Variables"]
        assert environment["CONTROL_BUCKET"] == stack.control_bucket
        block = boto3.client("s3").get_public_access_block(Bucket=stack.control_bucket)
        assert all(block["PublicAccessBlockConfiguration"].values())
    finally:
        server.stop()
