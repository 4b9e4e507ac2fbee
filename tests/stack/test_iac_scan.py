"""The IaC security scan's suppressions (checkov, in `make lint`): each says why, and each reason stays true.

checkov itself runs in `make lint` from a venv of its own; these tests read the template only.
"""

from __future__ import annotations

import copy
import json

import boto3
import pytest

from spotfill.deploy import StackOutputs, deploy_stack, load_template
from spotfill.iac_scan import main, scan_template, suppressions, unexplained_suppressions


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template()


@pytest.fixture(scope="module")
def scanned(template: dict) -> dict:
    return scan_template(template, "us-east-1")


def _skipped(resource: dict) -> dict[str, str]:
    return {entry["id"]: entry["comment"] for entry in suppressions(resource)}


def _functions(template: dict) -> dict[str, dict]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


def test_every_checkov_suppression_in_template_yaml_gives_its_reason(template: dict):
    # given template.yaml, which does suppress checks
    assert sum(len(suppressions(r)) for r in template["Resources"].values()) > 0

    # when its suppressions are read, then none lacks a check id or a written reason
    assert unexplained_suppressions(template) == []


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"id": "CKV_AWS_117"}, "CKV_AWS_117 gives no reason"),
        ({"id": "CKV_AWS_117", "comment": "  "}, "CKV_AWS_117 gives no reason"),
        ({"id": "CKV_AWS_117", "comment": "not needed"}, "CKV_AWS_117 gives no reason"),
        ({"comment": "a reason long enough to count as one"}, "has no check id"),
        ("CKV_AWS_117", "is not a mapping"),
    ],
)
def test_a_bare_suppression_is_reported_with_its_resource(template: dict, entry, complaint: str):
    # given one function whose suppressions gain a bare entry
    bare = copy.deepcopy(template)
    bare["Resources"]["MonitorFunction"]["Metadata"]["checkov"]["skip"].append(entry)

    # when the suppressions are checked
    problems = unexplained_suppressions(bare)

    # then exactly that entry is reported, naming the resource
    assert len(problems) == 1
    assert problems[0].startswith("MonitorFunction: ")
    assert complaint in problems[0]


def test_a_bare_suppression_fails_the_lint_step_before_anything_is_written(template: dict, tmp_path, capsys):
    # given template.yaml with one suppression's reason removed
    import yaml

    bare = copy.deepcopy(template)
    del bare["Resources"]["WorkerLogGroup"]["Metadata"]["checkov"]["skip"][0]["comment"]
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(bare))
    output = tmp_path / "scan" / "template.json"

    # when make lint's step prepares the translated template
    status = main([str(output), "--template", str(path)])

    # then it fails, says which suppression, and writes nothing for checkov to pass
    assert status == 1
    assert "WorkerLogGroup: checkov skip of CKV_AWS_158 gives no reason" in capsys.readouterr().err
    assert not output.exists()


def test_generated_resources_carry_the_suppressions_of_the_sam_resource_they_come_from(scanned: dict):
    # given template.yaml as SAM translates it for the scan
    resources = scanned["Resources"]

    # then RequestFleetFunction's role carries the function's reason for RequestSpotFleet on "*"
    role = _skipped(resources["RequestFleetFunctionRole"])
    assert "ec2:RequestSpotFleet" in role["CKV_AWS_111"]
    # and a function's own suppressions survive the translation
    assert _skipped(resources["MonitorFunction"]).keys() == {
        "CKV_AWS_115",
        "CKV_AWS_116",
        "CKV_AWS_117",
        "CKV_AWS_173",
    }
    # and resources generated from a function without that suppression do not gain it
    assert "CKV_AWS_111" not in _skipped(resources["PrepareRunFunctionRole"])


def test_only_functions_no_event_source_invokes_have_their_dead_letter_queue_check_suppressed(template: dict):
    # the reason given ("invoked synchronously by the state machine") holds for a function without Events;
    # an asynchronous invoke (an EventBridge rule, S3, SNS, a schedule) needs a dead-letter queue instead
    machine = template["Resources"]["BackfillStateMachine"]["Properties"]["DefinitionSubstitutions"]
    invoked_by_machine = {value["Fn::GetAtt"][0] for value in machine.values()}
    for logical_id, function in _functions(template).items():
        properties = function["Properties"]
        if "CKV_AWS_116" in _skipped(function):
            assert not properties.get("Events"), logical_id
            assert logical_id in invoked_by_machine, logical_id
        else:
            assert properties["DeadLetterQueue"]["Type"] == "SQS", logical_id


