"""`spotfill plan`: Validate's checks with the user's clients, a measured rate, priced projections, and
nothing created (moto, the `world` of this tier)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from spotfill_control import aws
from spotfill_control.errors import InvalidSpecError
from spotfill_control.setup.triggers import ValidateEvent, validate

from spotfill import cli, plan
from spotfill.runs import Session, Stack

from .conftest import CONTROL_BUCKET, DATA_BUCKET, EXECUTION_ARN, REGION, STATE_MACHINE_ARN, sample_spec


@pytest.fixture
def model_world(world):
    """The world's shards, with a model the worker can load (64 features -> 10 classes)."""
    import keras

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.keras"
        model.save(path)
        world.s3.put_object(Bucket=DATA_BUCKET, Key="models/digits.keras", Body=path.read_bytes())
    return world


# A fresh worker's start, measured by the first plan of each runtime set-up in this module and reused by the
# others: every plan here is of the same small model, and each measurement is a new Python importing
# TensorFlow (seconds of CPU).
_WORKER_STARTS: dict[tuple[str, str, int], plan.WorkerStart] = {}
_FRESH_MEMORY: list[float] = []


@pytest.fixture
def cli_stack(model_world, monkeypatch):
    """The CLI's view of the stack: its outputs, and the Validate function's configuration (the world's)."""
    stack = Stack("spotfill", CONTROL_BUCKET, DATA_BUCKET, STATE_MACHINE_ARN, {})
    monkeypatch.setattr(Session, "stack", lambda self, name="spotfill": stack)
    monkeypatch.setattr(plan, "stack_settings", lambda *_: model_world.settings)
    measure = plan.worker_start

    def worker_start(spec, model_path, rows, batch_size):
        key = (spec.model.runtime, spec.model.precision, batch_size)
        if key not in _WORKER_STARTS:
            _WORKER_STARTS[key] = measure(spec, model_path, rows, batch_size)
        return _WORKER_STARTS[key]

    monkeypatch.setattr(plan, "worker_start", worker_start)
    # Once per session too: the real probe touches a GiB (its own test is below)
    if not _FRESH_MEMORY:
        _FRESH_MEMORY.append(plan.fresh_memory_seconds_per_gib())
    monkeypatch.setattr(plan, "fresh_memory_seconds_per_gib", lambda: _FRESH_MEMORY[0])
    return model_world


def spec_file(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(sample_spec(**overrides)))
    return path


def nothing_requested() -> None:
    """No fleet, spot request, instance or cluster exists: plan only reads."""
    ec2, ecs = aws.client("ec2"), aws.client("ecs")
    assert ec2.describe_fleets()["Fleets"] == []
    assert ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"] == []
    assert ec2.describe_instances()["Reservations"] == []
    assert ecs.list_clusters()["clusterArns"] == []
    assert boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=CONTROL_BUCKET).get("KeyCount") == 0


def test_sample_positions_spread_over_the_shards():
    assert plan.sample_indices(2) == [0, 1]
    assert plan.sample_indices(1000) == [0, 500, 999]


def test_an_invalid_spec_exits_non_zero_with_validates_sentence(cli_stack, tmp_path, capsys):
    spec = sample_spec(model__uri=f"s3://{DATA_BUCKET}/models/missing.keras")
    with pytest.raises(InvalidSpecError) as validated:
        validate(
            ValidateEvent(input=spec, execution_arn=EXECUTION_ARN, state_machine_arn=STATE_MACHINE_ARN),
            cli_stack.s3,
            cli_stack.settings,
            preflight=None,
        )
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert cli.main(["plan", str(path), "--region", REGION]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"spotfill: error: invalid input: {validated.value}" in err
    nothing_requested()


@pytest.fixture
def no_aws_configured(monkeypatch, tmp_path):
    """No region, no credentials, no configuration files, and any AWS client made is a failure."""
    for key in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def no_client(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an AWS client was made before the spec was read")

    monkeypatch.setattr(boto3.session.Session, "client", no_client)


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "invalid input: spec: must be a JSON object, got list."),
        (json.dumps(sample_spec(fleet__target_capacity=0)), "invalid input: fleet.target_capacity"),
    ],
    ids=["not-json", "array", "model-refuses"],
)
def test_a_malformed_spec_is_refused_before_any_aws_client_without_aws_configured(
    no_aws_configured, tmp_path, capsys, text, sentence
):
    # given a spec file that is not JSON, not an object or not a valid spec, and no AWS configuration at all
    path = tmp_path / "spec.json"
    path.write_text(text)

    # when it is planned
    code = cli.main(["plan", str(path)])

    # then the spec's own error comes back, not a region or credentials error
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2, err
    assert sentence in err and "region" not in err and "credentials" not in err.lower(), err


