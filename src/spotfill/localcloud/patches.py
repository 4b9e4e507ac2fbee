"""Where moto 5.2.5 differs from AWS in ways a backfill would notice, the local cloud fills the gap here.

Each patch is installed once per process by `install()` and changes moto's in-process models only (the
server runs in this process), never the code under test:

- Spot Fleet: moto launches every `LaunchTemplateConfigs` entry from the template's *latest* version and
  its first override only. AWS uses the version the request names and every override, and a run's
  isolation depends on its own version's user data (two runs at once would otherwise swap clusters).
- EC2 `CreateLaunchTemplateVersion`: moto ignores `SourceVersion`, so a version holds only the data sent. EC2
  starts the new version from the source version's launch parameters and overwrites those the request names;
  the run's version sends only what the run changes, so it is done here as EC2 does it.
- CloudFormation stack updates: moto updates a resource only when its own template text changed or it `Ref`s
  a changed parameter, in template order. CloudFormation updates every resource whose resolved properties
  changed (a `Ref`/`Fn::GetAtt` of a resource that was updated or replaced, an `Fn::If` whose condition
  flipped), after what it references; and a resource's `Fn::GetAtt` values are those of its last create or
  update, so an `AWS::EC2::LaunchTemplate`'s `LatestVersionNumber` is the version CloudFormation made, not one
  made since through the API (a run's own version). Both as CloudFormation does them, here.
- Spot Fleet instances start `pending` (moto makes them `running` at once); the EC2 emulator
  (`spotfill.localcloud.fleet`) makes them `running` after the boot delay.
- EC2 `DeleteLaunchTemplateVersions` is not implemented by moto (a 500); teardown removes the run's launch
  template version with it, so it is implemented here (deleted versions vanish from describe calls).
- Step Functions: with execution on, moto names an execution started without a name `None` (every such
  execution gets the same ARN); AWS names it with a UUID, and so does this.
- ECS: deregistering a container instance that is no longer registered is a 500 in moto (a bare
  `Exception`), which clients retry for a minute; ECS answers with a client error. So does this.
- EC2 `DescribeSpotPriceHistory` answers a placeholder price of $0.00001 stamped 2006, so every run would
  cost nothing. The emulated spot market quotes each type at `SPOT_DISCOUNT` of its on-demand price (the
  article's $0.50 against $1.42 per million predictions), from the start of the window asked for.
- EventBridge: moto delivers rule targets only to SQS, logs, buses and API destinations, and raises for
  any other target. AWS also starts Step Functions executions and invokes Lambda functions; those are
  delivered here, asynchronously as in AWS, with the target's `Input` / `InputPath` / `InputTransformer`
  applied (moto skips the transformer for S3 notifications).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from datetime import UTC, datetime
from typing import Any

import boto3

log = logging.getLogger(__name__)

_lock = threading.Lock()
_installed = False
_endpoint: dict[str, str] = {}


def install(endpoint_url: str) -> None:
    """Install the patches (idempotent) and point deliveries at this emulator endpoint."""
    global _installed
    with _lock:
        _endpoint["url"] = endpoint_url
        if _installed:
            return
        launch_fleets_from_requested_versions()
        _patch_pending_fleet_instances()
        inherit_launch_template_source_versions()
        update_stacks_as_cloudformation_does()
        _patch_delete_launch_template_versions()
        _patch_execution_names()
        _patch_ecs_deregistration_error()
        _patch_rule_targets()
        _patch_spot_price_history()
        _installed = True


# Patches other emulations of AWS install too (the Step Functions test harness, moto in process), each once.
_done: set[str] = set()
_done_lock = threading.Lock()


def _once(name: str) -> bool:
    """True the first time `name` is asked for in this process (the caller then installs it)."""
    with _done_lock:
        if name in _done:
            return False
        _done.add(name)
        return True


# --- Spot Fleet: the launch template version and every override ---------------------------------------


def launch_fleets_from_requested_versions() -> None:
    """A Spot Fleet launches from the launch template version its request names, with every override."""
    if not _once("launch_fleets_from_requested_versions"):
        return
    from moto.ec2.models.spot_requests import SpotFleetRequest

    original_init = SpotFleetRequest.__init__

    def __init__(self: Any, ec2_backend: Any, *args: Any, **kwargs: Any) -> None:
        configs = kwargs.get("launch_template_config")
        if configs:
            kwargs["launch_specs"] = list(kwargs.get("launch_specs") or []) + _launch_specs_from_templates(
                ec2_backend, configs
            )
            kwargs["launch_template_config"] = None
        original_init(self, ec2_backend, *args, **kwargs)

    SpotFleetRequest.__init__ = __init__


def _patch_pending_fleet_instances() -> None:
    from moto.ec2.models.spot_requests import SpotFleetRequest

    original_create = SpotFleetRequest.create_spot_requests

    def create_spot_requests(self: Any, weight_to_add: float) -> None:
        before = {id(r) for r in self.spot_requests}
        original_create(self, weight_to_add)
        for request in self.spot_requests:
            if id(request) not in before and request.instance is not None:
                request.instance._state.name, request.instance._state.code = "pending", 0

    SpotFleetRequest.create_spot_requests = create_spot_requests


def _launch_specs_from_templates(ec2_backend: Any, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = []
    for config in configs:
        ref = config.get("LaunchTemplateSpecification", {})
        if "LaunchTemplateId" in ref:
            template = ec2_backend.get_launch_template(template_id=ref["LaunchTemplateId"])
        else:
            template = ec2_backend.get_launch_template_by_name(name=ref["LaunchTemplateName"])
        data = copy.deepcopy(template.get_version(ref.get("Version", "$Default")).data)
        if "SecurityGroupIds" in data and "SecurityGroups" not in data:
            data["SecurityGroups"] = data["SecurityGroupIds"]
        for override in config.get("Overrides") or [{}]:
            spec = dict(data)
            spec.update({k: v for k, v in override.items() if k != "Priority"})
            specs.append(spec)
    return specs


# --- EC2: CreateLaunchTemplateVersion from a source version ---------------------------------------------


def inherit_launch_template_source_versions() -> None:
    """`CreateLaunchTemplateVersion` with `SourceVersion`: the new version is the source version's launch
    parameters with those the request gives overwritten (top-level keys, as EC2 documents it)."""
    if not _once("inherit_launch_template_source_versions"):
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


# --- CloudFormation: stack updates ----------------------------------------------------------------------

_UNRESOLVED = object()


def update_stacks_as_cloudformation_does() -> None:
    """A stack update also updates every resource whose resolved properties changed, dependencies first;
    `Fn::GetAtt LaunchTemplate.LatestVersionNumber` is the version CloudFormation last made."""
    if not _once("update_stacks_as_cloudformation_does"):
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


# --- EC2: DeleteLaunchTemplateVersions ------------------------------------------------------------------


def _patch_delete_launch_template_versions() -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.models.launch_templates import LaunchTemplateBackend
    from moto.ec2.responses.launch_templates import LaunchTemplates

    def delete_launch_template_versions(self: Any) -> Any:
        name = self._get_param("LaunchTemplateName")
        template_id = self._get_param("LaunchTemplateId")
        versions = [str(v) for v in self._get_param("Versions", [])]
        self.error_on_dryrun()
        if template_id:
            template = self.ec2_backend.get_launch_template(template_id)
        else:
            template = self.ec2_backend.get_launch_template_by_name(name)
        deleted_numbers = template.__dict__.setdefault("_spotfill_deleted_versions", set())
        ok, failed = [], []
        for version in versions:
            entry = {"LaunchTemplateId": template.id, "LaunchTemplateName": template.name}
            number = int(version) if version.isdigit() else None
            if number is None or number < 1 or number > len(template.versions) or number in deleted_numbers:
                failed.append(
                    {
                        **entry,
                        "VersionNumber": number or 0,
                        "ResponseError": {
                            "Code": "launchTemplateVersionDoesNotExist",
                            "Message": "The specified launch template version does not exist.",
                        },
                    }
                )
            elif number == template.default_version_number:
                failed.append(
                    {
                        **entry,
                        "VersionNumber": number,
                        "ResponseError": {
                            "Code": "launchTemplateVersionIsDefault",
                            "Message": "The default version of a launch template cannot be deleted.",
                        },
                    }
                )
            else:
                deleted_numbers.add(number)
                ok.append({**entry, "VersionNumber": number})
        return ActionResult(
            {
                "SuccessfullyDeletedLaunchTemplateVersions": ok,
                "UnsuccessfullyDeletedLaunchTemplateVersions": failed,
            }
        )

    LaunchTemplates.delete_launch_template_versions = delete_launch_template_versions

    original_describe = LaunchTemplateBackend.describe_launch_template_versions

    def describe_launch_template_versions(self: Any, *args: Any, **kwargs: Any) -> Any:
        found = original_describe(self, *args, **kwargs)
        return [
            (template, version)
            for template, version in found
            if version.number not in template.__dict__.get("_spotfill_deleted_versions", set())
        ]

    LaunchTemplateBackend.describe_launch_template_versions = describe_launch_template_versions


# --- Step Functions: executions started without a name --------------------------------------------------


def _patch_execution_names() -> None:
    import uuid

    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    original_start = StepFunctionsParserBackend.start_execution

    def start_execution(
        self: Any, state_machine_arn: str, name: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        return original_start(self, state_machine_arn, name or str(uuid.uuid4()), *args, **kwargs)

    StepFunctionsParserBackend.start_execution = start_execution


# --- EC2: a spot market with prices ----------------------------------------------------------------------

SPOT_DISCOUNT = 0.35


def spot_price(instance_type: str) -> float | None:
    """The emulated spot price (USD per hour) of a type in the catalog, None for any other type."""
    from spotfill_control.instance_types import CATALOG

    known = CATALOG.get(instance_type)
    return None if known is None else round(known.on_demand_hourly_usd * SPOT_DISCOUNT, 6)


def _patch_spot_price_history() -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.responses.spot_instances import SpotInstances

    def describe_spot_price_history(self: Any) -> Any:
        # Every catalog type in every zone (moto's offerings leave some zones out, e.g. no c5 in us-east-1e,
        # while its fleets still place instances there).
        from spotfill_control.instance_types import CATALOG

        types = self._get_param("InstanceTypes", []) or sorted(CATALOG)
        zones = self._filters_from_querystring().get("availability-zone") or [
            zone.name for zone in self.ec2_backend.describe_availability_zones()
        ]
        start = self._get_param("StartTime") or datetime.now(UTC).isoformat()
        history = [
            {
                "InstanceType": instance_type,
                "ProductDescription": "Linux/UNIX (Amazon VPC)",
                "SpotPrice": f"{price:.6f}",
                "AvailabilityZone": zone,
                "Timestamp": start,
            }
            for instance_type in types
            if (price := spot_price(instance_type)) is not None
            for zone in zones
        ]
        return ActionResult({"SpotPriceHistory": history})

    SpotInstances.describe_spot_price_history = describe_spot_price_history


# --- ECS: deregistering an unknown container instance --------------------------------------------------


def _patch_ecs_deregistration_error() -> None:
    from moto.ecs.exceptions import InvalidParameterException
    from moto.ecs.models import EC2ContainerServiceBackend

    original = EC2ContainerServiceBackend.deregister_container_instance

    def deregister_container_instance(
        self: Any, cluster_str: str, container_instance_str: str, force: bool
    ) -> Any:
        cluster = self._get_cluster(cluster_str)
        if container_instance_str.split("/")[-1] not in self.container_instances.get(cluster.name, {}):
            raise InvalidParameterException(f"Container instance {container_instance_str} not found.")
        return original(self, cluster_str, container_instance_str, force)

    EC2ContainerServiceBackend.deregister_container_instance = deregister_container_instance


# --- EventBridge: Step Functions and Lambda targets -----------------------------------------------------


def _patch_rule_targets() -> None:
    from moto.events.models import Rule
    from moto.utilities.arns import parse_arn

    original_send = Rule.send_to_targets

    def send_to_targets(self: Any, original_event: dict[str, Any], transform_input: bool = True) -> None:
        if not self.event_pattern.matches_event(original_event):
            return
        ours = [t for t in self.targets if parse_arn(t["Arn"]).service in ("states", "lambda")]
        theirs = [t for t in self.targets if t not in ours]
        if theirs:
            shallow = copy.copy(self)
            shallow.targets = theirs
            original_send(shallow, original_event, transform_input)
        if ours and self.state == "ENABLED":
            event = aws_shaped_event(original_event)
            for target in ours:
                deliver_to_target(target, event)

    Rule.send_to_targets = send_to_targets


def aws_shaped_event(event: dict[str, Any]) -> dict[str, Any]:
    """moto keeps an event's `time` as epoch seconds; AWS delivers an ISO 8601 string."""
    shaped = copy.deepcopy(dict(event))
    shaped.pop("ingestion-time", None)
    if isinstance(shaped.get("time"), int | float):
        shaped["time"] = datetime.fromtimestamp(shaped["time"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    shaped.setdefault("version", "0")
    return shaped


def target_input(target: dict[str, Any], event: dict[str, Any]) -> Any:
    """The payload AWS hands a rule target: Input, InputPath or InputTransformer applied to the event."""
    if target.get("Input") is not None:
        return json.loads(target["Input"])
    if target.get("InputPath"):
        from jsonpath_ng.ext import parse

        matches = parse(target["InputPath"]).find(event)
        return matches[0].value if matches else None
    if target.get("InputTransformer"):
        transformer = target["InputTransformer"]
        return transform_input(transformer.get("InputPathsMap", {}), transformer["InputTemplate"], event)
    return event


def transform_input(paths: dict[str, str], template: str, event: dict[str, Any]) -> Any:
    """EventBridge's InputTransformer: `<name>` inside a JSON string takes the value's text; outside one, the
    value as JSON (so a string arrives quoted). The result is JSON when it parses, else the text itself."""
    from jsonpath_ng.ext import parse

    values: dict[str, Any] = {"aws.events.event.json": event}
    for name, path in paths.items():
        matches = parse(path).find(event)
        values[name] = matches[0].value if matches else None
    out, in_string, i = [], False, 0
    while i < len(template):
        char = template[i]
        if char == "\\" and in_string:
            out.append(template[i : i + 2])
            i += 2
            continue
        if char == '"':
            in_string = not in_string
        elif char == "<":
            end = template.find(">", i)
            name = template[i + 1 : end] if end > 0 else None
            if name in values:
                value = values[name]
                if in_string:
                    text = value if isinstance(value, str) else json.dumps(value)
                    out.append(json.dumps(text)[1:-1])
                else:
                    out.append(json.dumps(value))
                i = end + 1
                continue
        out.append(char)
        i += 1
    rendered = "".join(out)
    try:
        return json.loads(rendered)
    except ValueError:
        return rendered


def deliver_to_target(target: dict[str, Any], event: dict[str, Any]) -> None:
    payload = json.dumps(target_input(target, event))
    threading.Thread(
        target=_deliver, args=(target["Arn"], payload), name="eventbridge-delivery", daemon=True
    ).start()


def _deliver(arn: str, payload: str) -> None:
    url = _endpoint.get("url")
    try:
        if ":states:" in arn:
            sfn = boto3.client("stepfunctions", endpoint_url=url, region_name=arn.split(":")[3])
            sfn.start_execution(stateMachineArn=arn, input=payload)
        else:
            lam = boto3.client("lambda", endpoint_url=url, region_name=arn.split(":")[3])
            lam.invoke(FunctionName=arn, InvocationType="RequestResponse", Payload=payload.encode())
    except Exception:  # AWS retries and then drops (or dead-letters) an undeliverable event; so do we
        log.exception("EventBridge could not deliver to %s", arn)
