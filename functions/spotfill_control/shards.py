"""Shards: naming their outputs, and the run's shard list as stored in parts.

The output URI is derived from the input URI alone (docs/contracts/shards-queue-outputs.md, "Shards, queue and
outputs"): the
shard's path relative to the input prefix, with the input format's extension replaced by the output
format's, under the output prefix. For a manifest of shard URIs the path is relative to the manifest's
folder when the shard lies under it, else `<bucket>/<key>` (unique across buckets).

Finding the shards in the input is `setup.inputs`'; the queue of one message per shard is `queues`'.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from spotfill_control.aws import read_object
from spotfill_control.errors import InvalidSpecError, SpotfillError
from spotfill_control.run import RunState
from spotfill_control.spec import (
    OUTPUT_EXTENSIONS,
    BackfillSpec,
    InputSpec,
    OutputSpec,
)

SHARD_LAYOUT = "spotfill-shards/1"


PART_SIZE = 50_000  # shards per stored part: about 1 MB of gzip JSON Lines for typical URIs


SAMPLE_SIZE = 64  # pending shards named in the index, for monitor's rows-per-shard sample


class Shard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    shard: str
    output: str
    error: str
    skipped: bool = False

    def message(self, run_id: str) -> str:
        """The SQS message body (docs/contracts/shards-queue-outputs.md): what the worker needs about this
        shard."""
        return message_body(run_id, self.shard, self.output, self.error)


def message_body(run_id: str, shard: str, output: str, error: str) -> str:
    return json.dumps({"run_id": run_id, "shard": shard, "output": output, "error": error})


class ShardList(BaseModel):
    """Every shard of a run, in memory: for small runs and tests only (`read_shard_list`). Monitor and report
    stream the stored parts instead (`iter_shards`)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    shards: list[Shard]

    @property
    def pending(self) -> list[Shard]:
        return [s for s in self.shards if not s.skipped]


class ShardPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str  # in the control bucket
    count: int
    pending: int


class ShardIndex(BaseModel):
    """`runs/<run id>/shards/index.json`: the shard list as gzip JSON Lines parts, and how to name outputs.

    Each part line is `{"shard": "s3://..."}`, plus `"skipped": true` for a shard whose output existed before
    the run. Output and error URIs are not stored: they follow from the shard URI, `input`, `output`, the
    control bucket and the run id (`output_uri`, `error_uri`). `sample` is a few pending shards chosen at
    random, whose outputs monitor reads the `spotfill-rows` of without reading any part.
    """

    model_config = ConfigDict(extra="forbid")

    layout: Literal["spotfill-shards/1"] = SHARD_LAYOUT
    run_id: str
    input: InputSpec
    output: OutputSpec
    total: int
    pending: int
    parts: list[ShardPart]
    sample: list[str] = []

    @property
    def skipped(self) -> int:
        return self.total - self.pending


def shard_list_key(run_id: str) -> str:
    """The single-object shard list of runs prepared before the parts layout (still read, never written)."""
    return f"runs/{run_id}/shards.json"


def shard_index_key(run_id: str) -> str:
    return f"runs/{run_id}/shards/index.json"


def shard_part_key(run_id: str, number: int) -> str:
    return f"runs/{run_id}/shards/part-{number:05d}.jsonl.gz"


