"""PrepareRun and Validate at scale: bounded by the part, not the input; resumable from the checkpoint.

Sizes here are small (a part of a few shards) so the parts, invocations and crashes happen on a handful of
objects in moto; the memory test streams 100,000 synthetic shards through in-memory stand-ins of S3 and SQS.
"""

from __future__ import annotations

import json
import random
import tracemalloc
from collections import Counter
from typing import Any

import pytest
from botocore.exceptions import ClientError
from spotfill_control import queues, shards
from spotfill_control.deadline import Deadline
from spotfill_control.errors import InvalidSpecError
from spotfill_control.run import RunState
from spotfill_control.setup import inputs, prepare
from spotfill_control.setup.checks import check_spec
from spotfill_control.setup.prepare import TIME_SHARE, prepare_run, queue_and_store_shards
from spotfill_control.spec import BackfillSpec

from spotfill.localcloud.pricing import emulated_facts

from .conftest import CONTROL_BUCKET, DATA_BUCKET, sample_spec, validated_run

pytestmark = pytest.mark.aws

PREFIX = "inputs/many/"


def _clients(world: Any, **replaced: Any) -> dict[str, Any]:
    clients = {name: getattr(world, name) for name in ("s3", "sqs", "ecs", "ec2", "ssm")}
    return clients | replaced


def _put_shards(world: Any, names: list[str], prefix: str = PREFIX) -> list[str]:
    for name in names:
        world.s3.put_object(Bucket=DATA_BUCKET, Key=prefix + name, Body=b"x")
    return [f"s3://{DATA_BUCKET}/{prefix}{name}" for name in sorted(names)]


def _validated(world: Any, lambda_context: Any, **overrides: Any) -> RunState:
    overrides = {"input__uri": f"s3://{DATA_BUCKET}/{PREFIX}"} | overrides
    return RunState.model_validate(validated_run(world, lambda_context, **overrides))


def _queued_shards(world: Any, queue_url: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    while messages := world.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages"):
        seen.update(json.loads(m["Body"])["shard"] for m in messages)
    return seen


class PartClock:
    """A clock that reads one second more each time PrepareRun looks up a part's existing outputs: a part
    takes one second, whatever the machine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0
        real = inputs.existing_among

        def one_second_a_part(*args: Any, **kwargs: Any) -> Any:
            self.now += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(inputs, "existing_among", one_second_a_part)

    def __call__(self) -> float:
        return self.now

    def budget(self, parts: float) -> Deadline:
        """An invocation's budget with time for `parts` parts."""
        return Deadline(parts, clock=self)


def _listing_calls(client: Any) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.s3.ListObjectsV2", lambda params, **_: calls.append(params)
    )
    return calls


class Crash(Exception):
    """A fault injected into one AWS call (the process dies there, as far as PrepareRun can tell)."""


class CrashOn:
    """A client whose `operation` raises `Crash` on its `nth` call whose Key (if any) contains `key_part`."""

    def __init__(self, inner: Any, operation: str, nth: int, key_part: str = "") -> None:
        self._inner, self._operation, self._nth, self._key_part = inner, operation, nth, key_part
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name != self._operation:
            return attribute

        def crashing(**kwargs: Any) -> Any:
            if self._key_part in kwargs.get("Key", ""):
                self.calls += 1
                if self.calls == self._nth:
                    raise Crash(f"{name} #{self.calls}")
            return attribute(**kwargs)

        return crashing


# ---------------------------------------------------------------------------------------------- time budget


def test_prepare_out_of_time_continues_from_its_checkpoint_and_queues_every_shard_once(
    world, lambda_context, monkeypatch
):
    clock = PartClock(monkeypatch)
    # given 25 shards, parts of 4 (7 parts), and invocations with time for 2 parts each
    monkeypatch.setattr(shards, "PART_SIZE", 4)
    expected = _put_shards(world, [f"s-{i:03d}.npy" for i in range(25)])
    run = _validated(world, lambda_context)
    calls = _listing_calls(world.s3)
    # when PrepareRun is invoked again while it returns phase "preparing" (as IsPrepared does)
    phases = []
    while True:
        run = prepare_run(run, settings=world.settings, budget=clock.budget(2), **_clients(world))
        phases.append(run.phase)
        if run.phase != "preparing":
            break
    # then it took 4 invocations, and every shard was queued exactly once
    assert phases == ["preparing"] * 3 + ["prepared"]
    assert _queued_shards(world, run.resources.queue_url) == Counter(expected)
    assert (run.shards_total, run.shards_skipped) == (25, 0)
    index = shards.read_shard_index(run.run_id, world.s3, CONTROL_BUCKET)
    assert [p.count for p in index.parts] == [4] * 6 + [1]
    listed = shards.read_shard_list(run.run_id, world.s3, CONTROL_BUCKET)
    assert [s.shard for s in listed.shards] == expected
    # and each later invocation listed the input from where the stored parts ended, never from its start
    input_listings = [c for c in calls if c["Prefix"] == PREFIX and "ContinuationToken" not in c]
    assert [c.get("StartAfter") for c in input_listings] == [
        None,
        f"{PREFIX}s-007.npy",
        f"{PREFIX}s-015.npy",
        f"{PREFIX}s-023.npy",
    ]


