"""`spotfill plan --confirm-permissions` in the local cloud: the stack's RequestFleet function, acting as its
role under the enforced IAM, sends the run's fleet request with DryRun and the local cloud answers as EC2
does (DryRunOperation: allowed), creating no fleet."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.aws


@pytest.mark.parametrize(
    ("api", "operation"), [("spot-fleet", "RequestSpotFleet"), ("ec2-fleet", "CreateFleet")]
)
def test_plan_confirms_the_fleet_request_permissions_as_request_fleet_in_the_local_cloud(
    local_cloud, api, operation
):
    from spotfill_control.spec import BackfillSpec

    from spotfill.plan import confirm_permissions

    spec = BackfillSpec.model_validate(
        {
            "name": "confirm",
            "input": {"uri": "s3://data/inputs/", "format": "npy"},
            "output": {"uri": "s3://data/outputs/", "format": "parquet"},
            "model": {"uri": "s3://data/models/m.keras"},
            "fleet": {"instance_types": ["c5.large", "c5.xlarge"], "target_capacity": 2, "api": api},
            "limits": {"max_runtime_seconds": 3600},
        }
    )
    invoked = len(local_cloud.dispatcher.invocations)

    answer = confirm_permissions(
        spec, lambda service, region=None: local_cloud.client(service), local_cloud.outputs.state_machine_arn
    )

    assert answer == f"ec2:{operation} for the run's {api} fleet: allowed (DryRunOperation)"
    (invocation,) = local_cloud.dispatcher.invocations[invoked:]
    assert invocation.handler == "spotfill_control.handlers.request_fleet.handler"
    ec2 = local_cloud.client("ec2")
    assert ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"] == []
    assert ec2.describe_fleets()["Fleets"] == []
    assert not [
        e for e in local_cloud.dispatcher.iam.denied if e.operation in ("RequestSpotFleet", "CreateFleet")
    ]


def test_the_local_spot_fleet_answers_a_dry_run_as_ec2_does_and_requests_nothing(local_cloud):
    # moto itself would request the fleet; EC2 answers DryRunOperation, HTTP 412
    from botocore.exceptions import ClientError

    ec2 = local_cloud.client("ec2")
    template = ec2.create_launch_template(
        LaunchTemplateName="dry-run-probe", LaunchTemplateData={"ImageId": "ami-0123456789abcdef0"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    config = {
        "IamFleetRole": "arn:aws:iam::123456789012:role/fleet",
        "AllocationStrategy": "priceCapacityOptimized",
        "TargetCapacity": 1,
        "Type": "maintain",
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "1"},
                "Overrides": [{"InstanceType": "c5.large"}],
            }
        ],
    }
    try:
        with pytest.raises(ClientError) as answered:
            ec2.request_spot_fleet(SpotFleetRequestConfig=config, DryRun=True)
    finally:
        ec2.delete_launch_template(LaunchTemplateId=template)
    assert answered.value.response["Error"] == {
        "Code": "DryRunOperation",
        "Message": "Request would have succeeded, but DryRun flag is set.",
    }
    assert answered.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"] == []
