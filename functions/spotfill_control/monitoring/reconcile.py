"""The exact count, part by part, with a checkpoint kept across polls (`runs/<run id>/reconcile.json`).

The shard list is stored in parts (`spotfill_control.shards`). A part is verified on its own: its pending
shards' output keys are worked out, and only the output key range they span is listed (from just below the
smallest to past the largest), each listed key tested against that part's outputs. So another run's objects
under the same output prefix are never counted, and nothing holds more than one part.

A part is *settled* once each of its pending shards has an output or is a dead letter (the dead-letter
records, `monitoring.dead_letters`): its counts are kept in the checkpoint and it is never listed
again; the shards that failed are kept in `runs/<run id>/reconcile/failed-<part>.json` for the report. A part
with lost shards (neither) stays open: Monitor queues them again (once per finding) and a later pass looks
again. A pass walks the open parts in order from the checkpoint's cursor and stops when its `Deadline` is
spent; the next poll continues there. The checkpoint is written after every part, and a part's counts are
replaced, never added to, so a crash or a retry mid-pass never counts anything twice.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spotfill_control.aws import read_object
from spotfill_control.deadline import Deadline
from spotfill_control.errors import SpotfillError
from spotfill_control.shards import ShardIndex, ShardRef, shards_of_part, split_s3_uri

CHECKPOINT_LAYOUT = "spotfill-reconcile/1"


def checkpoint_key(run_id: str) -> str:
    return f"runs/{run_id}/reconcile.json"


def failed_key(run_id: str, part: int) -> str:
    return f"runs/{run_id}/reconcile/failed-{part:05d}.json"


class PartCount(BaseModel):
    """One part as last verified: pending shards with an output, and failed ones (dead letters, no output)."""

    model_config = ConfigDict(extra="forbid")

    done: int
    failed: int
    settled: bool  # every pending shard has an output or is a dead letter: never listed again


class Checkpoint(BaseModel):
    """Counts per part (a few dozen bytes each: 200 parts at 10M shards) and where the current pass is."""

    model_config = ConfigDict(extra="forbid")

    layout: Literal["spotfill-reconcile/1"] = CHECKPOINT_LAYOUT
    run_id: str
    parts: dict[int, PartCount] = Field(default_factory=dict)
    cursor: int = 0  # the next part the current pass verifies
    passes: int = 0  # passes completed

    def open_parts(self, count: int) -> list[int]:
        return [n for n in range(count) if not (n in self.parts and self.parts[n].settled)]

    def settled(self, count: int) -> bool:
        return not self.open_parts(count)

    def verified_all(self, count: int) -> bool:
        """Every part verified at least once: the counts are exact (as of each part's last look)."""
        return all(n in self.parts for n in range(count))

    @property
    def done(self) -> int:
        return sum(p.done for p in self.parts.values())

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.parts.values())


def load_checkpoint(run_id: str, s3: Any, bucket: str) -> Checkpoint:
    """The run's checkpoint, or a fresh one. Listed before it is read: a role whose ListBucket is limited to a
    prefix is answered 403, not 404, for a missing key (docs/contracts/iam.md, "IAM")."""
    key = checkpoint_key(run_id)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
    body = read_object(s3, bucket, key) if any(o["Key"] == key for o in listed) else None
    if body is None:
        return Checkpoint(run_id=run_id)
    return Checkpoint.model_validate_json(body)


def save_checkpoint(checkpoint: Checkpoint, s3: Any, bucket: str) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=checkpoint_key(checkpoint.run_id),
        Body=checkpoint.model_dump_json().encode(),
        ContentType="application/json",
    )


# ------------------------------------------------------------------------------------------ one part


@dataclass
class PartResult:
    """What verifying one part found among its pending shards."""

    number: int
    pending: int = 0
    done: int = 0
    failed: list[str] = field(default_factory=list)  # dead letters without an output
    lost: list[ShardRef] = field(default_factory=list)  # neither output nor dead letter
    outputs: list[str] = field(default_factory=list)  # a few present outputs (rows sample)
    listed_pages: int = 0