def test_prepare_starts_no_part_that_would_end_past_its_budget(world, lambda_context, monkeypatch):
    clock = PartClock(monkeypatch)
    # given 12 shards in parts of 4, and invocations with time for two and a half parts
    monkeypatch.setattr(shards, "PART_SIZE", 4)
    _put_shards(world, [f"s-{i:03d}.npy" for i in range(12)])
    run = _validated(world, lambda_context)
    # when PrepareRun runs until prepared, each invocation timed on the part clock
    spent = []
    while run.phase != "prepared":
        started = clock.now
        run = prepare_run(run, settings=world.settings, budget=clock.budget(2.5), **_clients(world))
        spent.append(clock.now - started)
    # then each did two parts and stopped before a third would have ended past its budget
    assert spent == [2, 1]


def test_the_prepare_handler_budgets_half_the_time_its_invocation_has_left():
    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 900_000

    assert Deadline.of_invocation(Context(), 0, share=TIME_SHARE).seconds == 450


# ---------------------------------------------------------------------------------------------- crashes


def test_prepare_crashed_after_some_parts_resumes_without_resending_stored_parts(
    world, lambda_context, monkeypatch
):
    # given 25 shards in parts of 4, and a PrepareRun whose third SendMessageBatch crashes the invocation
    monkeypatch.setattr(shards, "PART_SIZE", 4)
    expected = _put_shards(world, [f"s-{i:03d}.npy" for i in range(25)])
    run = _validated(world, lambda_context)
    with pytest.raises(Crash):
        prepare_run(
            run, settings=world.settings, **_clients(world, sqs=CrashOn(world.sqs, "send_message_batch", 3))
        )
    # when the state is retried with the run it was given
    prepared = prepare_run(run, settings=world.settings, **_clients(world))
    # then the two stored parts were not sent again: every shard is in the queue exactly once
    assert prepared.phase == "prepared"
    assert _queued_shards(world, prepared.resources.queue_url) == Counter(expected)


def test_a_crash_between_a_parts_messages_and_its_checkpoint_resends_that_part_only(
    world, lambda_context, monkeypatch
):
    # given a PrepareRun that crashes writing its third checkpoint (the third part's messages are sent)
    monkeypatch.setattr(shards, "PART_SIZE", 4)
    expected = _put_shards(world, [f"s-{i:03d}.npy" for i in range(25)])
    run = _validated(world, lambda_context)
    crashing = CrashOn(world.s3, "put_object", 3, key_part="checkpoint.json")
    with pytest.raises(Crash):
        prepare_run(run, settings=world.settings, **_clients(world, s3=crashing))
    # when retried
    prepared = prepare_run(run, settings=world.settings, **_clients(world))
    # then only the part in progress at the crash (shards 8-11) was sent twice, and the list holds each once
    queued = _queued_shards(world, prepared.resources.queue_url)
    assert queued == Counter(expected) + Counter(expected[8:12])
    listed = shards.read_shard_list(run.run_id, world.s3, CONTROL_BUCKET)
    assert [s.shard for s in listed.shards] == expected
    assert prepared.shards_total == 25


# ---------------------------------------------------------------------------------------------- outputs


