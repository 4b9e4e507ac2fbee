"""The dollar cap's arithmetic (`monitoring.budget`): accrual, prices, projection, drain, guarantee."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from spotfill_control.errors import BudgetReached, InvalidSpecError
from spotfill_control.instance_types import STATIC_ON_DEMAND_USD
from spotfill_control.monitoring import budget
from spotfill_control.run import RunState
from spotfill_control.setup.triggers import spec_from_document
from spotfill_control.spec import BackfillSpec

from .conftest import sample_spec

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
SPOT = {
    ("c5.xlarge", "us-east-1a"): 0.0612,
    ("c5.xlarge", "us-east-1b"): 0.0733,
    ("c5.2xlarge", "us-east-1a"): 0.1409,
}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def billing(started: float, ended: float | None = None, rate: float = 3.6, kind: str = "c5.xlarge"):
    return budget.Billing(
        instance_id=f"i-{started}-{ended}",
        instance_type=kind,
        started_at=at(started),
        ended_at=None if ended is None else at(ended),
        usd_per_hour=rate,
        counts_as_capacity=ended is None,
    )


def instance(
    instance_id: str = "i-1",
    kind: str = "c5.xlarge",
    zone: str = "us-east-1a",
    launched: float = 0,
    state: str = "running",
    lifecycle: str | None = "spot",
    reason: str = "",
) -> dict[str, Any]:
    described: dict[str, Any] = {
        "InstanceId": instance_id,
        "InstanceType": kind,
        "Placement": {"AvailabilityZone": zone},
        "LaunchTime": at(launched),
        "State": {"Name": state},
        "StateTransitionReason": reason,
    }
    if lifecycle:
        described["InstanceLifecycle"] = lifecycle
    return described


def terminated_at(seconds: float) -> str:
    return f"User initiated ({at(seconds):%Y-%m-%d %H:%M:%S} GMT)"


# ------------------------------------------------------------------------------------------ accrual


def test_an_instance_accrues_only_the_part_of_the_window_it_ran_in():
    # $3.60/h is $0.001 a second
    since, now = at(100), at(160)
    assert budget.accrue([billing(0)], since, now) == pytest.approx(0.060)  # running through the window
    assert budget.accrue([billing(130)], since, now) == pytest.approx(0.030)  # started between the polls
    assert budget.accrue([billing(0, 110)], since, now) == pytest.approx(0.010)  # ended between the polls
    assert budget.accrue([billing(120, 140)], since, now) == pytest.approx(0.020)  # both, between the polls
    assert budget.accrue([billing(0, 90)], since, now) == 0  # ended before the window: already accrued
    assert budget.accrue([billing(10)], None, at(40)) == pytest.approx(0.030)  # first poll: from launch


def test_accruing_poll_by_poll_adds_up_to_the_whole_run():
    fleet = [billing(5), billing(12, 47), billing(30, 31), billing(50)]
    polls = [at(s) for s in (0, 10, 20, 33, 48, 60)]
    stepwise = sum(budget.accrue(fleet, a, b) for a, b in itertools.pairwise(polls))
    assert stepwise == pytest.approx(budget.accrue(fleet, None, polls[-1]))


def test_a_spot_instance_runs_at_its_zones_spot_price_and_an_on_demand_one_at_the_on_demand_price():
    on_demand = STATIC_ON_DEMAND_USD["c5.xlarge"]
    spot = budget.billing_of(instance(zone="us-east-1b"), at(60), True, at(0), SPOT, on_demand)
    regular = budget.billing_of(instance(lifecycle=None), at(60), True, at(0), SPOT, on_demand)

    assert spot.usd_per_hour == 0.0733
    assert regular.usd_per_hour == on_demand
    assert budget.accrue([spot, regular], at(0), at(3600)) == pytest.approx(0.0733 + on_demand)


def test_a_spot_instance_in_an_unquoted_zone_runs_at_its_types_dearest_quote_else_on_demand():
    on_demand = STATIC_ON_DEMAND_USD["c5.xlarge"]
    elsewhere = budget.billing_of(instance(zone="us-east-1f"), at(60), True, None, SPOT, on_demand)
    unquoted = budget.billing_of(instance(kind="m5.large"), at(60), True, None, SPOT, 0.096)

    assert elsewhere.usd_per_hour == 0.0733
    assert unquoted.usd_per_hour == 0.096


def test_a_terminated_instance_ends_at_its_stated_time_or_once_at_the_poll_after_it_was_last_seen():
    args = (SPOT, 0.17)
    stated = budget.billing_of(
        instance(state="terminated", reason=terminated_at(75)), at(90), True, at(60), *args
    )
    seen_alive = budget.billing_of(instance(state="terminated"), at(90), True, at(60), *args)
    gone_long_ago = budget.billing_of(instance(state="terminated"), at(90), False, at(60), *args)
    born_and_gone = budget.billing_of(instance(state="terminated", launched=70), at(90), False, at(60), *args)

    assert stated.ended_at == at(75)
    assert seen_alive.ended_at == at(90)
    assert budget.seconds_billed(gone_long_ago, at(60), at(90)) == 0
    assert budget.seconds_billed(born_and_gone, at(60), at(90)) == 20
    assert not any(b.counts_as_capacity for b in (stated, seen_alive, gone_long_ago))


# ------------------------------------------------------------------------------------------ projection


def test_the_hourly_price_counts_live_instances_and_the_capacity_still_to_come_at_the_dearest_unit():
    weights = {"c5.xlarge": 1.0, "c5.2xlarge": 2.0}
    on_demand = {t: STATIC_ON_DEMAND_USD[t] for t in weights}
    ceiling = budget.ceiling_per_unit(weights, SPOT, weights, on_demand)
    live = [billing(0, rate=0.0612), billing(0, 30, rate=0.0733)]

    assert ceiling == pytest.approx(0.0733)  # c5.xlarge in 1b beats 0.1409 / 2 per unit
    assert budget.fleet_hourly_usd(live, 4, weights, ceiling) == pytest.approx(0.0612 + 3 * 0.0733)
    assert budget.fleet_hourly_usd(live, 0, weights, ceiling) == pytest.approx(0.0612)  # draining


def test_the_projection_covers_the_next_poll_and_a_whole_drain():
    poll = 60
    assert (
        budget.drain_seconds(poll) == budget.STOP_TIMEOUT_SECONDS + poll + budget.TEARDOWN_ALLOWANCE_SECONDS
    )
    projection = budget.project(1.0, 3.6, poll)
    assert projection.projected_usd == pytest.approx(1.0 + 0.001 * budget.horizon_seconds(poll))
    assert not budget.must_drain(None, 10**9)
    assert not budget.must_drain(projection.projected_usd + 1e-9, projection.projected_usd)
    assert budget.must_drain(projection.projected_usd, projection.projected_usd)


def test_a_drain_ends_when_no_shard_is_in_hand_on_a_later_poll_or_after_a_stop_timeout():
    began = at(0)
    assert not budget.drained(None, 0, at(10))
    assert not budget.drained(began, 0, began)  # the poll that began it: workers have not stopped yet
    assert budget.drained(began, 0, at(5))
    assert not budget.drained(began, 2, at(5))
    assert budget.drained(began, 2, at(budget.STOP_TIMEOUT_SECONDS))


@pytest.mark.parametrize("poll", [1, 60, 300])
@pytest.mark.parametrize("reserves", [1.01, 3.0, 50.0])
def test_polling_and_draining_as_the_monitor_does_never_spends_past_the_cap(poll, reserves):
    # A fleet of 8 units at $1.10/h that keeps its target, and a cap of some multiple of the projection's
    # reserve (a poll and a drain): poll, accrue, project; drain, and bill the drain.
    hourly = 8 * 1.10
    cap = reserves * hourly * budget.horizon_seconds(poll) / 3600
    accrued, clock = 0.0, 0.0
    while not budget.must_drain(cap, budget.project(accrued, hourly, poll).projected_usd):
        clock += poll
        accrued = hourly * clock / 3600
    spent = accrued + hourly * budget.drain_seconds(poll) / 3600
    assert spent <= cap
    # and it drained no earlier than it had to: one more poll would have left no room for the drain
    assert spent + hourly * poll / 3600 > cap - 1e-12


# ------------------------------------------------------------------------------------------ prices and state


class FakeEc2:
    """DescribeInstances by the run's tag and DescribeSpotPriceHistory, as EC2 answers them."""

    def __init__(self, instances: list[dict[str, Any]], price: float) -> None:
        self.instances, self.price = instances, price
        self.price_reads: list[dict[str, Any]] = []

    def get_paginator(self, operation: str) -> Any:
        return self

    def paginate(self, **kwargs: Any) -> Any:
        if "ProductDescriptions" in kwargs:
            self.price_reads.append(kwargs)
            start = kwargs["StartTime"]
            history = [
                # an older price, then the one in effect at StartTime (the last change before it)
                {
                    "InstanceType": t,
                    "AvailabilityZone": "us-east-1a",
                    "SpotPrice": "9.0",
                    "Timestamp": start - timedelta(hours=3),
                }
                for t in kwargs["InstanceTypes"]
            ] + [
                {
                    "InstanceType": t,
                    "AvailabilityZone": "us-east-1a",
                    "SpotPrice": str(self.price),
                    "Timestamp": start - timedelta(minutes=1),
                }
                for t in kwargs["InstanceTypes"]
            ]
            return [{"SpotPriceHistory": history}]
        wanted = {v for f in kwargs["Filters"] if f["Name"] == "instance-id" for v in f["Values"]}
        found = [i for i in self.instances if not wanted or i["InstanceId"] in wanted]
        return [{"Reservations": [{"Instances": found}]}]


