"""The in-process Lambda dispatcher: moto's Step Functions interpreter reaches real Python handlers, and their
errors reach Retry and Catch exactly as a real Lambda reports them."""

from __future__ import annotations

import io
import json
import os
import socket
import time
import zipfile
from typing import Any

import boto3
import pytest
import requests
from moto import mock_aws
from moto.core.config import default_user_config
from moto.server import ThreadedMotoServer
from spotfill_control.errors import StallError, TransientAwsError

from spotfill.lambdas import inprocess_lambdas

from . import probe_handlers

pytestmark = pytest.mark.sfn

PROBES = probe_handlers.__name__
ENVIRONMENT = {
    "CONTROL_BUCKET": "probe-control-bucket",
    "WORKER_IMAGE": "spotfill-worker:probe",
    "TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/task",
    "EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/execution",
    "FLEET_ROLE_ARN": "arn:aws:iam::123456789012:role/fleet",
    "INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/instance",
    "LAUNCH_TEMPLATE_ID": "lt-0123456789abcdef0",
    "LAUNCH_TEMPLATE_VERSION": "1",
    "SECURITY_GROUP_ID": "sg-0123456789abcdef0",
    "DEFAULT_SUBNETS": "subnet-1,subnet-2",
    "WORKER_LOG_GROUP": "/spotfill/workers",
    "NOTIFICATION_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:spotfill",
    "EVENT_BUS_NAME": "default",
    "POWERTOOLS_SERVICE_NAME": "spotfill",
}
TRANSIENT_RETRY = [
    {"ErrorEquals": ["TransientAwsError"], "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 1.0}
]


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("placeholder.py", "")
    return buffer.getvalue()


def _role(iam: Any) -> str:
    """The functions' execution role (moto checks that it exists)."""
    try:
        return iam.get_role(RoleName="probe")["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "lambda.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        return iam.create_role(RoleName="probe", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]


def _function(
    session: boto3.session.Session, name: str, handler: str, environment: dict[str, str] | None = None
) -> str:
    response = session.client("lambda").create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=_role(session.client("iam")),
        Handler=handler,
        Code={"ZipFile": _zip()},
        Environment={"Variables": environment if environment is not None else ENVIRONMENT},
        Timeout=30,
    )
    return response["FunctionArn"]


def _one_task_machine(function_arn: str, *, retry: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    task: dict[str, Any] = {
        "Type": "Task",
        "Resource": function_arn,
        "TimeoutSeconds": 30,
        "Catch": [
            {"ErrorEquals": ["InvalidSpecError"], "ResultPath": "$.error", "Next": "CaughtInvalidSpec"},
            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "CaughtSomethingElse"},
        ],
        "End": True,
    }
    if retry:
        task["Retry"] = retry
    return {
        "StartAt": "Probe",
        "States": {
            "Probe": task,
            "CaughtInvalidSpec": {"Type": "Pass", "End": True},
            "CaughtSomethingElse": {"Type": "Pass", "End": True},
        },
    }


def _run(
    session: boto3.session.Session, definition: dict[str, Any], execution_input: dict[str, Any]
) -> dict[str, Any]:
    sfn = session.client("stepfunctions")
    machine = sfn.create_state_machine(
        name=f"probe-{time.monotonic_ns()}",
        definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/probe",
    )["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps(execution_input))[
        "executionArn"
    ]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        described = sfn.describe_execution(executionArn=execution)
        if described["status"] != "RUNNING":
            history = sfn.get_execution_history(executionArn=execution, maxResults=1000)["events"]
            return {
                "status": described["status"],
                "output": json.loads(described.get("output") or "null"),
                "history": history,
            }
        time.sleep(0.05)
    raise AssertionError("execution did not finish in 30 s")


def _entered(history: list[dict[str, Any]]) -> list[str]:
    return [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]


@pytest.fixture
def aws():
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}), inprocess_lambdas() as lambdas:
        yield boto3.session.Session(), lambdas


def test_invalid_spec_error_raised_by_a_handler_is_caught_by_a_catch_on_its_class_name(aws):
    session, lambdas = aws
    arn = _function(session, "first", f"{PROBES}.raise_invalid_spec")

    result = _run(session, _one_task_machine(arn), {"instance_type": "x9.huge"})

    assert result["status"] == "SUCCEEDED"
    assert _entered(result["history"])[-1] == "CaughtInvalidSpec"
    error = result["output"]["error"]
    assert error["Error"] == "InvalidSpecError"
    cause = json.loads(error["Cause"])
    assert cause["errorType"] == "InvalidSpecError"
    assert "fleet.instance_types" in cause["errorMessage"] and "x9.huge" in cause["errorMessage"]
    assert any("raise_invalid_spec" in frame for frame in cause["stackTrace"])
    assert [inv.function_name for inv in lambdas.invocations] == ["first"]


def test_direct_invoke_reports_an_unhandled_function_error_with_the_lambda_error_payload(aws):
    session, _ = aws
    _function(session, "first", f"{PROBES}.raise_invalid_spec")

    response = session.client("lambda").invoke(
        FunctionName="first", Payload=json.dumps({"instance_type": "q1"})
    )

    assert response["FunctionError"] == "Unhandled"
    payload = json.loads(response["Payload"].read())
    assert set(payload) >= {"errorType", "errorMessage", "stackTrace"}
    assert payload["errorType"] == "InvalidSpecError"


