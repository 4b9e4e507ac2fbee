"""How many shards the worker fetches ahead of the forward pass, chosen from what it measures.

Fetching a shard (receive its message, check its output, download it, decode it) takes ``fetch`` seconds,
for a small model almost all of it waiting on S3 and SQS; the forward pass takes ``compute`` seconds per
shard. With ``n`` fetches in flight a shard is ready every ``fetch / n`` seconds, so ``ceil(fetch / compute)``
fetches keep the forward pass fed, and one more absorbs a slow request. The depth is bounded by a maximum and
by the memory the decoded shards waiting may take. ``SPOTFILL_PREFETCH_SHARDS`` fixes the depth instead.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

# Before the first shard is measured: one shard fetching while another waits.
INITIAL_DEPTH = 2
# Each new measurement weighs this much in the running estimates (the rest: the estimate so far).
SMOOTHING = 0.3


@dataclass(frozen=True)
class DepthLimits:
    maximum: int
    memory_bytes: int


def shards_ahead(fetch_seconds: float, compute_seconds: float, shard_bytes: int, limits: DepthLimits) -> int:
    """Fetches to keep in flight so the forward pass never waits for a shard: ``ceil(fetch / compute) + 1``,
    at most ``limits.maximum`` and as many shards of ``shard_bytes`` as ``limits.memory_bytes`` holds, at
    least 1."""
    needed = math.ceil(fetch_seconds / compute_seconds) + 1 if compute_seconds > 0 else limits.maximum
    by_memory = limits.memory_bytes // shard_bytes if shard_bytes > 0 else limits.maximum
    return max(1, min(needed, by_memory, limits.maximum))


class InFlight:
    """A counting semaphore whose limit can change while it is held: a lower limit lets no new holder in
    until enough have released."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._changed = threading.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def held(self) -> int:
        with self._changed:
            return self._held

    def set_limit(self, limit: int) -> None:
        with self._changed:
            self._limit = limit
            self._changed.notify_all()

    def acquire(self, timeout: float | None = None) -> bool:
        """Hold one place, waiting up to ``timeout`` seconds for it (``None``: as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._held >= self._limit:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
            self._held += 1
            return True

    def release(self) -> None:
        with self._changed:
            self._held -= 1
            self._changed.notify_all()


class DepthEstimate:
    """Running estimates of a shard's fetch seconds, compute seconds and decoded bytes, and the depth they
    call for (``shards_ahead``); ``fixed`` (``SPOTFILL_PREFETCH_SHARDS``) overrides the estimate."""

    def __init__(self, limits: DepthLimits, fixed: int | None = None) -> None:
        self.limits = limits
        self.fixed = fixed
        self.fetch_seconds: float | None = None
        self.compute_seconds: float | None = None
        self.shard_bytes = 0

    @property
    def depth(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.fetch_seconds is None or self.compute_seconds is None:
            return min(INITIAL_DEPTH, self.limits.maximum)
        return shards_ahead(self.fetch_seconds, self.compute_seconds, self.shard_bytes, self.limits)

    def observe(self, fetch_seconds: float, compute_seconds: float, shard_bytes: int) -> int:
        """Add one shard's measurements; the depth they now call for."""
        self.fetch_seconds = _smoothed(self.fetch_seconds, fetch_seconds)
        self.compute_seconds = _smoothed(self.compute_seconds, compute_seconds)
        self.shard_bytes = max(self.shard_bytes, shard_bytes)  # the largest: memory must hold any shard
        return self.depth


def _smoothed(estimate: float | None, value: float) -> float:
    return value if estimate is None else (1 - SMOOTHING) * estimate + SMOOTHING * value
