"""The ASL itself, read as a document: every resource injected, every Task guarded, every failure torn down.

These are fast and run in every tier; the executions in moto live in test_sfn_scenarios.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from spotfill.deploy import TEMPLATE_PATH, load_template

ASL_PATH = Path(__file__).resolve().parents[2] / "statemachine" / "backfill.asl.json"
TRANSIENT = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    "TransientAwsError",
}
POLL_INTERVAL = "$.run.spec.limits.poll_interval_seconds"


@pytest.fixture(scope="module")
def asl_text() -> str:
    return ASL_PATH.read_text()


@pytest.fixture(scope="module")
def asl(asl_text: str) -> dict[str, Any]:
    return json.loads(asl_text)


@pytest.fixture(scope="module")
def states(asl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return asl["States"]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE_PATH)


@pytest.fixture(scope="module")
def substitutions(template: dict[str, Any]) -> dict[str, Any]:
    machines = [r for r in template["Resources"].values() if r["Type"] == "AWS::Serverless::StateMachine"]
    (machine,) = [
        m for m in machines if m["Properties"].get("DefinitionUri") == "statemachine/backfill.asl.json"
    ]
    return machine["Properties"]["DefinitionSubstitutions"]


def _tasks(states: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: state for name, state in states.items() if state["Type"] == "Task"}


def _successors(state: dict[str, Any]) -> set[str]:
    nexts = {state["Next"]} if "Next" in state else set()
    nexts |= {c["Next"] for c in state.get("Catch", [])}
    nexts |= {c["Next"] for c in state.get("Choices", [])}
    if "Default" in state:
        nexts.add(state["Default"])
    return nexts


def test_every_placeholder_has_a_definition_substitution_in_the_template(asl_text, substitutions):
    placeholders = set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", asl_text))

    assert placeholders, "the ASL reaches its functions through ${...}FunctionArn placeholders"
    assert placeholders <= set(substitutions), (
        f"no substitution for {sorted(placeholders - set(substitutions))}"
    )


def test_every_substitution_is_a_function_arn_from_the_template(substitutions, template):
    for key, value in substitutions.items():
        assert key.endswith("FunctionArn")
        logical_id = key.removesuffix("Arn")
        assert value == {"Fn::GetAtt": [logical_id, "Arn"]}
        assert template["Resources"][logical_id]["Type"] == "AWS::Serverless::Function"


def test_definition_hard_codes_no_arn_partition_account_or_region(asl_text):
    assert "arn:" not in asl_text
    assert not re.search(r"\b\d{12}\b", asl_text)
    assert not re.search(
        r"\b(us|eu|ap|sa|ca|me|af)-(east|west|north|south|central|northeast|southeast)-\d\b", asl_text
    )


def test_every_task_has_comment_timeout_transient_retry_and_catch_all(states):
    tasks = _tasks(states)
    assert len(tasks) == 9
    for name, task in tasks.items():
        assert task.get("Comment"), name
        assert isinstance(task.get("TimeoutSeconds"), int) and task["TimeoutSeconds"] > 0, name
        retried = {error for retrier in task.get("Retry", []) for error in retrier["ErrorEquals"]}
        assert retried >= TRANSIENT, f"{name} does not retry {sorted(TRANSIENT - retried)}"
        for retrier in task["Retry"]:
            assert retrier["BackoffRate"] > 1 and retrier["MaxAttempts"] >= 2, name
        catch_all = [c for c in task.get("Catch", []) if c["ErrorEquals"] == ["States.ALL"]]
        assert len(catch_all) == 1, name
        # Validate's input may be any JSON (an array has no field to add the error to): its error replaces it
        assert (
            catch_all[0]["ResultPath"] == "$"
            if name == "Validate"
            else catch_all[0]["ResultPath"].startswith("$.")
        ), name


def test_every_task_resource_is_its_handlers_function_arn_placeholder(states):
    for name, task in _tasks(states).items():
        assert task["Resource"] == "${" + name + "FunctionArn}"


def test_task_timeouts_outlast_the_functions_own_timeouts_by_30_seconds(states, template):
    """So a function's own timeout surfaces as its error instead of Step Functions giving up first."""
    default = template["Globals"]["Function"]["Timeout"]
    for name, task in _tasks(states).items():
        function = template["Resources"][f"{name}Function"]["Properties"]
        assert task["TimeoutSeconds"] >= function.get("Timeout", default) + 30, name


