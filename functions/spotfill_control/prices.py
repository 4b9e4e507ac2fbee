"""On-demand prices from the AWS Price List Query API (`pricing:GetProducts`), region-correct.

The Query API answers at two endpoints only, `api.pricing.us-east-1.amazonaws.com` and
`api.pricing.ap-south-1.amazonaws.com`, whatever region is priced; spotfill asks us-east-1 and filters by
the run's region code. One GetProducts per instance type, filtered to the plain Linux price EC2 charges a
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from spotfill_control.instance_types import STATIC_ON_DEMAND_USD, InstanceTypeFacts, PriceSource

logger = Logger(child=True)

PRICING_REGION = "us-east-1"
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


def on_demand_prices(names: Iterable[str], region: str, pricing: Any) -> dict[str, OnDemandPrice]:
    """Each type's on-demand price in `region`, from the Price List, or from the static table for every type
    once the API is unavailable."""
    names = list(names)
    prices: dict[str, OnDemandPrice] = {}
    for name in names:
        try:
            usd = price_of(_get_products(name, region, pricing))
        except PriceListUnavailable as exc:
            logger.warning(
                "Price List API unavailable: on-demand prices from the static table",
                extra={"reason": str(exc), "region": region},
            )
            return {n: static_price(n) for n in names}
        prices[name] = OnDemandPrice(usd, "price-list" if usd is not None else "unknown")
    return prices


def priced(facts: Mapping[str, InstanceTypeFacts], region: str, pricing: Any) -> dict[str, InstanceTypeFacts]:
    """The facts with their on-demand prices and price sources filled in."""
    prices = on_demand_prices(facts, region, pricing)
    return {
        name: f.model_copy(
            update={"on_demand_hourly_usd": prices[name].usd_per_hour, "price_source": prices[name].source}
        )
        for name, f in facts.items()
    }
