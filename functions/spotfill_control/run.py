"""The run state: what the state machine carries between Task states as `$.run`.

Every handler takes the run and returns it updated, so any failed state can still be torn down and
reported from whatever part of it exists. It must stay small (Step Functions payloads are capped at
256 KB): per-shard data lives in S3 under `runs/<run id>/`, never here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from spotfill_control.instance_types import Architecture, InstanceTypeFacts, capacity_weights
from spotfill_control.spec import BackfillSpec

Phase = Literal["validated", "preparing", "prepared", "fleet_requested", "registered", "monitoring", "done"]

# Every resource a run creates carries this tag (value: the run id); names are `spotfill-<run id>`.
RUN_ID_TAG = "spotfill:run-id"


def utcnow() -> datetime:
    return datetime.now(UTC)


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_State):
    """Everything the run created, so teardown can remove it; a field is set as soon as the thing exists."""

    queue_url: str | None = None
    dead_letter_queue_url: str | None = None
    cluster_name: str | None = None
    task_definition_arn: str | None = None
    launch_template_version: int | None = None
    fleet_id: str | None = None  # an EC2 Fleet id or a Spot Fleet request id (the spec's fleet.api)
    service_name: str | None = None


class Timeline(_State):
    """When each phase began or ended; the report's phase durations come from here."""

    started_at: datetime | None = None
    validated_at: datetime | None = None
    prepared_at: datetime | None = None
    fleet_requested_at: datetime | None = None
    fleet_fulfilled_at: datetime | None = None
    registered_at: datetime | None = None
    processing_started_at: datetime | None = None
    processing_ended_at: datetime | None = None
    teardown_started_at: datetime | None = None
    fleet_deleted_at: datetime | None = (
        None  # when teardown saw EC2 answer the run's fleet deleted (cancelled)
    )
    teardown_ended_at: datetime | None = None


class Progress(_State):
    """What monitor has seen so far."""

    state: Literal["running", "done", "handover"] = "running"
    outputs_done: int = 0
    dead_letters: int = 0
    # Dead-letter messages Monitor moved into S3 records (`monitoring.dead_letters`); a message stored
    # twice (a crash between its record and its delete) counts twice here, never in `dead_letters`.
    dead_letters_stored: int = 0
    requeued: int = 0
    iterations: int = 0
    iterations_this_execution: int = 0
    last_progress_at: datetime | None = None
    peak_shards_per_second: float = 0.0
    fleet_target_capacity: int | None = None
    interruptions: int = 0
    # The fleet's pending/running instances at the last poll. Kept out of the state Step Functions carries
    # and of `state.json` (`exclude`): at 5,000 instances the ids alone are ~110 KB of the 256 KiB state
    # limit. They live in `runs/<run id>/instances.json` (`state_store.save_known_instances`), which
    # `state_store.load` and the Monitor read back; `known_instances_count` says how many there are, and
    # None that the file was never written.
    known_instances: list[str] = Field(default_factory=list, exclude=True)
    known_instances_count: int | None = None
    # Throughput bookkeeping (monitoring.progress): when monitor last looked, and a running sample of
    # output metadata (`spotfill-rows`) from which predictions per second are estimated.
    last_checked_at: datetime | None = None
    peak_predictions_per_second: float = 0.0
    rows_sampled_outputs: int = 0
    rows_sampled_total: int = 0
    # On-demand fallback (fleet.on_demand): units moved from spot to on demand, since when spot
    # has been short of its target, when the fallback last changed, and the spot units probing whether spot
    # is back.
    on_demand_fallback_units: int = 0
    spot_short_since: datetime | None = None
    fallback_changed_at: datetime | None = None
    spot_probe_units: int = 0
    spot_probe_since: datetime | None = None


class SpotPrice(_State):
    """The spot price in effect for an instance type in a zone when the budget last read it."""

    instance_type: str
    availability_zone: str
    usd_per_hour: float


class Budget(_State):
    """The run's cost as the monitor accrues it, and the dollar cap's drain (`monitoring.budget`).

    A few numbers and one price per instance type and zone, never a record per instance: the cost is added
    up poll by poll over [accrued_through, now], so the run state stays small with thousands of instances.
    """

    accrued_usd: float = 0.0
    accrued_through: datetime | None = None  # None: nothing accrued yet (the first poll counts from launch)
    hourly_usd: float = 0.0  # what the fleet costs per hour: its instances and the capacity still to come
    projected_usd: float = 0.0  # accrued + hourly x (the next poll + a drain), compared with the cap
    spot_prices: list[SpotPrice] = Field(default_factory=list)
    spot_prices_at: datetime | None = None
    draining_since: datetime | None = None  # the cap is near: no new capacity, workers finish what they hold


class Projection(_State):
    """Where the run is heading, as the last Monitor poll saw it (`monitoring.projection`): the
    recent throughput, the time left at that pace and what the run will have cost by then."""

    at: float  # epoch seconds
    predictions_per_second: float  # recent, whole fleet
    by_instance_type: dict[str, float] = Field(default_factory=dict)  # predictions/s per running instance
    eta_seconds: float | None = None  # None: no rate yet
    projected_total_usd: float | None = None  # accrued + the fleet's hourly price x (ETA + a poll)
    # A run with `limits.finish_by` only: predictions per second of one capacity unit over the window (the
    # predictions made over the unit-seconds of capacity the series saw), which the deadline steers by.
    predictions_per_unit_second: float | None = None


