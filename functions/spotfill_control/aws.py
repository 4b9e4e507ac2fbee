"""One cached factory for boto3 clients.

Clients are made at first use, never at import, so tests start moto before any client exists; boto3
honours AWS_ENDPOINT_URL, which is how the local cloud is reached without a separate code path.
Domain functions take clients as arguments; only handlers call `client()`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

_RETRIES = Config(retries={"mode": "adaptive", "max_attempts": 8})


@lru_cache(maxsize=None)
def client(service: str) -> Any:
    return boto3.client(service, config=_RETRIES)


def reset_clients() -> None:
    """Forget cached clients (tests start a fresh moto per test)."""
    client.cache_clear()