def model_error_key(run_id: str) -> str:
    """The record a worker writes when the model cannot load (docs/contracts/worker-environment.md); the
    monitor fails the run on it. No shard's error record can have this key: theirs end in the shard's
    extension and ``.json``."""
    return f"runs/{run_id}/errors/model-load.json"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` split at the first ``/`` after the bucket; the key is opaque and kept verbatim
    (not a URL: ``#``, ``?``, ``%`` and the rest are part of it). The worker's ``S3Uri.parse`` agrees."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def collision_error(first: str, second: str, output: str) -> InvalidSpecError:
    return InvalidSpecError(f"input.uri: shards {first} and {second} would both write {output}.")


def relative_path(shard_uri: str, input_spec: InputSpec) -> str:
    bucket, key = split_s3_uri(shard_uri)
    base_bucket, base_key = split_s3_uri(input_spec.uri)
    folder = base_key[: base_key.rfind("/") + 1]  # the prefix itself, or the shard manifest's folder
    if bucket == base_bucket and key.startswith(folder):
        return key[len(folder) :]
    return f"{bucket}/{key}"


def output_uri(shard_uri: str, spec: BackfillSpec) -> str:
    return output_uri_for(shard_uri, spec.input, spec.output)


def output_uri_for(shard_uri: str, input_spec: InputSpec, output_spec: OutputSpec) -> str:
    relative = relative_path(shard_uri, input_spec)
    for extension in input_spec.extensions:
        if relative.lower().endswith(extension):
            relative = relative[: -len(extension)]
            break
    return output_spec.uri + relative + OUTPUT_EXTENSIONS[output_spec.format]


def error_uri(shard_uri: str, spec: BackfillSpec, control_bucket: str, run_id: str) -> str:
    return error_uri_for(shard_uri, spec.input, control_bucket, run_id)


def error_uri_for(shard_uri: str, input_spec: InputSpec, control_bucket: str, run_id: str) -> str:
    return f"s3://{control_bucket}/runs/{run_id}/errors/{relative_path(shard_uri, input_spec)}.json"


def output_uris(spec: BackfillSpec, shard_uris: Iterable[str]) -> dict[str, str]:
    """Shard → output; two shards that would write one output (`a.jsonl`, `a.ndjson`) are a spec error."""
    outputs: dict[str, str] = {}
    owner: dict[str, str] = {}
    for shard in shard_uris:
        out = output_uri(shard, spec)
        if out in owner:
            raise InvalidSpecError(f"input.uri: shards {owner[out]} and {shard} would both write {out}.")
        owner[out] = shard
        outputs[shard] = out
    return outputs


def plan_shards(
    run: RunState, shard_uris: list[str], existing_outputs: set[str], control_bucket: str
) -> ShardList:
    """Every shard with its output and error URIs, in memory (small runs and tests; prepare streams)."""
    outputs = output_uris(run.spec, shard_uris)
    return ShardList(
        run_id=run.run_id,
        shards=[
            Shard(
                shard=uri,
                output=outputs[uri],
                error=error_uri(uri, run.spec, control_bucket, run.run_id),
                skipped=outputs[uri] in existing_outputs,
            )
            for uri in shard_uris
        ],
    )


def encode_part(entries: Iterable[tuple[str, bool]]) -> bytes:
    """gzip JSON Lines of (shard URI, skipped) pairs."""
    # json.dumps of a str is one C call; dumping a dict per line costs several times more.
    lines = [
        f'{{"shard":{json.dumps(shard)},"skipped":true}}' if skipped else f'{{"shard":{json.dumps(shard)}}}'
        for shard, skipped in entries
    ]
    lines.append("")
    return gzip.compress("\n".join(lines).encode(), compresslevel=6, mtime=0)


def decode_part(body: bytes) -> Iterator[tuple[str, bool]]:
    """The (shard URI, skipped) pairs of one part (parsed in one pass: one part is in memory anyway)."""
    lines = gzip.decompress(body).decode().splitlines()
    for entry in json.loads("[" + ",".join(line for line in lines if line.strip()) + "]"):
        yield entry["shard"], entry.get("skipped", False) is True


class ShardListWriter:
    """Writes the parts of a run's shard list as they fill, then (`close`) the index.

    `put(key, body)` stores one object; the writer keeps one part and a reservoir sample of pending shards
    in memory, never the whole list.
    """

    def __init__(
        self,
        run_id: str,
        input_spec: InputSpec,
        output_spec: OutputSpec,
        put: Callable[[str, bytes], None],
        part_size: int = PART_SIZE,
        sample_size: int = SAMPLE_SIZE,
    ) -> None:
        self.run_id, self.input, self.output, self.put = run_id, input_spec, output_spec, put
        self.part_size, self.sample_size = part_size, sample_size
        self.parts: list[ShardPart] = []
        self.sample: list[str] = []
        self.total = self.pending = 0
        self._part: list[tuple[str, bool]] = []
        self._random = self._part_random()

    def _part_random(self) -> random.Random:
        # seeded per part, so a PrepareRun resumed at a part boundary samples as one that never stopped
        return random.Random(f"{self.run_id}/{len(self.parts)}")

    def resume(self, parts: list[ShardPart], total: int, pending: int, sample: list[str]) -> None:
        """Continue after the stored `parts` (PrepareRun's checkpoint); nothing of a later part is held."""
        self.parts, self.total, self.pending, self.sample = list(parts), total, pending, list(sample)
        self._part = []
        self._random = self._part_random()

    def add(self, shard: str, skipped: bool) -> None:
        self._part.append((shard, skipped))
        self.total += 1
        if not skipped:
            self.pending += 1
            if len(self.sample) < self.sample_size:
                self.sample.append(shard)
            else:  # reservoir sampling: every pending shard equally likely to be in the sample
                slot = self._random.randrange(self.pending)
                if slot < self.sample_size:
                    self.sample[slot] = shard
        if len(self._part) >= self.part_size:
            self.flush()

    def flush(self) -> None:
        if not self._part:
            return
        key = shard_part_key(self.run_id, len(self.parts))
        self.put(key, encode_part(self._part))
        pending = sum(1 for _, skipped in self._part if not skipped)
        self.parts.append(ShardPart(key=key, count=len(self._part), pending=pending))
        self._part = []
        self._random = self._part_random()

    def close(self) -> ShardIndex:
        self.flush()
        index = ShardIndex(
            run_id=self.run_id,
            input=self.input,
            output=self.output,
            total=self.total,
            pending=self.pending,
            parts=self.parts,
            sample=self.sample,
        )
        self.put(shard_index_key(self.run_id), index.model_dump_json().encode())
        return index


class ShardRef(NamedTuple):
    """One shard as read back from the stored list (a light tuple: a million of them stream in seconds)."""

    shard: str
    output: str
    error: str
    skipped: bool

    def as_shard(self) -> Shard:
        return Shard(shard=self.shard, output=self.output, error=self.error, skipped=self.skipped)

    def message(self, run_id: str) -> str:
        return message_body(run_id, self.shard, self.output, self.error)


class ShardNamer:
    """`output_uri_for` and `error_uri_for` with the spec's parts worked out once (same results, faster)."""

    def __init__(self, input_spec: InputSpec, output_spec: OutputSpec, control_bucket: str, run_id: str):
        base_bucket, base_key = split_s3_uri(input_spec.uri)
        self._under = f"s3://{base_bucket}/{base_key[: base_key.rfind('/') + 1]}"
        self._extensions = input_spec.extensions
        self._output = output_spec.uri
        self._output_extension = OUTPUT_EXTENSIONS[output_spec.format]
        self._errors = f"s3://{control_bucket}/runs/{run_id}/errors/"

    def relative(self, shard: str) -> str:
        # s3://bucket/key lies under s3://<base bucket>/<folder> exactly when the URI starts with it
        return shard[len(self._under) :] if shard.startswith(self._under) else shard[len("s3://") :]

    def stem(self, relative: str) -> str:
        """The relative path without the input extension: the output is `<output prefix><stem><extension>`."""
        lowered = relative.lower()
        for extension in self._extensions:
            if lowered.endswith(extension):
                return relative[: -len(extension)]
        return relative

    def ref(self, shard: str, skipped: bool) -> ShardRef:
        relative = self.relative(shard)
        return ShardRef(
            shard,
            self._output + self.stem(relative) + self._output_extension,
            self._errors + relative + ".json",
            skipped,
        )


class OpenStems:
    """Finds two shards that would write one output (`a.jsonl` and `a.ndjson`) in a sorted listing, holding
    only a few stems in memory, across parts and invocations (`state` goes into PrepareRun's checkpoint).

    Two shards collide exactly when their stems are equal. The keys of both are the stem plus an extension
    that starts with ".", so in sorted order every key between them starts with `stem + "."`: a stem stays
    open while the listing is inside that range and is dropped once it leaves it (the listing never comes
    back). The open stems are prefixes of one another, so there are at most as many as a key has dots.
    """

    def __init__(self, namer: ShardNamer, state: Iterable[tuple[str, str]] = ()) -> None:
        self._namer = namer
        self._open: list[tuple[str, str]] = [(stem, shard) for stem, shard in state]

    @property
    def state(self) -> list[tuple[str, str]]:
        return list(self._open)

    def add(self, ref: ShardRef) -> None:
        """Raises InvalidSpecError when `ref` writes the output of an earlier shard; shards come sorted."""
        relative = self._namer.relative(ref.shard)
        stem = self._namer.stem(relative)
        still_open = []
        for open_stem, owner in self._open:
            if relative.startswith(open_stem + "."):
                if open_stem == stem:
                    raise collision_error(owner, ref.shard, ref.output)
                still_open.append((open_stem, owner))
        still_open.append((stem, ref.shard))
        self._open = still_open


def shards_of_part(index: ShardIndex, body: bytes, control_bucket: str) -> Iterator[ShardRef]:
    namer = ShardNamer(index.input, index.output, control_bucket, index.run_id)
    for shard, skipped in decode_part(body):
        yield namer.ref(shard, skipped)


def _put(s3: Any, bucket: str) -> Callable[[str, bytes], None]:
    def put(key: str, body: bytes) -> None:
        content_type = "application/json" if key.endswith(".json") else "application/gzip"
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)

    return put


def shard_list_writer(
    run: RunState, s3: Any, control_bucket: str, part_size: int | None = None
) -> ShardListWriter:
    return ShardListWriter(
        run.run_id, run.spec.input, run.spec.output, _put(s3, control_bucket), part_size or PART_SIZE
    )


def write_shard_list(shard_list: ShardList, spec: BackfillSpec, s3: Any, control_bucket: str) -> ShardIndex:
    """Store an in-memory shard list in the parts layout (small runs and tests)."""
    writer = ShardListWriter(shard_list.run_id, spec.input, spec.output, _put(s3, control_bucket))
    for shard in shard_list.shards:
        writer.add(shard.shard, shard.skipped)
    return writer.close()


def read_shard_index(run_id: str, s3: Any, control_bucket: str) -> ShardIndex | None:
    """The index of the run's shard list (a few KB whatever the run's size); None before prepare finished."""
    body = read_object(s3, control_bucket, shard_index_key(run_id))
    return None if body is None else ShardIndex.model_validate_json(body)


def iter_shards(
    run_id: str, s3: Any, control_bucket: str, index: ShardIndex | None = None
) -> Iterator[ShardRef] | None:
    """Every shard of the run, one part in memory at a time; None when the run has no shard list.

    Runs prepared before the parts layout (`shards.json`) are read from that object.
    """
    index = index or read_shard_index(run_id, s3, control_bucket)
    if index is None:
        legacy = read_object(s3, control_bucket, shard_list_key(run_id))
        if legacy is None:
            return None
        listed = ShardList.model_validate_json(legacy).shards
        return iter([ShardRef(s.shard, s.output, s.error, s.skipped) for s in listed])

    def shards() -> Iterator[ShardRef]:
        for part in index.parts:
            body = read_object(s3, control_bucket, part.key)
            if body is None:
                raise SpotfillError(f"s3://{control_bucket}/{part.key} is missing from the run's shard list")
            yield from shards_of_part(index, body, control_bucket)

    return shards()


def read_shard_list(run_id: str, s3: Any, control_bucket: str) -> ShardList | None:
    """The whole shard list in memory: for small runs, tests and tools; the control plane streams it."""
    found = iter_shards(run_id, s3, control_bucket)
    return None if found is None else ShardList(run_id=run_id, shards=[ref.as_shard() for ref in found])
