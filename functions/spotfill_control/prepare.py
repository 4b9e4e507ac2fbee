"""PrepareRun: everything a run needs before money is spent on instances.

Order matters for cleanup: each resource is recorded in `run.resources` and the run persisted the moment it
exists, so a failure halfway (which Step Functions reports without this state's partial result) still leaves
teardown a complete list, read back with `state_store.load(run_id)`. A retried invocation picks up the
persisted resources and creates only what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from spotfill_control import cluster, fleet, shards, state_store
from spotfill_control.config import Settings
from spotfill_control.errors import InvalidSpecError
from spotfill_control.run import RunState, utcnow


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
) -> RunState:
    bucket = settings.control_bucket

    stored = state_store.load(run.run_id, s3, bucket)
    if stored is not None:
        run = run.model_copy(update={"resources": stored.resources})
    resources = run.resources
    # The AMI first: a region without the run's kind of AMI fails the run before anything is created.
    image_id = None
    if resources.launch_template_version is None:
        image_id = fleet.resolve_image_id(run, ssm)

    def record(**created: Any) -> None:
        nonlocal run, resources
        resources = resources.model_copy(update=created)
        run = run.model_copy(update={"resources": resources})
        state_store.persist(run, s3, bucket)

    if resources.dead_letter_queue_url is None:
        record(dead_letter_queue_url=shards.create_dead_letter_queue(run, sqs))
    if resources.queue_url is None:
        record(queue_url=shards.create_shard_queue(run, sqs, resources.dead_letter_queue_url))

    # The shard list's index is written only after every message is sent, so its presence means "queued".
    index = shards.read_shard_index(run.run_id, s3, bucket)
    if index is None:
        index = queue_and_store_shards(run, s3, sqs, bucket, resources.queue_url)

    if resources.cluster_name is None:
        record(cluster_name=cluster.create_cluster(run, ecs))
    if resources.task_definition_arn is None:
        record(task_definition_arn=cluster.register_task_definition(run, ecs, settings, resources.queue_url))
    if image_id is not None:
        record(launch_template_version=fleet.create_launch_template_version(run, ec2, settings, image_id))

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
    run: RunState, s3: Any, sqs: Any, bucket: str, queue_url: str | None
) -> shards.ShardIndex:
    """List the input, queue a message per shard whose output does not exist yet, store the shard list.

    Shards go part by part (`shards.PART_SIZE`): each part's messages are sent, then the part is stored; the
    index goes last. A retry after a failure halfway sends some messages twice, which is harmless (one output
    key per shard).
    """
    assert queue_url is not None
    found = shards.list_shards(run.spec.input, s3)
    existing = shards.existing_outputs(run.spec, s3)
    writer = shards.shard_list_writer(run, s3, bucket)
    owner: dict[str, str] = {}
    for chunk in shards.chunked(found, writer.part_size):
        planned = []
        for uri in chunk:
            output = shards.output_uri(uri, run.spec)
            if output in owner:  # Validate checked this already; a changed input since then is caught here
                raise InvalidSpecError(
                    f"input.uri: shards {owner[output]} and {uri} would both write {output}."
                )
            owner[output] = uri
            planned.append(
                shards.Shard(
                    shard=uri,
                    output=output,
                    error=shards.error_uri(uri, run.spec, bucket, run.run_id),
                    skipped=output in existing,
                )
            )
        shards.send_shards(run.run_id, [s for s in planned if not s.skipped], queue_url, sqs)
        for shard in planned:
            writer.add(shard.shard, shard.skipped)
    return writer.close()