def a_run(**limits: Any) -> RunState:
    spec = BackfillSpec.model_validate(sample_spec(**limits))
    return RunState(run_id="r-budget", spec=spec)


def test_spot_prices_are_the_ones_in_effect_and_read_again_only_every_few_minutes():
    run = a_run()
    ec2 = FakeEc2([instance(launched=0)], price=0.36)

    budget.accrue_run(run, at(100), ec2)
    ec2.price = 0.72
    budget.accrue_run(run, at(100 + budget.SPOT_PRICE_REFRESH_SECONDS - 1), ec2)
    assert len(ec2.price_reads) == 1
    assert run.budget.accrued_usd == pytest.approx(0.36 * (budget.SPOT_PRICE_REFRESH_SECONDS + 99) / 3600)

    before = run.budget.accrued_usd
    budget.accrue_run(run, at(100 + budget.SPOT_PRICE_REFRESH_SECONDS + 9), ec2)
    assert len(ec2.price_reads) == 2
    assert ec2.price_reads[-1]["StartTime"] == ec2.price_reads[-1]["EndTime"]
    assert run.budget.accrued_usd - before == pytest.approx(0.72 * 10 / 3600)


def test_the_run_state_stays_small_however_many_instances_the_fleet_ran():
    few, many = a_run(), a_run()
    budget.accrue_run(few, at(600), FakeEc2([instance(f"i-{n}") for n in range(3)], 0.1))
    budget.accrue_run(many, at(600), FakeEc2([instance(f"i-{n}") for n in range(5000)], 0.1))

    assert many.budget.accrued_usd == pytest.approx(5000 / 3 * few.budget.accrued_usd)
    assert len(many.model_dump_json()) - len(few.model_dump_json()) < 40  # only the digits of one number


