"""The CLI's arguments as people expect them: checked as they are parsed, in the CLI's own terms (the flag and
what it accepts, the ranges taken from the spec model), every option's help showing its default, a version.
No cloud is needed: argparse refuses bad arguments before any command runs."""

from __future__ import annotations

import argparse
from importlib.metadata import version

import pytest
from spotfill_control.spec import FleetSpec

from spotfill.cli import build_parser, main


def _refused(capsys, argv: list[str]) -> str:
    """Run the CLI with arguments argparse must refuse; the error line (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    return errors[0]


RUN = ["run", "--local", "--model", "m.keras", "--input", "in", "--output", "out"]


def _target_capacity_range() -> tuple[int, int]:
    constraints = FleetSpec.model_fields["target_capacity"].metadata
    low = next(c.ge for c in constraints if hasattr(c, "ge"))
    high = next(c.le for c in constraints if hasattr(c, "le"))
    return low, high


@pytest.mark.parametrize("command", [RUN, ["demo"]], ids=["run", "demo"])
def test_instances_beyond_the_spec_range_are_refused_naming_the_flag_and_the_range(capsys, command):
    # given the fleet's target capacity range in the spec model
    low, high = _target_capacity_range()
    # when one more instance than it allows is asked for
    error = _refused(capsys, [*command, "--instances", str(high + 1)])
    # then the error names the flag and the range, not the spec's field
    assert f"argument --instances: must be from {low} to {high}" in error
    assert "target_capacity" not in error


def test_a_run_name_the_spec_would_refuse_is_refused_naming_the_flag(capsys):
    error = _refused(capsys, [*RUN, "--name", "my run"])
    assert "argument --name: must be at most 64 letters, digits" in error
    assert "'my run'" in error


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["demo", "--shards", "0"], "argument --shards: must be at least 1, got 0"),
        (["demo", "--rows-per-shard", "0"], "argument --rows-per-shard: must be at least 1, got 0"),
        (["demo", "--shards", "many"], "argument --shards: must be a whole number at least 1, got 'many'"),
        (["demo", "--port", "70000"], "argument --port: must be from 1 to 65535 (a TCP port), got 70000"),
        (["local", "up", "--port", "0"], "argument --port: must be from 1 to 65535 (a TCP port), got 0"),
    ],
    ids=["zero-shards", "zero-rows", "shards-not-a-number", "port-too-high", "port-zero"],
)
def test_demo_and_local_cloud_numbers_are_checked_at_parse_time(capsys, argv, expected):
    assert expected in _refused(capsys, argv)


def test_run_without_local_is_refused_by_the_usage_line_that_shows_local_as_required(capsys):
    # given `run` needs --local for now / when it is left out
    error = _refused(capsys, ["run", "--model", "m.keras", "--input", "in", "--output", "out"])
    # then argparse names it, and the usage shows it required (not in brackets)
    assert "the following arguments are required: --local" in error
    usage = _subparsers(build_parser())["run"].format_usage()
    assert " --local " in usage and "[--local]" not in usage


def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"spotfill {version('spotfill')}"


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser, keyed by its command line: '' for spotfill itself, 'local up', ..."""
    found = {prefix.strip(): parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_subparsers(sub, f"{prefix} {name}"))
    return found


def _options() -> list[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    return [
        (f"{command} {action.option_strings[-1]}".strip(), parser, action)
        for command, parser in _subparsers(build_parser()).items()
        for action in parser._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction | argparse._VersionAction)
    ]


def test_every_option_has_help_that_shows_its_default():
    # given every option of every command / when its help is rendered as --help renders it
    missing = []
    for name, parser, action in _options():
        if action.required:
            continue
        text = parser._get_formatter()._expand_help(action)
        # then it says what leaving it out means
        if "default:" not in text:
            missing.append(f"{name}: {text!r}")
    assert not missing, missing


