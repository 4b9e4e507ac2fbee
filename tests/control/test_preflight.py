"""Preflight: Validate checks the account (Spot quotas, offerings, the worker image) before any spend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from spotfill_control import aws
from spotfill_control.errors import InvalidSpecError, TransientAwsError
from spotfill_control.handlers import validate as validate_handler
from spotfill_control.setup.preflight import (
    Preflight,
    check_offerings,
    check_spot_quotas,
    check_worker_image,
    parse_ecr_image,
    read_spot_quota,
    spot_quota_of,
    worst_case_vcpus,
)
from spotfill_control.spec import BackfillSpec

from spotfill.localcloud.patches.account_limits import set_instance_type_offerings, set_service_quota
from spotfill.localcloud.pricing import emulated_facts as facts

from .conftest import CONTROL_BUCKET, REGION, WORKER_REPOSITORY, FailingClient, push_worker_image, sample_spec

STANDARD = "L-34B43A08"
STANDARD_NAME = '"All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests"'


def spec(**overrides: Any) -> BackfillSpec:
    return BackfillSpec.model_validate(sample_spec(**overrides))


def preflight() -> Preflight:
    return Preflight(
        aws.client("service-quotas"),
        aws.client("cloudwatch"),
        aws.client("ec2"),
        lambda r: aws.client("ecr", r),
        aws.client("pricing", "us-east-1"),
    )


# ---------------------------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("c5a.xlarge", "Standard"),
        ("c7gn.large", "Standard"),
        ("m7i.large", "Standard"),
        ("im4gn.large", "Standard"),
        ("z1d.large", "Standard"),
        ("g6e.xlarge", "G and VT"),
        ("vt1.3xlarge", "G and VT"),
        ("p5.48xlarge", "P"),
        ("x2iedn.xlarge", "X"),
        ("inf2.xlarge", "Inf"),
        ("trn1.2xlarge", "Trn"),
        ("dl1.24xlarge", "DL"),
        ("f1.2xlarge", "F"),
    ],
)
def test_any_family_counts_against_its_spot_quota(name, family):
    assert spot_quota_of(name).family == family


def test_a_family_of_no_spot_quota_is_a_spec_error_naming_the_type():
    with pytest.raises(
        InvalidSpecError, match=r"^fleet\.instance_types: u-6tb1\.metal belongs to no EC2 Spot"
    ):
        spot_quota_of("u-6tb1.metal")


@pytest.mark.parametrize(
    ("types", "target", "worst"),
    [
        (["c5.large"], 3, 6),  # one type: exactly the target
        (["c5.xlarge", "c5.2xlarge"], 4, 20),  # 12 vCPUs fulfilled < 16, then one 8-vCPU instance more
        (["c5.xlarge", "c5.2xlarge"], 1, 8),  # target 1 (4 vCPUs) met by a single 2xlarge
        (["c5.large", "c5.9xlarge"], 18, 70),  # 34 vCPUs of c5.large < 36, then a c5.9xlarge
    ],
)
def test_worst_case_is_the_most_vcpus_below_the_target_plus_the_largest_type(types, target, worst):
    (vcpus,) = worst_case_vcpus(facts(types), target).values()
    assert vcpus == worst


def test_worst_case_of_a_gpu_fleet_follows_its_gpu_weights():
    # g4dn.xlarge: 1 GPU, 4 vCPUs; g4dn.12xlarge: 4 GPUs, 48 vCPUs. Target 2 (GPUs): below it one xlarge
    # (1 GPU, 4 vCPUs) may run, then one 12xlarge more
    (vcpus,) = worst_case_vcpus(facts(["g4dn.xlarge", "g4dn.12xlarge"]), 2).values()
    assert vcpus == 4 + 48


def test_worst_case_is_counted_per_quota_family():
    worst = worst_case_vcpus(facts(["g4dn.xlarge", "p4d.24xlarge"]), 2)  # target 2 GPUs
    assert {quota.family: vcpus for quota, vcpus in worst.items()} == {"G and VT": 4 + 4, "P": 96}


# ---------------------------------------------------------------------------------------------- quotas


@pytest.mark.aws
def test_quota_exceeded_names_the_quota_its_value_the_requested_vcpus_and_the_fixes(world):
    # given an account whose Standard spot quota is 8 vCPUs
    set_service_quota(STANDARD, 8, region=REGION)
    # when a fleet of c5.xlarge/c5.2xlarge at target capacity 4 (up to 20 vCPUs) is checked
    with pytest.raises(InvalidSpecError) as raised:
        check_spot_quotas(
            spec(),
            facts(["c5.xlarge", "c5.2xlarge"]),
            aws.client("service-quotas"),
            aws.client("cloudwatch"),
            datetime.now(UTC),
        )
    # then one sentence names the quota, its value, the worst case, the usage and both fixes
    message = str(raised.value)
    assert message.startswith("fleet.target_capacity: 4 may launch up to 20 vCPUs of Standard spot instances")
    assert f"{STANDARD_NAME} ({STANDARD}) in us-east-1 is 8 vCPUs" in message
    assert "shared by every running spot instance of the account and Region, 0 of them in use now" in message
    assert "lower fleet.target_capacity to 1 or less" in message
    assert f"request an increase of {STANDARD} to at least 20 vCPUs" in message
    assert message.count(". ") == 0 and message.endswith(".")


@pytest.mark.aws
def test_the_on_demand_base_does_not_count_against_the_spot_quota(world):
    # given an account whose Standard spot quota is 8 vCPUs, and a fleet of 4 units of which 3 always run on
    # demand: its spot part (1 unit, at most one 8-vCPU c5.2xlarge) fits
    set_service_quota(STANDARD, 8, region=REGION)
    clients = aws.client("service-quotas"), aws.client("cloudwatch")
    types = facts(["c5.xlarge", "c5.2xlarge"])
    check_spot_quotas(spec(fleet__on_demand_base=3), types, *clients, datetime.now(UTC))
    # when only 2 of the 4 run on demand, the spot part (2 units, up to 12 vCPUs) does not fit
    with pytest.raises(InvalidSpecError) as raised:
        check_spot_quotas(spec(fleet__on_demand_base=2), types, *clients, datetime.now(UTC))
    # then the error counts the spot part only, and the target that fits keeps the base on demand
    message = str(raised.value)
    assert message.startswith(
        "fleet.target_capacity: 4 (2 of them spot, above fleet.on_demand_base 2) may launch up to 12 vCPUs"
    )
    assert "lower fleet.target_capacity to 3 or less" in message
    # and a fleet entirely on demand needs no spot quota at all
    set_service_quota(STANDARD, 0, region=REGION)
    check_spot_quotas(spec(fleet__on_demand_base=4), types, *clients, datetime.now(UTC))


@pytest.mark.aws
def test_running_spot_instances_use_up_the_shared_quota(world):
    # given a quota of 256 vCPUs, 250 of them used by running spot instances (the quota's AWS/Usage metric)
    now = datetime.now(UTC)
    quota = read_spot_quota(spot_quota_of("c5.xlarge"), aws.client("service-quotas"))
    metric = quota.usage_metric
    aws.client("cloudwatch").put_metric_data(
        Namespace=metric["MetricNamespace"],
        MetricData=[
            {
                "MetricName": metric["MetricName"],
                "Dimensions": [{"Name": k, "Value": v} for k, v in metric["MetricDimensions"].items()],
                "Value": 250,
                "Timestamp": now - timedelta(minutes=2),
            }
        ],
    )
    # when a fleet of up to 20 vCPUs is checked / then the 6 left are not enough
    with pytest.raises(InvalidSpecError) as raised:
        check_spot_quotas(
            spec(),
            facts(["c5.xlarge", "c5.2xlarge"]),
            aws.client("service-quotas"),
            aws.client("cloudwatch"),
            now,
        )
    assert "is 256 vCPUs" in str(raised.value)
    assert "250 of them in use now" in str(raised.value)
    assert "to at least 270 vCPUs" in str(raised.value)


@pytest.mark.aws
def test_a_quota_never_changed_falls_back_to_the_aws_default_of_a_new_account(world):
    # given a Region where the account never changed its quotas
    servicequotas = aws.client("service-quotas", "eu-west-1")
    # when the quotas are read / then the AWS defaults apply: 5 Standard vCPUs, none for GPUs
    assert read_spot_quota(spot_quota_of("c5.large"), servicequotas).value == 5
    assert read_spot_quota(spot_quota_of("g4dn.xlarge"), servicequotas).value == 0
    with pytest.raises(InvalidSpecError, match=r"is 0 vCPUs.*no target capacity fits what is left"):
        check_spot_quotas(
            spec(fleet__instance_types=["g4dn.xlarge"], fleet__target_capacity=1, service__memory=2048),
            facts(["g4dn.xlarge"]),
            servicequotas,
            aws.client("cloudwatch"),
            datetime.now(UTC),
        )


@pytest.mark.aws
@pytest.mark.parametrize(
    ("client", "operation"),
    [
        ("servicequotas", "get_service_quota"),
        ("cloudwatch", "get_metric_statistics"),
        ("ec2", "describe_subnets"),
        ("ecr", "describe_images"),
    ],
)
def test_a_throttled_preflight_call_stays_retryable(world, client, operation):
    # given one of the account's services throttling Validate
    checks = preflight()
    if client == "ecr":
        checks.ecr_in = lambda region: FailingClient(
            aws.client("ecr", region), operation, "ThrottlingException"
        )
    else:
        setattr(checks, client, FailingClient(getattr(checks, client), operation, "ThrottlingException"))
    # when the preflight runs / then the error is the one the state machine retries
    with pytest.raises(TransientAwsError):
        checks.check(spec(), facts(["c5.xlarge", "c5.2xlarge"]), world.subnets, world.settings.worker_image)


# ---------------------------------------------------------------------------------------------- offerings


@pytest.mark.aws
def test_a_type_offered_in_none_of_the_subnets_zones_names_the_type_and_the_zones(world):
    # given c5.2xlarge offered nowhere in the Region
    set_instance_type_offerings("c5.2xlarge", [], region=REGION)
    zones = sorted(
        s["AvailabilityZone"] for s in aws.client("ec2").describe_subnets(SubnetIds=world.subnets)["Subnets"]
    )
    # when the fleet's types are checked against the subnets' zones
    with pytest.raises(InvalidSpecError) as raised:
        check_offerings(spec(), world.subnets, aws.client("ec2"))
    # then the error names the type and the zones
    assert str(raised.value) == (
        f"fleet.instance_types: c5.2xlarge is not offered in any of the subnets' availability zones "
        f"({', '.join(zones)}): choose types offered there, or fleet.subnets in zones that offer them."
    )


@pytest.mark.aws
def test_a_type_offered_in_some_of_the_subnets_zones_passes_with_a_note(world):
    # given c5.2xlarge offered in one of the subnets' zones, c5.xlarge in all of them
    subnets = aws.client("ec2").describe_subnets(SubnetIds=world.subnets)["Subnets"]
    first_zone = subnets[0]["AvailabilityZone"]
    set_instance_type_offerings("c5.2xlarge", [first_zone], region=REGION)
    set_instance_type_offerings("c5.xlarge", [s["AvailabilityZone"] for s in subnets], region=REGION)
    # when the offerings are checked / then c5.2xlarge passes, noted as placed in that zone only

    offerings = check_offerings(spec(), world.subnets, aws.client("ec2"))

    assert offerings.offered["c5.2xlarge"] == [first_zone]
    (note,) = offerings.notes()
    assert note.startswith(f"c5.2xlarge is offered in {first_zone} only")


@pytest.mark.aws
def test_a_subnet_that_does_not_exist_is_a_spec_error(world):
    with pytest.raises(InvalidSpecError, match=r"^fleet\.subnets: .*subnet-0000000000000dead"):
        check_offerings(spec(), ["subnet-0000000000000dead"], aws.client("ec2"))


# ---------------------------------------------------------------------------------------------- image


def test_ecr_image_uris_are_parsed_and_others_are_not_ecr():
    tagged = parse_ecr_image("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/spotfill-worker:v1.2")
    assert (tagged.registry, tagged.region, tagged.repository, tagged.tag) == (
        "123456789012",
        "eu-west-1",
        "team/spotfill-worker",
        "v1.2",
    )
    pinned = parse_ecr_image(f"123456789012.dkr.ecr.us-east-1.amazonaws.com/worker@sha256:{'0' * 64}")
    assert pinned.image_id == {"imageDigest": f"sha256:{'0' * 64}"}
    assert parse_ecr_image("123456789012.dkr.ecr.us-east-1.amazonaws.com/worker").image_id == {
        "imageTag": "latest"
    }
    for elsewhere in (
        "tensorflow/tensorflow:2.16.1",
        "public.ecr.aws/acme/worker:1",
        "spotfill-worker:local",
    ):
        assert parse_ecr_image(elsewhere) is None


def _never(region: str) -> Any:
    raise AssertionError("an image outside ECR must not be looked up")


def test_an_image_outside_ecr_is_not_checked():
    assert check_worker_image("docker.io/library/python:3.12", _never) is None


@pytest.mark.aws
def test_a_missing_tag_names_the_repository_and_the_tag(world):
    uri = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{WORKER_REPOSITORY}:never-pushed"
    with pytest.raises(InvalidSpecError) as raised:
        check_worker_image(uri, lambda region: aws.client("ecr", region))
    assert str(raised.value) == (
        f"worker image {uri}: repository {WORKER_REPOSITORY} in registry 123456789012 (us-east-1) has no "
        "image with tag never-pushed: push the worker image there (worker/Dockerfile), or set the stack's "
        "WorkerImage parameter to an image that exists."
    )


@pytest.mark.aws
def test_a_missing_repository_is_named(world):
    uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/nobody/worker:v1"
    with pytest.raises(InvalidSpecError, match="its repository nobody/worker does not exist in registry"):
        check_worker_image(uri, lambda region: aws.client("ecr", region))


@pytest.mark.aws
def test_an_image_pinned_by_digest_is_found_by_its_digest(world):
    digest = push_worker_image("pinned", "v7")
    uri = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/pinned@{digest}"
    assert check_worker_image(uri, lambda region: aws.client("ecr", region)).digest == digest


# ---------------------------------------------------------------------------------------------- Validate


@pytest.mark.aws
def test_validate_fails_over_quota_before_the_run_exists(world, lambda_context):
    # given an account with a new account's Standard spot quota (5 vCPUs)
    set_service_quota(STANDARD, 5, region=REGION)
    # when a run of up to 20 vCPUs is validated
    with pytest.raises(InvalidSpecError, match=r"^fleet\.target_capacity: .*\(L-34B43A08\).* is 5 vCPUs"):
        validate_handler.handler(world.validate_event(sample_spec()), lambda_context)
    # then no run state was written
    assert "Contents" not in world.s3.list_objects_v2(Bucket=CONTROL_BUCKET, Prefix="runs/")


@pytest.mark.aws
def test_validate_passes_preflight_and_keeps_the_notes(world):
    # given c5.xlarge offered in one of the subnets' zones, c5.2xlarge in all of them
    zones = [
        s["AvailabilityZone"] for s in aws.client("ec2").describe_subnets(SubnetIds=world.subnets)["Subnets"]
    ]
    set_instance_type_offerings("c5.xlarge", zones[:1], region=REGION)
    set_instance_type_offerings("c5.2xlarge", zones, region=REGION)
    checks = preflight()
    # when the whole preflight runs / then it passes, noting where c5.xlarge can go

    checks.check(spec(), facts(["c5.xlarge", "c5.2xlarge"]), world.subnets, world.settings.worker_image)

    assert [note.split(" ")[0] for note in checks.notes] == ["c5.xlarge"]
