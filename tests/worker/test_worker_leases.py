"""The heartbeat against SQS's 12-hour limit: a message stays invisible at most 12 hours from its receipt
(ChangeMessageVisibility: InvalidParameterValue beyond it). moto counts from the send, so these tests use the
local cloud's patch, which counts from the latest receive as SQS does, and drive moto's clock and the
heartbeat's by hand (no waiting: a 12-hour lease takes a few dozen heartbeats)."""

from __future__ import annotations

import io
import json

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from spotfill_worker.leases import Delivery, Leases
from spotfill_worker.telemetry import Telemetry

from spotfill.localcloud.patches.sqs import patch_sqs_visibility_limit

TWELVE_HOURS = 43_200
START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """moto's SQS clock, moved by hand."""
    from moto.sqs import models

    clock = Clock()
    monkeypatch.setattr(models, "unix_time", lambda: clock.now)
    monkeypatch.setattr(models, "unix_time_millis", lambda: clock.now * 1000)
    return clock


@pytest.fixture
def queue(clock):
    patch_sqs_visibility_limit()
    with mock_aws():
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="shards", Attributes={"VisibilityTimeout": "120"})["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"shard": "s3://data/in/part-0.npy"}))
        yield sqs, url


def _receive(sqs, url, visibility: int) -> list[dict]:
    return sqs.receive_message(QueueUrl=url, VisibilityTimeout=visibility, WaitTimeSeconds=0).get(
        "Messages", []
    )


def _events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _hold(
    sqs, url, clock: Clock, visibility: int, recorded_late: float = 0.0
) -> tuple[Leases, Delivery, io.StringIO]:
    """Receive the message and hold it, its receipt time recorded `recorded_late` seconds after SQS's."""
    (message,) = _receive(sqs, url, visibility)
    stream = io.StringIO()
    leases = Leases(sqs, url, visibility, Telemetry("run-test", stream), clock=lambda: clock.now)
    received_at = clock.now + recorded_late
    delivery = Delivery(message["MessageId"], message["ReceiptHandle"], message["Body"], 1, received_at)
    leases.add(delivery)
    return leases, delivery, stream


def test_patched_moto_refuses_visibility_past_12_hours_from_the_receipt_not_from_the_send(queue, clock):
    sqs, url = queue
    # given a message sent 13 hours before it is received (moto alone would refuse any extension now)
    clock.advance(13 * 3600)
    (message,) = _receive(sqs, url, 120)
    handle = message["ReceiptHandle"]

    # when its visibility is extended to exactly 12 hours from the receipt, it is accepted
    clock.advance(3600)
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=TWELVE_HOURS - 3600)

    # then one second more is refused with SQS's error, alone or as a batch entry (the call itself succeeds)
    with pytest.raises(ClientError) as refused:
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=TWELVE_HOURS - 3599
        )
    assert refused.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert "beyond the limit [43200 seconds]" in refused.value.response["Error"]["Message"]
    batch = sqs.change_message_visibility_batch(
        QueueUrl=url, Entries=[{"Id": "0", "ReceiptHandle": handle, "VisibilityTimeout": TWELVE_HOURS - 3599}]
    )
    assert [f["Code"] for f in batch["Failed"]] == ["InvalidParameterValue"]


def test_heartbeat_extends_up_to_12_hours_from_the_receipt_then_stops_with_a_logged_reason(queue, clock):
    sqs, url = queue
    # given a held message and a heartbeat every 1,200 s (a third of a one-hour visibility timeout)
    leases, delivery, stream = _hold(sqs, url, clock, visibility=3600)

    # when the shard takes longer than 12 hours
    for _ in range(TWELVE_HOURS // 1200 + 3):
        clock.advance(1200)
        leases.beat()

    # then SQS never refused an extension, and the worker logged once why it stopped extending
    events = _events(stream)
    assert [e for e in events if e["event"] == "visibility_change_failed"] == []
    (limit,) = [e for e in events if e["event"] == "lease_limit_reached"]
    assert limit["level"] == "WARNING" and limit["message_id"] == delivery.message_id
    assert "12 hours" in limit["reason"]
    # and the message came back for another worker once the 12 hours were over
    again = _receive(sqs, url, 120)
    assert [m["MessageId"] for m in again] == [delivery.message_id]


def test_message_stays_invisible_until_just_before_its_12_hours_are_over(queue, clock):
    sqs, url = queue
    leases, _, _ = _hold(sqs, url, clock, visibility=3600)
    received = clock.now

    # when heartbeats run to the limit
    while clock.now < received + TWELVE_HOURS - 1200:
        clock.advance(1200)
        leases.beat()
    clock.advance(1200)
    leases.beat()

    # then the message was held to within a minute of the limit, not dropped an extension early
    clock.now = received + TWELVE_HOURS - 120
    assert _receive(sqs, url, 120) == []
    clock.now = received + TWELVE_HOURS + 1
    assert len(_receive(sqs, url, 120)) == 1


def test_heartbeat_that_sqs_refuses_for_the_limit_stops_extending_that_message_and_does_not_raise(
    queue, clock
):
    sqs, url = queue
    # given a worker that noted the receipt 10 minutes after SQS did (it thinks it has more time than it has)
    leases, delivery, stream = _hold(sqs, url, clock, visibility=3600, recorded_late=600)

    # when the heartbeat runs into the limit and keeps beating
    clock.advance(TWELVE_HOURS - 1500)
    leases.beat()  # asks for 3,600 s that SQS no longer allows
    for _ in range(3):
        clock.advance(60)
        leases.beat()

    # then the refusal is logged once as the lease's end, with SQS's error, and not asked again
    events = _events(stream)
    (limit,) = [e for e in events if e["event"] == "lease_limit_reached"]
    assert limit["message_id"] == delivery.message_id and "InvalidParameterValue" in limit["error"]
    assert [e for e in events if e["event"] == "visibility_change_failed"] == []
