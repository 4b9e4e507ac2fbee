"""Finding a run's shards in its input (Validate and PrepareRun): a prefix listed page by page, or a manifest
of shard URIs read whole (bounded by MAX_SHARD_MANIFEST_BYTES and MAX_SHARD_MANIFEST_ENTRIES); and which of
a part's outputs exist already (`existing_among`), listing only the key range they span.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control.aws import is_transient
from spotfill_control.errors import InvalidSpecError, TransientAwsError
from spotfill_control.shards import split_s3_uri
from spotfill_control.spec import (
    InputSpec,
    OutputSpec,
)

# A shard manifest is read whole, by Validate and by each PrepareRun invocation: at these bounds its read,
# checks and ordering peak near 150 MB, under half of Validate's 512 MB
# (docs/contracts/shards-queue-outputs.md, "PrepareRun").
# Larger inputs go under a prefix, which has no bound.
MAX_SHARD_MANIFEST_BYTES = 32 * 1024 * 1024


MAX_SHARD_MANIFEST_ENTRIES = 250_000


def list_shards(input_spec: InputSpec, s3: Any) -> list[str]:
    """Every shard URI of the input in memory: objects under the prefix with the format's extension (in S3's
    listing order, which is sorted), or a manifest's. For tools and tests; PrepareRun streams them part by
    part (`iter_prefix_shards`)."""
    if input_spec.is_prefix:
        return list(iter_prefix_shards(input_spec, s3))
    return read_shard_manifest(input_spec, s3)[0]


def iter_prefix_shards(input_spec: InputSpec, s3: Any, after: str | None = None) -> Iterator[str]:
    """The shard URIs under an input prefix whose key sorts after `after`, page by page in S3's order."""
    bucket, prefix = split_s3_uri(input_spec.uri)
    extensions = input_spec.extensions
    for key in iter_keys(bucket, prefix, s3, what="input.uri", start_after=after):
        if key.lower().endswith(extensions):
            yield f"s3://{bucket}/{key}"


def iter_keys(bucket: str, prefix: str, s3: Any, what: str, start_after: str | None = None) -> Iterator[str]:
    """Object keys under `prefix` (folder markers left out), one ListObjectsV2 page at a time, in S3's order
    (UTF-8 byte order, which is Python's `str` order); from just after `start_after` where given. A caller
    that stops iterating stops the listing."""
    arguments: dict[str, str] = {"Bucket": bucket, "Prefix": prefix}
    if start_after:
        arguments["StartAfter"] = start_after
    while True:
        page = list_page(bucket, prefix, s3, what, **arguments)
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                yield obj["Key"]
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return
        # the token carries the position; StartAfter is not sent again
        arguments = {"Bucket": bucket, "Prefix": prefix, "ContinuationToken": token}


def list_page(bucket: str, prefix: str, s3: Any, what: str, **arguments: Any) -> dict[str, Any]:
    """One ListObjectsV2 call; throttling is a TransientAwsError, a missing or unlistable bucket a spec error
    naming `what` (the spec field)."""
    try:
        return s3.list_objects_v2(**({"Bucket": bucket, "Prefix": prefix} | arguments))
    except ClientError as exc:
        if is_transient(exc):
            raise TransientAwsError(f"{what}: listing s3://{bucket}/{prefix}: {exc}") from exc
        code = exc.response.get("Error", {}).get("Code", "")
        reason = f"bucket {bucket} does not exist" if code == "NoSuchBucket" else f"cannot be listed ({code})"
        raise InvalidSpecError(f"{what}: s3://{bucket}/{prefix}: {reason}.") from None


def no_shards_error(input_spec: InputSpec) -> InvalidSpecError:
    return InvalidSpecError(f"input.uri: no {input_spec.format} shards found under {input_spec.uri}.")


def read_shard_manifest(input_spec: InputSpec, s3: Any) -> tuple[list[str], str]:
    """A shard manifest's entries, checked (s3:// URIs with the format's extension, none twice), and the
    manifest object's ETag. A manifest is read whole, so its size is bounded (`MAX_SHARD_MANIFEST_BYTES`)."""
    bucket, key = split_s3_uri(input_spec.uri)
    try:
        found = s3.get_object(Bucket=bucket, Key=key)
        size = found.get("ContentLength", 0)
        if size > MAX_SHARD_MANIFEST_BYTES:
            raise InvalidSpecError(
                f"input.uri: shard manifest {input_spec.uri} is {size:,} bytes, more than the "
                f"{MAX_SHARD_MANIFEST_BYTES:,} a manifest may have: list the shards under a prefix instead "
                "(input.uri ending in /), which has no such limit."
            )
        body = found["Body"].read()
        etag = str(found.get("ETag", "")).strip('"')
    except ClientError as exc:
        if is_transient(exc):
            raise TransientAwsError(f"input.uri: reading {input_spec.uri}: {exc}") from exc
        code = exc.response.get("Error", {}).get("Code", "")
        raise InvalidSpecError(
            f"input.uri: shard manifest {input_spec.uri} cannot be read ({code})."
        ) from None
    try:
        text = body.decode()
        if key.endswith(".json"):
            entries = json.loads(text)
            if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                raise InvalidSpecError(f"input.uri: {input_spec.uri} must be a JSON array of s3:// URIs.")
        else:
            entries = [line.strip() for line in text.splitlines()]
            entries = [e for e in entries if e and not e.startswith("#")]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSpecError(f"input.uri: {input_spec.uri} is not a valid shard list ({exc}).") from None
    if len(entries) > MAX_SHARD_MANIFEST_ENTRIES:
        raise InvalidSpecError(
            f"input.uri: shard manifest {input_spec.uri} lists {len(entries):,} shards, more than the "
            f"{MAX_SHARD_MANIFEST_ENTRIES:,} a manifest may list: list the shards under a prefix instead "
            "(input.uri ending in /), which has no such limit."
        )
    extensions = input_spec.extensions
    seen: set[str] = set()
    for number, entry in enumerate(entries, start=1):
        where = f"input.uri: {input_spec.uri} entry {number}"
        if not entry.startswith("s3://") or not split_s3_uri(entry)[0] or not split_s3_uri(entry)[1]:
            raise InvalidSpecError(f"{where}: {entry!r} is not an s3://bucket/key URI.")
        if not entry.lower().endswith(extensions):
            raise InvalidSpecError(f"{where}: {entry} does not end in {' or '.join(extensions)}.")
        if entry in seen:
            raise InvalidSpecError(f"{where}: {entry} is listed twice.")
        seen.add(entry)
    return list(entries), etag


def existing_among(outputs: Iterable[str], output_spec: OutputSpec, s3: Any) -> set[str]:
    """Which of `outputs` (output URIs of one part) exist: a listing of only the key range they span, from
    just below the smallest to the largest, each key tested against the part's own outputs, so objects of
    other runs or unrelated ones under the prefix never count."""
    bucket, prefix = split_s3_uri(output_spec.uri)
    head = f"s3://{bucket}/"
    wanted = {uri[len(head) :] for uri in outputs}
    if not wanted:
        return set()
    smallest, largest = min(wanted), max(wanted)
    found: set[str] = set()
    # StartAfter is exclusive: a proper prefix of the smallest key sorts just below it (still under `prefix`,
    # which every output key extends by a stem and an extension)
    for key in iter_keys(bucket, prefix, s3, what="output.uri", start_after=smallest[:-1]):
        if key > largest:
            break
        if key in wanted:
            found.add(head + key)
    return found
