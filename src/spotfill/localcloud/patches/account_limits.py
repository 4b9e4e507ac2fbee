"""An account's limits: Service Quotas' EC2 Spot vCPU quotas and EC2's instance type offerings.

- Service Quotas: moto knows only VPC quotas. The EC2 Spot vCPU quotas are served as AWS serves them: the AWS
  default (`GetAWSDefaultServiceQuota`, a new account's values) and, for a quota never changed,
  `NoSuchResourceException` from `GetServiceQuota`; `set_service_quota` (tests) or
  `RequestServiceQuotaIncrease` (approved at once) applies a value, which `GetServiceQuota` then answers.
- EC2 `DescribeInstanceTypeOfferings` answers moto's snapshot of AWS's offerings, which no test can change;
  `set_instance_type_offerings` makes a type offered in exactly the zones given (none: nowhere).

`patch_account_limits` installs these with the spot market (`spotfill.localcloud.patches.spot_prices`) and
the Price List (`spotfill.localcloud.pricing`).

AWS documentation followed:
- "GetServiceQuota", "GetAWSDefaultServiceQuota" and "RequestServiceQuotaIncrease", Service Quotas API
  Reference: https://docs.aws.amazon.com/servicequotas/2019-06-24/apireference/API_GetServiceQuota.html,
  https://docs.aws.amazon.com/servicequotas/2019-06-24/apireference/API_GetAWSDefaultServiceQuota.html,
  https://docs.aws.amazon.com/servicequotas/2019-06-24/apireference/API_RequestServiceQuotaIncrease.html
- "Spot Instance quotas", Amazon EC2 User Guide:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-spot-limits.html
- "DescribeInstanceTypeOfferings", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceTypeOfferings.html
"""

from __future__ import annotations

import json
import threading
from typing import Any

from spotfill.localcloud.patches.spot_prices import quote_spot_prices
from spotfill.localcloud.pricing import install_in_process

# A new account's Spot vCPU quotas (Amazon EC2 User Guide, "Spot Instance quotas"): 5 Standard vCPUs, 0 for
# every accelerated family.
AWS_DEFAULT_SPOT_VCPUS = {"L-34B43A08": 5.0}
_limits_lock = threading.Lock()
_limits_patched = False


def _spot_quota(code: str, value: float, region: str, account_id: str | None) -> dict[str, Any] | None:
    from spotfill_control.setup.preflight import SPOT_QUOTAS

    quota = next((q for q in SPOT_QUOTAS if q.code == code), None)
    if quota is None:
        return None
    usage_class = quota.family.split(" ")[0]  # "G and VT" -> G, as the AWS/Usage metric names it
    return {
        "ServiceCode": "ec2",
        "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
        "QuotaArn": f"arn:aws:servicequotas:{region}:{account_id or ''}:ec2/{code}",
        "QuotaCode": code,
        "QuotaName": quota.name,
        "Value": value,
        "Unit": "None",
        "Adjustable": True,
        "GlobalQuota": False,
        "UsageMetric": {
            "MetricNamespace": "AWS/Usage",
            "MetricName": "ResourceCount",
            "MetricDimensions": {
                "Class": f"{usage_class}/Spot",
                "Resource": "vCPU",
                "Service": "EC2",
                "Type": "Resource",
            },
            "MetricStatisticRecommendation": "Maximum",
        },
    }


def _applied_quotas(account_id: str, region: str) -> dict[tuple[str, str], float]:
    from moto.servicequotas.models import servicequotas_backends

    return servicequotas_backends[account_id][region].__dict__.setdefault("_spotfill_applied", {})


def set_service_quota(
    quota_code: str, value: float | None, *, region: str = "us-east-1", account_id: str = "123456789012"
) -> None:
    """Apply an EC2 quota value in the emulated account, up or down (AWS needs a request and its approval);
    None: never changed (GetServiceQuota answers NoSuchResourceException, and the AWS default applies)."""
    patch_account_limits()
    if _spot_quota(quota_code, 0.0, region, account_id) is None:
        raise ValueError(f"{quota_code} is not an EC2 Spot vCPU quota the emulator serves")
    applied = _applied_quotas(account_id, region)
    if value is None:
        applied.pop(("ec2", quota_code), None)
    else:
        applied[("ec2", quota_code)] = float(value)


# The local cloud's account has run spot before: its quotas were raised from a new account's.
LOCAL_CLOUD_SPOT_VCPUS = {"L-34B43A08": 256.0, "L-3819A6DF": 64.0}


def raise_spot_quotas(region: str, account_id: str = "123456789012") -> None:
    """Apply `LOCAL_CLOUD_SPOT_VCPUS` (the local cloud does at start; demos need more than 5 vCPUs)."""
    for code, vcpus in LOCAL_CLOUD_SPOT_VCPUS.items():
        set_service_quota(code, vcpus, region=region, account_id=account_id)


def set_instance_type_offerings(
    instance_type: str, zones: list[str], *, region: str = "us-east-1", account_id: str = "123456789012"
) -> None:
    """Offer `instance_type` in exactly these availability zones of the emulated Region (none: nowhere)."""
    from moto.ec2.models import ec2_backends

    patch_account_limits()
    backend = ec2_backends[account_id][region]
    backend.__dict__.setdefault("_spotfill_offerings", {})[instance_type] = list(zones)


