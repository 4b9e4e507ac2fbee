"""Amazon S3: a conditional write that races another write to the same key answers 409.

A conditional write (`If-None-Match` / `If-Match`) that races another write to the same key answers 409
`ConditionalRequestConflict` on AWS ("retry the upload"); moto serialises requests and never does.
`CONDITIONAL_WRITE_CONFLICTS.arm(n)` makes the next n conditional PutObjects answer it (chaos `conflict=N`,
and the worker tests).

AWS documentation followed:
- "Add preconditions to S3 operations with conditional requests", Amazon S3 User Guide:
  https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-requests.html
- "PutObject", Amazon S3 API Reference: https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html
- "Error responses" (`ConditionalRequestConflict`), Amazon S3 API Reference:
  https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html
"""

from __future__ import annotations

import threading
from typing import Any

_CONFLICT_MESSAGE = (
    "A conflicting operation occurred. If using PutObject you can retry the request. If using multipart "
    "upload you should initiate another CreateMultipartUpload request and re-upload each part."
)


class ConditionalWriteConflicts:
    """Armed, the next conditional PutObjects (`If-None-Match` or `If-Match`) answer 409
    `ConditionalRequestConflict` without writing, as S3 does when another write to the key is in flight:
    `writes` of them in all, at most `per_key` on any one key (then that key's writes go through)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._left = 0
        self._per_key = 0
        self._by_key: dict[tuple[str, str], int] = {}
        self.answered: list[tuple[str, str]] = []  # (bucket, key) of every 409 answered

    def arm(self, writes: int, per_key: int = 1) -> None:
        if writes < 0 or per_key < 1:
            raise ValueError(f"conflicts need writes >= 0 and per_key >= 1, got {writes} and {per_key}")
        with self._lock:
            self._left, self._per_key, self._by_key = writes, per_key, {}
            self.answered = []

    def disarm(self) -> None:
        with self._lock:
            self._left = 0

    def take(self, bucket: str, key: str) -> bool:
        """Whether this conditional write to bucket/key answers 409 (and counts it if so)."""
        with self._lock:
            seen = self._by_key.get((bucket, key), 0)
            if self._left <= 0 or seen >= self._per_key:
                return False
            self._left -= 1
            self._by_key[(bucket, key)] = seen + 1
            self.answered.append((bucket, key))
            return True


CONDITIONAL_WRITE_CONFLICTS = ConditionalWriteConflicts()
_conflicts_lock = threading.Lock()
_conflicts_installed = False


def install_conditional_write_conflicts() -> None:
    """Patch moto's S3 PutObject to consult `CONDITIONAL_WRITE_CONFLICTS` (idempotent; works for the moto
    server and for `mock_aws` alike). Unarmed, PutObject behaves as before."""
    global _conflicts_installed
    with _conflicts_lock:
        if _conflicts_installed:
            return
        from xml.sax.saxutils import escape

        from moto.s3.responses import S3Response

        original = S3Response.put_object

        def put_object(self: Any) -> Any:
            conditional = self.headers.get("If-None-Match") or self.headers.get("If-Match")
            if conditional and CONDITIONAL_WRITE_CONFLICTS.take(self.bucket_name, self.parse_key_name()):
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ConditionalRequestConflict</Code>'
                    f"<Message>{escape(_CONFLICT_MESSAGE)}</Message>"
                    f"<Key>{escape(self.parse_key_name())}</Key></Error>"
                )
                return 409, {"Content-Type": "application/xml"}, body
            return original(self)

        S3Response.put_object = put_object
        _conflicts_installed = True
