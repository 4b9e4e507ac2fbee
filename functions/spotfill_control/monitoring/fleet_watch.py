"""The fleet and the service as a Monitor poll sees them, and how it sizes them.

- counts spot interruptions: fleet instances that went away while the fleet is active and not because the
  run lowered its capacity;
- sizes the service to the capacity that registered: a task per task slot of the registered instances (raised
  as instances join), never more than the remaining shards, never zero while work remains;
- lowers the fleet's target capacity once fewer shards remain than the fleet has task slots, so nobody pays
  for idle instances; otherwise lets a deadline run steer its target (`finish_by.steer`), re-weighs the fleet
  (`fleet.weights`) and applies the on-demand fallback (`fleet.rebalance`); a draining run stops new capacity
  (`budget.stop_new_capacity`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotfill_control.aws import Clients
from spotfill_control.config import Settings
from spotfill_control.fleet import fleet, on_demand, weights
from spotfill_control.fleet.cluster import count_registered_instances, desired_count
from spotfill_control.fleet.fleet_api import FleetStatus
from spotfill_control.monitoring import budget, cost, finish_by
from spotfill_control.monitoring.progress import Iteration
from spotfill_control.run import RunState

# Instances that count: pending and running ones work (or will); the rest are going away.
ALIVE_STATES = frozenset({"pending", "running"})


def instances_needed(remaining_shards: int, tasks_per_instance: int) -> int:
    """Instances that keep every remaining shard busy (the service runs `tasks_per_instance` per instance)."""
    return math.ceil(remaining_shards / tasks_per_instance)


def lowered_capacity(
    current: float, remaining_shards: int, tasks_per_instance: int, max_weight: float
) -> int | None:
    """The fleet's new target capacity (weighted units), or None when it should stay.

    Only ever lowered, never to zero while work remains, and never below what the remaining shards need: the
    fleet may keep its heaviest instances, so each needed instance is counted at the heaviest weight.
    """
    needed = max(1, math.ceil(instances_needed(remaining_shards, tasks_per_instance) * max_weight))
    return needed if needed < current else None


def count_interruptions(
    known_weights: Mapping[str, float], alive: set[str], target_capacity: float, fleet_active: bool
) -> int:
    """Instances seen last time and gone now that the fleet did not remove on our request.

    After we lower the target capacity the fleet may remove instances worth `known - target` units; anything
    beyond that (and everything while the fleet is not lowered) went away on its own: a spot interruption.
    Disappearances are explained heaviest first, so the count of interruptions is never overstated.
    """
    if not fleet_active:
        return 0
    gone = sorted((known_weights[i] for i in known_weights if i not in alive), reverse=True)
    allowance = max(0.0, sum(known_weights.values()) - target_capacity)
    interrupted = 0
    for weight in gone:
        if weight <= allowance + 1e-9:
            allowance -= weight
        else:
            interrupted += 1
    return interrupted


@dataclass(frozen=True)
class FleetView:
    status: FleetStatus
    weights: dict[str, float]  # instance type → weighted capacity (as the fleet was requested)
    alive: dict[str, str]  # instance id → type, for pending/running instances
    known_types: dict[str, str]  # instance id → type, for instances described this time

    @property
    def state(self) -> str:
        return self.status.state

    @property
    def active(self) -> bool:
        return self.status.active

    @property
    def target_capacity(self) -> int:
        return int(self.status.target_capacity)

    @property
    def valid_until(self) -> datetime | None:
        return self.status.valid_until


def describe_fleet(
    run: RunState,
    extra_ids: Iterable[str],
    weights: Mapping[str, float],
    ec2: Any,
    described: Sequence[Mapping[str, Any]] | None = None,
) -> FleetView | None:
    """The run's fleet: state, targets and live instances; None when EC2 does not know it (any more, or yet).
    `described`: the run's instances as this poll already read them (`cost.run_instances`)."""
    status = fleet.fleet_status(run, ec2)
    if status is None or run.resources.fleet_id is None:
        return None
    active = fleet.api_of(run).instances(run.resources.fleet_id, ec2)
    if active is None:  # DescribeFleetInstances does not know it (yet, or any more): as DescribeFleets would
        return None
    listed = [i.instance_id for i in active]
    if described is not None:  # an instance launched since that read: described by id
        read = {i["InstanceId"] for i in described}
        described = [*described, *cost.instances_by_id(set(listed) - read, ec2).values()]
    states = describe_instance_states(run.run_id, set(listed) | set(extra_ids), ec2, described)
    return FleetView(
        status=status,
        weights=dict(weights),
        alive={i: states[i][1] for i in listed if i in states and states[i][0] in ALIVE_STATES},
        known_types={i: t for i, (_, t) in states.items()},
    )


def describe_instance_states(
    run_id: str, instance_ids: set[str], ec2: Any, described: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, tuple[str, str]]:
    """instance id → (state, type) for those of `instance_ids` EC2 still knows: from `described` (the run's
    instances as this poll read them), else read as the run's instances by their run-id tag (a
    DescribeInstances page per 1,000) and by id only those the tag misses; never a call per 200 ids."""
    if described is None:
        described = cost.run_instances(run_id, instance_ids, ec2)
    return {
        i["InstanceId"]: (i["State"]["Name"], i["InstanceType"])
        for i in described
        if i["InstanceId"] in instance_ids
    }


