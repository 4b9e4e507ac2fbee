"""The run's series: one sample per Monitor poll (shards done, predictions per second, fleet capacity by
instance type and purchase option, running tasks, cost so far, interruptions), for `spotfill watch`'s
projection and the report's charts.

It lives in its own object, `runs/<run id>/series.json` in the control bucket (never in the Step Functions
payload nor in state.json), and stays bounded: past MAX_SAMPLES, adjacent samples are merged pairwise and the
resolution halves (`interval_seconds` doubles); later polls then extend the last sample until it spans the
new interval. A month of 60-second polls keeps between 360 and MAX_SAMPLES evenly spaced samples (about
200 KB).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from spotfill_control.aws import read_object

MAX_SAMPLES = 720
# A poll extends the last sample while the span would stay within this many intervals (polls come a little
# late), else it starts a new one.
SPAN_TOLERANCE = 1.25


class Sample(BaseModel):
    """One Monitor poll (or a merged span of polls)."""

    t: float  # epoch seconds (end of the span)
    shards_done: int  # outputs + dead letters so far
    shards_total: int
    predictions: int  # predictions so far (the monitor's running estimate)
    predictions_per_second: float  # over the span since the previous sample
    capacity: dict[str, float] = Field(default_factory=dict)  # "<type>/<spot|on-demand>" -> running instances
    running_tasks: int = 0
    cost_usd: float = 0.0  # accrued so far
    interruptions: int = 0  # cumulative spot interruptions
    # A run with `limits.finish_by` only (None otherwise): the fleet's target capacity (weighted units) the
    # monitor set or kept, against the running capacity in `capacity`, and the finish it projects (epoch s).
    target_capacity: float | None = None
    projected_finish: float | None = None


def merged(earlier: Sample, later: Sample) -> Sample:
    """Two adjacent samples as one span: the later one's counters, cumulatives, capacity and tasks, and the
    mean of their rates."""
    rate = (earlier.predictions_per_second + later.predictions_per_second) / 2
    return later.model_copy(update={"predictions_per_second": rate})


class Series(BaseModel):
    interval_seconds: float = 60.0  # the current resolution (doubles when merged)
    samples: list[Sample] = Field(default_factory=list)

    def add(self, sample: Sample) -> Series:
        """Add the sample (in place; returns the series). When the last sample would still span about the
        current resolution with the new one, the new one extends it (merged); past MAX_SAMPLES, adjacent
        pairs are merged, oldest first (an odd last sample stays as it is), and the resolution halves. Every
        sample so spans about `interval_seconds`."""
        samples = self.samples
        if len(samples) >= 2 and sample.t - samples[-2].t <= SPAN_TOLERANCE * self.interval_seconds:
            samples[-1] = merged(samples[-1], sample)
        else:
            samples.append(sample)
        if len(samples) > MAX_SAMPLES:
            halved = [merged(a, b) for a, b in zip(samples[0::2], samples[1::2], strict=False)]
            if len(samples) % 2:
                halved.append(samples[-1])
            self.samples = halved
            self.interval_seconds *= 2
        return self

    @property
    def last(self) -> Sample | None:
        return self.samples[-1] if self.samples else None


def series_key(run_id: str) -> str:
    return f"runs/{run_id}/series.json"


def load_series(s3: Any, bucket: str, run_id: str) -> Series:
    """The run's series; an empty one when it was never saved."""
    body = read_object(s3, bucket, series_key(run_id))
    return Series() if body is None else Series.model_validate_json(body)


def save_series(s3: Any, bucket: str, run_id: str, series: Series) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=series_key(run_id),
        # Without the deadline's fields (None) for a run without one: its series is written as before.
        Body=series.model_dump_json(exclude_none=True).encode(),
        ContentType="application/json",
    )
