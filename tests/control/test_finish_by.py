"""The deadline (`limits.finish_by`): its syntax, its resolution at Validate, the feasibility arithmetic and
the Monitor's steering of the fleet's target (pure, with injected clocks and rates; a fake EC2 records the
target changes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from spotfill_control.errors import DeadlineInfeasibleError, InvalidSpecError
from spotfill_control.fleet.fleet import requested_capacity
from spotfill_control.fleet.fleet_api import FleetStatus
from spotfill_control.instance_types import InstanceTypeFacts
from spotfill_control.monitoring import finish_by
from spotfill_control.run import FinishBy, Progress, Projection, Resources, RunState
from spotfill_control.setup.checks import check_finish_by
from spotfill_control.spec import BackfillSpec, LimitsSpec

from tests.control.conftest import sample_spec

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
C5 = InstanceTypeFacts(
    name="c5.xlarge",
    vcpus=4,
    memory_mib=8192,
    gpus=0,
    architecture="x86_64",
    on_demand_hourly_usd=0.4,
    price_source="price-list",
)


# ------------------------------------------------------------------------------------------ the spec


@pytest.mark.parametrize(
    "value", ["PT6H", "PT90M", "P1DT12H", "2026-12-07T06:00:00Z", "2026-12-07T07:00+01:00"]
)
def test_finish_by_takes_an_iso_time_with_a_zone_or_an_iso_duration(value):
    assert LimitsSpec(max_runtime_seconds=13 * 86_400 - 1, finish_by=value).finish_by == value


def test_a_time_without_a_zone_is_refused_naming_what_is_missing():
    with pytest.raises(ValidationError, match="has no time zone, so it names no one instant"):
        LimitsSpec(finish_by="2026-12-07T06:00:00")


@pytest.mark.parametrize("value", ["6h", "P1Y", "PT", "P1DT", "tomorrow"])
def test_anything_else_is_refused_with_the_two_forms_it_may_take(value):
    with pytest.raises(ValidationError, match="ISO 8601"):
        LimitsSpec(finish_by=value)


def test_a_duration_beyond_the_maximum_runtime_is_refused_naming_both():
    with pytest.raises(ValidationError) as caught:
        LimitsSpec(max_runtime_seconds=3600, finish_by="PT2H")
    assert "finish_by PT2H (7200 s from the run's start) is beyond max_runtime_seconds (3600 s)" in str(
        caught.value
    )


def test_a_duration_counts_from_the_runs_start():
    limits = LimitsSpec(max_runtime_seconds=7200, finish_by="PT90M")
    assert finish_by.resolve(limits, T0, T0 + timedelta(minutes=1)) == T0 + timedelta(minutes=90)
    assert finish_by.resolve(LimitsSpec(), T0, T0) is None


def test_a_deadline_in_the_past_is_refused_at_validate():
    limits = LimitsSpec(finish_by="2026-12-07T02:59:00Z")
    with pytest.raises(
        ValueError, match=r"2026-12-07T02:59:00Z \(2026-12-07T02:59:00Z\) is not in the future"
    ):
        finish_by.resolve(limits, T0, T0)


def test_a_time_past_the_maximum_runtime_is_refused_naming_both():
    limits = LimitsSpec(max_runtime_seconds=3600, finish_by="2026-12-07T05:00:00Z")
    with pytest.raises(ValueError) as caught:
        finish_by.resolve(limits, T0, T0)
    assert "after the run's maximum runtime ends (2026-12-07T04:00:00Z: its start + " in str(caught.value)
    assert "limits.max_runtime_seconds = 3600 s" in str(caught.value)


# ------------------------------------------------------------------------------------------ feasibility
# 3,600,000 predictions at 100 predictions/s per unit: 36,000 unit-seconds of work. With a poll of 60 s, the
# lead at Validate is 60 s of boot + 2 polls = 180 s and each unit's overhead 60 + 60 = 120 s.
WORK = dict(predictions=3_600_000, unit_rate=100.0, lead_seconds=180.0, overhead_seconds=120.0)


def test_a_feasible_deadline_gives_the_capacity_to_start_with_and_its_cost():
    # 7,200 - 180 = 7,020 s of work left: ceil(36,000 / 7,020) = 6 units; cost 0.1 x (36,000 + 6 x 120) / 3600
    found = finish_by.check(
        deadline=T0 + timedelta(hours=2), now=T0, unit_usd_per_hour=0.1, ceiling=10, cap_usd=2.0, **WORK
    )
    assert found.units == 6
    assert found.projected_usd == pytest.approx(1.02)
    assert found.finish_at == T0 + timedelta(seconds=180 + 6000)


def test_a_deadline_the_cap_cannot_pay_for_names_the_least_cap_and_the_earliest_deadline():
    # the cap leaves $0.01 beyond the work's $1.00: 0.01 x 3600 / (0.1 x 120) = 3 units, which finish
    # 180 + 36,000 / 300 = 12,180 s after now: 06:23:00
    with pytest.raises(finish_by.InfeasibleDeadline) as caught:
        finish_by.check(
            deadline=T0 + timedelta(hours=2), now=T0, unit_usd_per_hour=0.1, ceiling=10, cap_usd=1.01, **WORK
        )
    message = str(caught.value)
    assert "needs 6 capacity units, which cost at least $1.020" in message
    assert "above limits.max_total_usd = $1.010" in message
    assert "the least cap for that deadline is $1.020" in message
    assert "the earliest deadline for that cap is 2026-12-07T06:23:00Z (with 3 capacity units)" in message


def test_a_cap_below_the_work_itself_fits_no_deadline():
    with pytest.raises(finish_by.InfeasibleDeadline, match="no deadline: the cap does not pay for the work"):
        finish_by.check(
            deadline=T0 + timedelta(hours=2), now=T0, unit_usd_per_hour=0.1, ceiling=10, cap_usd=0.9, **WORK
        )


def test_a_deadline_needing_more_than_the_ceiling_names_the_units_and_the_earliest_deadline_at_the_ceiling():
    with pytest.raises(finish_by.InfeasibleDeadline) as caught:
        finish_by.check(
            deadline=T0 + timedelta(hours=2), now=T0, unit_usd_per_hour=0.1, ceiling=5, cap_usd=None, **WORK
        )
    message = str(caught.value)
    assert "needs 6 capacity units" in message and "more than fleet.target_capacity = 5" in message
    # 180 + 36,000 / 500 = 7,380 s
    assert "the earliest deadline at 5 capacity units is 2026-12-07T05:03:00Z" in message


# ------------------------------------------------------------------------------------------ each poll
# 1,062,000 predictions left at 100 per unit-second, deadline an hour away, polls of 60 s: 3,540 s of work
# left, so exactly 3 units.
TRACK = dict(
    deadline=T0 + timedelta(hours=1),
    now=T0,
    remaining_predictions=1_062_000,
    unit_rate=100.0,
    ceiling=8,
    busy_units=100,
    accrued_usd=0.0,
    unit_usd_per_hour=0.1,
    poll_seconds=60,
)


def test_a_run_behind_is_given_the_capacity_that_finishes_by_the_deadline():
    tracking = finish_by.track(running_units=2, cap_usd=None, **TRACK)
    assert tracking.target_units == 3 and tracking.limited_by is None
    # at 2 units: 1,062,000 / 200 = 5,310 s + a poll, 1,770 s after the deadline
    assert tracking.behind_seconds == pytest.approx(1770) and tracking.at_risk


def test_a_run_ahead_is_given_less():
    tracking = finish_by.track(running_units=6, cap_usd=None, **TRACK)
    assert tracking.target_units == 3
    assert tracking.behind_seconds == pytest.approx(-1770) and not tracking.at_risk


def test_the_target_never_passes_what_the_cap_pays_for_to_the_end():
    # the work costs 0.1 x 10,620 / 3600 = $0.295; each unit's horizon (poll 60 + drain 240 s) $0.00833:
    # a cap of $0.3155 pays for floor(0.0205 x 3600 / 30) = 2 units
    tracking = finish_by.track(running_units=2, cap_usd=0.3155, **TRACK)
    assert (tracking.target_units, tracking.needed_units, tracking.limited_by) == (2, 3, "cap")


def test_the_target_never_passes_the_ceiling_nor_the_units_the_shards_keep_busy():
    late = {**TRACK, "deadline": T0 + timedelta(seconds=600)}
    tracking = finish_by.track(running_units=2, cap_usd=None, **late)
    assert (tracking.target_units, tracking.limited_by) == (8, "ceiling")
    busy = {**TRACK, "busy_units": 2}
    assert finish_by.track(running_units=2, cap_usd=None, **busy).target_units == 2


def test_a_deadline_already_passed_asks_for_the_ceiling():
    passed = {**TRACK, "now": T0 + timedelta(hours=2)}
    tracking = finish_by.track(running_units=2, cap_usd=None, **passed)
    assert tracking.target_units == 8 and tracking.at_risk


class FakeEc2:
    def __init__(self) -> None:
        self.modified: list[dict[str, Any]] = []

    def modify_fleet(self, **kwargs: Any) -> None:
        self.modified.append(kwargs)


def run_with_deadline(
    rate: float, units_running: int, *, checked: bool = True, cap: float | None = None
) -> RunState:
    spec = BackfillSpec.model_validate(
        sample_spec(
            fleet__instance_types=["c5.xlarge"],
            fleet__target_capacity=8,
            limits__poll_interval_seconds=60,
            limits__max_total_usd=cap,
            limits__finish_by="PT1H",
        )
    )
    return RunState(
        run_id="r1",
        spec=spec,
        shards_total=1_062,
        resources=Resources(fleet_id="fleet-1"),
        instance_types={"c5.xlarge": C5},
        progress=Progress(rows_sampled_outputs=10, rows_sampled_total=10_000),  # 1,000 rows a shard
        projection=Projection(
            at=T0.timestamp(),
            predictions_per_second=rate,
            by_instance_type={"c5.xlarge": rate / units_running},
            predictions_per_unit_second=rate / units_running,
        ),
        finish_by=FinishBy(at=T0 + timedelta(hours=1), checked=checked),
    )


def active(target: float) -> FleetStatus:
    return FleetStatus(
        state="active", activity="fulfilled", target_capacity=target, fulfilled_capacity=target,
        on_demand_target_capacity=0, on_demand_fulfilled_capacity=0,
    )  # fmt: skip


def test_steer_grows_the_fleet_of_a_run_that_lost_capacity():
    # given 2 units running at 100 predictions/s each and 1,062 shards of 1,000 rows left
    run, ec2 = run_with_deadline(200.0, 2), FakeEc2()
    tracking = finish_by.steer(run, ec2, active(2), {"c5.xlarge/spot": 2}, 1_062, T0)
    assert tracking is not None and tracking.at_risk
    assert ec2.modified == [
        {
            "FleetId": "fleet-1",
            "TargetCapacitySpecification": {
                "TotalTargetCapacity": 3,
                "OnDemandTargetCapacity": 0,
                "SpotTargetCapacity": 3,
            },
        }
    ]
    assert run.finish_by is not None
    assert (run.finish_by.target_units, run.finish_by.added_units, run.finish_by.running_units) == (3, 1, 2)


def test_steer_shrinks_a_run_ahead_without_terminating_any_instance():
    run, ec2 = run_with_deadline(600.0, 6), FakeEc2()
    finish_by.steer(run, ec2, active(6), {"c5.xlarge/spot": 6}, 1_062, T0)
    assert ec2.modified[0]["TargetCapacitySpecification"]["TotalTargetCapacity"] == 3
    assert ec2.modified[0]["ExcessCapacityTerminationPolicy"] == "no-termination"
    assert run.finish_by is not None and run.finish_by.added_units == -3


def test_steer_leaves_a_target_already_right():
    run, ec2 = run_with_deadline(300.0, 3), FakeEc2()
    finish_by.steer(run, ec2, active(3), {"c5.xlarge/spot": 3}, 1_062, T0)
    assert ec2.modified == [] and run.finish_by is not None and run.finish_by.added_units == 0


def test_the_first_measured_poll_ends_an_unchecked_run_the_cap_cannot_finish_in_time():
    # $0.295 of work at the dearest unit price (0.4 / 1 unit an hour x 10,620 s = $1.18) above a $1 cap
    run, ec2 = run_with_deadline(200.0, 2, checked=False, cap=1.0), FakeEc2()
    assert finish_by.steer(run, ec2, active(2), {"c5.xlarge/spot": 2}, 1_062, T0) is None
    assert ec2.modified == []
    with pytest.raises(DeadlineInfeasibleError) as caught:
        finish_by.check_feasible(run)
    message = str(caught.value)
    assert message.startswith(
        "at the first poll with a measured rate, limits.finish_by: 2026-12-07T04:00:00Z"
    )
    assert (
        "the least cap for that deadline is $" in message
        and "the earliest deadline for that cap is " in message
    )


def test_a_run_without_a_deadline_is_not_steered():
    run = run_with_deadline(200.0, 2).model_copy(update={"finish_by": None})
    ec2 = FakeEc2()
    assert finish_by.steer(run, ec2, active(2), {"c5.xlarge/spot": 2}, 1_062, T0) is None
    assert ec2.modified == []


# ------------------------------------------------------------------------------------------ at Validate


class FakeSpotPrices:
    """DescribeSpotPriceHistory's paginator: c5.xlarge at $0.1 an hour in one zone."""

    def get_paginator(self, name: str) -> Any:
        assert name == "describe_spot_price_history"

        class Pages:
            def paginate(self, **_: Any) -> list[dict[str, Any]]:
                entry = {
                    "InstanceType": "c5.xlarge",
                    "AvailabilityZone": "us-east-1a",
                    "SpotPrice": "0.1",
                    "Timestamp": T0,
                }
                return [{"SpotPriceHistory": [entry]}]

        return Pages()


