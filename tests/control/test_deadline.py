"""The time budget of work that continues in the next invocation (`spotfill_control.deadline`)."""

from __future__ import annotations

import pytest
from spotfill_control.deadline import Deadline


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_step_is_started_only_when_one_as_long_as_the_longest_so_far_still_ends_within_the_budget():
    # given a 10 s budget and a loop whose steps take 3 s
    clock = Clock()
    deadline = Deadline(10, clock=clock)
    started = 0
    # when the loop asks before each step
    while deadline.fits_another():
        with deadline.step():
            clock.now += 3
        started += 1
    # then it ran three steps (ending at 9 s), not a fourth that would end at 12 s
    assert started == 3 and clock.now == 9 and not deadline.expired


def test_the_first_step_goes_whenever_time_is_left_and_none_once_it_has_run_out():
    clock = Clock()
    assert Deadline(0.5, clock=clock).fits_another()
    spent = Deadline(1, clock=clock)
    clock.now = 1
    assert spent.expired and not spent.fits_another()


def test_a_negative_budget_is_refused_with_its_value():
    with pytest.raises(ValueError, match="not -1"):
        Deadline(-1)
