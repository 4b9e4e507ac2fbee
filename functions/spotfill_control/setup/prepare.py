"""PrepareRun: everything a run needs before money is spent on instances.

Order matters for cleanup: each resource is recorded in `run.resources` and the run persisted the moment it
exists, so a failure halfway (which Step Functions reports without this state's partial result) still leaves
teardown a complete list, read back with `state_store.load(run_id)`. A retried invocation picks up the
persisted resources and creates only what is missing.

The shards go part by part (`shards.PART_SIZE`), each part's progress saved in a checkpoint
(`runs/<run id>/shards/checkpoint.json`), so any size fits in bounded time and memory: an invocation stops
starting parts once another would not end within its time budget (`deadline.Deadline`, half the time the
invocation has left) and returns the run with phase "preparing"; the
state machine calls PrepareRun again (IsPrepared), and that call, like a retry after a crash, continues from
the checkpoint (docs/contracts/shards-queue-outputs.md, "PrepareRun").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from spotfill_control import queues, shards, state_store
from spotfill_control.aws import read_object
from spotfill_control.config import Settings
from spotfill_control.deadline import Deadline
from spotfill_control.errors import InvalidSpecError
from spotfill_control.fleet import cluster, launch_template
from spotfill_control.run import RunState, utcnow
from spotfill_control.setup import inputs
from spotfill_control.spec import InputSpec

CHECKPOINT_LAYOUT = "spotfill-prepare/1"
# An invocation starts no new part that would not end within this share of the time it had left when it began
# (Lambda: about its Timeout) (docs/contracts/shards-queue-outputs.md, "PrepareRun").
TIME_SHARE = 0.5


class PrepareCheckpoint(BaseModel):
    """`runs/<run id>/shards/checkpoint.json`: how far the shard list got, written after each stored part.

    `after` is the last input key of the stored parts (a prefix input's next listing starts after it);
    `position` the manifest entries taken (a manifest's shards go in output order); `open_stems` the
    collision check's state (`shards.OpenStems`); the rest is the shard list writer's.
    """

    model_config = ConfigDict(extra="forbid")

    layout: Literal["spotfill-prepare/1"] = CHECKPOINT_LAYOUT
    run_id: str
    after: str | None = None
    position: int = 0
    manifest_etag: str | None = None
    parts: list[shards.ShardPart] = []
    total: int = 0
    pending: int = 0
    sample: list[str] = []
    open_stems: list[tuple[str, str]] = []


def checkpoint_key(run_id: str) -> str:
    return f"runs/{run_id}/shards/checkpoint.json"


def read_checkpoint(run_id: str, s3: Any, bucket: str) -> PrepareCheckpoint | None:
    body = read_object(s3, bucket, checkpoint_key(run_id))
    return None if body is None else PrepareCheckpoint.model_validate_json(body)


def prepare_run(
    run: RunState,
    *,
    s3: Any,
    sqs: Any,
    ecs: Any,
    ec2: Any,
    ssm: Any,
    settings: Settings,
    now: Callable[[], datetime] = utcnow,
    budget: Deadline | None = None,
) -> RunState:
    """The run prepared (phase "prepared"), or, when `budget` ran out before every shard was queued, the run
    with phase "preparing" to be handed to PrepareRun again (no budget: every shard in this call)."""
    bucket = settings.control_bucket

    stored = state_store.load(run.run_id, s3, bucket)
    if stored is not None:
        run = run.model_copy(update={"resources": stored.resources})
    resources = run.resources
    # The AMI first: a region without the run's kind of AMI fails the run before anything is created.
    image_id = None
    if resources.launch_template_version is None:
        image_id = launch_template.resolve_image_id(run, ssm)

    def record(**created: Any) -> None:
        nonlocal run, resources
        resources = resources.model_copy(update=created)
        run = run.model_copy(update={"resources": resources})
        state_store.persist(run, s3, bucket)

    if resources.dead_letter_queue_url is None:
        record(dead_letter_queue_url=queues.create_dead_letter_queue(run, sqs))
    if resources.queue_url is None:
        record(queue_url=queues.create_shard_queue(run, sqs, resources.dead_letter_queue_url))

    # The shard list's index is written only after every message is sent, so its presence means "queued".
    index = shards.read_shard_index(run.run_id, s3, bucket)
    if index is None:
        index = queue_and_store_shards(run, s3, sqs, bucket, resources.queue_url, budget)
    if index is None:  # the time budget ran out: the checkpoint says where the next invocation goes on
        run = run.model_copy(update={"phase": "preparing"})
        state_store.persist(run, s3, bucket)
        return run

    if resources.cluster_name is None:
        record(cluster_name=cluster.create_cluster(run, ecs))
    if resources.task_definition_arn is None:
        record(task_definition_arn=cluster.register_task_definition(run, ecs, settings, resources.queue_url))
    if image_id is not None:
        record(
            launch_template_version=launch_template.create_launch_template_version(
                run, ec2, settings, image_id
            )
        )

    total, pending = index.total, index.pending
    progress = run.progress
    if pending == 0:
        progress = progress.model_copy(update={"state": "done"})  # every output exists: nothing to run
    run = run.model_copy(
        update={
            "phase": "prepared",
            "shards_total": total,
            "shards_skipped": total - pending,
            "progress": progress,
            "timeline": run.timeline.model_copy(update={"prepared_at": now()}),
        }
    )
    state_store.persist(run, s3, bucket)
    return run


def queue_and_store_shards(
    run: RunState,
    s3: Any,
    sqs: Any,
    bucket: str,
    queue_url: str | None,
    budget: Deadline | None = None,
    part_size: int | None = None,
) -> shards.ShardIndex | None:
    """Queue a message per shard whose output does not exist yet and store the shard list, part by part from
    the checkpoint on; the index once the input is exhausted, or None when `budget` ran out first.

    Each part: its stretch of the input is listed, the outputs it would write that exist already are found by
    listing only their key range (`inputs.existing_among`), its messages are sent, the part is stored, then
    the checkpoint. At least one part goes per call, so every call makes progress. A call that crashes after
    sending a part's messages and before its checkpoint sends that part again when retried: harmless (one
    output key per shard) and at most one part. Only one part's shards are in memory.
    """
    assert queue_url is not None
    spec = run.spec
    part_size = part_size or shards.PART_SIZE
    budget = budget or Deadline(math.inf)
    checkpoint = read_checkpoint(run.run_id, s3, bucket) or PrepareCheckpoint(run_id=run.run_id)
    writer = shards.shard_list_writer(run, s3, bucket, part_size)
    writer.resume(checkpoint.parts, checkpoint.total, checkpoint.pending, checkpoint.sample)
    namer = shards.ShardNamer(spec.input, spec.output, bucket, run.run_id)
    collisions = shards.OpenStems(namer, checkpoint.open_stems)
    if spec.input.is_prefix:
        stream: Iterator[str] = inputs.iter_prefix_shards(spec.input, s3, after=checkpoint.after)
    else:
        stream, etag = _manifest_stream(spec.input, s3, namer, checkpoint)
        checkpoint = checkpoint.model_copy(update={"manifest_etag": etag})
    for number in itertools.count():
        if number > 0 and not budget.fits_another():
            return None
        with budget.step():  # one part: listed, checked, sent, stored, checkpointed
            part = [namer.ref(uri, False) for uri in itertools.islice(stream, part_size)]
            if not part:
                break
            if spec.input.is_prefix:
                for ref in part:
                    collisions.add(ref)
            existing = inputs.existing_among([ref.output for ref in part], spec.output, s3)
            pending = [ref for ref in part if ref.output not in existing]
            queues.send_shards(run.run_id, pending, queue_url, sqs)
            for ref in part:
                writer.add(ref.shard, ref.output in existing)
            writer.flush()
            checkpoint = checkpoint.model_copy(
                update={
                    "after": shards.split_s3_uri(part[-1].shard)[1] if spec.input.is_prefix else None,
                    "position": checkpoint.position + len(part),
                    "parts": writer.parts,
                    "total": writer.total,
                    "pending": writer.pending,
                    "sample": writer.sample,
                    "open_stems": collisions.state,
                }
            )
            s3.put_object(
                Bucket=bucket,
                Key=checkpoint_key(run.run_id),
                Body=checkpoint.model_dump_json().encode(),
                ContentType="application/json",
            )
        if len(part) < part_size:  # the input ended inside this part
            break
    if writer.total == 0:
        raise inputs.no_shards_error(spec.input)
    return writer.close()


def _manifest_stream(
    input_spec: InputSpec, s3: Any, namer: shards.ShardNamer, checkpoint: PrepareCheckpoint
) -> tuple[Iterator[str], str]:
    """A manifest's shards from the checkpoint's position on, in output order (so each part's outputs span a
    narrow key range, and two shards writing one output are neighbours), and the manifest's ETag. The manifest
    is read whole on each call (bounded: `inputs.MAX_SHARD_MANIFEST_BYTES`) and must not change meanwhile."""
    entries, etag = inputs.read_shard_manifest(input_spec, s3)
    if checkpoint.manifest_etag is not None and checkpoint.manifest_etag != etag:
        raise InvalidSpecError(
            f"input.uri: shard manifest {input_spec.uri} changed while the run was being prepared (ETag "
            f"{checkpoint.manifest_etag}, now {etag}): start a new run with the new manifest."
        )
    outputs = [namer.ref(entry, False).output for entry in entries]
    order = sorted(range(len(entries)), key=outputs.__getitem__)  # stable: manifest order among equals
    for earlier, later in itertools.pairwise(order):
        if outputs[earlier] == outputs[later]:
            raise shards.collision_error(entries[earlier], entries[later], outputs[later])
    return (entries[i] for i in order[checkpoint.position :]), etag
