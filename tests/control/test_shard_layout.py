"""The stored shard list: gzip JSON Lines parts and an index, read back one part at a time.

The big round trip runs on the pure functions (no S3); one small test checks the same layout through moto.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections.abc import Iterator

import pytest
from spotfill_control import shards
from spotfill_control.run import RunState
from spotfill_control.spec import BackfillSpec, InputSpec, OutputSpec

from .conftest import CONTROL_BUCKET, DATA_BUCKET

INPUT = InputSpec(uri="s3://data-bucket/inputs/2026/11/", format="npy")
OUTPUT = OutputSpec(uri="s3://data-bucket/outputs/2026/11/", format="parquet")
BIG = 200_000


def synthetic_shards(count: int) -> Iterator[tuple[str, bool]]:
    """(shard URI, skipped): every tenth shard's output existed before the run."""
    for i in range(count):
        yield f"s3://data-bucket/inputs/2026/11/day-{i % 31:02d}/part-{i:07d}.npy", i % 10 == 0


def test_two_hundred_thousand_shards_round_trip_through_the_parts_with_bounded_memory():
    # given a writer that stores objects in a dict, and shards produced one at a time
    stored: dict[str, bytes] = {}
    tracemalloc.start()
    try:
        # when 200,000 shards are written, then read back part by part
        writer = shards.ShardListWriter("r-1", INPUT, OUTPUT, stored.__setitem__)
        for shard, skipped in synthetic_shards(BIG):
            writer.add(shard, skipped)
        index = writer.close()
        count = pending = 0
        last = None
        for part in index.parts:
            for ref in shards.shards_of_part(index, stored[part.key], CONTROL_BUCKET):
                count += 1
                pending += not ref.skipped
                last = ref
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # then every shard came back, with the counts in the index, in 4 parts of at most PART_SIZE
    assert count == index.total == BIG
    assert (
        last is not None
        and last.shard == f"s3://data-bucket/inputs/2026/11/day-{(BIG - 1) % 31:02d}/part-{BIG - 1:07d}.npy"
    )
    assert last.output.endswith(f"/outputs/2026/11/day-{(BIG - 1) % 31:02d}/part-{BIG - 1:07d}.parquet")
    assert pending == index.pending == BIG - BIG // 10
    assert [p.count for p in index.parts] == [50_000] * 4
    assert sum(p.pending for p in index.parts) == index.pending
    # and memory stayed at about one part (the whole list as pydantic shards would be hundreds of MB)
    assert peak < 48 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    # and the parts are compact: a few bytes per shard once compressed
    assert sum(len(body) for body in stored.values()) < 12 * BIG


def test_parts_keep_the_order_and_skipped_flags_of_the_shards_written():
    stored: dict[str, bytes] = {}
    writer = shards.ShardListWriter("r-1", INPUT, OUTPUT, stored.__setitem__, part_size=3)
    written = list(synthetic_shards(8))
    for shard, skipped in written:
        writer.add(shard, skipped)
    index = writer.close()

    read = [
        (r.shard, r.skipped) for p in index.parts for r in shards.shards_of_part(index, stored[p.key], "c")
    ]

    assert read == written
    assert [p.key for p in index.parts] == [shards.shard_part_key("r-1", n) for n in range(3)]
    assert json.loads(stored[shards.shard_index_key("r-1")])["total"] == 8


def test_a_part_is_gzip_json_lines_naming_only_the_shard_and_whether_it_was_skipped():
    body = shards.encode_part([("s3://b/in/a.npy", False), ("s3://b/in/b.npy", True)])
    lines = [json.loads(line) for line in gzip.decompress(body).splitlines()]
    assert lines == [{"shard": "s3://b/in/a.npy"}, {"shard": "s3://b/in/b.npy", "skipped": True}]
    assert list(shards.decode_part(body)) == [("s3://b/in/a.npy", False), ("s3://b/in/b.npy", True)]


@pytest.mark.parametrize(
    "shard",
    [
        "s3://data-bucket/inputs/2026/11/part-1.npy",
        "s3://data-bucket/inputs/2026/11/deep/x/part-2.NPY",
        "s3://data-bucket/inputs/2026/other.npy",
        "s3://other-bucket/inputs/2026/11/part-3.npy",
    ],
)
def test_read_back_shards_derive_the_same_output_and_error_uris_as_the_messages(shard):
    spec = BackfillSpec.model_validate(
        {
            "input": INPUT.model_dump(),
            "output": OUTPUT.model_dump(),
            "model": {"uri": "s3://data-bucket/model.keras"},
            "fleet": {"instance_types": ["c5.xlarge"]},
        }
    )
    ref = shards.ShardNamer(INPUT, OUTPUT, "control", "r-1").ref(shard, False)
    assert ref.output == shards.output_uri(shard, spec)
    assert ref.error == shards.error_uri(shard, spec, "control", "r-1")


def test_the_index_samples_pending_shards_only_and_at_most_sample_size():
    writer = shards.ShardListWriter("r-1", INPUT, OUTPUT, lambda key, body: None, sample_size=16)
    for shard, skipped in synthetic_shards(5_000):
        writer.add(shard, skipped)
    index = writer.close()
    skipped = {s for s, was_skipped in synthetic_shards(5_000) if was_skipped}
    assert len(index.sample) == len(set(index.sample)) == 16
    assert not set(index.sample) & skipped
    # reservoir sampling: the sample is spread over the list, not its first shards
    assert max(int(s[-11:-4]) for s in index.sample) > 1_000


@pytest.mark.aws
def test_the_shard_list_round_trips_through_s3_and_a_legacy_shards_json_is_still_read(s3_world):
    # given a run's shards written in the parts layout (two parts), and an older run's single shards.json
    s3 = s3_world.s3
    spec = BackfillSpec.model_validate(
        {
            "input": {"uri": f"s3://{DATA_BUCKET}/in/", "format": "npy"},
            "output": {"uri": f"s3://{DATA_BUCKET}/out/"},
            "model": {"uri": f"s3://{DATA_BUCKET}/model.keras"},
            "fleet": {"instance_types": ["c5.xlarge"]},
        }
    )
    run = RunState(run_id="new-run", spec=spec)
    uris = [f"s3://{DATA_BUCKET}/in/{i}.npy" for i in range(5)]
    planned = shards.plan_shards(run, uris, {f"s3://{DATA_BUCKET}/out/3.parquet"}, CONTROL_BUCKET)
    writer = shards.shard_list_writer(run, s3, CONTROL_BUCKET, part_size=3)
    for shard in planned.shards:
        writer.add(shard.shard, shard.skipped)
    writer.close()
    legacy = planned.model_copy(update={"run_id": "old-run"})
    s3.put_object(Bucket=CONTROL_BUCKET, Key="runs/old-run/shards.json", Body=legacy.model_dump_json())

    # when both are read back
    index = shards.read_shard_index("new-run", s3, CONTROL_BUCKET)
    new = shards.read_shard_list("new-run", s3, CONTROL_BUCKET)
    old = shards.read_shard_list("old-run", s3, CONTROL_BUCKET)

    # then both give the shards as planned, outputs and errors included
    assert index is not None and (index.total, index.pending, len(index.parts)) == (5, 4, 2)
    assert new is not None and new.shards == planned.shards
    assert old is not None and old.shards == planned.shards
    assert shards.read_shard_index("no-run", s3, CONTROL_BUCKET) is None
    assert shards.iter_shards("no-run", s3, CONTROL_BUCKET) is None
