"""The AWS Price List Query API (`AWSPriceListService.GetProducts`), which moto does not have.

One emulation, served two ways: over HTTP by the local cloud's server (`PriceListRouter`, in front of moto,
behind the signature guard) and in process under `mock_aws` (`install_in_process`, wrapping moto's botocore
stubber), so the control plane's Price List client works the same on both.

Products are shaped as AWS's (`PriceList`: JSON strings of product, serviceCode, terms.OnDemand with
priceDimensions and pricePerUnit.USD), for every instance type moto's EC2 describes, in several variants
(Linux shared, Linux dedicated, Linux on a capacity reservation, Windows, Linux with SQL Web) so that filters
matter. The on-demand price follows the type's vCPUs, memory, GPUs and architecture and the region; it is not
the static fallback table's figure, nor a round multiple of the emulated spot price (`spot_price`), so tests
can tell the sources apart. Each partition has its own Price List endpoints and lists its own Regions only
(the `aws` endpoints price no China Region): a request is answered for the Regions of the partition of the
Region it was signed for (its credential scope). `PRICE_LIST_OUTAGE.refuse(code)` makes every GetProducts
fail (AccessDenied, throttling, ...) until `restore()`, for the static-table fallback.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

TARGET_PREFIX = "AWSPriceListService."
FORMAT_VERSION = "aws_v1"
PAGE_SIZE = 100

# USD per hour, per unit, before the region factor: Graviton vCPUs are cheaper than x86 ones.
_PER_VCPU = {"x86_64": 0.0317, "arm64": 0.0253}
_PER_GIB = 0.0041
_PER_GPU = 0.4127
# Regions cost more or less than us-east-1, as on AWS; any other region the default.
REGION_FACTORS = {
    "us-east-1": 1.0,
    "us-east-2": 1.0,
    "us-west-2": 1.0,
    "eu-west-1": 1.1134,
    "eu-central-1": 1.1529,
}
DEFAULT_REGION_FACTOR = 1.0917
# The emulated spot market quotes each type at this fraction of its us-east-1 on-demand price.
SPOT_DISCOUNT = 0.35
LOCATIONS = {
    "us-east-1": "US East (N. Virginia)",
    "us-west-2": "US West (Oregon)",
    "eu-west-1": "EU (Ireland)",
}

# (operatingSystem, tenancy, preInstalledSw, capacitystatus, operation, price factor): the plain Linux
# instance-hour is the first; the others match some but not all of a Linux shared-tenancy query.
_VARIANTS = (
    ("Linux", "Shared", "NA", "Used", "RunInstances", 1.0),
    ("Linux", "Shared", "NA", "AllocatedCapacityReservation", "RunInstances", 1.0),
    ("Linux", "Dedicated", "NA", "Used", "RunInstances", 1.1),
    ("Windows", "Shared", "NA", "Used", "RunInstances:0002", 1.84),
    ("Linux", "Shared", "SQL Web", "Used", "RunInstances:0200", 1.27),
)


def _described(instance_type: str) -> dict[str, Any] | None:
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    return INSTANCE_TYPES.get(instance_type)


def _base_price(info: dict[str, Any]) -> float:
    architectures = (info.get("ProcessorInfo") or {}).get("SupportedArchitectures", [])
    per_vcpu = _PER_VCPU["arm64" if "arm64" in architectures else "x86_64"]
    gpus = sum(g.get("Count", 0) for g in (info.get("GpuInfo") or {}).get("Gpus", []))
    return (
        info["VCpuInfo"]["DefaultVCpus"] * per_vcpu
        + info["MemoryInfo"]["SizeInMiB"] / 1024 * _PER_GIB
        + gpus * _PER_GPU
    )


def on_demand_price(instance_type: str, region: str) -> float | None:
    """The emulated Linux on-demand price (USD per hour) of a type in a region; None: EC2 has no such type."""
    info = _described(instance_type)
    if info is None:
        return None
    return round(_base_price(info) * REGION_FACTORS.get(region, DEFAULT_REGION_FACTOR), 4)


def spot_price(instance_type: str) -> float | None:
    """The emulated spot price (USD per hour) of a type; None: EC2 has no such type."""
    us_east = on_demand_price(instance_type, "us-east-1")
    return None if us_east is None else round(us_east * SPOT_DISCOUNT, 6)


def _sku(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16].upper()


def products(instance_type: str, region: str) -> list[dict[str, Any]]:
    """Every product of a type in a region, as the Price List describes them (none for an unknown type)."""
    base = on_demand_price(instance_type, region)
    if base is None:
        return []
    info = _described(instance_type) or {}
    found = []
    for system, tenancy, software, capacity, operation, factor in _VARIANTS:
        sku = _sku(instance_type, region, system, tenancy, software, capacity)
        price = round(base * factor, 4)
        term = "JRTCKXETXF"
        found.append(
            {
                "product": {
                    "productFamily": "Compute Instance",
                    "sku": sku,
                    "attributes": {
                        "servicecode": "AmazonEC2",
                        "instanceType": instance_type,
                        "regionCode": region,
                        "location": LOCATIONS.get(region, region),
                        "operatingSystem": system,
                        "tenancy": tenancy,
                        "preInstalledSw": software,
                        "capacitystatus": capacity,
                        "operation": operation,
                        "licenseModel": "No License required",
                        "vcpu": str(info["VCpuInfo"]["DefaultVCpus"]),
                        "memory": f"{info['MemoryInfo']['SizeInMiB'] / 1024:g} GiB",
                        "usagetype": f"BoxUsage:{instance_type}",
                    },
                },
                "serviceCode": "AmazonEC2",
                "terms": {
                    "OnDemand": {
                        f"{sku}.{term}": {
                            "offerTermCode": term,
                            "sku": sku,
                            "effectiveDate": "2026-11-01T00:00:00Z",
                            "termAttributes": {},
                            "priceDimensions": {
                                f"{sku}.{term}.6YS6EN2CT7": {
                                    "rateCode": f"{sku}.{term}.6YS6EN2CT7",
                                    "unit": "Hrs",
                                    "beginRange": "0",
                                    "endRange": "Inf",
                                    "appliesTo": [],
                                    "description": f"${price} per On Demand {system} {instance_type} Hour",
                                    "pricePerUnit": {"USD": f"{price:.10f}"},
                                }
                            },
                        }
                    }
                },
                "version": "20261101000000",
                "publicationDate": "2026-11-01T00:00:00Z",
            }
        )
    return found


class PriceListOutage:
    """While refusing, every GetProducts answers this error (the tests' and chaos' switch)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._code: str | None = None

    def refuse(self, code: str = "AccessDeniedException") -> None:
        with self._lock:
            self._code = code

    def restore(self) -> None:
        with self._lock:
            self._code = None

    @property
    def code(self) -> str | None:
        with self._lock:
            return self._code


