"""PrepareRun: queues and messages, shard list, cluster, task definition and launch template version."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime

import botocore.session
import pytest
from botocore.stub import Stubber
from spotfill_control import shards, state_store
from spotfill_control.aws import Clients
from spotfill_control.config import Settings, settings
from spotfill_control.errors import InvalidSpecError, SpotfillError, TransientAwsError
from spotfill_control.finishing.teardown import teardown_and_persist
from spotfill_control.fleet import cluster, launch_template
from spotfill_control.handlers import prepare_run as prepare_handler
from spotfill_control.run import RUN_ID_TAG, RunState, utcnow
from spotfill_control.setup.prepare import prepare_run
from spotfill_control.spec import BackfillSpec

from spotfill.localcloud.pricing import emulated_facts

from .conftest import (
    CONTROL_BUCKET,
    CPU_AMI_PARAMETER,
    DATA_BUCKET,
    FAKE_ENVIRONMENT,
    FailingClient,
    prepared_run,
    sample_spec,
    stack_launch_template_data,
    validated_run,
)


def pure_run(**overrides) -> RunState:
    spec = BackfillSpec.model_validate(sample_spec(**overrides))
    return RunState(
        run_id="demo-20261127060000-abcdef",
        spec=spec,
        instance_types=emulated_facts(spec.fleet.instance_types),
    )


# ---------------------------------------------------------------------------------------------- pure


def test_task_definition_configures_the_worker_from_the_spec(s3_world):
    run = pure_run(input__id_column="id", service__batch_size=256)
    run.resources.dead_letter_queue_url = "https://dead-letters"
    definition = cluster.task_definition(run, s3_world.settings, "https://queue", "us-east-1")
    container = definition["containerDefinitions"][0]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert definition["family"] == "spotfill-demo-20261127060000-abcdef"
    assert definition["taskRoleArn"] == s3_world.settings.task_role_arn
    assert definition["executionRoleArn"] == s3_world.settings.execution_role_arn
    assert (definition["cpu"], definition["memory"]) == ("1024", "2048")
    assert env == {
        "SPOTFILL_RUN_ID": run.run_id,
        "SPOTFILL_QUEUE_URL": "https://queue",
        "SPOTFILL_MODEL_URI": f"s3://{DATA_BUCKET}/models/digits.keras",
        "SPOTFILL_MODEL_RUNTIME": "auto",
        "SPOTFILL_MODEL_PRECISION": "fp32",
        "SPOTFILL_INPUT_FORMAT": "npy",
        "SPOTFILL_OUTPUT_FORMAT": "parquet",
        "SPOTFILL_ID_COLUMN": "id",
        "SPOTFILL_IMAGE_SCALE": "unit",
        "SPOTFILL_BATCH_SIZE": "256",
        "SPOTFILL_VISIBILITY_TIMEOUT": "120",
        "SPOTFILL_STOP_TIMEOUT": "120",
        "SPOTFILL_DEAD_LETTER_QUEUE_URL": "https://dead-letters",
        "SPOTFILL_MODEL_ERROR_URI": f"s3://{s3_world.settings.control_bucket}/runs/{run.run_id}/errors/model-load.json",
    }
    assert container["stopTimeout"] == 120
    assert container["image"] == s3_world.settings.worker_image
    assert container["logConfiguration"] == {
        "logDriver": "awslogs",
        "options": {
            "awslogs-group": "/spotfill/worker",
            "awslogs-region": "us-east-1",
            "awslogs-stream-prefix": run.run_id,
        },
    }
    assert "resourceRequirements" not in container


def test_gpu_fleets_reserve_one_gpu_per_task(s3_world):
    run = pure_run(fleet__instance_types=["g4dn.xlarge", "g5.xlarge"], service__memory=4096)
    container = cluster.task_definition(run, s3_world.settings, "q", "us-east-1")["containerDefinitions"][0]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]


def test_each_architecture_runs_its_own_image_on_instances_of_that_architecture(s3_world):
    # given an x86_64 run and an arm64 (Graviton) run
    x86 = cluster.task_definition(pure_run(), s3_world.settings, "q", "us-east-1")
    arm = cluster.task_definition(
        pure_run(fleet__instance_types=["m7g.large", "c7g.xlarge"]), s3_world.settings, "q", "us-east-1"
    )
    # then each task definition names its architecture's image, and ECS places it only on that architecture
    assert x86["containerDefinitions"][0]["image"] == s3_world.settings.worker_image
    assert x86["runtimePlatform"] == {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"}
    assert arm["containerDefinitions"][0]["image"] == s3_world.settings.worker_image_arm64
    assert arm["runtimePlatform"] == {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"}
    assert s3_world.settings.worker_image_arm64 != s3_world.settings.worker_image


def test_the_ami_follows_the_runs_architecture_and_accelerator():
    assert launch_template.ami_parameter(pure_run()) == launch_template.CPU_AMI_PARAMETER
    assert launch_template.ami_parameter(pure_run(fleet__instance_types=["m7g.large"])) == (
        "/aws/service/ecs/optimized-ami/amazon-linux-2023/arm64/recommended/image_id"
    )
    assert (
        launch_template.ami_parameter(pure_run(fleet__instance_types=["g6e.xlarge"]))
        == launch_template.GPU_AMI_PARAMETER
    )


def test_user_data_joins_the_run_cluster_with_spot_draining():
    script = base64.b64decode(launch_template.user_data(pure_run())).decode()
    assert script.startswith("#!/bin/bash\n")
    assert "ECS_CLUSTER=spotfill-demo-20261127060000-abcdef\n" in script
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true\n" in script
    assert ">> /etc/ecs/ecs.config" in script
    assert "ECS_ENABLE_GPU_SUPPORT" not in script


def test_run_version_sends_only_the_ami_user_data_and_tags_the_run_changes():
    # given a GPU run
    gpu_run = pure_run(fleet__instance_types=["g4dn.xlarge"], service__memory=4096)

    # when its launch template data is built
    data = launch_template.launch_template_data(gpu_run, "ami-gpu")

    # then it holds only what the run changes; SourceVersion inherits the rest
    assert set(data) == {"ImageId", "UserData", "TagSpecifications"}
    assert data["ImageId"] == "ami-gpu"
    assert "ECS_ENABLE_GPU_SUPPORT=true" in base64.b64decode(data["UserData"]).decode()
    assert {spec["ResourceType"] for spec in data["TagSpecifications"]} == {"instance", "volume"}


def test_run_version_request_passes_botocore_validation_given_a_describe_response_as_aws_shapes_it():
    # given EC2's answer for the stack's version 3 as AWS shapes it: response members the request shapes lack
    # (MetadataOptions.State), EBS and profile members, the stack's tags (botocore's stubber checks the shape)
    ec2 = botocore.session.get_session().create_client("ec2", region_name="us-east-1")
    stack_tags = [{"Key": "spotfill:stack", "Value": "spotfill"}]
    described = {
        "LaunchTemplateVersions": [
            {
                "LaunchTemplateId": "lt-0123456789abcdef0",
                "LaunchTemplateName": "spotfill-LaunchTemplate-1A2B3C",
                "VersionNumber": 3,
                "CreateTime": datetime(2026, 11, 20, tzinfo=UTC),
                "CreatedBy": "arn:aws:sts::123456789012:assumed-role/cloudformation/session",
                "DefaultVersion": False,
                "LaunchTemplateData": {
                    "IamInstanceProfile": {"Arn": "arn:aws:iam::123456789012:instance-profile/spotfill"},
                    "BlockDeviceMappings": [
                        {
                            "DeviceName": "/dev/xvda",
                            "Ebs": {
                                "Encrypted": True,
                                "DeleteOnTermination": True,
                                "VolumeSize": 40,
                                "VolumeType": "gp3",
                                "Iops": 3000,
                                "Throughput": 125,
                            },
                        }
                    ],
                    "SecurityGroupIds": ["sg-0123456789abcdef0"],
                    "MetadataOptions": {
                        "State": "applied",
                        "HttpTokens": "required",
                        "HttpPutResponseHopLimit": 2,
                        "HttpEndpoint": "enabled",
                        "HttpProtocolIpv6": "disabled",
                        "InstanceMetadataTags": "disabled",
                    },
                    "TagSpecifications": [
                        {"ResourceType": "instance", "Tags": stack_tags},
                        {"ResourceType": "volume", "Tags": stack_tags},
                    ],
                    "UserData": base64.b64encode(b"#!/bin/bash\n").decode(),
                },
            }
        ]
    }
    run = pure_run()
    run_tags = [
        *stack_tags,
        {"Key": RUN_ID_TAG, "Value": run.run_id},
        {"Key": "Name", "Value": run.scoped_name},
    ]
    stack = Settings.from_environment({**FAKE_ENVIRONMENT, "LAUNCH_TEMPLATE_VERSION": "3"})
    with Stubber(ec2) as stubbed:
        stubbed.add_response(
            "describe_launch_template_versions",
            described,
            {"LaunchTemplateId": stack.launch_template_id, "Versions": ["3"]},
        )
        stubbed.add_response(
            "create_launch_template_version",
            {"LaunchTemplateVersion": {"VersionNumber": 4}},
            {
                "LaunchTemplateId": stack.launch_template_id,
                "SourceVersion": "3",
                "VersionDescription": f"spotfill run {run.run_id}",
                "LaunchTemplateData": {
                    "ImageId": "ami-cpu",
                    "UserData": launch_template.user_data(run),
                    "TagSpecifications": [
                        {"ResourceType": "instance", "Tags": run_tags},
                        {"ResourceType": "volume", "Tags": run_tags},
                    ],
                },
            },
        )

        # when the run's version is created from it (botocore validates a request before stubbing it)
        version = launch_template.create_launch_template_version(run, ec2, stack, "ami-cpu")

        # then the request was valid and sent only what the run changes, from the stack's version
        stubbed.assert_no_pending_responses()
    assert version == 4


# ---------------------------------------------------------------------------------------------- handler, moto


def _attributes(world, url: str) -> dict[str, str]:
    return world.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


@pytest.mark.aws
def test_prepare_creates_an_encrypted_queue_and_dead_letter_queue_for_the_run(world, lambda_context):
    run = prepared_run(world, lambda_context)
    resources = run["resources"]
    assert resources["queue_url"].endswith(f"/spotfill-{run['run_id']}")
    assert resources["dead_letter_queue_url"].endswith(f"/spotfill-{run['run_id']}-dlq")
    queue, dlq = (
        _attributes(world, resources["queue_url"]),
        _attributes(world, resources["dead_letter_queue_url"]),
    )
    assert json.loads(queue["RedrivePolicy"]) == {
        "deadLetterTargetArn": dlq["QueueArn"],
        "maxReceiveCount": 3,
    }
    assert queue["VisibilityTimeout"] == "120"
    assert queue["MessageRetentionPeriod"] == dlq["MessageRetentionPeriod"] == str(14 * 86400)
    assert queue["SqsManagedSseEnabled"] == dlq["SqsManagedSseEnabled"] == "true"
    for url in (resources["queue_url"], resources["dead_letter_queue_url"]):
        assert world.sqs.list_queue_tags(QueueUrl=url)["Tags"] == {RUN_ID_TAG: run["run_id"]}


@pytest.mark.aws
def test_prepare_queues_one_message_per_shard_and_writes_the_shard_list(world, lambda_context):
    run = prepared_run(world, lambda_context)
    bodies = []
    while messages := world.sqs.receive_message(
        QueueUrl=run["resources"]["queue_url"], MaxNumberOfMessages=10
    ).get("Messages"):
        bodies.extend(json.loads(m["Body"]) for m in messages)
    expected = [
        {
            "run_id": run["run_id"],
            "shard": f"s3://{DATA_BUCKET}/inputs/digits/part-{i:05d}.npy",
            "output": f"s3://{DATA_BUCKET}/outputs/digits/part-{i:05d}.parquet",
            "error": f"s3://{CONTROL_BUCKET}/runs/{run['run_id']}/errors/part-{i:05d}.npy.json",
        }
        for i in range(3)
    ]
    assert sorted(bodies, key=lambda b: b["shard"]) == expected
    index = json.loads(
        world.s3.get_object(Bucket=CONTROL_BUCKET, Key=f"runs/{run['run_id']}/shards/index.json")[
            "Body"
        ].read()
    )
    assert (index["run_id"], index["total"], index["pending"]) == (run["run_id"], 3, 3)
    assert [p["key"] for p in index["parts"]] == [f"runs/{run['run_id']}/shards/part-00000.jsonl.gz"]
    part = world.s3.get_object(Bucket=CONTROL_BUCKET, Key=index["parts"][0]["key"])["Body"].read()
    assert [json.loads(line) for line in gzip.decompress(part).splitlines()] == [
        {"shard": b["shard"]} for b in expected
    ]
    listed = shards.read_shard_list(run["run_id"], world.s3, CONTROL_BUCKET)
    assert listed is not None
    assert listed.model_dump() == {
        "run_id": run["run_id"],
        "shards": [{**b, "skipped": False} for b in expected for _ in [b.pop("run_id")]],
    }
    assert (run["phase"], run["shards_total"], run["shards_skipped"]) == ("prepared", 3, 0)
    assert run["timeline"]["prepared_at"]


@pytest.mark.aws
def test_prepare_skips_shards_whose_output_already_exists(world, lambda_context):
    world.s3.put_object(Bucket=DATA_BUCKET, Key="outputs/digits/part-00001.parquet", Body=b"done before")
    run = prepared_run(world, lambda_context)
    attributes = _attributes(world, run["resources"]["queue_url"])
    assert attributes["ApproximateNumberOfMessages"] == "2"
    assert (run["shards_total"], run["shards_skipped"]) == (3, 1)
    assert run["progress"]["state"] == "running"


@pytest.mark.aws
def test_a_run_whose_outputs_all_exist_is_done_before_any_fleet(world, lambda_context):
    for i in range(3):
        world.s3.put_object(Bucket=DATA_BUCKET, Key=f"outputs/digits/part-{i:05d}.parquet", Body=b"done")
    run = prepared_run(world, lambda_context)
    assert (run["shards_total"], run["shards_skipped"], run["progress"]["state"]) == (3, 3, "done")


@pytest.mark.aws
def test_prepare_creates_the_run_cluster_task_definition_and_launch_template_version(world, lambda_context):
    run = prepared_run(world, lambda_context)
    resources, name = run["resources"], f"spotfill-{run['run_id']}"
    described = world.ecs.describe_clusters(clusters=[name], include=["TAGS", "SETTINGS"])["clusters"][0]
    assert (described["status"], resources["cluster_name"]) == ("ACTIVE", name)
    assert {"name": "containerInsights", "value": "enabled"} in described["settings"]
    assert {"key": RUN_ID_TAG, "value": run["run_id"]} in described["tags"]
    definition = world.ecs.describe_task_definition(taskDefinition=resources["task_definition_arn"])[
        "taskDefinition"
    ]
    assert definition["family"] == name
    version = world.ec2.describe_launch_template_versions(
        LaunchTemplateId=world.settings.launch_template_id,
        Versions=[str(resources["launch_template_version"])],
    )["LaunchTemplateVersions"][0]
    data = version["LaunchTemplateData"]
    assert f"ECS_CLUSTER={name}" in base64.b64decode(data["UserData"]).decode()
    assert data["ImageId"] == world.ssm.get_parameter(Name=CPU_AMI_PARAMETER)["Parameter"]["Value"]
    assert run["run_id"] in version["VersionDescription"]
    # and what the run does not change is the stack's version's, inherited through SourceVersion
    stack_version = stack_launch_template_data(world.settings.security_group_id)
    for inherited in ("IamInstanceProfile", "SecurityGroupIds", "MetadataOptions", "BlockDeviceMappings"):
        assert data[inherited] == stack_version[inherited], inherited


@pytest.mark.aws
def test_run_version_derives_from_the_stacks_latest_version_not_the_default_one(
    world, lambda_context, monkeypatch
):
    # given a stack update that made version 2 with a new security group (CloudFormation leaves $Default at 1)
    ec2 = world.ec2
    moved = ec2.create_security_group(GroupName="spotfill-fleet-2", Description="no ingress")["GroupId"]
    ec2.create_launch_template_version(
        LaunchTemplateId=world.settings.launch_template_id,
        LaunchTemplateData=stack_launch_template_data(moved),
    )
    monkeypatch.setenv("LAUNCH_TEMPLATE_VERSION", "2")  # the updated stack's !GetAtt LatestVersionNumber
    settings.cache_clear()

    # when a run is prepared
    run = prepared_run(world, lambda_context)

    # then its version has the updated stack's security group, and the default version did not move
    (version,) = ec2.describe_launch_template_versions(
        LaunchTemplateId=world.settings.launch_template_id,
        Versions=[str(run["resources"]["launch_template_version"])],
    )["LaunchTemplateVersions"]
    assert version["LaunchTemplateData"]["SecurityGroupIds"] == [moved]
    (template,) = ec2.describe_launch_templates(LaunchTemplateIds=[world.settings.launch_template_id])[
        "LaunchTemplates"
    ]
    assert template["DefaultVersionNumber"] == 1


@pytest.mark.aws
def test_cpu_run_gets_the_cpu_ami_even_when_the_stacks_version_holds_the_gpu_ami(
    world, lambda_context, monkeypatch
):
    # given a stack version with the GPU AMI in it (as a GpuInstances=true stack used to make)
    gpu_ami = world.ssm.get_parameter(Name=launch_template.GPU_AMI_PARAMETER)["Parameter"]["Value"]
    template_id = world.ec2.create_launch_template(
        LaunchTemplateName="spotfill-gpu-stack",
        LaunchTemplateData={
            **stack_launch_template_data(world.settings.security_group_id),
            "ImageId": gpu_ami,
        },
    )["LaunchTemplate"]["LaunchTemplateId"]
    monkeypatch.setenv("LAUNCH_TEMPLATE_ID", template_id)
    settings.cache_clear()

    # when a CPU run is prepared
    run = prepared_run(world, lambda_context)

    # then its version boots the CPU AMI
    (version,) = world.ec2.describe_launch_template_versions(
        LaunchTemplateId=template_id, Versions=[str(run["resources"]["launch_template_version"])]
    )["LaunchTemplateVersions"]
    cpu_ami = world.ssm.get_parameter(Name=CPU_AMI_PARAMETER)["Parameter"]["Value"]
    assert version["LaunchTemplateData"]["ImageId"] == cpu_ami != gpu_ami


@pytest.mark.aws
def test_gpu_run_in_a_region_without_the_gpu_ami_fails_naming_the_parameter_before_creating_anything(
    world, lambda_context
):
    # given a region without the public GPU AMI parameter (moto ships it everywhere: removed here)
    world.ssm.get_parameter(
        Name=launch_template.GPU_AMI_PARAMETER
    )  # moto loads the public parameters on first read
    world.ssm.delete_parameter(Name=launch_template.GPU_AMI_PARAMETER)
    run = RunState.model_validate(
        validated_run(world, lambda_context, fleet__instance_types=["g4dn.xlarge"], service__memory=4096)
    )

    # when the GPU run is prepared
    clients = {name: getattr(world, name) for name in ("s3", "sqs", "ecs", "ec2", "ssm")}
    with pytest.raises(InvalidSpecError) as raised:
        prepare_run(run, settings=world.settings, **clients)

    # then one sentence names the parameter, and nothing was created
    message = str(raised.value)
    assert launch_template.GPU_AMI_PARAMETER in message and "g4dn.xlarge" in message
    assert message.count(". ") == 0 and message.endswith(".")
    assert not any(_created_resources(world, run.run_id).values())


def _created_resources(world, run_id: str) -> dict[str, bool]:
    """What exists in AWS for the run, found by name, independent of the run state."""
    name = f"spotfill-{run_id}"
    queues = world.sqs.list_queues(QueueNamePrefix=name).get("QueueUrls", [])
    clusters = world.ecs.describe_clusters(clusters=[name])["clusters"]
    families = world.ecs.list_task_definitions(familyPrefix=name)["taskDefinitionArns"]
    versions = world.ec2.describe_launch_template_versions(LaunchTemplateId=world.settings.launch_template_id)
    return {
        "dead_letter_queue_url": any(q.endswith("-dlq") for q in queues),
        "queue_url": any(not q.endswith("-dlq") for q in queues),
        "cluster_name": any(c["status"] == "ACTIVE" for c in clusters),
        "task_definition_arn": bool(families),
        "launch_template_version": any(
            run_id in v.get("VersionDescription", "") for v in versions["LaunchTemplateVersions"]
        ),
    }


@pytest.mark.aws
@pytest.mark.parametrize(
    ("client_name", "operation"),
    [
        ("sqs", "get_queue_attributes"),  # after the dead-letter queue exists
        ("sqs", "send_message_batch"),  # after both queues exist
        ("ecs", "register_task_definition"),  # after queues and cluster exist
        ("ec2", "create_launch_template_version"),  # after everything but the template version exists
    ],
)
def test_failure_halfway_leaves_nothing_behind_after_teardown(world, lambda_context, client_name, operation):
    # given a validated run and one AWS call that fails mid-way
    run = RunState.model_validate(validated_run(world, lambda_context))
    clients = {name: getattr(world, name) for name in ("s3", "sqs", "ecs", "ec2", "ssm")}
    clients[client_name] = FailingClient(clients[client_name], operation)
    # when PrepareRun fails
    with pytest.raises(SpotfillError if client_name != "sqs" else Exception):
        prepare_run(run, settings=world.settings, **clients)
    # then everything that exists in AWS is in the persisted run state teardown reads
    stored = state_store.load(run.run_id, world.s3)
    exists = _created_resources(world, run.run_id)
    assert any(exists.values())
    for field, created in exists.items():
        assert (getattr(stored.resources, field) is not None) == created, field
    # and teardown, handed the state's input as the Catch does, leaves nothing behind
    teardown_and_persist(
        run, Clients(s3=world.s3, sqs=world.sqs, ec2=world.ec2, ecs=world.ecs), world.settings, utcnow
    )
    assert not any(_created_resources(world, run.run_id).values()), _created_resources(world, run.run_id)


@pytest.mark.aws
def test_retried_prepare_reuses_what_the_failed_attempt_created(world, lambda_context):
    # given an attempt that failed after the queues and the cluster existed
    run = RunState.model_validate(validated_run(world, lambda_context))
    failing_ecs = FailingClient(world.ecs, "register_task_definition", times=1)
    clients = {"s3": world.s3, "sqs": world.sqs, "ec2": world.ec2, "ssm": world.ssm}
    with pytest.raises(SpotfillError):
        prepare_run(run, settings=world.settings, ecs=failing_ecs, **clients)
    first = state_store.load(run.run_id, world.s3).resources
    # when the state is retried with the run it was given the first time
    prepared = prepare_run(run, settings=world.settings, ecs=failing_ecs, **clients)
    # then the queues and cluster are the same, and the rest was created once
    assert prepared.resources.queue_url == first.queue_url
    assert prepared.resources.cluster_name == first.cluster_name
    assert prepared.resources.task_definition_arn.endswith(":1")
    assert len(world.sqs.list_queues(QueueNamePrefix=f"spotfill-{run.run_id}")["QueueUrls"]) == 2


@pytest.mark.aws
def test_prepare_handler_returns_the_run_it_persisted(world, lambda_context):
    validated = validated_run(world, lambda_context)
    run = prepare_handler.handler({"run": validated, "error": None}, lambda_context)
    assert state_store.load(run["run_id"], world.s3).model_dump(mode="json") == run


@pytest.mark.aws
def test_gpu_fleets_get_the_gpu_ami_in_their_launch_template_version(world, lambda_context):
    run = prepared_run(
        world, lambda_context, fleet__instance_types=["g4dn.xlarge", "g5.xlarge"], service__memory=4096
    )
    version = world.ec2.describe_launch_template_versions(
        LaunchTemplateId=world.settings.launch_template_id,
        Versions=[str(run["resources"]["launch_template_version"])],
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    gpu_ami = world.ssm.get_parameter(Name=launch_template.GPU_AMI_PARAMETER)["Parameter"]["Value"]
    cpu_ami = world.ssm.get_parameter(Name=CPU_AMI_PARAMETER)["Parameter"]["Value"]
    assert version["ImageId"] == gpu_ami != cpu_ami
    assert "ECS_ENABLE_GPU_SUPPORT=true" in base64.b64decode(version["UserData"]).decode()
    definition = world.ecs.describe_task_definition(taskDefinition=run["resources"]["task_definition_arn"])
    assert definition["taskDefinition"]["containerDefinitions"][0]["resourceRequirements"] == [
        {"type": "GPU", "value": "1"}
    ]


def test_launch_template_version_keeps_the_base_stack_tag_that_teardown_may_terminate_by():
    # given a base version whose instances carry the stack tag the teardown grant is conditioned on
    base = {
        "ImageId": "ami-cpu",
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": [{"Key": "spotfill:stack", "Value": "spotfill"}]},
            {"ResourceType": "network-interface", "Tags": [{"Key": "spotfill:stack", "Value": "spotfill"}]},
        ],
    }

    # when the run's version is built from it
    data = launch_template.launch_template_data(pure_run(), "ami-cpu", base["TagSpecifications"])

    # then its instances carry both the stack tag and the run id, and the source's other tagged types stay
    instance_tags = next(s["Tags"] for s in data["TagSpecifications"] if s["ResourceType"] == "instance")
    keys = {t["Key"]: t["Value"] for t in instance_tags}
    assert keys["spotfill:stack"] == "spotfill"
    assert keys["spotfill:run-id"] == pure_run().run_id
    tagged = {s["ResourceType"] for s in data["TagSpecifications"]}
    assert tagged == {"instance", "volume", "network-interface"}


@pytest.mark.aws
@pytest.mark.parametrize(
    ("code", "error"), [("ThrottlingException", TransientAwsError), ("AccessDeniedException", SpotfillError)]
)
def test_ami_lookup_throttling_is_retried_and_other_ssm_errors_fail_the_run(
    world, lambda_context, code, error
):
    # given SSM answering the AMI lookup with an error other than a missing parameter
    run = RunState.model_validate(validated_run(world, lambda_context))
    ssm = FailingClient(world.ssm, "get_parameter", code=code)

    # when the AMI is resolved, then the error says which call failed
    with pytest.raises(error, match=rf"ssm\.get_parameter.*{code}"):
        launch_template.resolve_image_id(run, ssm)