def service_counts(cluster: str, service: str, ecs: Any) -> tuple[int, int] | None:
    """(desired, running) tasks of the service; None when it is not active."""
    services = ecs.describe_services(cluster=cluster, services=[service]).get("services", [])
    active = [s for s in services if s.get("status") == "ACTIVE"]
    if not active:
        return None
    return int(active[0]["desiredCount"]), int(active[0].get("runningCount", 0))


def watch_fleet(
    run: RunState,
    clients: Clients,
    seen: Iteration,
    done: bool,
    now: datetime,
    instances: Sequence[Mapping[str, Any]] | None = None,
    settings: Settings | None = None,
) -> None:
    progress = run.progress
    type_weights = run.capacity_weights
    view = describe_fleet(run, progress.known_instances, type_weights, clients.ec2, instances)
    if view is None:
        if fleet.unseen_is_transient(run, run.resources.fleet_id, now):
            # EC2 does not know the fleet it made moments ago yet (eventual consistency): nothing is known of
            # it this poll, not that it is gone.
            seen.fleet_state = None
            return
        progress.known_instances = []
        seen.fleet_state = "gone"
        return
    seen.fleet_state = view.state
    seen.fleet_valid_until = view.valid_until
    known_weights = {i: view.weights.get(view.known_types.get(i, ""), 1.0) for i in progress.known_instances}
    removable = view.target_capacity
    if run.finish_by is not None and run.finish_by.shrunk_without_termination:
        removable = max(removable, math.ceil(sum(known_weights.values())))  # the fleet removed none
    seen.interruptions = count_interruptions(known_weights, set(view.alive), removable, view.active)
    progress.interruptions += seen.interruptions
    progress.known_instances = sorted(view.alive)
    progress.fleet_target_capacity = view.target_capacity
    seen.fleet_target_capacity = view.target_capacity
    if done or not view.active:
        # Done: teardown removes everything, resizing now would only race it. A fleet that ended brings no
        # capacity: check_fleet fails the run.
        return
    if run.budget.draining_since is not None:
        # Draining for the dollar cap: the service stays at 0 tasks, and the fleet goes to target 0 once it
        # takes a new target (not while it is still modifying).
        if view.state == "active" and view.target_capacity > 0:
            budget.stop_new_capacity(run, clients.ec2)
            progress.fleet_target_capacity = seen.fleet_target_capacity = 0
        return
    size_service(run, clients, seen)
    if view.state != "active":
        # Submitted or modifying: the fleet takes no new target until it settles; the next iteration
        # lowers it.
        return

    if settings is not None and weights.reweigh(run, clients.ec2, settings, seen.capacity, now):
        # The fleet is modifying: the next poll sizes it (under the new weights).
        return
    tasks_per_instance = run.spec.service.tasks_per_instance
    max_weight = max(view.weights.values(), default=1.0)
    target = on_demand.work_target(progress, view.status)
    new_target = lowered_capacity(target, seen.remaining, tasks_per_instance, max_weight)
    if new_target is not None:
        # The tail keeps its on-demand units only as far as the new target reaches; a fallback is over.
        od = min(view.status.on_demand_target_capacity, float(new_target))
        fleet.set_target_capacity(run, clients.ec2, new_target, od)
        on_demand.after_scale_down(progress, new_target, run.spec.fleet.on_demand_base)
        if run.finish_by is not None:  # this lowering terminates: the allowance holds again
            run.finish_by.shrunk_without_termination = False
        progress.fleet_target_capacity = new_target
        seen.fleet_target_capacity = new_target
        return
    if run.finish_by is not None:
        # The deadline sets the target (`finish_by.steer`); the on-demand fallback joins only while the
        # running capacity would finish late (or before any rate, as without a deadline), and not on a poll
        # that changed the target (its view of the fleet is stale).
        tracking = finish_by.steer(run, clients.ec2, view.status, seen.capacity, seen.remaining, now)
        if tracking is not None and run.finish_by.added_units:
            progress.fleet_target_capacity = seen.fleet_target_capacity = run.finish_by.target_units
            return
        if tracking is not None and not tracking.at_risk:
            return
    fleet.rebalance(run, clients.ec2, view.status, now)


def size_service(run: RunState, clients: Clients, seen: Iteration) -> None:
    """Desired tasks follow the capacity that registered and the work left (`desired_count`)."""
    cluster, service = run.resources.cluster_name, run.resources.service_name
    if not (cluster and service):
        return
    counts = service_counts(cluster, service, clients.ecs)
    if counts is None:
        return
    desired, seen.running_tasks = counts
    wanted = desired_count(
        count_registered_instances(run, clients.ecs), run.spec.service.tasks_per_instance, seen.remaining
    )
    if wanted != desired:
        clients.ecs.update_service(cluster=cluster, service=service, desiredCount=wanted)
    seen.service_desired_count = wanted
