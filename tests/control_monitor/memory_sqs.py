"""An in-memory SQS queue with the semantics the dead-letter drain relies on, for thousands of messages.

moto's ReceiveMessage checks every message's retention against the queue's attributes, which costs time
quadratic in the queue's length (1,234 messages take about 90 s to drain), so the tests with thousands of dead
letters use this queue; the few-message tests use moto's. Time stands still here: a received message stays in
flight until it is deleted or `expire_visibility` is called, as if its visibility timeout ended.
"""

from __future__ import annotations

import json
import uuid
from typing import Any


class MemoryQueue:
    def __init__(self, url: str, bodies: list[str] | None = None, empty_short_polls: int = 0) -> None:
        self.url = url
        self.visible: list[tuple[str, str]] = []  # (message id, body), in order
        self.in_flight: dict[str, tuple[str, str]] = {}  # receipt handle -> (message id, body)
        self.empty_short_polls = empty_short_polls  # the next short polls that answer empty (missed servers)
        self.most_in_flight = 0
        self.calls: dict[str, int] = {}
        for body in bodies or []:
            self.send(body)

    def send(self, body: str) -> None:
        self.visible.append((str(uuid.uuid4()), body))

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def receive_message(self, QueueUrl: str, MaxNumberOfMessages: int = 1, **kwargs: Any) -> dict[str, Any]:
        assert QueueUrl == self.url
        self._count("ReceiveMessage")
        if not kwargs.get("WaitTimeSeconds") and self.empty_short_polls > 0:
            self.empty_short_polls -= 1
            return {}
        taken, self.visible = self.visible[:MaxNumberOfMessages], self.visible[MaxNumberOfMessages:]
        messages = []
        for message_id, body in taken:
            handle = str(uuid.uuid4())
            self.in_flight[handle] = (message_id, body)
            messages.append({"MessageId": message_id, "ReceiptHandle": handle, "Body": body})
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        return {"Messages": messages} if messages else {}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        assert QueueUrl == self.url and 1 <= len(Entries) <= 10
        self._count("DeleteMessageBatch")
        ok, failed = [], []
        for entry in Entries:
            if self.in_flight.pop(entry["ReceiptHandle"], None) is None:
                failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": True})
            else:
                ok.append({"Id": entry["Id"]})
        return {"Successful": ok, "Failed": failed}

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Only VisibilityTimeout 0 (what a peek does): the messages are visible again at once."""
        assert QueueUrl == self.url and 1 <= len(Entries) <= 10
        self._count("ChangeMessageVisibilityBatch")
        ok, failed = [], []
        for entry in Entries:
            assert entry["VisibilityTimeout"] == 0
            message = self.in_flight.pop(entry["ReceiptHandle"], None)
            if message is None:
                failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": True})
            else:
                self.visible.append(message)
                ok.append({"Id": entry["Id"]})
        return {"Successful": ok, "Failed": failed}

    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        assert QueueUrl == self.url
        self._count("GetQueueAttributes")
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(len(self.visible)),
                "ApproximateNumberOfMessagesNotVisible": str(len(self.in_flight)),
                "ApproximateNumberOfMessagesDelayed": "0",
            }
        }

    def expire_visibility(self) -> None:
        self.visible += list(self.in_flight.values())
        self.in_flight.clear()

    def shards(self) -> list[str]:
        return sorted(json.loads(body)["shard"] for _, body in [*self.visible, *self.in_flight.values()])


class RoutedSqs:
    """moto's SQS client, except for the queues given here (by URL), which are answered in memory."""

    def __init__(self, sqs: Any, *queues: MemoryQueue) -> None:
        self.sqs = sqs
        self.queues = {q.url: q for q in queues}

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            queue = self.queues.get(kwargs.get("QueueUrl", ""))
            return getattr(queue if queue is not None else self.sqs, name)(**kwargs)

        return call