def test_objects_of_other_runs_and_unrelated_keys_under_the_output_prefix_are_not_counted_as_skipped(
    world, lambda_context, monkeypatch
):
    # given 10 shards, one of whose outputs exists, and other objects under the output prefix among them
    monkeypatch.setattr(shards, "PART_SIZE", 3)
    _put_shards(world, [f"s-{i:03d}.npy" for i in range(10)])
    out = "outputs/digits/"
    for key in [
        "s-004.parquet",
        "s-004.parquet.tmp",
        "s-0045.parquet",
        "other-run/s-001.parquet",
        "notes.txt",
    ]:
        world.s3.put_object(Bucket=DATA_BUCKET, Key=out + key, Body=b"x")
    run = _validated(world, lambda_context)
    calls = _listing_calls(world.s3)
    # when prepared
    prepared = prepare_run(run, settings=world.settings, **_clients(world))
    # then only the one shard whose own output exists is skipped
    assert (prepared.shards_total, prepared.shards_skipped) == (10, 1)
    queued = _queued_shards(world, prepared.resources.queue_url)
    assert f"s3://{DATA_BUCKET}/{PREFIX}s-004.npy" not in queued and sum(queued.values()) == 9
    # and each part listed only the output key range its shards write, starting just below its first output
    output_listings = [
        c.get("StartAfter") for c in calls if c["Prefix"] == out and "ContinuationToken" not in c
    ]
    assert output_listings == [
        f"{out}s-000.parque",
        f"{out}s-003.parque",
        f"{out}s-006.parque",
        f"{out}s-009.parque",
    ]


def test_existing_among_stops_listing_past_the_parts_largest_output(world):
    # given 3,000 objects under the output prefix (three listing pages), the part's outputs on the first page
    for i in range(3000):
        world.s3.put_object(Bucket=DATA_BUCKET, Key=f"outputs/digits/o-{i:05d}.parquet", Body=b"")
    spec = BackfillSpec.model_validate(sample_spec())
    calls = _listing_calls(world.s3)
    wanted = [f"s3://{DATA_BUCKET}/outputs/digits/o-{i:05d}.parquet" for i in (10, 20, 5000)]
    # when the existing ones are asked for
    found = inputs.existing_among(wanted, spec.output, world.s3)
    # then the two that exist are found with the listing from the smallest up; o-05000 sorts past every object
    assert found == set(wanted[:2])
    wanted_near = wanted[:2]
    calls.clear()
    assert inputs.existing_among(wanted_near, spec.output, world.s3) == set(wanted_near)
    assert len(calls) == 1  # one page covers o-00010 .. o-00020


# ---------------------------------------------------------------------------------------------- collisions


def test_a_collision_across_parts_and_invocations_fails_with_validates_sentence(
    world, lambda_context, monkeypatch
):
    clock = PartClock(monkeypatch)
    # given a.jsonl and a.ndjson (both write a.parquet) with two shards between them, parts of 2, and
    # invocations with time for one part: the two land in different parts and different invocations (and on
    # one listing page, which Validate would have refused: past its first page only PrepareRun sees them)
    monkeypatch.setattr(shards, "PART_SIZE", 2)
    names = ["a.jsonl", "a.m.jsonl", "a.n.jsonl", "a.ndjson", "b.jsonl"]
    uris = _put_shards(world, names)
    spec = BackfillSpec.model_validate(
        sample_spec(input__uri=f"s3://{DATA_BUCKET}/{PREFIX}", input__format="jsonl")
    )
    run = RunState(run_id="collide-1", spec=spec, instance_types=emulated_facts(spec.fleet.instance_types))
    # when PrepareRun runs invocation after invocation
    run = prepare_run(run, settings=world.settings, budget=clock.budget(1), **_clients(world))
    assert run.phase == "preparing"
    with pytest.raises(InvalidSpecError) as failed:
        prepare_run(run, settings=world.settings, budget=clock.budget(1), **_clients(world))
    # then the second finds the collision, in the sentence Validate uses
    assert str(failed.value) == (
        f"input.uri: shards {uris[0]} and {uris[3]} would both write s3://{DATA_BUCKET}/outputs/digits/a.parquet."
    )


def _brute_force_collision(namer: shards.ShardNamer, uris: list[str]) -> tuple[str, str] | None:
    owner: dict[str, str] = {}
    for uri in uris:
        output = namer.ref(uri, False).output
        if output in owner:
            return owner[output], uri
        owner[output] = uri
    return None


