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
    RegistrationTimeoutError,
    RunTimeoutError,
    TransientAwsError,
)
from spotfill_control.instance_types import CATALOG
from spotfill_control.run import RUN_ID_TAG, RunState, utcnow
from spotfill_control.spec import FleetSpec

# The launch template's base version holds the CPU AMI; GPU fleets get the GPU variant in their own version.
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


# Base-version keys restated in the run's version. `SourceVersion` already inherits everything on EC2; these
# are restated so the version is complete on emulators that ignore it (request and response shapes agree).
_INHERITED_KEYS = (
    "ImageId",
    "IamInstanceProfile",
    "MetadataOptions",
    "SecurityGroupIds",
    "BlockDeviceMappings",
    "Monitoring",
    "EbsOptimized",
)


def launch_template_data(
    run: RunState, base: dict[str, Any] | None = None, gpu_image_id: str | None = None
) -> dict[str, Any]:
    """The run's version: the base version's AMI, IMDSv2 options, profile and security groups, plus the run's
    user data and tags (and the GPU AMI for GPU fleets)."""
    base = base or {}
    data: dict[str, Any] = {key: base[key] for key in _INHERITED_KEYS if key in base}
    run_tags = [{"Key": RUN_ID_TAG, "Value": run.run_id}, {"Key": "Name", "Value": run.scoped_name}]
    base_tags = {spec["ResourceType"]: spec.get("Tags", []) for spec in base.get("TagSpecifications", [])}
    data["TagSpecifications"] = [
        {
            "ResourceType": resource,
            "Tags": [t for t in base_tags.get(resource, []) if t["Key"] not in (RUN_ID_TAG, "Name")]
            + run_tags,
        }
        for resource in ("instance", "volume")
    ]
    data["UserData"] = user_data(run)
    if gpu_image_id:
        data["ImageId"] = gpu_image_id
    return data


def create_launch_template_version(run: RunState, ec2: Any, ssm: Any, settings: Settings) -> int:
    gpu_image_id = None
    if run.spec.fleet.uses_gpu:
        gpu_image_id = ssm.get_parameter(Name=GPU_AMI_PARAMETER)["Parameter"]["Value"]
    try:
        base = ec2.describe_launch_template_versions(
            LaunchTemplateId=settings.launch_template_id, Versions=["$Default"]
        )["LaunchTemplateVersions"][0]
        response = ec2.create_launch_template_version(
            LaunchTemplateId=settings.launch_template_id,
            SourceVersion=str(base["VersionNumber"]),
            VersionDescription=f"spotfill run {run.run_id}",
            LaunchTemplateData=launch_template_data(run, base.get("LaunchTemplateData", {}), gpu_image_id),
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
