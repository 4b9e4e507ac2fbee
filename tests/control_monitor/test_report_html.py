"""The report's HTML page (finishing.report_html): what it draws, what it says, how big it gets."""

from __future__ import annotations

import re

import pytest
from spotfill_control.finishing.report_html import by_instance_type, render_html, samples_of
from spotfill_control.finishing.report_text import report_rows

SERIES_CHARTS = ("progress", "throughput", "fleet", "cost")


def chart(page: str, name: str) -> str:
    """The `<figure>` of one chart."""
    found = re.search(rf'<figure class="chart" id="chart-{name}".*?</figure>', page, re.S)
    assert found, name
    return found.group(0)


def drawn(figure: str) -> bool:
    return 'data-empty="false"' in figure and "<svg" in figure and "<path" in figure


def test_a_month_long_run_draws_every_chart_in_well_under_a_megabyte(month_long_run):
    # given a month-long run at the series' bound of 720 samples
    report, series = month_long_run
    assert len(series["samples"]) == 720

    # when its page is drawn
    page = render_html(report, series)

    # then every chart is drawn inline, with no script and nothing fetched, and the page stays small
    for name in (*SERIES_CHARTS, "instance-types"):
        assert drawn(chart(page, name)), name
    assert not re.search(r"<script|<link|<img|<iframe|(src|href)=[\"'](?!#)|url\((?!#)", page)
    assert len(page.encode()) < 500_000


def test_interruptions_are_marked_on_each_timeline(month_long_run):
    report, series = month_long_run
    page = render_html(report, series)
    for name in SERIES_CHARTS:
        assert "spot interruption" in chart(page, name), name
    for sample in series["samples"]:
        sample["interruptions"] = 0
    assert "spot interruption" not in render_html(report, series)


def test_a_run_that_failed_before_any_sample_still_renders_saying_no_data():
    # given the report of a run whose input was invalid, and no series
    report = {"run_id": "exec-1", "status": "invalid", "reason": "invalid input: fleet.instance_types"}

    for series in (None, {"interval_seconds": 5.0, "samples": []}):
        # when its page is drawn
        page = render_html(report, series)

        # then each chart says there is no data, and the reason is there
        for name in (*SERIES_CHARTS, "instance-types"):
            figure = chart(page, name)
            assert 'data-empty="true"' in figure and "no data" in figure and "<svg" not in figure
        assert "invalid input: fleet.instance_types" in page


def test_a_single_sample_is_drawn():
    sample = {
        "t": 1_790_000_000.0,
        "shards_done": 0,
        "shards_total": 4,
        "predictions": 0,
        "predictions_per_second": 0.0,
        "capacity": {},
        "running_tasks": 0,
        "cost_usd": 0.0,
        "interruptions": 0,
    }
    page = render_html({"run_id": "r", "status": "failed"}, {"interval_seconds": 5.0, "samples": [sample]})
    for name in SERIES_CHARTS:
        assert drawn(chart(page, name)), name


def test_a_series_model_is_read_through_model_dump(month_long_run):
    report, series = month_long_run

    class Model:
        def model_dump(self):
            return series

    assert samples_of(Model()) == series["samples"]
    assert drawn(chart(render_html(report, Model()), "fleet"))


def test_the_page_ends_with_the_reports_table_escaped():
    # given a report whose reason and failed shard hold markup
    report = {
        "run_id": "r-1",
        "status": "completed_with_failures",
        "reason": "<script>alert(1)</script> & more",
        "shards": {"succeeded": 1, "failed": 1, "failed_keys": ["s3://in/<b>.npy"], "total": 2},
        "report_uri": "s3://control/reports/r-1.json",
    }

    # when its page is drawn
    page = render_html(report, None)

    # then every row of the CLI's table is there, escaped
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "s3://in/&lt;b&gt;.npy" in page
    table = page[page.index('<table class="report">') :]
    assert len(re.findall("<tr>", table)) == len(report_rows(report))
    for what, _ in report_rows(report):
        assert f"<th>{what}</th>" in table


def test_the_instance_type_figures_of_a_one_type_fleet_are_the_runs_own():
    report = {
        "predictions": {"total": 7_200_000},
        "instances": {"hours_by_type": {"c5.xlarge": 2.0}},
        "cost_usd": {"total": 0.72, "on_demand_prices": {"c5.xlarge": {"usd_per_hour": 0.17}}},
    }
    assert by_instance_type(report) == {"c5.xlarge": (pytest.approx(1000.0), pytest.approx(0.1))}


def test_a_mixed_fleets_dollars_are_shared_by_hours_at_on_demand_prices():
    report = {
        "predictions": {"total": 3_000_000},
        "instances": {"hours_by_type": {"small": 2.0, "large": 1.0}},
        "cost_usd": {
            "total": 0.4,
            "on_demand_prices": {"small": {"usd_per_hour": 0.1}, "large": {"usd_per_hour": 0.2}},
        },
    }
    figures = by_instance_type(report)
    # 2M predictions and $0.20 on the small type, 1M and $0.20 on the large one
    assert figures["small"][1] == pytest.approx(0.1) and figures["large"][1] == pytest.approx(0.2)
    assert figures["small"][0] == figures["large"][0] == pytest.approx(1_000_000 / 3600)


def test_the_page_names_the_redrive_it_is_given_for_unfinished_shards():
    # given a run with unfinished shards
    report = {
        "run_id": "r-1",
        "status": "budget_reached",
        "shards": {"total": 4, "succeeded": 1, "unprocessed": 3},
    }

    # when its page is drawn for AWS, and for a local run whose cloud is gone
    aws, local = render_html(report, None), render_html(report, None, redrive="the same command again")

    # then each names its own way to finish them
    assert "3 unfinished (spotfill redrive)" in aws
    assert "3 unfinished (the same command again)" in local and "spotfill redrive" not in local


def test_a_run_with_a_deadline_draws_target_against_running_capacity_and_the_projected_finish():
    # given a run whose fleet grew from 2 to 4 units after an interruption, projected 10 min late then on time
    def sample(t: float, target: float, running: float, finish: float) -> dict:
        return {
            "t": t,
            "shards_done": 0,
            "shards_total": 4,
            "predictions": 0,
            "predictions_per_second": 0.0,
            "capacity": {"c5.xlarge/spot": running},
            "target_capacity": target,
            "projected_finish": finish,
        }

    at = 1_790_003_600.0
    samples = [sample(1_790_000_000.0, 2, 2, at - 60), sample(1_790_000_600.0, 4, 1, at + 600)]
    report = {
        "run_id": "r",
        "status": "succeeded",
        "deadline": {"at": "2026-09-21T19:00:00+00:00", "met": True},
    }

    # when the page is drawn
    page = render_html(report, {"interval_seconds": 600.0, "samples": samples})

    # then it has the deadline's chart; a run without a deadline has none
    figure = chart(page, "deadline")
    assert drawn(figure) and "target" in figure and "minutes late" in figure
    assert 'id="chart-deadline"' not in render_html({"run_id": "r", "status": "succeeded"}, None)
