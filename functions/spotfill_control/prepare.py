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

    def record(**created: Any) -> None:
        nonlocal run, resources
        resources = resources.model_copy(update=created)
        run = run.model_copy(update={"resources": resources})
        state_store.persist(run, s3, bucket)

    if resources.dead_letter_queue_url is None:
        record(dead_letter_queue_url=shards.create_dead_letter_queue(run, sqs))
    if resources.queue_url is None:
        record(queue_url=shards.create_shard_queue(run, sqs, resources.dead_letter_queue_url))

    # shards.json is written only after every message is sent, so its presence means "queued".
    shard_list = shards.read_shard_list(run.run_id, s3, bucket)
    if shard_list is None:
        found = shards.list_shards(run.spec.input, s3)
        shard_list = shards.plan_shards(run, found, shards.existing_outputs(run.spec, s3), bucket)
        shards.send_shards(run.run_id, shard_list.pending, resources.queue_url, sqs)
        shards.write_shard_list(shard_list, s3, bucket)

    if resources.cluster_name is None:
        record(cluster_name=cluster.create_cluster(run, ecs))
    if resources.task_definition_arn is None:
        record(task_definition_arn=cluster.register_task_definition(run, ecs, settings, resources.queue_url))
    if resources.launch_template_version is None:
        record(launch_template_version=fleet.create_launch_template_version(run, ec2, ssm, settings))

    total, pending = len(shard_list.shards), len(shard_list.pending)
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