PRICE_LIST_OUTAGE = PriceListOutage()
_ERROR_STATUS = {"AccessDeniedException": 400, "ThrottlingException": 400, "InternalErrorException": 500}


def _error(code: str, message: str) -> tuple[int, dict[str, str], str]:
    body = json.dumps({"__type": code, "message": message})
    return _ERROR_STATUS.get(code, 400), {"Content-Type": "application/x-amz-json-1.1"}, body


def _matches(product: dict[str, Any], filters: Iterable[dict[str, str]]) -> bool:
    attributes = product["product"]["attributes"]
    for f in filters:
        value = str(attributes.get(f["Field"], ""))
        wanted = f["Value"]
        kind = f.get("Type", "TERM_MATCH")
        if kind in ("TERM_MATCH", "EQUALS") and value.lower() != wanted.lower():
            return False
        if kind == "CONTAINS" and wanted.lower() not in value.lower():
            return False
        if kind == "ANY_OF" and value.lower() not in {v.strip().lower() for v in wanted.split(",")}:
            return False
        if kind == "NONE_OF" and value.lower() in {v.strip().lower() for v in wanted.split(",")}:
            return False
    return True


_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/pricing/")


def signing_region(authorization: str) -> str | None:
    """The Region of a SigV4 `Authorization` header's credential scope (the endpoint asked); None: none."""
    found = _SCOPE.search(authorization or "")
    return found.group(1) if found else None


