"""StartBackfill: one execution per uploaded manifest version, however often EventBridge delivers its event.

EventBridge delivers an event at least once, and a rule that targets the state machine cannot name the
execution, so a redelivered S3 `Object Created` event would start a second full run (a second fleet). The rule
targets this function instead; it names the execution after the object's identity,

    s3-<the key's readable stem, 40 chars at most>-<sha256(bucket, key, version), 32 hex>

where version is the event's `version-id` (the control bucket is versioned: every upload has its own),
else its `etag` and `sequencer` (an unversioned bucket). Step Functions refuses a second standard execution
of that name for 90 days: while the first runs, the same input answers with the first execution (idempotent)
and another input with `ExecutionAlreadyExists`; once it has ended, always `ExecutionAlreadyExists`. Either
way no second run starts, and a new upload of the key (a new version) gets a new name. The execution's input
is the event itself (Validate's S3 trigger).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel
from botocore.exceptions import ClientError
from pydantic import ValidationError

from spotfill_control.aws import is_transient
from spotfill_control.errors import InvalidSpecError, TransientAwsError
from spotfill_control.setup.triggers import MANIFEST_PREFIX, describe_validation_error

NAME_PREFIX = "s3-"
STEM_MAX = 40
DIGEST_HEX = 32
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def object_version(version_id: str | None, etag: str, sequencer: str | None) -> str:
    """What tells one upload of a key from another: its version id, else its ETag and event sequencer."""
    if version_id and version_id != "null":
        return f"version:{version_id}"
    if not etag:
        raise InvalidSpecError("S3 event: detail.object has neither a version-id nor an etag.")
    return f"etag:{etag}:{sequencer or ''}"


def execution_name(bucket: str, key: str, version: str) -> str:
    """The execution name of one upload: 1 to 80 of `A-Za-z0-9_-` (valid for Step Functions and logs)."""
    digest = hashlib.sha256("\n".join((bucket, key, version)).encode()).hexdigest()[:DIGEST_HEX]
    stem = key.removeprefix(MANIFEST_PREFIX).removesuffix(".json")
    stem = _UNSAFE.sub("-", stem).strip("-")[:STEM_MAX].strip("-")
    return f"{NAME_PREFIX}{stem}-{digest}" if stem else f"{NAME_PREFIX}{digest}"


def execution_arn(state_machine_arn: str, name: str) -> str:
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + f":{name}"


def start_for_upload(event: dict[str, Any], sfn: Any, state_machine_arn: str) -> dict[str, Any]:
    """Start the backfill of an uploaded manifest once: `{"execution_arn", "name", "refused"}`, `refused` when
    Step Functions answered that an execution of this upload already exists (a duplicate delivery)."""
    try:
        parsed = S3EventNotificationEventBridgeModel.model_validate(event)
    except ValidationError as exc:
        raise InvalidSpecError(f"S3 event: {describe_validation_error(exc)}") from None
    s3_object = parsed.detail.object
    version = object_version(s3_object.version_id, s3_object.etag, s3_object.sequencer)
    name = execution_name(parsed.detail.bucket.name, s3_object.key, version)
    try:
        response = sfn.start_execution(
            stateMachineArn=state_machine_arn, name=name, input=json.dumps(event, sort_keys=True)
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ExecutionAlreadyExists":
            return {"execution_arn": execution_arn(state_machine_arn, name), "name": name, "refused": True}
        if is_transient(exc):
            raise TransientAwsError(f"states.start_execution {name}: {exc}") from exc
        raise
    return {"execution_arn": response["executionArn"], "name": name, "refused": False}