def test_option_defaults_in_help_are_the_parser_defaults():
    by_name = {name: (parser, action) for name, parser, action in _options()}
    for name, expected in [
        ("demo --shards", "(default: 50)"),
        ("demo --rows-per-shard", "(default: 2000)"),
        ("run --instances", "(default: 2)"),
        ("local up --port", "(default: 4599)"),
        ("run --output-format", "(default: parquet)"),
        ("report --json", "(default: False)"),
        ("redrive --watch", "(default: False)"),
        ("demo --chaos", "(default: every=2)"),
        ("run --chaos", "(default: warmup=3)"),
    ]:
        parser, action = by_name[name]
        assert expected in parser._get_formatter()._expand_help(action), name


def test_no_help_text_has_literal_backticks():
    for command, parser in _subparsers(build_parser()).items():
        assert "`" not in parser.format_help(), command


@pytest.mark.parametrize("name", ["my run", "a/b", "x" * 81], ids=["space", "slash", "81-characters"])
def test_an_execution_name_step_functions_would_refuse_is_refused_naming_the_flag(capsys, name):
    error = _refused(capsys, ["start", "--input", "spec.json", "--name", name])
    assert "argument --name: must be 1 to 80 characters with no white space" in error


@pytest.mark.parametrize("command", [RUN, ["redrive", "run-1"]], ids=["run", "redrive"])
@pytest.mark.parametrize("text", ["0", "-1", "inf", "nan", "two"])
def test_a_dollar_cap_that_is_not_a_positive_number_is_refused_naming_the_flag(capsys, command, text):
    error = _refused(capsys, [*command, "--max-total-usd", text])
    assert "--max-total-usd" in error and "greater than 0" in error and repr(text) in error


def test_runs_shows_20_by_default_and_refuses_a_limit_below_1(capsys):
    assert build_parser().parse_args(["runs"]).limit == 20
    assert build_parser().parse_args(["runs", "--limit", "3"]).limit == 3
    assert "argument --limit: must be at least 1" in _refused(capsys, ["runs", "--limit", "0"])


@pytest.mark.parametrize("command", [RUN, ["redrive", "run-1"]], ids=["run", "redrive"])
def test_a_tiny_dollar_cap_is_parsed_exactly(command):
    assert build_parser().parse_args([*command, "--max-total-usd", "0.0002"]).max_total_usd == 0.0002


def test_redrive_gives_the_new_run_the_new_cap_or_else_the_old_one(monkeypatch):
    # given a run that reached its cap of $5
    from spotfill_control.run import RunState
    from spotfill_control.spec import BackfillSpec

    from spotfill import runs

    spec = BackfillSpec.model_validate(
        {
            "input": {"uri": "s3://d/in/", "format": "npy"},
            "output": {"uri": "s3://d/out/"},
            "model": {"uri": "s3://d/m.keras"},
            "fleet": {"instance_types": ["c5.xlarge"]},
            "limits": {"max_total_usd": 5.0},
        }
    )
    started: list[dict] = []
    monkeypatch.setattr(runs, "load_run", lambda *_: RunState(run_id="run-1", spec=spec))
    monkeypatch.setattr(runs, "start_execution", lambda _s, _t, body, name: started.append(body) or name)

    # when it is redriven with a new cap, then without one
    runs.redrive(None, None, "run-1", max_total_usd=12.5)
    runs.redrive(None, None, "run-1")

    # then the first new run may spend $12.50, the second its own $5 again
    assert [body["limits"]["max_total_usd"] for body in started] == [12.5, 5.0]


def test_watch_shows_the_cost_so_far_against_the_cap_and_a_drain():
    import io

    from rich.console import Console

    from spotfill.progress_display import render
    from spotfill.runs import Snapshot

    snap = Snapshot("arn:x", run_id="r-1", cost_usd=0.000153, max_total_usd=0.0002, draining=True)
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(render(snap))
    assert "cost $0.0001530 of $0.0002000 cap (76%)" in out.getvalue()
    assert "draining: budget nearly reached" in out.getvalue()


