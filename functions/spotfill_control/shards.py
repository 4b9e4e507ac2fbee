"""Shards: finding them, naming their outputs, and queueing one message per shard.

The output URI is derived from the input URI alone (docs/contracts.md, "Shards, queue and outputs"): the
shard's path relative to the input prefix, with the input format's extension replaced by the output
format's, under the output prefix. For a manifest of shard URIs the path is relative to the manifest's
folder when the shard lies under it, else `<bucket>/<key>` (unique across buckets).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from spotfill_control.aws import is_transient
from spotfill_control.errors import InvalidSpecError, SpotfillError, TransientAwsError
from spotfill_control.run import RUN_ID_TAG, RunState
from spotfill_control.spec import INPUT_EXTENSIONS, OUTPUT_EXTENSIONS, BackfillSpec, InputSpec

MAX_RECEIVES = 3  # a shard that fails this often goes to the dead-letter queue
VISIBILITY_TIMEOUT_SECONDS = 120  # the worker's default heartbeat window (SPOTFILL_VISIBILITY_TIMEOUT)
RETENTION_SECONDS = 14 * 86_400
SEND_ATTEMPTS = 5
SEND_WORKERS = 8  # parallel SendMessageBatch calls: a million shards are 100,000 batches


class Shard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    shard: str
    output: str
    error: str
    skipped: bool = False

    def message(self, run_id: str) -> str:
        """The SQS message body (docs/contracts.md): what the worker needs about this shard."""
        return json.dumps({"run_id": run_id, "shard": self.shard, "output": self.output, "error": self.error})


class ShardList(BaseModel):
    """`runs/<run id>/shards.json`: every shard of the run; `skipped` ones already had an output."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    shards: list[Shard]

    @property
    def pending(self) -> list[Shard]:
        return [s for s in self.shards if not s.skipped]


def shard_list_key(run_id: str) -> str:
    return f"runs/{run_id}/shards.json"


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


# ---------------------------------------------------------------------------------------------- listing


def list_shards(input_spec: InputSpec, s3: Any) -> list[str]:
    """The input's shard URIs: objects under the prefix with the format's extension, or a manifest's."""
    if input_spec.is_prefix:
        bucket, prefix = split_s3_uri(input_spec.uri)
        extensions = INPUT_EXTENSIONS[input_spec.format]
        keys = list_keys(bucket, prefix, s3, what="input.uri")
        return [f"s3://{bucket}/{k}" for k in sorted(keys) if k.lower().endswith(extensions)]
    return _read_shard_manifest(input_spec, s3)


def list_keys(bucket: str, prefix: str, s3: Any, what: str) -> list[str]:
    keys: list[str] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))
    except ClientError as exc:
        if is_transient(exc):
            raise TransientAwsError(f"{what}: listing s3://{bucket}/{prefix}: {exc}") from exc
        code = exc.response.get("Error", {}).get("Code", "")
        reason = f"bucket {bucket} does not exist" if code == "NoSuchBucket" else f"cannot be listed ({code})"
        raise InvalidSpecError(f"{what}: s3://{bucket}/{prefix}: {reason}.") from None
    return keys


