"""Amazon EventBridge: rules deliver to Step Functions and Lambda targets.

moto delivers rule targets only to SQS, logs, buses and API destinations, and raises for any other target.
AWS also starts Step Functions executions and invokes Lambda functions; those are delivered here,
asynchronously as in AWS, with the target's `Input` / `InputPath` / `InputTransformer` applied (moto skips the
transformer for S3 notifications), and an S3 event's `detail.object.key` URL-encoded as S3 sends it (moto
sends the key as is). Deliveries go to the local cloud's endpoint (`set_delivery_endpoint`).

AWS documentation followed:
- "Event bus targets in Amazon EventBridge", Amazon EventBridge User Guide:
  https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-targets.html
- "Amazon EventBridge input transformation", Amazon EventBridge User Guide:
  https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-transform-target-input.html
- "Target" (`Input`, `InputPath`, `InputTransformer`), Amazon EventBridge API Reference:
  https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_Target.html
- "EventBridge event message structure" (S3's events), Amazon S3 User Guide:
  https://docs.aws.amazon.com/AmazonS3/latest/userguide/ev-events.html
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

import boto3

log = logging.getLogger(__name__)

_endpoint: dict[str, str] = {}


def set_delivery_endpoint(endpoint_url: str) -> None:
    """Deliver to the Step Functions and Lambda of the emulator at this endpoint from now on."""
    _endpoint["url"] = endpoint_url


def patch_rule_targets() -> None:
    from moto.events.models import Rule
    from moto.utilities.arns import parse_arn

    original_send = Rule.send_to_targets

    def send_to_targets(self: Any, original_event: dict[str, Any], transform_input: bool = True) -> None:
        if not self.event_pattern.matches_event(original_event):
            return
        ours = [t for t in self.targets if parse_arn(t["Arn"]).service in ("states", "lambda")]
        theirs = [t for t in self.targets if t not in ours]
        if theirs:
            shallow = copy.copy(self)
            shallow.targets = theirs
            original_send(shallow, original_event, transform_input)
        if ours and self.state == "ENABLED":
            event = aws_shaped_event(original_event)
            for target in ours:
                deliver_to_target(target, event)

    Rule.send_to_targets = send_to_targets


def aws_shaped_event(event: dict[str, Any]) -> dict[str, Any]:
    """moto keeps an event's `time` as epoch seconds; AWS delivers an ISO 8601 string. moto puts an S3
    object's key in its EventBridge event as is; S3 URL-encodes keys in its events (form encoding, `/` kept),
    as AWS's own parsers of the EventBridge event expect (docs/contracts/spec.md). moto names the object's
    ETag `eTag` and sends `version-id: null` for an unversioned bucket; S3 sends `etag`, and no version id."""
    shaped = copy.deepcopy(dict(event))
    shaped.pop("ingestion-time", None)
    if isinstance(shaped.get("time"), int | float):
        shaped["time"] = datetime.fromtimestamp(shaped["time"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    shaped.setdefault("version", "0")
    s3_object = shaped.get("detail", {}).get("object") if shaped.get("source") == "aws.s3" else None
    if isinstance(s3_object, dict) and isinstance(s3_object.get("key"), str):
        s3_object["key"] = quote_plus(s3_object["key"], safe="/")
    if isinstance(s3_object, dict):
        if "eTag" in s3_object:
            s3_object["etag"] = s3_object.pop("eTag")
        if s3_object.get("version-id") is None:
            s3_object.pop("version-id", None)
    return shaped


def target_input(target: dict[str, Any], event: dict[str, Any]) -> Any:
    """The payload AWS hands a rule target: Input, InputPath or InputTransformer applied to the event."""
    if target.get("Input") is not None:
        return json.loads(target["Input"])
    if target.get("InputPath"):
        from jsonpath_ng.ext import parse

        matches = parse(target["InputPath"]).find(event)
        return matches[0].value if matches else None
    if target.get("InputTransformer"):
        transformer = target["InputTransformer"]
        return transform_input(transformer.get("InputPathsMap", {}), transformer["InputTemplate"], event)
    return event


def transform_input(paths: dict[str, str], template: str, event: dict[str, Any]) -> Any:
    """EventBridge's InputTransformer: `<name>` inside a JSON string takes the value's text; outside one, the
    value as JSON (so a string arrives quoted). The result is JSON when it parses, else the text itself."""
    from jsonpath_ng.ext import parse

    values: dict[str, Any] = {"aws.events.event.json": event}
    for name, path in paths.items():
        matches = parse(path).find(event)
        values[name] = matches[0].value if matches else None
    out, in_string, i = [], False, 0
    while i < len(template):
        char = template[i]
        if char == "\\" and in_string:
            out.append(template[i : i + 2])
            i += 2
            continue
        if char == '"':
            in_string = not in_string
        elif char == "<":
            end = template.find(">", i)
            name = template[i + 1 : end] if end > 0 else None
            if name in values:
                value = values[name]
                if in_string:
                    text = value if isinstance(value, str) else json.dumps(value)
                    out.append(json.dumps(text)[1:-1])
                else:
                    out.append(json.dumps(value))
                i = end + 1
                continue
        out.append(char)
        i += 1
    rendered = "".join(out)
    try:
        return json.loads(rendered)
    except ValueError:
        return rendered


def deliver_to_target(target: dict[str, Any], event: dict[str, Any]) -> None:
    payload = json.dumps(target_input(target, event))
    threading.Thread(
        target=_deliver, args=(target["Arn"], payload), name="eventbridge-delivery", daemon=True
    ).start()


def _deliver(arn: str, payload: str) -> None:
    url = _endpoint.get("url")
    try:
        if ":states:" in arn:
            sfn = boto3.client("stepfunctions", endpoint_url=url, region_name=arn.split(":")[3])
            sfn.start_execution(stateMachineArn=arn, input=payload)
        else:
            lam = boto3.client("lambda", endpoint_url=url, region_name=arn.split(":")[3])
            lam.invoke(FunctionName=arn, InvocationType="RequestResponse", Payload=payload.encode())
    except Exception:  # AWS retries and then drops (or dead-letters) an undeliverable event; so do we
        log.exception("EventBridge could not deliver to %s", arn)
