"""IAM enforced on every AWS call (`spotfill.iam.enforcing`): denied calls fail as AWS fails them, S3's 403
for a missing key, who is evaluated, and the grants of template.yaml's roles as deployed, call by call."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from spotfill import iam
from spotfill.deploy import StackOutputs, deploy_stack

pytestmark = pytest.mark.aws

REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/probe"


def _principal(*statements: dict[str, Any]) -> iam.Principal:
    return iam.Principal.of_role(
        ROLE, "session", [iam.Statement.parse(s, f"probe/{i}") for i, s in enumerate(statements)]
    )


def _allow(action: str | list[str], resource: str | list[str] = "*", **condition: Any) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        statement["Condition"] = condition
    return statement


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[boto3.session.Session]:
    with mock_aws(), iam.enforcing():
        session = boto3.session.Session(region_name=REGION)
        session.client("s3").create_bucket(Bucket="bucket")
        session.client("s3").put_object(Bucket="bucket", Key="runs/r1/state.json", Body=b"{}")
        yield session


def _error(call: Any) -> ClientError:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value


# ------------------------------------------------------------------------------------------ denials


def test_a_denied_json_call_fails_with_access_denied_exception_naming_principal_action_and_resource(aws):
    ecs = aws.client("ecs")
    with iam.acting_as(_principal(_allow("s3:GetObject", "arn:aws:s3:::bucket/*"))):
        error = _error(lambda: ecs.list_services(cluster="spotfill-r1"))
    assert error.response["Error"]["Code"] == "AccessDeniedException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error.response["Error"]["Message"] == (
        f"User: arn:aws:sts::{ACCOUNT}:assumed-role/probe/session is not authorized to perform: "
        "ecs:ListServices on resource: * because no identity-based policy allows the ecs:ListServices action"
    )


def test_a_denied_ec2_call_fails_with_unauthorized_operation(aws):
    ec2 = aws.client("ec2")
    with iam.acting_as(_principal(_allow("ec2:DescribeInstances"))):
        ec2.describe_instances()
        error = _error(lambda: ec2.terminate_instances(InstanceIds=["i-0123456789abcdef0"]))
    assert error.response["Error"]["Code"] == "UnauthorizedOperation"
    assert "is not authorized to perform: ec2:TerminateInstances on resource: " in str(error)
    assert f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0123456789abcdef0" in str(error)


def test_a_denied_s3_call_fails_with_access_denied_and_is_never_sent(aws):
    s3 = aws.client("s3")
    with iam.acting_as(_principal(_allow("s3:GetObject", "arn:aws:s3:::bucket/*"))):
        error = _error(lambda: s3.put_object(Bucket="bucket", Key="runs/r1/other.json", Body=b"x"))
    assert error.response["Error"]["Code"] == "AccessDenied"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert 'on resource: "arn:aws:s3:::bucket/runs/r1/other.json"' in str(error)
    assert s3.list_objects_v2(Bucket="bucket")["KeyCount"] == 1


def test_an_explicit_deny_wins_over_an_allow_and_says_so(aws):
    s3 = aws.client("s3")
    principal = _principal(
        _allow("s3:*", "arn:aws:s3:::bucket/*"),
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bucket/runs/*"},
    )
    with iam.acting_as(principal):
        error = _error(lambda: s3.get_object(Bucket="bucket", Key="runs/r1/state.json"))
    assert "with an explicit deny in an identity-based policy" in str(error)


def test_reading_an_s3_object_version_is_s3_get_object_version_not_s3_get_object(aws):
    # S3 authorises a GetObject or HeadObject that names a VersionId with s3:GetObjectVersion alone
    s3 = aws.client("s3")
    s3.put_bucket_versioning(Bucket="bucket", VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(Bucket="bucket", Key="runs/r1/state.json", Body=b"{}")["VersionId"]
    versioned = {"Bucket": "bucket", "Key": "runs/r1/state.json", "VersionId": version}
    with iam.acting_as(_principal(_allow("s3:GetObject", "arn:aws:s3:::bucket/*"))):
        s3.get_object(Bucket="bucket", Key="runs/r1/state.json")
        error = _error(lambda: s3.get_object(**versioned))
    assert "is not authorized to perform: s3:GetObjectVersion on resource" in str(error)
    with iam.acting_as(_principal(_allow("s3:GetObjectVersion", "arn:aws:s3:::bucket/runs/*"))):
        assert s3.get_object(**versioned)["Body"].read() == b"{}"
        s3.head_object(**versioned)
        assert (
            _error(lambda: s3.get_object(Bucket="bucket", Key="runs/r1/state.json")).response["Error"]["Code"]
            == "AccessDenied"
        )


# ------------------------------------------------------------------------------------------ S3's missing keys


READ_ONLY = _allow("s3:GetObject", "arn:aws:s3:::bucket/*")


def test_a_missing_key_answers_403_access_denied_to_a_principal_that_may_not_list_the_bucket(aws):
    s3 = aws.client("s3")
    with iam.acting_as(_principal(READ_ONLY)):
        get = _error(lambda: s3.get_object(Bucket="bucket", Key="runs/r1/missing.json"))
        head = _error(lambda: s3.head_object(Bucket="bucket", Key="runs/r1/missing.json"))
        assert s3.get_object(Bucket="bucket", Key="runs/r1/state.json")["Body"].read() == b"{}"
    assert (get.response["Error"]["Code"], get.response["ResponseMetadata"]["HTTPStatusCode"]) == (
        "AccessDenied",
        403,
    )
    assert (head.response["Error"]["Code"], head.response["ResponseMetadata"]["HTTPStatusCode"]) == (
        "403",
        403,
    )


def test_a_missing_key_answers_404_to_a_principal_that_may_list_the_bucket(aws):
    s3 = aws.client("s3")
    with iam.acting_as(_principal(READ_ONLY, _allow("s3:ListBucket", "arn:aws:s3:::bucket"))):
        get = _error(lambda: s3.get_object(Bucket="bucket", Key="runs/r1/missing.json"))
        head = _error(lambda: s3.head_object(Bucket="bucket", Key="runs/r1/missing.json"))
    assert get.response["Error"]["Code"] == "NoSuchKey"
    assert head.response["Error"]["Code"] == "404"


def test_a_list_bucket_grant_scoped_to_a_prefix_still_answers_403_for_a_missing_key(aws):
    # A GetObject carries no s3:prefix, so a statement conditioned on it does not apply to the 404/403 choice.
    s3 = aws.client("s3")
    scoped = _allow("s3:ListBucket", "arn:aws:s3:::bucket", StringLike={"s3:prefix": "runs/*"})
    with iam.acting_as(_principal(READ_ONLY, scoped)):
        assert s3.list_objects_v2(Bucket="bucket", Prefix="runs/r1/")["KeyCount"] == 1
        get = _error(lambda: s3.get_object(Bucket="bucket", Key="runs/r1/missing.json"))
    assert get.response["Error"]["Code"] == "AccessDenied"


# ------------------------------------------------------------------------------------------ who is evaluated


def test_calls_outside_any_principal_are_not_evaluated(aws):
    s3 = aws.client("s3")
    s3.put_object(Bucket="bucket", Key="anything", Body=b"x")
    with iam.acting_as(_principal()), iam.acting_as(None):
        s3.put_object(Bucket="bucket", Key="anything-else", Body=b"x")


def test_work_a_principal_hands_to_a_thread_pool_acts_as_that_principal(aws):
    s3 = aws.client("s3")
    with iam.acting_as(_principal(READ_ONLY)), ThreadPoolExecutor(max_workers=2) as pool:
        allowed = pool.submit(lambda: s3.get_object(Bucket="bucket", Key="runs/r1/state.json")["Body"].read())
        denied = pool.submit(lambda: s3.put_object(Bucket="bucket", Key="runs/x", Body=b"x"))
        assert allowed.result() == b"{}"
        assert denied.exception().response["Error"]["Code"] == "AccessDenied"  # type: ignore[union-attr]
    # a plain thread the principal did not hand work to acts as nobody
    outcome: list[Any] = []
    with iam.acting_as(_principal()):
        thread = threading.Thread(target=lambda: outcome.append(s3.list_buckets()["Buckets"]))
        thread.start()
        thread.join()
    assert outcome and outcome[0][0]["Name"] == "bucket"


def test_a_call_the_evaluator_cannot_map_fails_loudly_naming_the_call():
    account = iam.Account(REGION, ACCOUNT)
    with pytest.raises(iam.UnmappedCall, match=r"kms\.Decrypt: .*KeyId"):
        iam.requests_of("kms", "Decrypt", {"CiphertextBlob": b"x"}, account)
    with pytest.raises(iam.UnmappedCall, match=r"s3\.Frobnicate: s3:Frobnicate is not an IAM action"):
        iam.requests_of("s3", "Frobnicate", {}, account)


def test_calls_of_other_services_are_evaluated_from_the_service_authorization_reference_alone():
    account = iam.Account(REGION, ACCOUNT)
    (offerings,) = iam.requests_of("ec2", "DescribeInstanceTypeOfferings", {}, account)
    assert (offerings.action, offerings.resource) == ("ec2:DescribeInstanceTypeOfferings", "*")
    (images,) = iam.requests_of("ecr", "DescribeImages", {"repositoryName": "spotfill-worker"}, account)
    assert images.resource == f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/spotfill-worker"
    (quota,) = iam.requests_of(
        "service-quotas", "GetServiceQuota", {"ServiceCode": "ec2", "QuotaCode": "L-34B43A08"}, account
    )
    assert (quota.action, quota.resource) == (
        "servicequotas:GetServiceQuota",
        f"arn:aws:servicequotas:{REGION}:{ACCOUNT}:ec2/L-34B43A08",
    )


def test_an_action_without_resource_level_permissions_is_granted_only_by_a_statement_on_star():
    (need,) = iam.requests_of("ec2", "DescribeInstances", {}, iam.Account(REGION, ACCOUNT))
    on_arn = iam.Statement.parse(
        _allow("ec2:DescribeInstances", f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*")
    )
    assert not iam.is_allowed([on_arn], need)
    assert iam.is_allowed([iam.Statement.parse(_allow("ec2:DescribeInstances", "*"))], need)


# ------------------------------------------------------------------------------------------ the stack's roles


@pytest.fixture(scope="module")
def deployed(moto_module: None) -> Iterator[tuple[StackOutputs, boto3.session.Session]]:
    session = boto3.session.Session(region_name=REGION)
    stack = deploy_stack("enforced", session=session)
    with iam.enforcing():
        yield stack, session


def _as_function(deployed: tuple[StackOutputs, boto3.session.Session], logical_id: str) -> Any:
    stack, session = deployed
    function = session.client("lambda").get_function(FunctionName=stack.function(logical_id).name)
    principals = iam.RolePrincipals(session.client)
    return iam.acting_as(
        principals(function["Configuration"]["Role"], function["Configuration"]["FunctionName"])
    )


# Each function that reads a control-bucket key that may not exist (docs/contracts/iam.md), and such a key.
CONTROL_BUCKET_PROBES = [
    ("ValidateFunction", "backfills/missing.json"),  # a manifest deleted before Validate read it
    ("PrepareRunFunction", "runs/fresh/shards/index.json"),  # not written before the first attempt
    ("TeardownFunction", "runs/fresh/state.json"),  # a run torn down before any handler persisted it
    ("ReportFunction", "reports/fresh.json"),  # no report yet
    ("CleanupOnExitFunction", "executions/fresh.json"),  # the execution failed before a run existed
]


def test_prepare_run_finds_no_shard_index_before_it_writes_one(deployed):
    # Defect 1: without s3:ListBucket on the control bucket S3 answers 403 and every run failed in PrepareRun.
    from spotfill_control import shards

    stack, session = deployed
    with _as_function(deployed, "PrepareRunFunction"):
        assert shards.read_shard_index("fresh-run", session.client("s3"), stack.control_bucket) is None


@pytest.mark.parametrize(("function", "key"), CONTROL_BUCKET_PROBES)
def test_each_function_probing_the_control_bucket_is_told_a_missing_key_does_not_exist(
    deployed, function, key
):
    from spotfill_control.aws import is_missing_key

    stack, session = deployed
    s3 = session.client("s3")
    with _as_function(deployed, function):
        error = _error(lambda: s3.get_object(Bucket=stack.control_bucket, Key=key))
        head = _error(lambda: s3.head_object(Bucket=stack.control_bucket, Key=key))
    assert is_missing_key(error), error.response["Error"]
    assert is_missing_key(head), head.response["Error"]


@pytest.mark.parametrize("function", ["TeardownFunction", "CleanupOnExitFunction"])
def test_teardown_functions_may_list_the_services_of_a_run_cluster_and_no_other(deployed, function):
    # Defect 2: ecs:ListServices takes no resource ARN; granted on cluster/spotfill-* it granted nothing.
    _, session = deployed
    ecs = session.client("ecs")
    ecs.create_cluster(clusterName="spotfill-listed")
    ecs.create_cluster(clusterName="production")
    with _as_function(deployed, function):
        assert ecs.list_services(cluster="spotfill-listed")["serviceArns"] == []
        error = _error(lambda: ecs.list_services(cluster="production"))
    assert error.response["Error"]["Code"] == "AccessDeniedException"


def test_every_statement_of_every_role_names_a_resource_each_of_its_actions_is_authorised_on(deployed):
    # An action scoped to an ARN it is never authorised on is granted nothing (ecs:ListServices on a cluster
    # ARN was): each Allow's resources must match the ARN format of a resource type of each of its actions.
    stack, session = deployed
    client = session.client("iam")
    roles = [
        r["PhysicalResourceId"]
        for r in session.client("cloudformation").list_stack_resources(StackName=stack.stack_name)[
            "StackResourceSummaries"
        ]
        if r["ResourceType"] == "AWS::IAM::Role"
    ]
    assert len(roles) >= 12  # ten functions, the task role, the state machine's, the rules', ...
    granting_nothing = [
        f"{role} ({statement.source}): {action} on {list(statement.resources)}"
        for role in roles
        for statement in iam.role_statements_from_iam(client, role)
        if statement.effect == "Allow"
        for action in statement.actions
        if not any(iam.grants_something(action, resource) for resource in statement.resources)
    ]
    assert not granting_nothing, "\n".join(granting_nothing)
