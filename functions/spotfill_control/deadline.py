"""A time budget for work that continues in the next invocation when it runs out (docs/state-machine.md).

Monitor, Teardown and Report each give their long loops (verifying outputs, draining dead letters) about half
of the time the Lambda has left, so a run of any size never meets the function's Timeout: what is left is
picked up by the next poll, the retried Teardown or, for the report, stated in the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# The share of an invocation's remaining time its long loops may use; the rest is for everything after.
SHARE_OF_REMAINING = 0.5


class Deadline:
    """`seconds` from now, on `clock` (monotonic seconds): `expired` once they have passed.

    A loop of steps (a part verified, a part queued, a batch of dead letters moved) asks `fits_another()`
    before each step rather than `expired`: it is False once the time left is shorter than the longest step
    timed so far (`step()`), so the last step started still ends within the budget, not one step past it.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if seconds < 0:
            raise ValueError(f"a deadline needs a budget of 0 seconds or more, not {seconds}")
        self.seconds, self.clock = seconds, clock
        self.start = clock()
        self.longest_step = 0.0

    def left(self) -> float:
        return self.seconds - (self.clock() - self.start)

    @property
    def expired(self) -> bool:
        return self.left() <= 0

    def fits_another(self) -> bool:
        """Whether a step as long as the longest timed so far still ends within the budget."""
        left = self.left()
        return left > 0 and left >= self.longest_step

    @contextmanager
    def step(self) -> Iterator[None]:
        """Time one step of the loop (its duration feeds `fits_another`)."""
        started = self.clock()
        try:
            yield
        finally:
            self.longest_step = max(self.longest_step, self.clock() - started)

    @classmethod
    def of_invocation(
        cls, context: Any, default_seconds: float, share: float = SHARE_OF_REMAINING
    ) -> Deadline:
        """`share` (half) of the time the invocation has left (`context.get_remaining_time_in_millis()`), or
        `default_seconds` when there is no Lambda context (local tools)."""
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if remaining is None:
            return cls(default_seconds)
        return cls(max(0.0, remaining() / 1000 * share))


def seconds_left(context: Any) -> Callable[[], float] | None:
    """The seconds a Lambda invocation has left, as a function to call when needed; None without a context."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return lambda: remaining() / 1000
