"""Teardown decisions that moto cannot show (it terminates a cancelled fleet's instances at once)."""

from __future__ import annotations

import pytest
from spotfill_control.errors import TransientAwsError
from spotfill_control.finishing import teardown


class SlowEc2:
    """EC2 whose instances start shutting down only after a few looks, as after a Spot Fleet cancel."""

    def __init__(self, states: dict[str, list[str]]) -> None:
        self.states = states  # instance id -> the state seen at each look (the last one repeats)
        self.terminated: list[str] = []

    def get_paginator(self, name: str):
        assert name == "describe_instances"
        return self

    def paginate(self, Filters):
        ids = Filters[0]["Values"]
        instances = []
        for i in ids:
            seen = self.states[i]
            state = seen.pop(0) if len(seen) > 1 else seen[0]
            instances.append({"InstanceId": i, "State": {"Name": state}})
        return [{"Reservations": [{"Instances": instances}]}]

    def terminate_instances(self, InstanceIds):
        self.terminated.extend(InstanceIds)
        for i in InstanceIds:
            self.states[i] = ["shutting-down"]


def test_instances_of_a_fleet_just_cancelled_are_given_time_to_go_on_their_own():
    ec2 = SlowEc2({"i-1": ["running", "running", "shutting-down"]})
    pauses: list[float] = []

    teardown.terminate_leftovers(["i-1"], {"i-1"}, ec2, teardown.Outcome(), sleep=pauses.append)

    assert ec2.terminated == []
    assert len(pauses) == 2


def test_instances_still_running_after_the_grace_are_terminated_explicitly():
    ec2 = SlowEc2({"i-1": ["running"]})
    outcome = teardown.Outcome()

    teardown.terminate_leftovers(["i-1"], {"i-1"}, ec2, outcome, sleep=lambda _: None)

    assert ec2.terminated == ["i-1"]
    assert outcome.instances_terminated == ["i-1"]


def test_instances_of_no_fleet_cancelled_now_are_terminated_without_waiting():
    ec2 = SlowEc2({"i-1": ["running"], "i-2": ["terminated"]})
    pauses: list[float] = []

    teardown.terminate_leftovers(["i-1", "i-2"], set(), ec2, teardown.Outcome(), sleep=pauses.append)

    assert ec2.terminated == ["i-1"]
    assert pauses == []


def test_an_instance_that_will_not_terminate_makes_teardown_retry():
    class Stubborn(SlowEc2):
        def terminate_instances(self, InstanceIds):
            self.terminated.extend(InstanceIds)

    ec2 = Stubborn({"i-1": ["running"]})
    with pytest.raises(TransientAwsError, match="i-1"):
        teardown.terminate_leftovers(["i-1"], set(), ec2, teardown.Outcome(), sleep=lambda _: None)
