"""The EC2 instance types of a run: what each is (from EC2 itself) and what it costs on demand.

Any type the region offers may be used. Validate reads the spec's types once with `DescribeInstanceTypes`
(vCPUs, memory, GPUs, architecture, whether spot is a supported usage class) and prices them with the AWS
Price List (`setup.prices`); the result is cached on the run as `run.instance_types`, so every
later step (weights, quotas, the task definition, cost) reads the same facts without another call.

`STATIC_ON_DEMAND_USD` is not a catalog: it is the fallback price table (us-east-1, Linux, USD per hour)
used only when the Price List API cannot be reached or refuses, and every figure from it says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from spotfill_control.aws import transient_errors_retried
from spotfill_control.errors import InvalidSpecError

Architecture = Literal["x86_64", "arm64"]
PriceSource = Literal["price-list", "static-table", "unknown"]

# `<family>.<size>`: c5.xlarge, c7gn.large, u-6tb1.metal, r7iz.metal-16xl. Existence is EC2's to say.
INSTANCE_TYPE_NAME = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
# What DescribeInstanceTypes answers when a name is not an instance type of the region.
UNKNOWN_TYPE_CODES = frozenset({"InvalidInstanceType", "InvalidInstanceType.NotFound"})
_BRACKETED = re.compile(r"\[([^\]]*)\]")


class InstanceTypeFacts(BaseModel):
    """One instance type of the run as EC2 describes it, with its on-demand price and where that came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    vcpus: int
    memory_mib: int
    gpus: int
    architecture: Architecture
    on_demand_hourly_usd: float | None = None
    price_source: PriceSource = "unknown"

    @property
    def is_gpu(self) -> bool:
        return self.gpus > 0


# The fallback on-demand prices (us-east-1, Linux, shared tenancy, USD per hour). Only read when the Price
# List API cannot answer; a type not listed then has no on-demand price ("unknown").
STATIC_ON_DEMAND_USD: dict[str, float] = {
    "c5.large": 0.085,
    "c5.xlarge": 0.17,
    "c5.2xlarge": 0.34,
    "c5.4xlarge": 0.68,
    "c5.9xlarge": 1.53,
    "c5a.xlarge": 0.154,
    "c5a.2xlarge": 0.308,
    "c6i.xlarge": 0.17,
    "c6i.2xlarge": 0.34,
    "c6i.4xlarge": 0.68,
    "c6a.xlarge": 0.153,
    "c7i.xlarge": 0.1785,
    "m5.large": 0.096,
    "m5.xlarge": 0.192,
    "m5.2xlarge": 0.384,
    "m6i.xlarge": 0.192,
    "m6i.2xlarge": 0.384,
    "r5.xlarge": 0.252,
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.4xlarge": 1.204,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g6.xlarge": 0.805,
    "p3.2xlarge": 3.06,
}


def check_name(name: str) -> str:
    """A name shaped like an instance type (the spec checks only this; Validate asks EC2 if it exists)."""
    if not INSTANCE_TYPE_NAME.match(name):
        raise ValueError(
            f"{name!r} is not an instance type name (<family>.<size>, lower case, e.g. c7i.large, m7g.xlarge)"
        )
    return name


def facts_of(described: Mapping[str, Any]) -> InstanceTypeFacts:
    """An `InstanceTypeInfo` of DescribeInstanceTypes → its facts (price not yet known)."""
    gpus = sum(int(g.get("Count", 0)) for g in (described.get("GpuInfo") or {}).get("Gpus", []))
    architectures = (described.get("ProcessorInfo") or {}).get("SupportedArchitectures", [])
    name = described["InstanceType"]
    if "arm64" in architectures:
        architecture: Architecture = "arm64"
    elif "x86_64" in architectures:
        architecture = "x86_64"
    else:
        raise InvalidSpecError(
            f"fleet.instance_types: {name} runs {', '.join(architectures) or 'no listed architecture'}; "
            "spotfill runs x86_64 and arm64 (Linux) instance types only."
        )
    return InstanceTypeFacts(
        name=name,
        vcpus=int(described["VCpuInfo"]["DefaultVCpus"]),
        memory_mib=int(described["MemoryInfo"]["SizeInMiB"]),
        gpus=gpus,
        architecture=architecture,
    )


