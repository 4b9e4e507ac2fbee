"""A time budget for work that continues in the next invocation when it runs out (docs/state-machine.md).

Monitor, Teardown and Report each give their long loops (verifying outputs, draining dead letters) about half
of the time the Lambda has left, so a run of any size never meets the function's Timeout: what is left is
picked up by the next poll, the retried Teardown or, for the report, stated in the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# The share of an invocation's remaining time its long loops may use; the rest is for everything after.
SHARE_OF_REMAINING = 0.5


class Deadline:
    """`seconds` from now, on `clock` (monotonic seconds): `expired` once they have passed."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds < 0:
            raise ValueError(f"a deadline needs a budget of 0 seconds or more, not {seconds}")
        self.seconds, self.clock = seconds, clock
        self.start = clock()

    def left(self) -> float:
        return self.seconds - (self.clock() - self.start)

    @property
    def expired(self) -> bool:
        return self.left() <= 0

    @classmethod
    def of_invocation(cls, context: Any, default_seconds: float) -> Deadline:
        """Half the time the invocation has left (`context.get_remaining_time_in_millis()`), or
        `default_seconds` when there is no Lambda context (local tools)."""
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if remaining is None:
            return cls(default_seconds)
        return cls(max(0.0, remaining() / 1000 * SHARE_OF_REMAINING))


def seconds_left(context: Any) -> Callable[[], float] | None:
    """The seconds a Lambda invocation has left, as a function to call when needed; None without a context."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return lambda: remaining() / 1000
