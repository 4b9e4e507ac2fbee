"""The run's Spot Fleet: its launch template version, the request, and reading its state back.

Capacity is weighted by vCPUs: the smallest instance type in the request weighs 1, a type with twice the
vCPUs weighs 2, so `fleet.target_capacity` means "this many of the smallest type, or the same vCPUs".
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control.aws import is_transient
from spotfill_control.cluster import count_registered_instances
from spotfill_control.config import Settings
from spotfill_control.errors import (
    FleetRequestError,
    InvalidSpecError,
    RegistrationTimeoutError,
    RunTimeoutError,
    TransientAwsError,
)
from spotfill_control.instance_types import CATALOG
from spotfill_control.run import RUN_ID_TAG, RunState, utcnow
from spotfill_control.spec import FleetSpec

# The ECS-optimized Amazon Linux 2023 AMIs, as public SSM parameters (every catalog type is x86_64).
CPU_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
GPU_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
LIVE_STATES = ("submitted", "active", "modifying")
FAILED_STATES = ("failed", "cancelled", "cancelled_running", "cancelled_terminating")


def _aws_error(what: str, exc: ClientError) -> Exception:
    if is_transient(exc):
        return TransientAwsError(f"{what}: {exc}")
    return FleetRequestError(f"{what}: {exc}")


# ------------------------------------------------------------------------------------------ launch template


def user_data(run: RunState) -> str:
    """Base64 of the boot script that joins the instance to the run's cluster, with spot draining on."""
    lines = [
        "#!/bin/bash",
        "set -euo pipefail",
        "cat >> /etc/ecs/ecs.config <<'EOF'",
        f"ECS_CLUSTER={run.scoped_name}",
        "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true",
        "ECS_CONTAINER_STOP_TIMEOUT=120s",
    ]
    if run.spec.fleet.uses_gpu:
        lines.append("ECS_ENABLE_GPU_SUPPORT=true")
    lines.append("EOF")
    return base64.b64encode(("\n".join(lines) + "\n").encode()).decode()


def ami_parameter(fleet: FleetSpec) -> str:
    """The public SSM parameter naming the AMI of the fleet's kind."""
    return GPU_AMI_PARAMETER if fleet.uses_gpu else CPU_AMI_PARAMETER


def resolve_image_id(run: RunState, ssm: Any) -> str:
    """The current ECS-optimized AMI for the run's kind (CPU or GPU), read when the run starts."""
    name = ami_parameter(run.spec.fleet)
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ParameterNotFound":
            raise _aws_error(f"ssm.get_parameter({name})", exc) from exc
        kind = "GPU " if run.spec.fleet.uses_gpu else ""
        raise InvalidSpecError(
            f"fleet.instance_types: region {ssm.meta.region_name} has no ECS-optimized Amazon Linux 2023 "
            f"{kind}AMI (public SSM parameter {name} not found), so "
            f"{', '.join(run.spec.fleet.instance_types)} cannot run here."
        ) from exc


