"""StartBackfill: the manifest rule's target; starts one execution per uploaded manifest version
(`spotfill_control.setup.starter`)."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger

from spotfill_control.aws import client
from spotfill_control.errors import ConfigurationError
from spotfill_control.setup.starter import start_for_upload

logger = Logger()


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    state_machine_arn = os.environ.get("STATE_MACHINE_ARN")
    if not state_machine_arn:
        raise ConfigurationError("invalid function environment: STATE_MACHINE_ARN is not set.")
    started = start_for_upload(event, client("stepfunctions"), state_machine_arn)
    logger.info(
        "duplicate upload event refused" if started["refused"] else "backfill started",
        extra={"execution_arn": started["execution_arn"], "execution_name": started["name"]},
    )
    return started
