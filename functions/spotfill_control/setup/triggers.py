"""Validate: every way a backfill starts, normalised to one checked `BackfillSpec` and a new run.

Execution inputs Validate accepts (docs/contracts/spec.md, "The backfill spec"):

1. The EventBridge S3 `Object Created` event of a manifest (JSON, the spec's schema) put under `backfills/`
   in the control bucket. The run's spec is the upload the event names (`detail.object.version-id`, else its
   `etag` as a condition of the read), never whatever was uploaded to the key since (`Upload`).
2. A schedule event `{"manifest": "s3://<control bucket>/<key>.json", "time": "<ISO 8601>"}`. Inside the
   manifest's string values these placeholders resolve from the event time (UTC):

   | placeholder   | value for time 2026-11-27T06:00:00Z |
   | ------------- | ----------------------------------- |
   | `{date}`      | `2026-11-27`                        |
   | `{yesterday}` | `2026-11-26` (the day before)       |
   | `{year}`      | `2026`                              |
   | `{month}`     | `11`                                |
   | `{day}`       | `27`                                |
   | `{hour}`      | `06`                                |

   Any other `{word}` is an error. Keep scheduled manifests outside `backfills/` (e.g. `schedules/`), or the
   upload itself would start a run with the placeholders unresolved.
3. The spec itself (console or CLI `StartExecution`).
4. `{"resume": RunState}` from continue-as-new: passed through, re-pointed at the new execution.

Every problem becomes an `InvalidSpecError` naming the field path and the reason, raised before anything that
costs money exists: the spec is checked by `setup.checks` (last the account, with `setup.preflight`), then
the run is created and persisted (`validate`).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel
from botocore.exceptions import ClientError
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from spotfill_control import shards, state_store
from spotfill_control.aws import is_missing_key, is_transient
from spotfill_control.config import Settings
from spotfill_control.errors import InvalidSpecError, TransientAwsError
from spotfill_control.run import RunState, Timeline, utcnow
from spotfill_control.setup.checks import check_finish_by, check_spec
from spotfill_control.setup.preflight import Preflight
from spotfill_control.spec import BackfillSpec

MANIFEST_PREFIX = "backfills/"


MAX_MANIFEST_BYTES = 256 * 1024


_LEADING_FIELD = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+)\b")


_PLACEHOLDER = re.compile(r"\{([^{}\s\"]*)\}")


class ValidateEvent(BaseModel):
    """What the ASL's Validate state passes in (docs/contracts/state-machine.md, the state machine table)."""

    model_config = ConfigDict(extra="ignore")

    input: Any
    execution_arn: str
    state_machine_arn: str
    started_at: datetime | None = None


class ScheduleTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: str
    time: AwareDatetime


class ResumeTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resume: RunState


@dataclass(frozen=True)
class Request:
    """A trigger, normalised."""

    spec: BackfillSpec
    source: Literal["s3", "schedule", "direct"]
    manifest_uri: str | None = None


def describe_validation_error(exc: ValidationError) -> str:
    """One sentence per problem, each starting with the field path: `fleet.instance_types: unknown ...`."""
    problems = []
    for error in exc.errors():
        path = ""
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "required field is missing"
        elif error["type"] == "extra_forbidden":
            message = "unknown field"
        if not path:  # a check across fields: its message starts with the field it blames
            blamed = _LEADING_FIELD.match(message)
            path = blamed.group(1) if blamed else "spec"
        problems.append(f"{path}: {message}")
    return ". ".join(p.rstrip(".") for p in problems) + "."


def spec_from_document(document: Any, origin: str = "") -> BackfillSpec:
    """Validate a decoded spec; `origin` (e.g. the manifest URI) prefixes the message."""
    lead = f"{origin}: " if origin else ""
    if not isinstance(document, dict):
        raise InvalidSpecError(f"{lead}spec: must be a JSON object, got {type(document).__name__}.")
    try:
        return BackfillSpec.model_validate(document)
    except ValidationError as exc:
        raise InvalidSpecError(lead + describe_validation_error(exc)) from None


def placeholder_values(time: datetime) -> dict[str, str]:
    time = time.astimezone(UTC)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "yesterday": (time - timedelta(days=1)).strftime("%Y-%m-%d"),
        "year": time.strftime("%Y"),
        "month": time.strftime("%m"),
        "day": time.strftime("%d"),
        "hour": time.strftime("%H"),
    }


