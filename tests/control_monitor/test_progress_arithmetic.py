"""The monitoring loop's arithmetic, without AWS."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from spotfill_control.errors import RunTimeoutError, StallError
from spotfill_control.fleet.cluster import desired_count
from spotfill_control.monitoring import fleet_watch, handover, progress
from spotfill_control.run import Progress, RunState
from spotfill_control.shards import Shard
from spotfill_control.spec import (
    DEFAULT_HANDOVER_AFTER_ITERATIONS,
    EVENTS_PER_LAMBDA_RETRY,
    EVENTS_PER_MONITOR_ITERATION,
    HISTORY_EVENT_LIMIT,
    BackfillSpec,
)

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
lowered = fleet_watch.lowered_capacity
interrupted = fleet_watch.count_interruptions


def make_run(**limits) -> RunState:
    spec = BackfillSpec.model_validate(
        {
            "input": {"uri": "s3://data/in/", "format": "npy"},
            "output": {"uri": "s3://data/out/"},
            "model": {"uri": "s3://data/model.keras"},
            "fleet": {"instance_types": ["c5.xlarge"]},
            "limits": {"max_runtime_seconds": 3600, "stall_timeout_seconds": 600, **limits},
        }
    )
    run = RunState(run_id="r-1", spec=spec, state_machine_arn="arn:aws:states:us-east-1:1:stateMachine:sm")
    run.timeline.started_at = T0
    return run


def shard(name: str) -> Shard:
    return Shard(
        shard=f"s3://data/in/{name}.npy", output=f"s3://data/out/{name}.parquet", error=f"s3://c/{name}"
    )


# ------------------------------------------------------------------------------------------ done and lost


def test_a_run_is_done_when_outputs_and_dead_letters_cover_every_shard():
    assert progress.is_done(total=10, outputs_done=8, dead_lettered=2)
    assert not progress.is_done(total=10, outputs_done=8, dead_lettered=1)


def test_lost_shards_have_neither_output_nor_dead_letter():
    a, b, c = shard("a"), shard("b"), shard("c")
    lost = progress.lost_shards([a, b, c], present_outputs={a.output}, dead_lettered={b.shard})
    assert lost == [c]


def test_queue_depth_is_idle_only_with_nothing_visible_in_flight_or_delayed():
    assert progress.QueueDepth().idle
    assert not progress.QueueDepth(in_flight=1).idle
    assert not progress.QueueDepth(delayed=1).idle
    assert progress.QueueDepth(visible=2, in_flight=3, delayed=1).total == 6


def test_progress_is_estimated_as_queued_shards_neither_in_the_queue_nor_dead_lettered():
    queue, dlq = progress.QueueDepth(visible=50, in_flight=8, delayed=2), progress.QueueDepth(visible=3)
    # (outputs done, dead letters, remaining)
    assert progress.estimated_progress(100, queue, dlq, previous_done=0) == (37, 3, 60)


def test_a_dip_in_the_approximate_queue_counts_never_lowers_the_estimate():
    # SQS reported 10 more messages for a moment: the estimate keeps the last figure, so the recovery that
    # follows is not taken for progress
    queue = progress.QueueDepth(visible=70)
    assert progress.estimated_progress(100, queue, progress.QueueDepth(), previous_done=40) == (40, 0, 60)


def test_the_estimate_stays_within_the_queued_shards():
    duplicates = progress.QueueDepth(visible=130)  # at-least-once delivery: more messages than shards
    assert progress.estimated_progress(100, duplicates, progress.QueueDepth(), previous_done=0) == (0, 0, 100)
    dead = progress.QueueDepth(visible=120)
    assert progress.estimated_progress(100, progress.QueueDepth(), dead, previous_done=0) == (0, 100, 0)


def test_a_reservoir_keeps_a_bounded_uniform_sample():
    reservoir = progress.Reservoir(5, random.Random(1))
    for i in range(10_000):
        reservoir.add(str(i))
    assert reservoir.seen == 10_000 and len(reservoir.items) == 5
    assert max(int(i) for i in reservoir.items) > 5


# ------------------------------------------------------------------------------------------ throughput


def test_rate_is_items_per_second_between_two_looks():
    assert progress.rate(10, 70, T0, T0 + timedelta(seconds=60)) == 1.0


def test_rate_is_zero_without_an_earlier_look_or_elapsed_time():
    assert progress.rate(0, 5, None, T0) == 0.0
    assert progress.rate(0, 5, T0, T0) == 0.0


def test_rate_never_goes_negative_when_outputs_disappear():
    assert progress.rate(10, 8, T0, T0 + timedelta(seconds=10)) == 0.0


def test_mean_rows_per_shard_comes_from_the_sample():
    assert progress.mean_rows_per_shard(Progress()) is None
    assert progress.mean_rows_per_shard(Progress(rows_sampled_outputs=4, rows_sampled_total=1000)) == 250


# ------------------------------------------------------------------------------------------ capacity


def test_capacity_is_lowered_to_what_the_remaining_shards_need():
    # 3 shards left, 2 tasks per instance: 2 instances; heaviest weight 1: 2 units
    assert lowered(current=10, remaining_shards=3, tasks_per_instance=2, max_weight=1) == 2


def test_capacity_counts_each_needed_instance_at_the_heaviest_weight():
    assert lowered(current=10, remaining_shards=3, tasks_per_instance=1, max_weight=2) == 6


def test_capacity_is_never_raised_and_never_lowered_while_the_fleet_is_busy():
    assert lowered(current=4, remaining_shards=100, tasks_per_instance=1, max_weight=1) is None
    assert lowered(current=4, remaining_shards=4, tasks_per_instance=1, max_weight=1) is None


def test_capacity_never_drops_to_zero():
    assert lowered(current=4, remaining_shards=0, tasks_per_instance=1, max_weight=1) == 1


def test_desired_count_rises_with_every_registered_instance_while_work_is_plenty():
    # 100 shards left, 2 tasks per instance: each instance that registers adds two tasks
    assert [desired_count(n, 2, remaining_shards=100) for n in (1, 2, 3, 10)] == [2, 4, 6, 20]


def test_desired_count_is_one_task_per_remaining_shard_at_most():
    assert desired_count(registered_instances=8, tasks_per_instance=1, remaining_shards=3) == 3
    assert desired_count(registered_instances=2, tasks_per_instance=1, remaining_shards=3) == 2


def test_desired_count_is_never_zero_while_work_remains():
    assert desired_count(registered_instances=0, tasks_per_instance=2, remaining_shards=5) == 1
    assert desired_count(registered_instances=4, tasks_per_instance=2, remaining_shards=0) == 1


def test_a_count_lowered_for_few_shards_is_not_raised_again_by_late_capacity():
    # given the count lowered to the 2 shards left while 2 instances had registered
    lowered_count = desired_count(registered_instances=2, tasks_per_instance=2, remaining_shards=2)
    # when 8 more instances register and the shards keep falling, the count only falls
    later = [desired_count(10, 2, remaining) for remaining in (2, 1, 1)]
    assert [lowered_count, *later] == [2, 2, 1, 1]


def test_a_fleet_past_its_valid_until_ends_the_run_as_timed_out():
    # given a fleet EC2 expired (ValidUntil passed: it terminated the instances) while shards remain
    run = make_run()
    run.resources.fleet_id = "sfr-1"
    seen = progress.Iteration(remaining=3, fleet_state="cancelled", fleet_valid_until=T0)
    # then the run times out, naming the expiry and the limit behind it
    with pytest.raises(RunTimeoutError, match=r"sfr-1 expired at .*limits\.max_runtime_seconds.*3 shard"):
        progress.check_fleet(run, seen, now=T0 + timedelta(seconds=1))


def test_a_fleet_cancelled_before_its_valid_until_is_a_fleet_error():
    from spotfill_control.errors import FleetRequestError

    run = make_run()
    seen = progress.Iteration(remaining=3, fleet_state="cancelled", fleet_valid_until=T0)
    with pytest.raises(FleetRequestError, match="is cancelled while 3 shard"):
        progress.check_fleet(run, seen, now=T0 - timedelta(seconds=1))


# ------------------------------------------------------------------------------------------ interruptions


def test_an_instance_gone_from_a_fleet_at_full_target_is_an_interruption():
    known = {"i-1": 1.0, "i-2": 1.0}
    assert interrupted(known, alive={"i-2", "i-3"}, target_capacity=2, fleet_active=True) == 1


def test_instances_removed_after_we_lowered_the_target_are_not_interruptions():
    known = {"i-1": 1.0, "i-2": 1.0, "i-3": 1.0, "i-4": 1.0}
    assert interrupted(known, alive={"i-1", "i-2"}, target_capacity=2, fleet_active=True) == 0


def test_removals_beyond_the_lowered_target_are_interruptions():
    known = {"i-1": 1.0, "i-2": 1.0, "i-3": 1.0, "i-4": 1.0}
    assert interrupted(known, alive={"i-1"}, target_capacity=2, fleet_active=True) == 1


def test_weighted_instances_are_explained_by_the_units_released():
    # target lowered from 4 to 2 units: the fleet may drop one weight-2 instance, not two
    known = {"big-1": 2.0, "big-2": 2.0}
    assert interrupted(known, alive={"big-2"}, target_capacity=2, fleet_active=True) == 0
    assert interrupted(known, alive=set(), target_capacity=2, fleet_active=True) == 1


def test_nothing_counts_as_an_interruption_once_the_fleet_is_no_longer_active():
    assert interrupted({"i-1": 1.0}, alive=set(), target_capacity=1, fleet_active=False) == 0


# ------------------------------------------------------------------------------------------ limits


def test_a_run_that_made_no_progress_for_the_stall_timeout_stalls():
    run = make_run()
    run.progress.last_progress_at = T0
    progress.enforce_limits(run, T0 + timedelta(seconds=600))  # exactly the timeout: still fine
    with pytest.raises(StallError, match="stall_timeout_seconds = 600"):
        progress.enforce_limits(run, T0 + timedelta(seconds=601))


def test_a_run_past_its_maximum_runtime_times_out():
    run = make_run()
    run.progress.last_progress_at = T0 + timedelta(seconds=3500)
    with pytest.raises(RunTimeoutError, match="max_runtime_seconds = 3600"):
        progress.enforce_limits(run, T0 + timedelta(seconds=3601))


def test_a_finished_run_is_never_failed_by_its_limits():
    run = make_run()
    run.progress.state = "done"
    run.progress.last_progress_at = T0
    progress.enforce_limits(run, T0 + timedelta(days=2))


# ------------------------------------------------------------------------------------------ handover


def test_the_default_handover_keeps_an_execution_well_under_the_history_limit():
    # every iteration with a Lambda retry, plus the states around the loop, stays under 25,000 events
    worst_case = DEFAULT_HANDOVER_AFTER_ITERATIONS * (EVENTS_PER_MONITOR_ITERATION + EVENTS_PER_LAMBDA_RETRY)
    assert worst_case <= HISTORY_EVENT_LIMIT - 10_000
    assert DEFAULT_HANDOVER_AFTER_ITERATIONS == 1250


def test_handover_is_due_after_the_configured_iterations():
    run = make_run(handover_after_iterations=2)
    run.progress.iterations_this_execution = 1
    assert not progress.handover_due(run)
    run.progress.iterations_this_execution = 2
    assert progress.handover_due(run)


def test_a_null_handover_override_means_the_default():
    run = make_run(handover_after_iterations=None)
    run.progress.iterations_this_execution = DEFAULT_HANDOVER_AFTER_ITERATIONS
    assert progress.handover_due(run)


def test_a_handover_override_past_the_history_limit_is_refused():
    with pytest.raises(ValueError, match="handover_after_iterations"):
        make_run(handover_after_iterations=5_000)


def test_the_resumed_run_counts_one_more_execution_and_starts_its_iterations_afresh():
    run = make_run()
    run.progress.iterations = 40
    run.progress.iterations_this_execution = 20
    run.progress.state = "handover"
    resumed = handover.resumed_run(run)
    assert resumed.executions == 2
    assert resumed.progress.iterations_this_execution == 0
    assert resumed.progress.iterations == 40
    assert resumed.progress.state == "running"
    assert run.progress.state == "handover"  # the original is untouched


def test_execution_arns_follow_from_the_state_machine_and_name():
    arn = handover.execution_arn_for("arn:aws:states:us-east-1:123:stateMachine:backfill", "r-1-2")
    assert arn == "arn:aws:states:us-east-1:123:execution:backfill:r-1-2"
    with pytest.raises(ValueError):
        handover.execution_arn_for("arn:aws:states:us-east-1:123:activity:x", "r-1-2")
