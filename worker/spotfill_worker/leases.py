"""The shard messages this worker holds, kept invisible by a heartbeat while it works on them.

A message is either deleted (its output is written), dropped (a poison shard: left to time out, so SQS
counts the receive and redrives it to the dead-letter queue after the limit), or released (visibility 0:
another worker takes it at once, used when stopping).

SQS keeps a message invisible at most 12 hours from its receipt (ChangeMessageVisibility beyond that is
refused with InvalidParameterValue). The heartbeat extends a message only up to that limit, less a margin for
the time between SQS's receipt and `Delivery.received_at`; its last extension ends there and is logged as
`lease_limit_reached`. The worker keeps working on the shard: the message becomes visible again, another
worker may take it (a duplicate is harmless: outputs are conditional puts and a worker skips a shard whose
output exists), and a shard that never finishes within 12 hours is dead-lettered after its receive limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spotfill_worker.telemetry import Telemetry

MAX_VISIBILITY_SECONDS = 43_200  # SQS: at most 12 hours invisible, counted from the message's receipt
LIMIT_MARGIN_SECONDS = 60  # SQS received the message before `received_at` was read (the receive's latency)
LIMIT_REASON = (
    "SQS keeps a message invisible at most 12 hours from its receipt: its message becomes visible again and "
    "another worker may take the shard (one output is kept); a shard that never finishes within 12 hours is "
    "dead-lettered after its receive limit"
)


@dataclass
class Delivery:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    received_at: float = 0.0
    attributes: dict[str, Any] = field(default_factory=dict)
    at_limit: bool = False  # extended as far as SQS allows: the heartbeat leaves it alone


class Leases:
    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        visibility_timeout: int,
        telemetry: Telemetry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` is the one `Delivery.received_at` was read from."""
        self._sqs = sqs
        self._clock = clock
        self._queue_url = queue_url
        self._visibility = visibility_timeout
        self._telemetry = telemetry
        self._held: dict[str, Delivery] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def add(self, delivery: Delivery) -> None:
        with self._lock:
            self._held[delivery.receipt_handle] = delivery

    def drop(self, delivery: Delivery) -> None:
        with self._lock:
            self._held.pop(delivery.receipt_handle, None)

    def delete(self, delivery: Delivery) -> None:
        with self._lock:
            self._held.pop(delivery.receipt_handle, None)
        self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=delivery.receipt_handle)

    def release(self, delivery: Delivery, after: int = 0) -> bool:
        """Make the message visible again now, or `after` seconds from now; returns whether this worker still
        held it."""
        with self._lock:
            if self._held.pop(delivery.receipt_handle, None) is None:
                return False
            self._set_visibility([delivery], after)
        return True

    def release_all(self) -> list[Delivery]:
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
            self._set_visibility(held, 0)
        return held

    def start_heartbeat(self) -> None:
        # Extend well before expiry: a third of the timeout leaves two missed beats of slack.
        period = max(0.25, self._visibility / 3)

        def beat() -> None:
            while not self._closed.wait(period):
                self.beat()

        self._thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """One heartbeat: extend every held message by the visibility timeout, or to its 12-hour limit."""
        with self._lock:
            now = self._clock()
            full, last = [], []
            for delivery in self._held.values():
                if delivery.at_limit:
                    continue
                left = int(delivery.received_at + MAX_VISIBILITY_SECONDS - LIMIT_MARGIN_SECONDS - now)
                (full if left >= self._visibility else last).append((delivery, left))
            refused = self._set_visibility([d for d, _ in full], self._visibility)
            ended = [d for d, _ in full if d.message_id in refused]
            for delivery, left in last:  # the last extension: up to the limit
                delivery.at_limit = True
                if left > 0:
                    refused.update(self._set_visibility([delivery], left))
                ended.append(delivery)
            for delivery in ended:
                self._telemetry.log(
                    "lease_limit_reached",
                    level="WARNING",
                    message_id=delivery.message_id,
                    held_seconds=round(now - delivery.received_at),
                    reason=LIMIT_REASON,
                    **({"error": refused[delivery.message_id]} if delivery.message_id in refused else {}),
                )

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _set_visibility(self, deliveries: list[Delivery], seconds: int) -> dict[str, str]:
        """Caller holds the lock, so a heartbeat can never re-hide a message that was just released.

        Returns the refusals of SQS's 12-hour limit (message id → error), which end those messages' leases;
        every other failure is logged as `visibility_change_failed`."""
        refused: dict[str, str] = {}
        for start in range(0, len(deliveries), 10):
            chunk = deliveries[start : start + 10]
            entries = [
                {"Id": str(i), "ReceiptHandle": d.receipt_handle, "VisibilityTimeout": seconds}
                for i, d in enumerate(chunk)
            ]
            try:
                response = self._sqs.change_message_visibility_batch(
                    QueueUrl=self._queue_url, Entries=entries
                )
            except Exception as exc:
                self._telemetry.log(
                    "visibility_change_failed", level="WARNING", error=str(exc), seconds=seconds
                )
                continue
            for failure in response.get("Failed", []):
                delivery = chunk[int(failure["Id"])]
                if seconds > 0 and failure.get("Code") == "InvalidParameterValue":
                    # The only invalid value a heartbeat can send: one past the 12 hours from the receipt.
                    delivery.at_limit = True
                    refused[delivery.message_id] = f"{failure.get('Code')}: {failure.get('Message', '')}"
                    continue
                self._telemetry.log(
                    "visibility_change_failed",
                    level="WARNING",
                    message_id=delivery.message_id,
                    error=failure.get("Code"),
                    seconds=seconds,
                )
        return refused