def get_products(request: dict[str, Any], endpoint: str | None = None) -> tuple[int, dict[str, str], str]:
    """A GetProducts request body → (status, headers, body), as the Price List Query API answers at the
    endpoint of Region `endpoint` (None: any): products of the Regions of that endpoint's partition only."""
    if PRICE_LIST_OUTAGE.code:
        return _error(PRICE_LIST_OUTAGE.code, "The Price List API refused the request (emulated outage).")
    if request.get("ServiceCode") != "AmazonEC2":
        return _error("NotFoundException", f"Service {request.get('ServiceCode')!r} is not emulated.")
    filters = request.get("Filters", [])
    asked = {f["Field"]: f["Value"] for f in filters if f.get("Type", "TERM_MATCH") == "TERM_MATCH"}
    if "instanceType" not in asked:
        return _error("InvalidParameterException", "The emulated Price List answers per instanceType only.")
    regions = [asked["regionCode"]] if "regionCode" in asked else list(REGION_FACTORS)
    if endpoint is not None:
        from spotfill_control.setup.prices import partition_of

        regions = [r for r in regions if partition_of(r) == partition_of(endpoint)]
    found = [
        json.dumps(p)
        for region in regions
        for p in products(asked["instanceType"], region)
        if _matches(p, filters)
    ]
    start = int(request.get("NextToken") or 0)
    size = min(int(request.get("MaxResults") or PAGE_SIZE), PAGE_SIZE)
    page: dict[str, Any] = {"FormatVersion": FORMAT_VERSION, "PriceList": found[start : start + size]}
    if start + size < len(found):
        page["NextToken"] = str(start + size)
    return 200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(page)


def answer(target: str, body: bytes, authorization: str = "") -> tuple[int, dict[str, str], str]:
    """Any Price List action (signed with `authorization`); only GetProducts is emulated."""
    action = target[len(TARGET_PREFIX) :]
    if action != "GetProducts":
        return _error("UnknownOperationException", f"{action} is not emulated by the local cloud.")
    return get_products(json.loads(body or b"{}"), signing_region(authorization))


class PriceListRouter:
    """WSGI middleware: Price List requests (`X-Amz-Target: AWSPriceListService.*`) are answered here, every
    other request goes on to moto."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith(TARGET_PREFIX):
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        status, headers, text = answer(target, body, environ.get("HTTP_AUTHORIZATION", ""))
        payload = text.encode()
        reason = "OK" if status == 200 else "Bad Request" if status < 500 else "Internal Server Error"
        start_response(f"{status} {reason}", [*headers.items(), ("Content-Length", str(len(payload)))])
        return [payload]


_in_process_lock = threading.Lock()
_in_process = False


def install_in_process() -> None:
    """Answer Price List requests under `mock_aws` (idempotent): moto's botocore stubber has no Pricing
    backend and would answer 404; this wraps it to answer them first."""
    global _in_process
    with _in_process_lock:
        if _in_process:
            return
        from moto.core.botocore_stubber import BotocoreStubber

        original = BotocoreStubber.process_request

        def process_request(self: Any, request: Any) -> Any:
            target = request.headers.get("X-Amz-Target", "")
            if isinstance(target, bytes):
                target = target.decode()
            if target.startswith(TARGET_PREFIX):
                body = request.body or b""
                authorization = request.headers.get("Authorization", "")
                if isinstance(authorization, bytes):
                    authorization = authorization.decode()
                return answer(target, body.encode() if isinstance(body, str) else body, authorization)
            return original(self, request)

        BotocoreStubber.process_request = process_request
        _in_process = True


def emulated_facts(names: Iterable[str], region: str = "us-east-1") -> dict[str, Any]:
    """The facts Validate would cache for these types on the emulated cloud (`run.instance_types`): EC2's
    description (moto's copy of AWS's instance type data) priced by the emulated Price List. For tests and
    tools that build a run without running Validate."""
    from moto.ec2.models.instance_types import INSTANCE_TYPES
    from spotfill_control.instance_types import facts_of

    return {
        name: facts_of(INSTANCE_TYPES[name]).model_copy(
            update={"on_demand_hourly_usd": on_demand_price(name, region), "price_source": "price-list"}
        )
        for name in names
    }
