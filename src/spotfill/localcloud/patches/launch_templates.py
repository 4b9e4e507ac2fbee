"""Amazon EC2 launch templates: versions made from a source version, and versions deleted.

- `CreateLaunchTemplateVersion`: moto ignores `SourceVersion`, so a version holds only the data sent. EC2
  starts the new version from the source version's launch parameters and overwrites those the request names;
  the run's version sends only what the run changes, so it is done here as EC2 does it.
- `DeleteLaunchTemplateVersions` is not implemented by moto (a 500); teardown removes the run's launch
  template version with it, so it is implemented here (deleted versions vanish from describe calls).

AWS documentation followed:
- "CreateLaunchTemplateVersion", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateLaunchTemplateVersion.html
- "DeleteLaunchTemplateVersions", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteLaunchTemplateVersions.html
- "ResponseError" (the per-version error codes), Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ResponseError.html
"""

from __future__ import annotations

import copy
from typing import Any

from spotfill.localcloud.patches.once import once


def inherit_launch_template_source_versions() -> None:
    """`CreateLaunchTemplateVersion` with `SourceVersion`: the new version is the source version's launch
    parameters with those the request gives overwritten (top-level keys, as EC2 documents it)."""
    if not once("inherit_launch_template_source_versions"):
        return
    from moto.core.responses import ActionResult
    from moto.ec2.responses.launch_templates import LaunchTemplates

    original = LaunchTemplates.create_launch_template_version

    def create_launch_template_version(self: Any) -> Any:
        source = self._get_param("SourceVersion")
        if source is None:
            return original(self)
        name = self._get_param("LaunchTemplateName")
        template_id = self._get_param("LaunchTemplateId")
        if template_id:
            template = self.ec2_backend.get_launch_template(template_id)
        else:
            template = self.ec2_backend.get_launch_template_by_name(name)
        data = copy.deepcopy(template.get_version(source).data)  # a missing source version is an error
        data.update(self._get_param("LaunchTemplateData", {}))
        self.error_on_dryrun()
        version = template.create_version(data, self._get_param("VersionDescription"))
        return ActionResult(
            {
                "LaunchTemplateVersion": {
                    "CreateTime": version.create_time,
                    "CreatedBy": f"arn:{self.partition}:iam::{self.current_account}:root",
                    "DefaultVersion": template.is_default(version),
                    "LaunchTemplateData": version.data,
                    "LaunchTemplateId": template.id,
                    "LaunchTemplateName": template.name,
                    "VersionDescription": version.description,
                    "VersionNumber": version.number,
                }
            }
        )

    LaunchTemplates.create_launch_template_version = create_launch_template_version


def delete_launch_template_versions_as_ec2_does() -> None:
    """`DeleteLaunchTemplateVersions`, which moto 5.2.5 does not implement (idempotent).

    As on EC2: a deleted version can no longer be described or launched from and its number is never reused,
    `$Latest` is the newest remaining version, and a version that cannot be deleted (missing, or the default)
    is reported per version in the response (`launchTemplateVersionDoesNotExist`, `unexpectedError`: the
    only codes the API's `ResponseError` has), not raised."""
    if not once("delete_launch_template_versions_as_ec2_does"):
        return
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import InvalidLaunchTemplateVersionNotFound
    from moto.ec2.models.launch_templates import LaunchTemplate, LaunchTemplateBackend
    from moto.ec2.responses.launch_templates import LaunchTemplates

    original_get_version = LaunchTemplate.get_version
    original_describe = LaunchTemplateBackend.describe_launch_template_versions

    def deleted(template: Any) -> set[int]:
        return template.__dict__.setdefault("_spotfill_deleted_versions", set())

    def get_version(self: Any, num: Any) -> Any:
        if str(num).lower() == "$latest":
            for version in reversed(self.versions):
                if version.number not in deleted(self):
                    return version
        version = original_get_version(self, num)
        if version.number in deleted(self):
            raise InvalidLaunchTemplateVersionNotFound(template_id=self.id, version=num)
        return version

    def describe_launch_template_versions(self: Any, *args: Any, **kwargs: Any) -> Any:
        return [(t, v) for t, v in original_describe(self, *args, **kwargs) if v.number not in deleted(t)]

    def delete_launch_template_versions(self: Any) -> ActionResult:
        name = self._get_param("LaunchTemplateName")
        template_id = self._get_param("LaunchTemplateId")
        self.error_on_dryrun()
        template = (
            self.ec2_backend.get_launch_template(template_id)
            if template_id
            else self.ec2_backend.get_launch_template_by_name(name)
        )
        done, failed = [], []
        for raw in self._get_param("Versions", []):
            entry = {"LaunchTemplateId": template.id, "LaunchTemplateName": template.name}
            number = int(raw) if str(raw).isdigit() else None
            if number is None or number < 1 or number > len(template.versions) or number in deleted(template):
                code, message = (
                    "launchTemplateVersionDoesNotExist",
                    "The specified launch template version does not exist.",
                )
            elif number == template.default_version_number:
                code, message = (
                    "unexpectedError",
                    "You cannot delete the default version of a launch template.",
                )
            else:
                deleted(template).add(number)
                done.append({**entry, "VersionNumber": number})
                continue
            failed.append(
                {**entry, "VersionNumber": number or 0, "ResponseError": {"Code": code, "Message": message}}
            )
        return ActionResult(
            {
                "SuccessfullyDeletedLaunchTemplateVersions": done,
                "UnsuccessfullyDeletedLaunchTemplateVersions": failed,
            }
        )

    LaunchTemplate.get_version = get_version
    LaunchTemplateBackend.describe_launch_template_versions = describe_launch_template_versions
    LaunchTemplates.delete_launch_template_versions = delete_launch_template_versions
