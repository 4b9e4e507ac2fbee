"""The run's two queues: the shard queue, one message per shard, and its dead-letter queue.

A shard whose message is received MAX_RECEIVES times moves to the dead-letter queue (the queue's redrive
policy); both queues keep messages as long as SQS allows, which `spec.MAX_RUNTIME_SECONDS` keeps every run
inside. Messages go out in parallel batches of ten, each batch retried on a transient error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control.aws import is_transient
from spotfill_control.errors import SpotfillError, TransientAwsError
from spotfill_control.run import RUN_ID_TAG, RunState
from spotfill_control.shards import Shard, ShardRef
from spotfill_control.spec import (
    SQS_MAX_RETENTION_SECONDS,
)

MAX_RECEIVES = 3  # a shard that fails this often goes to the dead-letter queue


VISIBILITY_TIMEOUT_SECONDS = 120  # the worker's default heartbeat window (SPOTFILL_VISIBILITY_TIMEOUT)


RETENTION_SECONDS = SQS_MAX_RETENTION_SECONDS  # both queues; spec.MAX_RUNTIME_SECONDS keeps runs inside it


SEND_ATTEMPTS = 5


SEND_WORKERS = 8  # parallel SendMessageBatch calls: a million shards are 100,000 batches


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
    shards: Sequence[Shard | ShardRef],
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
    run_id: str, batch: Sequence[Shard | ShardRef], queue_url: str, sqs: Any, sleep: Callable[[float], None]
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
