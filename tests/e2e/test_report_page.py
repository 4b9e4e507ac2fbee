"""The report's HTML page in a real browser: headless chromium (Debian's, `make browser`) opens the page a
local-cloud run's Report function wrote, the one `spotfill report --html` draws, and a month-long one, and
every chart with data must have drawn (a non-empty SVG with data marks) with no console error."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from spotfill_control.finishing.report_html import render_html
from spotfill_control.monitoring.series import series_key

from spotfill.cli import main
from spotfill.localrun import follow_run, manifest, upload_and_trigger

pytestmark = pytest.mark.e2e

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SERIES_CHARTS = ("progress", "throughput", "fleet", "cost")
ALL_CHARTS = (*SERIES_CHARTS, "instance-types")

# Each chart: whether the page says it has no data, and what the browser laid out: the SVG's box, its
# path/line elements, and its data marks (paths clipped to the axes with a box of their own: lines, fills,
# bars; not the grid, ticks, labels or frame).
CHARTS_SCRIPT = """
return Array.from(document.querySelectorAll('figure.chart')).map(figure => {
  const svg = figure.querySelector('svg');
  const found = {name: figure.dataset.chart, empty: figure.dataset.empty === 'true', svg: !!svg};
  if (svg) {
    const box = svg.getBBox(), shown = svg.getBoundingClientRect();
    found.box = [box.width, box.height];
    found.shown = [shown.width, shown.height];
    found.elements = svg.querySelectorAll('path, line, polyline, polygon').length;
    found.marks = Array.from(svg.querySelectorAll('path[clip-path]')).filter(p => {
      if (p.closest('g[id^="xtick_"], g[id^="ytick_"]')) return false;  // grid lines
      const b = p.getBBox();
      return b.width > 0 || b.height > 0;
    }).length;
  }
  return found;
});
"""


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    assert not missing, f"{', '.join(missing)} missing: `make browser` installs Debian's chromium and driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Chromium puts its singleton socket in $TMPDIR and aborts ("Socket path too long") when that path passes
    # the 108 bytes a Unix socket's address holds, as under make test's deep TMPDIR: the browser gets a short
    # one of its own. The pages it opens stay under the tests' TMPDIR.
    browser_tmp = tempfile.mkdtemp(prefix="chromium-", dir="/tmp")
    service = Service(CHROMEDRIVER, env={**os.environ, "TMPDIR": browser_tmp})
    try:
        driver = webdriver.Chrome(options=options, service=service)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(browser_tmp, ignore_errors=True)


def open_page(browser, path: Path) -> dict[str, dict]:
    """Open the page from disk; its charts as the browser laid them out, after asserting no console error."""
    browser.get(path.resolve().as_uri())
    charts = {chart["name"]: chart for chart in browser.execute_script(CHARTS_SCRIPT)}
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    assert set(charts) == set(ALL_CHARTS)
    return charts


def assert_drawn(chart: dict) -> None:
    assert not chart["empty"] and chart["svg"], chart
    assert min(chart["box"]) > 0 and min(chart["shown"]) > 0, chart
    assert chart["elements"] > 0 and chart["marks"] > 0, chart


def test_a_month_long_page_draws_every_chart_in_the_browser(browser, month_long_run, tmp_path):
    # given the page of a month-long run (720 samples)
    report, series = month_long_run
    page = tmp_path / "month.html"
    page.write_text(render_html(report, series), encoding="utf-8")

    # when chromium opens it / then every chart drew, with no console error
    for chart in open_page(browser, page).values():
        assert_drawn(chart)


def test_the_page_of_a_run_that_failed_early_opens_and_says_no_data(browser, tmp_path):
    page = tmp_path / "invalid.html"
    page.write_text(render_html({"run_id": "exec-1", "status": "invalid", "reason": "bad"}, None))
    charts = open_page(browser, page)
    assert all(chart["empty"] and not chart["svg"] for chart in charts.values())


def test_a_local_cloud_runs_report_page_draws_its_charts_in_the_browser(
    browser, local_cloud, digits, quiet_console, tmp_path
):
    # given a backfill run to its end on the local cloud
    spec = manifest(  # on TensorFlow: about the page, not choosing a runtime (auto converts in every worker)
        "pages",
        local_cloud.outputs.data_bucket,
        "models/pages/model.keras",
        "npy",
        "npy",
        1,
        runtime="tensorflow",
    )
    arn = upload_and_trigger(local_cloud, spec, digits.model_path, digits.shards(), digits.input_dir)
    result = follow_run(local_cloud, arn, quiet_console, timeout=240)
    assert result.succeeded, result.snapshot.error
    run_id = result.report["run_id"]

    # then the Report function wrote the page beside the JSON report
    s3 = local_cloud.client("s3")
    bucket = local_cloud.outputs.control_bucket
    assert result.report["html_key"] == f"reports/{run_id}.html"
    stored = s3.get_object(Bucket=bucket, Key=result.report["html_key"])
    assert stored["ContentType"] == "text/html; charset=utf-8"
    (tmp_path / "stored.html").write_bytes(stored["Body"].read())

    # and `spotfill report RUN --html FILE` draws it here from the report and the run's series
    assert main(["report", run_id, "--html", str(tmp_path / "cli.html")]) == 0
    assert (tmp_path / "cli.html").read_text().startswith("<!DOCTYPE html>")

    # and in chromium every chart with data drew; the series' charts must have data when the run has one
    try:
        series = json.loads(s3.get_object(Bucket=bucket, Key=series_key(run_id))["Body"].read())
    except ClientError:
        series = None
    required = {"instance-types", *(SERIES_CHARTS if series and series.get("samples") else ())}
    for name in ("stored.html", "cli.html"):
        charts = open_page(browser, tmp_path / name)
        for chart in charts.values():
            if chart["name"] in required or not chart["empty"]:
                assert_drawn(chart)
