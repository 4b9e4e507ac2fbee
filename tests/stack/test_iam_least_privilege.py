"""Least privilege: each AWS call a handler makes is granted to its function in template.yaml, and no more.

The handlers run real scenarios in moto (the Step Functions harness of tests/sfn: the deployed stack, the real
ASL, every Lambda in process, IAM enforced on every call by `spotfill.iam`, each handler acting as its
function's role). The enforcement's log holds every call with the permissions IAM checked for it and its
decision: no call may have been denied (even one a handler swallowed), and every grant of a role must be
exercised by some call, or be listed in `UNEXERCISED_BUT_NEEDED` with its reason.
`aws_calls.recording_aws_calls` records the same calls independently of the enforcement, to check that none
escaped it.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from spotfill.deploy import StackOutputs, deploy_stack, load_template, translate_template
from spotfill.iam import Evaluated, describe

from .aws_calls import CallRecorder, RecordedCall, current_handler, recording_aws_calls
from .iam_policies import (
    Account,
    Need,
    Statement,
    function_statements,
    handler_functions,
    is_allowed,
    needs_of,
    resource_level_actions_granted_on_star,
    ungranted,
)

pytestmark = pytest.mark.aws

REGION = "us-east-1"

# Grants no recorded scenario exercises, each with the reason it stays: (function or "*", action) -> reason.
UNEXERCISED_BUT_NEEDED: dict[tuple[str, str], str] = {
    (
        "*",
        "s3:ListBucket",
    ): "without it S3 answers a missing key with 403, not 404 (HeadObject/GetObject probes)",
    ("*", "logs:CreateLogGroup"): "the Lambda runtime writes the function's own logs",
    ("*", "logs:CreateLogStream"): "the Lambda runtime writes the function's own logs",
    ("*", "logs:PutLogEvents"): "the Lambda runtime writes the function's own logs",
    ("ScaleServiceFunction", "ecs:UpdateService"): "a retried ScaleService finds its service and resizes it",
    ("PrepareRunFunction", "iam:CreateServiceLinkedRole"): "first cluster in an account",
    ("RequestFleetFunction", "iam:CreateServiceLinkedRole"): "first fleet in an account",
    (
        "RequestFleetFunction",
        "ec2:DescribeFleets",
    ): "a retried RequestFleet describes the fleet its run-id tag names (DescribeTags)",
    (
        "RequestFleetFunction",
        "ec2:DescribeSpotFleetRequests",
    ): "a retried RequestFleet describes the Spot Fleet request its run-id tag names (DescribeTags)",
    ("TeardownFunction", "sqs:GetQueueUrl"): "a run that failed before its queue URL was kept",
    ("CleanupOnExitFunction", "sqs:GetQueueUrl"): "a run that failed before its queue URL was kept",
    ("TeardownFunction", "ec2:TerminateInstances"): "instances still alive once the fleet is cancelled",
    (
        "TeardownFunction",
        "sqs:DeleteMessage",
    ): "dead letters the monitor had not moved to S3 yet (a failed run): stored, then deleted",
    (
        "CleanupOnExitFunction",
        "sqs:DeleteMessage",
    ): "dead letters the monitor had not moved to S3 yet (a failed run): stored, then deleted",
    ("CleanupOnExitFunction", "ec2:TerminateInstances"): "instances still alive once the fleet is cancelled",
    (
        "CleanupOnExitFunction",
        "sqs:SendMessage",
    ): "Lambda dead-letters a failed asynchronous invoke as the role",
    (
        "StartBackfillFunction",
        "sqs:SendMessage",
    ): "Lambda dead-letters a failed asynchronous invoke as the role",
}


# ------------------------------------------------------------------------------------------ the recorder


def test_recorder_attributes_each_call_to_the_handler_module_on_the_stack():
    # given a function whose module is a handler module, and one that is not
    handler_globals: dict[str, Any] = {"__name__": "spotfill_control.handlers.probe", "boto3": boto3}
    exec(  # the stack lookup reads a frame's module name, so a module by that name is enough
        "def handler():\n    return boto3.client('s3').list_buckets()\n", handler_globals
    )
    with mock_aws(), recording_aws_calls() as recorder:
        # when both call AWS
        handler_globals["handler"]()
        boto3.client("sqs").list_queues()

    # then only the handler's call is recorded, with its parameters
    assert [(c.handler, c.service, c.operation) for c in recorder.calls] == [("probe", "s3", "ListBuckets")]
    assert current_handler() is None


def test_recorder_attributes_calls_a_handler_makes_from_its_thread_pool():
    handler_globals: dict[str, Any] = {"__name__": "spotfill_control.handlers.probe", "boto3": boto3}
    exec(
        "from concurrent.futures import ThreadPoolExecutor\n"
        "def handler():\n"
        "    s3 = boto3.client('s3')\n"
        "    with ThreadPoolExecutor(max_workers=2) as pool:\n"
        "        list(pool.map(lambda _: s3.list_buckets(), range(3)))\n",
        handler_globals,
    )
    with mock_aws(), recording_aws_calls() as recorder:
        handler_globals["handler"]()
        with ThreadPoolExecutor(max_workers=1) as pool:  # a pool outside any handler
            pool.submit(boto3.client("sqs").list_queues).result()
    assert [(c.handler, c.operation) for c in recorder.calls] == [("probe", "ListBuckets")] * 3


def test_recorder_keeps_the_api_parameters_of_each_call():
    handler_globals: dict[str, Any] = {"__name__": "spotfill_control.handlers.probe", "boto3": boto3}
    exec(
        "def handler():\n"
        "    s3 = boto3.client('s3')\n"
        "    s3.create_bucket(Bucket='bucket')\n"
        "    s3.list_objects_v2(Bucket='bucket', Prefix='runs/')\n",
        handler_globals,
    )
    with mock_aws(), recording_aws_calls() as recorder:
        handler_globals["handler"]()
    assert recorder.calls[-1].params == {"Bucket": "bucket", "Prefix": "runs/", "EncodingType": "url"}


# ------------------------------------------------------------------------------------------ the evaluation


def _account(**tags: str) -> Account:
    return Account(
        region=REGION,
        account_id="123456789012",
        role_of_instance_profile=lambda arn: "arn:aws:iam::123456789012:role/instance",
        launch_template_data=lambda template, version: {"IamInstanceProfile": {"Arn": "arn:profile"}},
        tags_of=lambda resource: tags,
    )


def _call(service: str, operation: str, **params: Any) -> RecordedCall:
    return RecordedCall("probe", service, operation, params)


def test_list_objects_needs_list_bucket_on_the_bucket_with_the_prefix_as_condition():
    (need,) = needs_of(_call("s3", "ListObjectsV2", Bucket="b", Prefix="runs/r1/"), _account())
    assert (need.action, need.resource, need.context["s3:prefix"]) == (
        "s3:ListBucket",
        "arn:aws:s3:::b",
        "runs/r1/",
    )
    scoped = Statement(
        "Allow", ("s3:ListBucket",), ("arn:aws:s3:::b",), {"StringLike": {"s3:prefix": "runs/*"}}
    )
    assert is_allowed([scoped], need)
    other_prefix = needs_of(_call("s3", "ListObjectsV2", Bucket="b", Prefix="reports/"), _account())[0]
    assert not is_allowed([scoped], other_prefix)


def test_batch_calls_need_their_single_action_on_the_queue_named_by_its_url():
    call = _call(
        "sqs", "SendMessageBatch", QueueUrl="https://sqs.us-east-1.amazonaws.com/123456789012/spotfill-r1"
    )
    (need,) = needs_of(call, _account())
    assert (need.action, need.resource) == (
        "sqs:SendMessage",
        "arn:aws:sqs:us-east-1:123456789012:spotfill-r1",
    )
    assert is_allowed(
        [Statement("Allow", ("sqs:SendMessage",), ("arn:aws:sqs:us-east-1:123456789012:spotfill-*",), {})],
        need,
    )
    assert not is_allowed(
        [Statement("Allow", ("sqs:SendMessage",), ("arn:aws:sqs:us-east-1:123456789012:other-*",), {})], need
    )


def test_spot_fleet_request_needs_to_pass_the_fleet_role_and_the_instance_role_to_their_services():
    call = _call(
        "ec2",
        "RequestSpotFleet",
        SpotFleetRequestConfig={
            "IamFleetRole": "arn:aws:iam::123456789012:role/fleet",
            "LaunchTemplateConfigs": [
                {"LaunchTemplateSpecification": {"LaunchTemplateId": "lt-1", "Version": "2"}}
            ],
            "TagSpecifications": [{"ResourceType": "spot-fleet-request", "Tags": []}],
        },
    )
    needs = needs_of(call, _account())
    assert (
        Need(
            "iam:PassRole",
            "arn:aws:iam::123456789012:role/fleet",
            {"iam:PassedToService": "spotfleet.amazonaws.com"},
        )
        in needs
    )
    assert (
        Need(
            "iam:PassRole",
            "arn:aws:iam::123456789012:role/instance",
            {"iam:PassedToService": "ec2.amazonaws.com"},
        )
        in needs
    )
    pass_fleet_to_ec2 = Statement(
        "Allow",
        ("iam:PassRole",),
        ("arn:aws:iam::123456789012:role/fleet",),
        {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
    )
    assert not is_allowed([pass_fleet_to_ec2], needs[1])


def test_ec2_fleet_request_passes_only_the_instance_role_and_tags_the_fleet_it_creates():
    call = _call(
        "ec2",
        "CreateFleet",
        Type="maintain",
        LaunchTemplateConfigs=[{"LaunchTemplateSpecification": {"LaunchTemplateId": "lt-1", "Version": "2"}}],
        TagSpecifications=[{"ResourceType": "fleet", "Tags": []}],
        TargetCapacitySpecification={"TotalTargetCapacity": 1},
    )
    needs = needs_of(call, _account())
    assert Need("ec2:CreateFleet", "arn:aws:ec2:us-east-1:123456789012:fleet/*", needs[0].context) in needs
    assert (
        Need(
            "iam:PassRole",
            "arn:aws:iam::123456789012:role/instance",
            {"iam:PassedToService": "ec2.amazonaws.com"},
        )
        in needs
    )
    tag = Need(
        "ec2:CreateTags", "arn:aws:ec2:us-east-1:123456789012:fleet/*", {"ec2:CreateAction": "CreateFleet"}
    )
    assert tag in needs
    # no fleet role: EC2 Fleet launches through its service-linked role
    assert not any(n.action == "iam:PassRole" and "spotfleet" in str(n.context) for n in needs)
    spot_fleet_tagging = Statement(
        "Allow",
        ("ec2:CreateTags",),
        ("arn:aws:ec2:us-east-1:123456789012:fleet/*",),
        {"StringEquals": {"ec2:CreateAction": "RequestSpotFleet"}},
    )
    assert not is_allowed([spot_fleet_tagging], tag)


@pytest.mark.parametrize(
    ("operation", "id_param", "fleet_arn"),
    [
        ("ModifyFleet", "FleetId", "fleet/fleet-1"),
        ("ModifySpotFleetRequest", "SpotFleetRequestId", "spot-fleet-request/sfr-1"),
    ],
)
def test_re_weighting_a_fleet_needs_its_modify_action_on_the_launch_template_and_subnets_and_passes_nothing(
    operation, id_param, fleet_arn
):
    call = _call(
        "ec2",
        operation,
        **{id_param: fleet_arn.split("/")[1]},
        LaunchTemplateConfigs=[
            {
                "LaunchTemplateSpecification": {"LaunchTemplateId": "lt-1", "Version": "2"},
                "Overrides": [{"InstanceType": "c5.xlarge", "SubnetId": "subnet-1", "WeightedCapacity": 1.5}],
            }
        ],
    )
    needs = needs_of(call, _account())
    resources = {n.resource for n in needs if n.action == f"ec2:{operation}"}
    assert resources == {
        f"arn:aws:ec2:us-east-1:123456789012:{fleet_arn}",
        "arn:aws:ec2:us-east-1:123456789012:launch-template/lt-1",
        "arn:aws:ec2:us-east-1:123456789012:subnet/subnet-1",
    }
    assert not any(n.action == "iam:PassRole" for n in needs)


def test_creating_the_ec2_fleet_service_linked_role_needs_that_role_and_service_only():
    (need,) = needs_of(
        _call("iam", "CreateServiceLinkedRole", AWSServiceName="ec2fleet.amazonaws.com"), _account()
    )
    assert need.action == "iam:CreateServiceLinkedRole"
    assert need.resource == (
        "arn:aws:iam::123456789012:role/aws-service-role/ec2fleet.amazonaws.com/AWSServiceRoleForEC2Fleet"
    )
    assert need.context["iam:AWSServiceName"] == "ec2fleet.amazonaws.com"


def test_list_services_takes_no_resource_so_a_grant_scoped_to_a_cluster_grants_nothing():
    (need,) = needs_of(_call("ecs", "ListServices", cluster="spotfill-r1"), _account())
    assert (need.action, need.resource) == ("ecs:ListServices", "*")
    assert need.context["ecs:cluster"] == "arn:aws:ecs:us-east-1:123456789012:cluster/spotfill-r1"
    clusters = "arn:aws:ecs:us-east-1:123456789012:cluster/spotfill-*"
    assert not is_allowed([Statement("Allow", ("ecs:ListServices",), (clusters,), {})], need)
    scoped_by_condition = Statement(
        "Allow", ("ecs:ListServices",), ("*",), {"ArnLike": {"ecs:cluster": clusters}}
    )
    assert is_allowed([scoped_by_condition], need)
    other = needs_of(_call("ecs", "ListServices", cluster="production"), _account())[0]
    assert not is_allowed([scoped_by_condition], other)


def test_explicit_deny_wins_and_a_missing_condition_key_does_not_match():
    need = Need("ec2:TerminateInstances", "arn:aws:ec2:us-east-1:123456789012:instance/i-1")
    tagged_only = Statement(
        "Allow",
        ("ec2:TerminateInstances",),
        ("*",),
        {"StringEquals": {"aws:ResourceTag/spotfill:stack": "s"}},
    )
    assert not is_allowed([tagged_only], need)
    tagged = needs_of(
        _call("ec2", "TerminateInstances", InstanceIds=["i-1"]), _account(**{"spotfill:stack": "s"})
    )[0]
    assert is_allowed([tagged_only], tagged)
    assert not is_allowed([tagged_only, Statement("Deny", ("ec2:*",), ("*",), {})], tagged)


def test_an_ungranted_call_is_reported_with_function_action_and_missing_grant():
    call = RecordedCall(
        "monitor", "sqs", "ReceiveMessage", {"QueueUrl": "https://sqs/123456789012/spotfill-r1-dlq"}
    )
    grants = {"MonitorFunction": [Statement("Allow", ("sqs:GetQueueAttributes",), ("*",), {})]}

    (message,) = ungranted([(call, needs_of(call, _account()))], grants, {"monitor": "MonitorFunction"})

    assert message.startswith("MonitorFunction (monitor) calls sqs.ReceiveMessage")
    assert "needs sqs:ReceiveMessage on arn:aws:sqs:us-east-1:123456789012:spotfill-r1-dlq" in message


# ------------------------------------------------------------------------------------------ the policies


@pytest.fixture(scope="module")
def translated() -> dict:
    return translate_template(load_template(), region=REGION)


def test_each_function_is_granted_only_its_own_statements(translated):
    with mock_aws():
        session = boto3.session.Session(region_name=REGION)
        deploy_stack("policies", session=session)
        physical = _physical_ids(session, "policies")
        grants = function_statements(translated, physical, session.client("iam"))

    queue = Need("sqs:CreateQueue", "arn:aws:sqs:us-east-1:123456789012:spotfill-r1")
    assert is_allowed(grants["PrepareRunFunction"], queue)
    assert not is_allowed(
        grants["PrepareRunFunction"], Need("sqs:CreateQueue", "arn:aws:sqs:us-east-1:123456789012:other")
    )
    assert not is_allowed(grants["ValidateFunction"], queue)
    assert set(handler_functions(translated)) == {
        "validate",
        "prepare_run",
        "request_fleet",
        "check_registration",
        "scale_service",
        "monitor",
        "continue_as_new",
        "teardown",
        "report",
        "cleanup_on_exit",
        "start_backfill",
    }


def test_no_policy_grants_a_full_access_action_or_resource_wildcard_on_a_service(translated):
    roles = [r for r in translated["Resources"].values() if r["Type"] == "AWS::IAM::Role"]
    text = json.dumps(roles)
    assert "FullAccess" not in text
    for role in roles:
        for policy in role["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = (
                    [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
                )
                assert not any(a == "*" or a.endswith(":*") for a in actions), (policy["PolicyName"], actions)


# Statements that grant an action supporting resource-level permissions on "*", each with why it must stay.
RESOURCE_STAR_BUT_NEEDED: dict[tuple[str, str], str] = {
    (
        "RequestFleetFunctionRole",
        "ec2:RequestSpotFleet",
    ): "the request names images, subnets, security groups and a launch template besides the fleet it "
    "creates; what the fleet may do is scoped by the iam:PassRole grants (fleet and instance roles only) and "
    "the tag-on-create condition",
    (
        "RequestFleetFunctionRole",
        "ec2:CreateFleet",
    ): "the fleet's id exists only once CreateFleet returns, and the call also names the images, subnets, "
    "security group and launch template of its overrides; the instances it launches are scoped by the "
    "iam:PassRole grant (the instance role only) and the fleet's tags by the tag-on-create condition",
}


def test_no_role_grants_an_action_that_takes_a_resource_arn_on_star_without_a_written_reason(translated):
    wide = resource_level_actions_granted_on_star(translated)
    unexplained = [(r, s, a) for r, s, a in wide if (r, a) not in RESOURCE_STAR_BUT_NEEDED]
    assert not unexplained, "\n".join(f"{r} ({s}) grants {a} on *" for r, s, a in unexplained)
    stale = set(RESOURCE_STAR_BUT_NEEDED) - {(r, a) for r, _, a in wide}
    assert not stale, f"listed but no longer granted on *: {sorted(stale)}"


def test_a_grant_widened_to_star_is_caught(translated):
    # given template.yaml with Teardown's fleet deletion widened from fleet/* and spot-fleet-request/* to *
    widened = copy.deepcopy(translated)
    (policy,) = widened["Resources"]["TeardownFunctionRole"]["Properties"]["Policies"]
    (delete,) = [s for s in policy["PolicyDocument"]["Statement"] if s.get("Sid") == "DeleteFleet"]
    delete["Resource"] = "*"
    # when the check runs, then it names the role, the statement and each action
    wide = resource_level_actions_granted_on_star(widened)
    for action in ("ec2:DeleteFleets", "ec2:CancelSpotFleetRequests"):
        assert ("TeardownFunctionRole", f"{policy['PolicyName']}/DeleteFleet", action) in wide


# ------------------------------------------------------------------------------------------ the scenarios


@dataclass
class Recorded:
    calls: CallRecorder
    evaluated: list[Evaluated]  # every call a function made, as the enforced IAM evaluated it, in order
    grants: dict[str, list[Statement]]
    functions: dict[str, str]  # handler module -> function logical id
    function_names: dict[str, str]  # function name (the role session's name) -> function logical id

    def function_of(self, evaluated: Evaluated) -> str:
        return self.function_names[evaluated.principal.arn.rsplit("/", 1)[-1]]


def _physical_ids(session: boto3.session.Session, stack_name: str) -> dict[str, str]:
    ids = {}
    for page in (
        session.client("cloudformation").get_paginator("list_stack_resources").paginate(StackName=stack_name)
    ):
        for resource in page["StackResourceSummaries"]:
            ids[resource["LogicalResourceId"]] = resource["PhysicalResourceId"]
    return ids


def _validate_event(stack: StackOutputs, execution_input: Any) -> dict:
    name = f"privilege-{uuid.uuid4().hex[:8]}"
    return {
        "input": execution_input,
        "execution_arn": stack.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}",
        "state_machine_arn": stack.state_machine_arn,
        "started_at": "2026-11-27T03:00:00Z",
    }


def _invoke(cloud: Any, logical_id: str, event: dict) -> Any:
    response = cloud.session.client("lambda").invoke(
        FunctionName=cloud.stack.function(logical_id).name, Payload=json.dumps(event).encode()
    )
    payload = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, payload
    return payload


def _abort_while_monitoring(cloud: Any, spec: dict) -> None:
    """Start a run, stop its execution once it monitors, and deliver the ABORTED status change."""
    from sfn.harness import Knobs, Physics

    physics = Physics(cloud.session, Knobs(stop_after=0))
    physics.start()
    try:
        execution_arn = cloud.start(spec)
        deadline = time.monotonic() + 30
        while "Monitor" not in _entered(cloud, execution_arn):
            assert time.monotonic() < deadline, _entered(cloud, execution_arn)
            time.sleep(0.2)
        cloud.sfn.stop_execution(executionArn=execution_arn, error="Aborted", cause="least-privilege test")
        result = cloud.wait(execution_arn)
        assert result.status == "ABORTED"
        assert cloud.deliver_status_change(result) == [cloud.stack.function("CleanupOnExitFunction").arn]
    finally:
        physics.stop()


def _capped(spec: dict, seconds: float) -> dict:
    """The spec with a cap that pays for the budget's reserve (a poll and a drain) and `seconds` more."""
    from spotfill_control.monitoring import budget

    from spotfill.localcloud.pricing import spot_price

    hourly = spec["fleet"]["target_capacity"] * spot_price(spec["fleet"]["instance_types"][0])
    poll = spec["limits"]["poll_interval_seconds"]
    spec["limits"]["max_total_usd"] = hourly * (budget.horizon_seconds(poll) + seconds) / 3600
    return spec


