"""One cached factory for boto3 clients.

Clients are made at first use, never at import, so tests start moto before any client exists; boto3
honours AWS_ENDPOINT_URL, which is how the local cloud is reached without a separate code path.
Domain functions take clients as arguments (`Clients`: those a run's Monitor and Teardown share); only
handlers call `client()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError

from spotfill_control.errors import TransientAwsError


@dataclass
class Clients:
    """The clients a run's Monitor and Teardown steps work with."""

    s3: Any
    sqs: Any
    ec2: Any
    ecs: Any


_RETRIES = Config(retries={"mode": "adaptive", "max_attempts": 8})


@cache
def client(service: str, region: str | None = None) -> Any:
    """A client of this Region (the function's), or of `region` (an ECR registry elsewhere)."""
    if region is None:
        return boto3.client(service, config=_RETRIES)
    return boto3.client(service, region_name=region, config=_RETRIES)


def reset_clients() -> None:
    """Forget cached clients (tests start a fresh moto per test)."""
    client.cache_clear()


_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "TooManyRequestsException",
        "SlowDown",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "ServerException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def is_transient(exc: Exception) -> bool:
    """Whether a botocore error is worth retrying (throttling, 5xx), not a fault in the request."""
    if isinstance(exc, ConnectionError | ReadTimeoutError):
        return True
    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return error.get("Code") in _TRANSIENT_CODES or status >= 500


MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def is_missing_key(exc: Exception) -> bool:
    """Whether an S3 GetObject/HeadObject error says the key does not exist (HTTP 404).

    A 403 never does: S3 answers a missing key with 403 AccessDenied to a principal without s3:ListBucket on
    the bucket, and reading that as "missing" would hide a real denial. Every function that probes a key
    that may be missing is granted s3:ListBucket on that bucket (docs/contracts/iam.md, "IAM")."""
    if not isinstance(exc, ClientError):
        return False
    return exc.response.get("Error", {}).get("Code") in MISSING_KEY_CODES


def read_object(s3: Any, bucket: str, key: str) -> bytes | None:
    """The object's body, or None when the key does not exist (as `is_missing_key` decides); any other error
    is raised."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if is_missing_key(exc):
            return None
        raise


@contextmanager
def transient_errors_retried(what: str) -> Iterator[None]:
    """Re-raise a transient AWS error as `TransientAwsError`, which the state machine retries; any other
    `ClientError` passes unchanged, to the Catch."""
    try:
        yield
    except ClientError as exc:
        if is_transient(exc):
            raise TransientAwsError(f"{what}: {exc}") from exc
        raise