class FinishBy(_State):
    """The run's deadline (`limits.finish_by`, resolved at Validate) and how the Monitor tracks it
    (`spotfill_control.monitoring.finish_by`): a few numbers, rewritten every poll."""

    at: datetime  # the absolute deadline
    checked: bool = False  # feasibility was checked with numbers (Validate's estimate, or a measured rate)
    start_units: int | None = None  # the capacity the fleet is requested with (None: fleet.target_capacity)
    needed_units: int | None = None  # the capacity that finishes by `at`, as the last poll estimated it
    target_units: int | None = None  # the fleet's target the last poll set or kept
    running_units: float = 0.0  # the fleet's pending/running capacity at the last poll
    limited_by: Literal["cap", "ceiling"] | None = None  # what held the target below `needed_units`
    projected_finish_at: datetime | None = None  # at the running capacity's measured rate
    behind_seconds: float | None = None  # projected finish - `at`: > 0 behind, < 0 ahead
    added_units: int = 0  # the last change of the target (negative: shrunk)
    # The last change was a shrink without termination: the fleet removes no instance for it, so any
    # instance that goes away is an interruption (`fleet_watch.count_interruptions` gets no allowance).
    shrunk_without_termination: bool = False
    infeasible: str | None = None  # why the first measured poll found the deadline out of reach: the run ends


class TypeThroughput(_State):
    """What the sampled outputs of one instance type say of its workers' throughput."""

    outputs: int = 0  # distinct outputs read with a `spotfill-worker-rows-per-second`
    rate_total: float = 0.0  # the sum of those rates (rows per second of one worker)


class WeightChange(_State):
    """One re-weighting of the fleet (`spotfill_control.fleet.weights`)."""

    at: datetime
    weights: dict[str, float]  # the weights set (instance type -> WeightedCapacity)
    per_instance: dict[str, float]  # the measured predictions per second of one instance of each type


class Weighting(_State):
    """Capacity in predictions (`fleet.weights`): each instance type's measured throughput, and
    the weights the Monitor gave the fleet from it. A few numbers per type and a bounded list of output
    digests."""

    # the fleet's weights now; {}: by vCPUs (GPUs), as requested
    weights: dict[str, float] = Field(default_factory=dict)
    measured: dict[str, TypeThroughput] = Field(default_factory=dict)
    seen: list[str] = Field(default_factory=list)  # digests of the outputs measured (each counts once)
    changes: list[WeightChange] = Field(default_factory=list)  # the latest re-weightings, oldest first


class FailedPool(_State):
    """A capacity pool of the fleet (an instance type in a zone) that EC2 could not launch into, or an
    account-wide fleet error that names no pool: from the fleet's request history (`error` events)."""

    instance_type: str | None = None
    availability_zone: str | None = None
    error: str  # the EC2 error code in the event's description, else the event's sub-type
    message: str

    def __str__(self) -> str:
        where = " in ".join(x for x in (self.instance_type, self.availability_zone) if x)
        return f"{where}: {self.error}" if where else self.error


# At most this many failed pools are kept (the run state must stay small).
FAILED_POOLS_LIMIT = 20


class RunState(_State):
    run_id: str
    spec: BackfillSpec
    phase: Phase = "validated"
    state_machine_arn: str | None = None
    execution_arn: str | None = None
    executions: int = 1
    source: Literal["s3", "schedule", "direct", "resume"] = "direct"
    manifest_uri: str | None = None
    shards_total: int = 0
    shards_skipped: int = 0
    resources: Resources = Field(default_factory=Resources)
    timeline: Timeline = Field(default_factory=Timeline)
    progress: Progress = Field(default_factory=Progress)
    failed_pools: list[FailedPool] = Field(default_factory=list)
    # The spec's instance types as EC2 and the Price List described them at Validate (name -> facts).
    instance_types: dict[str, InstanceTypeFacts] = Field(default_factory=dict)
    budget: Budget = Field(default_factory=Budget)
    projection: Projection | None = None
    finish_by: FinishBy | None = None  # None: no deadline (`limits.finish_by` unset)
    # Re-weighting by measured throughput (a run with a deadline and several instance types); None: never
    # measured, the fleet keeps the weights it was requested with.
    weighting: Weighting | None = None
    # What teardown deleted without seeing it deleted, each with why (EC2 never showed the fleet it made).
    teardown_unconfirmed: list[str] = Field(default_factory=list)

    def stepped(self, phase: Phase, started: str, at: datetime, **created: object) -> RunState:
        """The run entered `phase`: record what the step created and when it first started (a retried step
        keeps the first time)."""
        return self.model_copy(
            update={
                "phase": phase,
                "resources": self.resources.model_copy(update=created),
                "timeline": self.timeline.model_copy(update={started: getattr(self.timeline, started) or at}),
            }
        )

    @property
    def capacity_weights(self) -> dict[str, float]:
        """The fleet's weights now: those the Monitor set from measured throughput
        (`fleet.weights`), else those it was requested with (vCPUs, or GPUs, over the smallest:
        `instance_types.capacity_weights`); {} before Validate described the types."""
        if self.weighting is not None and self.weighting.weights:
            return dict(self.weighting.weights)
        return capacity_weights(self.instance_types) if self.instance_types else {}

    @property
    def uses_gpu(self) -> bool:
        """Whether the run's fleet is of GPU types (Validate admits only all-GPU or all-CPU fleets)."""
        return any(f.is_gpu for f in self.instance_types.values())

    @property
    def architecture(self) -> Architecture:
        """The one CPU architecture of the run's instance types (Validate admits no mix)."""
        return next((f.architecture for f in self.instance_types.values()), "x86_64")

    @property
    def run_prefix(self) -> str:
        return f"runs/{self.run_id}/"

    @property
    def scoped_name(self) -> str:
        """The name of the run's queue, cluster, service and task definition family."""
        return f"spotfill-{self.run_id}"


class RunEvent(BaseModel):
    """The event of every Task state after Validate: `{"run": RunState, ...}` (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore")

    run: RunState
