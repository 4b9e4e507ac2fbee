"""Monitor: one iteration of the WaitForWork → Monitor → IsWorkDone loop (`monitoring.poll`)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.typing import LambdaContext

from spotfill_control.aws import Clients, client, transient_errors_retried
from spotfill_control.config import settings
from spotfill_control.deadline import Deadline
from spotfill_control.monitoring import poll
from spotfill_control.run import RunEvent, utcnow

logger = Logger()
# Embedded-metric-format records on stdout: Lambda's logs turn them into the dashboard's "shards done vs
# total" and dead-letter series without a PutMetricData call (namespace and dimension as the worker's).
metrics = Metrics(namespace="spotfill")


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run = parse(event=event, model=RunEvent).run
    logger.append_keys(run_id=run.run_id)
    now = utcnow()
    clients = Clients(s3=client("s3"), sqs=client("sqs"), ec2=client("ec2"), ecs=client("ecs"))
    with transient_errors_retried("monitor"):
        # Half the invocation's remaining time for moving dead letters and verifying parts.
        budget_left = Deadline.of_invocation(context, poll.DEFAULT_BUDGET_SECONDS)
        polled = poll.poll(run, clients, settings(), now, budget_left)
    logger.info("monitored", extra=poll.log_fields(polled))
    metrics.add_dimension(name="RunId", value=run.run_id)
    for name, unit, value in poll.metric_values(polled):
        metrics.add_metric(name=name, unit=MetricUnit[unit], value=value)
    poll.check(polled, now)
    return polled.run.model_dump(mode="json")
