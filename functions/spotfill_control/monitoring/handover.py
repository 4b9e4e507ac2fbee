"""ContinueAsNew: the run handed over to a fresh execution of its state machine before the history limit.

The Monitor decides when (`progress.handover_due`, after `limits.handover_after_iterations` polls); this step
starts execution `<run id>-<n>` with `{"resume": run}` and the new execution's Validate passes the run
through to the monitoring loop (docs/state-machine.md, "Continue-as-new threshold").
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control.run import RunState


def execution_name(run: RunState, number: int) -> str:
    return f"{run.run_id}-{number}"


def execution_arn_for(state_machine_arn: str, name: str) -> str:
    """`arn:<partition>:states:<region>:<account>:stateMachine:<sm>` → the ARN of its execution `name`."""
    head, kind, machine = state_machine_arn.rsplit(":", 2)
    if kind != "stateMachine":
        raise ValueError(f"not a state machine ARN: {state_machine_arn!r}")
    return f"{head}:execution:{machine}:{name}"


def resumed_run(run: RunState) -> RunState:
    """The run as the next execution starts it: one more execution, a fresh iteration count, still running."""
    return run.model_copy(
        update={
            "executions": run.executions + 1,
            "progress": run.progress.model_copy(update={"iterations_this_execution": 0, "state": "running"}),
        },
        deep=True,
    )


def continue_as_new(run: RunState, sfn: Any) -> RunState:
    """Start execution `<run id>-<n>` of this state machine with `{"resume": run}`; return the run it carries.

    The name makes a retried Lambda harmless: the second StartExecution finds the execution already there
    (`ExecutionAlreadyExists`), which is the one this run handed over to.
    """
    if run.state_machine_arn is None:
        raise ValueError(f"run {run.run_id} does not know its state machine: cannot continue as new")
    nxt = resumed_run(run)
    name = execution_name(run, nxt.executions)
    try:
        arn = sfn.start_execution(
            stateMachineArn=run.state_machine_arn,
            name=name,
            input=json.dumps({"resume": nxt.model_dump(mode="json")}),
        )["executionArn"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
            raise
        arn = execution_arn_for(run.state_machine_arn, name)
    return nxt.model_copy(update={"execution_arn": arn})
