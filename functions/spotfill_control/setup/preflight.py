"""Preflight: what the account must allow before a run spends anything (Validate calls it last).

Three checks, each failing with one `InvalidSpecError` sentence that names what to change:

1. Spot vCPU quotas. Fleet capacity is weighted by vCPUs, or GPUs for GPU types
   (`instance_types.capacity_weights`); the fleet keeps
   launching while its fulfilled capacity is below the target, so it may end above it by up to one instance
   of the largest type. The worst case, per quota family (Standard, G and VT, P, ...), must fit the account's
   quota (Service Quotas `GetServiceQuota`, or `GetAWSDefaultServiceQuota` where the quota was never changed)
   less what running spot instances already use (the quota's CloudWatch usage metric, `AWS/Usage`).
2. Instance type offerings: a requested type offered in none of the subnets' zones cannot launch at all;
   one offered in only some of them is noted (the fleet places it only there).
3. The worker image, where it is in ECR (`<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>` or
   `@sha256:<digest>`): the tag or digest must exist. Images elsewhere (Docker Hub, public ECR) are not
   checked.

Transient AWS errors (throttling, 5xx) become `TransientAwsError`, which the state machine retries.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control.aws import transient_errors_retried
from spotfill_control.errors import InvalidSpecError
from spotfill_control.instance_types import InstanceTypeFacts, describe_instance_types
from spotfill_control.run import utcnow
from spotfill_control.setup import prices
from spotfill_control.spec import BackfillSpec

# ---------------------------------------------------------------------------------------------- quotas


@dataclass(frozen=True)
class SpotQuota:
    """One EC2 Spot vCPU quota (service code `ec2`) and the instance families it covers."""

    code: str
    name: str
    family: str  # short name for messages
    prefixes: tuple[str, ...]  # instance family prefixes (the letters before the generation digit)


# The EC2 Spot vCPU quotas, per Region (Amazon EC2 User Guide, "Spot Instance quotas").
SPOT_QUOTAS: tuple[SpotQuota, ...] = (
    SpotQuota(
        "L-34B43A08",
        "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
        "Standard",
        ("a", "c", "d", "h", "i", "m", "r", "t", "z"),
    ),
    SpotQuota("L-3819A6DF", "All G and VT Spot Instance Requests", "G and VT", ("g", "vt")),
    SpotQuota("L-7212CCBC", "All P4, P3 and P2 Spot Instance Requests", "P", ("p",)),
    SpotQuota("L-88CF9481", "All F Spot Instance Requests", "F", ("f",)),
    SpotQuota("L-B5D1601B", "All Inf Spot Instance Requests", "Inf", ("inf",)),
    SpotQuota("L-E3A00192", "All X Spot Instance Requests", "X", ("x",)),
    SpotQuota("L-85EED4F7", "All DL Spot Instance Requests", "DL", ("dl",)),
    SpotQuota("L-5480EFD2", "All Trn Spot Instance Requests", "Trn", ("trn",)),
)
_FAMILY = re.compile(r"^([a-z]+)\d")


def spot_quota_of(instance_type: str) -> SpotQuota:
    """The Spot vCPU quota an instance type counts against, from its family letters: an exact family prefix
    (`inf2` -> Inf, `trn1` -> Trn, `dl1` -> DL, `vt1` -> G and VT), else the first letter (`c7gn` -> Standard,
    `im4gn` -> Standard, `g6e` -> G and VT, `p5` -> P, `x2iedn` -> X)."""
    match = _FAMILY.match(instance_type)
    letters = match.group(1) if match else ""
    for candidate in (letters, letters[:1]):
        for quota in SPOT_QUOTAS:
            if candidate and candidate in quota.prefixes:
                return quota
    raise InvalidSpecError(
        f"fleet.instance_types: {instance_type} belongs to no EC2 Spot vCPU quota (families A, C, D, H, I, "
        "M, R, T, Z, G, VT, P, X, DL, Inf, F, Trn run as spot)."
    )


def _sums_below(values: list[int], bound: int) -> int:
    """The largest sum of `values` (each usable any number of times, or none) that is below `bound`."""
    mask = (1 << bound) - 1
    reachable = 1  # bit n set: a sum of n is reachable
    for value in values:
        step = value
        while step < bound:  # closing under +value, +2 value, +4 value, ... covers every multiple
            reachable |= (reachable << step) & mask
            step *= 2
    return reachable.bit_length() - 1


def _most_vcpus_below(items: list[tuple[int, int]], bound: int) -> int:
    """The most vCPUs of any mix of (capacity measure, vCPUs) items, each usable any number of times, whose
    measures sum below `bound` (an unbounded knapsack over the measure)."""
    best = [0] * max(bound, 1)
    for capacity in range(1, bound):
        best[capacity] = max(
            [best[capacity - 1]] + [best[capacity - m] + v for m, v in items if m <= capacity]
        )
    return best[bound - 1] if bound > 0 else 0


def worst_case_vcpus(facts: dict[str, InstanceTypeFacts], target_capacity: int) -> dict[SpotQuota, int]:
    """Per quota, the most vCPUs of that quota's types a fleet of this target capacity may run at once.

    Capacity is weighted (`instance_types.capacity_weights`: vCPUs, or GPUs for GPU types, over the smallest),
    and the fleet launches while below its target: the worst case for a quota is every instance from its
    types, the most vCPUs whose capacity is still below the target, plus one more of its largest type."""
    measure = {name: (f.gpus if f.is_gpu else f.vcpus) for name, f in facts.items()}
    bound = target_capacity * min(measure.values())
    by_quota: dict[SpotQuota, list[InstanceTypeFacts]] = {}
    for name, f in facts.items():
        by_quota.setdefault(spot_quota_of(name), []).append(f)
    worst: dict[SpotQuota, int] = {}
    for quota, members in by_quota.items():
        vcpus = [f.vcpus for f in members]
        if all(measure[f.name] == f.vcpus for f in members):  # weights are vCPUs: a fast bitset
            below = _sums_below(vcpus, bound)
        else:
            below = _most_vcpus_below([(measure[f.name], f.vcpus) for f in members], bound)
        worst[quota] = below + max(vcpus)
    return worst


@dataclass(frozen=True)
class QuotaValue:
    quota: SpotQuota
    value: float
    region: str
    usage_metric: dict[str, Any] | None  # the quota's `UsageMetric`, when Service Quotas gives one


def read_spot_quota(quota: SpotQuota, servicequotas: Any) -> QuotaValue:
    """The applied value; a quota never changed from its default answers NoSuchResourceException, then the
    AWS default applies."""
    region = servicequotas.meta.region_name
    with transient_errors_retried(f"servicequotas.get_service_quota {quota.code}"):
        try:
            found = servicequotas.get_service_quota(ServiceCode="ec2", QuotaCode=quota.code)["Quota"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchResourceException":
                raise
            found = servicequotas.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=quota.code)[
                "Quota"
            ]
    return QuotaValue(quota, float(found["Value"]), region, found.get("UsageMetric") or None)


def read_usage(metric: dict[str, Any] | None, cloudwatch: Any, now: datetime) -> float:
    """vCPUs the account's running spot instances use now: the latest value of the quota's usage metric over
    the last 15 minutes (AWS publishes it every minute while there is usage; none means none)."""
    if not metric or not metric.get("MetricNamespace") or not metric.get("MetricName"):
        return 0.0
    statistic = metric.get("MetricStatisticRecommendation") or "Maximum"
    with transient_errors_retried("cloudwatch.get_metric_statistics"):
        points = cloudwatch.get_metric_statistics(
            Namespace=metric["MetricNamespace"],
            MetricName=metric["MetricName"],
            Dimensions=[{"Name": k, "Value": v} for k, v in (metric.get("MetricDimensions") or {}).items()],
            StartTime=now - timedelta(minutes=15),
            EndTime=now,
            Period=60,
            Statistics=[statistic],
        )["Datapoints"]
    if not points:
        return 0.0
    return float(max(points, key=lambda p: p["Timestamp"])[statistic])


def _largest_fitting_capacity(facts: dict[str, InstanceTypeFacts], quota: SpotQuota, available: float) -> int:
    """The largest target capacity whose worst case for `quota` fits `available` vCPUs (0: none does)."""
    low, high = 0, 5000
    while low < high:
        middle = (low + high + 1) // 2
        if worst_case_vcpus(facts, middle)[quota] <= available:
            low = middle
        else:
            high = middle - 1
    return low


def check_spot_quotas(
    spec: BackfillSpec,
    facts: dict[str, InstanceTypeFacts],
    servicequotas: Any,
    cloudwatch: Any,
    now: datetime,
) -> None:
    fleet = spec.fleet
    # The on-demand base never runs on spot; the on-demand fallback only moves spot units on demand (its
    # probes hand them back as spot, never more than the spot part), so spot holds at most the rest.
    spot_capacity = fleet.target_capacity - fleet.on_demand_base
    if spot_capacity <= 0:
        return
    for quota, worst in worst_case_vcpus(facts, spot_capacity).items():
        found = read_spot_quota(quota, servicequotas)
        used = read_usage(found.usage_metric, cloudwatch, now)
        available = found.value - used
        if worst <= available:
            continue
        fits = _largest_fitting_capacity(facts, quota, available)
        lower = (
            f"lower fleet.target_capacity to {fits + fleet.on_demand_base} or less"
            if fits or fleet.on_demand_base
            else "no target capacity fits what is left"
        )
        spot_part = (
            f" ({spot_capacity} of them spot, above fleet.on_demand_base {fleet.on_demand_base})"
            if fleet.on_demand_base
            else ""
        )
        raise InvalidSpecError(
            f"fleet.target_capacity: {fleet.target_capacity}{spot_part} may launch up to {worst:g} vCPUs of "
            f"{quota.family} spot instances ({', '.join(fleet.instance_types)}), but the account's quota "
            f'"{quota.name}" ({quota.code}) in {found.region} is {found.value:g} vCPUs, shared by every '
            f"running spot instance of the account and Region, {used:g} of them in use now: {lower}, or "
            f"request an increase of {quota.code} to at least {used + worst:g} vCPUs in the Service Quotas "
            "console."
        )


# ---------------------------------------------------------------------------------------------- offerings


@dataclass(frozen=True)
class Offerings:
    zones: dict[str, str]  # subnet -> availability zone
    offered: dict[str, list[str]]  # instance type -> the subnets' zones that offer it

    def notes(self) -> list[str]:
        all_zones = sorted(set(self.zones.values()))
        return [
            f"{name} is offered in {', '.join(zones)} only, of the subnets' zones {', '.join(all_zones)}: "
            "the fleet places it only there"
            for name, zones in self.offered.items()
            if zones and len(zones) < len(all_zones)
        ]


def check_offerings(spec: BackfillSpec, subnets: list[str], ec2: Any) -> Offerings:
    """Every requested type must be offered in at least one of the subnets' availability zones."""
    with transient_errors_retried("ec2.describe_subnets"):
        try:
            described = ec2.describe_subnets(SubnetIds=subnets)["Subnets"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code != "InvalidSubnetID.NotFound":
                raise
            reason = exc.response["Error"].get("Message", code)
            raise InvalidSpecError(
                f"fleet.subnets: {reason} (subnets {', '.join(subnets)}): name subnets of this account and "
                "Region."
            ) from None
    zones = {s["SubnetId"]: s["AvailabilityZone"] for s in described}
    offered: dict[str, set[str]] = {name: set() for name in spec.fleet.instance_types}
    with transient_errors_retried("ec2.describe_instance_type_offerings"):
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone",
            Filters=[
                {"Name": "location", "Values": sorted(set(zones.values()))},
                {"Name": "instance-type", "Values": list(spec.fleet.instance_types)},
            ],
        )
        for page in pages:
            for offering in page["InstanceTypeOfferings"]:
                if offering["InstanceType"] in offered and offering["Location"] in zones.values():
                    offered[offering["InstanceType"]].add(offering["Location"])
    missing = [name for name, where in offered.items() if not where]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        where = ", ".join(sorted(set(zones.values())))
        raise InvalidSpecError(
            f"fleet.instance_types: {', '.join(missing)} {verb} not offered in any of the subnets' "
            f"availability zones ({where}): choose types offered there, or fleet.subnets in zones that offer "
            "them."
        )
    return Offerings(zones, {name: sorted(where) for name, where in offered.items()})


