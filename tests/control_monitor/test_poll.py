"""One Monitor poll's bookkeeping (`monitoring.poll`, `projection.record_poll`): the series it keeps, what it
logs and the metrics it emits."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from botocore.exceptions import ClientError
from spotfill_control.monitoring import poll, projection
from spotfill_control.monitoring.progress import Iteration
from spotfill_control.monitoring.series import load_series, series_key
from spotfill_control.run import Projection, RunState
from spotfill_control.spec import BackfillSpec

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


def make_run(**limits: object) -> RunState:
    spec = BackfillSpec.model_validate(
        {
            "input": {"uri": "s3://data/in/", "format": "npy"},
            "output": {"uri": "s3://data/out/"},
            "model": {"uri": "s3://data/model.keras"},
            "fleet": {"instance_types": ["c5.xlarge"]},
            "limits": {"poll_interval_seconds": 60, **limits},
        }
    )
    run = RunState(run_id="r-1", spec=spec, state_machine_arn="arn:aws:states:us-east-1:1:stateMachine:sm")
    run.timeline.started_at = T0
    run.shards_total = 10
    return run


class MemoryS3:
    """GetObject and PutObject on a dict; a key never written answers as S3 does (NoSuchKey)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.gets = 0

    def get_object(self, Bucket: str, Key: str) -> dict[str, object]:
        self.gets += 1
        if (Bucket, Key) not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "missing"}}, "GetObject")
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: object) -> dict[str, object]:
        self.objects[(Bucket, Key)] = Body
        return {}


def test_a_first_poll_starts_the_series_without_reading_it_and_later_polls_add_to_it():
    # given a run that never polled (no projection yet)
    run, s3 = make_run(), MemoryS3()
    run.progress.outputs_done = 1

    # when it polls twice
    run.projection = projection.record_poll(run, Iteration(outputs_done=1), T0, s3, "control")
    gets_after_first = s3.gets
    run.progress.outputs_done = 2
    second = projection.record_poll(run, Iteration(outputs_done=2), T0 + timedelta(minutes=1), s3, "control")

    # then the first poll read nothing, and the stored series has one sample per poll
    assert gets_after_first == 0
    stored = load_series(s3, "control", run.run_id)
    assert [s.shards_done for s in stored.samples] == [1, 2]
    assert stored.interval_seconds == 60
    assert ("control", series_key(run.run_id)) in s3.objects
    assert second.at == (T0 + timedelta(minutes=1)).timestamp()


def _polled(run: RunState, projected: Projection) -> poll.Poll:
    return poll.Poll(run=run, seen=Iteration(outputs_done=4, dead_letters=1), projected=projected)


def test_a_poll_without_a_rate_or_cap_emits_only_the_shard_dead_letter_and_cost_metrics():
    polled = _polled(make_run(), Projection(at=0.0, predictions_per_second=0.0))
    assert poll.metric_values(polled) == [
        ("ShardsTotal", "Count", 10),
        ("ShardsDone", "Count", 4),
        ("DeadLetters", "Count", 1),
        ("CostSoFarUsd", "NoUnit", 0.0),
    ]


def test_a_poll_with_a_rate_and_a_cap_also_emits_the_eta_the_projected_total_and_the_cap():
    projected = Projection(at=0.0, predictions_per_second=5.0, eta_seconds=120.0, projected_total_usd=0.5)
    polled = _polled(make_run(max_total_usd=2.0), projected)
    assert poll.metric_values(polled)[4:] == [
        ("EtaSeconds", "Seconds", 120.0),
        ("ProjectedTotalUsd", "NoUnit", 0.5),
        ("MaxTotalUsd", "NoUnit", 2.0),
    ]


def test_a_poll_logs_its_counts_its_projection_and_the_runs_limits():
    projected = Projection(at=0.0, predictions_per_second=5.0, eta_seconds=120.0, projected_total_usd=0.5)
    fields = poll.log_fields(_polled(make_run(max_total_usd=2.0), projected))
    assert (fields["outputs_done"], fields["dead_letters"], fields["state"]) == (4, 1, "running")
    projection_and_cap = (fields["eta_seconds"], fields["projected_total_usd"], fields["max_total_usd"])
    assert projection_and_cap == (120.0, 0.5, 2.0)
    assert fields["draining_since"] is None and fields["finish_by"] is None and fields["weights"] is None