def listed_keys_in_range(bucket: str, prefix: str, low: str, high: str, s3: Any) -> Iterable[tuple[int, str]]:
    """(page number, key) for the keys under `prefix` from `low` to `high` (both included), in S3's order.

    StartAfter is exclusive; `low` minus its last character sorts just below `low` (a prefix sorts first), so
    `low` itself is listed, and at most a few keys before it. The listing stops at `high` or just past it."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if len(low) > 1:
        kwargs["StartAfter"] = low[:-1]
    for number, page in enumerate(s3.get_paginator("list_objects_v2").paginate(**kwargs), start=1):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key > high:
                return
            yield number, key
            if key == high:  # the last key wanted: no need to fetch the next page to see it end
                return


def verify_part(
    index: ShardIndex,
    number: int,
    s3: Any,
    control_bucket: str,
    dead_letters: set[str],
    sample_size: int = 0,
    rng: random.Random | None = None,
) -> PartResult:
    part = index.parts[number]
    body = read_object(s3, control_bucket, part.key)
    if body is None:
        raise SpotfillError(f"s3://{control_bucket}/{part.key} is missing from the run's shard list")
    bucket, prefix = split_s3_uri(index.output.uri)
    head = f"s3://{bucket}/"
    shards = shards_of_part(index, body, control_bucket)
    refs = {ref.output[len(head) :]: ref for ref in shards if not ref.skipped}
    result = PartResult(number=number, pending=len(refs))
    if not refs:
        return result
    present: set[str] = set()
    for page, key in listed_keys_in_range(bucket, prefix, min(refs), max(refs), s3):
        result.listed_pages = page
        if key in refs:
            present.add(key)
    result.done = len(present)
    for key, ref in refs.items():
        if key in present:
            continue
        if ref.shard in dead_letters:
            result.failed.append(ref.shard)
        else:
            result.lost.append(ref)
    result.failed.sort()
    if sample_size and present:
        chosen = (rng or random.Random()).sample(sorted(present), min(sample_size, len(present)))
        result.outputs = [head + key for key in chosen]
    return result


# ------------------------------------------------------------------------------------------ a pass


@dataclass
class PassOutcome:
    """What one invocation's share of a pass did."""

    verified: list[int] = field(default_factory=list)  # parts verified this time
    settled_now: int = 0  # parts that became settled this time
    requeued: int = 0
    lost: int = 0
    outputs: list[str] = field(default_factory=list)  # present outputs for the rows sample
    pages: int = 0  # ListObjectsV2 pages read
    pass_complete: bool = False  # the pass reached the last part


def advance(
    index: ShardIndex,
    checkpoint: Checkpoint,
    s3: Any,
    control_bucket: str,
    dead_letters: set[str],
    deadline: Deadline,
    requeue: Callable[[list[ShardRef]], int],
    sample_size: int = 0,
) -> PassOutcome:
    """Verify open parts from the checkpoint's cursor until the last part or the deadline; queue each part's
    lost shards again (`requeue`) as found; write the checkpoint after each part. Settled parts are skipped
    without a read. A finished pass starts the next one at part 0 on the next call."""
    outcome = PassOutcome()
    count = len(index.parts)
    if checkpoint.cursor >= count:
        checkpoint.cursor = 0
    rng = random.Random()
    while checkpoint.cursor < count:
        number = checkpoint.cursor
        known = checkpoint.parts.get(number)
        if known is not None and known.settled:
            checkpoint.cursor += 1
            continue
        if not deadline.fits_another():
            break
        with deadline.step():
            result = verify_part(index, number, s3, control_bucket, dead_letters, sample_size, rng)
        outcome.verified.append(number)
        outcome.pages += result.listed_pages
        outcome.outputs += result.outputs
        settled = not result.lost
        if result.lost:
            outcome.lost += len(result.lost)
            outcome.requeued += requeue(result.lost)
        if settled and result.failed:
            _save_failed(index.run_id, number, result.failed, s3, control_bucket)
        outcome.settled_now += settled
        checkpoint.parts[number] = PartCount(done=result.done, failed=len(result.failed), settled=settled)
        checkpoint.cursor = number + 1
        save_checkpoint(checkpoint, s3, control_bucket)
    if checkpoint.cursor >= count:
        outcome.pass_complete = True
        checkpoint.passes += 1
        checkpoint.cursor = 0
        save_checkpoint(checkpoint, s3, control_bucket)
    return outcome


def settle_ahead(
    index: ShardIndex,
    checkpoint: Checkpoint,
    s3: Any,
    control_bucket: str,
    dead_letters: set[str],
    deadline: Deadline,
) -> PassOutcome:
    """While the queue still holds work: settle the open parts in order from the first, and stop at the first
    one that is not settled yet (its shards are likely still queued: PrepareRun queued them in part order).
    Nothing is requeued and the pass's cursor is not moved; a part found open is not recorded. So most parts
    are settled during the run, and the idle polls at its end list only the last few, whatever its size."""
    outcome = PassOutcome()
    for number in checkpoint.open_parts(len(index.parts)):
        if not deadline.fits_another():
            break
        with deadline.step():
            result = verify_part(index, number, s3, control_bucket, dead_letters)
        outcome.verified.append(number)
        outcome.pages += result.listed_pages
        if result.lost:
            break
        if result.failed:
            _save_failed(index.run_id, number, result.failed, s3, control_bucket)
        checkpoint.parts[number] = PartCount(done=result.done, failed=len(result.failed), settled=True)
        outcome.settled_now += 1
        save_checkpoint(checkpoint, s3, control_bucket)
    return outcome


def _save_failed(run_id: str, number: int, shards: list[str], s3: Any, bucket: str) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=failed_key(run_id, number),
        Body=json.dumps({"run_id": run_id, "part": number, "shards": shards}).encode(),
        ContentType="application/json",
    )


def read_failed(run_id: str, number: int, s3: Any, bucket: str) -> list[str]:
    """The failed shards of a settled part with failures (the checkpoint says which have any)."""
    body = read_object(s3, bucket, failed_key(run_id, number))
    if body is None:
        raise SpotfillError(f"s3://{bucket}/{failed_key(run_id, number)} is missing: the checkpoint names it")
    return list(json.loads(body)["shards"])
