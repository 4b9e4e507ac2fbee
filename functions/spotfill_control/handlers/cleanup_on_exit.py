"""CleanupOnExit: the backstop for failures the state machine cannot catch (timeouts, aborts, runtime errors).

Target of an EventBridge rule on "Step Functions Execution Status Change" with status FAILED, TIMED_OUT or
ABORTED: finds the run from the execution ARN and runs the same teardown and report as the ASL would.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from spotfill_control.aws import Clients, client
from spotfill_control.config import settings
from spotfill_control.deadline import seconds_left
from spotfill_control.finishing.cleanup import ExecutionStatusChange, clean_up_after
from spotfill_control.finishing.publish import ReportClients

logger = Logger()


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    change = ExecutionStatusChange.model_validate(event)
    logger.append_keys(execution_arn=change.detail.executionArn)
    result = clean_up_after(
        change,
        teardown_clients=Clients(s3=client("s3"), sqs=client("sqs"), ec2=client("ec2"), ecs=client("ecs")),
        report_clients=ReportClients(
            s3=client("s3"), ec2=client("ec2"), events=client("events"), sns=client("sns")
        ),
        settings=settings(),
        time_left=seconds_left(context),
    )
    logger.info("cleaned up after execution", extra=result)
    return result
