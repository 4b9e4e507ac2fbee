"""PrepareRun: shard list, queues and messages, cluster, task definition, launch template version.

Returns the run with phase "preparing" when half its time went before every shard was queued: the state
machine invokes it again, and it continues from its checkpoint."""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import parse

from spotfill_control.aws import client
from spotfill_control.config import settings
from spotfill_control.prepare import TimeBudget, prepare_run
from spotfill_control.run import RunEvent

logger = Logger()


def handler(event: dict, context: object) -> dict:
    run = parse(event=event, model=RunEvent).run
    logger.append_keys(run_id=run.run_id)
    run = prepare_run(
        run,
        s3=client("s3"),
        sqs=client("sqs"),
        ecs=client("ecs"),
        ec2=client("ec2"),
        ssm=client("ssm"),
        settings=settings(),
        budget=TimeBudget.of_context(context),
    )
    logger.info(
        "run prepared" if run.phase == "prepared" else "run preparing, continued in the next invocation",
        extra={"shards": run.shards_total, "skipped": run.shards_skipped},
    )
    return run.model_dump(mode="json")
