"""The exact count part by part, dead letters moved into S3, and a report without full listings (issue 17).

Runs of a few hundred to a few thousand shards in small parts (PART_SIZE 10 to 500), stored as PrepareRun
stores them, against moto; the S3 calls are counted with a botocore hook on the client the code is given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from spotfill_control.aws import Clients
from spotfill_control.deadline import Deadline
from spotfill_control.finishing import report, report_facts
from spotfill_control.monitoring import dead_letters, poll, progress, reconcile
from spotfill_control.run import RunState
from spotfill_control.shards import ShardListWriter, ShardNamer
from spotfill_control.spec import BackfillSpec

from .conftest import CONTROL_BUCKET, DATA_BUCKET, ROWS_PER_SHARD, sample_spec
from .memory_sqs import MemoryQueue, RoutedSqs

pytestmark = pytest.mark.aws

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class S3Calls:
    """ListObjectsV2 calls (with their parameters) and every operation's count, as the client makes them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))

    def listings(self, bucket: str) -> list[dict[str, Any]]:
        return [p for name, p in self.calls if name == "ListObjectsV2" and p["Bucket"] == bucket]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def s3_calls(world) -> Iterator[S3Calls]:
    recorder = S3Calls()
    events = world.s3.meta.events
    events.register("before-parameter-build.s3", recorder, unique_id="verification-recorder")
    yield recorder
    events.unregister("before-parameter-build.s3", unique_id="verification-recorder")


class Run:
    """A prepared run of `count` shards stored in parts of `part_size`, with its queue (moto) and its
    dead-letter queue (in memory: thousands of messages)."""

    def __init__(self, world, count: int, part_size: int, run_id: str = "verify-run") -> None:
        spec = BackfillSpec.model_validate(sample_spec())
        self.world, self.run_id = world, run_id
        self.shards = [f"s3://{DATA_BUCKET}/inputs/digits/s-{i:06d}.npy" for i in range(count)]
        namer = ShardNamer(spec.input, spec.output, CONTROL_BUCKET, run_id)
        self.outputs = [namer.ref(s, False).output for s in self.shards]
        queue = world.sqs.create_queue(QueueName=f"spotfill-{run_id}")["QueueUrl"]
        self.dlq = MemoryQueue(f"https://sqs.us-east-1.amazonaws.com/123456789012/spotfill-{run_id}-dlq")
        self.state = RunState(run_id=run_id, spec=spec, shards_total=count, phase="monitoring")
        self.state.resources.queue_url = queue
        self.state.resources.dead_letter_queue_url = self.dlq.url
        self.state.timeline.started_at = NOW

        def put(key: str, body: bytes) -> None:
            world.s3.put_object(Bucket=CONTROL_BUCKET, Key=key, Body=body)

        writer = ShardListWriter(run_id, spec.input, spec.output, put, part_size=part_size)
        for shard in self.shards:
            writer.add(shard, False)
        writer.close()
        self.clients = Clients(s3=world.s3, sqs=RoutedSqs(world.sqs, self.dlq), ec2=None, ecs=None)

    def write_outputs(self, indices) -> None:
        for i in indices:
            key = self.outputs[i][len(f"s3://{DATA_BUCKET}/") :]
            self.world.s3.put_object(
                Bucket=DATA_BUCKET, Key=key, Body=b"x", Metadata={"spotfill-rows": str(ROWS_PER_SHARD)}
            )

    def dead_letter(self, indices) -> list[str]:
        for i in indices:
            self.dlq.send(json.dumps({"run_id": self.run_id, "shard": self.shards[i]}))
        return [self.shards[i] for i in indices]

    def poll(self, deadline: Deadline | None = None) -> progress.Iteration:
        budget = {} if deadline is None else {"deadline": deadline}
        self.state, seen = poll.iterate(self.state, self.clients, CONTROL_BUCKET, NOW, **budget)
        return seen

    def take_queue(self) -> list[str]:
        """Workers take (and finish) whatever was queued again."""
        return self.world.drain_queue({"resources": {"queue_url": self.state.resources.queue_url}})


