"""Capacity in predictions: a deadline run's fleet weights its instance types by their measured throughput.

A fleet is requested weighted by vCPUs (GPUs; `instance_types.capacity_weights`), a guess at what each type
delivers. Once a run with `limits.finish_by` and more than one instance type has measured each type, the
Monitor sets every type's `WeightedCapacity` to its predictions per second per instance, so the allocation
strategy, which compares prices per unit, buys the cheapest predictions rather than the cheapest vCPUs.

- Measured: every output a worker writes on EC2 carries its instance type and the worker's own throughput so
  far (`spotfill-instance-type`, `spotfill-worker-rows-per-second`: docs/contracts/output-objects.md,
  "Output objects").
  The Monitor reads them from the outputs it samples anyway for rows per shard (`progress.sample_rows`),
  each output once (`MEASURED_OUTPUTS_LIMIT` of them at most). An instance of a type delivers
  `service.tasks_per_instance` x the mean worker rate of that type.
- Enough: at least `MIN_OUTPUTS_PER_TYPE` outputs of each of two or more types that run now.
- Normalized so that the change is neutral for the capacity running now: with n_T instances of type T
  running, w_T the weight now and r_T its measured rate per instance, the new weights are r_T x k with
  k = sum(n_T x w_T) / sum(n_T x r_T) over the measured types. The running capacity is the same number of
  units before and after, so the change itself launches and terminates nothing (whichever weight EC2 counts a
  running instance at), and a unit is then k^-1 predictions per second on every type: `finish_by`'s units
  keep their rate (its unit rate is measured over the series at the fleet's weights now). A type not
  measured keeps its weight.
- Not churned: the fleet is re-weighted only when some type's weight would change by more than
  `CHANGE_THRESHOLD` of itself.

A slow type so loses weight: its price per unit rises, the allocation strategy launches it less when the fleet
grows or replaces an instance, and no instance is terminated for it (work in hand is never interrupted).

What AWS allows on a live fleet: ModifyFleet takes `LaunchTemplateConfigs` ("The launch template and
overrides") beside `TargetCapacitySpecification`, and "You can only modify an EC2 Fleet request of type
maintain" (ModifyFleet, EC2 API Reference, https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ModifyFleet.html);
ModifySpotFleetRequest takes `LaunchTemplateConfigs` too: "You can only use this parameter if you specified a
launch template (LaunchTemplateConfigs) in your Spot Fleet request" (ModifySpotFleetRequest,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ModifySpotFleetRequest.html). Both user guides list
only the target capacities and the termination policy as what a modification changes ("Modify an EC2 Fleet",
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/modify-ec2-fleet.html; "Modify a Spot Fleet request",
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/modify-spot-fleet.html), and neither says what becomes of
the weight of instances already running: the neutral normalization above does not depend on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from spotfill_control.config import Settings
from spotfill_control.fleet import fleet
from spotfill_control.run import RunState, TypeThroughput, WeightChange, Weighting

RATE_METADATA = "spotfill-worker-rows-per-second"
TYPE_METADATA = "spotfill-instance-type"
MIN_OUTPUTS_PER_TYPE = 5
CHANGE_THRESHOLD = 0.2
MEASURED_OUTPUTS_LIMIT = 128  # digests kept in the run state (about 1.5 KB)
CHANGES_KEPT = 10  # re-weightings kept for the report (the latest)
WEIGHT_DECIMALS = 3
MIN_WEIGHT = 0.001


def applies(run: RunState) -> bool:
    """Whether the run re-weights: a deadline (its fleet is sized in predictions) and several types."""
    return run.finish_by is not None and len(run.spec.fleet.instance_types) > 1


def digest(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:12]


def wants_measurements(run: RunState) -> bool:
    if not applies(run):
        return False
    return run.weighting is None or len(run.weighting.seen) < MEASURED_OUTPUTS_LIMIT


def unmeasured(run: RunState, uris: Iterable[str]) -> list[str]:
    """The outputs not measured yet, of those given."""
    seen = set(run.weighting.seen) if run.weighting is not None else set()
    return [u for u in uris if digest(u) not in seen]


def record(run: RunState, outputs: Iterable[tuple[str, Mapping[str, str]]]) -> None:
    """Count the measurements of outputs read (URI, user metadata), each output once: those with an instance
    type of the run and a worker rate."""
    if not wants_measurements(run):
        return
    weighting = run.weighting or Weighting()
    seen = set(weighting.seen)
    types = set(run.spec.fleet.instance_types)
    for uri, metadata in outputs:
        name, rate = metadata.get(TYPE_METADATA), _rate(metadata.get(RATE_METADATA))
        key = digest(uri)
        if name not in types or rate is None or key in seen or len(weighting.seen) >= MEASURED_OUTPUTS_LIMIT:
            continue
        seen.add(key)
        weighting.seen.append(key)
        measured = weighting.measured.setdefault(name, TypeThroughput())
        measured.outputs += 1
        measured.rate_total += rate
    if weighting.seen:  # a run whose outputs carry no measurement keeps `weighting` null, as before
        run.weighting = weighting


def _rate(text: str | None) -> float | None:
    try:
        rate = float(text) if text else None
    except ValueError:
        return None
    return rate if rate is not None and rate > 0 else None


# ------------------------------------------------------------------------------------------ pure arithmetic


def per_instance_rates(
    measured: Mapping[str, TypeThroughput], tasks_per_instance: int, min_outputs: int = MIN_OUTPUTS_PER_TYPE
) -> dict[str, float]:
    """Predictions per second of one instance of each type measured over at least `min_outputs` outputs."""
    return {
        name: tasks_per_instance * m.rate_total / m.outputs
        for name, m in sorted(measured.items())
        if m.outputs >= min_outputs and m.rate_total > 0
    }


def reweighted(
    current: Mapping[str, float],
    rates: Mapping[str, float],
    running: Mapping[str, float],
    threshold: float = CHANGE_THRESHOLD,
) -> dict[str, float] | None:
    """The new weights (every type of `current`), or None to keep them: fewer than two measured types run
    now, or no weight would change by more than `threshold` of itself. `running`: type -> instances running.
    The measured types' weights become their rates x k, k keeping the running capacity's units; a type not
    measured keeps its weight."""
    measured = [t for t in current if t in rates and running.get(t, 0) > 0]
    if len(measured) < 2:
        return None
    units = sum(running[t] * current[t] for t in measured)
    delivered = sum(running[t] * rates[t] for t in measured)
    if units <= 0 or delivered <= 0:
        return None
    scale = units / delivered
    new = {
        t: max(MIN_WEIGHT, round(rates[t] * scale, WEIGHT_DECIMALS)) if t in measured else current[t]
        for t in current
    }
    if all(abs(new[t] - current[t]) <= threshold * current[t] for t in current):
        return None
    return new


def running_instances(capacity: Mapping[str, float]) -> dict[str, float]:
    """Instances running by type, from a poll's capacity (`<type>/<purchase option>` -> instances)."""
    counts: dict[str, float] = {}
    for pool, n in capacity.items():
        name = pool.split("/", 1)[0]
        counts[name] = counts.get(name, 0.0) + n
    return counts


# ------------------------------------------------------------------------------------------ each poll


def reweigh(
    run: RunState, ec2: Any, settings: Settings, capacity: Mapping[str, float], now: datetime
) -> dict[str, float] | None:
    """Re-weight the run's fleet when the measurements say so (`reweighted`): ModifyFleet or
    ModifySpotFleetRequest with the re-weighted overrides (`fleet.set_weights`), recorded in
    `run.weighting`. Returns the new weights, None when nothing changed. The caller calls it only for an
    active fleet that is not draining."""
    if not applies(run) or run.weighting is None:
        return None
    current = run.capacity_weights
    rates = per_instance_rates(run.weighting.measured, run.spec.service.tasks_per_instance)
    new = reweighted(current, rates, running_instances(capacity))
    if new is None:
        return None
    fleet.set_weights(run, ec2, settings, new)
    run.weighting.weights = new
    run.weighting.changes = [
        *run.weighting.changes,
        WeightChange(at=now, weights=new, per_instance={t: round(r, 3) for t, r in rates.items()}),
    ][-CHANGES_KEPT:]
    return new
