"""The control functions' configuration, parsed once from the environment the template sets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spotfill_control.errors import ConfigurationError
from spotfill_control.instance_types import InstanceTypeFacts


class Settings(BaseModel):
    """Every control function gets the same environment (template `Globals.Function.Environment`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    control_bucket: str = Field(alias="CONTROL_BUCKET", min_length=3)
    worker_image: str = Field(alias="WORKER_IMAGE", min_length=1)
    # The worker image for arm64 (Graviton) instance types; empty: the stack runs x86_64 types only.
    worker_image_arm64: str = Field(default="", alias="WORKER_IMAGE_ARM64")
    task_role_arn: str = Field(alias="TASK_ROLE_ARN", min_length=1)
    execution_role_arn: str = Field(alias="EXECUTION_ROLE_ARN", min_length=1)
    fleet_role_arn: str = Field(alias="FLEET_ROLE_ARN", min_length=1)
    instance_profile_arn: str = Field(alias="INSTANCE_PROFILE_ARN", min_length=1)
    launch_template_id: str = Field(alias="LAUNCH_TEMPLATE_ID", min_length=1)
    # The stack's launch template version (CloudFormation's LatestVersionNumber): runs derive theirs from it.
    launch_template_version: str = Field(alias="LAUNCH_TEMPLATE_VERSION", pattern=r"^[1-9][0-9]*$")
    security_group_id: str = Field(alias="SECURITY_GROUP_ID", min_length=1)
    default_subnets: tuple[str, ...] = Field(alias="DEFAULT_SUBNETS")
    worker_log_group: str = Field(alias="WORKER_LOG_GROUP", min_length=1)
    notification_topic_arn: str = Field(alias="NOTIFICATION_TOPIC_ARN", min_length=1)
    event_bus_name: str = Field(alias="EVENT_BUS_NAME", min_length=1)

    @field_validator("default_subnets", mode="before")
    @classmethod
    def _split_subnets(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(s.strip() for s in value.split(",") if s.strip())
        return value

    def worker_image_of(self, architecture: str) -> str:
        """The worker image built for this CPU architecture ("x86_64" or "arm64")."""
        return self.worker_image_arm64 if architecture == "arm64" else self.worker_image

    def worker_image_for(self, facts: Mapping[str, InstanceTypeFacts]) -> str:
        """The worker image of a run of these instance types (one architecture; x86_64 when none known)."""
        return self.worker_image_of(next((f.architecture for f in facts.values()), "x86_64"))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Settings:
        try:
            return cls.model_validate(dict(environ))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigurationError(f"invalid function environment: {problems}") from exc


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The settings of this process, read at first use (cold start) and cached."""
    return Settings.from_environment(os.environ)
