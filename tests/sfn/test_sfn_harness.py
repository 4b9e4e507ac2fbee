"""The harness's own checks: `assert_nothing_left` must see every kind of leftover, or the scenarios prove
nothing about teardown."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from .harness import leftovers

RUN = "r1"


@pytest.fixture
def session():
    with mock_aws():
        yield boto3.session.Session()


def _leave_a_whole_run_behind(session: boto3.session.Session) -> None:
    ec2, ecs, sqs = session.client("ec2"), session.client("ecs"), session.client("sqs")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    template = ec2.create_launch_template(
        LaunchTemplateName="t", LaunchTemplateData={"ImageId": "ami-12c6146b"}
    )
    ec2.request_spot_fleet(
        SpotFleetRequestConfig={
            "IamFleetRole": "arn:aws:iam::123456789012:role/fleet",
            "TargetCapacity": 1,
            "AllocationStrategy": "lowestPrice",
            "LaunchTemplateConfigs": [
                {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateId": template["LaunchTemplate"]["LaunchTemplateId"],
                        "Version": "1",
                    },
                    "Overrides": [{"InstanceType": "c5.large", "SubnetId": subnet}],
                }
            ],
            "TagSpecifications": [
                {"ResourceType": "spot-fleet-request", "Tags": [{"Key": "spotfill:run-id", "Value": RUN}]}
            ],
        }
    )
    ecs.create_cluster(clusterName=f"spotfill-{RUN}")
    ecs.register_task_definition(
        family=f"spotfill-{RUN}", containerDefinitions=[{"name": "worker", "image": "w", "memory": 256}]
    )
    ecs.create_service(
        cluster=f"spotfill-{RUN}",
        serviceName=f"spotfill-{RUN}",
        taskDefinition=f"spotfill-{RUN}",
        desiredCount=1,
    )
    sqs.create_queue(QueueName=f"spotfill-{RUN}")
    sqs.create_queue(QueueName=f"spotfill-{RUN}-dlq")


def test_leftovers_names_every_kind_a_run_creates(session):
    _leave_a_whole_run_behind(session)

    left = leftovers(session, RUN)

    assert set(left) == {"active fleets", "instances", "queues", "clusters", "services", "task definitions"}
    assert len(left["queues"]) == 2
    assert leftovers(session).keys() == left.keys()


def test_leftovers_of_a_torn_down_run_is_empty(session):
    _leave_a_whole_run_behind(session)
    ec2, ecs, sqs = session.client("ec2"), session.client("ecs"), session.client("sqs")
    fleets = [f["SpotFleetRequestId"] for f in ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]]

    ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=fleets, TerminateInstances=True)
    ecs.delete_service(cluster=f"spotfill-{RUN}", service=f"spotfill-{RUN}", force=True)
    ecs.delete_cluster(cluster=f"spotfill-{RUN}")
    ecs.deregister_task_definition(taskDefinition=f"spotfill-{RUN}:1")
    for url in sqs.list_queues(QueueNamePrefix="spotfill-")["QueueUrls"]:
        sqs.delete_queue(QueueUrl=url)

    assert leftovers(session, RUN) == {}
    assert leftovers(session) == {}
