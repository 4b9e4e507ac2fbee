"""StartBackfill: an uploaded manifest starts one execution, however often EventBridge delivers its event."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from spotfill_control.errors import ConfigurationError, InvalidSpecError
from spotfill_control.handlers import start_backfill
from spotfill_control.setup import starter

REPOSITORY_EVENTS = Path(__file__).resolve().parents[2] / "events"
NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def uploaded(key: str = "backfills/digits.json", **object_fields: Any) -> dict[str, Any]:
    event = json.loads((REPOSITORY_EVENTS / "s3_manifest_uploaded.json").read_text())
    event["detail"]["object"]["key"] = key
    event["detail"]["object"].update(object_fields)
    return event


# ---------------------------------------------------------------------------------------------- names


def test_execution_name_is_the_key_stem_and_a_digest_of_bucket_key_and_version():
    name = starter.execution_name("control", "backfills/digits.json", "version:v1")
    assert re.fullmatch(r"s3-digits-[0-9a-f]{32}", name)
    assert starter.execution_name("control", "backfills/digits.json", "version:v1") == name
    assert starter.execution_name("control", "backfills/digits.json", "version:v2") != name
    assert starter.execution_name("other", "backfills/digits.json", "version:v1") != name
    assert starter.execution_name("control", "backfills/digits2.json", "version:v1") != name


@pytest.mark.parametrize(
    "key",
    [
        "backfills/" + "x" * 1000 + ".json",
        "backfills/nightly run/2026-11-27 (retry).json",
        "backfills/c%2B%2B+run.json",
        "backfills/%E6%97%A5%E6%9C%AC.json",
        "backfills/.json",
        "backfills/##.json",
    ],
)
def test_execution_name_is_valid_for_step_functions_whatever_the_key(key):
    name = starter.execution_name("control", key, "etag:abc:00")
    assert NAME.match(name), name
    assert len(name) <= 80


def test_upload_is_told_apart_by_its_version_id_else_its_etag_and_sequencer():
    assert starter.object_version("v1", "e", "s") == "version:v1"
    assert starter.object_version(None, "e", "s") == "etag:e:s"
    assert starter.object_version("null", "e", "s") == "etag:e:s"  # an unversioned bucket's objects
    with pytest.raises(InvalidSpecError, match="neither a version-id nor an etag"):
        starter.object_version(None, "", None)


# ---------------------------------------------------------------------------------------------- starting


@pytest.fixture
def machine(moto_aws: None) -> str:
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    return sfn.create_state_machine(
        name="spotfill-backfill",
        definition=json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/spotfill-sfn",
    )["stateMachineArn"]


def _executions(machine: str) -> list[dict[str, Any]]:
    return boto3.client("stepfunctions", region_name="us-east-1").list_executions(stateMachineArn=machine)[
        "executions"
    ]


def test_same_upload_event_delivered_twice_starts_one_execution(machine):
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    event = uploaded()

    # when EventBridge delivers the event twice, the second time while the first execution runs
    first = starter.start_for_upload(event, sfn, machine)
    second = starter.start_for_upload(copy.deepcopy(event), sfn, machine)

    # then one execution, with the event as its input, answers both
    assert second["execution_arn"] == first["execution_arn"]
    (execution,) = _executions(machine)
    assert execution["executionArn"] == first["execution_arn"]
    assert execution["name"] == first["name"] == second["name"]
    assert json.loads(sfn.describe_execution(executionArn=first["execution_arn"])["input"]) == event


def test_duplicate_delivered_after_the_run_ended_or_with_another_event_id_is_refused(machine):
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    event = uploaded()
    first = starter.start_for_upload(event, sfn, machine)

    # when S3 sends the same upload again under another event id while it runs
    other_id = {**copy.deepcopy(event), "id": "e5b0b1c4-0000-4000-8000-000000000000"}
    again = starter.start_for_upload(other_id, sfn, machine)
    # and once more after the execution ended
    sfn.stop_execution(executionArn=first["execution_arn"])
    late = starter.start_for_upload(event, sfn, machine)

    # then Step Functions refused both: still one execution
    assert again == late == {**first, "refused": True}
    assert len(_executions(machine)) == 1


def test_new_upload_of_the_same_key_starts_a_new_execution(machine):
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    first = starter.start_for_upload(uploaded(), sfn, machine)

    # when the manifest is uploaded again: a new version (and ETag)
    second = starter.start_for_upload(
        uploaded(
            **{"version-id": "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY", "etag": "0f343b0931126a20f133d67c2b018a3b"}
        ),
        sfn,
        machine,
    )

    # then a second run starts
    assert second["refused"] is False
    assert second["execution_arn"] != first["execution_arn"]
    assert len(_executions(machine)) == 2


def test_event_that_is_not_an_s3_object_event_is_an_error_naming_the_field(machine):
    event = uploaded()
    del event["detail"]["object"]["key"]
    with pytest.raises(InvalidSpecError, match=r"^S3 event: detail\.object\.key: required field is missing"):
        starter.start_for_upload(event, boto3.client("stepfunctions", region_name="us-east-1"), machine)


def test_handler_starts_the_state_machine_its_environment_names(machine, monkeypatch, lambda_context):
    monkeypatch.setenv("STATE_MACHINE_ARN", machine)
    result = start_backfill.handler(uploaded(), lambda_context)
    assert result["refused"] is False
    assert [e["executionArn"] for e in _executions(machine)] == [result["execution_arn"]]


def test_handler_without_a_state_machine_is_a_configuration_error(moto_aws, monkeypatch, lambda_context):
    monkeypatch.delenv("STATE_MACHINE_ARN", raising=False)
    with pytest.raises(ConfigurationError, match="STATE_MACHINE_ARN"):
        start_backfill.handler(uploaded(), lambda_context)
