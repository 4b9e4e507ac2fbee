"""The run's series (bounded by pairwise merging) and the live projection's arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from spotfill_control.monitoring import budget, projection
from spotfill_control.monitoring.series import MAX_SAMPLES, SPAN_TOLERANCE, Sample, Series, merged


def _sample(i: int, **changes: object) -> Sample:
    fields = {
        "t": 1_700_000_000.0 + 60 * i,
        "shards_done": i,
        "shards_total": 100_000,
        "predictions": 1_000 * i,
        "predictions_per_second": 1000 / 60,
        "capacity": {"c5.xlarge/spot": 2.0, "c5.2xlarge/on-demand": 1.0},
        "running_tasks": 3,
        "cost_usd": 0.0001 * i,
        "interruptions": i // 1000,
    }
    return Sample(**{**fields, **changes})


def test_a_month_of_polls_stays_bounded_and_keeps_the_latest_totals():
    series = Series(interval_seconds=60)
    polls = 30 * 24 * 60  # a month of 60-second polls
    for i in range(polls):
        series.add(_sample(i))
        assert len(series.samples) <= MAX_SAMPLES

    last = series.samples[-1]
    assert (last.shards_done, last.predictions, last.interruptions) == (polls - 1, 1000 * (polls - 1), 43)
    assert last.cost_usd == pytest.approx(0.0001 * (polls - 1))
    assert series.samples[0].t < series.samples[1].t  # still in time order
    assert all(a.t < b.t for a, b in zip(series.samples, series.samples[1:], strict=False))
    assert series.interval_seconds == 60 * 64  # the resolution halved on each merge
    assert len(series.samples) >= MAX_SAMPLES // 2
    spans = [b.t - a.t for a, b in zip(series.samples, series.samples[1:], strict=False)]
    assert max(spans) <= SPAN_TOLERANCE * series.interval_seconds  # old samples no coarser than new ones
    assert min(spans[:-1]) >= series.interval_seconds / 2
    assert len(series.model_dump_json().encode()) < 256_000


def test_a_hundred_thousand_adds_keep_at_most_720_samples_ending_with_the_last_added():
    series = Series(interval_seconds=1)
    for i in range(100_000):
        series.add(_sample(i))
    assert len(series.samples) <= MAX_SAMPLES
    assert series.samples[-1].model_dump(exclude={"predictions_per_second"}) == _sample(99_999).model_dump(
        exclude={"predictions_per_second"}
    )


def test_a_merged_sample_keeps_the_later_counters_and_averages_the_rates():
    earlier = _sample(1, predictions_per_second=10.0, running_tasks=5, capacity={"c5.xlarge/spot": 5.0})
    later = _sample(2, predictions_per_second=30.0)

    span = merged(earlier, later)

    assert span.predictions_per_second == 20.0
    assert span.model_dump(exclude={"predictions_per_second"}) == later.model_dump(
        exclude={"predictions_per_second"}
    )


def test_the_recent_rate_reads_the_window_and_needs_two_samples():
    series = Series(interval_seconds=60)
    series.add(_sample(0))
    assert projection.recent_rate(series) is None
    for i in range(1, 11):
        series.add(_sample(i, predictions=1000 * i + (5000 if i > 5 else 0)))
    # the last 300 s: samples 5..10, from 5000 to 15000 predictions
    assert projection.recent_rate(series) == pytest.approx(10_000 / 300)


def test_the_fleet_rate_is_split_by_capacity_weight_per_instance():
    capacity = {"c5.xlarge/spot": 2.0, "c5.2xlarge/on-demand": 1.0, "c5.2xlarge/spot": 1.0}

    split = projection.rate_by_instance_type(600.0, capacity, {"c5.xlarge": 1.0, "c5.2xlarge": 2.0})

    # 6 units of capacity: 100/s per unit
    assert split == {"c5.2xlarge": pytest.approx(200.0), "c5.xlarge": pytest.approx(100.0)}
    assert projection.rate_by_instance_type(600.0, {}, {}) == {}


def test_the_projected_total_bills_the_fleet_until_the_eta_and_the_poll_that_sees_the_end():
    total = budget.projected_total_usd(1.0, 3.6, eta_seconds=1000, poll_interval_seconds=30)
    assert total == pytest.approx(1.0 + 3.6 * (1000 + 30) / 3600)


def test_capacity_by_pool_counts_live_instances_by_type_and_purchase_option():
    now = datetime(2026, 12, 1, tzinfo=UTC)

    def billing(i: str, kind: str, option: str, ended: datetime | None = None, live: bool = True):
        return budget.Billing(i, kind, now, ended, 0.1, live, option)

    billings = [
        billing("a", "c5.xlarge", "spot"),
        billing("b", "c5.xlarge", "spot"),
        billing("c", "c5.xlarge", "on-demand"),
        billing("d", "c5.xlarge", "spot", ended=now),  # terminated
        billing("e", "c5.2xlarge", "spot", live=False),  # shutting down
    ]
    assert budget.capacity_by_pool(billings) == {"c5.xlarge/on-demand": 1.0, "c5.xlarge/spot": 2.0}


def _run(state: str = "running"):
    from spotfill_control.run import RunState
    from spotfill_control.spec import BackfillSpec

    spec = BackfillSpec.model_validate(
        {
            "name": "digits",
            "input": {"uri": "s3://data/in/", "format": "npy"},
            "output": {"uri": "s3://data/out/"},
            "model": {"uri": "s3://data/model.keras"},
            "fleet": {"instance_types": ["c5.xlarge"]},
            "limits": {"poll_interval_seconds": 30},
        }
    )
    run = RunState(run_id="digits-1", spec=spec, shards_total=12, shards_skipped=2)
    run.progress.state = state
    run.progress.outputs_done, run.progress.dead_letters = 5, 1
    run.progress.rows_sampled_outputs, run.progress.rows_sampled_total = 4, 400  # 100 rows per shard
    run.budget.accrued_usd, run.budget.hourly_usd = 0.5, 3.6
    return run


def test_the_eta_is_the_remaining_shards_rows_at_the_recent_rate_and_the_total_bills_the_fleet_until_then():
    now = datetime(2026, 12, 1, tzinfo=UTC)
    series = Series(interval_seconds=30)
    series.add(_sample(0, predictions=0, capacity={"c5.xlarge/spot": 2.0}))
    series.add(_sample(1, predictions=600, capacity={"c5.xlarge/spot": 2.0}))  # 10 predictions/s

    projected = projection.project(_run(), series, now)

    assert projected.predictions_per_second == pytest.approx(10.0)
    assert projected.eta_seconds == pytest.approx(4 * 100 / 10)  # 10 queued - 5 done - 1 dead letter
    expected = 0.5 + 3.6 * (40 + 30) / 3600
    assert projected.projected_total_usd == pytest.approx(expected)
    assert projected.at == now.timestamp()


def test_a_finished_run_is_due_now_at_what_it_accrued_and_a_first_poll_has_no_eta():
    now = datetime(2026, 12, 1, tzinfo=UTC)
    one = Series(interval_seconds=30).add(_sample(0))

    assert projection.project(_run(), one, now).eta_seconds is None
    assert projection.project(_run(), one, now).projected_total_usd is None
    done = projection.project(_run("done"), one, now)
    assert (done.eta_seconds, done.projected_total_usd) == (0.0, 0.5)