def test_cleanup_on_exit_failures_land_in_an_encrypted_queue_outside_the_run_queue_prefix(scanned: dict):
    resources = scanned["Resources"]
    function = resources["CleanupOnExitFunction"]["Properties"]
    assert function["DeadLetterConfig"] == {
        "TargetArn": {"Fn::GetAtt": ["CleanupOnExitDeadLetterQueue", "Arn"]}
    }
    queue = resources["CleanupOnExitDeadLetterQueue"]["Properties"]
    assert queue["KmsMasterKeyId"] == "alias/aws/sqs"
    # workers consume and teardown deletes spotfill-* queues: the dead letters must not be among them
    prefix, _ = queue["QueueName"]["Fn::Join"][1]
    assert not prefix.startswith("spotfill-")


def test_both_buckets_log_access_to_the_stack_log_bucket_unless_one_is_named(scanned: dict):
    resources = scanned["Resources"]
    for bucket, prefix in (("ControlBucket", "control"), ("DataBucket", "data")):
        logging = resources[bucket]["Properties"]["LoggingConfiguration"]
        assert logging["DestinationBucketName"] == {
            "Fn::If": ["CreateAccessLogBucket", {"Ref": "AccessLogBucket"}, {"Ref": "AccessLogBucketName"}]
        }
        assert logging["LogFilePrefix"] == {"Fn::Sub": f"${{AWS::StackName}}/{prefix}/"}
    assert resources["AccessLogBucket"]["Condition"] == "CreateAccessLogBucket"
    (delivery,) = [
        s
        for s in resources["AccessLogBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Allow"
    ]
    assert delivery["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert delivery["Action"] == "s3:PutObject"
    assert delivery["Condition"]["ArnLike"]["aws:SourceArn"] == [
        {"Fn::GetAtt": ["ControlBucket", "Arn"]},
        {"Fn::GetAtt": ["DataBucket", "Arn"]},
    ]
    assert delivery["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}


def test_prepare_run_may_create_the_run_clusters_only(scanned: dict):
    # CKV_AWS_111 (write access without constraints), fixed, not suppressed: run clusters are spotfill-<run>
    statements = scanned["Resources"]["PrepareRunFunctionRole"]["Properties"]["Policies"][0][
        "PolicyDocument"
    ]["Statement"]
    creating = [s for s in statements if "ecs:CreateCluster" in s["Action"]]
    assert [s["Resource"] for s in creating] == [
        {"Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:cluster/spotfill-*"}
    ]


def _outputs(stack_name: str) -> dict[str, str]:
    (stack,) = boto3.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def test_default_stack_versions_the_data_and_log_buckets_and_keeps_cleanup_dead_letters(stack: StackOutputs):
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    outputs = _outputs(stack.stack_name)
    for bucket in (stack.data_bucket, outputs["AccessLogBucketName"]):
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert all("NoncurrentVersionExpiration" in r for r in rules)
    attributes = sqs.get_queue_attributes(
        QueueUrl=outputs["CleanupDeadLetterQueueUrl"], AttributeNames=["All"]
    )
    assert attributes["Attributes"]["KmsMasterKeyId"] == "alias/aws/sqs"
    assert attributes["Attributes"]["MessageRetentionPeriod"] == "1209600"
    # and the dashboard's dead-letter widget shows it beside the shards' dead letters
    cloudwatch = boto3.client("cloudwatch")
    body = json.loads(cloudwatch.get_dashboard(DashboardName=outputs["DashboardName"])["DashboardBody"])
    metrics = [m for w in body["widgets"] for m in w["properties"]["metrics"]]
    queue_name = outputs["CleanupDeadLetterQueueUrl"].rsplit("/", 1)[1]
    assert ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", queue_name] in [
        m[:4] for m in metrics
    ]


def test_stack_deploys_with_a_named_access_log_bucket_and_a_worker_log_key(moto_module: None):
    # given a bucket for the access logs and a KMS key, as an account would have them
    key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    boto3.client("s3").create_bucket(Bucket="central-access-logs")

    # when the stack is deployed naming both
    deploy_stack("named", {"AccessLogBucketName": "central-access-logs", "WorkerLogKmsKeyArn": key})

    # then it creates no access-log bucket of its own and reports the named one
    summaries = boto3.client("cloudformation").list_stack_resources(StackName="named")[
        "StackResourceSummaries"
    ]
    created = {r["LogicalResourceId"] for r in summaries}
    assert "AccessLogBucket" not in created
    assert "AccessLogBucketPolicy" not in created
    assert _outputs("named")["AccessLogBucketName"] == "central-access-logs"


def test_worker_log_group_takes_the_key_only_when_one_is_given(scanned: dict):
    assert scanned["Resources"]["WorkerLogGroup"]["Properties"]["KmsKeyId"] == {
        "Fn::If": ["HasWorkerLogKmsKey", {"Ref": "WorkerLogKmsKeyArn"}, {"Ref": "AWS::NoValue"}]
    }
    assert scanned["Parameters"]["WorkerLogKmsKeyArn"]["Default"] == ""
    assert scanned["Parameters"]["AccessLogBucketName"]["Default"] == ""
