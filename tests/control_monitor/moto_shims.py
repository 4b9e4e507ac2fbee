"""DeleteLaunchTemplateVersions for moto 5.2.5, which does not implement it (it raises NotImplementedError).

Teardown deletes the run's launch template version, so the moto tests need the call to behave as in AWS:
a deleted version can no longer be described or launched from, `$Latest` moves back to the newest remaining
version, the default version cannot be deleted (`launchTemplateVersionDefaultVersionCannotBeDeleted`), and a
missing one is reported per version (`launchTemplateVersionDoesNotExist`) in the response, not raised.
`install()` patches moto's classes in this process (in-process `mock_aws` and a threaded moto server alike)
and is idempotent; the local cloud can install the same patch.
"""

from __future__ import annotations

from typing import Any

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import InvalidLaunchTemplateVersionNotFound
    from moto.ec2.models.launch_templates import LaunchTemplate, LaunchTemplateBackend
    from moto.ec2.responses.launch_templates import LaunchTemplates

    original_get_version = LaunchTemplate.get_version
    original_describe = LaunchTemplateBackend.describe_launch_template_versions

    def deleted(template: Any) -> set[int]:
        if not hasattr(template, "_deleted_versions"):
            template._deleted_versions = set()
        return template._deleted_versions

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
        numbers = self._get_param("Versions", [])
        template = (
            self.ec2_backend.get_launch_template_by_name(name)
            if name
            else self.ec2_backend.get_launch_template(template_id)
        )
        done, failed = [], []
        for raw in numbers:
            entry = {"LaunchTemplateId": template.id, "LaunchTemplateName": template.name}
            number = int(raw) if str(raw).isdigit() else None
            if number is None or number < 1 or number > len(template.versions) or number in deleted(template):
                code, message = (
                    "launchTemplateVersionDoesNotExist",
                    "The specified launch template version does not exist.",
                )
            elif number == template.default_version_number:
                code, message = (
                    "launchTemplateVersionDefaultVersionCannotBeDeleted",
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
    _installed = True