def patch_account_limits() -> None:
    """Serve EC2 Spot vCPU quotas, controllable instance type offerings, a spot market with prices and the
    Price List's on-demand prices (idempotent, in process: the local cloud's server and the tests'
    in-process moto alike)."""
    global _limits_patched
    with _limits_lock:
        if _limits_patched:
            return
        _patch_service_quotas()
        _patch_instance_type_offerings()
        quote_spot_prices()
        install_in_process()
        _limits_patched = True


def _patch_service_quotas() -> None:
    from moto.core.exceptions import JsonRESTError
    from moto.servicequotas.models import ServiceQuotasBackend
    from moto.servicequotas.responses import ServiceQuotasResponse

    def no_such_quota(code: str) -> JsonRESTError:
        return JsonRESTError("NoSuchResourceException", f"The quota {code} has no applied value.")

    original_get = ServiceQuotasBackend.get_service_quota

    def get_service_quota(self: Any, service_code: str, quota_code: str) -> dict[str, Any]:
        if service_code != "ec2":
            return original_get(self, service_code, quota_code)
        applied = self.__dict__.get("_spotfill_applied", {}).get((service_code, quota_code))
        quota = _spot_quota(quota_code, applied or 0.0, self.region_name, self.account_id)
        if quota is None or applied is None:  # never changed from its default: AWS has no applied value
            raise no_such_quota(quota_code)
        return quota

    def get_aws_default_service_quota(self: Any, service_code: str, quota_code: str) -> dict[str, Any]:
        value = AWS_DEFAULT_SPOT_VCPUS.get(quota_code, 0.0)
        quota = _spot_quota(quota_code, value, self.region_name, None) if service_code == "ec2" else None
        if quota is None:
            raise no_such_quota(quota_code)
        return quota

    def request_service_quota_increase(
        self: Any, service_code: str, quota_code: str, desired: float
    ) -> dict[str, Any]:
        current = self.__dict__.get("_spotfill_applied", {}).get((service_code, quota_code))
        if current is None:
            current = get_aws_default_service_quota(self, service_code, quota_code)["Value"]
        if desired <= current:
            raise JsonRESTError(
                "IllegalArgumentException",
                f"The desired value {desired:g} is not above the quota {current:g}.",
            )
        self.__dict__.setdefault("_spotfill_applied", {})[(service_code, quota_code)] = float(desired)
        quota = get_service_quota(self, service_code, quota_code)
        return {
            "Id": f"{quota_code}-{int(desired)}",
            "ServiceCode": service_code,
            "ServiceName": quota["ServiceName"],
            "QuotaCode": quota_code,
            "QuotaName": quota["QuotaName"],
            "DesiredValue": float(desired),
            "Status": "APPROVED",
            "QuotaArn": quota["QuotaArn"],
            "GlobalQuota": False,
            "Unit": "None",
        }

    ServiceQuotasBackend.get_service_quota = get_service_quota
    ServiceQuotasBackend.get_aws_default_service_quota = get_aws_default_service_quota
    ServiceQuotasBackend.request_service_quota_increase = request_service_quota_increase

    def respond_default(self: Any) -> str:
        params = json.loads(self.body)
        quota = self.backend.get_aws_default_service_quota(params["ServiceCode"], params["QuotaCode"])
        return json.dumps({"Quota": quota})

    def respond_increase(self: Any) -> str:
        params = json.loads(self.body)
        requested = self.backend.request_service_quota_increase(
            params["ServiceCode"], params["QuotaCode"], float(params["DesiredValue"])
        )
        return json.dumps({"RequestedQuota": requested})

    ServiceQuotasResponse.get_aws_default_service_quota = respond_default
    ServiceQuotasResponse.request_service_quota_increase = respond_increase


def _patch_instance_type_offerings() -> None:
    from moto.ec2.models.instance_types import InstanceTypeOfferingBackend

    original = InstanceTypeOfferingBackend.describe_instance_type_offerings

    def describe_instance_type_offerings(
        self: Any, location_type: str | None = None, filters: dict[str, Any] | None = None
    ) -> list[Any]:
        found = original(self, location_type, filters)
        overrides: dict[str, list[str]] = self.__dict__.get("_spotfill_offerings", {})
        if not overrides:
            return found
        location_type = location_type or "region"
        zone_ids = {z.name: z.zone_id for z in self.describe_availability_zones()}
        kept = [o for o in found if o["InstanceType"] not in overrides]
        for instance_type, zones in overrides.items():
            if location_type == "region":
                locations = [self.region_name] if zones else []
            elif location_type == "availability-zone-id":
                locations = [zone_ids[z] for z in zones if z in zone_ids]
            else:
                locations = list(zones)
            for location in locations:
                offering = {
                    "InstanceType": instance_type,
                    "LocationType": location_type,
                    "Location": location,
                }
                if self.matches_filters(offering, filters or {}, location_type):
                    kept.append(offering)
        return kept

    InstanceTypeOfferingBackend.describe_instance_type_offerings = describe_instance_type_offerings
