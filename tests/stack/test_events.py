"""The sample events in events/ are real-shaped and mean what their names say."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel
from moto import mock_aws
from spotfill_control.config import Settings
from spotfill_control.errors import InvalidSpecError
from spotfill_control.instance_types import check_fleet_kind, describe_instance_types
from spotfill_control.setup.triggers import ValidateEvent, resolve_placeholders, spec_from_document, validate
from spotfill_control.spec import BackfillSpec

from spotfill.deploy import load_template

EVENTS = Path(__file__).resolve().parents[2] / "events"


def load(name: str):
    return json.loads((EVENTS / name).read_text())


def test_start_execution_and_digits_manifest_are_valid_specs():
    for name in ("start_execution.json", "manifest_digits.json"):
        spec = BackfillSpec.model_validate(load(name))
        assert spec.fleet.allocation_strategy == "priceCapacityOptimized"


def test_scheduled_manifest_resolves_yesterday_from_the_schedule_tick():
    tick = load("schedule_tick.json")
    document = load("manifest_scheduled.json")
    assert "{yesterday}" in document["input"]["uri"]

    resolved = resolve_placeholders(document, datetime.fromisoformat(tick["time"]))

    spec = BackfillSpec.model_validate(resolved)
    assert spec.input.uri.endswith("/inputs/clicks/date=2026-11-26/")
    assert spec.output.uri.endswith("/outputs/clicks/date=2026-11-26/")


def test_schedule_tick_is_what_the_schedule_rule_renders_from_a_scheduled_event():
    # given the schedule rule's input transformer as template.yaml writes it
    target = load_template()["Resources"]["ScheduleRule"]["Properties"]["Targets"][0]
    transformer = target["InputTransformer"]
    template_text, variables = transformer["InputTemplate"]["Fn::Sub"]
    assert variables == {"Manifest": {"Ref": "ScheduleManifest"}}
    tick = load("schedule_tick.json")
    event = load("scheduled_event.json")

    # when EventBridge renders it (the parameter substituted, paths replaced by their JSON values)
    rendered = template_text.replace("${Manifest}", tick["manifest"])
    for placeholder, path in transformer["InputPathsMap"].items():
        rendered = rendered.replace(f"<{placeholder}>", json.dumps(event[path.removeprefix("$.")]))

    # then the state machine receives exactly the sample tick
    assert json.loads(rendered) == tick


def test_s3_manifest_uploaded_is_an_eventbridge_object_created_event_under_backfills():
    event = parse(event=load("s3_manifest_uploaded.json"), model=S3EventNotificationEventBridgeModel)
    assert event.detail_type == "Object Created"
    assert event.detail.object.key.startswith("backfills/")
    assert event.detail.object.key.endswith(".json")


def test_execution_aborted_is_a_status_change_the_cleanup_rule_selects():
    event = load("execution_aborted.json")
    pattern = load_template()["Resources"]["CleanupOnExitFunction"]["Properties"]["Events"]["ExecutionEnded"][
        "Properties"
    ]["Pattern"]
    assert event["source"] in pattern["source"]
    assert event["detail-type"] in pattern["detail-type"]
    assert event["detail"]["status"] in pattern["detail"]["status"]


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("missing_model.json", "model"),
        ("mistyped_target_capacity.json", "fleet.target_capacity"),
        ("poll_interval_out_of_range.json", "limits.poll_interval_seconds"),
    ],
)
def test_invalid_spec_samples_fail_naming_their_field(name: str, field: str):
    with pytest.raises(InvalidSpecError) as raised:
        spec_from_document(load(f"invalid/{name}"))
    assert str(raised.value).startswith(f"{field}:")


@pytest.mark.aws
@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("unknown_instance_type.json", "z9.mega is not an instance type of region us-east-1"),
        ("mixed_gpu_and_cpu.json", "mixes GPU types (g5.xlarge) and CPU types"),
    ],
)
def test_samples_whose_instance_types_ec2_finds_invalid_fail_naming_them(name: str, problem: str):
    # given a spec that is well-formed (the spec checks names only)
    spec = spec_from_document(load(f"invalid/{name}"))
    # when EC2 describes its instance types, as Validate asks it to
    with mock_aws(), pytest.raises(InvalidSpecError) as raised:
        check_fleet_kind(describe_instance_types(spec.fleet.instance_types, boto3.client("ec2")))
    # then the error names the field and what is wrong with the types
    assert str(raised.value).startswith(f"fleet.instance_types: {problem}")


def test_malformed_manifest_sample_is_not_json():
    with pytest.raises(json.JSONDecodeError):
        json.loads((EVENTS / "invalid" / "malformed_manifest.json").read_text())


@pytest.mark.aws
@pytest.mark.parametrize(
    ("name", "field"), [("empty_input_prefix.json", "input.uri"), ("unreadable_model.json", "model.uri")]
)
def test_samples_that_need_s3_to_be_found_invalid_fail_validation_naming_their_field(name: str, field: str):
    with mock_aws():
        # given the data the valid sample points at, minus what the invalid one needs
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="spotfill-data-123456789012")
        s3.create_bucket(Bucket="control")
        s3.put_object(Bucket="spotfill-data-123456789012", Key="inputs/digits/part-00000.npy", Body=b"x")
        s3.put_object(Bucket="spotfill-data-123456789012", Key="models/digits.keras", Body=b"x")
        settings = Settings.from_environment(
            {
                "CONTROL_BUCKET": "control",
                "WORKER_IMAGE": "w",
                "TASK_ROLE_ARN": "r",
                "EXECUTION_ROLE_ARN": "r",
                "FLEET_ROLE_ARN": "r",
                "INSTANCE_PROFILE_ARN": "p",
                "LAUNCH_TEMPLATE_ID": "lt-1",
                "LAUNCH_TEMPLATE_VERSION": "1",
                "SECURITY_GROUP_ID": "sg-1",
                "DEFAULT_SUBNETS": "subnet-1",
                "WORKER_LOG_GROUP": "g",
                "NOTIFICATION_TOPIC_ARN": "t",
                "EVENT_BUS_NAME": "b",
            }
        )
        arn = "arn:aws:states:us-east-1:123456789012:execution:spotfill-backfill:x"
        event = ValidateEvent(
            input=load(f"invalid/{name}"),
            execution_arn=arn,
            state_machine_arn=arn,
            started_at=datetime.now(UTC),
        )
        # the valid sample passes this very check
        validate(
            event.model_copy(update={"input": load("start_execution.json")}), s3, settings, preflight=None
        )

        with pytest.raises(InvalidSpecError) as raised:
            validate(event, s3, settings, preflight=None)
        assert str(raised.value).startswith(f"{field}:")