def test_watch_shows_the_monitors_eta_cost_so_far_and_projected_total_once_it_projected():
    import io

    from rich.console import Console

    from spotfill.progress_display import projection_line, render
    from spotfill.runs import Snapshot

    snap = Snapshot("arn:x", run_id="r-1", cost_usd=0.0021, eta_seconds=252, projected=True)
    snap.projected_total_usd = 0.0043
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(render(snap))
    assert "ETA 4m12s, cost $0.002100 so far, projected $0.004300" in out.getvalue()
    assert projection_line(Snapshot("arn:x", run_id="r-1", cost_usd=0.0021)) is None  # not projected yet


def test_a_local_run_with_a_cap_builds_a_spec_that_carries_it_exactly():
    from spotfill_control.spec import BackfillSpec

    from spotfill.localrun import manifest

    spec = manifest("capped", "data", "models/m.keras", "npy", "npy", instances=2, max_total_usd=0.0002)
    assert BackfillSpec.model_validate(spec).limits.max_total_usd == 0.0002
    uncapped = manifest("free", "data", "models/m.keras", "npy", "npy", instances=2)
    assert BackfillSpec.model_validate(uncapped).limits.max_total_usd is None


def test_a_local_run_that_reached_its_cap_advises_running_the_same_command_again_not_redrive(
    capsys, monkeypatch, tmp_path
):
    # given a local run drained at its dollar cap, its report carrying the control plane's (AWS) advice
    from spotfill_control.monitoring.budget import redrive_advice

    from spotfill import localrun
    from spotfill.runs import Snapshot

    run_id = "local-20261206140840-138bd0"
    reason = f"run {run_id} drained ...: 1 shard(s) done and about 3 unfinished: {redrive_advice(run_id)}"
    report = {"run_id": run_id, "status": "budget_reached", "reason": reason, "shards": {"unprocessed": 3}}
    snapshot = Snapshot("arn:exec", status="FAILED", run_id=run_id, error="BudgetReached")
    monkeypatch.setattr(
        localrun, "run_local", lambda *args, **kwargs: localrun.LocalRunResult("arn:exec", snapshot, report)
    )

    # when run --local reports it
    code = main(["run", "--local", "--model", "m.keras", "--input", "in", "--output", str(tmp_path / "out")])

    # then the advice is what works once that local cloud is gone: the same command again, with a higher cap
    printed = capsys.readouterr()
    assert code == 2
    assert "spotfill redrive" not in printed.out + printed.err
    error = [line for line in printed.err.splitlines() if line.startswith("spotfill: error: ")]
    assert len(error) == 1 and localrun.LOCAL_REDRIVE_ADVICE in error[0], printed.err


def test_watch_shows_where_the_run_stands_against_its_deadline():
    import io
    from datetime import UTC, datetime

    from rich.console import Console
    from spotfill_control.monitoring.finish_by import outlook
    from spotfill_control.run import FinishBy

    from spotfill.progress_display import render
    from spotfill.runs import Snapshot

    state = FinishBy(
        at=datetime(2026, 12, 7, 6, 0, tzinfo=UTC), behind_seconds=720.0, added_units=3, target_units=7
    )
    snap = Snapshot("arn:x", run_id="r-1", deadline=outlook(state))
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(render(snap))
    assert "deadline 2026-12-07T06:00:00Z: behind by 12 min, adding 3 capacity units" in out.getvalue()
    plain = io.StringIO()
    Console(file=plain, width=120, color_system=None).print(render(Snapshot("arn:x", run_id="r-1")))
    assert "deadline" not in plain.getvalue()


