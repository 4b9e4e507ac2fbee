"""Instance types from EC2 and on-demand prices from the Price List, resolved at Validate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from spotfill_control import aws
from spotfill_control.config import settings
from spotfill_control.errors import InvalidSpecError
from spotfill_control.handlers import validate as validate_handler
from spotfill_control.instance_types import STATIC_ON_DEMAND_USD, describe_instance_types
from spotfill_control.run import RunState
from spotfill_control.setup import prices

from spotfill.localcloud import pricing
from spotfill.localcloud.pricing import PRICE_LIST_OUTAGE

from .conftest import sample_spec


def validated(world: Any, lambda_context: Any, **overrides: Any) -> RunState:
    event = world.validate_event(sample_spec(**overrides))
    return RunState.model_validate(validate_handler.handler(event, lambda_context)["run"])


def invalid(world: Any, lambda_context: Any, **overrides: Any) -> str:
    with pytest.raises(InvalidSpecError) as raised:
        validated(world, lambda_context, **overrides)
    return str(raised.value)


@pytest.fixture
def price_list_refusing():
    PRICE_LIST_OUTAGE.refuse("AccessDeniedException")
    yield
    PRICE_LIST_OUTAGE.restore()


# ---------------------------------------------------------------------------------------------- Price List


def _product(operation: str, usd: str, unit: str = "Hrs") -> str:
    return json.dumps(
        {
            "product": {"attributes": {"instanceType": "c7i.large", "operation": operation}},
            "terms": {
                "OnDemand": {
                    "SKU.TERM": {
                        "priceDimensions": {"SKU.TERM.RATE": {"unit": unit, "pricePerUnit": {"USD": usd}}}
                    }
                }
            },
        }
    )


def test_the_price_is_the_plain_linux_products_hourly_usd():
    # given a GetProducts answer with a licensed variant and the plain RunInstances product
    answer = [_product("RunInstances:0200", "0.2357000000"), _product("RunInstances", "0.0893000000")]
    # then the plain product's rate per hour is the price
    assert prices.price_of(answer) == pytest.approx(0.0893)
    assert prices.price_of([]) is None
    assert prices.price_of([_product("RunInstances", "5.0", unit="Quantity")]) is None


def test_the_request_filters_region_type_linux_shared_tenancy_no_software_used_capacity():
    filters = {f["Field"]: f["Value"] for f in prices.product_filters("m7g.large", "eu-west-1")}
    assert filters == {
        "regionCode": "eu-west-1",
        "instanceType": "m7g.large",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    assert {f["Type"] for f in prices.product_filters("m7g.large", "eu-west-1")} == {"TERM_MATCH"}


@pytest.mark.aws
def test_prices_come_from_the_price_list_of_the_runs_region(world):
    client = prices.price_list_client("us-east-1", aws.client)
    # when c5.xlarge and m7g.large are priced in two regions
    east = prices.on_demand_prices(["c5.xlarge", "m7g.large"], "us-east-1", client)
    west = prices.on_demand_prices(["c5.xlarge", "m7g.large"], "eu-west-1", client)
    # then each price is the Price List's plain Linux price of that region, not the static table's figure
    for name in ("c5.xlarge", "m7g.large"):
        assert east[name] == prices.OnDemandPrice(pricing.on_demand_price(name, "us-east-1"), "price-list")
        assert west[name].usd_per_hour == pricing.on_demand_price(name, "eu-west-1")
        assert west[name].usd_per_hour != east[name].usd_per_hour
    assert east["c5.xlarge"].usd_per_hour != STATIC_ON_DEMAND_USD["c5.xlarge"]


@pytest.mark.parametrize(
    ("region", "endpoint"),
    [
        ("us-east-1", "us-east-1"),
        ("us-west-2", "us-east-1"),
        ("sa-east-1", "us-east-1"),
        ("eu-west-1", "eu-central-1"),
        ("me-central-1", "eu-central-1"),
        ("ap-northeast-1", "ap-south-1"),
        ("cn-north-1", "cn-northwest-1"),
        ("cn-northwest-1", "cn-northwest-1"),
        ("us-gov-west-1", None),
        ("xx-nowhere-1", None),
    ],
)
def test_the_price_list_is_asked_at_the_endpoint_of_the_runs_partition(region, endpoint):
    # The Billing User Guide, "Price List Query API endpoints": us-east-1, eu-central-1, ap-south-1 in `aws`,
    # cn-northwest-1 in `aws-cn`; GovCloud has none.
    assert prices.price_list_region(region) == endpoint


def test_the_price_list_endpoints_are_those_botocore_knows():
    import boto3

    session = boto3.session.Session()
    for partition, endpoints in prices.PRICE_LIST_ENDPOINTS.items():
        assert sorted(session.get_available_regions("pricing", partition_name=partition)) == sorted(endpoints)


@pytest.mark.aws
def test_a_china_run_is_priced_by_the_china_price_list(world):
    # given a run in cn-north-1: the `aws` endpoints price no China Region (the emulation answers a request
    # for the Regions of the partition it was signed in)
    asked: list[str] = []

    def client(service: str, region: str) -> Any:
        asked.append(region)
        return aws.client(service, region)

    # when its types are priced through the client of its partition
    found = prices.on_demand_prices(
        ["c5.xlarge"], "cn-north-1", prices.price_list_client("cn-north-1", client)
    )
    # then cn-northwest-1 was asked and the price is the Price List's, not "unknown"
    assert asked == ["cn-northwest-1"]
    assert found["c5.xlarge"] == prices.OnDemandPrice(
        pricing.on_demand_price("c5.xlarge", "cn-north-1"), "price-list"
    )
    # and the `aws` endpoint (what the old code asked) lists no China Region
    aws_answer = prices.on_demand_prices(["c5.xlarge"], "cn-north-1", aws.client("pricing", "us-east-1"))
    assert aws_answer["c5.xlarge"] == prices.OnDemandPrice(None, "unknown")


@pytest.mark.aws
def test_a_partition_without_a_price_list_prices_from_the_static_table(world):
    assert prices.price_list_client("us-gov-west-1", aws.client) is None
    found = prices.on_demand_prices(["c5.xlarge", "m7g.large"], "us-gov-west-1", None)
    assert found["c5.xlarge"] == prices.OnDemandPrice(STATIC_ON_DEMAND_USD["c5.xlarge"], "static-table")
    assert found["m7g.large"] == prices.OnDemandPrice(None, "unknown")


@pytest.mark.aws
def test_a_refusing_price_list_falls_back_to_the_static_table_and_says_so(world, price_list_refusing):
    client = prices.price_list_client("us-east-1", aws.client)
    found = prices.on_demand_prices(["c5.xlarge", "m7g.large"], "us-east-1", client)
    # then the table's figure, flagged; a type the table lacks has no price at all (never a guess)
    assert found["c5.xlarge"] == prices.OnDemandPrice(STATIC_ON_DEMAND_USD["c5.xlarge"], "static-table")
    assert found["m7g.large"] == prices.OnDemandPrice(None, "unknown")


@pytest.mark.aws
def test_an_unreachable_price_list_falls_back_to_the_static_table(world):
    class Unreachable:
        def get_paginator(self, name: str) -> Any:
            raise EndpointConnectionError(endpoint_url="https://api.pricing.us-east-1.amazonaws.com/")

    found = prices.on_demand_prices(["g4dn.xlarge"], "us-east-1", Unreachable())
    assert found["g4dn.xlarge"] == prices.OnDemandPrice(STATIC_ON_DEMAND_USD["g4dn.xlarge"], "static-table")


@pytest.mark.aws
def test_a_throttled_price_list_after_retries_falls_back(world):
    class Throttled:  # what the client raises once its own retries are spent
        def get_paginator(self, name: str) -> Any:
            error = {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}
            raise ClientError(error, "GetProducts")

    found = prices.on_demand_prices(["c5.xlarge"], "us-east-1", Throttled())
    assert found["c5.xlarge"].source == "static-table"


# ---------------------------------------------------------------------------------------------- EC2's facts


@pytest.mark.aws
def test_ec2_describes_vcpus_memory_gpus_and_architecture(world):
    facts = describe_instance_types(["m7g.large", "c7i.large", "g6e.xlarge"], aws.client("ec2"))
    assert list(facts) == ["m7g.large", "c7i.large", "g6e.xlarge"]
    assert (facts["m7g.large"].vcpus, facts["m7g.large"].memory_mib) == (2, 8192)
    assert (facts["m7g.large"].architecture, facts["m7g.large"].gpus) == ("arm64", 0)
    assert (facts["c7i.large"].architecture, facts["c7i.large"].gpus) == ("x86_64", 0)
    assert (facts["g6e.xlarge"].gpus, facts["g6e.xlarge"].architecture) == (1, "x86_64")


@pytest.mark.aws
def test_a_type_the_region_does_not_have_is_named(world, lambda_context):
    message = invalid(world, lambda_context, fleet__instance_types=["c5.xlarge", "z9.mega"])
    assert message == (
        "fleet.instance_types: z9.mega is not an instance type of region us-east-1 "
        "(EC2 DescribeInstanceTypes: InvalidInstanceType)."
    )


@pytest.mark.aws
def test_a_type_that_cannot_run_as_spot_is_refused(world, lambda_context):
    message = invalid(world, lambda_context, fleet__instance_types=["mac1.metal"])
    assert message.startswith("fleet.instance_types: mac1.metal cannot run as spot instances")


# ---------------------------------------------------------------------------------------------- Validate


@pytest.mark.aws
def test_validate_caches_each_types_facts_and_price_on_the_run(world, lambda_context):
    run = validated(world, lambda_context, fleet__instance_types=["m7g.large", "c7g.xlarge"])
    facts = run.instance_types
    assert set(facts) == {"m7g.large", "c7g.xlarge"}
    assert facts["c7g.xlarge"].vcpus == 4 and facts["c7g.xlarge"].architecture == "arm64"
    assert facts["m7g.large"].on_demand_hourly_usd == pricing.on_demand_price("m7g.large", "us-east-1")
    assert {f.price_source for f in facts.values()} == {"price-list"}
    assert run.architecture == "arm64" and not run.uses_gpu


@pytest.mark.aws
def test_validate_with_the_price_list_refusing_flags_static_table_prices(
    world, lambda_context, price_list_refusing
):
    run = validated(world, lambda_context, fleet__instance_types=["c5.xlarge", "c7i.large"])
    assert run.instance_types["c5.xlarge"].on_demand_hourly_usd == STATIC_ON_DEMAND_USD["c5.xlarge"]
    assert run.instance_types["c5.xlarge"].price_source == "static-table"
    assert run.instance_types["c7i.large"].on_demand_hourly_usd is None
    assert run.instance_types["c7i.large"].price_source == "unknown"


@pytest.mark.aws
def test_mixing_architectures_is_refused(world, lambda_context):
    message = invalid(world, lambda_context, fleet__instance_types=["c5.xlarge", "m7g.xlarge"])
    assert message.startswith(
        "fleet.instance_types: mixes architectures (arm64: m7g.xlarge; x86_64: c5.xlarge)"
    )


@pytest.mark.aws
def test_arm64_gpu_types_are_refused(world, lambda_context):
    message = invalid(world, lambda_context, fleet__instance_types=["g5g.xlarge"], service__memory=2048)
    assert message.startswith("fleet.instance_types: g5g.xlarge: arm64 GPU types cannot run")


@pytest.mark.aws
def test_mixing_gpu_and_cpu_types_is_refused(world, lambda_context):
    message = invalid(world, lambda_context, fleet__instance_types=["c5.xlarge", "g4dn.xlarge"])
    assert message.startswith("fleet.instance_types: mixes GPU types (g4dn.xlarge) and CPU types")


@pytest.mark.aws
def test_arm64_types_need_the_stacks_arm64_image(world, lambda_context, monkeypatch):
    monkeypatch.setenv("WORKER_IMAGE_ARM64", "")
    settings.cache_clear()
    message = invalid(world, lambda_context, fleet__instance_types=["m7g.large"])
    assert "set the stack's WorkerImageArm64 parameter" in message
    assert message.startswith("fleet.instance_types: m7g.large is arm64 (Graviton)")


@pytest.mark.aws
def test_tasks_that_do_not_fit_the_smallest_described_type_are_refused(world, lambda_context):
    message = invalid(world, lambda_context, fleet__instance_types=["c7g.large"], service__memory=4000)
    assert message.startswith("service.memory: memory x tasks_per_instance = 4000 MiB does not fit")
    assert "(c7g.large, 4096 MiB" in message


@pytest.mark.aws
def test_more_gpu_tasks_than_gpus_are_refused(world, lambda_context):
    message = invalid(
        world,
        lambda_context,
        fleet__instance_types=["g6e.xlarge"],
        service__tasks_per_instance=2,
        service__memory=2048,
    )
    assert message.startswith("service.tasks_per_instance: 2 tasks need a GPU each")


@pytest.mark.aws
def test_validate_in_a_china_region_asks_the_china_price_list(world):
    import boto3
    from spotfill_control.setup.preflight import Preflight

    made: list[tuple[str, str | None]] = []

    def client(service: str, region: str | None = None) -> Any:
        made.append((service, region))
        return boto3.client(service, region_name=region or "cn-north-1")

    # when Validate's clients are made in cn-north-1
    preflight = Preflight.of(client)
    # then its Price List client is cn-northwest-1's (the `aws` partition's us-east-1 would refuse China
    # credentials and lists no China Region)
    assert ("pricing", "cn-northwest-1") in made
    assert preflight.pricing.meta.region_name == "cn-northwest-1"


def test_the_local_price_list_answers_the_regions_of_the_partition_it_was_signed_for():
    def regions(signed_for: str, region_code: str | None = None) -> set[str]:
        filters = [{"Type": "TERM_MATCH", "Field": "instanceType", "Value": "c5.xlarge"}]
        if region_code:
            filters.append({"Type": "TERM_MATCH", "Field": "regionCode", "Value": region_code})
        body = json.dumps({"ServiceCode": "AmazonEC2", "Filters": filters, "MaxResults": 100}).encode()
        scope = (
            f"AWS4-HMAC-SHA256 Credential=AKID/20261206/{signed_for}/pricing/aws4_request, SignedHeaders=host"
        )
        status, _, text = pricing.answer("AWSPriceListService.GetProducts", body, scope)
        assert status == 200
        return {json.loads(p)["product"]["attributes"]["regionCode"] for p in json.loads(text)["PriceList"]}

    assert (
        pricing.signing_region("Credential=AKID/20261206/eu-central-1/pricing/aws4_request") == "eu-central-1"
    )
    # the `aws` endpoints list `aws` Regions only, China's endpoint China's only
    assert "us-east-1" in regions("us-east-1") and regions("eu-central-1") == regions("ap-south-1")
    assert not any(r.startswith("cn-") for r in regions("us-east-1"))
    assert regions("us-east-1", "cn-north-1") == set()
    assert regions("cn-northwest-1", "cn-north-1") == {"cn-north-1"}
    assert regions("cn-northwest-1", "us-east-1") == set()
