"""CheckRegistration: has an instance of the fleet joined the run's cluster yet?"""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import parse

from spotfill_control import state_store
from spotfill_control.aws import client
from spotfill_control.fleet.registration import check_registration
from spotfill_control.run import RunEvent

logger = Logger()


def handler(event: dict, context: object) -> dict:
    run = parse(event=event, model=RunEvent).run
    logger.append_keys(run_id=run.run_id)
    run = check_registration(run, client("ec2"), client("ecs"))
    state_store.persist(run, client("s3"))
    logger.info("registration checked", extra={"phase": run.phase})
    return run.model_dump(mode="json")
