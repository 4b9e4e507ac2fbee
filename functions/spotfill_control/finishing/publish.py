"""Report: gather the run's facts, build the report, draw its page, write both and announce the run's end
(`reports/<run id>.json` and `.html` in the control bucket, an EventBridge event and an SNS message).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger

from spotfill_control.config import Settings
from spotfill_control.deadline import Deadline
from spotfill_control.errors import SpotfillError, TransientAwsError
from spotfill_control.finishing.report import (
    StepError,
    build_report,
    report_key,
    run_id_for_execution,
    summary_of,
)
from spotfill_control.finishing.report_facts import Facts, gather
from spotfill_control.finishing.report_text import notification
from spotfill_control.monitoring.series import Series
from spotfill_control.run import RunState

logger = Logger(child=True)


EVENT_SOURCE = "spotfill"


EVENT_DETAIL_TYPE = "Backfill Run Finished"


def publish(
    report: Mapping[str, Any], *, s3: Any, events: Any, sns: Any, bucket: str, bus: str, topic: str
) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=report_key(report["run_id"]),
        Body=json.dumps(report, indent=2).encode(),
        ContentType="application/json",
    )
    entry: dict[str, Any] = {
        "Source": EVENT_SOURCE,
        "DetailType": EVENT_DETAIL_TYPE,
        "Detail": json.dumps(summary_of(report)),
        "EventBusName": bus,
    }
    if report.get("execution_arn"):
        entry["Resources"] = [report["execution_arn"]]
    response = events.put_events(Entries=[entry])
    if response.get("FailedEntryCount"):
        failure = response.get("Entries", [{}])[0]
        problem = f"events.put_events: {failure.get('ErrorCode')}: {failure.get('ErrorMessage')}"
        if failure.get("ErrorCode") in ("ThrottlingException", "InternalFailure", "InternalException"):
            raise TransientAwsError(problem)
        raise SpotfillError(problem)
    subject, message = notification(report)
    sns.publish(TopicArn=topic, Subject=subject, Message=message)


def report_run(
    run: RunState | None,
    *,
    error: StepError | None,
    teardown_error: StepError | None,
    execution_arn: str | None,
    clients: ReportClients,
    settings: Settings,
    now: datetime,
    deadline: Deadline | None = None,
) -> dict[str, Any]:
    """Gather, build, write and announce the run's report; returns its small summary. `deadline` bounds the
    verification of the parts the Monitor left open (`gather`)."""
    bucket = settings.control_bucket
    if run is None:
        run_id, facts = run_id_for_execution(execution_arn, now), Facts()
    else:
        run_id, facts = run.run_id, gather(run, clients.s3, clients.ec2, bucket, now, deadline)
    document = build_report(
        run,
        run_id=run_id,
        error=error,
        teardown_error=teardown_error,
        facts=facts,
        now=now,
        execution_arn=execution_arn,
        control_bucket=bucket,
    )
    page = render_page(document, facts.series)
    document["html_key"] = None if page is None else report_html_key(run_id)
    if page is not None:
        clients.s3.put_object(
            Bucket=bucket, Key=document["html_key"], Body=page.encode(), ContentType=HTML_CONTENT_TYPE
        )
    publish(
        document,
        s3=clients.s3,
        events=clients.events,
        sns=clients.sns,
        bucket=bucket,
        bus=settings.event_bus_name,
        topic=settings.notification_topic_arn,
    )
    return summary_of(document)


HTML_CONTENT_TYPE = "text/html; charset=utf-8"


def report_html_key(run_id: str) -> str:
    return f"reports/{run_id}.html"


def render_page(document: Mapping[str, Any], series: Series | None) -> str | None:
    """The report's HTML page with the run's series (finishing.report_html); None, logged, when it
    cannot be drawn: the page is a view of the report, whose JSON, event and notification go out anyway."""
    from spotfill_control.finishing import report_html  # matplotlib loads only where a page is drawn

    try:
        return report_html.render_html(document, series)
    except Exception:
        logger.exception("the report's HTML page could not be drawn", extra={"run_id": document["run_id"]})
        return None


@dataclass
class ReportClients:
    s3: Any
    ec2: Any
    events: Any
    sns: Any