# ---------------------------------------------------------------------------------------------- image

_ECR_IMAGE = re.compile(
    r"^(?P<registry>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[a-z0-9][a-z0-9._/-]*?)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True)
class EcrImage:
    uri: str
    registry: str
    region: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def image_id(self) -> dict[str, str]:
        return {"imageDigest": self.digest} if self.digest else {"imageTag": self.tag or "latest"}

    @property
    def reference(self) -> str:
        return f"digest {self.digest}" if self.digest else f"tag {self.tag or 'latest'}"


def parse_ecr_image(uri: str) -> EcrImage | None:
    """The parts of a private ECR image URI; None for an image anywhere else (Docker Hub, public ECR)."""
    match = _ECR_IMAGE.match(uri)
    if match is None:
        return None
    return EcrImage(
        uri, match["registry"], match["region"], match["repository"], match["tag"], match["digest"]
    )


def check_worker_image(uri: str, ecr_in: Callable[[str], Any]) -> EcrImage | None:
    """The worker image exists, where it is in ECR; `ecr_in(region)` gives an ECR client of that Region."""
    image = parse_ecr_image(uri)
    if image is None:
        return None
    with transient_errors_retried("ecr.describe_images"):
        try:
            ecr_in(image.region).describe_images(
                registryId=image.registry, repositoryName=image.repository, imageIds=[image.image_id]
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            where = f"registry {image.registry} ({image.region})"
            if code == "RepositoryNotFoundException":
                problem = f"its repository {image.repository} does not exist in {where}"
            elif code == "ImageNotFoundException":
                problem = f"repository {image.repository} in {where} has no image with {image.reference}"
            else:
                raise
            raise InvalidSpecError(
                f"worker image {uri}: {problem}: push the worker image there (worker/Dockerfile), or set the "
                "stack's WorkerImage parameter to an image that exists."
            ) from None
    return image


# ---------------------------------------------------------------------------------------------- all


@dataclass
class Preflight:
    """The account's clients a preflight reads (`ecr_in(region)`: an ECR client of that Region; `pricing`: a
    Price List client of the endpoint of the Region's partition, None where it has none), and the notes of
    the last one (types offered in only some of the subnets' zones)."""

    servicequotas: Any
    cloudwatch: Any
    ec2: Any
    ecr_in: Callable[[str], Any]
    pricing: Any
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, client: Callable[..., Any]) -> Preflight:
        """The clients from a factory ``client(service, region=None)``: Validate's (the function's Region) or
        `spotfill plan`'s (the user's)."""
        ec2 = client("ec2")
        return cls(
            client("service-quotas"),
            client("cloudwatch"),
            ec2,
            lambda region: client("ecr", region),
            prices.price_list_client(ec2.meta.region_name, client),
        )

    def instance_types(self, spec: BackfillSpec) -> dict[str, InstanceTypeFacts]:
        """The spec's types as EC2 describes them, priced on demand (Price List, else the static table)."""
        facts = describe_instance_types(list(spec.fleet.instance_types), self.ec2)
        return prices.priced(facts, self.ec2.meta.region_name, self.pricing)

    def check(
        self,
        spec: BackfillSpec,
        facts: dict[str, InstanceTypeFacts],
        subnets: list[str],
        worker_image: str,
        now: datetime | None = None,
    ) -> None:
        """All three checks, cheapest failure first; raises `InvalidSpecError` naming what to change."""
        offerings = check_offerings(spec, subnets, self.ec2)
        check_spot_quotas(spec, facts, self.servicequotas, self.cloudwatch, now or utcnow())
        check_worker_image(worker_image, self.ecr_in)
        self.notes = offerings.notes()
