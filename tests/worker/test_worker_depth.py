"""How many shards the worker fetches ahead: chosen from measured fetch and compute seconds, bounded by a
maximum and by memory, fixed by SPOTFILL_PREFETCH_SHARDS."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from spotfill_worker.depth import INITIAL_DEPTH, DepthEstimate, DepthLimits, InFlight, shards_ahead

pytestmark = pytest.mark.worker

MIB = 2**20
ROOMY = DepthLimits(maximum=16, memory_bytes=1024 * MIB)


def test_a_fetch_as_long_as_a_forward_pass_keeps_one_shard_fetching_and_one_ahead():
    assert shards_ahead(fetch_seconds=0.5, compute_seconds=0.5, shard_bytes=MIB, limits=ROOMY) == 2


def test_a_fetch_much_shorter_than_the_forward_pass_still_keeps_one_ahead():
    # MobileNetV2's shards: ~0.1 s of requests against ~0.6 s of forward pass
    assert shards_ahead(fetch_seconds=0.1, compute_seconds=0.6, shard_bytes=77 * MIB, limits=ROOMY) == 2


def test_slow_requests_against_a_fast_forward_pass_fetch_that_many_shards_at_once():
    # a small model's shard: 110 ms of S3 and SQS round trips, 15 ms of compute: ceil(110 / 15) + 1
    assert shards_ahead(fetch_seconds=0.110, compute_seconds=0.015, shard_bytes=2 * MIB, limits=ROOMY) == 9


def test_the_depth_stops_at_the_maximum_and_at_what_memory_holds():
    assert shards_ahead(1.0, 0.001, MIB, DepthLimits(maximum=16, memory_bytes=1024 * MIB)) == 16
    assert shards_ahead(1.0, 0.001, 100 * MIB, DepthLimits(maximum=16, memory_bytes=512 * MIB)) == 5
    # a shard larger than the memory allowed is still fetched, one at a time
    assert shards_ahead(1.0, 0.001, 600 * MIB, DepthLimits(maximum=16, memory_bytes=512 * MIB)) == 1


def test_an_unmeasured_compute_time_asks_for_the_maximum():
    assert shards_ahead(0.1, 0.0, MIB, ROOMY) == 16


def test_the_estimate_starts_at_the_initial_depth_and_follows_smoothed_measurements():
    # given an estimate that has measured nothing yet
    estimate = DepthEstimate(ROOMY)
    assert estimate.depth == INITIAL_DEPTH == 2

    # when the first shard fetched in 0.12 s and computed in 0.02 s
    first = estimate.observe(fetch_seconds=0.12, compute_seconds=0.02, shard_bytes=2 * MIB)

    # then ceil(0.12 / 0.02) + 1
    assert first == 7

    # and a second, faster fetch moves the estimate 30 % of the way: fetch 0.7 * 0.12 + 0.3 * 0.02 = 0.09
    assert estimate.observe(fetch_seconds=0.02, compute_seconds=0.02, shard_bytes=MIB) == 6
    assert estimate.fetch_seconds == pytest.approx(0.09)
    assert estimate.shard_bytes == 2 * MIB  # the largest shard seen bounds memory


def test_a_fixed_depth_overrides_every_measurement():
    estimate = DepthEstimate(ROOMY, fixed=3)
    assert estimate.depth == 3
    assert estimate.observe(fetch_seconds=5.0, compute_seconds=0.001, shard_bytes=MIB) == 3


def test_in_flight_admits_up_to_its_limit_and_more_once_the_limit_rises():
    # given two held of a limit of two
    slots = InFlight(2)
    assert slots.acquire(timeout=0) and slots.acquire(timeout=0)

    # then a third waits
    assert slots.acquire(timeout=0) is False

    # when another thread raises the limit while one waits
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire(timeout=10)))
    waiter.start()
    slots.set_limit(3)
    waiter.join(timeout=10)

    # then the waiter gets in, and a lower limit admits nobody new until enough are released
    assert got == [True] and slots.held == 3
    slots.set_limit(1)
    slots.release()
    assert slots.acquire(timeout=0) is False
    slots.release()
    slots.release()
    assert slots.acquire(timeout=0) is True


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def slow_get_object(s3, seconds: float):
    """Every GetObject waits ``seconds`` before moto answers it: a shard's download as slow as S3's latency
    against a model that computes a shard in milliseconds."""

    def wait(**_):
        time.sleep(seconds)

    s3.meta.events.register_first("before-send.s3.GetObject", wait)


def test_a_worker_whose_downloads_outlast_its_forward_pass_fetches_shards_up_to_its_maximum(
    cloud, run_worker, tabular_classifier
):
    # given twelve small shards whose downloads each take 0.2 s more than the forward pass of 40 rows
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    shards = {}
    for i in range(12):
        shards[i] = np.random.default_rng(i).normal(size=(40, 5)).astype(np.float32)
        cloud.put(f"inputs/deep-{i}.npy", npy_bytes(shards[i]))
        cloud.send_shard(f"inputs/deep-{i}.npy", "npy")
    slow_get_object(cloud.s3, 0.2)

    # when the worker chooses its own depth, at most 6
    run = run_worker(model_uri, "npy", output_format="npy", max_prefetch_shards=6)

    # then it raised the depth from 2 to the maximum once it measured a shard, and every output is right
    depths = [event["depth"] for event in run.events("prefetch_depth")]
    assert depths[0] == 6 and set(depths) == {6}
    assert run.events("prefetch_depth")[0]["fetch_seconds"] >= 0.2
    for i, x in shards.items():
        output = np.load(io.BytesIO(cloud.get(f"s3://data-bucket/outputs/deep-{i}.npy")))
        np.testing.assert_allclose(output, tabular_classifier.predict(x), atol=1e-5)
    assert run.worker.shards_done == 12 and cloud.queue_counts() == (0, 0)


def test_a_fixed_prefetch_keeps_its_depth_whatever_the_timings(cloud, run_worker, tabular_classifier):
    # given slow downloads again
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    for i in range(4):
        cloud.put(f"inputs/fixed-{i}.npy", npy_bytes(np.zeros((8, 5), dtype=np.float32)))
        cloud.send_shard(f"inputs/fixed-{i}.npy", "npy")
    slow_get_object(cloud.s3, 0.1)

    # when SPOTFILL_PREFETCH_SHARDS fixes the depth at 1
    run = run_worker(model_uri, "npy", output_format="npy", prefetch_shards=1)

    # then it never changes, and one receiver thread fetches
    assert run.events("prefetch_depth") == []
    assert run.worker._slots.limit == 1 and run.worker._threads == 1
    assert run.worker.shards_done == 4
