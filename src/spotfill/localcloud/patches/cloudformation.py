"""AWS CloudFormation: stack updates as CloudFormation makes them.

moto updates a resource only when its own template text changed or it `Ref`s a changed parameter, in
template order. CloudFormation updates every resource whose resolved properties changed (a
`Ref`/`Fn::GetAtt` of a resource that was updated or replaced, an `Fn::If` whose condition flipped), after
what it references; and a resource's `Fn::GetAtt` values are those of its last create or update, so an
`AWS::EC2::LaunchTemplate`'s `LatestVersionNumber` is the version CloudFormation made, not one made since
through the API (a run's own version). Both as CloudFormation does them, here.

AWS documentation followed:
- "Understand update behaviors of stack resources", AWS CloudFormation User Guide:
  https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/using-cfn-updating-stacks-update-behaviors.html
- "AWS::EC2::LaunchTemplate" (return values: `LatestVersionNumber`), AWS CloudFormation Template Reference:
  https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-ec2-launchtemplate.html
"""

from __future__ import annotations

import copy
import re
from typing import Any

from spotfill.localcloud.patches.once import once

_UNRESOLVED = object()


def update_stacks_as_cloudformation_does() -> None:
    """A stack update also updates every resource whose resolved properties changed, dependencies first;
    `Fn::GetAtt LaunchTemplate.LatestVersionNumber` is the version CloudFormation last made."""
    if not once("update_stacks_as_cloudformation_does"):
        return
    from moto.cloudformation import parsing
    from moto.ec2.models.launch_templates import LaunchTemplate

    original_update_resource = parsing.parse_and_update_resource

    def resolve(resource_map: Any, resource_json: dict[str, Any]) -> Any:
        try:
            return parsing.clean_json(copy.deepcopy(resource_json.get("Properties", {})), resource_map)
        except Exception:  # an attribute moto cannot give: nothing to compare
            return _UNRESOLVED

    def applied(resource_map: Any) -> dict[str, Any]:
        """The resolved properties each resource was last created or updated with."""
        return resource_map.__dict__.setdefault("_spotfill_applied", {})

    def parse_and_update_resource(
        logical_id: str, resource_json: dict[str, Any], resources_map: Any, *args: Any, **kwargs: Any
    ) -> Any:
        applied(resources_map)[logical_id] = resolve(resources_map, resource_json)
        return original_update_resource(logical_id, resource_json, resources_map, *args, **kwargs)

    parsing.parse_and_update_resource = parse_and_update_resource

    original_update = parsing.ResourceMap.update

    def update(self: Any, template: dict[str, Any], parameters: dict[str, Any] | None = None) -> None:
        before = applied(self)
        for name, resource_json in self._resource_json_map.items():
            before.setdefault(name, resolve(self, resource_json))
        original_update(self, template, parameters)
        resources = template["Resources"]

        def stale(name: str) -> bool:
            if name not in before or self._parsed_resources.get(name) is None:
                return False  # added by this update, or a type moto cannot create
            now, then = resolve(self, resources[name]), before[name]
            return _UNRESOLVED not in (now, then) and now != then

        updated: set[str] = set()
        while True:
            pending = [name for name in resources if name not in updated and stale(name)]
            # Dependencies first: a resource waits while something it references is still to be updated.
            ready = [n for n in pending if not (_referenced(resources[n]) & (set(pending) - {n}))] or pending
            if not ready:
                return
            name = ready[0]
            updated.add(name)
            resource_class = parsing.resource_class_from_type(resources[name]["Type"])
            if hasattr(resource_class.update_from_cloudformation_json, "__isabstractmethod__"):
                continue  # moto cannot update this type (nor would it on its own)
            changed = parse_and_update_resource(
                name, resources[name], self, account_id=self._account_id, region_name=self._region_name
            )
            if changed is not None:
                self._parsed_resources[name] = changed

    parsing.ResourceMap.update = update

    def remember_version(template: LaunchTemplate) -> LaunchTemplate:
        template.__dict__["_spotfill_cloudformation_version"] = template.latest_version_number
        return template

    create = LaunchTemplate.create_from_cloudformation_json.__func__
    update_template = LaunchTemplate.update_from_cloudformation_json.__func__
    LaunchTemplate.create_from_cloudformation_json = classmethod(  # type: ignore[method-assign]
        lambda cls, *args, **kwargs: remember_version(create(cls, *args, **kwargs))
    )
    LaunchTemplate.update_from_cloudformation_json = classmethod(  # type: ignore[method-assign]
        lambda cls, *args, **kwargs: remember_version(update_template(cls, *args, **kwargs))
    )
    original_attribute = LaunchTemplate.get_cfn_attribute

    def get_cfn_attribute(self: Any, attribute_name: str) -> Any:
        if attribute_name == "LatestVersionNumber" and "_spotfill_cloudformation_version" in self.__dict__:
            return str(self.__dict__["_spotfill_cloudformation_version"])
        return original_attribute(self, attribute_name)

    LaunchTemplate.get_cfn_attribute = get_cfn_attribute


def _referenced(node: Any) -> set[str]:
    """Logical ids a template fragment names through `Ref`, `Fn::GetAtt` or `Fn::Sub`."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else str(value).split(".")[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found.update(m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text))
                if isinstance(value, list):
                    found |= _referenced(value[1:])
            else:
                found |= _referenced(value)
    elif isinstance(node, list):
        for item in node:
            found |= _referenced(item)
    return found
