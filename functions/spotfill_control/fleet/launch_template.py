"""The run's launch template version (PrepareRun): the ECS-optimized AMI of the run's kind and the boot script
that joins the run's cluster, made from the stack's own version.
"""

from __future__ import annotations

import base64
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control.config import Settings
from spotfill_control.errors import (
    InvalidSpecError,
)
from spotfill_control.fleet.fleet_api import (
    call_error,
)
from spotfill_control.run import RUN_ID_TAG, RunState

# The ECS-optimized Amazon Linux 2023 AMIs, as public SSM parameters: x86_64, arm64 (Graviton), and the GPU
# variant (x86_64 only; Validate refuses arm64 GPU types).
CPU_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"


ARM64_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/arm64/recommended/image_id"


GPU_AMI_PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"


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
    if run.uses_gpu:
        lines.append("ECS_ENABLE_GPU_SUPPORT=true")
    lines.append("EOF")
    return base64.b64encode(("\n".join(lines) + "\n").encode()).decode()


def ami_parameter(run: RunState) -> str:
    """The public SSM parameter naming the AMI of the run's kind: GPU, arm64 or x86_64."""
    if run.uses_gpu:
        return GPU_AMI_PARAMETER
    return ARM64_AMI_PARAMETER if run.architecture == "arm64" else CPU_AMI_PARAMETER


def resolve_image_id(run: RunState, ssm: Any) -> str:
    """The current ECS-optimized AMI for the run's kind (GPU, arm64 or x86_64), read when the run starts."""
    name = ami_parameter(run)
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ParameterNotFound":
            raise call_error(f"ssm.get_parameter({name})", exc) from exc
        kind = "GPU " if run.uses_gpu else f"{run.architecture} "
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
        raise call_error(f"ec2.describe_launch_template_versions (stack version {source})", exc) from exc
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
        raise call_error("ec2.create_launch_template_version", exc) from exc
    return int(response["LaunchTemplateVersion"]["VersionNumber"])
