"""A manifest whose key needs URL-encoding, uploaded to the local cloud, starts an execution that reads that
manifest: S3's EventBridge event carries the key URL-encoded (the local cloud encodes it as S3 does) and
Validate decodes it."""

from __future__ import annotations

import json

from .helpers import eventually

KEY = "backfills/nightly run #1 c++ é.json"


def test_manifest_with_space_plus_hash_and_non_ascii_in_its_key_is_read_by_the_execution_it_starts(
    local_cloud,
):
    # given a manifest under such a key whose only problem is one only its content can show
    data = local_cloud.outputs.data_bucket
    control = local_cloud.outputs.control_bucket
    manifest = {
        "name": "special-key",
        "input": {"uri": f"s3://{data}/inputs/special-key/", "format": "npy"},
        "output": {"uri": f"s3://{data}/outputs/special-key/"},
        "model": {"uri": f"s3://{data}/models/special-key.keras"},
        "fleet": {"instance_types": ["c5.large"], "target_capacity": 1},
        "limits": {"max_runtime_seconds": 14 * 86_400},
    }
    sfn = local_cloud.client("stepfunctions")
    machine = local_cloud.outputs.state_machine_arn
    before = {e["executionArn"] for e in sfn.list_executions(stateMachineArn=machine)["executions"]}

    # when it is uploaded
    local_cloud.client("s3").put_object(Bucket=control, Key=KEY, Body=json.dumps(manifest).encode())

    # then the execution it starts fails validation on that manifest's content, naming its decoded URI
    def ended() -> dict | None:
        for execution in sfn.list_executions(stateMachineArn=machine)["executions"]:
            if execution["executionArn"] not in before and execution["status"] != "RUNNING":
                return sfn.describe_execution(executionArn=execution["executionArn"])
        return None

    described = eventually(ended, timeout=60)
    assert described["status"] == "FAILED"
    assert described["error"] == "InvalidSpecError"
    message = json.loads(described["cause"])["errorMessage"]
    assert message.startswith(f"manifest s3://{control}/{KEY}: limits.max_runtime_seconds: at most")
