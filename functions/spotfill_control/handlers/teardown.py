"""Teardown: remove everything the run created (`finishing.teardown`); no run, nothing to do."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from spotfill_control.aws import Clients, client, transient_errors_retried
from spotfill_control.config import settings
from spotfill_control.deadline import seconds_left
from spotfill_control.finishing.report import FinishEvent
from spotfill_control.finishing.teardown import teardown_and_persist
from spotfill_control.run import utcnow

logger = Logger()


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any] | None:
    finish = FinishEvent.model_validate(event)
    if finish.run is None:
        logger.info("no run to tear down", extra={"error": finish.error.Error if finish.error else None})
        return None
    logger.append_keys(run_id=finish.run.run_id)
    clients = Clients(s3=client("s3"), sqs=client("sqs"), ec2=client("ec2"), ecs=client("ecs"))
    # Covers reading and persisting the run state; the teardown steps translate their own errors.
    with transient_errors_retried("teardown"):
        # The invocation's remaining time bounds the dead-letter drain; a retry goes on where it stopped.
        run, outcome = teardown_and_persist(finish.run, clients, settings(), utcnow, seconds_left(context))
    logger.info(
        "torn down",
        extra={
            "removed": outcome.removed,
            "instances_terminated": len(outcome.instances_terminated),
            "fleets_deleted": outcome.fleets_deleted,
            "fleet_deletions_unconfirmed": outcome.unconfirmed,
            "dead_letters_stored": outcome.dead_letters,
        },
    )
    return run.model_dump(mode="json")