def test_a_preflight_refusal_is_the_state_machines_too(cli_stack, tmp_path, capsys):
    path = spec_file(tmp_path, fleet__target_capacity=4000)
    assert cli.main(["plan", str(path), "--region", REGION]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "invalid input: fleet.target_capacity: 4000 may launch up to" in err


def test_each_type_gets_prices_and_projections_best_first_and_nothing_is_requested(
    cli_stack, tmp_path, capsys
):
    path = spec_file(tmp_path)
    assert cli.main(["plan", str(path), "--region", REGION, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["inputs"] == {"shards": 3, "rows": 12, "sampled": 3, "exact": True}
    assert document["measurement"]["rows_per_second"] > 0
    rows = document["projections"]
    assert [r["instance_type"] for r in rows] != [] and {r["instance_type"] for r in rows} == {
        "c5.xlarge",
        "c5.2xlarge",
    }
    for row in rows:
        assert row["spot_usd_per_hour"]["now"] > 0
        assert (
            row["spot_usd_per_hour"]["low"]
            <= row["spot_usd_per_hour"]["now"]
            <= row["spot_usd_per_hour"]["high"]
        )
        assert row["on_demand_usd"] > row["spot_usd_per_hour"]["now"]
        assert row["seconds"] > 0 and row["total_usd"] > 0
        assert row["usd_per_million_predictions"] == pytest.approx(row["total_usd"] / 12 * 1e6)
    # target capacity 4 in vCPU units of c5.xlarge: 4 c5.xlarge or 2 c5.2xlarge, capped by 3 shards' work
    assert {r["instance_type"]: r["instances"] for r in rows} == {"c5.xlarge": 3, "c5.2xlarge": 2}
    per_million = [r["usd_per_million_predictions"] for r in rows]
    assert per_million == sorted(per_million)
    assert any("rows/s per vCPU" in line for line in document["assumptions"])
    nothing_requested()


def test_the_table_names_every_type_and_states_its_assumptions(cli_stack, tmp_path, capsys, monkeypatch):
    from rich.console import Console

    monkeypatch.setattr(cli, "console", Console(width=200))
    assert cli.main(["plan", str(spec_file(tmp_path)), "--region", REGION]) == 0
    out = capsys.readouterr().out
    assert "c5.xlarge" in out and "c5.2xlarge" in out and "$ per million" in out
    assert "counted on all 3 shards" in out and "x the type's vCPUs" in out


def _ten_shards(world) -> None:
    """Shards 3-9 of 8 rows beside the world's three (4, 4 and 8 rows): ten in all."""
    for i in range(3, 10):
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((8, 64), dtype=np.float32))
        world.s3.put_object(Bucket=DATA_BUCKET, Key=f"inputs/digits/part-{i:05d}.npy", Body=buffer.getvalue())


def test_many_shards_are_estimated_from_a_sample_and_said_so(cli_stack, tmp_path):
    _ten_shards(cli_stack)
    session = Session(None, REGION)
    made = plan.make_plan(str(spec_file(tmp_path)), session.client, cli_stack.settings)
    # shards 0, 5 and 9 sampled: 4, 8 and 8 rows -> 20/3 per shard x 10 shards
    assert (made.inputs.shards, made.inputs.sampled, made.inputs.exact, made.inputs.rows) == (
        10,
        3,
        False,
        67,
    )
    assert "67 predictions estimated from 3 sampled shards of 10" in made.assumptions[0]


def test_a_plan_leaves_nothing_in_the_temporary_folder(cli_stack, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    made = plan.make_plan(str(spec_file(tmp_path)), Session(None, REGION).client, cli_stack.settings)
    assert made.measurement.rows > 0  # the model was downloaded and measured there
    assert list(scratch.iterdir()) == []


def test_the_shard_read_is_the_fastest_of_the_sampled_shards_downloads(cli_stack, tmp_path):
    import time

    _ten_shards(cli_stack)

    class FirstShardSlow:
        """The S3 client, whose download of the first shard is held up 2 s (a neighbour's moment)."""

        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def get_object(self, **kwargs):
            if kwargs["Key"].endswith("part-00000.npy"):
                time.sleep(2.0)
            return self._inner.get_object(**kwargs)

    session = Session(None, REGION)

    def client(service, region=None):
        made = session.client(service, region)
        return FirstShardSlow(made) if service == "s3" else made

    made = plan.make_plan(str(spec_file(tmp_path)), client, cli_stack.settings)
    assert made.inputs.sampled == 3
    assert made.measurement.shard_read_seconds < 2.0  # shards 5 and 9 were read without the delay


def test_write_estimate_puts_the_best_row_into_the_spec_file(cli_stack, tmp_path):
    path = spec_file(tmp_path)
    assert cli.main(["plan", str(path), "--region", REGION, "--write-estimate"]) == 0
    written = json.loads(path.read_text())
    estimate = written.pop("estimate")
    assert written == sample_spec()
    assert estimate["instance_type"] in ("c5.xlarge", "c5.2xlarge")
    assert estimate["target_capacity"] == 4 and estimate["predictions"] == 12
    assert estimate["seconds"] > 0 and estimate["total_usd"] > 0 and estimate["predictions_per_second"] > 0
    from spotfill_control.spec import BackfillSpec

    assert BackfillSpec.model_validate(json.loads(path.read_text())).estimate is not None
    nothing_requested()


def test_suggest_adds_other_types_of_the_same_kind(cli_stack, tmp_path, capsys):
    assert cli.main(["plan", str(spec_file(tmp_path)), "--region", REGION, "--json", "--suggest"]) == 0
    rows = json.loads(capsys.readouterr().out)["projections"]
    suggested = [r for r in rows if not r["in_spec"]]
    assert 1 <= len(suggested) <= plan.SUGGESTIONS
    assert all(r["gpus"] == 0 and r["vcpus"] >= 4 for r in suggested)
    nothing_requested()


def test_on_aws_throughput_scales_with_vcpus_and_on_the_local_cloud_with_this_machine():
    from spotfill_control.spec import BackfillSpec

    from spotfill.localcloud.pricing import emulated_facts

    spec = BackfillSpec.model_validate(sample_spec(fleet__target_capacity=2))
    inputs = plan.Inputs(shards=100, rows=1_000_000, sampled=3, exact=False)
    measured = plan.Measurement("tensorflow", "fp32", "CPU", 2000, 8000.0, 2, 0.0, 5.0)
    facts = emulated_facts(["c5.xlarge", "c5.2xlarge"])
    prices = {name: plan.SpotPrices(0.1, 0.1, 0.1) for name in facts}

    def rates(local: bool) -> dict[str, float]:
        rows = plan.project(spec, inputs, measured, facts, prices, set(facts), local=local)
        return {r.instance_type: r.steady_predictions_per_second for r in rows}

    aws_rates, local_rates = rates(False), rates(True)
    # AWS: 4,000 rows/s per vCPU x 4 vCPUs x 2 instances, or x 8 vCPUs x 1 instance (2 units: one c5.2xlarge)
    assert aws_rates["c5.xlarge"] == pytest.approx(32_000) and aws_rates["c5.2xlarge"] == pytest.approx(
        32_000
    )
    # local: the workers share this machine, whatever the emulated types and counts
    assert local_rates == {"c5.xlarge": pytest.approx(8000.0), "c5.2xlarge": pytest.approx(8000.0)}


def test_plan_finish_by_shows_the_fleet_it_starts_with_and_the_projected_cost(cli_stack, tmp_path, capsys):
    path = spec_file(tmp_path)
    assert cli.main(["plan", str(path), "--region", REGION, "--json", "--finish-by", "PT30M"]) == 0
    deadline = json.loads(capsys.readouterr().out)["deadline"]
    # 12 predictions need one unit for half an hour; the ceiling is the spec's target capacity
    assert (deadline["units"], deadline["ceiling"]) == (1, 4)
    assert deadline["projected_usd"] > 0
    assert (
        deadline["sentence"].startswith("deadline ") and "starts with 1 capacity unit" in deadline["sentence"]
    )
    nothing_requested()


def test_plan_refuses_a_deadline_no_capacity_can_meet_naming_the_earliest_one(cli_stack, tmp_path, capsys):
    # a minute is shorter than an instance's boot and two polls (60 + 2 x 5 s): no capacity is enough
    path = spec_file(tmp_path)
    assert cli.main(["plan", str(path), "--region", REGION, "--finish-by", "PT1M"]) != 0
    err = capsys.readouterr().err
    assert "needs more time than is left" in err and "the earliest deadline at 4 capacity units is" in err


# --- the fleet's start as it happens (spotfill.ramp) ------------------------------------------------------


def test_workers_on_their_own_instances_add_capacity_as_each_finishes_its_start():
    from spotfill import ramp

    # given two instances whose workers launch 10 s apart, each starting for 5 s, then doing 100 rows/s
    workers = ramp.Workers(launches=(0.0, 10.0), start_seconds=5.0, worker_rate=100.0)

    # when they make 3,000 predictions (shards of 100 rows)
    done = ramp.processing(workers, 3000, shard_rows=100)

    # then 100 x (T - 5) + 100 x (T - 15) = 3,000: T = 25 s, the second ready at 15 s
    assert done.seconds == pytest.approx(25.0)
    assert done.ready_at == (pytest.approx(5.0), pytest.approx(15.0))
    assert not done.tail


def test_workers_sharing_a_machine_start_on_one_core_each_beside_the_local_cloud():
    from spotfill import ramp

    # given a 2-core machine predicting 1,000 rows/s; workers launched at 0 and 2 s, each starting on 3 s of a
    # core; the local cloud half a core while any start
    workers = ramp.Workers(
        launches=(0.0, 2.0), start_seconds=3.0, worker_rate=1000.0, shared_cores=2, cloud_cores=0.5
    )

    done = ramp.processing(workers, 6000, shard_rows=100)

    # 0-2 s: worker 0 starts alone on a core (the 1.5 left beside the cloud allow it one): 1 s of its start
    # left. 2-3.33 s: both start on the 1.5 cores left, 0.75 each: worker 0 ready at 3.33, worker 1 has 2 s
    # left. 3.33-6 s: worker 1 starts on 0.75 of a core, the cloud keeps its half; worker 0 predicts on the
    # 0.75 left, 3/8 of the machine: 1,000 rows. 6 s on: both predict at 1,000 rows/s: 5,000 rows in 5 s.
    # T = 11 s.
    assert done.ready_at == (pytest.approx(2 + 1 / 0.75), pytest.approx(6.0))
    assert done.seconds == pytest.approx(11.0)
    # the cloud's share is the same however many start: it takes what it asks for, not a busy process's share
    more = ramp.Workers(
        launches=(0.0,) * 5, start_seconds=3.0, worker_rate=1000.0, shared_cores=2, cloud_cores=0.5
    )
    assert ramp.processing(more, 6000, shard_rows=100).ready_at == (pytest.approx(3.0 * 5 / 1.5),) * 5
    with pytest.raises(ValueError, match=r"cloud_cores 2 must be at least 0 and less than the shared cores"):
        ramp.Workers(launches=(0.0,), start_seconds=1.0, worker_rate=1.0, shared_cores=2, cloud_cores=2)


def test_a_late_workers_held_first_shard_ends_the_run_after_the_rest_of_the_work():
    from spotfill import ramp

    # given a worker that starts at 10 s while the first has nearly finished: 1,100 rows left at 200 rows/s
    workers = ramp.Workers(launches=(0.0, 10.0), start_seconds=0.0, worker_rate=100.0)

    done = ramp.processing(workers, 1100, shard_rows=500)

    # then the work runs out at 10.5 s, but the shard the late worker took at 10 s takes it 5 s
    assert done.seconds == pytest.approx(15.0) and done.tail


def test_later_instances_start_at_the_poll_after_they_register():
    from spotfill import ramp

    # local: instances 0.5 s apart, seen at once, 2 s poll cycles: the rest start at the next cycle
    assert ramp.launch_offsets(4, 0.5, 2.0) == (0.0, 2.0, 2.0, 2.0)
    assert ramp.launch_offsets(6, 0.5, 1.0) == (0.0, 1.0, 1.0, 2.0, 2.0, 3.0)
    # AWS: instances 5 s apart, the first seen 30 s after it registered (half a 60 s poll): seven start
    # together, the eighth registers 35 s after the first and starts a poll later
    assert ramp.launch_offsets(8, 5.0, 60.0, seen_after=30.0) == (0.0,) * 7 + (60.0,)


def test_bad_workers_are_refused_with_a_sentence():
    from spotfill import ramp

    with pytest.raises(ValueError, match="no launches"):
        ramp.Workers(launches=(), start_seconds=1.0, worker_rate=1.0)
    with pytest.raises(ValueError, match="worker_rate 0 must be above 0"):
        ramp.Workers(launches=(0.0,), start_seconds=1.0, worker_rate=0)
    with pytest.raises(ValueError, match="instances 0 must be at least 1"):
        ramp.launch_offsets(0, 1.0, 1.0)


def test_the_local_clouds_boot_figures_are_its_options_defaults():
    from spotfill.localcloud.cloud import LocalCloudOptions

    assert plan.LOCAL_OVERHEADS["boot"] == LocalCloudOptions().boot_delay
    assert LocalCloudOptions().boot_interval == plan.LOCAL_BOOT_INTERVAL


def _ramped_spec(capacity: int, poll: int = 1):
    from spotfill_control.spec import BackfillSpec

    return BackfillSpec.model_validate(
        sample_spec(
            fleet__target_capacity=capacity,
            fleet__instance_types=["c5.xlarge"],
            limits__poll_interval_seconds=poll,
        )
    )


def test_a_local_plan_integrates_the_workers_ramp_into_duration_cost_and_rate():
    from spotfill.localcloud.pricing import emulated_facts

    # given 3 local instances (1 s polls, 1.5 s cycles: the first poll sees a registration 0.75 s after it,
    # so instances 0 and 1 start together and instance 2, registered 1 s after instance 0, a cycle later), a
    # 2-core machine predicting 1,000 rows/s, a worker start of 3 s on a core, the local cloud 0.3 of a core
    # while workers start, and no per-shard round trips
    spec = _ramped_spec(3)
    inputs = plan.Inputs(shards=60, rows=6000, sampled=3, exact=False)
    measured = plan.Measurement("tensorflow", "fp32", "CPU", 100, 1000.0, 2, 0.0, 3.0)
    facts = emulated_facts(["c5.xlarge"])
    prices = {"c5.xlarge": plan.SpotPrices(0.36, 0.36, 0.36)}

    # when it is projected
    (row,) = plan.project(spec, inputs, measured, facts, prices, set(facts), local=True)

    # then: 0-1.5 s, two workers share the 1.7 cores the cloud (0.3 of a core) leaves, 0.85 each: 1.725 s of
    # start left each. 1.5 s on: three start on 1.7/3 of a core each: two are ready 1.725 x 3/1.7 s later, the
    # third has 1.275 s left, which takes it 2.25 s more, while the two predict on the 1.7 - 1.7/3 cores left,
    # 1.7/3 of the machine: 1,275 rows. Then all predict at 1,000 rows/s, the 4,725 rows left in 4.725 s; the
    # last output seen half a 1.5 s cycle later. The instances live boot 2 s + a poll + that + teardown 0.2 s;
    # the run adds validate and prepare 0.6 s and the fleet request 1.1 s.
    assert plan.LOCAL_CLOUD_CORES == 0.3 and plan.LOCAL_OVERHEADS["monitor_per_poll"] == 0.5
    assert (plan.LOCAL_OVERHEADS["validate_and_prepare"], plan.LOCAL_OVERHEADS["fleet_request"]) == (0.6, 1.1)
    assert plan.LOCAL_OVERHEADS["teardown"] == 0.2
    assert row.worker_launches == (0.0, 0.0, 1.5)
    ready = 1.5 + 1.725 * 3 / 1.7
    processing = ready + 2.25 + 4.725 + 0.75
    assert row.processing_seconds == pytest.approx(processing)
    assert row.seconds == pytest.approx(0.6 + 1.1 + 2.0 + 1.0 + processing + 0.2)
    assert row.total_usd == pytest.approx(0.36 * 3 * (2.0 + 1.0 + processing + 0.2) / 3600)
    # the rate shown is the run's average, worker start included; the steady one is the machine's
    assert row.predictions_per_second == pytest.approx(6000 / processing)
    assert row.steady_predictions_per_second == pytest.approx(1000.0)


def test_an_aws_plan_starts_the_instances_registered_after_the_first_poll_a_poll_later():
    from spotfill.localcloud.pricing import emulated_facts

    # given 8 c5.xlarge (4 vCPUs at 25 rows/s each: 100 rows/s a worker), a 60 s poll, a worker start of 10 s
    # after its 60 s image pull, and no per-shard round trips
    spec = _ramped_spec(8, poll=60)
    inputs = plan.Inputs(shards=500, rows=50_000, sampled=3, exact=False)
    measured = plan.Measurement("tensorflow", "fp32", "CPU", 100, 50.0, 2, 0.0, 10.0)
    facts = emulated_facts(["c5.xlarge"])
    prices = {"c5.xlarge": plan.SpotPrices(0.36, 0.36, 0.36)}

    (row,) = plan.project(spec, inputs, measured, facts, prices, set(facts), local=False)

    # then instances registering 5 s apart, the first seen 30 s after it registered: seven start at the
    # first poll and the eighth (35 s after the first) a poll later. Seven are ready at 70 s and make
    # 42,000 rows by 130 s, when the eighth is ready; the 8,000 left take 10 s at 800 rows/s: 140 s, seen
    # half a poll later. The instances live boot and register 150 s + a poll + that + teardown 60 s; the
    # run adds validate and prepare 15 s.
    assert row.instances == 8 and row.worker_launches == (0.0,) * 7 + (60.0,)
    processing = 140.0 + 30.0
    lifetime = 150.0 + 60.0 + processing + 60.0
    assert row.processing_seconds == pytest.approx(processing)
    assert row.seconds == pytest.approx(15.0 + lifetime)
    assert row.total_usd == pytest.approx(0.36 * 8 * lifetime / 3600)
    assert row.predictions_per_second == pytest.approx(50_000 / processing)
    assert row.steady_predictions_per_second == pytest.approx(800.0)


def test_the_tables_predictions_per_second_is_predictions_over_the_processing_it_projects(
    cli_stack, tmp_path, capsys
):
    assert cli.main(["plan", str(spec_file(tmp_path)), "--region", REGION, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    for row in document["projections"]:
        assert row["predictions_per_second"] == pytest.approx(12 / row["processing_seconds"])
        assert row["steady_predictions_per_second"] > row["predictions_per_second"]
    best = document["projections"][0]
    assert document["estimate"]["predictions_per_second"] == pytest.approx(
        best["predictions_per_second"], abs=1e-3
    )
    assert any("the run's average" in line for line in document["assumptions"])


@pytest.mark.parametrize("local", [False, True], ids=["aws", "local"])
def test_more_instances_shorten_the_run_no_more_than_their_start_allows(local):
    from spotfill.localcloud.pricing import emulated_facts

    # given 2,000 shards of a million rows, a 10 s worker start and 8,000 rows/s measured on 2 CPUs
    inputs = plan.Inputs(shards=2000, rows=1_000_000, sampled=3, exact=False)
    measured = plan.Measurement("tensorflow", "fp32", "CPU", 2000, 8000.0, 2, 0.0, 10.0)
    facts = emulated_facts(["c5.xlarge"])
    prices = {"c5.xlarge": plan.SpotPrices(0.1, 0.1, 0.1)}

    def processing(instances: int) -> tuple[float, plan.Projection]:
        spec = _ramped_spec(instances, poll=5 if local else 60)
        (row,) = plan.project(spec, inputs, measured, facts, prices, set(facts), local=local)
        seen = spec.limits.poll_interval_seconds + (plan.LOCAL_OVERHEADS["monitor_per_poll"] if local else 0)
        return row.processing_seconds - seen / 2, row

    one, _ = processing(1)
    for n in (2, 3, 4, 8):
        seconds, row = processing(n)
        start = measured.worker_start_seconds + (0 if local else plan.AWS_OVERHEADS["image_pull"])
        together = start + inputs.rows / row.steady_predictions_per_second  # all workers at t = 0
        # then the run is never shorter than all workers starting at once, and strictly longer when some
        # start later (their capacity arrives late); n instances never make it n times faster
        if row.worker_launches[-1] > 0:
            assert seconds > together
        else:  # the first poll saw them all: they start at once (locally, sharing the cores)
            assert n < 8 and seconds >= together - 1e-9
        assert one / seconds < n
    assert processing(8)[1].worker_launches[-1] > 0


def test_a_fast_models_rate_is_timed_over_a_second_not_a_few_rounds():
    # given a shard that takes 4 ms to decode and predict (the digits CNN's 2,000 rows), on a fake clock
    now = [0.0]
    rounds = []

    def clock() -> float:
        return now[0]

    def predict_shard() -> int:
        rounds.append(1)
        now[0] += 0.004
        return 2000

    # when its rate is timed
    rate = plan.timed_rate(predict_shard, clock)

    # then the rounds went on until a second had passed (a few 4 ms rounds read whatever else the machine did
    # in those milliseconds), and the rate is rows over that time
    assert len(rounds) == 250
    assert rate == pytest.approx(500_000)


def test_a_slow_models_rate_is_timed_on_one_round():
    now = [0.0]

    def predict_shard() -> int:
        now[0] += 1.5
        return 64

    assert plan.timed_rate(predict_shard, lambda: now[0]) == pytest.approx(64 / 1.5)


def test_a_start_that_keeps_two_cores_busy_takes_twice_as_long_when_it_gets_one():
    from spotfill import ramp

    # given a 2-core machine predicting 1,000 rows/s and two workers launched together, each start 3 s alone
    # on 2 cores (6 CPU-seconds: a large model's runtime calibration), and no neighbours
    def done(start_cores: float) -> ramp.Processing:
        workers = ramp.Workers(
            launches=(0.0, 0.0),
            start_seconds=3.0,
            worker_rate=1000.0,
            shared_cores=2,
            start_cores=start_cores,
        )
        return ramp.processing(workers, 6000, shard_rows=100)

    # then each gets one core of the two, so its 6 CPU-seconds take 6 s (a one-core start would take 3 s),
    # and the 6,000 rows 6 s more
    assert done(2.0).ready_at == (pytest.approx(6.0), pytest.approx(6.0))
    assert done(2.0).seconds == pytest.approx(12.0)
    assert done(1.0).seconds == pytest.approx(9.0)
    with pytest.raises(ValueError, match=r"start_cores 0\.5 must be at least 1"):
        ramp.Workers(launches=(0.0,), start_seconds=1.0, worker_rate=1.0, start_cores=0.5)


def test_a_starts_cores_are_its_childs_cpu_over_its_seconds_between_one_and_the_machines(monkeypatch):
    import os
    import subprocess
    import sys

    def child(code: str, seconds: float):
        def start_seconds(*_):  # the worker's start's arguments, and where it writes what its imports touched
            subprocess.run([sys.executable, "-c", code], check=True)
            return seconds

        return start_seconds

    # a start that waits (no CPU to speak of) counts one core
    monkeypatch.setattr(plan, "worker_start_seconds", child("import time; time.sleep(0.2)", 0.2))
    waited = plan.worker_start(None, None, None, 1)
    assert (waited.seconds, waited.cores) == (0.2, 1.0)

    # a start whose child computed far longer than the seconds it is said to have taken counts every core
    monkeypatch.setattr(plan, "worker_start_seconds", child("sum(range(3_000_000))", 0.001))
    computed = plan.worker_start(None, None, None, 1)
    assert (computed.seconds, computed.cores) == (0.001, float(os.cpu_count() or 1))

    # the memory a start touched is its child's minor page faults, after what its imports touched where the
    # child says (the worker's start writes its faults and kernel CPU once imported): a child that writes 64
    # MiB touched at least that, one that only waits far less
    def writes(imports_faults: int | None):
        def start_seconds(spec, model_path, rows, batch_size, imports):
            code = "b = bytearray(64 << 20); b[::4096] = b'x' * 16384"
            if imports_faults is not None:
                code += f"; open({str(imports)!r}, 'w').write('{imports_faults} 0.0')"
            subprocess.run([sys.executable, "-c", code], check=True)
            return 1.0

        return start_seconds

    monkeypatch.setattr(plan, "worker_start_seconds", writes(None))
    wrote = plan.worker_start(None, None, None, 1)
    assert wrote.memory_gib >= 64 / 1024
    assert wrote.memory_system_seconds > 0  # its page faults are kernel CPU
    assert waited.memory_gib < 64 / 1024
    # the faults the child counted by its imports are not the start's own
    monkeypatch.setattr(plan, "worker_start_seconds", writes(10_000))
    imported = plan.worker_start(None, None, None, 1)
    assert imported.memory_gib < wrote.memory_gib
    assert imported.memory_gib >= 64 / 1024 - 10_000 * 4096 / 2**30 - 0.05


def test_a_short_start_is_timed_twice_and_the_faster_kept_a_long_one_once():
    def starts(*seconds: float):
        measured = iter(seconds)
        calls: list[float] = []

        def measure_once() -> plan.WorkerStart:
            calls.append(next(measured))
            return plan.WorkerStart(calls[-1], 1.0)

        return measure_once, calls

    measure_once, calls = starts(5.6, 4.7)
    assert plan.timed_start(measure_once).seconds == 4.7 and calls == [5.6, 4.7]
    measure_once, calls = starts(4.7, 5.6)
    assert plan.timed_start(measure_once).seconds == 4.7 and calls == [4.7, 5.6]
    measure_once, calls = starts(plan.REPEATED_START_SECONDS + 2, 1.0)
    assert plan.timed_start(measure_once).seconds == plan.REPEATED_START_SECONDS + 2 and len(calls) == 1


def test_a_local_start_is_charged_its_touched_memory_at_this_machines_fresh_memory_rate():
    from spotfill.localcloud.pricing import emulated_facts

    # given a start measured at 10 s on one core, touching 4 GiB after its imports with 1 s in the kernel
    def measured(fresh_rate: float, cores: float = 1.0) -> plan.Measurement:
        return plan.Measurement(
            "tensorflow",
            "fp32",
            "CPU",
            100,
            1000.0,
            2,
            0.0,
            10.0,
            worker_start_cores=cores,
            worker_start_memory_system_seconds=1.0,
            worker_start_memory_gib=4.0,
            fresh_memory_seconds_per_gib=fresh_rate,
        )

    # when fresh memory costs 2 CPU-seconds per GiB here, the start that found memory just freed (1 s for 4
    # GiB) is charged the 8 s its memory costs a run's worker: 17 CPU-seconds, on its one core 17 s
    assert measured(2.0).local_worker_start_seconds == pytest.approx(17.0)
    # where fresh memory costs less than the kernel time the start had, the start is as measured
    assert measured(0.2).local_worker_start_seconds == pytest.approx(10.0)
    assert measured(0.0).local_worker_start_seconds == pytest.approx(10.0)
    # a start on 2 cores keeps them: its CPU grows, its seconds by the CPU over its cores
    two = measured(2.0, cores=2.0)
    assert two.local_worker_start_seconds == pytest.approx(10.0 * (20.0 + 7.0) / 20.0)

    # and a local projection starts its workers on the charged start (AWS keeps the start as measured)
    spec = _ramped_spec(2)
    inputs = plan.Inputs(shards=60, rows=6000, sampled=3, exact=False)
    facts = emulated_facts(["c5.xlarge"])
    prices = {"c5.xlarge": plan.SpotPrices(0.36, 0.36, 0.36)}
    (cold,) = plan.project(spec, inputs, measured(2.0), facts, prices, set(facts), local=True)
    (warm,) = plan.project(spec, inputs, measured(0.0), facts, prices, set(facts), local=True)
    assert cold.processing_seconds > warm.processing_seconds + 7.0
    (aws_cold,) = plan.project(spec, inputs, measured(2.0), facts, prices, set(facts), local=False)
    (aws_warm,) = plan.project(spec, inputs, measured(0.0), facts, prices, set(facts), local=False)
    assert aws_cold.processing_seconds == pytest.approx(aws_warm.processing_seconds)


def test_fresh_memory_is_the_costliest_chunks_kernel_cpu_per_gib(monkeypatch):
    import subprocess
    import sys

    # the child writes one line per chunk, each at least 0 (kernel CPU seconds per GiB)
    lines = subprocess.run(
        [sys.executable, "-c", plan._FRESH_MEMORY, "4", "3"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(lines) == 3 and all(float(line) >= 0 for line in lines)

    # the plan takes the costliest chunk: the first ones may reuse memory freed a moment ago
    monkeypatch.setattr(plan, "_FRESH_MEMORY", "print(0.5); print(2.0); print(1.0)")
    assert plan.fresh_memory_seconds_per_gib() == 2.0
    # a child that fails says nothing: no charge
    monkeypatch.setattr(plan, "_FRESH_MEMORY", "print(2.0); raise SystemExit(3)")
    assert plan.fresh_memory_seconds_per_gib() == 0.0
