"""`python -m bench.plan_vs_run`: the plan's estimate against the run, figure by figure (the runs themselves
are the benchmark's; these check its arithmetic and its refusals)."""

from __future__ import annotations

import pytest

from bench import plan_vs_run


def test_each_figure_is_actual_over_planned_and_missing_figures_are_none():
    estimate = {"seconds": 20.0, "total_usd": 0.001, "predictions_per_second": None}
    report = {
        "phases_seconds": {"total": 23.0},
        "cost_usd": {"total": 0.0009},
        "throughput": {"mean_predictions_per_second": 5000.0},
    }

    assert plan_vs_run.ratios(estimate, report) == {
        "duration": pytest.approx(1.15),
        "cost": pytest.approx(0.9),
        "predictions/s": None,  # no planned figure: no ratio, not a division by zero
    }
    assert plan_vs_run.ratios(estimate, {}) == {"duration": None, "cost": None, "predictions/s": None}


def test_a_line_names_the_workload_the_size_and_each_ratio_and_says_when_the_run_failed():
    result = {
        "workload": "mobilenetv2",
        "instances": 3,
        "shards": 12,
        "ok": False,
        "load_average_at_start": 2.5,
        "actual_over_planned": {"duration": 1.1, "cost": None, "predictions/s": 0.9},
    }

    text = plan_vs_run.line(result)

    assert "mobilenetv2" in text and "3 instances" in text and "12 shards" in text
    assert "duration x1.10" in text and "cost -" in text and "predictions/s x0.90" in text
    assert "FAILED" in text


def test_an_instance_count_below_one_is_refused(capsys):
    with pytest.raises(SystemExit):
        plan_vs_run.main(["--instances", "2", "0"])
    assert "--instances must each be at least 1" in capsys.readouterr().err


def test_each_run_waits_the_pause_first_and_a_negative_pause_is_refused(monkeypatch, capsys):
    events: list[tuple[str, object]] = []

    def measure(workload, instances, shards=None, keep=None):
        events.append(("run", instances))
        return {
            "workload": workload,
            "instances": instances,
            "shards": 40,
            "ok": True,
            "load_average_at_start": 0.1,
            "actual_over_planned": {"duration": 1.0, "cost": 1.0, "predictions/s": 1.0},
        }

    monkeypatch.setattr(plan_vs_run, "measure", measure)
    monkeypatch.setattr(plan_vs_run.time, "sleep", lambda seconds: events.append(("pause", seconds)))

    assert plan_vs_run.main(["--workload", "digits", "--instances", "2", "3", "--pause", "5"]) == 0
    assert events == [("pause", 5.0), ("run", 2), ("pause", 5.0), ("run", 3)]
    assert plan_vs_run.PAUSE_SECONDS == 60.0  # the default: a settled machine's load and memory

    with pytest.raises(SystemExit):
        plan_vs_run.main(["--pause", "-1"])
    assert "--pause must not be negative" in capsys.readouterr().err