def launch_template_data(
    run: RunState, image_id: str, source_tags: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """What the run's version changes in the stack's version; `SourceVersion` inherits the rest (instance
    profile, security group, IMDSv2 options, root volume). Only request-shaped values are sent, never members
    read back from DescribeLaunchTemplateVersions (its response shapes carry members the request rejects).

    - `ImageId`: the AMI of the run's kind.
    - `UserData`: joins the run's cluster.
    - `TagSpecifications`: the source version's tags (the `spotfill:stack` tag teardown terminates by), with
      the run's id and name added to instances and volumes; a version's `TagSpecifications` replaces its
      source's whole list, so every resource type the source tags is restated.
    """
    run_tags = [{"Key": RUN_ID_TAG, "Value": run.run_id}, {"Key": "Name", "Value": run.scoped_name}]
    tagged = {spec["ResourceType"]: list(spec.get("Tags", [])) for spec in source_tags or []}
    for resource in ("instance", "volume"):
        kept = [t for t in tagged.get(resource, []) if t["Key"] not in (RUN_ID_TAG, "Name")]
        tagged[resource] = kept + run_tags
    return {
        "ImageId": image_id,
        "UserData": user_data(run),
        "TagSpecifications": [
            {"ResourceType": resource, "Tags": [{"Key": t["Key"], "Value": t["Value"]} for t in tags]}
            for resource, tags in tagged.items()
        ],
    }


def create_launch_template_version(run: RunState, ec2: Any, settings: Settings, image_id: str) -> int:
    """The run's version, made from the stack's own version (`settings.launch_template_version`):
    CloudFormation adds a version on each stack update but never moves `$Default`, which stays the first."""
    source = settings.launch_template_version
    try:
        (base,) = ec2.describe_launch_template_versions(
            LaunchTemplateId=settings.launch_template_id, Versions=[source]
        )["LaunchTemplateVersions"]
    except ClientError as exc:
        raise _aws_error(f"ec2.describe_launch_template_versions (stack version {source})", exc) from exc
    try:
        response = ec2.create_launch_template_version(
            LaunchTemplateId=settings.launch_template_id,
            SourceVersion=source,
            VersionDescription=f"spotfill run {run.run_id}",
            LaunchTemplateData=launch_template_data(
                run, image_id, base.get("LaunchTemplateData", {}).get("TagSpecifications", [])
            ),
        )
    except ClientError as exc:
        raise _aws_error("ec2.create_launch_template_version", exc) from exc
    return int(response["LaunchTemplateVersion"]["VersionNumber"])


# ---------------------------------------------------------------------------------------------- request


def capacity_weights(instance_types: list[str]) -> dict[str, float]:
    """vCPUs of each type / vCPUs of the smallest (so the smallest weighs 1)."""
    smallest = min(CATALOG[name].vcpus for name in instance_types)
    return {name: round(CATALOG[name].vcpus / smallest, 3) for name in instance_types}


def subnets_for(fleet: FleetSpec, settings: Settings) -> list[str]:
    return list(fleet.subnets) or list(settings.default_subnets)


def build_fleet_request(run: RunState, settings: Settings, now: datetime) -> dict[str, Any]:
    """The `SpotFleetRequestConfig` for the run (pure: no AWS calls)."""
    if run.resources.launch_template_version is None:
        raise FleetRequestError("the run has no launch template version: PrepareRun did not finish")
    fleet = run.spec.fleet
    weights = capacity_weights(fleet.instance_types)
    started = run.timeline.started_at or now
    config: dict[str, Any] = {
        "ClientToken": run.run_id,
        "IamFleetRole": settings.fleet_role_arn,
        "AllocationStrategy": fleet.allocation_strategy,
        "TargetCapacity": fleet.target_capacity,
        "Type": "maintain",
        "ValidUntil": started + timedelta(seconds=run.spec.limits.max_runtime_seconds),
        "TerminateInstancesWithExpiration": True,
        "InstanceInterruptionBehavior": "terminate",
        "ReplaceUnhealthyInstances": False,
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": settings.launch_template_id,
                    "Version": str(run.resources.launch_template_version),
                },
                "Overrides": [
                    {"InstanceType": name, "SubnetId": subnet, "WeightedCapacity": weights[name]}
                    for name in fleet.instance_types
                    for subnet in subnets_for(fleet, settings)
                ],
            }
        ],
        "TagSpecifications": [
            {
                "ResourceType": "spot-fleet-request",
                "Tags": [{"Key": RUN_ID_TAG, "Value": run.run_id}, {"Key": "Name", "Value": run.scoped_name}],
            }
        ],
    }
    if fleet.max_hourly_price is not None:
        config["SpotMaxTotalPrice"] = f"{fleet.max_hourly_price:.4f}"
    return config


def find_live_fleet(run_id: str, ec2: Any) -> str | None:
    """The run's fleet if one is already requested and not cancelled (a retried Lambda must not add one)."""
    try:
        pages = ec2.get_paginator("describe_spot_fleet_requests").paginate()
        for page in pages:
            for config in page.get("SpotFleetRequestConfigs", []):
                tags = {t["Key"]: t["Value"] for t in config.get("Tags", [])}
                if tags.get(RUN_ID_TAG) == run_id and config.get("SpotFleetRequestState") in LIVE_STATES:
                    return config["SpotFleetRequestId"]
    except ClientError as exc:
        raise _aws_error("ec2.describe_spot_fleet_requests", exc) from exc
    return None