def test_a_finished_drain_raises_budget_reached_naming_the_cap_and_redrive_and_no_second_cost_figure():
    run = a_run(max_total_usd=0.0002)
    run.shards_total = 10
    run.progress.outputs_done = 4
    run.budget.accrued_usd, run.budget.projected_usd = 0.00012345, 0.00020001
    budget.check_budget(run, 0, at(10))  # not draining: nothing to end

    run.budget.draining_since = at(0)
    with pytest.raises(BudgetReached) as raised:
        budget.check_budget(run, 0, at(10))
    message = str(raised.value)
    assert "limits.max_total_usd = $0.0002000" in message
    assert "0.0001234" not in message  # the report's cost, beside the reason, is the one figure
    assert "about 6 unfinished" in message and f"spotfill redrive {run.run_id} --max-total-usd" in message

    run.progress.state = "done"
    budget.check_budget(run, 0, at(10))  # a run that finished anyway is a finished run


def test_dollars_keep_four_significant_digits_however_small():
    assert budget.format_usd(0.0002) == "0.0002000"
    assert budget.format_usd(0.000123456) == "0.0001235"
    assert budget.format_usd(12.5) == "12.50"
    assert budget.format_usd(1234.5) == "1234.50"
    assert budget.format_usd(0) == "0.00"


# ------------------------------------------------------------------------------------------ the spec


def test_the_cap_is_optional_and_takes_any_positive_number():
    assert a_run().spec.limits.max_total_usd is None
    assert a_run(max_total_usd=0.0002).spec.limits.max_total_usd == 0.0002
    assert a_run(max_total_usd=200).spec.limits.max_total_usd == 200.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, "greater than 0"),
        (-5, "greater than 0"),
        ("200", "valid number"),
        (True, "valid number"),
        (float("inf"), "finite number"),
    ],
)
def test_a_cap_that_is_not_a_positive_number_is_refused_naming_the_field(value, reason):
    with pytest.raises(InvalidSpecError) as refused:
        spec_from_document(sample_spec(max_total_usd=value))
    assert "limits.max_total_usd" in str(refused.value)
    assert reason in str(refused.value)


def test_the_least_a_run_can_cost_is_one_instance_of_its_cheapest_price_through_boot_and_one_poll():
    # given two types, spot prices in two zones each, and their on-demand prices
    prices = {("c5.large", "a"): 0.04, ("c5.large", "b"): 0.03, ("m5.large", "a"): 0.035}
    on_demand = {"c5.large": 0.085, "m5.large": 0.096}
    # when the fleet may run spot / then its cheapest instance is the cheapest spot price in any zone
    assert budget.cheapest_instance(["c5.large", "m5.large"], prices, on_demand, spot=True) == (
        "c5.large",
        0.03,
        "spot",
    )
    # a type with no spot price known is priced on demand, as the budget prices it
    assert budget.cheapest_instance(["c6i.large"], {}, {"c6i.large": 0.085}, spot=True)[1:] == (
        0.085,
        "on-demand",
    )
    # an on-demand-only fleet at its cheapest on-demand price
    assert budget.cheapest_instance(["c5.large", "m5.large"], prices, on_demand, spot=False) == (
        "c5.large",
        0.085,
        "on-demand",
    )
    # and the least cost is that price over the boot allowance and one poll interval
    assert budget.least_cost_usd(3.6, 30) == pytest.approx(3.6 * (budget.BOOT_ALLOWANCE_SECONDS + 30) / 3600)