@pytest.mark.parametrize("seed", range(40))
def test_open_stems_find_exactly_the_collisions_a_set_of_every_output_finds(seed):
    # given sorted keys from a small alphabet rich in dots and both jsonl extensions, split at random points
    rng = random.Random(seed)
    spec = BackfillSpec.model_validate(sample_spec(input__format="jsonl"))
    namer = shards.ShardNamer(spec.input, spec.output, CONTROL_BUCKET, "r-1")
    stems = {"".join(rng.choice("ab.") for _ in range(rng.randint(1, 5))) for _ in range(30)}
    keys = sorted({stem + rng.choice([".jsonl", ".ndjson", ".JSONL"]) for stem in stems for _ in range(2)})
    uris = [f"s3://{DATA_BUCKET}/inputs/digits/{key}" for key in keys]
    expected = _brute_force_collision(namer, uris)
    # when fed through OpenStems part by part, its state carried over as a checkpoint carries it
    state: list[tuple[str, str]] = []
    found = None
    position = 0
    while position < len(uris) and found is None:
        size = rng.randint(1, 4)
        check = shards.OpenStems(namer, state)
        try:
            for uri in uris[position : position + size]:
                check.add(namer.ref(uri, False))
        except InvalidSpecError as exc:
            found = exc
        state = json.loads(json.dumps(check.state))
        position += size
    # then it finds the first collision exactly when the set does, naming the same two shards
    if expected is None:
        assert found is None
    else:
        assert found is not None and f"shards {expected[0]} and {expected[1]} would" in str(found)


def test_a_manifests_collision_names_the_earlier_entry_first(world, lambda_context):
    # given a manifest whose entries 1 and 3 write one output, listed out of order
    entries = [
        f"s3://{DATA_BUCKET}/inputs/digits/b.ndjson",
        "s3://x/y.jsonl",
        f"s3://{DATA_BUCKET}/inputs/digits/b.jsonl",
    ]
    world.s3.put_object(Bucket=DATA_BUCKET, Key="inputs/digits/list.txt", Body="\n".join(entries).encode())
    spec = BackfillSpec.model_validate(
        sample_spec(input__uri=f"s3://{DATA_BUCKET}/inputs/digits/list.txt", input__format="jsonl")
    )
    run = RunState(run_id="r-1", spec=spec)
    queue_url = world.sqs.create_queue(QueueName="q")["QueueUrl"]
    with pytest.raises(InvalidSpecError) as failed:
        queue_and_store_shards(run, world.s3, world.sqs, CONTROL_BUCKET, queue_url)
    assert str(failed.value) == (
        f"input.uri: shards {entries[0]} and {entries[2]} would both write s3://{DATA_BUCKET}/outputs/digits/b.parquet."
    )
    assert _queued_shards(world, queue_url) == Counter()