def request_fleet(run: RunState, ec2: Any, settings: Settings, now: datetime | None = None) -> str:
    """Request the run's fleet once: the ClientToken makes EC2 itself idempotent, the tag lookup covers
    emulators that ignore it."""
    existing = find_live_fleet(run.run_id, ec2)
    if existing:
        return existing
    now = now or utcnow()
    deadline = (run.timeline.started_at or now) + timedelta(seconds=run.spec.limits.max_runtime_seconds)
    if deadline <= now:
        raise RunTimeoutError(
            f"limits.max_runtime_seconds ({run.spec.limits.max_runtime_seconds} s) ran out before the fleet "
            "was requested"
        )
    try:
        response = ec2.request_spot_fleet(
            SpotFleetRequestConfig=build_fleet_request(run, settings, now or utcnow())
        )
    except ClientError as exc:
        raise _aws_error("ec2.request_spot_fleet", exc) from exc
    return response["SpotFleetRequestId"]


# ---------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class FleetStatus:
    state: str
    activity: str | None
    target_capacity: float
    fulfilled_capacity: float

    @property
    def fulfilled(self) -> bool:
        return self.target_capacity > 0 and self.fulfilled_capacity >= self.target_capacity


def describe_fleet(fleet_id: str, ec2: Any) -> FleetStatus:
    try:
        configs = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"]
    except ClientError as exc:
        raise _aws_error("ec2.describe_spot_fleet_requests", exc) from exc
    if not configs:
        raise FleetRequestError(f"spot fleet {fleet_id} no longer exists")
    config = configs[0]
    request = config.get("SpotFleetRequestConfig", {})
    return FleetStatus(
        state=config.get("SpotFleetRequestState", "unknown"),
        activity=config.get("ActivityStatus"),
        target_capacity=float(request.get("TargetCapacity", 0)),
        fulfilled_capacity=float(request.get("FulfilledCapacity", 0)),
    )


def check_fleet_healthy(fleet_id: str, status: FleetStatus) -> None:
    if status.state in FAILED_STATES:
        raise FleetRequestError(f"spot fleet {fleet_id} is {status.state}")
    if status.activity == "error":
        raise FleetRequestError(
            f"spot fleet {fleet_id} reports an error (see its request history: an invalid launch template, "
            "subnet, role or no capacity at the price cap)"
        )


# ---------------------------------------------------------------------------------------------- run steps


def start_fleet(run: RunState, ec2: Any, settings: Settings, now: datetime | None = None) -> RunState:
    """RequestFleet: request the run's fleet (once) and record it."""
    now = now or utcnow()
    fleet_id = request_fleet(run, ec2, settings, now)
    return run.stepped("fleet_requested", "fleet_requested_at", now, spot_fleet_request_id=fleet_id)


def check_registration(run: RunState, ec2: Any, ecs: Any, now: datetime | None = None) -> RunState:
    """CheckRegistration: fleet errors and timeouts fail; `registered` once an instance joined the cluster."""
    now = now or utcnow()
    fleet_id = run.resources.spot_fleet_request_id
    if fleet_id is None:
        raise FleetRequestError("the run has no spot fleet: RequestFleet did not finish")
    status = describe_fleet(fleet_id, ec2)
    check_fleet_healthy(fleet_id, status)
    timeline = run.timeline
    if status.fulfilled and timeline.fleet_fulfilled_at is None:
        timeline = timeline.model_copy(update={"fleet_fulfilled_at": now})
    registered = count_registered_instances(run, ecs)
    if registered > 0:
        return run.model_copy(
            update={
                "phase": "registered",
                "timeline": timeline.model_copy(update={"registered_at": timeline.registered_at or now}),
            }
        )
    requested_at = timeline.fleet_requested_at or now
    waited = (now - requested_at).total_seconds()
    if waited > run.spec.limits.registration_timeout_seconds:
        raise RegistrationTimeoutError(
            f"no instance of spot fleet {fleet_id} registered with cluster {run.scoped_name} within "
            f"{run.spec.limits.registration_timeout_seconds} s (fleet {status.state}, "
            f"{status.fulfilled_capacity:g} of {status.target_capacity:g} capacity fulfilled)"
        )
    return run.model_copy(update={"timeline": timeline})