def resolve_placeholders(document: Any, time: datetime, path: str = "") -> Any:
    """Replace `{date}`-style placeholders in every string value of a decoded manifest."""
    values = placeholder_values(time)
    if isinstance(document, dict):
        return {
            key: resolve_placeholders(value, time, f"{path}.{key}" if path else key)
            for key, value in document.items()
        }
    if isinstance(document, list):
        return [resolve_placeholders(value, time, f"{path}[{i}]") for i, value in enumerate(document)]
    if isinstance(document, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise InvalidSpecError(
                    f"{path or 'manifest'}: unknown placeholder {{{name}}}; "
                    f"known: {', '.join('{' + k + '}' for k in values)}."
                )
            return values[name]

        return _PLACEHOLDER.sub(substitute, document)
    return document


@dataclass(frozen=True)
class Upload:
    """Which upload of a manifest key an S3 event names: its version id (a versioned bucket: the control
    bucket is), else its ETag (an unversioned or versioning-suspended bucket, where S3 sends `version-id`
    "null" or none). Reading the key's newest object instead would run a later upload's spec in this upload's
    execution, and that spec twice."""

    version_id: str | None
    etag: str | None

    @classmethod
    def of_event(cls, version_id: str | None, etag: str | None) -> Upload:
        version_id = version_id if version_id and version_id != "null" else None
        if not version_id and not etag:
            raise InvalidSpecError(
                "S3 event: detail.object has neither a version-id nor an etag, so which upload of the "
                "manifest to run is unknown."
            )
        return cls(version_id, etag or None)

    def get_arguments(self) -> dict[str, str]:
        """GetObject's arguments that read this upload and no other: by version id (IAM: s3:GetObjectVersion),
        else conditional on the ETag (S3 answers 412 PreconditionFailed once another upload replaced it)."""
        if self.version_id:
            return {"VersionId": self.version_id}
        return {"IfMatch": f'"{self.etag}"'}


def read_manifest(uri: str, s3: Any, upload: Upload | None = None) -> Any:
    """Fetch and decode a JSON manifest (the upload an S3 event names, where given); unreadable or malformed
    manifests, and an upload that a newer one replaced, are spec errors."""
    bucket, key = shards.split_s3_uri(uri)
    try:
        obj = s3.get_object(Bucket=bucket, Key=key, **(upload.get_arguments() if upload else {}))
        if obj.get("ContentLength", 0) > MAX_MANIFEST_BYTES:
            raise InvalidSpecError(f"manifest {uri}: larger than {MAX_MANIFEST_BYTES} bytes.")
        body = obj["Body"].read()
    except ClientError as exc:
        if is_transient(exc):
            raise TransientAwsError(f"manifest {uri}: {exc}") from exc
        code = exc.response.get("Error", {}).get("Code", "")
        if upload and code in ("PreconditionFailed", "412"):
            raise InvalidSpecError(
                f"manifest {uri}: the upload this event names (ETag {upload.etag}) was replaced by a newer "
                "upload of the key before it was read, and the bucket keeps no versions to read it from: "
                "this run is refused (the newer upload's own event runs the newer spec)."
            ) from None
        if upload and upload.version_id and code in ("NoSuchVersion", "NoSuchKey", "404"):
            raise InvalidSpecError(
                f"manifest {uri}: cannot be read: version {upload.version_id}, the upload this event names, "
                f"no longer exists ({code})."
            ) from None
        raise InvalidSpecError(f"manifest {uri}: cannot be read ({code}).") from None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSpecError(f"manifest {uri}: not valid JSON ({exc}).") from None


def event_object_key(key: str) -> str:
    """`detail.object.key` of an S3 event, URL-decoded as S3 encodes keys in its events (form encoding: a
    space is `+`, `+` is `%2B`, `#` is `%23`, non-ASCII is percent-encoded UTF-8, `/` is kept)."""
    try:
        return unquote_plus(key, errors="strict")
    except UnicodeDecodeError:
        raise InvalidSpecError(
            f"S3 event: detail.object.key {key!r} is not a URL-encoded UTF-8 object key."
        ) from None


def read_manifest_from_event(bucket: str, key: str, s3: Any, settings: Settings) -> str:
    """The manifest URI an S3 `Object Created` event names.

    S3 URL-encodes the key in its event notifications, and AWS's own parsers (Powertools'
    `S3EventBridgeNotificationObject.key`) decode it for EventBridge events too, while the EventBridge
    documentation is silent: so the decoded key is used, unless no such object exists and the key as sent
    does (a literal `+` or `%xx` from a sender that does not encode).
    """
    decoded = event_object_key(key)
    uri = f"s3://{bucket}/{decoded}"
    _check_manifest_location(uri, settings, under_backfills=True)
    if decoded != key and not _object_exists(bucket, decoded, s3) and _object_exists(bucket, key, s3):
        uri = f"s3://{bucket}/{key}"
        _check_manifest_location(uri, settings, under_backfills=True)
    return uri


def _object_exists(bucket: str, key: str, s3: Any) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_transient(exc):
            raise TransientAwsError(f"manifest s3://{bucket}/{key}: {exc}") from exc
        if is_missing_key(exc):
            return False
        raise InvalidSpecError(
            f"manifest s3://{bucket}/{key}: cannot be read ({exc.response.get('Error', {}).get('Code', '')})."
        ) from None
    return True


def _check_manifest_location(uri: str, settings: Settings, *, under_backfills: bool) -> None:
    bucket, key = shards.split_s3_uri(uri)
    if bucket != settings.control_bucket:
        raise InvalidSpecError(f"manifest {uri}: must be in the control bucket {settings.control_bucket}.")
    if not key.endswith(".json"):
        raise InvalidSpecError(f"manifest {uri}: must be a .json object.")
    if under_backfills and not key.startswith(MANIFEST_PREFIX):
        raise InvalidSpecError(f"manifest {uri}: must be under {MANIFEST_PREFIX} in the control bucket.")


def _parse(model: type[BaseModel], data: dict, what: str) -> Any:
    try:
        return parse(event=data, model=model)
    except ValidationError as exc:
        raise InvalidSpecError(f"{what}: {describe_validation_error(exc)}") from None


def normalise(trigger: Any, s3: Any, settings: Settings) -> Request | RunState:
    """Turn any accepted execution input into a request (or, for a resumed run, its state)."""
    if not isinstance(trigger, dict):
        raise InvalidSpecError(f"input: must be a JSON object, got {type(trigger).__name__}.")
    if "resume" in trigger:
        resumed: ResumeTrigger = _parse(ResumeTrigger, trigger, "input")
        return resumed.resume
    if trigger.get("source") == "aws.s3" or "detail-type" in trigger:
        event: S3EventNotificationEventBridgeModel = _parse(
            S3EventNotificationEventBridgeModel, trigger, "S3 event"
        )
        s3_object = event.detail.object
        upload = Upload.of_event(s3_object.version_id, s3_object.etag)
        uri = read_manifest_from_event(event.detail.bucket.name, s3_object.key, s3, settings)
        return Request(spec_from_document(read_manifest(uri, s3, upload), f"manifest {uri}"), "s3", uri)
    if "manifest" in trigger:
        schedule: ScheduleTrigger = _parse(ScheduleTrigger, trigger, "schedule event")
        if not schedule.manifest.startswith("s3://"):
            raise InvalidSpecError(f"manifest: must be an s3:// URI, got {schedule.manifest!r}.")
        _check_manifest_location(schedule.manifest, settings, under_backfills=False)
        try:
            document = resolve_placeholders(read_manifest(schedule.manifest, s3), schedule.time)
        except InvalidSpecError as exc:
            if str(exc).startswith("manifest "):
                raise
            raise InvalidSpecError(f"manifest {schedule.manifest}: {exc}") from None
        return Request(
            spec_from_document(document, f"manifest {schedule.manifest}"), "schedule", schedule.manifest
        )
    return Request(spec_from_document(trigger), "direct")


def new_run_id(name: str, now: datetime) -> str:
    """`<name, 18 chars at most>-<yyyymmddHHMMSS>-<6 hex>`: sortable, unique, valid in ECS/SQS/EC2 names."""
    stem = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:18].strip("-") or "run"
    return f"{stem}-{now.astimezone(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def validate(
    event: ValidateEvent,
    s3: Any,
    settings: Settings,
    now: datetime | None = None,
    *,
    preflight: Preflight | None,
) -> RunState:
    """Check a trigger end to end (spec, model object, shards, then the account: `preflight`, None only where
    a caller checks the spec alone) and create the run; persist it. A resumed run is not checked again."""
    now = now or utcnow()
    request = normalise(event.input, s3, settings)
    if isinstance(request, RunState):
        run = request.model_copy(
            update={"execution_arn": event.execution_arn, "state_machine_arn": event.state_machine_arn}
        )
        state_store.persist(run, s3, settings.control_bucket)
        return run
    spec = request.spec
    sample, facts = check_spec(spec, s3, settings, now, preflight=preflight)
    started_at = event.started_at or now
    deadline = check_finish_by(spec, facts, started_at, now, preflight.ec2 if preflight else None)
    run = RunState(
        run_id=new_run_id(spec.name, now),
        spec=spec,
        phase="validated",
        state_machine_arn=event.state_machine_arn,
        execution_arn=event.execution_arn,
        source=request.source,
        manifest_uri=request.manifest_uri,
        shards_total=len(sample.shards) if sample.complete else 0,  # else counted by PrepareRun
        instance_types=facts,
        timeline=Timeline(started_at=started_at, validated_at=now),
        finish_by=deadline,
    )
    state_store.persist(run, s3, settings.control_bucket)
    return run
