"""RequestFleet: request the run's fleet (EC2 Fleet or Spot Fleet) exactly once; or, when the event says
`"confirm_permissions": true`, only confirm with a DryRun that this function's role may (`spotfill plan
--confirm-permissions`)."""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import parse

from spotfill_control import state_store
from spotfill_control.aws import client
from spotfill_control.config import settings
from spotfill_control.fleet.fleet import start_fleet
from spotfill_control.fleet.permissions import confirm_fleet_permissions
from spotfill_control.run import RunEvent

logger = Logger()


def handler(event: dict, context: object) -> dict:
    run = parse(event=event, model=RunEvent).run
    logger.append_keys(run_id=run.run_id)
    if event.get("confirm_permissions") is True:
        return {"confirmed": confirm_fleet_permissions(run, client("ec2"), settings())}
    run = start_fleet(run, client("ec2"), settings(), iam=client("iam"))
    state_store.persist(run, client("s3"))
    logger.info("fleet requested", extra={"fleet_id": run.resources.fleet_id})
    return run.model_dump(mode="json")
