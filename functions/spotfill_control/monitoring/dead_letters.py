"""Dead letters: moved from the run's dead-letter queue into S3 records, and read back from there.

A shard that fails `queues.MAX_RECEIVES` times lands in the run's dead-letter queue. Monitor (every poll,
within its time budget) and Teardown (to the end) move them to S3 (`drain`): receive a batch of at most
DRAIN_BATCH messages, store the batch's shards in one record `runs/<run id>/dead-letters/<digest>.json`, then
delete those messages. So the count is exact and needs no peeking, and at most one batch is ever in flight,
far below SQS's 120,000 in-flight messages per queue. A crash between the put and the deletes only leaves
the batch's messages to come back and be stored again: readers deduplicate (`read_dead_letters`).

Runs torn down before this layout kept their dead letters in one object, `runs/<run id>/dead_letters.json`;
`read_dead_letters` still reads it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from spotfill_control.aws import read_object
from spotfill_control.deadline import Deadline
from spotfill_control.errors import SpotfillError

# Messages received, stored as one record and deleted before the next batch is received.
DRAIN_BATCH = 1_000
# Longer than a batch takes from its first receive to its last delete: none of it comes back meanwhile.
DRAIN_VISIBILITY_SECONDS = 300
# Teardown waits this long between looks at a queue whose remaining messages are all in flight.
IN_FLIGHT_PAUSE_SECONDS = 1.0
# A short poll samples only some SQS servers and may answer empty while messages remain: until the expected
# messages are moved, an empty answer is asked again as a long poll (all servers), this many times.
EMPTY_RECEIVES_TOLERATED = 3


def records_prefix(run_id: str) -> str:
    return f"runs/{run_id}/dead-letters/"


def legacy_key(run_id: str) -> str:
    """The single-object layout of runs torn down before the records (still read, never written)."""
    return f"runs/{run_id}/dead_letters.json"


def record_key(run_id: str, message_ids: list[str]) -> str:
    """Named by its messages: the same batch received again (a retry after a crash) overwrites its record."""
    digest = hashlib.sha256("\n".join(sorted(message_ids)).encode()).hexdigest()[:32]
    return f"{records_prefix(run_id)}{digest}.json"


def shard_of(message: Mapping[str, Any]) -> str | None:
    """The shard URI a queue message names (None for a message that is not a shard message)."""
    try:
        body = json.loads(message["Body"])
    except (KeyError, TypeError, json.JSONDecodeError):
        return None
    shard = body.get("shard") if isinstance(body, dict) else None
    return shard if isinstance(shard, str) else None


@dataclass
class Drained:
    """What one drain did: messages moved (shard messages and others), records written, and whether the
    queue was seen empty at the end."""

    messages: int = 0
    records: int = 0
    empty: bool = False


def drain(
    run_id: str,
    queue_url: str,
    sqs: Any,
    s3: Any,
    bucket: str,
    deadline: Deadline,
    *,
    expected: int = 0,
    until_empty: bool = False,
    batch_size: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Drained:
    """Move the queue's messages into records, batch by batch, while `deadline` has time left.

    Until `expected` messages (the queue's approximate depth) are moved, an empty answer is asked again as a
    long poll, up to EMPTY_RECEIVES_TOLERATED times. Without `until_empty` (Monitor) the drain then ends: the
    next poll goes on. With it (Teardown) an empty answer is trusted only when the queue's attributes count no
    message, visible or in flight (a batch received by a crashed earlier attempt comes back when its
    visibility times out).
    """
    drained = Drained()
    empties = 0
    while deadline.fits_another():
        wait = 1 if empties else 0
        with deadline.step():
            messages = _receive_batch(queue_url, sqs, batch_size or DRAIN_BATCH, wait)
        if not messages:
            empties += 1
            if drained.messages < expected and empties <= EMPTY_RECEIVES_TOLERATED:
                continue
            if not until_empty or _messages_left(queue_url, sqs) == 0:
                drained.empty = True
                return drained
            sleep(min(IN_FLIGHT_PAUSE_SECONDS, max(0.0, deadline.left())))
            continue
        empties = 0
        with deadline.step():  # a batch's receive and its store and delete are one step of the budget
            _store(run_id, messages, s3, bucket)
            drained.records += 1
            _delete(queue_url, messages, sqs)
        drained.messages += len(messages)
    return drained


def _receive_batch(queue_url: str, sqs: Any, size: int, wait_seconds: int) -> list[dict[str, Any]]:
    """Up to `size` messages (and at most 9 more), received 10 at a time until an empty answer. One call at a
    time: the local cloud's emulated SQS loses deletes made concurrently, and a batch costs ~200 calls."""
    got: dict[str, dict[str, Any]] = {}
    while len(got) < size:
        answer = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=DRAIN_VISIBILITY_SECONDS,
            WaitTimeSeconds=wait_seconds,
        ).get("Messages", [])
        if not answer:
            break
        for message in answer:
            got[message["MessageId"]] = message
    return list(got.values())


