"""Validate: any trigger → a checked spec and a new run (`{"run": RunState}`), or InvalidSpecError."""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import parse

from spotfill_control.aws import client
from spotfill_control.config import settings
from spotfill_control.setup.preflight import Preflight
from spotfill_control.setup.triggers import ValidateEvent, validate

logger = Logger()


def handler(event: dict, context: object) -> dict:
    request = parse(event=event, model=ValidateEvent)
    preflight = Preflight.of(client)
    run = validate(request, client("s3"), settings(), preflight=preflight)
    logger.append_keys(run_id=run.run_id)
    logger.info(
        "run validated",
        extra={
            "source": run.source,
            "shards": run.shards_total,
            "preflight_notes": preflight.notes,
            "instance_types": {n: f.model_dump() for n, f in run.instance_types.items()},
        },
    )
    return {"run": run.model_dump(mode="json")}