def _unknown_names(exc: ClientError, asked: Iterable[str]) -> list[str]:
    """The names EC2's InvalidInstanceType message lists (`... do not exist: [a.b, c.d]`), else all asked."""
    message = exc.response.get("Error", {}).get("Message", "")
    match = _BRACKETED.search(message)
    named = [n.strip() for n in match.group(1).split(",")] if match else []
    asked = list(asked)
    return [n for n in asked if n in named] or asked


def describe_instance_types(names: list[str], ec2: Any) -> dict[str, InstanceTypeFacts]:
    """The facts of each named type, in the spec's order, from one paginated DescribeInstanceTypes.

    A type the region does not have, or one that cannot run as spot, is an `InvalidSpecError` naming it."""
    region = ec2.meta.region_name
    described: dict[str, Mapping[str, Any]] = {}
    with transient_errors_retried("ec2.describe_instance_types"):
        try:
            for page in ec2.get_paginator("describe_instance_types").paginate(InstanceTypes=list(names)):
                for info in page.get("InstanceTypes", []):
                    described[info["InstanceType"]] = info
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in UNKNOWN_TYPE_CODES:
                raise
            unknown = _unknown_names(exc, names)
            raise InvalidSpecError(
                f"fleet.instance_types: {', '.join(unknown)} "
                f"{'is not an instance type' if len(unknown) == 1 else 'are not instance types'} of region "
                f"{region} (EC2 DescribeInstanceTypes: InvalidInstanceType)."
            ) from None
    missing = [n for n in names if n not in described]
    if missing:
        raise InvalidSpecError(
            f"fleet.instance_types: {', '.join(missing)}: not described by EC2 in region {region}."
        )
    no_spot = [n for n in names if "spot" not in described[n].get("SupportedUsageClasses", [])]
    if no_spot:
        raise InvalidSpecError(
            f"fleet.instance_types: {', '.join(no_spot)} cannot run as spot instances (EC2 lists no 'spot' "
            "usage class for it): choose types that support spot."
        )
    return {name: facts_of(described[name]) for name in names}


def check_fleet_kind(facts: Mapping[str, InstanceTypeFacts]) -> None:
    """One image runs on every instance of a run: the types share one architecture and are all CPU or all
    GPU; there is no arm64 GPU worker image."""
    arm_gpu = [f.name for f in facts.values() if f.is_gpu and f.architecture == "arm64"]
    if arm_gpu:
        raise InvalidSpecError(
            f"fleet.instance_types: {', '.join(arm_gpu)}: arm64 GPU types cannot run: the GPU image is "
            "built for x86_64 only: choose x86_64 GPU types (g4dn, g5, g6, g6e, ...)."
        )
    architectures = {f.architecture for f in facts.values()}
    if len(architectures) > 1:
        by = {a: [f.name for f in facts.values() if f.architecture == a] for a in sorted(architectures)}
        raise InvalidSpecError(
            "fleet.instance_types: mixes architectures ("
            + "; ".join(f"{a}: {', '.join(names)}" for a, names in by.items())
            + "); a run uses one worker image, so choose types of one architecture."
        )
    if len({f.is_gpu for f in facts.values()}) > 1:
        gpu = [f.name for f in facts.values() if f.is_gpu]
        raise InvalidSpecError(
            f"fleet.instance_types: mixes GPU types ({', '.join(gpu)}) and CPU types; a run uses one worker "
            "image, so choose GPU types only or CPU types only."
        )


def capacity_weights(facts: Mapping[str, InstanceTypeFacts]) -> dict[str, float]:
    """Each type's weighted capacity: GPUs / the fewest GPUs of any type for a GPU fleet (work is one task
    per GPU), else vCPUs / the fewest vCPUs; the smallest type weighs 1."""
    measure = {name: (f.gpus if f.is_gpu else f.vcpus) for name, f in facts.items()}
    smallest = min(measure.values())
    return {name: round(value / smallest, 3) for name, value in measure.items()}
