"""The permissions each call spotfill makes implies besides its own action, as AWS documents them.

For every such call (CreateFleet, RequestSpotFleet, RunTask, CreateService, CreateLaunchTemplateVersion,
PutObject with tags) the evaluator refuses it when one implied permission is missing and allows it when all
are granted; and an EC2 call with DryRun answers as EC2 does: DryRunOperation (412) when allowed,
UnauthorizedOperation (403) when not, creating nothing either way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from spotfill import iam

pytestmark = pytest.mark.aws

REGION = "us-east-1"
ACCOUNT = "123456789012"
TEMPLATE = "lt-0123456789abcdef0"
TEMPLATE_ARN = f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/{TEMPLATE}"
OTHER_TEMPLATE_ARN = f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/lt-0fffffffffffffff0"
PROFILE = f"arn:aws:iam::{ACCOUNT}:instance-profile/spotfill-instance"
INSTANCE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/spotfill-instance"
FLEET_ROLE = f"arn:aws:iam::{ACCOUNT}:role/spotfill-fleet"
TEMPLATE_DATA = {
    "ImageId": "ami-0123456789abcdef0",
    "IamInstanceProfile": {"Arn": PROFILE},
    "SecurityGroupIds": ["sg-0123456789abcdef0"],
    "TagSpecifications": [
        {"ResourceType": "instance", "Tags": [{"Key": "spotfill:stack", "Value": "s"}]},
        {"ResourceType": "volume", "Tags": [{"Key": "spotfill:stack", "Value": "s"}]},
    ],
}
ARN = f"arn:aws:ec2:{REGION}:{ACCOUNT}"


def _account() -> iam.Account:
    return iam.Account(
        REGION,
        ACCOUNT,
        role_of_instance_profile=lambda arn: INSTANCE_ROLE,
        launch_template_data=lambda template, version: TEMPLATE_DATA,
    )


def _allow(action: str | list[str], resource: str | list[str] = "*", **condition: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        statement["Condition"] = condition
    return statement


def _statements(*raw: dict[str, Any]) -> list[iam.Statement]:
    return [iam.Statement.parse(s, f"test/{i}") for i, s in enumerate(raw)]


def _denied(requests: list[iam.Request], *raw: dict[str, Any]) -> list[str]:
    statements = _statements(*raw)
    return [f"{r.action} on {r.resource}" for r in requests if not iam.evaluate(statements, r).allowed]


LAUNCH_CONFIGS = [
    {
        "LaunchTemplateSpecification": {"LaunchTemplateId": TEMPLATE, "Version": "3"},
        "Overrides": [{"InstanceType": "c5.large", "SubnetId": "subnet-1,subnet-2", "WeightedCapacity": 1.0}],
    }
]

# The RequestFleet function's grants in template.yaml, with the stack's names filled in.
PASS_INSTANCE_ROLE = _allow(
    "iam:PassRole", INSTANCE_ROLE, StringEquals={"iam:PassedToService": "ec2.amazonaws.com"}
)
SPOT_FLEET_GRANTS = [
    _allow(["ec2:RequestSpotFleet", "ec2:CreateFleet"]),
    _allow(
        "ec2:CreateTags",
        f"{ARN}:spot-fleet-request/*",
        StringEquals={"ec2:CreateAction": "RequestSpotFleet"},
    ),
    _allow(
        "ec2:RunInstances",
        [
            TEMPLATE_ARN,
            f"{ARN}:security-group/sg-0123456789abcdef0",
            f"{ARN}:subnet/*",
            f"arn:aws:ec2:{REGION}::image/*",
            f"{ARN}:instance/*",
            f"{ARN}:volume/*",
            f"{ARN}:network-interface/*",
        ],
        ArnEquals={"ec2:LaunchTemplate": TEMPLATE_ARN},
    ),
    _allow(
        "ec2:CreateTags",
        [f"{ARN}:instance/*", f"{ARN}:volume/*"],
        StringEquals={"ec2:CreateAction": ["RunInstances", "RequestSpotFleet"]},
    ),
    _allow("iam:PassRole", FLEET_ROLE, StringEquals={"iam:PassedToService": "spotfleet.amazonaws.com"}),
    PASS_INSTANCE_ROLE,
]


def _spot_fleet_requests() -> list[iam.Request]:
    config = {
        "IamFleetRole": FLEET_ROLE,
        "TargetCapacity": 1,
        "Type": "maintain",
        "LaunchTemplateConfigs": LAUNCH_CONFIGS,
        "TagSpecifications": [{"ResourceType": "spot-fleet-request", "Tags": [{"Key": "k", "Value": "v"}]}],
    }
    return iam.requests_of("ec2", "RequestSpotFleet", {"SpotFleetRequestConfig": config}, _account())


def test_request_spot_fleet_implies_run_instances_from_its_launch_template_and_tags_on_what_it_launches():
    # "ec2:RunInstances - Required to launch instances in a Spot Fleet"; "ec2:CreateTags - Required to tag the
    # Spot Fleet request, instances, or volumes" (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/
    # spot-fleet-prerequisites.html)
    requests = _spot_fleet_requests()
    run_instances = [r for r in requests if r.action == "ec2:RunInstances"]
    assert sorted(r.resource for r in run_instances) == sorted(
        [
            TEMPLATE_ARN,
            f"{ARN}:security-group/sg-0123456789abcdef0",
            f"arn:aws:ec2:{REGION}::image/ami-0123456789abcdef0",
            f"{ARN}:subnet/subnet-1",
            f"{ARN}:subnet/subnet-2",
            f"{ARN}:instance/*",
            f"{ARN}:volume/*",
            f"{ARN}:network-interface/*",
        ]
    )
    assert {r.context["ec2:LaunchTemplate"] for r in run_instances} == {TEMPLATE_ARN}
    tags = {(r.resource, r.context.get("ec2:CreateAction")) for r in requests if r.action == "ec2:CreateTags"}
    assert tags == {
        (f"{ARN}:spot-fleet-request/*", "RequestSpotFleet"),
        (f"{ARN}:instance/*", "RunInstances"),
        (f"{ARN}:volume/*", "RunInstances"),
    }
    assert _denied(requests, *SPOT_FLEET_GRANTS) == []


def test_request_spot_fleet_is_refused_without_run_instances_or_the_tags_of_what_it_launches():
    requests = _spot_fleet_requests()
    without_run_instances = [g for g in SPOT_FLEET_GRANTS if g["Action"] != "ec2:RunInstances"]
    assert f"ec2:RunInstances on {TEMPLATE_ARN}" in _denied(requests, *without_run_instances)
    without_instance_tags = [
        g for g in SPOT_FLEET_GRANTS if g["Resource"] != [f"{ARN}:instance/*", f"{ARN}:volume/*"]
    ]
    assert _denied(requests, *without_instance_tags) == [
        f"ec2:CreateTags on {ARN}:instance/*",
        f"ec2:CreateTags on {ARN}:volume/*",
    ]


def test_run_instances_granted_for_another_launch_template_does_not_cover_a_spot_fleet_of_this_one():
    other = [
        {**g, "Condition": {"ArnEquals": {"ec2:LaunchTemplate": OTHER_TEMPLATE_ARN}}}
        if g["Action"] == "ec2:RunInstances"
        else g
        for g in SPOT_FLEET_GRANTS
    ]
    denied = _denied(_spot_fleet_requests(), *other)
    assert denied and all(d.startswith("ec2:RunInstances on ") for d in denied)


def test_a_spot_fleet_whose_template_names_its_image_by_ssm_parameter_reads_the_parameter():
    parameter = "aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
    data = {**TEMPLATE_DATA, "ImageId": f"resolve:ssm:/{parameter}"}
    account = iam.Account(
        REGION,
        ACCOUNT,
        role_of_instance_profile=lambda arn: INSTANCE_ROLE,
        launch_template_data=lambda *_: data,
    )
    config = {"IamFleetRole": FLEET_ROLE, "LaunchTemplateConfigs": LAUNCH_CONFIGS}
    requests = iam.requests_of("ec2", "RequestSpotFleet", {"SpotFleetRequestConfig": config}, account)
    assert not [r for r in requests if ":image/" in r.resource]
    assert _denied(requests, *SPOT_FLEET_GRANTS) == [
        f"ssm:GetParameters on arn:aws:ssm:{REGION}::parameter/{parameter}"
    ]


def _ec2_fleet_requests(fleet_type: str) -> list[iam.Request]:
    params = {
        "Type": fleet_type,
        "LaunchTemplateConfigs": LAUNCH_CONFIGS,
        "TargetCapacitySpecification": {"TotalTargetCapacity": 1},
        "TagSpecifications": [{"ResourceType": "fleet", "Tags": [{"Key": "k", "Value": "v"}]}],
    }
    return iam.requests_of("ec2", "CreateFleet", params, _account())


EC2_FLEET_GRANTS = [
    _allow("ec2:CreateFleet"),
    _allow("ec2:CreateTags", f"{ARN}:fleet/*", StringEquals={"ec2:CreateAction": "CreateFleet"}),
    PASS_INSTANCE_ROLE,
]


def test_a_maintain_ec2_fleet_needs_create_fleet_on_what_it_uses_fleet_tags_and_the_instance_role():
    # A maintain fleet launches through AWSServiceRoleForEC2Fleet ("EC2 Fleet prerequisites",
    # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-prerequisites.html)
    requests = _ec2_fleet_requests("maintain")
    assert not [r for r in requests if r.action == "ec2:RunInstances"]
    assert {r.resource for r in requests if r.action == "ec2:CreateFleet"} == {
        f"{ARN}:fleet/*",
        TEMPLATE_ARN,
        f"arn:aws:ec2:{REGION}::image/ami-0123456789abcdef0",
        f"{ARN}:subnet/subnet-1",
        f"{ARN}:subnet/subnet-2",
        f"{ARN}:instance/*",
        f"{ARN}:volume/*",
    }
    assert _denied(requests, *EC2_FLEET_GRANTS) == []
    assert _denied(requests, *EC2_FLEET_GRANTS[:2]) == [f"iam:PassRole on {INSTANCE_ROLE}"]
    assert _denied(requests, EC2_FLEET_GRANTS[0], EC2_FLEET_GRANTS[2]) == [f"ec2:CreateTags on {ARN}:fleet/*"]
    on_the_fleet_only = _allow("ec2:CreateFleet", f"{ARN}:fleet/*")
    assert f"ec2:CreateFleet on {TEMPLATE_ARN}" in _denied(requests, on_the_fleet_only, *EC2_FLEET_GRANTS[1:])


def test_an_instant_ec2_fleet_launches_as_its_caller():
    requests = _ec2_fleet_requests("instant")
    assert f"ec2:RunInstances on {ARN}:instance/*" in _denied(requests, *EC2_FLEET_GRANTS)


def test_run_task_with_role_overrides_implies_pass_role_to_ecs_tasks():
    task_role = f"arn:aws:iam::{ACCOUNT}:role/task"
    params = {
        "cluster": "spotfill-r1",
        "taskDefinition": "spotfill-r1:1",
        "overrides": {"taskRoleArn": task_role},
        "tags": [{"key": "k", "value": "v"}],
    }
    requests = iam.requests_of("ecs", "RunTask", params, _account())
    run_task = _allow("ecs:RunTask", f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/spotfill-*:*")
    tag = _allow(
        "ecs:TagResource",
        f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/spotfill-*:*",
        StringEquals={"ecs:CreateAction": "RunTask"},
    )
    pass_role = _allow(
        "iam:PassRole", task_role, StringEquals={"iam:PassedToService": "ecs-tasks.amazonaws.com"}
    )
    assert _denied(requests, run_task, tag, pass_role) == []
    assert _denied(requests, run_task, tag) == [f"iam:PassRole on {task_role}"]
    assert _denied(requests, run_task, pass_role) == [
        f"ecs:TagResource on arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/spotfill-r1:1"
    ]


def test_create_service_with_tags_implies_tag_resource_and_with_a_role_pass_role_to_ecs():
    service = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/spotfill-r1/spotfill-r1"
    role = f"arn:aws:iam::{ACCOUNT}:role/ecs-lb"
    params = {
        "cluster": "spotfill-r1",
        "serviceName": "spotfill-r1",
        "taskDefinition": "spotfill-r1:1",
        "tags": [{"key": "k", "value": "v"}],
        "role": role,
    }
    requests = iam.requests_of("ecs", "CreateService", params, _account())
    create = _allow("ecs:CreateService", service)
    tag = _allow("ecs:TagResource", service, StringEquals={"ecs:CreateAction": "CreateService"})
    pass_role = _allow("iam:PassRole", role, StringEquals={"iam:PassedToService": "ecs.amazonaws.com"})
    assert _denied(requests, create, tag, pass_role) == []
    assert _denied(requests, create, pass_role) == [f"ecs:TagResource on {service}"]
    assert _denied(requests, create, tag) == [f"iam:PassRole on {role}"]


def test_create_launch_template_version_with_an_ssm_image_implies_reading_the_parameter():
    parameter = "aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
    params = {
        "LaunchTemplateId": TEMPLATE,
        "SourceVersion": "1",
        "LaunchTemplateData": {"ImageId": f"resolve:ssm:/{parameter}"},
    }
    requests = iam.requests_of("ec2", "CreateLaunchTemplateVersion", params, _account())
    create = _allow("ec2:CreateLaunchTemplateVersion", TEMPLATE_ARN)
    read = _allow("ssm:GetParameters", f"arn:aws:ssm:{REGION}::parameter/{parameter}")
    assert _denied(requests, create, read) == []
    assert _denied(requests, create) == [f"ssm:GetParameters on arn:aws:ssm:{REGION}::parameter/{parameter}"]
    plain = {**params, "LaunchTemplateData": {"ImageId": "ami-0123456789abcdef0"}}
    assert _denied(iam.requests_of("ec2", "CreateLaunchTemplateVersion", plain, _account()), create) == []


def test_put_object_with_tags_implies_put_object_tagging():
    params = {"Bucket": "bucket", "Key": "runs/r1/x", "Body": b"x", "Tagging": "k=v"}
    requests = iam.requests_of("s3", "PutObject", params, _account())
    put = _allow("s3:PutObject", "arn:aws:s3:::bucket/runs/*")
    tagging = _allow("s3:PutObjectTagging", "arn:aws:s3:::bucket/runs/*")
    assert _denied(requests, put, tagging) == []
    assert _denied(requests, put) == ["s3:PutObjectTagging on arn:aws:s3:::bucket/runs/r1/x"]


# ------------------------------------------------------------------------------------------ DryRun


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[boto3.session.Session]:
    with mock_aws(), iam.enforcing():
        yield boto3.session.Session(region_name=REGION)


def _spot_fleet_config(session: boto3.session.Session) -> dict[str, Any]:
    ec2 = session.client("ec2")
    template = ec2.create_launch_template(
        LaunchTemplateName="spotfill", LaunchTemplateData={"ImageId": "ami-0123456789abcdef0"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    return {
        "IamFleetRole": FLEET_ROLE,
        "AllocationStrategy": "priceCapacityOptimized",
        "TargetCapacity": 1,
        "Type": "maintain",
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template, "Version": "1"},
                "Overrides": [{"InstanceType": "c5.large", "SubnetId": subnet}],
            }
        ],
    }


def _principal(*raw: dict[str, Any]) -> iam.Principal:
    return iam.Principal.of_role(f"arn:aws:iam::{ACCOUNT}:role/probe", "session", _statements(*raw))


def _error(call: Any) -> ClientError:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value


def test_an_allowed_dry_run_answers_dry_run_operation_412_and_requests_nothing(aws):
    config = _spot_fleet_config(aws)
    ec2 = aws.client("ec2")
    grants = (
        _allow(["ec2:RequestSpotFleet", "ec2:RunInstances"]),
        _allow("iam:PassRole", FLEET_ROLE),
    )
    with iam.acting_as(_principal(*grants)):
        error = _error(lambda: ec2.request_spot_fleet(SpotFleetRequestConfig=config, DryRun=True))
    assert error.response["Error"] == {
        "Code": "DryRunOperation",
        "Message": "Request would have succeeded, but DryRun flag is set.",
    }
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"] == []


def test_a_denied_dry_run_answers_unauthorized_operation_403_naming_the_missing_permission(aws):
    config = _spot_fleet_config(aws)
    ec2 = aws.client("ec2")
    with iam.acting_as(_principal(_allow("ec2:RequestSpotFleet"), _allow("iam:PassRole", FLEET_ROLE))):
        error = _error(lambda: ec2.request_spot_fleet(SpotFleetRequestConfig=config, DryRun=True))
    assert error.response["Error"]["Code"] == "UnauthorizedOperation"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert (
        "is not authorized to perform: ec2:RunInstances on resource: " in error.response["Error"]["Message"]
    )
    assert ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"] == []


# ------------------------------------------------------------------------------------------ the stack's roles


@pytest.fixture(scope="module")
def deployed(moto_module: None) -> Iterator[tuple[Any, boto3.session.Session]]:
    from spotfill.deploy import deploy_stack

    session = boto3.session.Session(region_name=REGION)
    stack = deploy_stack("implied", session=session)
    with iam.enforcing():
        yield stack, session


def _function(deployed: tuple[Any, boto3.session.Session], logical_id: str) -> dict[str, Any]:
    stack, session = deployed
    return session.client("lambda").get_function_configuration(FunctionName=stack.function(logical_id).name)


def _stack_run(deployed: tuple[Any, boto3.session.Session], api: str) -> tuple[Any, Any]:
    from spotfill_control.config import Settings
    from spotfill_control.instance_types import InstanceTypeFacts
    from spotfill_control.run import RunState
    from spotfill_control.spec import BackfillSpec

    settings = Settings.from_environment(
        _function(deployed, "RequestFleetFunction")["Environment"]["Variables"]
    )
    spec = BackfillSpec.model_validate(
        {
            "name": "probe",
            "input": {"uri": "s3://data/inputs/", "format": "npy"},
            "output": {"uri": "s3://data/outputs/", "format": "parquet"},
            "model": {"uri": "s3://data/models/m.keras"},
            "fleet": {"instance_types": ["c5.large"], "target_capacity": 1, "api": api},
            "limits": {"max_runtime_seconds": 3600},
        }
    )
    facts = {
        "c5.large": InstanceTypeFacts(
            name="c5.large", vcpus=2, memory_mib=4096, gpus=0, architecture="x86_64"
        )
    }
    return RunState(run_id="probe-r1", spec=spec, instance_types=facts), settings


def _role_principal(deployed: tuple[Any, boto3.session.Session], logical_id: str, drop_sid: str = "") -> Any:
    _, session = deployed
    role_arn = _function(deployed, logical_id)["Role"]
    statements = iam.role_statements_from_iam(session.client("iam"), role_arn.rsplit("/", 1)[-1])
    kept = [s for s in statements if not s.source.endswith(f"/{drop_sid}")] if drop_sid else statements
    assert len(kept) < len(statements) or not drop_sid, f"no statement {drop_sid} in {logical_id}'s role"
    return iam.Principal.of_role(role_arn, logical_id, kept)


@pytest.mark.parametrize("api", ["spot-fleet", "ec2-fleet"])
def test_the_request_fleet_role_may_request_the_run_fleet_a_dry_run_confirms_it(deployed, api):
    from spotfill_control.fleet.permissions import confirm_fleet_permissions

    run, settings = _stack_run(deployed, api)
    _, session = deployed
    ec2 = session.client("ec2")
    with iam.acting_as(_role_principal(deployed, "RequestFleetFunction")):
        confirmed = confirm_fleet_permissions(run, ec2, settings)
    operation = {"spot-fleet": "RequestSpotFleet", "ec2-fleet": "CreateFleet"}[api]
    assert confirmed == f"ec2:{operation} for the run's {api} fleet: allowed (DryRunOperation)"
    assert ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"] == []
    assert ec2.describe_fleets()["Fleets"] == []


def test_a_role_without_run_instances_is_told_what_a_spot_fleet_request_needs(deployed):
    from spotfill_control.fleet.permissions import FleetPermissionError, confirm_fleet_permissions

    run, settings = _stack_run(deployed, "spot-fleet")
    _, session = deployed
    principal = _role_principal(
        deployed, "RequestFleetFunction", "LaunchSpotFleetInstancesFromTheStackTemplate"
    )
    with iam.acting_as(principal), pytest.raises(FleetPermissionError) as refused:
        confirm_fleet_permissions(run, session.client("ec2"), settings)
    message = str(refused.value)
    assert message.startswith(
        "the fleet's requester may not request the run's spot-fleet fleet: EC2 refused a DryRun of "
        "RequestSpotFleet (You are not authorized to perform this operation. User: "
    )
    assert "is not authorized to perform: ec2:RunInstances on resource: " in message
    assert "It needs ec2:RequestSpotFleet; ec2:RunInstances from the stack's launch template" in message


def _client(session: boto3.session.Session) -> Any:
    return lambda service, region=None: session.client(service, region_name=region or REGION)


def test_spotfill_plan_confirms_the_fleet_permissions_as_the_request_fleet_function(deployed):
    from spotfill.lambdas import inprocess_lambdas
    from spotfill.plan import confirm_permissions

    stack, session = deployed
    run, _ = _stack_run(deployed, "spot-fleet")
    with inprocess_lambdas(enforce_iam=True) as dispatcher:
        answer = confirm_permissions(run.spec, _client(session), stack.state_machine_arn)
    assert answer == "ec2:RequestSpotFleet for the run's spot-fleet fleet: allowed (DryRunOperation)"
    (invocation,) = dispatcher.invocations
    assert invocation.handler == "spotfill_control.handlers.request_fleet.handler"
    assert session.client("ec2").describe_spot_fleet_requests()["SpotFleetRequestConfigs"] == []


def test_spotfill_plan_says_what_the_request_fleet_role_lacks(deployed):
    from spotfill.lambdas import inprocess_lambdas
    from spotfill.plan import PlanError, confirm_permissions

    stack, session = deployed
    run, _ = _stack_run(deployed, "spot-fleet")
    client = session.client("iam")
    role = _function(deployed, "RequestFleetFunction")["Role"].rsplit("/", 1)[-1]
    saved = {
        name: client.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        for name in client.list_role_policies(RoleName=role)["PolicyNames"]
    }
    try:
        for name, document in saved.items():
            kept = [
                s
                for s in document["Statement"]
                if s.get("Sid") != "LaunchSpotFleetInstancesFromTheStackTemplate"
            ]
            client.put_role_policy(
                RoleName=role, PolicyName=name, PolicyDocument=json.dumps({**document, "Statement": kept})
            )
        with inprocess_lambdas(enforce_iam=True), pytest.raises(PlanError) as refused:
            confirm_permissions(run.spec, _client(session), stack.state_machine_arn)
    finally:
        for name, document in saved.items():
            client.put_role_policy(RoleName=role, PolicyName=name, PolicyDocument=json.dumps(document))
    message = str(refused.value)
    assert message.startswith(
        "the fleet request's permissions are not confirmed: FleetPermissionError: the fleet's requester may "
        "not request the run's spot-fleet fleet: EC2 refused a DryRun of RequestSpotFleet ("
    )
    assert "ec2:RunInstances on resource: " in message