def _read_shard_manifest(input_spec: InputSpec, s3: Any) -> list[str]:
    bucket, key = split_s3_uri(input_spec.uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if is_transient(exc):
            raise TransientAwsError(f"input.uri: reading {input_spec.uri}: {exc}") from exc
        code = exc.response.get("Error", {}).get("Code", "")
        raise InvalidSpecError(
            f"input.uri: shard manifest {input_spec.uri} cannot be read ({code})."
        ) from None
    try:
        text = body.decode()
        if key.endswith(".json"):
            entries = json.loads(text)
            if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                raise InvalidSpecError(f"input.uri: {input_spec.uri} must be a JSON array of s3:// URIs.")
        else:
            entries = [line.strip() for line in text.splitlines()]
            entries = [e for e in entries if e and not e.startswith("#")]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSpecError(f"input.uri: {input_spec.uri} is not a valid shard list ({exc}).") from None
    extensions = INPUT_EXTENSIONS[input_spec.format]
    seen: set[str] = set()
    for number, entry in enumerate(entries, start=1):
        where = f"input.uri: {input_spec.uri} entry {number}"
        if not entry.startswith("s3://") or not split_s3_uri(entry)[0] or not split_s3_uri(entry)[1]:
            raise InvalidSpecError(f"{where}: {entry!r} is not an s3://bucket/key URI.")
        if not entry.lower().endswith(extensions):
            raise InvalidSpecError(f"{where}: {entry} does not end in {' or '.join(extensions)}.")
        if entry in seen:
            raise InvalidSpecError(f"{where}: {entry} is listed twice.")
        seen.add(entry)
    return list(entries)


# ---------------------------------------------------------------------------------------------- naming


def relative_path(shard_uri: str, input_spec: InputSpec) -> str:
    bucket, key = split_s3_uri(shard_uri)
    base_bucket, base_key = split_s3_uri(input_spec.uri)
    folder = base_key[: base_key.rfind("/") + 1]  # the prefix itself, or the shard manifest's folder
    if bucket == base_bucket and key.startswith(folder):
        return key[len(folder) :]
    return f"{bucket}/{key}"


def output_uri(shard_uri: str, spec: BackfillSpec) -> str:
    relative = relative_path(shard_uri, spec.input)
    for extension in INPUT_EXTENSIONS[spec.input.format]:
        if relative.lower().endswith(extension):
            relative = relative[: -len(extension)]
            break
    return spec.output.uri + relative + OUTPUT_EXTENSIONS[spec.output.format]


def error_uri(shard_uri: str, spec: BackfillSpec, control_bucket: str, run_id: str) -> str:
    return f"s3://{control_bucket}/runs/{run_id}/errors/{relative_path(shard_uri, spec.input)}.json"


def output_uris(spec: BackfillSpec, shard_uris: Iterable[str]) -> dict[str, str]:
    """Shard → output; two shards that would write one output (`a.jsonl`, `a.ndjson`) are a spec error."""
    outputs: dict[str, str] = {}
    owner: dict[str, str] = {}
    for shard in shard_uris:
        out = output_uri(shard, spec)
        if out in owner:
            raise InvalidSpecError(f"input.uri: shards {owner[out]} and {shard} would both write {out}.")
        owner[out] = shard
        outputs[shard] = out
    return outputs


def plan_shards(
    run: RunState, shard_uris: list[str], existing_outputs: set[str], control_bucket: str
) -> ShardList:
    outputs = output_uris(run.spec, shard_uris)
    return ShardList(
        run_id=run.run_id,
        shards=[
            Shard(
                shard=uri,
                output=outputs[uri],
                error=error_uri(uri, run.spec, control_bucket, run.run_id),
                skipped=outputs[uri] in existing_outputs,
            )
            for uri in shard_uris
        ],
    )


def existing_outputs(spec: BackfillSpec, s3: Any) -> set[str]:
    bucket, prefix = split_s3_uri(spec.output.uri)
    return {f"s3://{bucket}/{k}" for k in list_keys(bucket, prefix, s3, what="output.uri")}


def write_shard_list(shard_list: ShardList, s3: Any, control_bucket: str) -> None:
    s3.put_object(
        Bucket=control_bucket,
        Key=shard_list_key(shard_list.run_id),
        Body=shard_list.model_dump_json().encode(),
        ContentType="application/json",
    )


def read_shard_list(run_id: str, s3: Any, control_bucket: str) -> ShardList | None:
    try:
        body = s3.get_object(Bucket=control_bucket, Key=shard_list_key(run_id))["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return ShardList.model_validate_json(body)


# ---------------------------------------------------------------------------------------------- queues


def dead_letter_queue_name(run: RunState) -> str:
    return f"{run.scoped_name}-dlq"


def create_dead_letter_queue(run: RunState, sqs: Any) -> str:
    return sqs.create_queue(
        QueueName=dead_letter_queue_name(run),
        Attributes={"SqsManagedSseEnabled": "true", "MessageRetentionPeriod": str(RETENTION_SECONDS)},
        tags={RUN_ID_TAG: run.run_id},
    )["QueueUrl"]


def create_shard_queue(run: RunState, sqs: Any, dead_letter_queue_url: str) -> str:
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dead_letter_queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    return sqs.create_queue(
        QueueName=run.scoped_name,
        Attributes={
            "SqsManagedSseEnabled": "true",
            "MessageRetentionPeriod": str(RETENTION_SECONDS),
            "VisibilityTimeout": str(VISIBILITY_TIMEOUT_SECONDS),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES}),
        },
        tags={RUN_ID_TAG: run.run_id},
    )["QueueUrl"]


def send_shards(
    run_id: str,
    shards: list[Shard],
    queue_url: str,
    sqs: Any,
    sleep: Callable[[float], None] = time.sleep,
    workers: int = SEND_WORKERS,
) -> int:
    """One message per shard, ten per batch, batches in parallel; failed entries are resent, never dropped.

    Raises TransientAwsError when some entries still fail after SEND_ATTEMPTS rounds (the ASL retries the
    state; a resent shard is harmless because its output key is fixed).
    """
    batches = [shards[start : start + 10] for start in range(0, len(shards), 10)]
    if not batches:
        return 0
    # The first batch goes from this thread: a refused queue fails fast, before any pool exists.
    sent = _send_batch(run_id, batches[0], queue_url, sqs, sleep)
    if workers <= 1 or len(batches) <= 2:
        return sent + sum(_send_batch(run_id, batch, queue_url, sqs, sleep) for batch in batches[1:])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sent + sum(
            pool.map(lambda batch: _send_batch(run_id, batch, queue_url, sqs, sleep), batches[1:])
        )


def _send_batch(
    run_id: str, batch: list[Shard], queue_url: str, sqs: Any, sleep: Callable[[float], None]
) -> int:
    pending = {str(i): shard.message(run_id) for i, shard in enumerate(batch)}
    for attempt in range(SEND_ATTEMPTS):
        try:
            response = sqs.send_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": entry_id, "MessageBody": body} for entry_id, body in pending.items()],
            )
        except ClientError as exc:
            if not is_transient(exc):
                raise SpotfillError(f"sqs.send_message_batch: {exc}") from exc
            if attempt == SEND_ATTEMPTS - 1:
                raise TransientAwsError(f"sqs.send_message_batch: {exc}") from exc
            sleep(0.2 * 2**attempt)
            continue
        for ok in response.get("Successful", []):
            pending.pop(ok["Id"], None)
        if not pending:
            return len(batch)
        if attempt == SEND_ATTEMPTS - 1:
            reasons = "; ".join(
                f"{batch[int(f['Id'])].shard}: {f.get('Code')} {f.get('Message', '')}".strip()
                for f in response.get("Failed", [])
            )
            raise TransientAwsError(
                f"sqs.send_message_batch: {len(pending)} shard message(s) not sent after "
                f"{SEND_ATTEMPTS} attempts ({reasons})"
            )
        sleep(0.2 * 2**attempt)
    return len(batch) - len(pending)
