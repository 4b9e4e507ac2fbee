"""Throwaway handlers that prove the in-process dispatcher, independent of spotfill's real handlers."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import boto3
from spotfill_control.config import settings
from spotfill_control.errors import InvalidSpecError, TransientAwsError


def raise_invalid_spec(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise InvalidSpecError(f"fleet.instance_types: unknown instance type(s) {event['instance_type']}")


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {
        "event": event,
        "control_bucket": settings().control_bucket,
        "environment_bucket": os.environ.get("CONTROL_BUCKET"),
        "function_name": context.function_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }


def flaky_once(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Succeeds; tests make its first call fail with an injected TransientAwsError."""
    return {"ok": True}


def raise_transient(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise TransientAwsError("throttled")


def return_datetime(event: dict[str, Any], context: Any) -> Any:
    return {"when": datetime.now(UTC)}


def list_buckets_from_a_thread_pool(event: dict[str, Any], context: Any) -> dict[str, Any]:
    s3 = boto3.client("s3")
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda _: s3.list_buckets(), range(2)))
    return {"ok": True}


def list_queues_and_buckets(event: dict[str, Any], context: Any) -> dict[str, Any]:
    boto3.client("sqs").list_queues()
    boto3.client("s3").list_buckets()
    return {"ok": True}
