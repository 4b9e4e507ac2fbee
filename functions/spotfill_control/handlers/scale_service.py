"""ScaleService: start the run's ECS service on the registered instances."""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import parse

from spotfill_control import state_store
from spotfill_control.aws import client
from spotfill_control.fleet.cluster import start_service
from spotfill_control.run import RunEvent

logger = Logger()


def handler(event: dict, context: object) -> dict:
    run = parse(event=event, model=RunEvent).run
    logger.append_keys(run_id=run.run_id)
    run = start_service(run, client("ecs"))
    state_store.persist(run, client("s3"))
    logger.info("service started", extra={"service_name": run.resources.service_name})
    return run.model_dump(mode="json")