def test_every_catch_leads_through_teardown_and_report_to_a_fail_state(states):
    def path_from(start: str) -> list[str]:
        path, name = [], start
        while states[name]["Type"] not in ("Succeed", "Fail", "Choice"):
            path.append(name)
            name = states[name]["Next"]
        path.append(name)
        return path

    for name, task in _tasks(states).items():
        (catch,) = task["Catch"]
        after_failure = path_from(catch["Next"])
        if name == "Teardown":
            assert after_failure[:1] == ["Report"]
        elif name == "Report":
            assert after_failure == ["DidItFail"]
        else:
            assert after_failure[-3:] == ["Teardown", "Report", "DidItFail"], name
    fail_branches = {c["Next"] for c in states["DidItFail"]["Choices"]}
    assert all(states[state]["Type"] == "Fail" for state in fail_branches)


def test_a_failure_keeps_the_runs_first_error_and_fails_with_its_name(states):
    assert {
        t["Catch"][0]["ResultPath"]
        for n, t in _tasks(states).items()
        if n not in ("Validate", "Teardown", "Report")
    } == {"$.error"}
    assert states["NoRunYet"]["Parameters"]["error.$"] == "$"  # Validate's error, in place of its input
    assert states["Teardown"]["Catch"][0]["ResultPath"] == "$.teardown_error"
    assert states["Report"]["Catch"][0]["ResultPath"] == "$.report_error"
    first_choice = states["DidItFail"]["Choices"][0]
    assert first_choice == {"Variable": "$.error", "IsPresent": True, "Next": "Failed"}
    assert states["Failed"]["ErrorPath"] == "$.error.Error"


def test_waits_take_the_poll_interval_from_the_spec(states):
    waits = {name: s for name, s in states.items() if s["Type"] == "Wait"}
    assert set(waits) == {"WaitForRegistration", "WaitForWork"}
    assert all(w["SecondsPath"] == POLL_INTERVAL for w in waits.values())


def test_monitoring_loop_is_three_states_wait_task_choice(states):
    loop, name = [], "WaitForWork"
    while name not in loop:
        loop.append(name)
        state = states[name]
        name = state["Default"] if state["Type"] == "Choice" else state["Next"]
    assert loop == ["WaitForWork", "Monitor", "IsWorkDone"]
    assert name == "WaitForWork"


def test_every_state_is_reachable_and_every_transition_names_a_state(asl, states):
    seen, frontier = set(), [asl["StartAt"]]
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        successors = _successors(states[name])
        assert successors <= set(states), f"{name} -> {sorted(successors - set(states))}"
        frontier.extend(successors)
    assert seen == set(states)


def test_resumed_run_goes_straight_back_to_monitoring(states):
    assert states["Validate"]["Next"] == "IsResumed"
    (resume,) = states["IsResumed"]["Choices"]
    assert resume == {"Variable": "$.run.phase", "StringEquals": "monitoring", "Next": "WaitForWork"}
    assert states["IsWorkDone"]["Choices"][1]["Next"] == "ContinueAsNew"
    assert states["ContinueAsNew"]["Next"] == "HandedOver"


def test_a_run_still_preparing_goes_back_to_prepare_run_else_on_to_the_fleet(states):
    assert states["PrepareRun"]["Next"] == "IsPrepared"
    is_prepared = states["IsPrepared"]
    assert is_prepared["Type"] == "Choice" and is_prepared["Comment"]
    (loop,) = is_prepared["Choices"]
    assert loop == {"Variable": "$.run.phase", "StringEquals": "preparing", "Next": "PrepareRun"}
    assert is_prepared["Default"] == "HasPendingShards"
