"""Cost arithmetic and report building, without AWS."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from spotfill_control import cost, report
from spotfill_control.run import RunState
from spotfill_control.shards import Shard
from spotfill_control.spec import BackfillSpec

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def usage(
    instance_type: str, hours: float, zone: str = "us-east-1a", name: str = "i-1"
) -> cost.InstanceUsage:
    return cost.InstanceUsage(name, instance_type, zone, T0, T0 + hours * HOUR)


# ------------------------------------------------------------------------------------------ prices


def test_a_price_constant_over_the_window_is_its_average():
    assert cost.time_weighted_price([(T0 - HOUR, 0.1)], T0, T0 + HOUR) == pytest.approx(0.1)


def test_prices_are_weighted_by_how_long_each_held():
    # 0.1 for the first 15 minutes, 0.3 for the remaining 45
    points = [(T0 - HOUR, 0.1), (T0 + timedelta(minutes=15), 0.3)]
    assert cost.time_weighted_price(points, T0, T0 + HOUR) == pytest.approx(0.25)


def test_a_window_starting_before_the_first_price_uses_the_first_price_from_the_start():
    points = [(T0 + timedelta(minutes=30), 0.2)]
    assert cost.time_weighted_price(points, T0, T0 + HOUR) == pytest.approx(0.2)


def test_changes_after_the_window_are_ignored():
    points = [(T0, 0.1), (T0 + 2 * HOUR, 9.9)]
    assert cost.time_weighted_price(points, T0, T0 + HOUR) == pytest.approx(0.1)


def test_no_price_history_means_no_price():
    assert cost.time_weighted_price([], T0, T0 + HOUR) is None


def test_an_empty_window_takes_the_price_in_effect_at_its_start():
    assert cost.time_weighted_price([(T0 - HOUR, 0.1), (T0 + HOUR, 0.5)], T0, T0) == 0.1


# ------------------------------------------------------------------------------------------ instance-hours


def test_termination_time_is_read_from_the_state_transition_reason():
    assert cost.termination_time("User initiated (2026-11-27 07:30:00 GMT)") == T0 + 1.5 * HOUR
    assert cost.termination_time("User initiated (2026-11-27 07:30:00 UTC)") == T0 + 1.5 * HOUR
    assert cost.termination_time("") is None


def test_a_terminated_instance_counts_until_its_termination():
    described = {
        "InstanceId": "i-1",
        "InstanceType": "c5.xlarge",
        "Placement": {"AvailabilityZone": "us-east-1b"},
        "LaunchTime": T0,
        "State": {"Name": "terminated"},
        "StateTransitionReason": "User initiated (2026-11-27 08:00:00 GMT)",
    }
    used = cost.usage_of(described, ended_by=T0 + 5 * HOUR)
    assert used.hours == pytest.approx(2.0)
    assert used.availability_zone == "us-east-1b"


def test_a_live_instance_counts_until_the_end_of_teardown():
    described = {
        "InstanceId": "i-1",
        "InstanceType": "c5.xlarge",
        "LaunchTime": T0,
        "State": {"Name": "running"},
    }
    assert cost.usage_of(described, ended_by=T0 + 3 * HOUR).hours == pytest.approx(3.0)


def test_hours_add_up_by_instance_type():
    hours = cost.hours_by_type([usage("c5.xlarge", 1), usage("c5.xlarge", 2), usage("m5.xlarge", 0.5)])
    assert hours == {"c5.xlarge": pytest.approx(3.0), "m5.xlarge": pytest.approx(0.5)}


def test_spot_cost_prices_each_type_and_zone_and_on_demand_uses_the_catalog():
    usages = [usage("c5.xlarge", 2, "us-east-1a"), usage("c5.xlarge", 1, "us-east-1b")]
    summary = cost.summarise(usages, {("c5.xlarge", "us-east-1a"): 0.05, ("c5.xlarge", "us-east-1b"): 0.08})
    assert summary.spot_usd == pytest.approx(2 * 0.05 + 1 * 0.08)
    assert summary.on_demand_usd == pytest.approx(3 * 0.17)
    assert summary.savings_fraction == pytest.approx(1 - 0.18 / 0.51)
    assert summary.unpriced == []


def test_hours_without_a_spot_price_are_priced_on_demand_and_flagged():
    summary = cost.summarise([usage("c5.xlarge", 1, "us-east-1c")], {})
    assert summary.spot_usd == pytest.approx(0.17)
    assert summary.unpriced == ["c5.xlarge/us-east-1c"]


def test_cost_per_million_predictions():
    assert cost.cost_per_million(0.5, 1_000_000) == pytest.approx(0.5)
    assert cost.cost_per_million(1.42, 2_000_000) == pytest.approx(0.71)
    assert cost.cost_per_million(1.0, 0) is None


# ------------------------------------------------------------------------------------------ report


def make_run() -> RunState:
    spec = BackfillSpec.model_validate(
        {
            "name": "digits",
            "input": {"uri": "s3://data/in/", "format": "npy"},
            "output": {"uri": "s3://data/out/"},
            "model": {"uri": "s3://data/model.keras"},
            "fleet": {"instance_types": ["c5.xlarge"]},
        }
    )
    run = RunState(run_id="digits-1", spec=spec, execution_arn="arn:aws:states:us-east-1:1:execution:sm:e-1")
    t = run.timeline
    t.started_at, t.validated_at = T0, T0 + timedelta(seconds=2)
    t.fleet_requested_at, t.fleet_fulfilled_at = T0 + timedelta(seconds=10), T0 + timedelta(seconds=70)
    t.registered_at = T0 + timedelta(seconds=130)
    t.processing_started_at, t.processing_ended_at = T0 + timedelta(seconds=140), T0 + timedelta(seconds=1140)
    t.teardown_started_at, t.teardown_ended_at = T0 + timedelta(seconds=1150), T0 + timedelta(seconds=1180)
    run.progress.peak_shards_per_second = 0.5
    run.progress.peak_predictions_per_second = 500.0
    run.progress.requeued = 1
    run.progress.interruptions = 2
    return run


def facts(**overrides) -> report.Facts:
    base = dict(
        shards_total=5,
        shards_skipped=1,
        succeeded=3,
        failed_keys=["s3://data/in/d.npy"],
        unprocessed=0,
        retried=1,
        predictions=300_000,
        usages=[usage("c5.xlarge", 2)],
        cost=cost.summarise([usage("c5.xlarge", 2)], {("c5.xlarge", "us-east-1a"): 0.05}),
    )
    return report.Facts(**{**base, **overrides})


def build(run=None, error=None, teardown_error=None, **fact_overrides) -> dict:
    return report.build_report(
        run,
        run_id=run.run_id if run else "exec-9",
        error=error,
        teardown_error=teardown_error,
        facts=facts(**fact_overrides),
        now=T0 + timedelta(seconds=1200),
        control_bucket="control",
    )


def test_the_report_carries_phase_durations_from_the_timeline():
    phases = build(make_run())["phases_seconds"]
    assert phases == {
        "validate": 2.0,
        "fleet_fulfilled": 60.0,
        "registration": 120.0,
        "processing": 1000.0,
        "teardown": 30.0,
        "total": 1180.0,
    }


def test_the_report_carries_counts_cost_and_throughput():
    document = build(make_run())
    assert document["status"] == "completed_with_failures"
    assert document["shards"]["failed_keys"] == ["s3://data/in/d.npy"]
    assert document["shards"]["requeued"] == 1 and document["shards"]["retried"] == 1
    assert document["instances"] == {
        "count": 1,
        "hours_by_type": {"c5.xlarge": 2.0},
        "interruptions": 2,
        "failed_pools": [],
    }
    assert document["cost_usd"]["spot"] == pytest.approx(0.1)
    assert document["cost_usd"]["on_demand_equivalent"] == pytest.approx(0.34)
    assert document["cost_usd"]["per_million_predictions"] == pytest.approx(0.1 / 0.3, abs=1e-6)
    assert document["throughput"]["mean_shards_per_second"] == pytest.approx(3 / 1000)
    assert document["throughput"]["mean_predictions_per_second"] == pytest.approx(300.0)
    assert document["throughput"]["peak_predictions_per_second"] == 500.0
    assert document["report_uri"] == "s3://control/reports/digits-1.json"
    json.dumps(document)  # the report is plain JSON


def test_a_run_without_failures_succeeded():
    assert build(make_run(), failed_keys=[])["status"] == "succeeded"


def test_a_run_error_makes_the_report_failed_with_the_lambda_error_message():
    cause = json.dumps(
        {"errorType": "StallError", "errorMessage": "no progress for 1801 s", "stackTrace": []}
    )
    document = build(make_run(), error=report.StepError(Error="StallError", Cause=cause))
    assert document["status"] == "failed"
    assert document["reason"] == "StallError: no progress for 1801 s"
    assert document["error"] == {"type": "StallError", "message": "no progress for 1801 s"}


def test_a_teardown_error_alone_makes_the_report_failed():
    document = build(make_run(), failed_keys=[], teardown_error=report.StepError(Error="TransientAwsError"))
    assert document["status"] == "failed"
    assert document["reason"].startswith("teardown failed: TransientAwsError")


def test_invalid_input_is_reported_as_invalid_without_a_run():
    error = report.StepError(Error="InvalidSpecError", Cause="fleet.target_capacity: must be >= 1")
    document = build(None, error=error)
    assert document["status"] == "invalid"
    assert document["reason"] == "invalid input: fleet.target_capacity: must be >= 1"
    assert document["run_id"] == "exec-9"
    assert "shards" not in document


def test_the_run_id_of_an_invalid_input_report_is_the_execution_name():
    arn = "arn:aws:states:us-east-1:1:execution:spotfill-backfill:manual-42"
    assert report.run_id_for_execution(arn, T0) == "manual-42"
    assert report.run_id_for_execution(None, T0) == "invalid-20261127060000"


def test_shard_facts_count_successes_failures_retries_and_unfinished_shards():
    shards = [
        Shard(
            shard=f"s3://d/in/{n}.npy",
            output=f"s3://d/out/{n}.npy",
            error=f"s3://c/e/{n}.json",
            skipped=n == "z",
        )
        for n in ("a", "b", "c", "d", "z")
    ]
    present = {"s3://d/out/a.npy", "s3://d/out/b.npy", "s3://d/out/z.npy"}
    succeeded, failed, unprocessed, retried = report.shard_facts(
        shards,
        present,
        dead_letters=["s3://d/in/c.npy", "s3://d/in/a.npy"],
        error_records={"s3://c/e/b.json"},
    )
    assert (succeeded, failed, unprocessed, retried) == (2, ["s3://d/in/c.npy"], 1, 1)


def test_the_notification_subject_says_succeeded_or_failed():
    assert report.notification(build(make_run(), failed_keys=[]))[0] == "spotfill run digits-1 succeeded"
    failed = build(make_run(), error=report.StepError(Error="RunTimeoutError"))
    assert report.notification(failed)[0] == "spotfill run digits-1 failed"


def test_the_notification_subject_fits_sns_limits():
    run = make_run()
    run.run_id = "x" * 120
    subject, message = report.notification(build(run))
    assert len(subject) <= 100 and subject.isascii()
    assert "Report: s3://control/reports/" in message


def test_the_summary_is_small():
    summary = report.summary_of(build(make_run(), failed_keys=[f"s3://data/in/{i}.npy" for i in range(5000)]))
    assert len(json.dumps(summary)) < 1_000
    assert summary["shards_failed"] == 5000


class CountingS3:
    """HeadObject answers `spotfill-rows` = 7 for every output, and counts the calls."""

    def __init__(self) -> None:
        self.heads = 0

    def head_object(self, **_):
        self.heads += 1
        return {"Metadata": {"spotfill-rows": "7"}}


def test_predictions_of_many_outputs_are_estimated_from_a_bounded_sample():
    # given 20,000 outputs streamed into the report's sample
    sample = report.OutputSample()
    for i in range(20_000):
        sample.add(f"s3://d/out/{i}.npy")
    s3 = CountingS3()

    # when rows are counted
    total, exact = report.count_sampled_rows(sample, s3)

    # then at most PREDICTION_SAMPLE_SIZE outputs were read, and the estimate scales to every output
    assert len(sample.items) == report.PREDICTION_SAMPLE_SIZE
    assert s3.heads == report.PREDICTION_SAMPLE_SIZE
    assert (total, exact) == (7 * 20_000, False)


def test_predictions_of_few_outputs_are_counted_exactly():
    sample = report.OutputSample()
    for i in range(report.EXACT_PREDICTION_COUNT_LIMIT):
        sample.add(f"s3://d/out/{i}.npy")
    s3 = CountingS3()
    assert report.count_sampled_rows(sample, s3) == (7 * report.EXACT_PREDICTION_COUNT_LIMIT, True)
    assert s3.heads == report.EXACT_PREDICTION_COUNT_LIMIT


class MixedS3:
    """Outputs whose workers ran on spot (even numbers), on demand (odd) or recorded nothing (every 10th)."""

    def head_object(self, Key, **_):
        number = int(Key.rsplit("/", 1)[-1].split(".")[0])
        metadata = {"spotfill-rows": "7"}
        if number % 10:
            metadata["spotfill-purchase-option"] = "on-demand" if number % 2 else "spot"
        return {"Metadata": metadata}


def test_predictions_are_split_by_the_purchase_option_of_the_instance_that_made_them():
    sample = report.OutputSample()
    for i in range(20):
        sample.add(f"s3://d/out/{i}.npy")
    total, exact, by_option = report.count_sampled_rows_by_purchase_option(sample, MixedS3())
    assert (total, exact) == (140, True)
    assert by_option == {"on-demand": 7 * 10, "spot": 7 * 8, "unknown": 7 * 2}


def test_an_estimated_split_scales_like_the_total():
    sample = report.OutputSample()
    for i in range(20_000):
        sample.add(f"s3://d/out/{i}.npy")
    total, exact, by_option = report.count_sampled_rows_by_purchase_option(sample, MixedS3())
    assert not exact and total == 7 * 20_000
    assert abs(sum(by_option.values()) - total) <= len(by_option)
    assert set(by_option) <= {"spot", "on-demand", "unknown"} and by_option.get("on-demand", 0) > 0
