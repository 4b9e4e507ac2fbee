"""The scale rehearsal (`make bench-scale`) at a size make test affords: the real handlers, real boto3,
moto's server in its own process, twenty thousand shards in four parts, 120 stand-in instances on moto's
backends (the million-shard run's setting; one small run below keeps the stand-ins on boto3). Exactness only
(outputs, counts, report, nothing left behind), never time."""

from __future__ import annotations

from collections import Counter

import pytest

from bench import scale, scale_bounded, scale_measure, scale_report

SHARDS = 20_000
INSTANCES = 120
POISONED = 50
INTERRUPTIONS = 6
# The shard list in parts of PART_SHARDS (`--part-size`), so PrepareRun and the Monitor's verification go part
# by part as they do at 10M shards with 50,000-shard parts.
PART_SHARDS = 5_000


@pytest.fixture(scope="module")
def rehearsal() -> dict:
    options = scale.Options(
        shards=SHARDS,
        instances=INSTANCES,
        poisoned=POISONED,
        interruptions=INTERRUPTIONS,
        shards_per_poll=4_000,
        part_size=PART_SHARDS,
        results=None,
        quiet=True,
        stand_in_calls="backend",
    )
    return scale.rehearse(options)


def test_every_shard_has_exactly_one_output_and_no_poisoned_shard_has_one(rehearsal):
    checks = rehearsal["checks"]
    assert checks["outputs_expected"] == SHARDS - POISONED
    assert checks["outputs_listed"] == SHARDS - POISONED
    assert checks["every_shard_one_output"] is True
    assert checks["no_output_for_poisoned"] is True


def test_the_report_is_written_and_counts_the_truth(rehearsal):
    checks = rehearsal["checks"]
    assert checks["report_written"] is True
    assert checks["report_succeeded"] == SHARDS - POISONED
    assert checks["report_failed"] == POISONED
    assert checks["report_status"] == "completed_with_failures"
    assert checks["report_counts_true"] is True


def test_nothing_is_left_behind(rehearsal):
    checks = rehearsal["checks"]
    assert checks["queues_left"] == []
    assert checks["cluster_left"] == []
    assert checks["instances_left"] == 0
    assert checks["nothing_left_behind"] is True
    assert checks["passed"] is True


def test_the_fleet_was_interrupted_mid_shard_and_poisoned_shards_failed_until_dead_lettered(rehearsal):
    fleet = rehearsal["fleet"]
    assert fleet["instances_booted"] >= INSTANCES
    assert fleet["interrupted_instances"] == INTERRUPTIONS
    assert fleet["messages_lost_to_interruptions"] > 0
    # each poisoned shard failed at least once (an error record each time), and never had an output
    assert fleet["error_records"] == fleet["failures"] >= POISONED


def test_every_stage_ran_in_the_state_machines_order_and_was_measured(rehearsal):
    stages = rehearsal["stages"]
    assert list(stages) == list(scale_measure.STAGES)
    for name in ("Validate", "RequestFleet", "ScaleService", "Teardown", "Report"):
        assert stages[name]["invocations"] == 1, name
    assert stages["Monitor"]["invocations"] == rehearsal["size"]["monitor_polls"] >= 2
    for name, stage in stages.items():
        worst = stage["worst_invocation"]
        assert sum(worst["aws_calls"].values()) > 0, name
        assert worst["cpu_s"] >= 0 and worst["peak_mib"] >= 0, name
        assert stage["function_memory_mb"] >= 128 and stage["function_timeout_s"] >= 3, name
    # the Monitor's busiest poll is held against each throttle
    assert set(rehearsal["monitor_throttles"]) == {"ec2", "ecs", "s3_put", "s3_get"}


def test_prepare_run_is_called_again_with_its_own_result_while_it_returns_phase_preparing():
    # given a PrepareRun that needs three invocations, each carrying its cursor forward
    events = []

    def call(stage: str, event: dict) -> dict:
        events.append((stage, event["run"]["cursor"]))
        cursor = event["run"]["cursor"] + 1
        return {"cursor": cursor, "phase": "preparing" if cursor < 3 else "prepared"}

    # when the rehearsal prepares the run
    run = scale.prepare(call, {"cursor": 0, "phase": "validated"})

    # then each call got the run the previous one returned, and the last result is the prepared run
    assert events == [("PrepareRun", 0), ("PrepareRun", 1), ("PrepareRun", 2)]
    assert run == {"cursor": 3, "phase": "prepared"}


