"""Chaos: workers SIGKILLed and spot instances reclaimed mid-run; every output still exists exactly once."""

from __future__ import annotations

import pytest

from spotfill.demo import check_outputs
from spotfill.localcloud import ChaosSpec, LocalCloud, LocalCloudOptions
from spotfill.localrun import download_outputs, follow_run, manifest, upload_and_trigger

from .helpers import FAST_WORKERS, write_digits

pytestmark = pytest.mark.e2e


def test_a_run_survives_ten_kills_and_five_spot_interruptions(tmp_path, digits, quiet_console):
    # given 200 small shards and a local cloud that kills 10 workers and reclaims 5 instances during the run
    data = write_digits(tmp_path / "data", shards=200, rows=50, model_path=digits.model_path)
    chaos = ChaosSpec(kill=10, interrupt=5, every=0.5, warmup=0.5)
    options = LocalCloudOptions(
        boot_delay=1.0, run_dir=tmp_path / "local", chaos=chaos, worker_environment=FAST_WORKERS
    )
    with LocalCloud(options) as cloud:
        spec = manifest(
            "chaos", cloud.outputs.data_bucket, "models/chaos/model.keras", "npy", "npy", instances=3
        )
        spec["service"]["tasks_per_instance"] = 1

        # when the backfill runs through the chaos
        arn = upload_and_trigger(cloud, spec, data.model_path, data.shards(), data.input_dir)
        result = follow_run(cloud, arn, quiet_console, timeout=480)

        # then all the chaos happened, and the run still succeeded
        assert (cloud.chaos.kills, cloud.chaos.interruptions) == (10, 5)
        assert result.snapshot.status == "SUCCEEDED", result.snapshot.error
        report = result.report
        assert report["status"] == "succeeded"
        assert report["shards"]["succeeded"] == 200
        # and the report counts the interruptions
        assert report["instances"]["interruptions"] == 5
        # and every output exists exactly once and matches the model
        s3 = cloud.client("s3")
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=cloud.outputs.data_bucket, Prefix="outputs/chaos/"
        ):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        assert sorted(keys) == [f"outputs/chaos/part-{i:05d}.npy" for i in range(200)]
        result.outputs = download_outputs(cloud, spec, data.shards(), data.input_dir, tmp_path / "out")
        assert check_outputs(result, data.reference) == []
        # and nothing is left running or allocated: fleets, instances, tasks, services, clusters, queues
        assert cloud.wait_idle(timeout=30), cloud.leftovers()
