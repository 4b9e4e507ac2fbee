"""template.yaml deployed into moto: the resources exist and are wired as the contracts say."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import boto3
import pytest

from spotfill.deploy import (
    DeployError,
    StackOutputs,
    definition_with_substitutions,
    deploy_stack,
    update_stack,
)
from spotfill.localcloud.patches.cloudformation import update_stacks_as_cloudformation_does

GPU_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"

pytestmark = pytest.mark.aws

STATE_MACHINE_FUNCTIONS = {
    "ValidateFunction": "validate",
    "PrepareRunFunction": "prepare_run",
    "RequestFleetFunction": "request_fleet",
    "CheckRegistrationFunction": "check_registration",
    "ScaleServiceFunction": "scale_service",
    "MonitorFunction": "monitor",
    "ContinueAsNewFunction": "continue_as_new",
    "TeardownFunction": "teardown",
    "ReportFunction": "report",
}
ALL_FUNCTIONS = {
    **STATE_MACHINE_FUNCTIONS,
    "CleanupOnExitFunction": "cleanup_on_exit",
    "StartBackfillFunction": "start_backfill",
}

# docs/contracts/control-plane-configuration.md.
CONTROL_ENVIRONMENT = {
    "CONTROL_BUCKET",
    "WORKER_IMAGE",
    "WORKER_IMAGE_ARM64",
    "TASK_ROLE_ARN",
    "EXECUTION_ROLE_ARN",
    "FLEET_ROLE_ARN",
    "INSTANCE_PROFILE_ARN",
    "LAUNCH_TEMPLATE_ID",
    "LAUNCH_TEMPLATE_VERSION",
    "SECURITY_GROUP_ID",
    "DEFAULT_SUBNETS",
    "WORKER_LOG_GROUP",
    "NOTIFICATION_TOPIC_ARN",
    "EVENT_BUS_NAME",
    "POWERTOOLS_SERVICE_NAME",
    "MPLCONFIGDIR",
}


def role_statements(role_name: str) -> list[dict]:
    """Inline policy statements of a role (moto returns documents as JSON text, AWS as objects)."""
    iam = boto3.client("iam")
    statements = []
    for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]
        document = json.loads(document) if isinstance(document, str) else document
        statements.extend(document["Statement"])
    return statements


@contextmanager
def rule_probe(rule_name: str) -> Iterator[Callable[[], list[dict]]]:
    """Deliver what a rule matches to a queue, and yield a function that drains it.

    moto delivers rule targets to SQS only and raises on Step Functions and Lambda targets; it also treats a
    schedule rule (no pattern) as matching every event. So every rule's own targets step aside while the
    probe listens, and come back afterwards.
    """
    events, sqs = boto3.client("events"), boto3.client("sqs")
    stepped_aside = {
        r["Name"]: events.list_targets_by_rule(Rule=r["Name"])["Targets"]
        for r in events.list_rules()["Rules"]
    }
    for name, targets in stepped_aside.items():
        if targets:
            events.remove_targets(Rule=name, Ids=[t["Id"] for t in targets])
    queue_url = sqs.create_queue(QueueName=f"probe-{rule_name[-40:]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_targets(Rule=rule_name, Targets=[{"Id": "probe", "Arn": queue_arn}])

    def drain() -> list[dict]:
        received = []
        while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
            received += [json.loads(m["Body"]) for m in messages]
            sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in messages],
            )
        return received

    try:
        yield drain
    finally:
        events.remove_targets(Rule=rule_name, Ids=["probe"])
        for name, targets in stepped_aside.items():
            if targets:
                events.put_targets(Rule=name, Targets=targets)
        sqs.delete_queue(QueueUrl=queue_url)


def _rule_named(events, fragment: str) -> dict:
    rules = [r for r in events.list_rules()["Rules"] if fragment in r["Name"]]
    assert len(rules) == 1, [r["Name"] for r in events.list_rules()["Rules"]]
    return rules[0]


def _assert_private_encrypted(s3, bucket: str) -> None:
    encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] in {
        "AES256",
        "aws:kms",
    }
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }


def _assert_tls_only(translated: dict, bucket_logical_id: str) -> None:
    # Bucket policies are checked in the translated template: moto cannot hold them (see spotfill.deploy).
    (policy,) = [
        r["Properties"]
        for r in translated["Resources"].values()
        if r["Type"] == "AWS::S3::BucketPolicy" and r["Properties"]["Bucket"] == {"Ref": bucket_logical_id}
    ]
    (deny,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Principal"] == "*"
    assert deny["Action"] == "s3:*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [
        {"Fn::GetAtt": [bucket_logical_id, "Arn"]},
        {"Fn::Sub": f"${{{bucket_logical_id}.Arn}}/*"},
    ]


def test_control_bucket_is_encrypted_private_and_tls_only(stack: StackOutputs, translated: dict):
    _assert_private_encrypted(boto3.client("s3"), stack.control_bucket)
    _assert_tls_only(translated, "ControlBucket")


def test_data_bucket_is_encrypted_private_and_tls_only(stack: StackOutputs, translated: dict):
    _assert_private_encrypted(boto3.client("s3"), stack.data_bucket)
    _assert_tls_only(translated, "DataBucket")


def test_manifest_put_under_backfills_matches_the_rule_whose_function_starts_the_state_machine(
    stack: StackOutputs,
):
    # given the manifest rule, with a queue added as a second target so moto delivers what the rule matches
    events, s3, lambda_ = boto3.client("events"), boto3.client("s3"), boto3.client("lambda")
    rule = _rule_named(events, "ManifestUploadedRule")
    targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    starter = stack.function("StartBackfillFunction")
    assert [t["Arn"] for t in targets] == [starter.arn]
    # EventBridge may invoke it for this rule only, and it may start this state machine only
    (permission,) = json.loads(lambda_.get_policy(FunctionName=starter.name)["Policy"])["Statement"]
    assert permission["Principal"] == {"Service": "events.amazonaws.com"}
    assert permission["Action"] == "lambda:InvokeFunction"
    assert permission["Condition"] == {"ArnLike": {"AWS:SourceArn": rule["Arn"]}}
    role_name = lambda_.get_function_configuration(FunctionName=starter.name)["Role"].rsplit("/", 1)[1]
    statements = role_statements(role_name)
    assert [s for s in statements if s.get("Sid") == "StartBackfill"] == [
        {
            "Sid": "StartBackfill",
            "Effect": "Allow",
            "Action": "states:StartExecution",
            "Resource": stack.state_machine_arn,
        }
    ]
    with rule_probe(rule["Name"]) as drain:
        # when a manifest lands under backfills/, and a report under reports/
        s3.put_object(Bucket=stack.control_bucket, Key="backfills/digits.json", Body=b"{}")
        s3.put_object(Bucket=stack.control_bucket, Key="reports/r-1.json", Body=b"{}")

        # then exactly the manifest's Object Created event matched
        bodies = drain()
    assert [(b["detail-type"], b["detail"]["object"]["key"]) for b in bodies] == [
        ("Object Created", "backfills/digits.json")
    ]
    assert bodies[0]["detail"]["bucket"]["name"] == stack.control_bucket


def test_functions_run_the_documented_handlers_on_python312(stack: StackOutputs):
    lambda_ = boto3.client("lambda")
    assert set(stack.functions) == set(ALL_FUNCTIONS)
    for logical_id, module in ALL_FUNCTIONS.items():
        function = stack.function(logical_id)
        assert function.handler == f"spotfill_control.handlers.{module}.handler"
        configuration = lambda_.get_function_configuration(FunctionName=function.name)
        assert configuration["Runtime"] == "python3.12"
    assert stack.handlers_by_function_name[stack.function("MonitorFunction").name].endswith(
        ".monitor.handler"
    )


def test_every_function_gets_the_control_plane_environment_pointing_at_stack_resources(stack: StackOutputs):
    lambda_, ec2, iam = boto3.client("lambda"), boto3.client("ec2"), boto3.client("iam")
    environments = [
        lambda_.get_function_configuration(FunctionName=f.name)["Environment"]["Variables"]
        for f in stack.functions.values()
    ]
    # (StartBackfill also gets the state machine it starts)
    starter = stack.function("StartBackfillFunction").name
    starter_env = lambda_.get_function_configuration(FunctionName=starter)["Environment"]["Variables"]
    assert starter_env.get("STATE_MACHINE_ARN") == stack.state_machine_arn
    environments = [{k: v for k, v in env.items() if k != "STATE_MACHINE_ARN"} for env in environments]
    # then every function sees the same, complete environment
    assert all(env == environments[0] for env in environments)
    env = environments[0]
    assert set(env) == CONTROL_ENVIRONMENT
    # and every value names something that exists
    assert env["CONTROL_BUCKET"] == stack.control_bucket
    assert env["WORKER_IMAGE"] == env["WORKER_IMAGE_ARM64"] == "spotfill-worker:local"
    for key in ("TASK_ROLE_ARN", "EXECUTION_ROLE_ARN", "FLEET_ROLE_ARN"):
        iam.get_role(RoleName=env[key].rsplit("/", 1)[1])
    profile = iam.get_instance_profile(InstanceProfileName=env["INSTANCE_PROFILE_ARN"].rsplit("/", 1)[1])
    assert len(profile["InstanceProfile"]["Roles"]) == 1
    (template,) = ec2.describe_launch_templates(LaunchTemplateIds=[env["LAUNCH_TEMPLATE_ID"]])[
        "LaunchTemplates"
    ]
    assert env["LAUNCH_TEMPLATE_VERSION"] == str(template["LatestVersionNumber"])
    group = ec2.describe_security_groups(GroupIds=[env["SECURITY_GROUP_ID"]])["SecurityGroups"][0]
    assert group["IpPermissions"] == []
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    assert group["VpcId"] == default_vpc
    subnets = env["DEFAULT_SUBNETS"].split(",")
    described = ec2.describe_subnets(SubnetIds=subnets)["Subnets"]
    assert {s["VpcId"] for s in described} == {default_vpc}
    log_groups = boto3.client("logs").describe_log_groups(logGroupNamePrefix=env["WORKER_LOG_GROUP"])[
        "logGroups"
    ]
    assert [g["retentionInDays"] for g in log_groups] == [30]
    boto3.client("sns").get_topic_attributes(TopicArn=env["NOTIFICATION_TOPIC_ARN"])
    boto3.client("events").describe_event_bus(Name=env["EVENT_BUS_NAME"])
    assert env["POWERTOOLS_SERVICE_NAME"] == "spotfill"
    assert env["MPLCONFIGDIR"].startswith("/tmp/")  # the only writable place in a Lambda


def test_state_machine_definition_has_no_unresolved_placeholders_and_reaches_only_stack_functions(
    stack: StackOutputs,
):
    definition = boto3.client("stepfunctions").describe_state_machine(
        stateMachineArn=stack.state_machine_arn
    )["definition"]
    assert "${" not in definition
    resources = set()

    def collect(states: dict) -> None:
        for state in states.values():
            if state["Type"] == "Task":
                resources.add(state["Resource"])
            for branch in state.get("Branches", []):
                collect(branch["States"])
            if "Iterator" in state:
                collect(state["Iterator"]["States"])
            if "ItemProcessor" in state:
                collect(state["ItemProcessor"]["States"])

    collect(json.loads(definition)["States"])
    state_machine_function_arns = {stack.function(logical_id).arn for logical_id in STATE_MACHINE_FUNCTIONS}
    assert resources == state_machine_function_arns


def test_state_machine_role_may_invoke_exactly_its_nine_functions(stack: StackOutputs):
    sfn = boto3.client("stepfunctions")
    role_name = sfn.describe_state_machine(stateMachineArn=stack.state_machine_arn)["roleArn"].rsplit("/", 1)[
        1
    ]
    invocable = set()
    for statement in role_statements(role_name):
        assert statement["Action"] in ("lambda:InvokeFunction", ["lambda:InvokeFunction"])
        resources = (
            [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
        )
        # SAM's LambdaInvokePolicy grants "<arn>*" (the function and its versions and aliases)
        invocable.update(r.removesuffix("*") for r in resources)
    assert invocable == {stack.function(logical_id).arn for logical_id in STATE_MACHINE_FUNCTIONS}


def test_cleanup_rule_runs_cleanup_on_exit_for_failed_timed_out_and_aborted_executions_only(
    stack: StackOutputs,
):
    events = boto3.client("events")
    rule = _rule_named(events, "CleanupOnExit")
    targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert [t["Arn"] for t in targets] == [stack.function("CleanupOnExitFunction").arn]

    other = "arn:aws:states:us-east-1:123456789012:stateMachine:someone-else"
    with rule_probe(rule["Name"]) as drain:
        # when executions of this and of another state machine change status
        sent = [
            (status, arn)
            for status in ("FAILED", "TIMED_OUT", "ABORTED", "SUCCEEDED", "RUNNING")
            for arn in (stack.state_machine_arn, other)
        ]
        events.put_events(
            Entries=[
                {
                    "Source": "aws.states",
                    "DetailType": "Step Functions Execution Status Change",
                    "Resources": [f"{arn.replace(':stateMachine:', ':execution:')}:run-1"],
                    "Detail": json.dumps({"status": status, "stateMachineArn": arn}),
                }
                for status, arn in sent
            ]
        )
        received = [body["detail"] for body in drain()]

    # then only this state machine's failed, timed-out and aborted executions reach cleanup
    assert {(d["status"], d["stateMachineArn"]) for d in received} == {
        (status, stack.state_machine_arn) for status in ("FAILED", "TIMED_OUT", "ABORTED")
    }


def test_schedule_rule_is_disabled_unless_an_expression_is_given(stack: StackOutputs):
    rule = _rule_named(boto3.client("events"), "-ScheduleRule-")
    assert rule["State"] == "DISABLED"


def test_schedule_rule_with_an_expression_starts_the_manifest_with_the_event_time(moto_module: None):
    # given a stack deployed with a schedule
    scheduled = deploy_stack(
        "spotfill-scheduled",
        {"ScheduleExpression": "cron(0 3 * * ? *)", "ScheduleManifest": "s3://bucket/backfills/daily.json"},
    )
    events = boto3.client("events")
    rule = next(
        r for r in events.list_rules()["Rules"] if r["Name"].startswith("spotfill-scheduled-ScheduleRule-")
    )
    assert rule["State"] == "ENABLED"
    assert rule["ScheduleExpression"] == "cron(0 3 * * ? *)"
    (target,) = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert target["Arn"] == scheduled.state_machine_arn

    # when EventBridge renders the target input for a scheduled event (paths replaced by JSON values)
    transformer = target["InputTransformer"]
    scheduled_event = {
        "source": "aws.events",
        "detail-type": "Scheduled Event",
        "time": "2026-11-27T03:00:00Z",
    }
    rendered = transformer["InputTemplate"]
    for placeholder, path in transformer["InputPathsMap"].items():
        rendered = rendered.replace(f"<{placeholder}>", json.dumps(scheduled_event[path.removeprefix("$.")]))

    # then the state machine gets the manifest and the event time
    assert json.loads(rendered) == {
        "manifest": "s3://bucket/backfills/daily.json",
        "time": "2026-11-27T03:00:00Z",
    }


def test_launch_template_requires_imdsv2_has_no_key_and_enables_spot_draining(stack: StackOutputs):
    ec2 = boto3.client("ec2")
    (version,) = ec2.describe_launch_template_versions(LaunchTemplateId=stack.launch_template_id)[
        "LaunchTemplateVersions"
    ]
    data = version["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert "KeyName" not in data
    assert "ImageId" not in data, "each run's version sets the AMI of its kind"
    assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 40
    assert data["IamInstanceProfile"]["Arn"] == stack.outputs["InstanceProfileArn"]
    assert data["SecurityGroupIds"] == [stack.outputs["WorkerSecurityGroupId"]]
    user_data = base64.b64decode(data["UserData"]).decode()
    assert re.search(r"^ECS_ENABLE_SPOT_INSTANCE_DRAINING=true$", user_data, re.MULTILINE)


def test_instance_role_offers_session_manager_and_no_full_access_policy_anywhere():
    from spotfill.deploy import load_template

    template = load_template()
    instance_role = template["Resources"]["InstanceRole"]["Properties"]
    assert any(
        "AmazonSSMManagedInstanceCore" in json.dumps(arn) for arn in instance_role["ManagedPolicyArns"]
    )
    assert "FullAccess" not in json.dumps(template)
    assert "KeyName" not in json.dumps(template)


def test_gpu_instances_parameter_gives_a_bigger_root_volume_and_no_stack_wide_ami(moto_module: None):
    gpu = deploy_stack("spotfill-gpu", {"GpuInstances": "true"})
    ec2 = boto3.client("ec2")
    (version,) = ec2.describe_launch_template_versions(LaunchTemplateId=gpu.launch_template_id)[
        "LaunchTemplateVersions"
    ]
    data = version["LaunchTemplateData"]
    assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 100
    assert "ImageId" not in data, "CPU runs on a GPU stack get the CPU AMI: each run's version sets its own"


def test_stack_deploys_in_a_region_without_the_gpu_ami_parameter(moto_module: None):
    # given a region whose SSM has no ECS-optimized AL2023 GPU AMI parameter (moto ships one: removed here)
    region = "eu-west-3"
    ssm = boto3.client("ssm", region_name=region)
    ssm.get_parameter(Name=GPU_AMI_PARAMETER)  # moto loads the public parameters on first read
    ssm.delete_parameter(Name=GPU_AMI_PARAMETER)

    # when the stack is deployed there
    stack = deploy_stack("spotfill-no-gpu", region=region)

    # then it is up, its launch template named by the functions
    cloudformation = boto3.client("cloudformation", region_name=region)
    (described,) = cloudformation.describe_stacks(StackName=stack.stack_name)["Stacks"]
    assert described["StackStatus"] == "CREATE_COMPLETE"
    assert not [p for p in described["Parameters"] if "Ami" in p["ParameterKey"]]


def test_stack_update_adds_a_launch_template_version_the_functions_name_while_the_default_stays(
    moto_module: None,
):
    # given a deployed stack (and moto updating a stack as CloudFormation does: what references a resource
    # it updates is updated after it)
    update_stacks_as_cloudformation_does()
    first = deploy_stack("spotfill-updated")

    # when an update changes its launch template
    updated = update_stack("spotfill-updated", {"GpuInstances": "true"})

    # then the template has version 2, $Default is still 1, and every function names version 2
    ec2, lambda_ = boto3.client("ec2"), boto3.client("lambda")
    (template,) = ec2.describe_launch_templates(LaunchTemplateIds=[updated.launch_template_id])[
        "LaunchTemplates"
    ]
    assert updated.launch_template_id == first.launch_template_id
    assert (template["DefaultVersionNumber"], template["LatestVersionNumber"]) == (1, 2)
    (version,) = ec2.describe_launch_template_versions(
        LaunchTemplateId=updated.launch_template_id, Versions=["2"]
    )["LaunchTemplateVersions"]
    assert version["LaunchTemplateData"]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 100
    for function in updated.functions.values():
        environment = lambda_.get_function_configuration(FunctionName=function.name)["Environment"]
        assert environment["Variables"]["LAUNCH_TEMPLATE_VERSION"] == "2", function.logical_id

    # and when a run then adds its own version 3 and a later update changes only the functions
    ec2.create_launch_template_version(
        LaunchTemplateId=updated.launch_template_id, SourceVersion="2", LaunchTemplateData={}
    )
    again = update_stack("spotfill-updated", {"WorkerImage": "spotfill-worker:v2"})

    # then the functions still name the stack's version, not the run's
    for function in again.functions.values():
        variables = lambda_.get_function_configuration(FunctionName=function.name)["Environment"]["Variables"]
        assert variables["WORKER_IMAGE"] == "spotfill-worker:v2", function.logical_id
        assert variables["LAUNCH_TEMPLATE_VERSION"] == "2", function.logical_id


def test_own_input_and_output_buckets_scope_the_worker_role(moto_module: None):
    own = deploy_stack(
        "spotfill-own", {"InputBucketName": "their-inputs", "OutputBucketName": "their-outputs"}
    )
    assert own.outputs["InputBucketName"] == "their-inputs"
    assert own.outputs["OutputBucketName"] == "their-outputs"
    statements = {s["Sid"]: s for s in role_statements(own.outputs["TaskRoleArn"].rsplit("/", 1)[1])}
    assert "arn:aws:s3:::their-inputs/*" in statements["ReadShards"]["Resource"]
    assert statements["WriteOutputs"]["Resource"] == "arn:aws:s3:::their-outputs/*"
    assert statements["FindOutputs"]["Resource"] == "arn:aws:s3:::their-outputs"
    assert "their-outputs" not in json.dumps(statements["ReadShards"])


def test_placeholder_without_substitution_fails_the_deploy_naming_it():
    with pytest.raises(DeployError, match="MissingFunctionArn"):
        definition_with_substitutions('{"Resource": "${MissingFunctionArn}"}', {"ValidateFunctionArn": "x"})


def test_substitutions_keep_intrinsics_for_cloudformation_to_resolve():
    value = definition_with_substitutions(
        '{"A": "${ValidateFunctionArn}", "B": 1}', {"ValidateFunctionArn": {"Fn::GetAtt": ["F", "Arn"]}}
    )
    assert value == {"Fn::Join": ["", ['{"A": "', {"Fn::GetAtt": ["F", "Arn"]}, '", "B": 1}']]}


def test_deploying_a_stack_name_twice_fails_naming_the_stack(stack: StackOutputs):
    with pytest.raises(DeployError, match="stack spotfill exists already"):
        deploy_stack("spotfill")
