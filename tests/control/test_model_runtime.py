"""`model.runtime` and `model.precision`: checked against the fleet's kind at Validate, passed to the worker,
and what the workers recorded with their outputs summed up in the report."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from rich.console import Console
from spotfill_control.errors import InvalidSpecError
from spotfill_control.finishing import report, report_facts, report_text
from spotfill_control.fleet.cluster import worker_environment
from spotfill_control.run import RunState
from spotfill_control.spec import BackfillSpec

from spotfill.localcloud.pricing import emulated_facts

from .conftest import DATA_BUCKET, sample_spec, validated_run

NOW = datetime(2026, 11, 27, 7, 0, tzinfo=UTC)


def _run(**overrides: Any) -> RunState:
    spec = BackfillSpec.model_validate(sample_spec(**overrides))
    return RunState(
        run_id="digits-20261127060000-abcdef",
        spec=spec,
        instance_types=emulated_facts(spec.fleet.instance_types),
    )


# ---------------------------------------------------------------------------------------------- the spec


def test_the_runtime_is_auto_and_the_precision_fp32_unless_the_spec_says_otherwise():
    model = BackfillSpec.model_validate(sample_spec()).model
    assert (model.runtime, model.precision) == ("auto", "fp32")
    chosen = BackfillSpec.model_validate(
        sample_spec(model__runtime="openvino", model__precision="bf16")
    ).model
    assert (chosen.runtime, chosen.precision) == ("openvino", "bf16")
    chosen = BackfillSpec.model_validate(sample_spec(model__runtime="onnxruntime")).model
    assert (chosen.runtime, chosen.precision) == ("onnxruntime", "fp32")


@pytest.mark.parametrize(("field", "value"), [("runtime", "onnx"), ("precision", "int8")])
def test_a_runtime_or_precision_not_offered_is_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError) as raised:
        BackfillSpec.model_validate(sample_spec(**{f"model__{field}": value}))
    assert raised.value.errors()[0]["loc"] == ("model", field)


# ---------------------------------------------------------------------------------------------- Validate


@pytest.mark.aws
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"model__precision": "fp16"},
            r"^model\.precision: fp16 is mixed precision on GPU, and c5\.xlarge, c5\.2xlarge have no GPU",
        ),
        (
            {"model__precision": "bf16", "fleet__instance_types": ["g4dn.xlarge"], "service__memory": 4096},
            r"^model\.precision: bf16 is for CPU types, and g4dn\.xlarge is a GPU type: use fp16 on GPU\.$",
        ),
        (
            {"model__runtime": "openvino", "fleet__instance_types": ["g4dn.xlarge"], "service__memory": 4096},
            r"^model\.runtime: openvino serves CPU types, and g4dn\.xlarge is a GPU type",
        ),
        (
            {
                "model__runtime": "onnxruntime",
                "fleet__instance_types": ["g5.xlarge"],
                "service__memory": 4096,
            },
            r"^model\.runtime: onnxruntime serves CPU types, and g5\.xlarge is a GPU type",
        ),
    ],
    ids=["fp16-on-cpu", "bf16-on-gpu", "openvino-on-gpu", "onnxruntime-on-gpu"],
)
def test_a_runtime_or_precision_the_fleets_kind_cannot_serve_is_refused_at_validate(
    world, lambda_context, overrides, expected
):
    with pytest.raises(InvalidSpecError) as raised:
        validated_run(world, lambda_context, **overrides)
    assert re.search(expected, str(raised.value)), str(raised.value)


@pytest.mark.aws
@pytest.mark.parametrize(
    "overrides",
    [
        {"model__runtime": "openvino", "model__precision": "bf16"},
        {"model__runtime": "onnxruntime"},
        {"model__runtime": "auto", "model__precision": "fp16", "fleet__instance_types": ["g4dn.xlarge"]},
        {"model__runtime": "tensorflow", "fleet__instance_types": ["g5.xlarge"]},
    ],
    ids=["openvino-bf16-on-cpu", "onnxruntime-on-cpu", "auto-fp16-on-gpu", "tensorflow-on-gpu"],
)
def test_a_runtime_and_precision_the_fleet_serves_validate(world, lambda_context, overrides):
    run = validated_run(world, lambda_context, service__memory=4096, **overrides)
    assert run["spec"]["model"]["runtime"] == overrides["model__runtime"]


# ---------------------------------------------------------------------------------------------- the worker


def test_the_worker_is_told_the_runtime_and_precision_even_when_they_are_the_defaults():
    env = worker_environment(_run(), "https://sqs.example/queue")
    assert (env["SPOTFILL_MODEL_RUNTIME"], env["SPOTFILL_MODEL_PRECISION"]) == ("auto", "fp32")


def test_the_worker_is_told_the_runtime_and_precision_the_spec_chose():
    run = _run(model__runtime="tensorflow", model__precision="fp16", fleet__instance_types=["g4dn.xlarge"])
    env = worker_environment(run, "https://sqs.example/queue")
    assert (env["SPOTFILL_MODEL_RUNTIME"], env["SPOTFILL_MODEL_PRECISION"]) == ("tensorflow", "fp16")


# ---------------------------------------------------------------------------------------------- the report


def _runtime_metadata(
    runtime: str,
    rows_per_second: str,
    max_abs_diff: str = "",
    top_class_changed: str = "",
    fallback: str = "",
    precision: str = "fp32",
) -> dict[str, str]:
    """The keys a worker adds to each output it writes (docs/contracts/output-objects.md)."""
    return {
        "spotfill-runtime": runtime,
        "spotfill-precision": precision,
        "spotfill-runtime-max-abs-diff": max_abs_diff,
        "spotfill-runtime-rows-per-second": rows_per_second,
        "spotfill-runtime-top-class-changed": top_class_changed,
        "spotfill-runtime-fallback": fallback,
    }


class CountingHeads:
    """The S3 client, counting HeadObject calls."""

    def __init__(self, s3: Any) -> None:
        self.s3, self.heads = s3, 0

    def head_object(self, **kwargs: Any) -> Any:
        self.heads += 1
        return self.s3.head_object(**kwargs)


def _outputs(s3: Any, metadata: list[dict[str, str]]) -> report_facts.OutputSample:
    """Outputs in the data bucket, each with 10 rows and the given runtime metadata, sampled as the report
    samples them."""
    sample = report_facts.OutputSample()
    for i, extra in enumerate(metadata):
        key = f"outputs/digits/part-{i:05d}.parquet"
        s3.put_object(
            Bucket=DATA_BUCKET,
            Key=key,
            Body=b"x",
            Metadata={"spotfill-rows": "10", "spotfill-purchase-option": "spot", **extra},
        )
        sample.add(f"s3://{DATA_BUCKET}/{key}")
    return sample


def _report_of(run: RunState, outputs: report_facts.SampledOutputs) -> dict[str, Any]:
    facts = report_facts.Facts(
        succeeded=len(outputs.runtimes),
        predictions=outputs.predictions,
        runtimes=outputs.runtimes,
    )
    return report.build_report(
        run, run_id=run.run_id, error=None, teardown_error=None, facts=facts, now=NOW, control_bucket="c"
    )


def _table_text(document: dict[str, Any]) -> str:
    from spotfill.progress_display import report_table

    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(report_table(document))
    return out.getvalue()


def test_the_report_says_which_runtime_computed_the_outputs_with_its_agreement_and_calibration_speed(
    s3_world,
):
    # given three outputs that OpenVINO computed, from two workers' calibrations
    sample = _outputs(
        s3_world.s3,
        [
            _runtime_metadata("openvino", "800.0", max_abs_diff="3.1e-08"),
            _runtime_metadata("openvino", "812.0", max_abs_diff="1.2e-08"),
            _runtime_metadata("openvino", "824.0", max_abs_diff="3.1e-08"),
        ],
    )
    s3 = CountingHeads(s3_world.s3)

    # when the report reads its sample of the outputs
    outputs = report_facts.read_sampled_outputs(sample, s3)
    document = _report_of(_run(model__runtime="openvino"), outputs)

    # then each output was read once, for its rows and its runtime together
    assert s3.heads == 3
    assert outputs.predictions == 30 and outputs.by_purchase_option == {"spot": 30}
    # and the report's section names the runtime, the largest difference and the median calibration speed
    assert document["model_runtime"] == {
        "requested": "openvino",
        "precision": "fp32",
        "by_runtime": {"openvino": 3},
        "max_abs_diff": 3.1e-08,
        "top_class_changed_share": None,
        "rows_per_second": {"openvino": 812.0},
        "fallbacks": [],
    }
    # and the CLI's report table and the notification say so in one line
    line = "runtime openvino (fp32, max diff 3.1e-08 vs TensorFlow) 812 rows/s at calibration"
    assert line in _table_text(document)
    assert f"Model {line}" in report_text.notification(document)[1]


def test_the_report_counts_mixed_runtimes_and_quotes_each_distinct_fallback_reason(s3_world):
    # given outputs of an auto run: two workers chose OpenVINO, two fell back to TensorFlow for one reason
    # (told twice) and one for another, and one output from a worker that records no runtime
    too_far = "openvino: max abs diff 0.25 > tolerance 1e-05 on 64 calibration rows [0, 1]"
    sample = _outputs(
        s3_world.s3,
        [
            _runtime_metadata("openvino", "900.0", max_abs_diff="2e-08"),
            _runtime_metadata("openvino", "1000.0", max_abs_diff="4e-08"),
            _runtime_metadata("tensorflow", "500.0", fallback=too_far),
            _runtime_metadata("tensorflow", "700.0", fallback=too_far),
            _runtime_metadata("tensorflow", "600.0", fallback="openvino: not installed"),
            {},
        ],
    )

    # when the report is built
    document = _report_of(_run(), report_facts.read_sampled_outputs(sample, s3_world.s3))

    # then it counts the outputs of each runtime, the reasons once each, each runtime's median speed
    section = document["model_runtime"]
    assert section["requested"] == "auto"
    assert section["by_runtime"] == {"tensorflow": 3, "openvino": 2}
    assert section["max_abs_diff"] == 4e-08
    assert section["rows_per_second"] == {"openvino": 950.0, "tensorflow": 600.0}
    assert section["fallbacks"] == [
        "openvino: max abs diff 0.25 > tolerance 1e-05 on 64 calibration rows [0, 1]",
        "openvino: not installed",
    ]
    # and the line names both runtimes and the reasons (brackets shown as text, not markup)
    text = _table_text(document)
    assert (
        "runtime tensorflow on 3 output(s), openvino on 2 output(s) (fp32, max diff 4.0e-08 vs TensorFlow)"
        in text
    )
    assert "openvino 950, tensorflow 600 rows/s at calibration" in text
    assert f"fell back to TensorFlow: {too_far}; openvino: not installed" in text


def test_reduced_precision_reports_its_agreement_with_fp32(s3_world):
    sample = _outputs(
        s3_world.s3,
        [
            _runtime_metadata("openvino", "2000.0", "0.004", top_class_changed="0.01", precision="bf16"),
            _runtime_metadata("openvino", "2100.0", "0.003", top_class_changed="0.005", precision="bf16"),
        ],
    )
    document = _report_of(
        _run(model__precision="bf16"), report_facts.read_sampled_outputs(sample, s3_world.s3)
    )
    section = document["model_runtime"]
    assert (section["precision"], section["max_abs_diff"], section["top_class_changed_share"]) == (
        "bf16",
        0.004,
        0.01,
    )
    assert "runtime openvino (bf16, max diff 4.0e-03 vs TensorFlow, top class changed on 1.00% of rows)" in (
        _table_text(document)
    )


def test_outputs_without_runtime_metadata_leave_the_section_empty_and_the_line_out(s3_world):
    sample = _outputs(s3_world.s3, [{}, {}])
    document = _report_of(_run(), report_facts.read_sampled_outputs(sample, s3_world.s3))
    assert document["model_runtime"]["by_runtime"] == {}
    assert document["model_runtime"]["max_abs_diff"] is None
    assert document["model_runtime"]["rows_per_second"] == {}
    assert "runtime" not in _table_text(document)


# ---------------------------------------------------------------------------------------------- run --local


def test_run_local_passes_the_runtime_precision_and_tfrecord_options_into_the_spec(monkeypatch, tmp_path):
    from spotfill import localrun
    from spotfill.cli import main
    from spotfill.runs import CliError

    # given `run --local` with a runtime, a precision and TFRecord input
    asked: dict[str, Any] = {}

    def run_local(*args: Any, **kwargs: Any) -> Any:
        asked.update(kwargs)
        raise CliError("stop here")

    monkeypatch.setattr(localrun, "run_local", run_local)
    argv = ["run", "--local", "--model", "m.keras", "--input", "in", "--output", "out"]
    tfrecord = ["--input-format", "tfrecord", "--tfrecord-feature", "image", "--tfrecord-shape", "8,8,1"]
    assert main([*argv, *tfrecord, "--runtime", "openvino", "--precision", "bf16"]) == 2

    # then the run is asked for them, and the manifest it uploads carries them as a valid spec
    assert (asked["runtime"], asked["precision"]) == ("openvino", "bf16")
    assert asked["tfrecord"] == {
        "feature": "image",
        "shape": [8, 8, 1],
        "dtype": "float32",
        "compression": None,
    }
    spec = localrun.manifest(
        "local",
        "data",
        "models/m.keras",
        "tfrecord",
        "npy",
        1,
        runtime=asked["runtime"],
        precision=asked["precision"],
        tfrecord=asked["tfrecord"],
    )
    parsed = BackfillSpec.model_validate(spec)
    assert (parsed.model.runtime, parsed.model.precision) == ("openvino", "bf16")
    assert parsed.input.tfrecord is not None and parsed.input.tfrecord.shape == [8, 8, 1]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--tfrecord-feature", "image"], "--tfrecord-feature: for --input-format tfrecord only, not npy"),
        (
            ["--input-format", "tfrecord", "--tfrecord-feature", "image"],
            "--input-format tfrecord needs --tfrecord-shape",
        ),
    ],
    ids=["options-without-tfrecord", "tfrecord-without-shape"],
)
def test_run_local_refuses_tfrecord_options_that_do_not_go_together(capsys, extra, expected):
    from spotfill.cli import main

    argv = ["run", "--local", "--model", "m.keras", "--input", "in", "--output", "out", *extra]
    assert main(argv) == 2
    assert f"spotfill: error: {expected}" in capsys.readouterr().err


def test_run_local_counts_the_records_of_plain_and_gzip_tfrecord_shards(tmp_path):
    import tensorflow as tf

    from spotfill.local_folders import shard_rows

    for name, compression in (("a.tfrecord", ""), ("b.tfrecord.gz", "GZIP")):
        with tf.io.TFRecordWriter(
            str(tmp_path / name), tf.io.TFRecordOptions(compression_type=compression)
        ) as w:
            for i in range(7):
                w.write(b"record %d" % i)
        assert shard_rows(tmp_path / name, "tfrecord") == 7
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes((tmp_path / "a.tfrecord").read_bytes()[:-3])
    assert shard_rows(cut, "tfrecord") is None
