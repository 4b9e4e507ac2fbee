"""ECS's quotas are checked before any money is spent: a spec whose service could need more tasks than one ECS
service may run is refused at Validate, and the desired count never exceeds the quota."""

from __future__ import annotations

import pytest
from spotfill_control.errors import InvalidSpecError
from spotfill_control.fleet.cluster import desired_count
from spotfill_control.setup.triggers import spec_from_document
from spotfill_control.spec import ECS_CONTAINER_INSTANCES_PER_CLUSTER, ECS_TASKS_PER_SERVICE

from .conftest import sample_spec


def _spec(target_capacity: int, tasks_per_instance: int) -> dict:
    spec = sample_spec()
    spec["fleet"]["target_capacity"] = target_capacity
    spec.setdefault("service", {})["tasks_per_instance"] = tasks_per_instance
    return spec


def test_a_service_that_could_need_more_tasks_than_ecs_allows_is_refused_naming_both_fields():
    # given 1,000 capacity units of 6 tasks each: 6,000 tasks, above ECS's 5,000 per service
    with pytest.raises(InvalidSpecError) as raised:
        spec_from_document(_spec(1000, 6))

    # then the sentence names both fields, the product, the quota and what would fit
    message = str(raised.value)
    assert message.startswith("fleet.target_capacity: ")
    assert "fleet.target_capacity (1000) x service.tasks_per_instance (6)" in message
    assert "6000 tasks" in message and f"quota of {ECS_TASKS_PER_SERVICE} tasks per service" in message
    assert "lower fleet.target_capacity to 833 or less, or service.tasks_per_instance to 5 or less" in message


def test_a_service_at_exactly_the_quota_is_accepted():
    spec = spec_from_document(_spec(1000, 5))
    assert spec.fleet.target_capacity * spec.service.tasks_per_instance == ECS_TASKS_PER_SERVICE


def test_a_fleet_larger_than_a_cluster_may_hold_is_refused():
    with pytest.raises(InvalidSpecError, match=r"^fleet\.target_capacity: "):
        spec_from_document(_spec(ECS_CONTAINER_INSTANCES_PER_CLUSTER + 1, 1))


def test_the_desired_count_never_exceeds_the_tasks_per_service_quota():
    # given more registered task slots than one service may run (a fleet that overshot its target), and work
    assert desired_count(1001, 5, 1_000_000) == ECS_TASKS_PER_SERVICE
    # and it still follows the work left below the quota, and never drops to zero while work remains
    assert desired_count(1001, 5, 42) == 42
    assert desired_count(0, 5, 42) == 1