def _entered(cloud: Any, execution_arn: str) -> list[str]:
    events = cloud.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]


@pytest.fixture(scope="module")
def recorded(translated) -> Iterator[Recorded]:
    from sfn.harness import Knobs, assert_nothing_left, deployed_cloud

    with deployed_cloud("privilege") as cloud, recording_aws_calls() as calls:
        stack, s3 = cloud.stack, cloud.s3

        # a long run: a lost shard queued again, a poisoned one dead-lettered, a handover to a new execution
        outcome = cloud.run(
            cloud.spec("privilege", shards=6, limits={"handover_after_iterations": 2}),
            Knobs(tick_seconds=0.6, lose=frozenset({"part-00002.npy"}), poison=frozenset({"part-00004.npy"})),
        )
        assert outcome.status == "SUCCEEDED", (outcome.entered(), outcome.last.error, outcome.last.cause)
        assert len(outcome.executions) >= 2
        # the same on the legacy Spot Fleet API, with a pool that fails (its history read) and a tail lowered
        spot = cloud.spec(
            "privilege-spot",
            shards=4,
            fleet={"instance_types": ["c5.large", "m5.large"], "target_capacity": 2, "api": "spot-fleet"},
        )
        # the poisoned shard, retried until it is dead-lettered, is the tail the fleet is lowered for
        spot_knobs = Knobs(
            tick_seconds=0.6, failing_pools={"c5.large": "Unsupported"}, poison=frozenset({"part-00003.npy"})
        )
        spot_outcome = cloud.run(spot, spot_knobs)
        assert spot_outcome.status == "SUCCEEDED", (spot_outcome.last.error, spot_outcome.last.cause)
        # no spot at all on each API: the on-demand fallback resizes the fleet while waiting for registration
        for api in ("ec2-fleet", "spot-fleet"):
            fleet = {
                "instance_types": ["c5.large"],
                "target_capacity": 1,
                "on_demand_fallback_after_seconds": 1,
            }
            no_spot = cloud.spec(f"privilege-nospot-{api}", shards=1, fleet={**fleet, "api": api})
            no_spot["limits"]["registration_timeout_seconds"] = 20
            fell_back = cloud.run(no_spot, Knobs(spot_capacity={"c5.large": 0}))
            assert fell_back.status == "SUCCEEDED", (fell_back.last.error, fell_back.last.cause)
        # a failed run: EC2 fails the fleet; the execution's FAILED status also reaches cleanup_on_exit
        failed = cloud.run(cloud.spec("privilege-failed", shards=2), Knobs(fleet_fails=True))
        assert failed.status == "FAILED"
        assert "cleanup_on_exit" in cloud.lambdas.invoked()
        assert_nothing_left(cloud.session)
        # a run that reaches its dollar cap: the monitor prices it (DescribeSpotPriceHistory), drains it (the
        # fleet's target to 0, the service to 0 tasks) and it fails BudgetReached
        capped = cloud.run(
            _capped(cloud.spec("privilege-budget", shards=20), seconds=4), Knobs(tick_seconds=0.6)
        )
        assert capped.error == "BudgetReached", (capped.entered(), capped.last.cause)
        assert_nothing_left(cloud.session)

        # an aborted run on each fleet API: the state machine cannot clean up, cleanup_on_exit must
        for api in ("ec2-fleet", "spot-fleet"):
            _abort_while_monitoring(
                cloud,
                cloud.spec(
                    f"privilege-aborted-{api}", shards=2, limits={"stall_timeout_seconds": 60}, fleet_api=api
                ),
            )
            assert_nothing_left(cloud.session)

        # a GPU run, up to its preparation (the GPU AMI comes from SSM), then torn down
        gpu = cloud.spec(
            "privilege-gpu", shards=1, fleet={"instance_types": ["g4dn.xlarge"], "target_capacity": 1}
        )
        run = _invoke(cloud, "ValidateFunction", _validate_event(stack, gpu))["run"]
        run = _invoke(cloud, "PrepareRunFunction", {"run": run})
        _invoke(cloud, "TeardownFunction", {"run": run})
        assert_nothing_left(cloud.session)

        # an arm64 (Graviton) run and one of a type outside the old price table, up to their preparation (the
        # arm64 AMI comes from SSM), then torn down
        for name, types in (("privilege-arm64", ["m7g.large"]), ("privilege-c7i", ["c7i.large"])):
            spec = cloud.spec(name, shards=1, fleet={"instance_types": types, "target_capacity": 1})
            run = _invoke(cloud, "ValidateFunction", _validate_event(stack, spec))["run"]
            run = _invoke(cloud, "PrepareRunFunction", {"run": run})
            _invoke(cloud, "TeardownFunction", {"run": run})
            assert_nothing_left(cloud.session)

        # the two other triggers, through Validate: a manifest under backfills/ and a scheduled manifest
        manifest = cloud.spec("privilege-s3", shards=1)
        uploaded = cloud.upload_manifest("backfills/privilege.json", manifest)  # read by its version id
        s3.put_object(Bucket=stack.control_bucket, Key="schedules/privilege.json", Body=json.dumps(manifest))
        tick = {
            "manifest": f"s3://{stack.control_bucket}/schedules/privilege.json",
            "time": "2026-11-27T03:00:00Z",
        }
        for trigger in (uploaded, tick):
            _invoke(cloud, "ValidateFunction", _validate_event(stack, trigger))
        # the manifest rule's StartBackfill starts an execution for an upload (an invalid manifest: it ends
        # in Validate), and is refused the second time the same event arrives
        invalid = cloud.upload_manifest("backfills/privilege-invalid.json", {"name": "privilege-invalid"})
        [(_, started)] = cloud.deliver(invalid)
        assert cloud.wait(started["execution_arn"]).error == "InvalidSpecError"
        [(_, again)] = cloud.deliver(invalid)
        assert again["refused"] is True

        grants = function_statements(
            translated, _physical_ids(cloud.session, stack.stack_name), cloud.session.client("iam")
        )
        names = {f.name: logical_id for logical_id, f in stack.functions.items()}
        yield Recorded(calls, list(cloud.lambdas.iam.evaluated), grants, handler_functions(translated), names)