def test_a_manifest_larger_than_the_bound_is_refused_with_its_size(world, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_SHARD_MANIFEST_BYTES", 100)
    body = "\n".join(f"s3://{DATA_BUCKET}/inputs/digits/part-{i:05d}.npy" for i in range(5)).encode()
    world.s3.put_object(Bucket=DATA_BUCKET, Key="lists/big.txt", Body=body)
    spec = BackfillSpec.model_validate(sample_spec(input__uri=f"s3://{DATA_BUCKET}/lists/big.txt"))
    with pytest.raises(InvalidSpecError) as refused:
        inputs.list_shards(spec.input, world.s3)
    assert str(refused.value).startswith(
        f"input.uri: shard manifest s3://{DATA_BUCKET}/lists/big.txt is {len(body)} bytes, more than the 100 "
        "a manifest may have"
    )


def test_a_manifest_listing_more_shards_than_the_bound_is_refused_with_its_count(world, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_SHARD_MANIFEST_ENTRIES", 4)
    body = "\n".join(f"s3://{DATA_BUCKET}/inputs/digits/part-{i:05d}.npy" for i in range(5)).encode()
    world.s3.put_object(Bucket=DATA_BUCKET, Key="lists/big.txt", Body=body)
    spec = BackfillSpec.model_validate(sample_spec(input__uri=f"s3://{DATA_BUCKET}/lists/big.txt"))
    with pytest.raises(InvalidSpecError) as refused:
        inputs.list_shards(spec.input, world.s3)
    assert str(refused.value).startswith(
        f"input.uri: shard manifest s3://{DATA_BUCKET}/lists/big.txt lists 5 shards, more than the 4 a "
        "manifest may list: list the shards under a prefix instead"
    )


def test_manifest_shards_resume_in_output_order_across_invocations(world, lambda_context, monkeypatch):
    clock = PartClock(monkeypatch)
    # given a manifest of 7 shards out of order, parts of 2, one part per invocation
    monkeypatch.setattr(shards, "PART_SIZE", 2)
    uris = _put_shards(world, [f"m-{i}.npy" for i in (5, 1, 6, 0, 3, 2, 4)])
    world.s3.put_object(Bucket=DATA_BUCKET, Key="lists/today.txt", Body="\n".join(reversed(uris)).encode())
    run = _validated(world, lambda_context, input__uri=f"s3://{DATA_BUCKET}/lists/today.txt")
    invocations = 0
    while run.phase != "prepared":
        run = prepare_run(run, settings=world.settings, budget=clock.budget(1), **_clients(world))
        invocations += 1
    assert invocations == 4
    assert _queued_shards(world, run.resources.queue_url) == Counter(uris)
    listed = shards.read_shard_list(run.run_id, world.s3, CONTROL_BUCKET)
    assert [s.shard for s in listed.shards] == sorted(uris)


def test_a_manifest_changed_while_preparing_fails_the_run(world, lambda_context, monkeypatch):
    clock = PartClock(monkeypatch)
    monkeypatch.setattr(shards, "PART_SIZE", 2)
    uris = _put_shards(world, [f"m-{i}.npy" for i in range(5)])
    world.s3.put_object(Bucket=DATA_BUCKET, Key="lists/today.txt", Body="\n".join(uris).encode())
    run = _validated(world, lambda_context, input__uri=f"s3://{DATA_BUCKET}/lists/today.txt")
    run = prepare_run(run, settings=world.settings, budget=clock.budget(1), **_clients(world))
    world.s3.put_object(Bucket=DATA_BUCKET, Key="lists/today.txt", Body="\n".join(uris[:3]).encode())
    with pytest.raises(
        InvalidSpecError, match=r"^input.uri: shard manifest .* changed while the run was being"
    ):
        prepare_run(run, settings=world.settings, budget=clock.budget(1), **_clients(world))


def test_an_input_whose_listing_holds_no_shard_fails_prepare_with_validates_sentence(world, lambda_context):
    world.s3.put_object(Bucket=DATA_BUCKET, Key="inputs/empty/_SUCCESS", Body=b"")
    spec = BackfillSpec.model_validate(sample_spec(input__uri=f"s3://{DATA_BUCKET}/inputs/empty/"))
    queue_url = world.sqs.create_queue(QueueName="q")["QueueUrl"]
    with pytest.raises(InvalidSpecError) as failed:
        queue_and_store_shards(
            RunState(run_id="r-1", spec=spec), world.s3, world.sqs, CONTROL_BUCKET, queue_url
        )
    assert str(failed.value) == f"input.uri: no npy shards found under s3://{DATA_BUCKET}/inputs/empty/."


# ---------------------------------------------------------------------------------------------- Validate


@pytest.mark.parametrize("count", [3, 2500])
def test_validate_lists_one_page_of_the_input_whatever_its_size(world, now, count):
    # given an input of `count` shards (2,500: three listing pages)
    _put_shards(world, [f"s-{i:05d}.npy" for i in range(count)])
    spec = BackfillSpec.model_validate(sample_spec(input__uri=f"s3://{DATA_BUCKET}/{PREFIX}"))
    calls = _listing_calls(world.s3)
    # when Validate's checks run
    sample, _ = check_spec(spec, world.s3, world.settings, now, preflight=None)
    # then it made two ListObjectsV2 calls (the input's first page, the outputs' first page)
    assert len(calls) == 2
    assert (len(sample.shards), sample.complete) == (min(count, 1000), count <= 1000)


def test_validate_still_refuses_a_collision_on_its_first_page(world, now):
    uris = _put_shards(world, ["a.jsonl", "a.ndjson"])
    spec = BackfillSpec.model_validate(
        sample_spec(input__uri=f"s3://{DATA_BUCKET}/{PREFIX}", input__format="jsonl")
    )
    with pytest.raises(InvalidSpecError) as failed:
        check_spec(spec, world.s3, world.settings, now, preflight=None)
    assert str(failed.value) == (
        f"input.uri: shards {uris[0]} and {uris[1]} would both write s3://{DATA_BUCKET}/outputs/digits/a.parquet."
    )


def test_validate_leaves_a_first_page_without_shards_to_prepare(world, now):
    # given a prefix whose first 1,000 keys are not shards and whose later keys are
    for i in range(1000):
        world.s3.put_object(Bucket=DATA_BUCKET, Key=f"{PREFIX}a-{i:04d}.txt", Body=b"")
    _put_shards(world, ["z.npy"])
    spec = BackfillSpec.model_validate(sample_spec(input__uri=f"s3://{DATA_BUCKET}/{PREFIX}"))
    # when Validate's checks run, then they pass, and say the sample is not the whole input
    sample, _ = check_spec(spec, world.s3, world.settings, now, preflight=None)
    assert (sample.shards, sample.complete) == ([], False)


# ---------------------------------------------------------------------------------------------- memory


class SyntheticS3:
    """S3 with `count` input keys made up on demand (ListObjectsV2 with Prefix, StartAfter, ContinuationToken,
    MaxKeys 1,000; a paginator for callers that use one) and objects put kept by size only."""

    def __init__(self, count: int, prefix: str) -> None:
        self.count, self.prefix = count, prefix
        self.stored: dict[str, bytes] = {}

    def _key(self, i: int) -> str:
        return f"{self.prefix}shard-{i:09d}.npy"

    def list_objects_v2(
        self, Bucket: str, Prefix: str, StartAfter: str = "", ContinuationToken: str = ""
    ) -> dict:
        if Bucket != DATA_BUCKET or Prefix != self.prefix:
            return {"Contents": [], "IsTruncated": False}
        after = ContinuationToken or StartAfter
        start = 0
        if after >= self.prefix:
            tail = after[len(self.prefix) + len("shard-") :][:9]
            start = int(tail) + 1 if tail.isdigit() and len(tail) == 9 else 0
        end = min(self.count, start + 1000)
        page = {
            "Contents": [{"Key": self._key(i)} for i in range(start, end)],
            "IsTruncated": end < self.count,
        }
        if end < self.count:
            page["NextContinuationToken"] = self._key(end - 1)
        return page

    def get_paginator(self, operation: str) -> Any:
        s3 = self

        class Paginator:
            def paginate(self, **arguments: Any) -> Any:
                while True:
                    page = s3.list_objects_v2(**arguments)
                    yield page
                    if not page["IsTruncated"]:
                        return
                    arguments = arguments | {"ContinuationToken": page["NextContinuationToken"]}

        return Paginator()

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict:
        if Key.endswith(".json"):
            self.stored[Key] = Body  # the checkpoint and the index: small
        return {}

    def get_object(self, Bucket: str, Key: str, **_: Any) -> dict:
        if Key not in self.stored:
            raise ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        body = self.stored[Key]

        class Body:
            def read(self) -> bytes:
                return body

        return {"Body": Body()}


class CountingSqs:
    def __init__(self) -> None:
        self.sent = 0

    def send_message_batch(self, QueueUrl: str, Entries: list[dict]) -> dict:
        self.sent += len(Entries)
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}


def _peak_bytes(count: int, part_size: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    monkeypatch.setattr(shards, "PART_SIZE", part_size)
    monkeypatch.setattr(queues, "SEND_WORKERS", 1)
    spec = BackfillSpec.model_validate(sample_spec(input__uri=f"s3://{DATA_BUCKET}/{PREFIX}"))
    s3, sqs = SyntheticS3(count, PREFIX), CountingSqs()
    tracemalloc.start()
    try:
        queue_and_store_shards(RunState(run_id="r-1", spec=spec), s3, sqs, CONTROL_BUCKET, "https://queue")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, sqs.sent


def test_prepares_peak_memory_is_bounded_by_the_part_not_the_input(monkeypatch):
    # given 100,000 shards in parts of 500
    peak, sent = _peak_bytes(100_000, 500, monkeypatch)
    # then every shard was sent, and the peak is what a few parts need: about 1 MB, where a set of every
    # output and a list of every shard (the code before parts were resumable) need over 40 MB
    assert sent == 100_000
    assert peak < 4 * 1024 * 1024, f"peak {peak:,} bytes"


def test_prepare_checkpoint_holds_the_parts_and_the_listing_position():
    checkpoint = prepare.PrepareCheckpoint(run_id="r-1", after="inputs/x.npy", total=3, pending=2)
    assert prepare.PrepareCheckpoint.model_validate_json(checkpoint.model_dump_json()) == checkpoint
    assert prepare.checkpoint_key("r-1") == "runs/r-1/shards/checkpoint.json"
