"""The on-demand fallback on the local cloud: spot is short, the shortfall runs on demand after the wait the
spec sets, and the run completes with its predictions made on demand."""

from __future__ import annotations

from datetime import datetime

import pytest

from spotfill.localcloud.patches.fleets import set_spot_capacity
from spotfill.localrun import follow_run, manifest, upload_and_trigger

pytestmark = pytest.mark.e2e

FALLBACK_AFTER_SECONDS = 4


@pytest.fixture
def no_spot_capacity():
    """The emulated spot market has no c5.xlarge at all (on demand is never short)."""
    set_spot_capacity({"c5.xlarge": 0})
    yield
    set_spot_capacity({})


def test_spot_short_runs_the_shortfall_on_demand_after_the_wait_and_the_run_completes(
    local_cloud, digits, quiet_console, no_spot_capacity
):
    # given a 2-unit EC2 Fleet (the default API) whose spot cannot launch, and a 4 s fallback wait
    spec = manifest(  # on TensorFlow: about the fleet, not choosing a runtime (auto converts in every worker)
        "fallback",
        local_cloud.outputs.data_bucket,
        "models/fallback/model.keras",
        "npy",
        "npy",
        2,
        runtime="tensorflow",
    )
    spec["fleet"]["on_demand_fallback_after_seconds"] = FALLBACK_AFTER_SECONDS

    # when it runs
    execution_arn = upload_and_trigger(
        local_cloud, spec, digits.model_path, digits.shards(), digits.input_dir
    )
    result = follow_run(local_cloud, execution_arn, quiet_console, timeout=300)

    # then it completes, every prediction made on demand
    assert result.snapshot.status == "SUCCEEDED", result.snapshot.error
    report = result.report
    assert report["status"] == "succeeded" and report["shards"]["succeeded"] == 8
    assert report["capacity"]["fleet_api"] == "ec2-fleet"
    assert report["capacity"]["fleet_id"].startswith("fleet-")
    assert report["predictions"]["by_purchase_option"] == {"on-demand": 8 * 300}
    # and the fleet's instances were on demand, launched no sooner than the wait after the fleet's request
    ec2 = local_cloud.client("ec2")
    instances = [
        i
        for r in ec2.describe_instances(
            Filters=[{"Name": "tag:spotfill:run-id", "Values": [result.snapshot.run_id]}]
        )["Reservations"]
        for i in r["Instances"]
    ]
    assert instances and all("InstanceLifecycle" not in i for i in instances)  # no spot instance ever ran
    requested = datetime.fromisoformat(report["timeline"]["fleet_requested_at"].replace("Z", "+00:00"))
    first_launch = min(i["LaunchTime"] for i in instances)
    assert (first_launch - requested).total_seconds() >= FALLBACK_AFTER_SECONDS - 1  # EC2's whole seconds
    assert local_cloud.wait_idle(), local_cloud.leftovers()
