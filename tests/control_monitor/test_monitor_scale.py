"""Monitor at scale: cheap polls while the queue holds work, the exact reconciliation once it is idle.

The S3 calls a handler makes are recorded with a botocore event hook on the handlers' own cached client.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from spotfill_control import aws, shards
from spotfill_control.handlers import monitor
from spotfill_control.monitoring import progress

pytestmark = pytest.mark.aws


class S3Calls:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))

    def operations(self) -> list[str]:
        return [name for name, _ in self.calls]

    def keys_read(self) -> list[str]:
        return [p["Key"] for name, p in self.calls if name in ("GetObject", "HeadObject")]


@pytest.fixture
def s3_calls(world) -> Iterator[S3Calls]:
    recorder = S3Calls()
    events = aws.client("s3").meta.events
    events.register("before-parameter-build.s3", recorder, unique_id="monitor-scale-recorder")
    yield recorder
    events.unregister("before-parameter-build.s3", unique_id="monitor-scale-recorder")


def test_a_poll_with_work_still_queued_lists_no_outputs_and_reads_no_shard_list(
    world, running_run, lambda_context, s3_calls
):
    # given one shard of three done (its message deleted), two still queued, and rows already sampled enough
    world.write_output(running_run, 0)
    world.write_output(running_run, 1)
    running_run["progress"]["rows_sampled_outputs"] = progress.ROWS_SAMPLE_LIMIT
    running_run["progress"]["rows_sampled_total"] = 7 * progress.ROWS_SAMPLE_LIMIT
    s3_calls.calls.clear()

    # when monitor looks
    run = monitor.handler({"run": running_run}, lambda_context)

    # then progress comes from the queues' depths: two done, one remaining, so the fleet is lowered
    assert run["progress"]["outputs_done"] == 2
    assert run["progress"]["state"] == "running"
    assert run["progress"]["fleet_target_capacity"] == 2
    # and S3 saw no listing and no read at all: only the run state was written
    assert "ListObjectsV2" not in s3_calls.operations()
    assert s3_calls.keys_read() == []
    assert set(s3_calls.operations()) == {"PutObject"}


def test_a_poll_with_work_queued_reads_at_most_the_small_index_while_it_samples_rows(
    world, running_run, lambda_context, s3_calls
):
    # given one shard done and two queued, and no rows sampled yet
    output = world.write_output(running_run, 0)
    s3_calls.calls.clear()

    # when monitor looks
    run = monitor.handler({"run": running_run}, lambda_context)

    # then it neither lists outputs nor reads a part of the shard list
    assert "ListObjectsV2" not in s3_calls.operations()
    run_id = running_run["run_id"]
    read = s3_calls.keys_read()
    assert not [k for k in read if k.startswith(f"runs/{run_id}/shards/part-") or k.endswith("shards.json")]
    # and the index (a few KB whatever the run's size) named the sample whose outputs it looked for
    assert read.count(shards.shard_index_key(run_id)) == 1
    assert output.split("/", 3)[3] in read
    assert run["progress"]["rows_sampled_outputs"] == 1


def test_the_exact_reconciliation_finds_and_requeues_a_lost_shard_across_parts(
    world, start_run, lambda_context, s3_calls, monkeypatch
):
    # given a run whose shard list is stored in parts of two shards (3 shards: 2 parts)
    monkeypatch.setattr(shards, "PART_SIZE", 2)
    run = start_run()
    index = shards.read_shard_index(run["run_id"], world.s3, world.settings.control_bucket)
    assert index is not None and len(index.parts) == 2
    # and workers took every message but wrote only the first two outputs (the third shard was lost)
    world.drain_queue(run)
    world.write_output(run, 0)
    world.write_output(run, 1)
    lost = world.shard_list(run)["shards"][2]["shard"]
    s3_calls.calls.clear()

    # when monitor looks at the idle queue
    run = monitor.handler({"run": run}, lambda_context)

    # then it listed the outputs, read every part, and queued the lost shard again
    assert "ListObjectsV2" in s3_calls.operations()
    assert {p.key for p in index.parts} <= set(s3_calls.keys_read())
    assert run["progress"]["requeued"] == 1
    assert run["progress"]["outputs_done"] == 2
    assert run["progress"]["state"] == "running"
    assert world.queue_shards(run["resources"]["queue_url"]) == [lost]


def test_an_estimate_from_queue_depths_never_finishes_a_run(world, running_run, lambda_context):
    # given every output written but one message still in flight (a worker is about to delete it)
    world.drain_queue(running_run)
    for index in range(3):
        world.write_output(running_run, index)
    world.sqs.send_message(QueueUrl=running_run["resources"]["queue_url"], MessageBody="{}")
    world.sqs.receive_message(QueueUrl=running_run["resources"]["queue_url"], VisibilityTimeout=300)

    # when monitor looks, then the run goes on: only the exact reconciliation of an idle queue ends it
    run = monitor.handler({"run": running_run}, lambda_context)
    assert run["progress"]["state"] == "running"
    assert run["timeline"]["processing_ended_at"] is None
