"""Control-plane scale: the shard list and the monitor's reconciliation at a million shards, without AWS.

    .venv/bin/python -m bench.control_scale [--shards 1000000] [--skip-legacy]

Measures, for N synthetic shards: the legacy single `shards.json` (size, parse time, peak memory); the parts
layout (write and stream times, stored bytes, peak memory); the exact reconciliation's set of output URIs
and its pass over the shard list; and the S3 requests one monitor poll makes under each design. Peak memory
is tracemalloc's (Python allocations), measured in separate passes from the timings (tracing slows Python
down several times). Prints a table and writes nothing.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

from spotfill_control import shards
from spotfill_control.monitoring.progress import ROWS_SAMPLE_LIMIT
from spotfill_control.spec import InputSpec, OutputSpec

INPUT = InputSpec(uri="s3://data-bucket/inputs/2026/11/", format="npy")
OUTPUT = OutputSpec(uri="s3://data-bucket/outputs/2026/11/", format="parquet")
CONTROL = "spotfill-control"
RUN_ID = "bench-20261127060000-abcdef"
LIST_PAGE = 1_000  # ListObjectsV2 returns at most 1,000 keys a call


def synthetic(count: int) -> Iterator[tuple[str, bool]]:
    for i in range(count):
        yield f"s3://data-bucket/inputs/2026/11/day-{i % 31:02d}/part-{i:08d}.npy", i % 50 == 0


def measure(fn: Callable[[], Any], trace: bool) -> tuple[float, int, Any]:
    """(seconds, peak bytes or 0, result)."""
    gc.collect()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = 0
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return seconds, peak, result


def legacy(count: int) -> dict[str, Any]:
    namer = shards.ShardNamer(INPUT, OUTPUT, CONTROL, RUN_ID)

    def build() -> bytes:
        listed = shards.ShardList(
            run_id=RUN_ID,
            shards=[
                shards.Shard(shard=s, output=r.output, error=r.error, skipped=k)
                for s, k in synthetic(count)
                for r in [namer.ref(s, k)]
            ],
        )
        return listed.model_dump_json().encode()

    body = build()
    parse_s, _, _ = measure(lambda: len(shards.ShardList.model_validate_json(body).shards), trace=False)
    _, parse_peak, _ = measure(lambda: len(shards.ShardList.model_validate_json(body).shards), trace=True)
    return {"bytes": len(body), "parse_s": parse_s, "parse_peak": parse_peak}


def parts(count: int) -> dict[str, Any]:
    def write() -> tuple[dict[str, bytes], shards.ShardIndex]:
        stored: dict[str, bytes] = {}
        writer = shards.ShardListWriter(RUN_ID, INPUT, OUTPUT, stored.__setitem__)
        for shard, skipped in synthetic(count):
            writer.add(shard, skipped)
        return stored, writer.close()

    def stream(stored: dict[str, bytes], index: shards.ShardIndex) -> int:
        n = 0
        for part in index.parts:
            for _ in shards.shards_of_part(index, stored[part.key], CONTROL):
                n += 1
        return n

    write_s, _, (stored, index) = measure(write, trace=False)
    _, write_peak, _ = measure(write, trace=True)
    read_s, _, n = measure(lambda: stream(stored, index), trace=False)
    _, read_peak, _ = measure(lambda: stream(stored, index), trace=True)
    assert n == count
    index_bytes = len(stored[shards.shard_index_key(RUN_ID)])
    return {
        "bytes": sum(len(b) for k, b in stored.items() if k != shards.shard_index_key(RUN_ID)),
        "index_bytes": index_bytes,
        "parts": len(index.parts),
        "write_s": write_s,
        "write_peak": write_peak,
        "read_s": read_s,
        "read_peak": read_peak,
        "stored": stored,
        "index": index,
    }


def reconciliation(count: int, stored: dict[str, bytes], index: shards.ShardIndex) -> dict[str, Any]:
    """The exact check: a set of every listed output URI, then one pass over the shard list."""
    namer = shards.ShardNamer(INPUT, OUTPUT, CONTROL, RUN_ID)
    outputs = [namer.ref(s, k).output for s, k in synthetic(count) if not k]
    outputs = outputs[:-3]  # three shards lost

    def check() -> int:
        present = set(outputs)
        missing = 0
        for part in index.parts:
            for ref in shards.shards_of_part(index, stored[part.key], CONTROL):
                if not ref.skipped and ref.output not in present:
                    missing += 1
        return missing

    seconds, _, missing = measure(check, trace=False)
    assert missing == 3
    # as the listing builds it: fresh strings, one per output object
    _, set_peak, _ = measure(lambda: len({"s3://" + o[len("s3://") :] for o in outputs}), trace=True)
    return {"check_s": seconds, "set_peak": set_peak}


def mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1_000_000)
    parser.add_argument("--skip-legacy", action="store_true", help="skip the single shards.json figures")
    args = parser.parse_args(argv)
    n = args.shards
    print(f"shards: {n:,} (every 50th skipped)")
    if not args.skip_legacy:
        old = legacy(n)
        print(
            f"legacy shards.json:   {mib(old['bytes'])} stored; parse {old['parse_s']:.1f} s, "
            f"peak {mib(old['parse_peak'])}"
        )
    new = parts(n)
    print(
        f"parts layout:         {mib(new['bytes'])} in {new['parts']} parts "
        f"+ index {new['index_bytes']:,} B; write {new['write_s']:.1f} s (peak {mib(new['write_peak'])}), "
        f"stream {new['read_s']:.1f} s (peak {mib(new['read_peak'])})"
    )
    exact = reconciliation(n, new["stored"], new["index"])
    print(
        f"exact reconciliation: set of {n:,} output URIs peak {mib(exact['set_peak'])}; "
        f"pass over the list {exact['check_s']:.1f} s"
    )
    pages = math.ceil(n / LIST_PAGE)
    print("S3 requests per monitor poll:")
    print(f"  before:                        {pages:,} ListObjectsV2 + GET shards.json + <=5 HEAD")
    print("  now, work queued (cheap):      0 ListObjectsV2, 0 parts; GET index (<=1) + <=5 HEAD while")
    print(f"                                 rows are sampled (first {ROWS_SAMPLE_LIMIT} outputs), then none")
    print(f"  now, queue idle (exact):       {pages:,} ListObjectsV2 + {new['parts']} part GETs + index")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