def test_a_prepare_run_that_never_finishes_stops_the_rehearsal_with_a_sentence(monkeypatch):
    monkeypatch.setattr(scale, "MAX_PREPARE_CALLS", 5)
    with pytest.raises(scale.RehearsalError, match="still returned phase 'preparing' after 5 calls"):
        scale.prepare(lambda stage, event: {"phase": "preparing"}, {"phase": "validated"})


def test_a_two_size_fit_separates_the_fixed_cost_from_the_per_shard_cost():
    # given a stage that cost 1 s CPU and 30 MiB at 1,000 shards, 1.9 s and 39 MiB at 10,000
    big = scale_measure.Invocation(2.0, 1.9, 39 * 2**20, Counter({"s3.ListObjectsV2": 11}))
    small = {"wall_s": 1.1, "cpu_s": 1.0, "peak_mib": 30.0, "aws_calls": {"s3.ListObjectsV2": 2}}

    # when extrapolated to a million shards
    at_million = scale_report.fit(big, 10_000, small, 1_000)(1_000_000)

    # then it is 0.9 s + 0.0001 s a shard, 29 MiB + 1 KiB a shard, 1 call + 1 a thousand shards
    assert at_million.cpu_s == pytest.approx(0.9 + 100.0)
    assert at_million.peak_bytes == pytest.approx(29 * 2**20 + 1_000_000 * 2**20 / 1_000, rel=1e-6)
    assert at_million.calls["s3.ListObjectsV2"] == 1_001


def test_without_a_calibration_the_extrapolation_is_proportional():
    measured = scale_measure.Invocation(2.0, 1.0, 2**20, Counter({"sqs.SendMessageBatch": 100}))
    at_ten_times = scale_report.fit(measured, 1_000, None, None)(10_000)
    assert (at_ten_times.cpu_s, at_ten_times.peak_bytes) == (10.0, 10 * 2**20)
    assert at_ten_times.calls["sqs.SendMessageBatch"] == 1_000


@pytest.mark.parametrize(
    ("arguments", "sentence"),
    [
        (["--shards", "0"], "--shards must be at least 1, not 0"),
        (["--poisoned", "-1"], "--poisoned must not be negative, not -1"),
        (["--shards", "10", "--poisoned", "10"], "--poisoned (10) must be fewer than --shards (10)"),
        (["--shards-per-poll", "0"], "--shards-per-poll must be at least 1, not 0"),
        (["--part-size", "0"], "--part-size must be at least 1, not 0"),
        (
            ["--timeout", "Prepare=5"],
            "--timeout 'Prepare=5' must be STAGE=SECONDS with STAGE one of Validate",
        ),
        (["--timeout", "Monitor=-1"], "--timeout 'Monitor=-1' must be STAGE=SECONDS"),
        (
            ["--shards", "100", "--poisoned", "1", "--calibrate-shards", "100"],
            "--calibrate-shards (100) must be 0 (none) or fewer",
        ),
    ],
)
def test_bad_sizes_are_refused_with_a_sentence_naming_them(arguments, sentence, capsys):
    with pytest.raises(SystemExit):
        scale.main(arguments)
    assert sentence in capsys.readouterr().err


def test_a_run_of_several_parts_gives_every_shard_exactly_one_output_and_counts_the_truth(rehearsal):
    checks = rehearsal["checks"]
    assert rehearsal["size"]["part_size"] == PART_SHARDS
    assert checks["outputs_expected"] == checks["outputs_listed"] == SHARDS - POISONED
    assert checks["every_shard_one_output"] is True
    assert checks["no_output_for_poisoned"] is True
    assert (checks["report_succeeded"], checks["report_failed"]) == (SHARDS - POISONED, POISONED)
    assert checks["passed"] is True


def test_the_handlers_read_the_part_size_when_called_and_the_bench_puts_it_back(rehearsal):
    from spotfill_control import shards

    stages = rehearsal["stages"]
    prepared = [u for i in stages["PrepareRun"]["invocations_measured"] for u in i["units"]]
    # each part but the last of each PrepareRun invocation is a unit (the last runs into the call's tail)
    parts = SHARDS // PART_SHARDS
    assert [u["amount"] for u in prepared] == [PART_SHARDS] * (parts - stages["PrepareRun"]["invocations"])
    assert all(u["kind"] == "prepare_part" and u["aws_calls"] for u in prepared)
    verified = [
        u for i in stages["Monitor"]["invocations_measured"] for u in i["units"] if u["kind"] == "verify_part"
    ]
    assert len(verified) >= parts
    assert all(0 < u["amount"] <= PART_SHARDS for u in verified)
    assert shards.PART_SIZE == 50_000  # restored after the run


