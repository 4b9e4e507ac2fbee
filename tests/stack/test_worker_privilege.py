"""Least privilege for the data plane: every AWS call the real worker makes is granted to the task role.

The worker runs in process against the stack deployed in moto (a good shard, and a corrupt one that it must
record as an error and send to the dead-letter queue); every client it creates is recorded, and each call is
checked against `WorkerTaskRole` in template.yaml, as the control functions are in test_iam_least_privilege.
The worker runs acting as the task role with IAM enforced (`spotfill.iam`), as the local cloud's workers do:
no call may be denied, not even a HeadObject of an output not yet written (403 without s3:ListBucket).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws

from spotfill import iam
from spotfill.deploy import deploy_stack, load_template, translate_template

from .aws_calls import recording_aws_calls
from .iam_policies import Account, is_allowed, needs_of, role_statements

pytestmark = [pytest.mark.aws, pytest.mark.worker]

REGION = "us-east-1"
RUN_ID = "privilege-20261127000000-abc123"
UNEXERCISED_BUT_NEEDED = {
    "s3:ListBucket": "HeadObject on a missing output must answer 404, not 403",
    "sqs:ChangeMessageVisibility": "lease heartbeats on slow shards, and releasing a shard on SIGTERM",
}


def _tiny_model(directory: Path) -> bytes:
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    path = directory / "tiny.keras"
    model.save(path)
    return path.read_bytes()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_every_aws_call_of_the_worker_is_granted_to_the_task_role_and_every_grant_is_used(tmp_path: Path):
    from spotfill_worker.clients import Clients
    from spotfill_worker.config import WorkerConfig
    from spotfill_worker.telemetry import Telemetry
    from spotfill_worker.worker import Worker

    model = _tiny_model(tmp_path)
    with mock_aws():
        # given the stack, a run's queue and dead-letter queue, a model, a good shard and a corrupt one
        session = boto3.session.Session(region_name=REGION)
        stack = deploy_stack("workerprivilege", session=session)
        s3, sqs = session.client("s3"), session.client("sqs")
        data, control = stack.data_bucket, stack.control_bucket
        s3.put_object(Bucket=data, Key="models/tiny.keras", Body=model)
        s3.put_object(Bucket=data, Key="inputs/part-0.npy", Body=_npy(np.ones((4, 5), dtype="float32")))
        s3.put_object(Bucket=data, Key="inputs/part-1.npy", Body=b"not an array")
        dlq = sqs.create_queue(QueueName=f"spotfill-{RUN_ID}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "1"})
        queue = sqs.create_queue(
            QueueName=f"spotfill-{RUN_ID}", Attributes={"VisibilityTimeout": "1", "RedrivePolicy": redrive}
        )["QueueUrl"]
        for part in ("part-0", "part-1"):
            body = {
                "run_id": RUN_ID,
                "shard": f"s3://{data}/inputs/{part}.npy",
                "output": f"s3://{data}/outputs/{part}.jsonl",
                "error": f"s3://{control}/runs/{RUN_ID}/errors/{part}.npy.json",
            }
            sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))

        physical = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in session.client("cloudformation").list_stack_resources(StackName=stack.stack_name)[
                "StackResourceSummaries"
            ]
        }
        task_role = session.client("iam").get_role(RoleName=physical["WorkerTaskRole"])["Role"]["Arn"]
        principal = iam.RolePrincipals(session.client)(task_role, "task")

        # when the worker drains the queue with clients of its own, acting as the task role (IAM enforced)
        with (
            iam.enforcing() as enforcer,
            iam.process_acting_as(principal),
            recording_aws_calls(attribute_all_to="worker") as recorder,
        ):
            config = WorkerConfig.model_validate(
                {
                    "run_id": RUN_ID,
                    "queue_url": queue,
                    "model_uri": f"s3://{data}/models/tiny.keras",
                    "input_format": "npy",
                    "output_format": "jsonl",
                    "receive_wait_seconds": 1,
                    "exit_when_idle_seconds": 2,
                    "spot_notice": False,
                    "instance_metadata": False,
                    "dead_letter_queue_url": dlq,
                    "model_error_uri": f"s3://{control}/runs/{RUN_ID}/errors/model-load.json",
                }
            )
            Worker(config, Clients(), Telemetry(RUN_ID, io.StringIO())).run(install_signals=False)

        assert s3.list_objects_v2(Bucket=data, Prefix="outputs/")["KeyCount"] == 1
        assert s3.list_objects_v2(Bucket=control, Prefix=f"runs/{RUN_ID}/errors/")["KeyCount"] >= 1
        dead = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10)["Messages"]
        assert [json.loads(m["Body"])["shard"] for m in dead] == [f"s3://{data}/inputs/part-1.npy"]

        # then no call was denied, every call is granted to the task role, and it grants nothing unused
        assert enforcer.evaluated, "the worker made no AWS call IAM evaluated"
        assert iam.describe(enforcer.evaluated) == []
        translated = translate_template(load_template(), region=REGION)
        statements = role_statements(translated, "WorkerTaskRole", physical, session.client("iam"))
        account = Account(REGION, "123456789012")
        needs = [(call, need) for call in recorder.calls for need in needs_of(call, account)]
        assert needs, "the worker made no AWS call"
        missing = sorted(
            {
                f"worker calls {call.service}.{call.operation}, which needs {need}: the task role lacks it"
                for call, need in needs
                if not is_allowed(statements, need)
            }
        )
        assert not missing, "\n".join(missing)
        used = {need.action.lower() for _, need in needs}
        unused = sorted(
            f"{action} ({statement.source})"
            for statement in statements
            for action in statement.actions
            if action.lower() not in used and action not in UNEXERCISED_BUT_NEEDED
        )
        assert not unused, f"WorkerTaskRole grants what the worker never needs: {unused}"
