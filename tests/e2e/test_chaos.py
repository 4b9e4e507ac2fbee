"""Chaos: workers SIGKILLed, spot instances reclaimed and output writes answered 409 mid-run; every output
still exists exactly once, and a run with a deadline meets it through the interruptions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from spotfill_control.monitoring.series import load_series

from spotfill.demo import check_outputs
from spotfill.localcloud import ChaosSpec, LocalCloud, LocalCloudOptions
from spotfill.localrun import download_outputs, follow_run, manifest, upload_and_trigger

from .helpers import FAST_WORKERS, worker_records, write_digits

pytestmark = pytest.mark.e2e

CHAOS_RUN_SECONDS = 480  # how long the chaos run may take, and so its deadline
# Measured on a quiet 2-core machine: 200 shards gave room for 10-12 of the 15 events (about 17 shards an
# event: each waits for the fleet's progress, the replacement of what the last one took, and a second), so
# 400 shards hold about 1.5 x the 15 events' worth.
SHARDS = 400


def test_a_run_survives_ten_kills_and_five_spot_interruptions_and_meets_its_deadline(
    tmp_path, digits, quiet_console
):
    # given 400 small shards and a local cloud that kills 10 workers and reclaims 5 instances during the run
    # (the events are paced by the fleet's progress, about one every 17 shards on a quiet machine, so the run
    # has shards enough for all fifteen however fast the machine)
    data = write_digits(tmp_path / "data", shards=SHARDS, rows=50, model_path=digits.model_path)
    chaos = ChaosSpec(kill=10, interrupt=5, every=1.0, warmup=0.5)
    options = LocalCloudOptions(
        boot_delay=1.0, run_dir=tmp_path / "local", chaos=chaos, worker_environment=FAST_WORKERS
    )
    with LocalCloud(options) as cloud:
        # and a deadline at the end of the time the run may take, so it is met whenever the run ends in time,
        # however busy the machine: the fleet may grow to 2 instances of 3 workers (fleet.target_capacity),
        # and starts at the 1 that the plan's estimate (500 predictions/s per unit, 20,000 predictions: 40 s)
        # needs for a deadline minutes away. A deadline run's fleet is as lean as the deadline allows: each
        # interruption reclaims all of its workers, and every poll the Monitor steers its target by the rate
        # it measures, reclaimed capacity included.
        deadline = datetime.now(UTC) + timedelta(seconds=CHAOS_RUN_SECONDS)
        spec = manifest(
            "chaos",
            cloud.outputs.data_bucket,
            "models/chaos/model.keras",
            "npy",
            "npy",
            instances=2,
            finish_by=deadline.isoformat(),
        )
        spec["service"]["tasks_per_instance"] = 3
        spec["estimate"] = {
            "made_at": datetime.now(UTC).isoformat(),
            "instance_type": "c5.xlarge",
            "target_capacity": 1,
            "predictions": SHARDS * 50,
            "predictions_per_second": 500.0,
            "seconds": 30.0,
            "total_usd": 0.0001,
        }

        # when the backfill runs through the chaos
        arn = upload_and_trigger(cloud, spec, data.model_path, data.shards(), data.input_dir)
        result = follow_run(cloud, arn, quiet_console, timeout=(deadline - datetime.now(UTC)).total_seconds())

        # then all the chaos happened, and the run still succeeded
        assert (cloud.chaos.kills, cloud.chaos.interruptions) == (10, 5)
        assert result.snapshot.status == "SUCCEEDED", result.snapshot.error
        report = result.report
        assert report["status"] == "succeeded"
        assert report["shards"]["succeeded"] == SHARDS
        # and the report counts the interruptions, each instance reclaimed replaced by the fleet
        assert report["instances"]["interruptions"] == 5
        assert report["instances"]["count"] >= 1 + 5
        # and every output exists exactly once and matches the model
        s3 = cloud.client("s3")
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=cloud.outputs.data_bucket, Prefix="outputs/chaos/"
        ):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        assert sorted(keys) == [f"outputs/chaos/part-{i:05d}.npy" for i in range(SHARDS)]
        result.outputs = download_outputs(cloud, spec, data.shards(), data.input_dir, tmp_path / "out")
        assert check_outputs(result, data.reference) == []

        # and the deadline was met after the interruptions, the fleet started at what Validate sized for it
        met = report["deadline"]
        assert datetime.fromisoformat(met["at"]) == deadline
        assert met["met"] is True and met["seconds_to_spare"] >= 0, met
        assert (met["checked_at_validate"], met["start_units"]) == (True, 1)
        assert (report["capacity"]["fleet_target_capacity"], report["capacity"]["spec_target_capacity"]) == (
            1,
            2,
        )
        # and the series recorded the Monitor's target against the running capacity at every poll, through
        # the interruptions, and the finish it projected once it measured a rate
        samples = load_series(s3, cloud.outputs.control_bucket, report["run_id"]).samples
        assert samples and all(1 <= sample.target_capacity <= 2 for sample in samples)
        assert samples[-1].interruptions == 5
        assert any(sample.projected_finish is not None for sample in samples)
        # and the report page draws the deadline chart and says it was met
        page = result.report_page
        assert '<figure class="chart" id="chart-deadline" data-chart="deadline" data-empty="false">' in page
        assert "met, " in page and f"deadline {met['at']}" in page
        # and nothing is left running or allocated: fleets, instances, tasks, services, clusters, queues
        assert cloud.wait_idle(), cloud.leftovers()


def test_output_writes_answered_409_conflict_are_retried_by_the_worker_and_no_shard_fails(
    tmp_path, digits, quiet_console
):
    # given a local cloud whose S3 answers the first conditional write of each of four outputs with 409
    # ConditionalRequestConflict, as S3 does when another write to the key is in flight
    options = LocalCloudOptions(
        boot_delay=1.0,
        run_dir=tmp_path / "local",
        chaos=ChaosSpec(conflict=4),
        worker_environment=FAST_WORKERS,
    )
    shards = digits.shards()[:4]
    with LocalCloud(options) as cloud:
        spec = manifest(
            "conflicts", cloud.outputs.data_bucket, "models/conflicts/model.keras", "npy", "npy", instances=1
        )

        # when a backfill of four shards runs
        arn = upload_and_trigger(cloud, spec, digits.model_path, shards, digits.input_dir)
        result = follow_run(cloud, arn, quiet_console, timeout=240)

        # then every output write met its conflict, and the run succeeded with no shard failed even once
        assert cloud.chaos.conflicts == 4
        assert result.snapshot.status == "SUCCEEDED", result.snapshot.error
        report = result.report
        assert report["status"] == "succeeded"
        assert report["shards"]["succeeded"] == 4 and report["shards"]["retried"] == 0
        logs = (cloud.run_dir / "logs" / f"spotfill-{report['run_id']}").glob("*.log")
        records = [record for log in logs for record in worker_records(log)]
        assert len([r for r in records if r.get("event") == "output_write_conflict"]) == 4
        assert not [r for r in records if r.get("event") == "shard_failed"]
        result.outputs = download_outputs(cloud, spec, shards, digits.input_dir, tmp_path / "out")
        expected = {s.name: digits.reference[s.name] for s in shards}
        assert check_outputs(result, expected) == []
        assert cloud.wait_idle(), cloud.leftovers()