def test_a_run_of_several_parts_is_projected_per_part(rehearsal):
    bounded = rehearsal["bounded"]
    assert set(bounded["looping"]) == {"PrepareRun", "Monitor"}
    prepare = bounded["looping"]["PrepareRun"]
    assert prepare["measured_part_size"] == PART_SHARDS
    assert prepare["real_part_size"] == 50_000
    assert prepare["at"]["10_000_000"]["parts"] == 200
    assert prepare["at"]["10_000_000"]["invocations"] == -(-200 // prepare["parts_per_invocation"])
    assert "Monitor" in bounded["drain"]


def test_a_prepare_run_out_of_time_after_each_part_goes_on_from_its_checkpoint_and_loses_no_shard():
    # given a PrepareRun whose Lambda context starts with no time left: its budget is spent after the part
    # every call makes (600 shards in parts of 200)
    options = scale.Options(
        shards=600,
        instances=20,
        poisoned=6,
        interruptions=0,
        shards_per_poll=200,
        part_size=200,
        timeouts={"PrepareRun": 0},
        results=None,
        quiet=True,
    )

    # when the rehearsal runs
    result = scale.rehearse(options)

    # then each call prepared one part (the last call found the input at its end), and the run is exact
    prepare = result["stages"]["PrepareRun"]
    assert prepare["invocations"] == 4
    assert prepare["context_timeout_s"] == 0 and prepare["function_timeout_s"] == 900
    assert [u for i in prepare["invocations_measured"] for u in i["units"]] == []  # one part a call: no unit
    checks = result["checks"]
    assert checks["outputs_expected"] == checks["outputs_listed"] == 594
    assert (checks["report_succeeded"], checks["report_failed"]) == (594, 6)
    assert checks["every_shard_one_output"] is True and checks["passed"] is True


def _invocation(cpu_s: float, calls: int, units: list[dict], peak_mib: float = 10.0) -> dict:
    return {
        "wall_s": cpu_s,
        "cpu_s": cpu_s,
        "peak_mib": peak_mib,
        "aws_calls": {"x.Op": calls},
        "units": units,
    }


def _unit(kind: str, cpu_s: float, calls: int, amount: int) -> dict:
    return {"kind": kind, "amount": amount, "cpu_s": cpu_s, "wall_s": cpu_s, "aws_calls": {"x.Op": calls}}


def test_a_looping_stage_is_projected_per_part_not_as_one_call_over_every_shard():
    # given a PrepareRun (1,769 MB: one vCPU, 900 s) whose invocation prepared three 5,000-shard parts, each
    # 1 s of CPU and 100 calls (two counted as units, the third in the call's tail), plus 2 s and 50 calls
    prepare = _invocation(5.0, 350, [_unit("prepare_part", 1.0, 100, 5_000)] * 2, peak_mib=20.0)
    stages = {
        "PrepareRun": {
            "function_memory_mb": 1769,
            "function_timeout_s": 900,
            "invocations_measured": [prepare],
        }
    }

    # when projected with 5 ms a call
    figures = scale_bounded.bounded(stages, {"shards": 15_000, "part_size": 5_000}, 0.005, None)

    # then a 50,000-shard part takes 10 s CPU + 1,000 calls x 5 ms = 15 s; 30 parts start within 450 s
    looping = figures["looping"]["PrepareRun"]
    assert looping["part_lambda_seconds"] == pytest.approx(15.0)
    assert looping["part_fits_half_timeout"] is True
    assert looping["parts_per_invocation"] == 30
    assert (looping["fixed_cpu_s_here"], looping["fixed_calls_here"]) == (pytest.approx(2.0), 50)
    # 1M: 20 parts in one call (2 s + 50 x 5 ms + 20 x 15 s); 10M: 200 parts in 7 calls of at most 29 parts,
    # the most whose last still ends within the 450 s budget after the 2.25 s of fixed work
    assert looping["at"]["1_000_000"]["invocations"] == 1
    assert looping["at"]["1_000_000"]["worst_invocation_lambda_seconds"] == pytest.approx(302.2, abs=0.1)
    assert looping["at"]["10_000_000"]["parts_per_invocation"] == 29
    assert looping["at"]["10_000_000"]["invocations"] == 7
    assert looping["at"]["10_000_000"]["worst_invocation_lambda_seconds"] == pytest.approx(437.2, abs=0.1)
    assert looping["at"]["10_000_000"]["over_half_timeout"] is False
    assert looping["at"]["10_000_000"]["over_timeout"] is False
    # memory: the peak scaled by the part sizes (20 MiB x 10) + the runtime's 100 MiB
    assert looping["at"]["10_000_000"]["lambda_memory_mib"] == pytest.approx(300.0)


def test_dead_letters_are_projected_per_thousand_over_all_drains():
    # given Monitor drains of 100 and 900 dead letters, 1 s CPU and 200 calls in all, at 1,024 MB
    units = [_unit("drain", 0.2, 40, 100), _unit("drain", 0.8, 160, 900)]
    stages = {
        "Monitor": {"function_memory_mb": 1024, "function_timeout_s": 600, "invocations_measured": []},
        "Teardown": {"function_memory_mb": 512, "function_timeout_s": 600, "invocations_measured": []},
    }
    stages["Monitor"]["invocations_measured"] = [_invocation(2.0, 300, units)]
    stages["Teardown"]["invocations_measured"] = [_invocation(1.0, 20, [])]

    drain = scale_bounded.bounded(stages, {"shards": 1_000, "part_size": 1_000}, 0.005, None)["drain"]

    # then 1,000 dead letters take 1 s x 1769/1024 + 200 x 5 ms in the Monitor, 1 s x 1769/512 + 1 s in the
    # Teardown (which found none to drain: projected from the Monitor's drains), against 300 s and 540 s
    assert drain["Monitor"]["lambda_seconds_per_1000"] == pytest.approx(1769 / 1024 + 1.0, abs=0.01)
    assert drain["Teardown"]["measured_in"] == "Monitor"
    assert drain["Teardown"]["lambda_seconds_per_1000"] == pytest.approx(1769 / 512 + 1.0, abs=0.01)
    assert drain["Teardown"]["budget_seconds"] == 540


def test_stand_ins_through_boto3_take_every_shard_once_and_poisoned_ones_reach_the_dead_letters():
    # given the stand-ins making their receive, delete, visibility and conditional PutObject calls through
    # boto3 over HTTP, as a worker does (the large run above makes them on moto's backends), with
    # interruptions and poisoned shards
    options = scale.Options(
        shards=1_000,
        instances=20,
        poisoned=10,
        interruptions=2,
        shards_per_poll=300,
        results=None,
        quiet=True,
        stand_in_calls="boto3",
    )

    # when the rehearsal runs
    result = scale.rehearse(options)

    # then it is as exact as on the backends: one output a shard, none for the poisoned, the report's counts
    # true
    assert result["size"]["stand_in_calls"] == "boto3"
    checks = result["checks"]
    assert checks["outputs_expected"] == checks["outputs_listed"] == 990
    assert checks["every_shard_one_output"] is True and checks["no_output_for_poisoned"] is True
    assert (checks["report_succeeded"], checks["report_failed"]) == (990, 10)
    assert checks["passed"] is True
    fleet = result["fleet"]
    assert fleet["messages_lost_to_interruptions"] > 0
    assert fleet["error_records"] == fleet["failures"] >= 10


def test_a_backend_stand_in_put_is_refused_when_the_output_exists():
    from botocore.exceptions import ClientError
    from moto import mock_aws

    from bench.scale_world import BackendS3

    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="spotfill-data-scale")
        store = BackendS3()
        store.put_object(
            Bucket="spotfill-data-scale", Key="o/1", Body=b"a", IfNoneMatch="*", Metadata={"r": "7"}
        )
        with pytest.raises(ClientError, match="PreconditionFailed"):
            store.put_object(Bucket="spotfill-data-scale", Key="o/1", Body=b"b", IfNoneMatch="*")
        head = s3.head_object(Bucket="spotfill-data-scale", Key="o/1")
        assert head["Metadata"] == {"r": "7"} and head["ContentLength"] == 1


def test_a_looping_stage_is_flagged_at_a_size_by_its_projection_per_part_not_by_the_fit_of_one_call():
    # given a PrepareRun whose one measured call, scaled in proportion, is over half its Timeout at 10M, but
    # whose calls stop at their budget and stay under it by part; and a Report over half by its fit
    over = {"over_half_timeout": True, "over_half_memory": False}
    under = {"over_half_timeout": False, "over_half_memory": False}
    stages = {
        "PrepareRun": {"extrapolated": {"10_000_000": over}},
        "Report": {"extrapolated": {"10_000_000": {"over_half_timeout": False, "over_half_memory": True}}},
        "Teardown": {"extrapolated": {"10_000_000": under}},
    }
    bounded = {"looping": {"PrepareRun": {"at": {"10_000_000": under}}}}

    # then only the Report is flagged at 10M
    assert scale_report.flagged_at(stages, bounded, "10_000_000") == ["Report"]
    # and a looping stage over half by part is flagged
    bounded["looping"]["PrepareRun"]["at"]["10_000_000"] = over
    assert scale_report.flagged_at(stages, bounded, "10_000_000") == ["PrepareRun", "Report"]