@pytest.mark.sfn
def test_scenarios_exercise_every_function(recorded: Recorded):
    assert set(recorded.calls.by_handler()) == set(recorded.functions)
    assert {recorded.function_of(e) for e in recorded.evaluated} == set(recorded.functions.values())


@pytest.mark.sfn
def test_every_aws_call_of_every_handler_is_granted_to_its_function_in_template_yaml(recorded: Recorded):
    # Enforced as the calls were made: a denial a handler swallowed (a teardown step that "failed quietly")
    # still shows here.
    denied = describe(recorded.evaluated)
    assert not denied, "\n".join(denied)


@pytest.mark.sfn
def test_every_call_recorded_is_one_the_enforcement_evaluated(recorded: Recorded):
    evaluated = Counter((e.service, e.operation) for e in recorded.evaluated)
    made = Counter((c.service, c.operation) for c in recorded.calls.calls)
    assert made == evaluated


@pytest.mark.sfn
def test_no_function_is_granted_an_action_its_handler_never_needs(recorded: Recorded):
    needed: dict[str, set[str]] = {}
    for evaluated in recorded.evaluated:
        needed.setdefault(recorded.function_of(evaluated), set()).update(
            request.action.lower() for request, _ in evaluated.decisions
        )
    unused = set()
    for function, statements in recorded.grants.items():
        for statement in statements:
            for action in statement.actions:
                if action.lower() in needed.get(function, set()):
                    continue
                if (function, action) not in UNEXERCISED_BUT_NEEDED and (
                    "*",
                    action,
                ) not in UNEXERCISED_BUT_NEEDED:
                    unused.add(f"{function}: {action} ({statement.source}) is granted but never needed")
    assert not unused, "\n".join(sorted(unused))
