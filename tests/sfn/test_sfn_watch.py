"""`spotfill watch` (and `start --watch`) on the real ASL: a run that continues as new is one run, followed
across every execution it hands over to, and the exit status is the last execution's."""

from __future__ import annotations

import json
import re
import time

import pytest
from spotfill_control.monitoring.budget import format_usd

from spotfill import cli

from .harness import Cloud, Knobs, Physics

pytestmark = pytest.mark.sfn

SLOW_WORKERS = Knobs(tick_seconds=0.6)  # about 1.7 shards/s: each execution sees a few polls


class InjectedFault(Exception):
    """A fault no Retry names: the state's Catch must take it."""


def _watch(cloud: Cloud, spec: dict) -> tuple[str, int]:
    """Start the run, then `spotfill watch` its first execution while the workers run; (first ARN, exit)."""
    physics = Physics(cloud.session, SLOW_WORKERS)
    physics.start()
    try:
        first = cloud.start(spec)
        status = cli.main(["watch", first, "--stack", cloud.stack.stack_name, "--region", cloud.stack.region])
    finally:
        physics.stop()
    return first, status


def _successors(cloud: Cloud, first: str) -> list[dict]:
    name = first.rsplit(":", 1)[-1]
    pages = cloud.sfn.get_paginator("list_executions").paginate(stateMachineArn=cloud.stack.state_machine_arn)
    executions = [e for page in pages for e in page["executions"]]
    return [e for e in executions if e["name"] != name and e["name"].startswith(_run_id(cloud, first))]


def _run_id(cloud: Cloud, execution_arn: str) -> str:
    from spotfill_control import state_store

    run = state_store.load_by_execution(execution_arn, cloud.s3, cloud.stack.control_bucket)
    assert run is not None
    return run.run_id


def test_watch_follows_a_handed_over_run_to_its_last_execution_and_exits_0_when_it_succeeds(cloud, lambdas):
    spec = cloud.spec("watch-handover", shards=6, limits={"handover_after_iterations": 2})

    first, status = _watch(cloud, spec)

    successors = _successors(cloud, first)
    assert successors, "the run should have continued as new"
    assert status == 0
    assert all(e["status"] == "SUCCEEDED" for e in successors)  # watched to the end, not to the handover
    report = cloud.report(_run_id(cloud, first))
    assert report is not None and report["status"] == "succeeded"
    assert report["executions"] == len(successors) + 1


def test_watch_exits_non_zero_when_the_execution_a_run_was_handed_over_to_fails(cloud, lambdas, capsys):
    # Teardown runs only in the run's last execution: the first one hands over and succeeds.
    lambdas.inject_failure("teardown", InjectedFault("teardown broke after the handover"))
    spec = cloud.spec("watch-handover-fails", shards=4, limits={"handover_after_iterations": 1})

    first, status = _watch(cloud, spec)

    # (the first execution may still be in its last state when watch sees its successor fail: waited for)
    assert cloud.wait(first).status == "SUCCEEDED"
    successors = _successors(cloud, first)
    assert successors and successors[0]["status"] == "FAILED"
    assert status != 0
    assert "ended failed" in capsys.readouterr().err


def test_start_watch_of_an_invalid_spec_prints_the_validation_error_as_one_sentence_and_exits_non_zero(
    cloud, lambdas, tmp_path, capsys
):
    # given a spec naming an instance type that does not exist
    spec = cloud.spec("watch-invalid", shards=1)
    spec["fleet"]["instance_types"] = ["x9.huge"]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))

    # when it is started and watched
    status = cli.main(
        [
            "start",
            "--input",
            str(path),
            "--name",
            "watch-invalid-1",
            "--watch",
            "--stack",
            cloud.stack.stack_name,
            "--region",
            cloud.stack.region,
        ]
    )

    # then the error is Validate's one sentence naming the field, without the Lambda payload around it
    err = capsys.readouterr().err
    assert status != 0
    errors = [line for line in err.splitlines() if line.startswith("spotfill: error: ")]
    assert len(errors) == 1
    assert (
        "invalid input: fleet.instance_types: x9.huge is not an instance type of region us-east-1"
        in errors[0]
    )
    for payload_word in ("stackTrace", "errorType", "errorMessage", "Traceback"):
        assert payload_word not in err


def test_watch_shows_the_monitors_eta_cost_so_far_and_projected_total(cloud, lambdas, capsys):
    # given a run slow enough for the monitor to poll while shards finish
    spec = cloud.spec("watch-projection", shards=6)

    # when it is watched
    first, status = _watch(cloud, spec)

    # then the progress lines carry the monitor's projection, and the run state its figures
    out = capsys.readouterr().out
    assert status == 0
    lines = [line for line in out.splitlines() if "; ETA " in line]
    assert lines, out
    assert re.search(r"; ETA \d+m\d\ds, cost \$[0-9.]+ so far, projected \$[0-9.]+$", lines[0]), lines[0]
    run = cloud.s3.get_object(
        Bucket=cloud.stack.control_bucket, Key=f"runs/{_run_id(cloud, first)}/state.json"
    )["Body"].read()
    projection = json.loads(run)["projection"]
    assert projection["eta_seconds"] == 0.0  # the last poll saw the run done
    assert projection["projected_total_usd"] == json.loads(run)["budget"]["accrued_usd"]


