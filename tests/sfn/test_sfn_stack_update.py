"""A run on a stack that was updated since it was created: CloudFormation adds a launch template version on
each update of the template but leaves its `$Default` at version 1, so a run must start from the version the
update made (the functions' `LAUNCH_TEMPLATE_VERSION`, the template's `LatestVersionNumber`).

Its own module: the updates change this module's stack (another VPC, GPU instances).
"""

from __future__ import annotations

import pytest

from .harness import Cloud, Knobs, assert_nothing_left

pytestmark = pytest.mark.sfn

CPU_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"


def test_run_after_a_stack_update_boots_from_the_version_the_update_made(cloud: Cloud):
    # given the stack moved to another VPC: its security group is replaced, the launch template gets version 2
    # with the new group, and its default version stays 1 (with the deleted group)
    ec2 = cloud.session.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]
    old_group = cloud.stack.outputs["WorkerSecurityGroupId"]
    updated = cloud.update_stack({"VpcId": vpc, "Subnets": subnet["SubnetId"]})
    new_group = updated.outputs["WorkerSecurityGroupId"]
    assert new_group != old_group
    assert not ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [old_group]}])[
        "SecurityGroups"
    ]
    (template,) = ec2.describe_launch_templates(LaunchTemplateIds=[updated.launch_template_id])[
        "LaunchTemplates"
    ]
    assert (template["DefaultVersionNumber"], template["LatestVersionNumber"]) == (1, 2)

    # when a backfill runs
    outcome = cloud.run(cloud.spec("after-update", shards=2), Knobs())

    # then it succeeds on instances booted from the updated stack's version: new group, new subnet
    assert outcome.status == "SUCCEEDED", (outcome.entered(), outcome.last.error, outcome.last.cause)
    booted = [instance for _, instance in outcome.physics.registered]
    assert booted
    reservations = ec2.describe_instances(InstanceIds=booted)["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    assert {g["GroupId"] for i in instances for g in i["SecurityGroups"]} == {new_group}
    assert {i["SubnetId"] for i in instances} == {subnet["SubnetId"]}
    assert_nothing_left(cloud.session, outcome.run_id)


def test_cpu_run_on_a_gpu_instances_stack_boots_the_cpu_ami(cloud: Cloud):
    # given the stack updated to GpuInstances=true (bigger root volumes for GPU images)
    cloud.update_stack({"GpuInstances": "true"})
    ssm, ec2 = cloud.session.client("ssm"), cloud.session.client("ec2")
    cpu_ami = ssm.get_parameter(Name=CPU_AMI_PARAMETER)["Parameter"]["Value"]

    # when a CPU backfill runs
    outcome = cloud.run(cloud.spec("cpu-on-gpu-stack", shards=2), Knobs())

    # then its instances booted the CPU AMI
    assert outcome.status == "SUCCEEDED", (outcome.entered(), outcome.last.error, outcome.last.cause)
    booted = [instance for _, instance in outcome.physics.registered]
    assert booted
    reservations = ec2.describe_instances(InstanceIds=booted)["Reservations"]
    assert {i["ImageId"] for r in reservations for i in r["Instances"]} == {cpu_ami}
    assert_nothing_left(cloud.session, outcome.run_id)
