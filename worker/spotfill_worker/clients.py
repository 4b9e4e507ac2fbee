"""AWS access: one lazily created S3 and SQS client per worker, from one boto3 session, with adaptive retries.

Nothing here runs at import time. boto3 honours ``AWS_ENDPOINT_URL`` itself, so the local cloud and
production take the same code path. Adaptive retries make a burst of ``SlowDown`` from many workers
writing at once slow the workers down instead of failing shards.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

RETRY_CONFIG = {"mode": "adaptive", "max_attempts": 10}


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """``s3://bucket/key`` split at the first ``/`` after the bucket: the key is opaque, taken verbatim
        (``#``, ``?``, ``%``, ``+``, spaces, ``//``, a leading ``/`` are all part of it), exactly as the
        control plane's ``shards.split_s3_uri`` splits it. Not a URL: nothing is decoded or cut off."""
        bucket, _, key = uri[len("s3://") :].partition("/") if uri.startswith("s3://") else ("", "", "")
        if not bucket or not key:
            raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class Clients:
    """Creates each client on first use (thread-safe); tests may pass ready-made clients instead."""

    def __init__(self, s3: Any = None, sqs: Any = None, max_pool_connections: int = 16) -> None:
        self._s3 = s3
        self._sqs = sqs
        self._max_pool_connections = max_pool_connections
        self._lock = threading.Lock()
        self._session: Any = None

    def _create(self, service: str) -> Any:
        """A client of the worker's one session (made under ``_lock``: a session is not thread-safe), so the
        endpoint, partition and default-configuration data botocore parses per session is parsed once."""
        import boto3
        from botocore.config import Config

        if self._session is None:
            self._session = boto3.session.Session()
        config = Config(retries=dict(RETRY_CONFIG), max_pool_connections=self._max_pool_connections)
        return self._session.client(service, config=config)

    @property
    def s3(self) -> Any:
        with self._lock:
            if self._s3 is None:
                self._s3 = self._create("s3")
            return self._s3

    @property
    def sqs(self) -> Any:
        with self._lock:
            if self._sqs is None:
                self._sqs = self._create("sqs")
            return self._sqs
