"""Cost arithmetic and report building, without AWS."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from spotfill_control.finishing import report, report_facts, report_text
from spotfill_control.instance_types import InstanceTypeFacts
from spotfill_control.monitoring import cost
from spotfill_control.run import RunState
from spotfill_control.shards import Shard
from spotfill_control.spec import BackfillSpec

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def usage(
    instance_type: str, hours: float, zone: str = "us-east-1a", name: str = "i-1", option: str = "spot"
) -> cost.InstanceUsage:
    return cost.InstanceUsage(name, instance_type, zone, T0, T0 + hours * HOUR, option)


def priced(usd: float | None, source: str = "price-list") -> dict[str, InstanceTypeFacts]:
    """c5.xlarge as Validate caches it, with this on-demand price and source."""
    return {
        "c5.xlarge": InstanceTypeFacts(
            name="c5.xlarge",
            vcpus=4,
            memory_mib=8192,
            gpus=0,
            architecture="x86_64",
            on_demand_hourly_usd=usd,
            price_source=source,
        )
    }


# The Price List's figure (not the static table's 0.17), as the run caches it.
ON_DEMAND = 0.1734
PRICED = priced(ON_DEMAND)


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


def test_spot_cost_prices_each_type_and_zone_and_on_demand_uses_the_runs_price():
    usages = [usage("c5.xlarge", 2, "us-east-1a"), usage("c5.xlarge", 1, "us-east-1b")]
    spot = {("c5.xlarge", "us-east-1a"): 0.05, ("c5.xlarge", "us-east-1b"): 0.08}
    summary = cost.summarise(usages, spot, PRICED)
    assert summary.spot_usd == summary.total_usd == pytest.approx(2 * 0.05 + 1 * 0.08)
    assert summary.on_demand_usd == pytest.approx(3 * ON_DEMAND)
    assert summary.savings_fraction == pytest.approx(1 - 0.18 / (3 * ON_DEMAND))
    assert summary.unpriced == []
    assert summary.on_demand_price_sources == {"c5.xlarge": "price-list"}


def test_hours_without_a_spot_price_are_priced_on_demand_and_flagged():
    summary = cost.summarise([usage("c5.xlarge", 1, "us-east-1c")], {}, PRICED)
    assert summary.spot_usd == pytest.approx(ON_DEMAND)
    assert summary.unpriced == ["c5.xlarge/us-east-1c"]


def test_on_demand_instances_are_charged_on_demand_and_split_from_spot_ones():
    # given a spot instance (2 h at $0.05) and an on-demand one (1 h) of the same type and zone
    usages = [
        usage("c5.xlarge", 2, name="i-spot"),
        usage("c5.xlarge", 1, name="i-od", option="on-demand"),
    ]
    summary = cost.summarise(usages, {("c5.xlarge", "us-east-1a"): 0.05}, PRICED)
    # then each is charged the price of its purchase option, and the hours and dollars are split by it
    assert summary.by_purchase_option["spot"] == cost.OptionCost(1, pytest.approx(2.0), pytest.approx(0.1))
    assert summary.by_purchase_option["on-demand"] == cost.OptionCost(
        1, pytest.approx(1.0), pytest.approx(ON_DEMAND)
    )
    assert summary.total_usd == pytest.approx(0.1 + ON_DEMAND)
    assert summary.on_demand_usd == pytest.approx(3 * ON_DEMAND)


def test_an_instance_is_spot_only_when_ec2_says_its_lifecycle_is_spot():
    described = {
        "InstanceId": "i-1",
        "InstanceType": "c5.xlarge",
        "LaunchTime": T0,
        "State": {"Name": "running"},
    }
    assert cost.usage_of({**described, "InstanceLifecycle": "spot"}, T0 + HOUR).purchase_option == "spot"
    assert cost.usage_of(described, T0 + HOUR).purchase_option == "on-demand"


def test_static_table_and_missing_on_demand_prices_are_flagged():
    table = cost.summarise([usage("c5.xlarge", 1)], {}, priced(0.17, "static-table"))
    assert table.static_table_types == ["c5.xlarge"]
    unknown = cost.summarise(
        [usage("c5.xlarge", 1)], {("c5.xlarge", "us-east-1a"): 0.05}, priced(None, "unknown")
    )
    assert unknown.types_without_on_demand_price == ["c5.xlarge"]
    assert unknown.on_demand_usd == 0.0 and unknown.spot_usd == pytest.approx(0.05)


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
    run = RunState(
        run_id="digits-1",
        spec=spec,
        execution_arn="arn:aws:states:us-east-1:1:execution:sm:e-1",
        instance_types=PRICED,
    )
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


def facts(**overrides) -> report_facts.Facts:
    base = dict(
        shards_total=5,
        shards_skipped=1,
        succeeded=3,
        failed_keys=["s3://data/in/d.npy"],
        unprocessed=0,
        retried=1,
        predictions=300_000,
        usages=[usage("c5.xlarge", 2)],
        cost=cost.summarise([usage("c5.xlarge", 2)], {("c5.xlarge", "us-east-1a"): 0.05}, PRICED),
    )
    return report_facts.Facts(**{**base, **overrides})


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
    spent = document["cost_usd"]
    assert spent["total"] == spent["spot"] == pytest.approx(0.1)
    assert spent["by_purchase_option"]["spot"] == {
        "instances": 1,
        "hours": 2.0,
        "usd": pytest.approx(0.1),
        "price": "spot price history",
    }
    assert spent["by_purchase_option"]["on-demand"]["instances"] == 0
    assert spent["on_demand_equivalent"] == pytest.approx(2 * ON_DEMAND)
    assert spent["on_demand_prices"] == {"c5.xlarge": {"usd_per_hour": ON_DEMAND, "source": "price-list"}}
    assert spent["static_table_prices"] == [] and spent["types_without_on_demand_price"] == []
    assert spent["per_million_predictions"] == pytest.approx(0.1 / 0.3, abs=1e-6)
    assert document["throughput"]["mean_shards_per_second"] == pytest.approx(3 / 1000)
    assert document["throughput"]["mean_predictions_per_second"] == pytest.approx(300.0)
    assert document["throughput"]["peak_predictions_per_second"] == 500.0
    assert document["report_uri"] == "s3://control/reports/digits-1.json"
    json.dumps(document)  # the report is plain JSON


def test_the_report_flags_on_demand_figures_from_the_static_table():
    run = make_run()
    run.instance_types = priced(0.17, "static-table")
    summary = cost.summarise([usage("c5.xlarge", 2)], {}, run.instance_types)
    spent = build(run, cost=summary)["cost_usd"]
    assert spent["static_table_prices"] == ["c5.xlarge"]
    assert spent["on_demand_prices"]["c5.xlarge"] == {"usd_per_hour": 0.17, "source": "static-table"}
    assert spent["unpriced"] == ["c5.xlarge/us-east-1a"]


def test_a_run_without_failures_succeeded():
    assert build(make_run(), failed_keys=[])["status"] == "succeeded"


def _failed_error(key: str, reason: str) -> dict:
    return {"shard": key, "error_type": reason.split(":")[0], "error": "...", "reason": reason}


def test_a_run_whose_every_shard_failed_for_one_reason_says_it_in_one_sentence():
    # given two shards that failed with the same one-line reason (a model that fails on every shard)
    reason = "InvalidArgumentError: indices[0,0] = 50 is not in [0, 10)"
    keys = ["s3://data/in/a.npy", "s3://data/in/b.npy"]
    errors = [_failed_error(key, reason) for key in keys]

    # when the run is reported
    document = build(make_run(), failed_keys=keys, failed_errors=errors)

    # then its reason is one sentence that says why
    assert document["status"] == "completed_with_failures"
    assert document["reason"] == f"2 shard(s) failed and were set aside as dead letters: {reason}"


def test_failed_shards_with_different_reasons_are_counted_and_each_named_with_its_own():
    import io

    from rich.console import Console

    from spotfill.progress_display import report_table

    # given two shards that failed for different reasons
    keys = ["s3://data/in/a.npy", "s3://data/in/b.npy"]
    errors = [
        _failed_error(keys[0], "ShardFormatError: cannot decode shard as npy: bad header"),
        _failed_error(keys[1], "InvalidArgumentError: indices[0,0] = 50 is not in [0, 10)"),
    ]

    # when the run is reported and its table printed (what `spotfill run --local` and `report` print)
    document = build(make_run(), failed_keys=keys, failed_errors=errors)
    out = io.StringIO()
    Console(file=out, width=300, color_system=None).print(report_table(document))

    # then the reason counts them, and the table names each failed shard with its reason
    assert document["reason"] == "2 shard(s) failed and were set aside as dead letters"
    text = " ".join(out.getvalue().split())
    for error in errors:
        assert f"{error['shard']}: {error['reason']}" in text


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


def test_the_report_says_which_fleet_deletion_teardown_could_not_confirm():
    run = make_run()
    assert build(run)["teardown_unconfirmed"] == []
    note = "ec2-fleet fleet-1: EC2 answered that it does not exist and never showed it deleted, so ..."
    unconfirmed = run.model_copy(update={"teardown_unconfirmed": [note]})
    assert build(unconfirmed)["teardown_unconfirmed"] == [note]


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
    succeeded, failed, unprocessed, retried = report_facts.shard_facts(
        shards,
        present,
        dead_letters=["s3://d/in/c.npy", "s3://d/in/a.npy"],
        error_records={"s3://c/e/b.json"},
    )
    assert (succeeded, failed, unprocessed, retried) == (2, ["s3://d/in/c.npy"], 1, 1)


def test_the_notification_subject_says_succeeded_or_failed():
    assert report_text.notification(build(make_run(), failed_keys=[]))[0] == "spotfill run digits-1 succeeded"
    failed = build(make_run(), error=report.StepError(Error="RunTimeoutError"))
    assert report_text.notification(failed)[0] == "spotfill run digits-1 failed"


def test_a_run_that_reached_its_budget_is_reported_as_such_with_its_cap_and_what_it_cost():
    run = make_run()
    run = run.model_copy(
        update={
            "spec": run.spec.model_copy(
                update={"limits": run.spec.limits.model_copy(update={"max_total_usd": 0.0002})}
            )
        }
    )
    run.budget.accrued_usd, run.budget.draining_since = 0.000187654321, T0 + timedelta(seconds=900)
    cause = json.dumps(
        {"errorType": "BudgetReached", "errorMessage": "run digits-1 drained", "stackTrace": []}
    )

    document = build(
        run, error=report.StepError(Error="BudgetReached", Cause=cause), failed_keys=[], unprocessed=2
    )

    assert document["status"] == "budget_reached"
    assert document["reason"] == "budget reached: run digits-1 drained"
    assert document["budget"]["max_total_usd"] == 0.0002
    assert document["budget"]["spent_usd"] == document["cost_usd"]["total"] == 0.1
    assert document["budget"]["drain_started_at"] == (T0 + timedelta(seconds=900)).isoformat()
    subject, message = report_text.notification(document)
    assert subject == "spotfill run digits-1 stopped: budget reached"
    assert "Cap: $0.0002000" in message


def test_a_capped_run_shows_one_cost_figure_in_its_report_rows_notification_and_summary():
    # given a capped run whose monitor accrued less than its instances cost through teardown (its last poll
    # came before the drain ended and teardown terminated the instances)
    from spotfill_control.monitoring.budget import format_usd

    run = make_run()
    limits = run.spec.limits.model_copy(update={"max_total_usd": 0.25})
    run = run.model_copy(update={"spec": run.spec.model_copy(update={"limits": limits})})
    run.budget.accrued_usd, run.budget.draining_since = 0.0931, T0 + timedelta(seconds=900)

    # when the report is built, and shown as rows, the SNS notification and the EventBridge summary
    document = build(run)
    rows = dict(report_text.report_rows(document))
    _, message = report_text.notification(document)
    summary = report.summary_of(document)

    # then every place shows the run's one cost figure, the instances' hours priced through teardown
    total = document["cost_usd"]["total"]
    assert total == pytest.approx(2 * 0.05)
    assert document["budget"]["spent_usd"] == total
    assert summary["cost_usd"] == total
    shown = f"${format_usd(total)}"
    assert rows["budget"] == f"{shown} of $0.2500 cap (drained)"
    assert rows["cost"].startswith(f"{shown} ")
    assert f"Cost: {shown}" in message.splitlines()
    # and the monitor's accrual at its last poll, a second total that disagrees, is shown nowhere
    accrued = format_usd(0.0931)
    assert accrued not in json.dumps(document) and accrued not in message
    assert not [value for value in rows.values() if accrued in value]


def test_the_notification_subject_fits_sns_limits():
    run = make_run()
    run.run_id = "x" * 120
    subject, message = report_text.notification(build(run))
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
    sample = report_facts.OutputSample()
    for i in range(20_000):
        sample.add(f"s3://d/out/{i}.npy")
    s3 = CountingS3()

    # when rows are counted
    total, exact = report_facts.count_sampled_rows(sample, s3)

    # then at most PREDICTION_SAMPLE_SIZE outputs were read, and the estimate scales to every output
    assert len(sample.items) == report_facts.PREDICTION_SAMPLE_SIZE
    assert s3.heads == report_facts.PREDICTION_SAMPLE_SIZE
    assert (total, exact) == (7 * 20_000, False)


def test_predictions_of_few_outputs_are_counted_exactly():
    sample = report_facts.OutputSample()
    for i in range(report_facts.EXACT_PREDICTION_COUNT_LIMIT):
        sample.add(f"s3://d/out/{i}.npy")
    s3 = CountingS3()
    assert report_facts.count_sampled_rows(sample, s3) == (
        7 * report_facts.EXACT_PREDICTION_COUNT_LIMIT,
        True,
    )
    assert s3.heads == report_facts.EXACT_PREDICTION_COUNT_LIMIT


def test_the_report_table_shows_cost_per_purchase_option_and_flags_static_table_prices():
    import io

    from rich.console import Console

    from spotfill.progress_display import report_table

    # given a run with a spot and an on-demand instance, priced from the static table
    run = make_run()
    run.instance_types = priced(0.17, "static-table")
    usages = [usage("c5.xlarge", 2, name="i-spot"), usage("c5.xlarge", 1, name="i-od", option="on-demand")]
    summary = cost.summarise(usages, {("c5.xlarge", "us-east-1a"): 0.05}, run.instance_types)
    out = io.StringIO()
    # when the CLI renders its report
    Console(file=out, width=300, color_system=None).print(
        report_table(build(run, cost=summary, usages=usages))
    )
    text = out.getvalue()
    # then the cost line gives the total, each purchase option's dollars and hours, and the price source
    assert "$0.2700 (spot $0.1000 (2.0000h), on-demand $0.1700 (1.0000h)) vs $0.5100 on demand" in text
    assert "on-demand prices of c5.xlarge from the static table" in text


class MixedS3:
    """Outputs whose workers ran on spot (even numbers), on demand (odd) or recorded nothing (every 10th)."""

    def head_object(self, Key, **_):
        number = int(Key.rsplit("/", 1)[-1].split(".")[0])
        metadata = {"spotfill-rows": "7"}
        if number % 10:
            metadata["spotfill-purchase-option"] = "on-demand" if number % 2 else "spot"
        return {"Metadata": metadata}


def test_predictions_are_split_by_the_purchase_option_of_the_instance_that_made_them():
    sample = report_facts.OutputSample()
    for i in range(20):
        sample.add(f"s3://d/out/{i}.npy")
    total, exact, by_option = report_facts.count_sampled_rows_by_purchase_option(sample, MixedS3())
    assert (total, exact) == (140, True)
    assert by_option == {"on-demand": 7 * 10, "spot": 7 * 8, "unknown": 7 * 2}


def test_an_estimated_split_scales_like_the_total():
    sample = report_facts.OutputSample()
    for i in range(20_000):
        sample.add(f"s3://d/out/{i}.npy")
    total, exact, by_option = report_facts.count_sampled_rows_by_purchase_option(sample, MixedS3())
    assert not exact and total == 7 * 20_000
    assert abs(sum(by_option.values()) - total) <= len(by_option)
    assert set(by_option) <= {"spot", "on-demand", "unknown"} and by_option.get("on-demand", 0) > 0


ESTIMATE = {
    "made_at": "2026-12-01T06:40:00Z",
    "instance_type": "c5.xlarge",
    "target_capacity": 2,
    "predictions": 300_000,
    "predictions_per_second": 400.0,
    "seconds": 1000.0,
    "total_usd": 0.08,
}


def _with_estimate(run: RunState, estimate: dict) -> RunState:
    """The run's spec carrying the plan's estimate (the spec's `estimate` section)."""
    if "estimate" in BackfillSpec.model_fields:
        run.spec = BackfillSpec.model_validate({**run.spec.model_dump(mode="json"), "estimate": estimate})
    else:  # a spec model without the section yet: the report reads it with getattr
        object.__setattr__(run.spec, "estimate", estimate)
    return run


def test_the_report_compares_the_plans_estimate_with_what_happened():
    document = build(_with_estimate(make_run(), ESTIMATE))

    versus = document["estimate_vs_actual"]
    assert versus["estimate"]["seconds"] == 1000.0 and versus["estimate"]["instance_type"] == "c5.xlarge"
    # the whole run's seconds, the report's total cost, predictions over the processing phase
    assert versus["actual"] == {
        "seconds": 1180.0,
        "total_usd": pytest.approx(0.1),
        "predictions_per_second": pytest.approx(300.0),
    }
    assert versus["error"] == {
        "seconds": pytest.approx(1.18),
        "total_usd": pytest.approx(1.25),
        "predictions_per_second": pytest.approx(0.75),
    }
    json.dumps(document)


def test_a_run_without_an_estimate_has_no_comparison_and_its_series_is_summarised():
    from spotfill_control.monitoring.series import Sample, Series

    series = Series(interval_seconds=30)
    for i in range(3):
        sample = Sample(t=60.0 * i, shards_done=i, shards_total=3, predictions=i, predictions_per_second=1.0)
        series.add(sample)

    document = build(make_run(), series=series)

    assert "estimate_vs_actual" not in document
    assert document["series"] == {"samples": 3, "interval_seconds": 30, "key": "runs/digits-1/series.json"}
    assert build(make_run())["series"] == {"samples": 0, "interval_seconds": None, "key": None}


def test_the_report_table_says_the_estimate_against_the_run():
    import io

    from rich.console import Console

    from spotfill.progress_display import report_table

    out = io.StringIO()
    Console(file=out, width=300, color_system=None).print(
        report_table(build(_with_estimate(make_run(), ESTIMATE)))
    )

    expected = "planned 16m40s, $0.08000, 400/s; took 19m40s (x1.18), $0.1000 (x1.25), 300/s (x0.75)"
    assert expected in out.getvalue()


def test_the_report_shows_the_weights_requested_measured_and_set():
    # given a run whose Monitor measured a slow c5.2xlarge and re-weighted the fleet once
    from spotfill_control.run import TypeThroughput, WeightChange, Weighting

    from spotfill.localcloud.pricing import emulated_facts

    run = make_run()
    run.instance_types = emulated_facts(["c5.2xlarge", "c5.xlarge"])
    run.weighting = Weighting(
        weights={"c5.2xlarge": 1.0, "c5.xlarge": 2.0},
        measured={
            "c5.2xlarge": TypeThroughput(outputs=5, rate_total=5.0),
            "c5.xlarge": TypeThroughput(outputs=6, rate_total=12.0),
        },
        changes=[
            WeightChange(
                at=T0 + timedelta(seconds=600),
                weights={"c5.2xlarge": 1.0, "c5.xlarge": 2.0},
                per_instance={"c5.2xlarge": 1.0, "c5.xlarge": 2.0},
            )
        ],
    )

    # when reported
    document = build(run)

    # then the report has the weights as requested (by vCPUs), measured, changed and final
    assert document["weights"] == {
        "requested": {"c5.2xlarge": 2.0, "c5.xlarge": 1.0},
        "final": {"c5.2xlarge": 1.0, "c5.xlarge": 2.0},
        "per_instance_predictions_per_second": {"c5.2xlarge": 1.0, "c5.xlarge": 2.0},
        "measured_outputs": {"c5.2xlarge": 5, "c5.xlarge": 6},
        "changes": [
            {
                "at": (T0 + timedelta(seconds=600)).isoformat().replace("+00:00", "Z"),
                "weights": {"c5.2xlarge": 1.0, "c5.xlarge": 2.0},
                "per_instance": {"c5.2xlarge": 1.0, "c5.xlarge": 2.0},
            }
        ],
    }
    assert (
        "weights",
        "c5.2xlarge 2 -> 1 (1.0/s per instance), c5.xlarge 1 -> 2 (2.0/s per instance); re-weighted 1 time",
    ) in report_text.report_rows(document)


def test_a_run_never_measured_has_no_weights_in_its_report():
    assert "weights" not in build(make_run())
