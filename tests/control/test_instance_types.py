"""Instance types from EC2 and on-demand prices from the Price List, resolved at Validate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from spotfill_control import aws, prices
from spotfill_control.config import settings
from spotfill_control.errors import InvalidSpecError
from spotfill_control.handlers import validate as validate_handler
from spotfill_control.instance_types import STATIC_ON_DEMAND_USD, describe_instance_types
from spotfill_control.run import RunState

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
    client = aws.client("pricing", prices.PRICING_REGION)
    # when c5.xlarge and m7g.large are priced in two regions
    east = prices.on_demand_prices(["c5.xlarge", "m7g.large"], "us-east-1", client)
    west = prices.on_demand_prices(["c5.xlarge", "m7g.large"], "eu-west-1", client)
    # then each price is the Price List's plain Linux price of that region, not the static table's figure
    for name in ("c5.xlarge", "m7g.large"):
        assert east[name] == prices.OnDemandPrice(pricing.on_demand_price(name, "us-east-1"), "price-list")
        assert west[name].usd_per_hour == pricing.on_demand_price(name, "eu-west-1")
        assert west[name].usd_per_hour != east[name].usd_per_hour
    assert east["c5.xlarge"].usd_per_hour != STATIC_ON_DEMAND_USD["c5.xlarge"]


@pytest.mark.aws
def test_a_refusing_price_list_falls_back_to_the_static_table_and_says_so(world, price_list_refusing):
    client = aws.client("pricing", prices.PRICING_REGION)
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