def test_handler_sees_the_event_and_the_functions_environment_through_settings(aws, monkeypatch):
    session, _ = aws
    monkeypatch.setenv("CONTROL_BUCKET", "the-test-process-bucket")
    first = _function(session, "first", f"{PROBES}.echo")
    other_environment = {**ENVIRONMENT, "CONTROL_BUCKET": "another-stack-bucket"}
    second = _function(session, "second", f"{PROBES}.echo", other_environment)

    one = _run(session, _one_task_machine(first), {"hello": "world"})
    two = _run(session, _one_task_machine(second), {"hello": "again"})

    assert one["output"]["event"] == {"hello": "world"}
    assert one["output"]["control_bucket"] == "probe-control-bucket"
    assert one["output"]["function_name"] == "first"
    assert 0 < one["output"]["remaining_ms"] <= 30_000
    assert two["output"]["control_bucket"] == two["output"]["environment_bucket"] == "another-stack-bucket"
    # and the process's own environment is back as it was
    assert os.environ["CONTROL_BUCKET"] == "the-test-process-bucket"


def test_transient_error_is_retried_by_the_state_machine_and_the_second_attempt_succeeds(aws):
    session, lambdas = aws
    arn = _function(session, "first", f"{PROBES}.flaky_once")
    lambdas.inject_failure("first", TransientAwsError("throttled"), times=1)

    result = _run(session, _one_task_machine(arn, retry=TRANSIENT_RETRY), {})

    assert result["status"] == "SUCCEEDED"
    assert result["output"] == {"ok": True}
    outcomes = [inv.error_type for inv in lambdas.calls_of("first")]
    assert outcomes == ["TransientAwsError", None]


def test_failure_injected_after_the_handler_keeps_its_side_effects_and_is_caught_by_name(aws):
    session, lambdas = aws
    arn = _function(session, "first", f"{PROBES}.list_queues_and_buckets")
    lambdas.inject_failure("first", StallError("injected after the work"), when="after")

    result = _run(session, _one_task_machine(arn), {})

    assert _entered(result["history"])[-1] == "CaughtSomethingElse"
    assert result["output"]["error"]["Error"] == "StallError"
    (invocation,) = lambdas.calls_of("first")
    assert invocation.injected
    assert [call.iam_action for call in invocation.aws_calls] == ["sqs:ListQueues", "s3:ListBuckets"]


def test_aws_calls_from_a_handlers_thread_pool_are_recorded_for_that_invocation(aws):
    session, lambdas = aws
    _function(session, "first", f"{PROBES}.list_buckets_from_a_thread_pool")

    session.client("lambda").invoke(FunctionName="first", Payload=b"{}")
    session.client("sqs").list_queues()  # the test's own call, outside any invocation

    (invocation,) = lambdas.calls_of("first")
    assert [call.iam_action for call in invocation.aws_calls] == ["s3:ListBuckets", "s3:ListBuckets"]


def test_asynchronous_invocation_returns_at_once_and_runs_the_handler_in_the_background(aws):
    session, lambdas = aws
    _function(session, "first", f"{PROBES}.echo")

    response = session.client("lambda").invoke(
        FunctionName="first", InvocationType="Event", Payload=b'{"a": 1}'
    )

    assert response["StatusCode"] == 202
    deadline = time.monotonic() + 10
    while not (lambdas.calls_of("first") and lambdas.calls_of("first")[0].ended_at):
        assert time.monotonic() < deadline, "the asynchronous invocation never ran"
        time.sleep(0.05)
    (invocation,) = lambdas.calls_of("first")
    assert invocation.succeeded and invocation.event == {"a": 1}


def test_dispatcher_can_keep_only_the_latest_invocations():
    with mock_aws(), inprocess_lambdas(max_records=2) as lambdas:
        session = boto3.session.Session()
        _function(session, "first", f"{PROBES}.echo")
        for index in range(3):
            session.client("lambda").invoke(FunctionName="first", Payload=json.dumps({"n": index}).encode())

    assert [inv.event for inv in lambdas.invocations] == [{"n": 1}, {"n": 2}]


def test_result_that_is_not_json_is_a_marshal_error_as_on_lambda(aws):
    session, _ = aws
    arn = _function(session, "first", f"{PROBES}.return_datetime")

    result = _run(session, _one_task_machine(arn), {})

    assert result["output"]["error"]["Error"] == "Runtime.MarshalError"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_dispatch_works_inside_a_threaded_moto_server(monkeypatch):
    port = _free_port()
    monkeypatch.setenv("MOTO_PORT", str(port))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    # the server's /moto-api/config changes moto's process-wide configuration: put back after the test
    monkeypatch.setitem(default_user_config, "stepfunctions", default_user_config["stepfunctions"])
    server.start()
    try:
        requests.post(
            f"http://127.0.0.1:{port}/moto-api/config",
            json={"stepfunctions": {"execute_state_machine": True}},
            timeout=10,
        ).raise_for_status()
        with inprocess_lambdas() as lambdas:
            session = boto3.session.Session()
            arn = _function(session, "first", f"{PROBES}.raise_invalid_spec")

            result = _run(session, _one_task_machine(arn), {"instance_type": "x9.huge"})

        assert result["output"]["error"]["Error"] == "InvalidSpecError"
        assert [inv.function_name for inv in lambdas.invocations] == ["first"]
    finally:
        server.stop()
