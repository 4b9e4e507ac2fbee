"""Where a run's state lives between Task states when the state machine cannot hand it over.

Every handler persists the run after it changes it (and `prepare_run` after each resource it creates), so
teardown can always find everything that exists, even after a failure that Step Functions reports without
the run (a `Catch` keeps the state's input, not the partial result) or one it cannot catch at all (timeouts,
aborts: `cleanup_on_exit` finds the run from the execution ARN).

Layout in the control bucket:
- `runs/<run id>/state.json`: the latest `RunState`;
- `runs/<run id>/instances.json`: `{"run_id": ..., "instances": [...]}`, the fleet instances the Monitor saw
  alive at its last poll (`Progress.known_instances`), which grow with the fleet and so are kept out of the
  state Step Functions carries and of `state.json`: written by the Monitor only, when they change;
- `executions/<execution name>.json`: `{"run_id": ..., "execution_arn": ...}`, one per execution of the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from spotfill_control.aws import read_object
from spotfill_control.config import settings
from spotfill_control.run import RunState


def state_key(run_id: str) -> str:
    return f"runs/{run_id}/state.json"


def instances_key(run_id: str) -> str:
    return f"runs/{run_id}/instances.json"


def execution_key(execution_arn: str) -> str:
    """`arn:aws:states:<region>:<account>:execution:<state machine>:<name>` → `executions/<name>.json`."""
    name = execution_arn.rsplit(":", 1)[-1]
    if not name:
        raise ValueError(f"not an execution ARN: {execution_arn!r}")
    return f"executions/{name}.json"


def persist(run: RunState, s3: Any, bucket: str | None = None) -> None:
    """Write the run's state, and the index from its current execution to it."""
    bucket = bucket or settings().control_bucket
    s3.put_object(
        Bucket=bucket,
        Key=state_key(run.run_id),
        Body=run.model_dump_json().encode(),
        ContentType="application/json",
    )
    if run.execution_arn:
        index = {"run_id": run.run_id, "execution_arn": run.execution_arn}
        s3.put_object(
            Bucket=bucket,
            Key=execution_key(run.execution_arn),
            Body=json.dumps(index).encode(),
            ContentType="application/json",
        )


def load(run_id: str, s3: Any, bucket: str | None = None, instances: bool = True) -> RunState | None:
    """The run's latest persisted state, or None when it was never persisted; with its known instances unless
    `instances` is False (a progress display needs only their count)."""
    bucket = bucket or settings().control_bucket
    body = read_object(s3, bucket, state_key(run_id))
    if body is None:
        return None
    run = RunState.model_validate_json(body)
    return with_known_instances(run, s3, bucket) if instances else run


def with_known_instances(run: RunState, s3: Any, bucket: str | None = None) -> RunState:
    """The run with `progress.known_instances` read back from `instances.json`. A run whose Monitor never
    wrote the file (`known_instances_count` None) is returned as it is: the key is not probed, since a
    GetObject of a missing key is denied, not 404, to a role whose ListBucket is limited to a prefix."""
    if run.progress.known_instances_count is None:
        return run
    body = read_object(s3, bucket or settings().control_bucket, instances_key(run.run_id))
    instances = [] if body is None else [str(i) for i in json.loads(body).get("instances", [])]
    return run.model_copy(update={"progress": run.progress.model_copy(update={"known_instances": instances})})


def save_known_instances(run: RunState, before: Sequence[str], s3: Any, bucket: str | None = None) -> None:
    """Write `instances.json` when the run's known instances differ from `before` (what the poll started
    with) or were never written, and record their count in the run (which carries no ids)."""
    progress = run.progress
    instances = sorted(progress.known_instances)
    if progress.known_instances_count is not None and instances == sorted(before):
        progress.known_instances_count = len(instances)
        return
    s3.put_object(
        Bucket=bucket or settings().control_bucket,
        Key=instances_key(run.run_id),
        Body=json.dumps({"run_id": run.run_id, "instances": instances}).encode(),
        ContentType="application/json",
    )
    progress.known_instances_count = len(instances)


def load_by_execution(
    execution_arn: str, s3: Any, bucket: str | None = None, instances: bool = True
) -> RunState | None:
    """The run an execution worked on, or None when the execution failed before a run existed."""
    bucket = bucket or settings().control_bucket
    body = read_object(s3, bucket, execution_key(execution_arn))
    if body is None:
        return None
    return load(json.loads(body)["run_id"], s3, bucket, instances)
