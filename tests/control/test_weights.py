"""Re-weighting by measured throughput: the arithmetic, and what a run counts as a measurement."""

from __future__ import annotations

import pytest
from spotfill_control.fleet import weights
from spotfill_control.run import RunState, TypeThroughput, Weighting
from spotfill_control.spec import BackfillSpec

CURRENT = {"c5.large": 1.0, "c5.xlarge": 2.0}


def measured(**by_type: tuple[int, float]) -> dict[str, TypeThroughput]:
    """type -> (outputs, mean worker rate)."""
    return {
        name.replace("_", "."): TypeThroughput(outputs=n, rate_total=n * rate)
        for name, (n, rate) in by_type.items()
    }


def run_of(instance_types: list[str], finish_by: bool = True) -> RunState:
    spec = {
        "input": {"uri": "s3://data/in/", "format": "npy"},
        "output": {"uri": "s3://data/out/", "format": "npy"},
        "model": {"uri": "s3://data/m.keras"},
        "fleet": {"instance_types": instance_types, "target_capacity": 8},
        "limits": {"finish_by": "PT1H"} if finish_by else {},
    }
    run = RunState(run_id="r1", spec=BackfillSpec.model_validate(spec))
    if finish_by:
        from datetime import UTC, datetime

        from spotfill_control.run import FinishBy

        run.finish_by = FinishBy(at=datetime(2026, 12, 7, 1, tzinfo=UTC))
    return run


# ------------------------------------------------------------------------------------------ the arithmetic


def test_each_type_needs_enough_outputs_to_count_as_measured():
    rates = weights.per_instance_rates(measured(c5_large=(5, 3.0), c5_xlarge=(4, 9.0)), tasks_per_instance=2)
    assert rates == {"c5.large": 6.0}


def test_a_slow_type_loses_weight_and_the_running_capacity_keeps_its_units():
    # given a c5.xlarge (weight 2, by vCPUs) whose instances deliver no more than a c5.large's
    rates = {"c5.large": 10.0, "c5.xlarge": 10.0}
    running = {"c5.large": 2, "c5.xlarge": 1}

    # when re-weighted
    new = weights.reweighted(CURRENT, rates, running)

    # then each weight is its rate x 4 / 30 (the 4 running units over the 30 predictions/s they deliver)
    assert new == {"c5.large": 1.333, "c5.xlarge": 1.333}
    assert 2 * new["c5.large"] + 1 * new["c5.xlarge"] == pytest.approx(4, abs=0.002)


def test_a_slow_type_weighs_less_than_a_fast_one_in_proportion_to_its_throughput():
    new = weights.reweighted(CURRENT, {"c5.large": 20.0, "c5.xlarge": 10.0}, {"c5.large": 1, "c5.xlarge": 1})
    assert new == {"c5.large": 2.0, "c5.xlarge": 1.0}


def test_weights_that_change_by_no_more_than_the_threshold_are_kept():
    # the c5.xlarge measures 2.2x a c5.large: the weights would become 0.938 and 2.062, within 20 % of 1 and 2
    rates = {"c5.large": 10.0, "c5.xlarge": 22.0}
    assert weights.reweighted(CURRENT, rates, {"c5.large": 1, "c5.xlarge": 1}) is None
    assert weights.reweighted(CURRENT, rates, {"c5.large": 1, "c5.xlarge": 1}, threshold=0.01) is not None


def test_types_measured_exactly_as_their_weights_change_nothing():
    assert (
        weights.reweighted(CURRENT, {"c5.large": 7.0, "c5.xlarge": 14.0}, {"c5.large": 3, "c5.xlarge": 2})
        is None
    )


def test_without_two_measured_types_running_nothing_changes():
    assert weights.reweighted(CURRENT, {}, {"c5.large": 2}) is None
    assert weights.reweighted(CURRENT, {"c5.large": 10.0}, {"c5.large": 2, "c5.xlarge": 1}) is None
    # both measured, but only one runs now: the neutral scale has nothing to compare
    assert weights.reweighted(CURRENT, {"c5.large": 10.0, "c5.xlarge": 1.0}, {"c5.large": 2}) is None


def test_a_type_not_measured_keeps_its_weight():
    current = {**CURRENT, "c5.2xlarge": 4.0}
    new = weights.reweighted(
        current, {"c5.large": 20.0, "c5.xlarge": 10.0}, {"c5.large": 1, "c5.xlarge": 1, "c5.2xlarge": 1}
    )
    assert new == {"c5.large": 2.0, "c5.xlarge": 1.0, "c5.2xlarge": 4.0}


def test_running_instances_add_up_both_purchase_options():
    assert weights.running_instances({"c5.large/spot": 2, "c5.large/on-demand": 1, "c5.xlarge/spot": 1}) == {
        "c5.large": 3,
        "c5.xlarge": 1,
    }


# ------------------------------------------------------------------------------------------ measurements