def spec_with_estimate(**overrides: Any) -> BackfillSpec:
    document = sample_spec(
        fleet__instance_types=["c5.xlarge"],
        fleet__target_capacity=10,
        limits__poll_interval_seconds=60,
        limits__max_runtime_seconds=86_400,
        **overrides,
    )
    # 100 predictions/s per unit: the plan's fleet of 10 units made 1,000/s
    document["estimate"] = {
        "made_at": "2026-12-06T00:00:00Z",
        "instance_type": "c5.xlarge",
        "target_capacity": 10,
        "predictions": 3_600_000,
        "predictions_per_second": 1000.0,
        "seconds": 3600.0,
        "total_usd": 1.0,
    }
    return BackfillSpec.model_validate(document)


def test_validate_starts_the_fleet_at_the_capacity_the_deadline_needs():
    spec = spec_with_estimate(limits__finish_by="PT2H")
    state = check_finish_by(spec, {"c5.xlarge": C5}, T0, T0, FakeSpotPrices())
    assert state == FinishBy(at=T0 + timedelta(hours=2), checked=True, start_units=6, needed_units=6)
    run = RunState(run_id="r1", spec=spec, shards_total=100, finish_by=state)
    assert requested_capacity(run) == 6


def test_validate_refuses_a_deadline_the_cap_cannot_pay_for_with_both_numbers():
    spec = spec_with_estimate(limits__finish_by="PT2H", limits__max_total_usd=1.01)
    with pytest.raises(InvalidSpecError) as caught:
        check_finish_by(spec, {"c5.xlarge": C5}, T0, T0, FakeSpotPrices())
    assert "the least cap for that deadline is $1.020" in str(caught.value)
    assert "the earliest deadline for that cap is 2026-12-07T06:23:00Z" in str(caught.value)


