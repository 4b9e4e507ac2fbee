"""deploy_stack under moto with Step Functions execution on (what the sfn tier and the local cloud use)."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from spotfill.deploy import deploy_stack

pytestmark = pytest.mark.aws


def test_state_machine_is_visible_and_startable_when_moto_executes_step_functions():
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        # given the stack deployed where moto runs state machines
        stack = deploy_stack("executable")
        sfn = boto3.client("stepfunctions")

        # then the API sees the stack's state machine under its stack ARN, placeholders resolved
        described = sfn.describe_state_machine(stateMachineArn=stack.state_machine_arn)
        assert "${" not in described["definition"]
        task_resources = {
            state["Resource"]
            for state in json.loads(described["definition"])["States"].values()
            if state["Type"] == "Task"
        }
        assert stack.function("ValidateFunction").arn in task_resources
        assert described["roleArn"].startswith(
            "arn:aws:iam::123456789012:role/executable-BackfillStateMachineRole"
        )
        assert [m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]] == [
            stack.state_machine_arn
        ]
