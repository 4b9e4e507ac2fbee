"""The worker's declared dependencies can do what the worker asks of them (no TensorFlow needed here)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# botocore 1.35.2 (2024-08-20, "Add support for conditional writes for PutObject and CompleteMultipartUpload
# APIs") is the first whose S3 model gives PutObject IfNoneMatch; boto3 1.35.2 is the first to require it.
FIRST_BOTO3_WITH_PUT_OBJECT_IF_NONE_MATCH = Version("1.35.2")


def _boto3_floor(requirements: list[str], source: str) -> Version:
    found = [Requirement(line) for line in requirements if Requirement(line).name == "boto3"]
    assert len(found) == 1, f"{source} declares boto3 {len(found)} times"
    floors = [Version(s.version) for s in found[0].specifier if s.operator in (">=", "==", "~=", ">")]
    assert floors, f"{source} declares boto3 without a lower bound: {found[0]}"
    return max(floors)


def _lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def test_the_installed_botocore_gives_s3_put_object_the_if_none_match_the_worker_sends():
    import botocore.session

    model = botocore.session.get_session().get_service_model("s3").operation_model("PutObject")
    assert "IfNoneMatch" in model.input_shape.members


@pytest.mark.parametrize("source", ["worker/requirements.txt", "pyproject.toml"])
def test_the_declared_boto3_floor_has_put_object_if_none_match(source):
    # given the boto3 requirement the image (worker/requirements.txt) or the project (pyproject.toml) declares
    path = ROOT / source
    if path.suffix == ".toml":
        requirements = tomllib.loads(path.read_text())["project"]["dependencies"]
    else:
        requirements = _lines(path)

    # when its lower bound is read / then no allowed boto3 lacks the worker's conditional write
    floor = _boto3_floor(requirements, source)
    assert floor >= FIRST_BOTO3_WITH_PUT_OBJECT_IF_NONE_MATCH, (
        f"{source} allows boto3 {floor}, older than {FIRST_BOTO3_WITH_PUT_OBJECT_IF_NONE_MATCH}, "
        "the first whose PutObject takes IfNoneMatch"
    )


def _dockerfile_arg(name: str) -> str:
    prefix = f"ARG {name}="
    (value,) = [
        line.removeprefix(prefix).strip()
        for line in (ROOT / "worker" / "Dockerfile").read_text().splitlines()
        if line.startswith(prefix)
    ]
    return value


def test_the_image_pins_the_tensorflow_and_keras_the_tests_run():
    # given the TensorFlow and Keras this environment's tests run with
    from importlib.metadata import PackageNotFoundError, version

    try:
        tensorflow = version("tensorflow-cpu")
    except PackageNotFoundError:
        tensorflow = version("tensorflow")
    # then the image (both architectures, and the GPU target) installs the same versions
    assert _dockerfile_arg("TF_VERSION") == tensorflow
    assert _dockerfile_arg("KERAS_VERSION") == version("keras")
    # and within the ranges the project declares
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for line in declared:
        requirement = Requirement(line)
        if requirement.name in ("tensorflow", "tensorflow-cpu"):
            assert Version(tensorflow) in requirement.specifier, line


@pytest.mark.parametrize(
    ("package", "arg"),
    [
        ("openvino", "OPENVINO_VERSION"),
        ("onnxruntime", "ONNXRUNTIME_VERSION"),
        ("tf2onnx", "TF2ONNX_VERSION"),
        ("onnx", "ONNX_VERSION"),
    ],
)
def test_the_image_pins_the_runtimes_the_tests_run(package, arg):
    # given the runtime (or converter) this environment's tests run with
    from importlib.metadata import version

    pinned = _dockerfile_arg(arg)
    # then the image (both targets) installs the same version
    assert pinned == version(package)
    # and within every range the project declares for it (the image's requirements and the development's)
    declared = [
        *tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"],
        *_lines(ROOT / "worker" / "requirements.txt"),
    ]
    found = [Requirement(line) for line in declared if Requirement(line).name == package]
    assert len(found) == 2, f"{package} is not declared by both pyproject.toml and worker/requirements.txt"
    for requirement in found:
        assert Version(pinned) in requirement.specifier, str(requirement)


def test_every_image_target_turns_the_runtimes_telemetry_off_in_its_environment():
    # given the variables the worker sets in code before a runtime loads (spotfill_worker.third_party)
    from spotfill_worker.third_party import TELEMETRY_OFF_ENVIRONMENT

    stages = (ROOT / "worker" / "Dockerfile").read_text().split("\nFROM ")[1:]
    assert len(stages) == 2  # gpu, cpu
    for stage in stages:
        name = stage.split()[2]  # "<image> AS <name>"
        # then each target's environment sets them too, for any Python in the image whatever loads first
        for variable, value in TELEMETRY_OFF_ENVIRONMENT.items():
            assert f" {variable}={value} " in stage, f"the {name} image does not set {variable}={value}"
        # and OpenVINO's consent file declines for the image's user
        assert "echo 0 > /home/spotfill/intel/openvino_telemetry" in stage, name
