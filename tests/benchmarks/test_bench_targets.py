"""make bench judges the issue's targets from the figures it measured (no measuring here)."""

from __future__ import annotations

from bench.run import targets


def case(worker: float, raw_tensorflow: float, raw_best: float, diff: float = 0.0) -> dict:
    return {
        "worker": worker,
        "worker_over_raw_tensorflow": worker / raw_tensorflow,
        "worker_over_raw_best": worker / raw_best,
        "outputs_max_abs_diff": diff,
    }


def by_target(result: dict) -> dict:
    return {(c["target"], c["case"]): c for c in result["checks"]}


def test_every_target_met_passes_with_its_measured_value():
    # given the three cases, each at or above its targets, outputs within tolerance
    cases = {
        "mobilenetv2": case(worker=200.0, raw_tensorflow=110.0, raw_best=210.0),
        "mobilenetv2_photo": case(worker=170.0, raw_tensorflow=110.0, raw_best=180.0, diff=1e-6),
        "digits_cnn": case(worker=120_000.0, raw_tensorflow=100_000.0, raw_best=130_000.0),
    }

    # when judged
    result = targets(cases)

    # then each check passes, with the ratio it was judged on
    checks = by_target(result)
    assert result["all_pass"] is True
    assert checks[("worker / raw TensorFlow", "mobilenetv2")]["measured"] == 200.0 / 110.0
    assert checks[("worker 640x480 / 224x224", "mobilenetv2_photo")]["measured"] == 170.0 / 200.0
    assert len(result["checks"]) == 2 + 3 + 1 + 3


def test_a_missed_target_fails_and_a_case_not_run_is_not_judged():
    # given only (a), below raw TensorFlow x 1.6 and with outputs off by more than 1e-5
    cases = {"mobilenetv2": case(worker=150.0, raw_tensorflow=110.0, raw_best=160.0, diff=2e-5)}

    # when judged
    result = targets(cases)

    # then those checks fail, the others are left unjudged, and the run does not pass
    checks = by_target(result)
    assert checks[("worker / raw TensorFlow", "mobilenetv2")]["pass"] is False
    assert checks[("worker / raw best", "mobilenetv2")]["pass"] is True
    assert checks[("outputs vs model.predict", "mobilenetv2")]["pass"] is False
    assert checks[("worker / raw TensorFlow", "digits_cnn")] == {
        "target": "worker / raw TensorFlow",
        "case": "digits_cnn",
        "measured": None,
        "at_least": 1.0,
        "pass": None,
    }
    assert checks[("worker 640x480 / 224x224", "mobilenetv2_photo")]["pass"] is None
    assert result["all_pass"] is False


def aws_case(worker: float, raw_best: float, pipeline: float, diff: float = 0.0) -> dict:
    return {
        "worker_over_raw_best": worker / raw_best,
        "worker_over_pipeline": worker / pipeline,
        "outputs_max_abs_diff": diff,
    }


def test_the_aws_setting_is_judged_against_the_pipeline_ceiling_and_raw_best_on_a_and_b():
    # given (a) at 0.95 of its pipeline ceiling and 0.85 of raw best, (b) at 0.6 of its pipeline ceiling
    shared = {"mobilenetv2": case(worker=200.0, raw_tensorflow=110.0, raw_best=210.0)}
    aws = {
        "mobilenetv2": aws_case(worker=170.0, raw_best=200.0, pipeline=170.0 / 0.95),
        "digits_cnn": aws_case(worker=60.0, raw_best=120.0, pipeline=100.0),
    }

    # when judged
    result = targets(shared, aws)

    # then the aws checks carry their setting beside the shared ones, and (b) misses both of its own
    checks = {(c["target"], c["case"], c.get("setting")): c for c in result["checks"]}
    assert checks[("worker / pipeline ceiling", "mobilenetv2", "aws")]["pass"] is True
    assert checks[("worker / pipeline ceiling", "mobilenetv2", "aws")]["at_least"] == 0.9
    assert checks[("worker / raw best", "mobilenetv2", "aws")]["measured"] == 170.0 / 200.0
    assert checks[("worker / raw best", "mobilenetv2", "aws")]["at_least"] == 0.8
    assert checks[("worker / pipeline ceiling", "digits_cnn", "aws")]["pass"] is False
    assert checks[("worker / raw best", "digits_cnn", "aws")]["pass"] is False
    assert checks[("outputs vs model.predict", "digits_cnn", "aws")]["pass"] is True
    assert checks[("worker / raw best", "mobilenetv2", None)]["at_least"] == 0.9  # the shared one, kept
    assert result["all_pass"] is False
