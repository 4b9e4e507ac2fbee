"""ContinueAsNew: hand the run over to a fresh execution of this state machine before the history limit."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.typing import LambdaContext

from spotfill_control import state_store
from spotfill_control.aws import client, transient_errors_retried
from spotfill_control.config import settings
from spotfill_control.monitoring import handover
from spotfill_control.run import RunEvent

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run = parse(event=event, model=RunEvent).run
    logger.append_keys(run_id=run.run_id)
    with transient_errors_retried("continue_as_new"):
        run = handover.continue_as_new(run, client("stepfunctions"))
        state_store.persist(run, client("s3"), settings().control_bucket)
    logger.info("handed over", extra={"execution_arn": run.execution_arn, "executions": run.executions})
    return {"execution_arn": run.execution_arn, "executions": run.executions}