class WorkClock:
    """A clock that reads one second more for each unit of work (a part verified, a batch of dead letters
    received): a Deadline(n) on it has time for about n units, whatever the machine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        for module, name in ((reconcile, "verify_part"), (dead_letters, "_receive_batch")):
            monkeypatch.setattr(module, name, self._ticking(getattr(module, name)))

    def _ticking(self, work: Any) -> Any:
        def one_second(*args: Any, **kwargs: Any) -> Any:
            self.now += 1.0
            return work(*args, **kwargs)

        return one_second

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def work_clock(monkeypatch: pytest.MonkeyPatch) -> WorkClock:
    return WorkClock(monkeypatch)


# ------------------------------------------------------------------------------------------ the Monitor


def test_an_idle_poll_lists_only_open_parts_and_once_all_are_settled_lists_nothing(world, s3_calls):
    # given 50 shards in 5 parts of 10, every output written but one in the fourth part (a shard lost)
    run = Run(world, 50, part_size=10)
    run.write_outputs(i for i in range(50) if i != 34)

    # when the idle queue is first polled, then each part's key range is listed once, the lost shard queued
    s3_calls.clear()
    seen = run.poll()
    listings = s3_calls.listings(DATA_BUCKET)
    assert len(listings) == 5
    assert [p.get("StartAfter") for p in listings] == [
        run.outputs[i][len(f"s3://{DATA_BUCKET}/") : -1] for i in (0, 10, 20, 30, 40)
    ]
    assert (seen.requeued, seen.outputs_done, run.state.progress.state) == (1, 49, "running")
    assert run.take_queue() == [run.shards[34]]

    # when the worker wrote it and the queue is idle again, then only the fourth part is listed: run done
    run.write_outputs([34])
    s3_calls.clear()
    seen = run.poll()
    assert [p.get("StartAfter") for p in s3_calls.listings(DATA_BUCKET)] == [
        run.outputs[30][len(f"s3://{DATA_BUCKET}/") : -1]
    ]
    assert (seen.outputs_done, seen.exact, run.state.progress.state) == (50, True, "done")

    # and a poll after every part settled lists no output at all
    s3_calls.clear()
    run.poll()
    assert s3_calls.listings(DATA_BUCKET) == []
    assert run.state.progress.outputs_done == 50


def test_busy_polls_settle_finished_parts_ahead_so_the_idle_end_lists_only_the_last(
    world, s3_calls, monkeypatch
):
    # given a run of 5 parts of 10 whose first three parts are done, the fourth half done, work still queued
    from spotfill_control import shards

    monkeypatch.setattr(shards, "PART_SIZE", 10)
    run = Run(world, 50, part_size=10)
    run.write_outputs(range(35))
    queued = json.dumps({"run_id": run.run_id, "shard": run.shards[40]})
    world.sqs.send_message(QueueUrl=run.state.resources.queue_url, MessageBody=queued)

    # when a busy poll looks, then it settles the three finished parts, stops at the fourth, requeues nothing
    s3_calls.clear()
    seen = run.poll()
    assert (seen.parts_settled, seen.parts_verified, seen.requeued, seen.exact) == (3, 4, 0, False)
    assert len(s3_calls.listings(DATA_BUCKET)) == 4
    # and the next busy poll lists from the fourth part on
    s3_calls.clear()
    assert run.poll().parts_verified == 1 and len(s3_calls.listings(DATA_BUCKET)) == 1

    # when the work is done and the queue idle, then only the last two parts are listed, to the exact count
    run.take_queue()
    run.write_outputs(range(35, 50))
    s3_calls.clear()
    seen = run.poll()
    assert len(s3_calls.listings(DATA_BUCKET)) == 2
    assert (seen.exact, seen.outputs_done, run.state.progress.state) == (True, 50, "done")


def test_another_runs_objects_under_the_same_output_prefix_are_neither_counted_nor_listed(world, s3_calls):
    # given 200 shards with 150 outputs, and 2,500 objects of another run under the same output prefix (some
    # within this run's key range, most after it)
    run = Run(world, 200, part_size=100)
    run.write_outputs(range(150))
    for i in range(0, 200, 20):
        world.s3.put_object(Bucket=DATA_BUCKET, Key=f"outputs/digits/s-{i:06d}.other.npy", Body=b"o")
    for i in range(2_490):
        world.s3.put_object(Bucket=DATA_BUCKET, Key=f"outputs/digits/zz-other-run/{i:05d}.npy", Body=b"o")

    # when the idle queue is polled
    s3_calls.clear()
    seen = run.poll()

    # then exactly this run's 150 outputs count, the 50 shards without one are queued again
    assert (seen.outputs_done, seen.requeued, seen.remaining) == (150, 50, 50)
    # and the listing stopped at the end of each part's range: one page per part, none of the other run's
    assert seen.listed_pages == 2
    assert len(s3_calls.listings(DATA_BUCKET)) == 2


def test_a_poll_with_a_tiny_time_budget_stops_and_the_next_continues_to_the_same_exact_count(
    world, work_clock
):
    # given 60 shards in 6 parts, 3 of them lost in the last part
    run = Run(world, 60, part_size=10)
    run.write_outputs(i for i in range(60) if i not in (51, 52, 53))

    # when a poll has time for two parts only
    seen = run.poll(Deadline(4, clock=work_clock))

    # then it verified some parts and stopped, the run goes on, and the checkpoint says where it stopped
    checkpoint = reconcile.load_checkpoint(run.run_id, world.s3, CONTROL_BUCKET)
    first = seen.parts_verified
    assert 0 < first < 6 and not seen.exact and run.state.progress.state == "running"
    assert checkpoint.cursor == first and sorted(checkpoint.parts) == list(range(first))

    # when the next poll has time enough, then it goes on from there, never verifying a part twice
    before = run.state.model_copy(deep=True)
    seen = run.poll(Deadline(3600))
    assert seen.parts_verified == 6 - first
    assert (seen.exact, seen.outputs_done, seen.requeued) == (True, 57, 3)

    # and a retry of that poll (the Lambda crashed after its work, before the state was kept) counts the same
    run.take_queue()
    run.state = before
    again = run.poll(Deadline(3600))
    assert (again.exact, again.outputs_done, again.dead_letters) == (True, 57, 0)
    assert again.parts_verified == 1  # only the open part: the settled ones are never listed again


def test_thousands_of_dead_letters_are_counted_exactly_and_kept_with_one_batch_in_flight(world):
    # given 2,600 shards: 100 outputs, 2,500 poisoned shards in the dead-letter queue
    run = Run(world, 2_600, part_size=500)
    run.write_outputs(range(100))
    poisoned = run.dead_letter(range(100, 2_600))

    # when the idle queue is polled
    seen = run.poll()

    # then every dead letter was moved into S3 (three records) and counted, the run is done, nothing requeued
    assert (seen.dead_letters, seen.outputs_done, seen.requeued) == (2_500, 100, 0)
    assert run.state.progress.state == "done"
    assert dead_letters.read_dead_letters(run.run_id, world.s3, CONTROL_BUCKET) == sorted(poisoned)
    assert run.dlq.shards() == []
    # and never more than one batch was in flight, far below SQS's 120,000
    assert run.dlq.most_in_flight <= dead_letters.DRAIN_BATCH + 9


def test_dead_letters_a_short_poll_missed_are_received_by_long_polls_not_requeued_as_lost(world):
    # given 3 shards in the dead-letter queue whose short polls answer empty twice (servers missed)
    run = Run(world, 30, part_size=10)
    run.write_outputs(range(27))
    failed = run.dead_letter([27, 28, 29])
    run.dlq.empty_short_polls = 2

    # when the idle queue is polled
    seen = run.poll()

    # then they are moved and counted as dead letters: none is queued again as lost
    assert (seen.dead_letters, seen.requeued, run.state.progress.state) == (3, 0, "done")
    assert dead_letters.read_dead_letters(run.run_id, world.s3, CONTROL_BUCKET) == failed


def test_a_busy_poll_moves_dead_letters_within_its_budget_and_counts_them_stored(world, work_clock):
    # given work still queued, and 2,500 dead letters
    run = Run(world, 3_000, part_size=1_000)
    world.sqs.send_message(QueueUrl=run.state.resources.queue_url, MessageBody="{}")
    run.dead_letter(range(2_500))

    # when a poll has time for about one batch, then it stores one batch and counts the rest from the depth
    seen = run.poll(Deadline(2, clock=work_clock))
    assert 0 < seen.dead_letters_stored < 2_500
    assert seen.dead_letters == 2_500
    # and the next poll goes on where it stopped
    seen = run.poll()
    assert run.state.progress.dead_letters_stored == 2_500 and run.dlq.shards() == []


# ------------------------------------------------------------------------------------------ the report


def test_the_report_counts_from_the_verified_parts_without_listing_outputs(world, s3_calls):
    # given a finished run of 300 shards in 3 parts: 290 outputs (one after a failure), 10 dead letters
    run = Run(world, 300, part_size=100)
    run.write_outputs(range(290))
    failed = run.dead_letter(range(290, 300))
    _write_error_record(world, run, 5)  # a shard that failed once, then succeeded
    _write_error_record(world, run, 295)
    run.poll()
    assert run.state.progress.state == "done"

    # when the report gathers its facts
    s3_calls.clear()
    facts = report_facts.gather(run.state, world.s3, None, CONTROL_BUCKET, NOW)

    # then it listed no output and read no part beyond the few it samples predictions from
    assert s3_calls.listings(DATA_BUCKET) == []
    # and its numbers are exact
    assert (facts.succeeded, facts.failed_keys, facts.unprocessed, facts.retried) == (290, failed, 0, 1)
    assert [e["shard"] for e in facts.failed_errors] == [run.shards[295]]
    assert (facts.predictions, facts.predictions_exact) == (290 * ROWS_PER_SHARD, True)
    assert facts.verified and facts.verification is None


def test_a_report_finishes_the_verification_a_stopped_run_left_open(world, s3_calls):
    # given a run that stopped (stall) before the Monitor verified anything: 40 of 50 outputs, 5 dead letters
    run = Run(world, 50, part_size=10)
    run.write_outputs(range(40))
    run.dead_letter(range(40, 45))
    dead_letters.drain(run.run_id, run.dlq.url, run.clients.sqs, world.s3, CONTROL_BUCKET, Deadline(60))

    # when the report gathers its facts, then it verifies each part once, by its key range
    s3_calls.clear()
    facts = report_facts.gather(run.state, world.s3, None, CONTROL_BUCKET, NOW)
    assert len(s3_calls.listings(DATA_BUCKET)) == 5
    assert (facts.succeeded, len(facts.failed_keys), facts.unprocessed, facts.verified) == (40, 5, 5, True)


def test_a_report_out_of_time_says_its_count_is_incomplete_instead_of_failing(world, work_clock):
    # given a run the Monitor never verified, and a report with time for two parts of six
    run = Run(world, 60, part_size=10)
    run.write_outputs(range(60))

    # when the report is written
    facts = report_facts.gather(run.state, world.s3, None, CONTROL_BUCKET, NOW, Deadline(3, clock=work_clock))
    document = report.build_report(
        run.state,
        run_id=run.run_id,
        error=report.StepError(Error="StallError", Cause="stalled"),
        teardown_error=None,
        facts=facts,
        now=NOW,
        control_bucket=CONTROL_BUCKET,
    )

    # then it counts what it verified and says, in a field and a sentence, what it could not
    shards = document["shards"]
    assert shards["verified"] is False
    assert shards["succeeded"] + shards["unverified"] == 60 and shards["unverified"] > 0
    assert "the count is incomplete" in shards["verification"]
    assert "not verified within the report's time budget" in document["reason"]


def test_a_report_reads_the_dead_letters_of_a_run_torn_down_before_the_records(world):
    # given a run whose teardown kept its dead letters in the single object of the old layout
    run = Run(world, 20, part_size=10)
    run.write_outputs(range(18))
    legacy = [run.shards[18], run.shards[19]]
    world.s3.put_object(
        Bucket=CONTROL_BUCKET,
        Key=dead_letters.legacy_key(run.run_id),
        Body=json.dumps({"run_id": run.run_id, "shards": legacy}).encode(),
    )

    # when the report gathers its facts, then those shards are its failed ones
    facts = report_facts.gather(run.state, world.s3, None, CONTROL_BUCKET, NOW)
    assert (facts.succeeded, facts.failed_keys, facts.unprocessed) == (18, legacy, 0)


def _write_error_record(world, run: Run, index: int) -> None:
    namer = ShardNamer(run.state.spec.input, run.state.spec.output, CONTROL_BUCKET, run.run_id)
    key = namer.ref(run.shards[index], False).error[len(f"s3://{CONTROL_BUCKET}/") :]
    world.s3.put_object(Bucket=CONTROL_BUCKET, Key=key, Body=json.dumps({"error": "boom"}).encode())