def test_validate_without_an_estimate_leaves_the_check_to_the_first_measured_poll():
    spec = BackfillSpec.model_validate(sample_spec(limits__finish_by="PT30M"))
    state = check_finish_by(spec, {"c5.xlarge": C5}, T0, T0, FakeSpotPrices())
    assert state == FinishBy(at=T0 + timedelta(minutes=30))
    run = RunState(run_id="r1", spec=spec, shards_total=100, finish_by=state)
    assert requested_capacity(run) == 4  # the ceiling, fleet.target_capacity


def test_validate_refuses_a_deadline_already_passed():
    spec = BackfillSpec.model_validate(sample_spec(limits__finish_by="2026-12-07T02:00:00Z"))
    with pytest.raises(InvalidSpecError, match="is not in the future"):
        check_finish_by(spec, {}, T0, T0, None)


# ------------------------------------------------------------------------------------------ seen


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        ({}, "deadline 2026-12-07T04:00:00Z: no rate yet"),
        ({"behind_seconds": -1770.0}, "deadline 2026-12-07T04:00:00Z: on track, 29 min ahead"),
        ({"behind_seconds": 0.0}, "deadline 2026-12-07T04:00:00Z: on track"),
        (
            {"behind_seconds": 1770.0, "added_units": 1, "target_units": 3},
            "deadline 2026-12-07T04:00:00Z: behind by 30 min, adding 1 capacity unit",
        ),
        (
            {"behind_seconds": 61.0, "limited_by": "cap", "target_units": 2},
            "deadline 2026-12-07T04:00:00Z: behind by 2 min, held at 2 capacity units by "
            "limits.max_total_usd",
        ),
    ],
)
def test_watch_says_whether_the_run_is_on_track_or_behind_and_what_is_added(fields, line):
    assert finish_by.outlook(FinishBy(at=T0 + timedelta(hours=1), **fields)) == line


