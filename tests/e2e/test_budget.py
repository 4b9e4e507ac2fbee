"""The dollar cap on the local cloud: a run with a small `limits.max_total_usd` drains mid-run, ends "budget
reached" within the guarantee, and `spotfill redrive` with a new cap finishes its unfinished shards."""

from __future__ import annotations

import pytest
from spotfill_control.monitoring import budget

from spotfill.cli import main
from spotfill.demo import check_outputs
from spotfill.localcloud.pricing import spot_price
from spotfill.localrun import download_outputs, follow_run, manifest, upload_and_trigger

from .helpers import write_digits

pytestmark = pytest.mark.e2e

INSTANCES = 2
SHARDS = 150
POLL_SECONDS = 1
# Seconds of the whole fleet's time the cap pays for beyond the projection's reserve (a poll and a drain):
# the instances boot, register and their workers load the model in a few of them, and two workers get
# through a few shards in the rest, far fewer than SHARDS, so the drain comes mid-run.
FLEET_SECONDS_BEYOND_THE_RESERVE = 9
# How fast the capped run's instances compute (the local cloud's per-type speed: each forward pass is paced
# to take 1/SPEED of its time). At full speed a worker finishes a 1,000-row shard in milliseconds, and on a
# fast machine all SHARDS before the cap; paced, a shard takes a second or more, so the cost of finishing that
# the Monitor projects passes the cap as soon as it has measured a rate, whatever the machine, and the run
# drains mid-run. The redrive runs at full speed.
CAPPED_RUN_SPEED = 0.002


def test_a_run_with_a_small_cap_drains_mid_run_within_one_poll_of_the_cap_and_redrive_finishes_it(
    local_cloud, quiet_console, tmp_path
):
    # given more shards than two workers get through before the cap, and a cap of a fraction of a cent
    data = write_digits(tmp_path / "data", shards=SHARDS, rows=1000)
    spec = manifest(
        "budget",
        local_cloud.outputs.data_bucket,
        "models/budget/model.keras",
        "npy",
        "npy",
        instances=INSTANCES,
        poll_interval=POLL_SECONDS,
    )
    hourly = INSTANCES * spot_price(spec["fleet"]["instance_types"][0])  # the fleet's hourly price
    cap = hourly * (budget.horizon_seconds(POLL_SECONDS) + FLEET_SECONDS_BEYOND_THE_RESERVE) / 3600
    spec["limits"]["max_total_usd"] = cap

    # when the manifest is uploaded, its instances slowed
    local_cloud.agent.instance_speed = {spec["fleet"]["instance_types"][0]: CAPPED_RUN_SPEED}
    try:
        arn = upload_and_trigger(local_cloud, spec, data.model_path, data.shards(), data.input_dir)
        result = follow_run(local_cloud, arn, quiet_console, timeout=300)
    finally:
        local_cloud.agent.instance_speed = {}

    # then the run drains and fails BudgetReached, reported as "budget reached", nothing left running
    report = result.report
    assert result.snapshot.status == "FAILED" and report["status"] == "budget_reached", report.get("reason")
    assert report["error"]["type"] == "BudgetReached"
    assert report["budget"]["drain_started_at"] is not None
    shards = report["shards"]
    assert shards["unprocessed"] >= 1 and shards["succeeded"] + shards["unprocessed"] == SHARDS, shards
    assert local_cloud.wait_idle(), local_cloud.leftovers()
    # and what it cost (the report's own reckoning, from each instance's launch to its termination) is at
    # most the cap plus one poll interval of the fleet's hourly price
    one_poll = POLL_SECONDS * hourly / 3600
    spent = report["cost_usd"]["total"]  # every instance at its purchase option's price
    overshoot = spent - cap
    print(
        f"\nbudget e2e: cap ${cap:.8f}, spent ${spent:.8f}, overshoot ${overshoot:.8f} "
        f"= {overshoot / one_poll:+.3f} poll(s) of the fleet's ${hourly:.4f}/h; "
        f"{shards['succeeded']} of {SHARDS} shards done, {shards['unprocessed']} unfinished"
    )
    assert spent <= cap + one_poll

    # when the run is redriven with a new cap
    code = main(
        [
            "redrive",
            report["run_id"],
            "--max-total-usd",
            "1",
            "--watch",
            "--endpoint-url",
            local_cloud.endpoint_url,
        ]
    )

    # then the new run finishes every unfinished shard, and every output equals the model's predictions
    assert code == 0
    result.outputs = download_outputs(local_cloud, spec, data.shards(), data.input_dir, tmp_path / "out")
    assert check_outputs(result, data.reference) == []
