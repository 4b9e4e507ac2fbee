"""Amazon SQS: a message's visibility at most 12 hours from its latest receive.

A message's visibility can be extended to at most 12 hours from the time it was *received*
(`ChangeMessageVisibility`: `InvalidParameterValue`, "Total VisibilityTimeout for the message is beyond the
limit [43200 seconds]"). moto 5.2.5 counts from when the message was *sent*, and in a batch raises for the
whole request instead of failing the entry. `patch_sqs_visibility_limit()` (also for tests in process) counts
from the latest receive and fails the batch entry.

AWS documentation followed:
- "ChangeMessageVisibility", Amazon SQS API Reference:
  https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html
- "ChangeMessageVisibilityBatch", Amazon SQS API Reference:
  https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibilityBatch.html
- "Amazon SQS visibility timeout", Amazon SQS Developer Guide:
  https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-visibility-timeout.html
"""

from __future__ import annotations

import threading
from typing import Any

SQS_MAX_VISIBILITY_SECONDS = 43_200
_sqs_visibility_patched = False
_sqs_lock = threading.Lock()


def patch_sqs_visibility_limit() -> None:
    """Make moto refuse a visibility change past 12 hours from the message's latest receive, as SQS does
    (idempotent; changes moto's SQS model classes for the whole process)."""
    global _sqs_visibility_patched
    with _sqs_lock:
        if _sqs_visibility_patched:
            return
        from moto.sqs import models
        from moto.sqs.exceptions import InvalidParameterValue, ReceiptHandleIsInvalid

        original_mark_received = models.Message.mark_received

        def mark_received(self: Any, visibility_timeout: int | None = None) -> None:
            original_mark_received(self, visibility_timeout)
            self.spotfill_received_at_ms = models.unix_time_millis()

        def change_message_visibility(
            self: Any, queue_name: str, receipt_handle: str, visibility_timeout: int
        ) -> None:
            queue = self.get_queue(queue_name)
            for message in queue._messages:
                if message.had_receipt_handle(receipt_handle):
                    received = getattr(message, "spotfill_received_at_ms", message.sent_timestamp)
                    until = models.unix_time_millis() + int(visibility_timeout) * 1000
                    if until - received > SQS_MAX_VISIBILITY_SECONDS * 1000:
                        raise InvalidParameterValue(
                            f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: "
                            f"Total VisibilityTimeout for the message is beyond the limit "
                            f"[{SQS_MAX_VISIBILITY_SECONDS} seconds]"
                        )
                    message.change_visibility(visibility_timeout)
                    if message.visible and message in queue.pending_messages:
                        queue.pending_messages.remove(message)
                    return
            raise ReceiptHandleIsInvalid

        def change_message_visibility_batch(
            self: Any, queue_name: str, entries: list[dict[str, Any]]
        ) -> tuple[list[str], list[dict[str, Any]]]:
            success: list[str] = []
            errors: list[dict[str, Any]] = []
            for entry in entries:
                try:
                    seconds = int(entry["VisibilityTimeout"])
                    if not 0 <= seconds <= SQS_MAX_VISIBILITY_SECONDS:
                        raise InvalidParameterValue("Visibility timeout invalid")
                    self.change_message_visibility(
                        queue_name=queue_name,
                        receipt_handle=entry["ReceiptHandle"],
                        visibility_timeout=seconds,
                    )
                    success.append(entry["Id"])
                except (InvalidParameterValue, ReceiptHandleIsInvalid) as exc:
                    errors.append(
                        {"Id": entry["Id"], "SenderFault": True, "Code": exc.code, "Message": exc.message}
                    )
            return success, errors

        models.Message.mark_received = mark_received
        models.SQSBackend.change_message_visibility = change_message_visibility
        models.SQSBackend.change_message_visibility_batch = change_message_visibility_batch
        _sqs_visibility_patched = True
