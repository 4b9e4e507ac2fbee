"""Events AWS emits on its own that moto does not: Step Functions execution status changes, and schedule
rules firing (fired here on demand, since nobody wants to wait for `rate(1 day)`)."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.events.models import events_backends

from spotfill.localcloud.patches.eventbridge import deliver_to_target

log = logging.getLogger(__name__)

_TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}


def _iso(value: Any) -> Any:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(value, datetime) else value


def _epoch_millis(value: Any) -> Any:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else None


class ExecutionStatusEvents:
    """Puts a "Step Functions Execution Status Change" event on the default bus whenever an execution of a
    state machine in the emulator changes status, with the detail AWS sends, so the rule that runs
    `cleanup_on_exit` for FAILED / TIMED_OUT / ABORTED executions fires as it would in AWS."""

    def __init__(self, endpoint_url: str, region: str, tick: float = 0.5) -> None:
        self.region = region
        self.tick = tick
        self.sfn = boto3.client("stepfunctions", endpoint_url=endpoint_url, region_name=region)
        self._seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="localcloud-sfn-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.step()
            except Exception:
                log.exception("execution status events tick failed")

    def step(self) -> None:
        for page in self.sfn.get_paginator("list_state_machines").paginate():
            for machine in page["stateMachines"]:
                for execution_page in self.sfn.get_paginator("list_executions").paginate(
                    stateMachineArn=machine["stateMachineArn"]
                ):
                    for execution in execution_page["executions"]:
                        arn, status = execution["executionArn"], execution["status"]
                        if self._seen.get(arn) == status:
                            continue
                        if self._seen.get(arn) in _TERMINAL:
                            continue
                        self._seen[arn] = status
                        self._emit(arn)

    def _emit(self, execution_arn: str) -> None:
        described = self.sfn.describe_execution(executionArn=execution_arn)
        detail = {
            "executionArn": execution_arn,
            "stateMachineArn": described["stateMachineArn"],
            "name": described["name"],
            "status": described["status"],
            "startDate": _epoch_millis(described.get("startDate")),
            "stopDate": _epoch_millis(described.get("stopDate")),
            "input": described.get("input"),
            "output": described.get("output"),
            "error": described.get("error"),
            "cause": described.get("cause"),
        }
        events_backends[DEFAULT_ACCOUNT_ID][self.region].put_events(
            [
                {
                    "Source": "aws.states",
                    "DetailType": "Step Functions Execution Status Change",
                    "Detail": json.dumps(detail),
                    "Resources": [execution_arn],
                }
            ]
        )


def fire_schedule_rule(
    region: str, rule_name: str, when: datetime | None = None, bus: str = "default"
) -> int:
    """Deliver a "Scheduled Event" for `rule_name` to its targets now, as EventBridge Scheduler would at
    `when`; returns the number of targets it was delivered to."""
    backend = events_backends[DEFAULT_ACCOUNT_ID][region]
    rule = backend.describe_rule(rule_name, bus)
    when = when or datetime.now(UTC)
    event = {
        "version": "0",
        "id": f"local-{rule_name}-{int(when.timestamp())}",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": DEFAULT_ACCOUNT_ID,
        "time": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule.arn],
        "detail": {},
    }
    targets = [t for t in rule.targets if t["Arn"].split(":")[2] in ("states", "lambda")]
    for target in targets:
        deliver_to_target(target, event)
    return len(targets)