def _store(run_id: str, messages: list[dict[str, Any]], s3: Any, bucket: str) -> None:
    shards = sorted({s for s in (shard_of(m) for m in messages) if s is not None})
    s3.put_object(
        Bucket=bucket,
        Key=record_key(run_id, [m["MessageId"] for m in messages]),
        Body=json.dumps({"run_id": run_id, "messages": len(messages), "shards": shards}).encode(),
        ContentType="application/json",
    )


def _delete(queue_url: str, messages: list[dict[str, Any]], sqs: Any) -> None:
    def delete(batch: list[dict[str, Any]]) -> None:
        response = sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
        )
        # A message deleted meanwhile (ReceiptHandleIsInvalid) is gone already; anything else is a real fault.
        unexpected = [f for f in response.get("Failed", []) if f.get("Code") != "ReceiptHandleIsInvalid"]
        if unexpected:
            reasons = "; ".join(f"{f.get('Code')}: {f.get('Message', '')}" for f in unexpected)
            raise SpotfillError(f"sqs.delete_message_batch failed for dead letters stored in S3: {reasons}")

    for start in range(0, len(messages), 10):
        delete(messages[start : start + 10])


def _messages_left(queue_url: str, sqs: Any) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", 0)) + int(
        attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
    )


# ------------------------------------------------------------------------------------------ reading back


def stored_keys(run_id: str, s3: Any, bucket: str) -> tuple[list[str], bool]:
    """(the run's record keys, whether the legacy single object exists): one listing of `runs/<id>/dead`,
    so no GetObject ever probes a key that may not exist."""
    records: list[str] = []
    legacy = False
    prefix = f"runs/{run_id}/dead"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.startswith(records_prefix(run_id)):
                records.append(key)
            elif key == legacy_key(run_id):
                legacy = True
    return records, legacy


def read_dead_letters(run_id: str, s3: Any, bucket: str) -> list[str] | None:
    """Every dead-lettered shard the run stored (records and the legacy object), distinct and sorted; None
    when nothing was ever stored."""
    records, legacy = stored_keys(run_id, s3, bucket)
    if not records and not legacy:
        return None
    keys = records + ([legacy_key(run_id)] if legacy else [])

    def shards_in(key: str) -> list[str]:
        body = read_object(s3, bucket, key)
        if body is None:
            return []
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise SpotfillError(f"s3://{bucket}/{key} is not a dead-letter record: {exc}") from None
        found = document.get("shards") if isinstance(document, dict) else None
        if not isinstance(found, list):
            raise SpotfillError(f"s3://{bucket}/{key} is not a dead-letter record: it has no list of shards")
        return [s for s in found if isinstance(s, str)]

    shards: set[str] = set()
    with ThreadPoolExecutor(max_workers=16) as pool:
        for found in pool.map(shards_in, keys):
            shards.update(found)
    return sorted(shards)