def test_the_report_says_whether_the_deadline_was_met_and_by_how_much():
    from spotfill_control.finishing.report import deadline_of
    from spotfill_control.finishing.report_text import deadline_sentence

    run = run_with_deadline(200.0, 2)
    run.timeline.processing_ended_at = T0 + timedelta(minutes=45)
    section = deadline_of(run)
    assert (section["met"], section["seconds_to_spare"], section["finish_by"]) == (True, 900.0, "PT1H")
    assert deadline_sentence(section) == "met, 15.0 min to spare (deadline 2026-12-07T04:00:00+00:00)"
    run.timeline.processing_ended_at = T0 + timedelta(minutes=63)
    assert deadline_sentence(deadline_of(run)) == "missed by 3.0 min (deadline 2026-12-07T04:00:00+00:00)"
    run.timeline.processing_ended_at = None
    assert deadline_of(run)["met"] is None


def test_the_rate_per_unit_counts_the_capacity_each_span_had():
    from spotfill_control.monitoring.projection import unit_rate
    from spotfill_control.monitoring.series import Sample, Series

    def sample(t: float, predictions: int, instances: float) -> Sample:
        return Sample(
            t=t, shards_done=0, shards_total=10, predictions=predictions, predictions_per_second=0.0,
            capacity={"c5.xlarge/spot": instances},
        )  # fmt: skip

    # 4 units for 60 s make 24,000 predictions (100 per unit-second); then 2 units for 60 s make 12,000
    series = Series(samples=[sample(0, 0, 4), sample(60, 24_000, 4), sample(120, 36_000, 2)])
    # 36,000 predictions over 4 x 60 + 3 x 60 unit-seconds (the last span at the mean of its ends): 85.7/s,
    # where the fleet's rate over the last sample's capacity would read 150 per unit-second
    assert unit_rate(series, {"c5.xlarge": 1.0}) == pytest.approx(36_000 / 420)
    assert unit_rate(Series(samples=series.samples[:1]), {"c5.xlarge": 1.0}) is None