@pytest.mark.parametrize("command", [RUN, ["plan", "spec.json"]], ids=["run", "plan"])
@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("tomorrow", "is neither an ISO 8601 time with a time zone"),
        ("2026-12-07T06:00:00", "has no time zone"),
        ("P1M", "is not an ISO 8601 duration of days, hours, minutes and seconds"),
        ("PT0S", "is no time at all"),
    ],
)
def test_a_deadline_the_spec_would_refuse_is_refused_naming_the_flag(capsys, command, text, why):
    # when a deadline limits.finish_by would refuse is given to run --local or plan
    error = _refused(capsys, [*command, "--finish-by", text])
    # then argparse refuses it with the spec's own sentence, before any local cloud or AWS call
    assert "argument --finish-by: " in error and repr(text) in error and why in error
    assert error.endswith("(limits.finish_by)")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (
            "2020-01-01T00:00:00Z",
            "invalid input: limits.finish_by: 2020-01-01T00:00:00Z (2020-01-01T00:00:00Z) is not in the "
            "future (now is ",
        ),
        (
            "P14D",
            "invalid input: limits: finish_by P14D (1209600 s from the run's start) is beyond "
            "max_runtime_seconds (1123200 s): the run is stopped before then",
        ),
    ],
    ids=["past", "beyond-the-longest-runtime"],
)
def test_a_local_run_refuses_a_deadline_validate_would_refuse_before_anything_starts(
    capsys, monkeypatch, text, why
):
    # given no model, no shards, nothing that a run would need: the deadline is checked first
    from spotfill import localrun

    started = []
    monkeypatch.setattr(localrun, "LocalCloud", lambda *args: started.append(args))

    # when run --local is given a deadline that has passed, or one beyond the 13 days a run may last
    code = main([*RUN, "--finish-by", text])

    # then it is refused with Validate's sentence, and no local cloud was started
    error = capsys.readouterr().err
    assert code == 2 and started == []
    assert f"spotfill: error: {why}" in error


def test_a_local_run_with_a_deadline_builds_a_spec_whose_runtime_reaches_past_it():
    from datetime import UTC, datetime, timedelta

    from spotfill_control.spec import BackfillSpec

    from spotfill.localrun import LOCAL_MAX_RUNTIME_SECONDS, check_finish_by, manifest

    # given deadlines within and beyond a local run's hour
    now = datetime.now(UTC)
    later = (now + timedelta(hours=5)).isoformat()

    # when specs are built with them
    specs = {
        text: BackfillSpec.model_validate(
            manifest("due", "data", "models/m.keras", "npy", "npy", instances=2, finish_by=text)
        ).limits
        for text in ("PT10M", "PT2H", later)
    }
    plain = manifest("free", "data", "models/m.keras", "npy", "npy", instances=2)

    # then each carries its deadline as given, and the run may last an hour past it
    assert {text: limits.finish_by for text, limits in specs.items()} == {t: t for t in specs}
    assert specs["PT10M"].max_runtime_seconds == 600 + 1 + LOCAL_MAX_RUNTIME_SECONDS
    assert specs["PT2H"].max_runtime_seconds == 2 * 3600 + 1 + LOCAL_MAX_RUNTIME_SECONDS
    assert 6 * 3600 <= specs[later].max_runtime_seconds <= 6 * 3600 + 2
    # so none of them is refused as beyond the runtime; a run without a deadline is as before
    for text in specs:
        check_finish_by(text, now)
    assert "finish_by" not in plain["limits"] and plain["limits"]["max_runtime_seconds"] == 3600


def test_a_local_run_with_a_deadline_says_at_the_end_whether_it_was_met_and_by_how_much(
    capsys, monkeypatch, tmp_path
):
    # given a local run whose report says it met its deadline with 90 s to spare
    from spotfill import localrun
    from spotfill.runs import Snapshot

    at = "2026-12-07T06:00:00+00:00"
    report = {
        "run_id": "local-1",
        "status": "succeeded",
        "deadline": {"finish_by": "PT10M", "at": at, "met": True, "seconds_to_spare": 90.0},
    }
    given: dict = {}

    def run_local(*args, **kwargs):
        given.update(kwargs)
        return localrun.LocalRunResult("arn:exec", Snapshot("arn:exec", status="SUCCEEDED"), report)

    monkeypatch.setattr(localrun, "run_local", run_local)

    # when run --local with --finish-by reports it
    report_page = str(tmp_path / "r.html")
    code = main([*RUN[:-1], str(tmp_path / "out"), "--finish-by", "PT10M", "--report", report_page])

    # then the run was given the deadline, and its last lines say it was met and by how much
    assert code == 0 and given["finish_by"] == "PT10M"
    assert f"deadline: met, 1.5 min to spare (deadline {at})" in capsys.readouterr().out.splitlines()
