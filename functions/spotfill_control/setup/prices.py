"""On-demand prices from the AWS Price List Query API (`pricing:GetProducts`), region-correct.

The Query API answers at a few endpoints only, whatever region is priced, and each partition has its own
(Billing User Guide, "Price List Query API endpoints"; botocore's endpoint data lists the same): in `aws`
us-east-1, eu-central-1 and ap-south-1 (`api.pricing.<region>.amazonaws.com`), in `aws-cn` (the China
Regions) cn-northwest-1 (`api.pricing.cn-northwest-1.amazonaws.com.cn`). Credentials hold in their own
partition only, so spotfill asks the endpoint of the run's partition (in `aws` the one nearest the run's
region, `price_list_region`) and filters by the run's region code; a partition without an endpoint (GovCloud)
prices from the static table.

One GetProducts per instance type, filtered to the plain Linux price EC2 charges a
spot-or-on-demand instance of a shared-tenancy fleet: operating system Linux, tenancy Shared, no
pre-installed software, capacity status Used (not a reservation). Each `PriceList` entry is a JSON string;
the price is `terms.OnDemand.<offer>.priceDimensions.<rate>.pricePerUnit.USD` of the rate per hour.

The static table (`instance_types.STATIC_ON_DEMAND_USD`, us-east-1 list prices) is the fallback only when the
API cannot be reached or refuses (no endpoint, AccessDenied, throttling after the client's retries, any other
service error); every price says which source it came from. A type the Price List does not list is
"unknown" (no price), never silently a table figure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError, UnknownRegionError

from spotfill_control.instance_types import STATIC_ON_DEMAND_USD, InstanceTypeFacts, PriceSource

logger = Logger(child=True)

# The Query API's endpoint regions by partition; in `aws` the first is the default (`price_list_region`).
PRICE_LIST_ENDPOINTS: dict[str, tuple[str, ...]] = {
    "aws": ("us-east-1", "eu-central-1", "ap-south-1"),
    "aws-cn": ("cn-northwest-1",),
}
# In `aws`, the endpoint nearest a region by its area prefix: Europe, the Middle East, Africa and Israel ask
# Frankfurt, Asia Pacific asks Mumbai, the Americas N. Virginia (the data is the same at every endpoint).
NEAREST_AWS_ENDPOINT = {
    "eu": "eu-central-1",
    "me": "eu-central-1",
    "af": "eu-central-1",
    "il": "eu-central-1",
    "ap": "ap-south-1",
}
SERVICE_CODE = "AmazonEC2"
# The product attributes of a plain Linux instance-hour (the Price List's own attribute names and values).
LINUX_SHARED = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
}
# Of the products that match, the one without a licence or a special operation (RunInstances is plain Linux).
PLAIN_OPERATION = "RunInstances"


@dataclass(frozen=True)
class OnDemandPrice:
    usd_per_hour: float | None
    source: PriceSource


class PriceListUnavailable(Exception):
    """The Price List API could not be reached or refused; the reason is the message."""


@cache
def partition_of(region: str) -> str | None:
    """The partition of a region, from botocore's endpoint data (no call is made); None: a region it does not
    know."""
    try:
        return str(boto3.session.Session().get_partition_for_region(region))
    except UnknownRegionError:
        return None


def price_list_region(region: str) -> str | None:
    """The Region whose Price List Query API endpoint prices a run in `region`: its partition's endpoint (in
    `aws` the nearest of three); None when the partition has none (or the region is unknown)."""
    endpoints = PRICE_LIST_ENDPOINTS.get(partition_of(region) or "", ())
    if not endpoints:
        return None
    nearest = NEAREST_AWS_ENDPOINT.get(region.split("-", 1)[0], endpoints[0])
    return nearest if nearest in endpoints else endpoints[0]


def price_list_client(region: str, client: Callable[[str, str], Any]) -> Any | None:
    """A Price List client for a run in `region` from a factory `client(service, region)`; None when the
    region's partition has no Price List endpoint (its prices then come from the static table)."""
    endpoint = price_list_region(region)
    return None if endpoint is None else client("pricing", endpoint)


def product_filters(instance_type: str, region: str) -> list[dict[str, str]]:
    attributes = {"regionCode": region, "instanceType": instance_type, **LINUX_SHARED}
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in attributes.items()]


def hourly_usd(product: Mapping[str, Any]) -> float | None:
    """The on-demand USD per hour of one Price List product (None: it has no hourly USD rate)."""
    for offer in (product.get("terms", {}).get("OnDemand") or {}).values():
        for dimension in (offer.get("priceDimensions") or {}).values():
            usd = (dimension.get("pricePerUnit") or {}).get("USD")
            if usd is not None and str(dimension.get("unit", "")).lower() in ("hrs", "hours", "hour"):
                return float(usd)
    return None


def price_of(price_list: Iterable[str]) -> float | None:
    """The price of a GetProducts answer's `PriceList` (JSON strings): the plain RunInstances product's, else
    the lowest non-zero hourly rate among them (None: no product has one)."""
    products = [json.loads(entry) for entry in price_list]
    plain = [
        p for p in products if p.get("product", {}).get("attributes", {}).get("operation") == PLAIN_OPERATION
    ]
    rates = [rate for p in plain or products if (rate := hourly_usd(p))]
    return min(rates) if rates else None


def _get_products(instance_type: str, region: str, pricing: Any) -> list[str]:
    entries: list[str] = []
    try:
        pages = pricing.get_paginator("get_products").paginate(
            ServiceCode=SERVICE_CODE,
            Filters=product_filters(instance_type, region),
            FormatVersion="aws_v1",
        )
        for page in pages:
            entries += page.get("PriceList", [])
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise PriceListUnavailable(f"{error.get('Code', 'error')}: {error.get('Message', exc)}") from exc
    except BotoCoreError as exc:  # no endpoint, connection refused or timed out
        raise PriceListUnavailable(str(exc)) from exc
    return entries


def static_price(instance_type: str) -> OnDemandPrice:
    usd = STATIC_ON_DEMAND_USD.get(instance_type)
    return OnDemandPrice(usd, "static-table" if usd is not None else "unknown")


def on_demand_prices(names: Iterable[str], region: str, pricing: Any | None) -> dict[str, OnDemandPrice]:
    """Each type's on-demand price in `region`, from the Price List (`pricing`: a client of the endpoint of
    the region's partition, `price_list_client`), or from the static table for every type once the API is
    unavailable or the partition has no endpoint (`pricing` None)."""
    names = list(names)
    prices: dict[str, OnDemandPrice] = {}
    for name in names:
        try:
            if pricing is None:
                raise PriceListUnavailable(
                    f"the {partition_of(region) or 'unknown'} partition of region {region} has no Price List "
                    "Query API endpoint"
                )
            usd = price_of(_get_products(name, region, pricing))
        except PriceListUnavailable as exc:
            logger.warning(
                "Price List API unavailable: on-demand prices from the static table",
                extra={"reason": str(exc), "region": region},
            )
            return {n: static_price(n) for n in names}
        prices[name] = OnDemandPrice(usd, "price-list" if usd is not None else "unknown")
    return prices


def priced(
    facts: Mapping[str, InstanceTypeFacts], region: str, pricing: Any | None
) -> dict[str, InstanceTypeFacts]:
    """The facts with their on-demand prices and price sources filled in."""
    prices = on_demand_prices(facts, region, pricing)
    return {
        name: f.model_copy(
            update={"on_demand_hourly_usd": prices[name].usd_per_hour, "price_source": prices[name].source}
        )
        for name, f in facts.items()
    }