def test_steer_never_goes_below_the_on_demand_base():
    # given a run ahead that needs 3 units, with 4 units always on demand
    run, ec2 = run_with_deadline(600.0, 6), FakeEc2()
    fleet = run.spec.fleet.model_copy(update={"on_demand_base": 4})
    run = run.model_copy(update={"spec": run.spec.model_copy(update={"fleet": fleet})})
    finish_by.steer(run, ec2, active(6), {"c5.xlarge/spot": 6}, 1_062, T0)
    assert ec2.modified[0]["TargetCapacitySpecification"]["TotalTargetCapacity"] == 4


def test_a_series_without_a_deadline_is_written_without_the_deadlines_fields():
    from spotfill_control.monitoring.series import Sample, Series, save_series

    class Recorder:
        def put_object(self, **kwargs: Any) -> None:
            self.body = kwargs["Body"]

    sample = Sample(t=1.0, shards_done=0, shards_total=1, predictions=0, predictions_per_second=0.0)
    s3 = Recorder()
    save_series(s3, "bucket", "r1", Series(samples=[sample]))
    assert b"target_capacity" not in s3.body and b"projected_finish" not in s3.body
    tracked = sample.model_copy(update={"target_capacity": 3.0, "projected_finish": 2.0})
    save_series(s3, "bucket", "r1", Series(samples=[tracked]))
    assert b'"target_capacity":3.0' in s3.body and Series.model_validate_json(s3.body).samples[0] == tracked