def test_only_a_deadline_run_of_several_types_measures():
    assert weights.applies(run_of(["c5.large", "c5.xlarge"]))
    assert not weights.applies(run_of(["c5.large"]))
    assert not weights.applies(run_of(["c5.large", "c5.xlarge"], finish_by=False))
    run = run_of(["c5.large", "c5.xlarge"], finish_by=False)
    weights.record(run, [("s3://o/1", {"spotfill-instance-type": "c5.large", weights.RATE_METADATA: "3"})])
    assert run.weighting is None


def test_each_output_counts_once_and_only_with_a_type_of_the_run_and_a_rate():
    run = run_of(["c5.large", "c5.xlarge"])
    read = [
        ("s3://o/1", {"spotfill-instance-type": "c5.large", weights.RATE_METADATA: "3.000"}),
        ("s3://o/1", {"spotfill-instance-type": "c5.large", weights.RATE_METADATA: "3.000"}),  # again
        ("s3://o/2", {"spotfill-instance-type": "m5.large", weights.RATE_METADATA: "3.000"}),  # not the run's
        ("s3://o/3", {"spotfill-instance-type": "c5.xlarge"}),  # no rate (a worker off EC2, or before one)
        ("s3://o/4", {"spotfill-instance-type": "c5.xlarge", weights.RATE_METADATA: "nan?"}),
        ("s3://o/5", {"spotfill-instance-type": "c5.xlarge", weights.RATE_METADATA: "5.5"}),
    ]
    weights.record(run, read)
    weights.record(run, read[:1])  # a later poll reading it again
    assert run.weighting is not None
    assert run.weighting.measured == {
        "c5.large": TypeThroughput(outputs=1, rate_total=3.0),
        "c5.xlarge": TypeThroughput(outputs=1, rate_total=5.5),
    }
    assert weights.unmeasured(run, ["s3://o/1", "s3://o/3", "s3://o/6"]) == ["s3://o/3", "s3://o/6"]


def test_outputs_without_a_measurement_leave_the_run_unmeasured():
    run = run_of(["c5.large", "c5.xlarge"])
    weights.record(run, [("s3://o/1", {"spotfill-instance-type": "c5.large"})])
    assert run.weighting is None


def test_measurements_stop_at_the_limit(monkeypatch):
    monkeypatch.setattr(weights, "MEASURED_OUTPUTS_LIMIT", 2)
    run = run_of(["c5.large", "c5.xlarge"])
    read = [
        (f"s3://o/{i}", {"spotfill-instance-type": "c5.large", weights.RATE_METADATA: "1"}) for i in range(5)
    ]
    weights.record(run, read)
    assert run.weighting is not None and run.weighting.measured["c5.large"].outputs == 2
    assert not weights.wants_measurements(run)


def test_the_fleet_weights_are_by_vcpus_until_re_weighted():
    from spotfill.localcloud.pricing import emulated_facts

    run = run_of(["c5.large", "c5.xlarge"])
    run.instance_types = emulated_facts(["c5.large", "c5.xlarge"])
    assert run.capacity_weights == {"c5.large": 1.0, "c5.xlarge": 2.0}
    run.weighting = Weighting(weights={"c5.large": 1.6, "c5.xlarge": 0.8})
    assert run.capacity_weights == {"c5.large": 1.6, "c5.xlarge": 0.8}


# ------------------------------------------------------------------------------------------ seen in watch


def test_watch_shows_the_weights_once_the_monitor_re_weighted_the_fleet():
    import io
    from datetime import UTC, datetime

    from rich.console import Console
    from spotfill_control.run import WeightChange

    from spotfill.localcloud.pricing import emulated_facts
    from spotfill.progress_display import render
    from spotfill.runs import Snapshot, weights_line

    # given a deadline run of two types whose Monitor measured both, before and after it re-weighted
    run = run_of(["c5.large", "c5.xlarge"])
    run.instance_types = emulated_facts(["c5.large", "c5.xlarge"])
    run.weighting = Weighting(measured=measured(c5_large=(5, 3.0), c5_xlarge=(6, 3.0)))
    before = weights_line(run)
    run.weighting.weights = {"c5.large": 1.5, "c5.xlarge": 1.5}
    run.weighting.changes = [
        WeightChange(
            at=datetime(2026, 12, 7, 0, 30, tzinfo=UTC),
            weights={"c5.large": 1.5, "c5.xlarge": 1.5},
            per_instance={"c5.large": 3.0, "c5.xlarge": 3.0},
        )
    ]

    # when watch renders the run
    line = weights_line(run)
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(
        render(Snapshot("arn:x", run_id="r1", weights=line))
    )

    # then nothing is said until the fleet is re-weighted; then each type's weight requested -> now, with what
    # one instance of it measured, and how often it was re-weighted
    assert before is None and weights_line(run_of(["c5.large", "c5.xlarge"])) is None
    expected = (
        "weights c5.large 1 -> 1.5 (3.0/s per instance), c5.xlarge 2 -> 1.5 (3.0/s per instance); "
        "re-weighted 1 time"
    )
    assert line == expected and expected in out.getvalue()
    plain = io.StringIO()
    Console(file=plain, width=160, color_system=None).print(render(Snapshot("arn:x", run_id="r1")))
    assert "weights" not in plain.getvalue()
