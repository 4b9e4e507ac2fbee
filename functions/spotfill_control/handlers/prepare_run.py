"""PrepareRun: shard list, queues and messages, cluster, task definition, launch template version.

Returns the run with phase "preparing" when another part would not end within half the time it had left: the
state machine invokes it again, and it continues from its checkpoint."""

import math

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import parse

from spotfill_control.aws import client
from spotfill_control.config import settings
from spotfill_control.deadline import Deadline
from spotfill_control.run import RunEvent
from spotfill_control.setup import prepare

logger = Logger()


def handler(event: dict, context: object) -> dict:
    run = parse(event=event, model=RunEvent).run
    logger.append_keys(run_id=run.run_id)
    run = prepare.prepare_run(
        run,
        s3=client("s3"),
        sqs=client("sqs"),
        ecs=client("ecs"),
        ec2=client("ec2"),
        ssm=client("ssm"),
        settings=settings(),
        budget=Deadline.of_invocation(context, math.inf, share=prepare.TIME_SHARE),
    )
    logger.info(
        "run prepared" if run.phase == "prepared" else "run preparing, continued in the next invocation",
        extra={"shards": run.shards_total, "skipped": run.shards_skipped},
    )
    return run.model_dump(mode="json")