def test_watch_of_a_finished_run_shows_the_reports_cost_the_one_figure_of_the_run(cloud, lambdas):
    # given a finished run, whose monitor accrued its cost up to its last poll only
    from spotfill import runs

    first, status = _watch(cloud, cloud.spec("watch-cost", shards=3))
    assert status == 0
    state = json.loads(
        cloud.s3.get_object(
            Bucket=cloud.stack.control_bucket, Key=f"runs/{_run_id(cloud, first)}/state.json"
        )["Body"].read()
    )

    # when `spotfill watch` polls it
    session = runs.Session(region=cloud.stack.region)
    snap = runs.RunWatcher(session, session.stack(cloud.stack.stack_name), first).poll()

    # then its cost, and the projected total, are the report's (through teardown), not the monitor's accrual
    report = cloud.report(_run_id(cloud, first))
    assert report is not None and snap.finished
    assert report["cost_usd"]["total"] != state["budget"]["accrued_usd"]
    assert snap.cost_usd == snap.projected_total_usd == report["cost_usd"]["total"]


def test_runs_lists_a_running_run_before_a_finished_one_with_progress_and_cost(
    cloud, lambdas, capsys, monkeypatch
):
    from rich.console import Console
    from spotfill_control import state_store

    monkeypatch.setattr(cli, "console", Console(width=250))  # a terminal wide enough for whole lines

    # given a finished run and, started after it, a run whose fleet never registers (still running)
    finished = cloud.run(cloud.spec("runs-finished", shards=3))
    assert finished.status == "SUCCEEDED"
    running = cloud.start(cloud.spec("runs-running", shards=2))
    try:
        deadline = time.monotonic() + 30
        while state_store.load_by_execution(running, cloud.s3, cloud.stack.control_bucket) is None:
            assert time.monotonic() < deadline, "the second run never persisted its state"
            time.sleep(0.1)
        running_id = _run_id(cloud, running)

        # when the user lists the runs
        status = cli.main(["runs", "--stack", cloud.stack.stack_name, "--region", cloud.stack.region])
        limited = capsys.readouterr().out if status else ""
        status_limited = cli.main(
            ["runs", "--limit", "1", "--stack", cloud.stack.stack_name, "--region", cloud.stack.region]
        )
    finally:
        cloud.sfn.stop_execution(executionArn=running, error="Aborted", cause="the test is over")
        cloud.deliver_status_change(cloud.wait(running))

    # then the running run comes first, the finished one after it, each with its progress and cost
    assert status == 0 and status_limited == 0, limited
    out = capsys.readouterr().out
    first_listing, second_listing = out.split("recent runs")[1:]
    rows = [line for line in first_listing.splitlines() if "runs-" in line]
    assert running_id in rows[0] and "running" in rows[0] and "0/2" in rows[0]
    finished_rows = [line for line in rows if finished.run_id in line]
    assert finished_rows and "succeeded" in finished_rows[0] and "3/3" in finished_rows[0]
    report = finished.report
    assert report is not None and f"${format_usd(report['cost_usd']['total'])}" in finished_rows[0]
    # and --limit keeps the newest
    assert running_id in second_listing and finished.run_id not in second_listing


@pytest.mark.parametrize(
    ("document", "sentence"),
    [
        ([{"name": "an-array"}], "invalid input: spec: must be a JSON object, got list."),
        ({"name": "no-fields"}, "invalid input: input: required field is missing."),
    ],
    ids=["array", "missing-fields"],
)
def test_start_of_an_invalid_spec_exits_non_zero_with_validates_sentence_and_starts_nothing(
    cloud, lambdas, tmp_path, capsys, document, sentence
):
    # given a spec file that Validate would refuse
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(document))
    sfn = cloud.session.client("stepfunctions")
    before = sfn.list_executions(stateMachineArn=cloud.stack.state_machine_arn)["executions"]

    # when it is started, without --watch
    status = cli.main(
        ["start", "--input", str(path), "--stack", cloud.stack.stack_name, "--region", cloud.stack.region]
    )

    # then it exits non-zero with Validate's sentence, and no execution exists
    err = capsys.readouterr().err
    assert status == 2, err
    errors = [line for line in err.splitlines() if line.startswith("spotfill: error: ")]
    assert len(errors) == 1 and f"{path}: {sentence}" in errors[0], err
    after = sfn.list_executions(stateMachineArn=cloud.stack.state_machine_arn)["executions"]
    assert len(after) == len(before)
