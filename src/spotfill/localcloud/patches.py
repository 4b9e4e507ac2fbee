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
- Spot Fleet requests have no `ActivityStatus`, no request history (`DescribeSpotFleetRequestHistory` is not
  implemented), ignore `ValidUntil`, and never fail a pool. Here a request keeps EC2's history (`submitted`,
  `active`, `launched`, `error`, `expired`, `terminated` events), its `ActivityStatus` (`error` once a pool
  failed, as on EC2, even while other pools fill), its `ValidUntil`: `expire_fleets` (run by the physics'
  clock) ends an expired request and terminates its instances when `TerminateInstancesWithExpiration` is set.
  `set_failing_pools` makes pools (an instance type, or `type@zone`) fail as EC2 reports it: an `error` event
  per pool (`Unsupported`, `InsufficientInstanceCapacity`, ...) while the other pools fill, and
  `allLaunchSpecsTemporarilyBlacklisted` once no pool is left (and a request that never launched an
  instance can be cancelled, which moto refuses). `install_fleet_model` installs only these
  Spot Fleet patches (the Step Functions harness uses moto in process, without the rest).
- EC2's API is eventually consistent: a fleet just made may be unknown to the next calls naming it.
  `FLEET_VISIBILITY.set(lag)` (`LocalCloudOptions.fleet_visibility_lag`; default 0, visible at once) makes
  both fleet APIs answer NotFound (describe, modify) and "does not exist" (DeleteFleets,
  CancelSpotFleetRequests, which then delete nothing) for `lag` seconds after a create.
  CancelSpotFleetRequests reports an unknown or already cancelled request per request, as EC2 does (moto
  raises).
- EC2 `DeleteLaunchTemplateVersions` is not implemented by moto (a 500); teardown removes the run's launch
  template version with it, so it is implemented here (deleted versions vanish from describe calls).
- Step Functions: with execution on, moto names an execution started without a name `None` (every such
  execution gets the same ARN); AWS names it with a UUID, and so does this.
- ECS: deregistering a container instance that is no longer registered is a 500 in moto (a bare
  `Exception`), which clients retry for a minute; ECS answers with a client error. So does this.
- EC2 `DescribeSpotPriceHistory` answers a placeholder price of $0.00001 stamped 2006, so every run would
  cost nothing. The emulated spot market quotes each type EC2 knows at `pricing.SPOT_DISCOUNT` of its
  emulated us-east-1 on-demand price (the article's $0.50 against $1.42 per million predictions), from the
  start of the window asked for.
- The AWS Price List Query API (`pricing:GetProducts`) is not in moto at all: `spotfill.localcloud.pricing`
  serves it, in process here and over HTTP by the local cloud's server, with region-dependent on-demand
  prices for every type moto's EC2 describes.
- Service Quotas: moto knows only VPC quotas. The EC2 Spot vCPU quotas are served as AWS serves them: the
  AWS default (`GetAWSDefaultServiceQuota`, a new account's values) and, for a quota never changed,
  `NoSuchResourceException` from `GetServiceQuota`; `set_service_quota` (tests) or
  `RequestServiceQuotaIncrease` (approved at once) applies a value, which `GetServiceQuota` then answers.
- EC2 `DescribeInstanceTypeOfferings` answers moto's snapshot of AWS's offerings, which no test can change;
  `set_instance_type_offerings` makes a type offered in exactly the zones given (none: nowhere).
- EventBridge: moto delivers rule targets only to SQS, logs, buses and API destinations, and raises for
  any other target. AWS also starts Step Functions executions and invokes Lambda functions; those are
  delivered here, asynchronously as in AWS, with the target's `Input` / `InputPath` / `InputTransformer`
  applied (moto skips the transformer for S3 notifications), and an S3 event's `detail.object.key` URL-encoded
  as S3 sends it (moto sends the key as is).
- SQS: a message's visibility can be extended to at most 12 hours from the time it was *received*
  (`ChangeMessageVisibility`: `InvalidParameterValue`, "Total VisibilityTimeout for the message is beyond the
  limit [43200 seconds]"). moto 5.2.5 counts from when the message was *sent*, and in a batch raises for the
  whole request instead of failing the entry. `patch_sqs_visibility_limit()` (also for tests in process)
  counts from the latest receive and fails the batch entry.
- EC2 at a fleet's size: moto finds an instance by id by copying every reservation, and a resource's tags by
  matching every tag of the Region against its id, so `DescribeInstances` of a 1,000-instance fleet is
  quadratic; `look_up_instances_and_tags_by_id` looks both up by id, with moto's answers (installed with the
  fleet model).
- S3: a conditional write (`If-None-Match` / `If-Match`) that races another write to the same key answers
  409 `ConditionalRequestConflict` on AWS ("retry the upload"); moto serialises requests and never does.
  `CONDITIONAL_WRITE_CONFLICTS.arm(n)` makes the next n conditional PutObjects answer it (chaos
  `conflict=N`, and the worker tests).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

import boto3

from spotfill.localcloud import pricing

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
        _install_fleet_model()
        _patch_pending_fleet_instances()
        inherit_launch_template_source_versions()
        update_stacks_as_cloudformation_does()
        delete_launch_template_versions_as_ec2_does()
        _patch_execution_names()
        _patch_ecs_deregistration_error()
        _patch_rule_targets()
        patch_sqs_visibility_limit()
        install_conditional_write_conflicts()
        route_requests_once()
        _installed = True
    patch_account_limits()


# --- moto's request routing, computed once ----------------------------------------------------------------


def route_requests_once() -> None:
    """moto's server finds a request's backend by computing each backend's URL table per request (for S3 by
    reloading its `urls` module, so that a changed environment variable takes effect) and by listing its own
    package folder to recognise a service's host. Neither changes while a local cloud runs (its environment
    is set before it starts): each backend's table is computed once, the package listed once (idempotent)."""
    global _routing_once
    from moto import backends
    from moto.core.base_backend import BaseBackend

    with _routing_lock:
        if _routing_once:
            return
        urls = BaseBackend.urls

        def cached_urls(self: Any) -> Any:
            table = self.__dict__.get("_spotfill_urls")
            if table is None:
                table = self.__dict__["_spotfill_urls"] = urls.fget(self)
            return table

        BaseBackend.urls = property(cached_urls)  # type: ignore[method-assign, assignment]
        modules = tuple(backends.list_of_moto_modules())
        backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]
        _routing_once = True


_routing_lock = threading.Lock()
_routing_once = False

# --- S3: conditional writes that lose a race answer 409 ------------------------------------------------

_CONFLICT_MESSAGE = (
    "A conflicting operation occurred. If using PutObject you can retry the request. If using multipart "
    "upload you should initiate another CreateMultipartUpload request and re-upload each part."
)


class ConditionalWriteConflicts:
    """Armed, the next conditional PutObjects (`If-None-Match` or `If-Match`) answer 409
    `ConditionalRequestConflict` without writing, as S3 does when another write to the key is in flight:
    `writes` of them in all, at most `per_key` on any one key (then that key's writes go through)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._left = 0
        self._per_key = 0
        self._by_key: dict[tuple[str, str], int] = {}
        self.answered: list[tuple[str, str]] = []  # (bucket, key) of every 409 answered

    def arm(self, writes: int, per_key: int = 1) -> None:
        if writes < 0 or per_key < 1:
            raise ValueError(f"conflicts need writes >= 0 and per_key >= 1, got {writes} and {per_key}")
        with self._lock:
            self._left, self._per_key, self._by_key = writes, per_key, {}
            self.answered = []

    def disarm(self) -> None:
        with self._lock:
            self._left = 0

    def take(self, bucket: str, key: str) -> bool:
        """Whether this conditional write to bucket/key answers 409 (and counts it if so)."""
        with self._lock:
            seen = self._by_key.get((bucket, key), 0)
            if self._left <= 0 or seen >= self._per_key:
                return False
            self._left -= 1
            self._by_key[(bucket, key)] = seen + 1
            self.answered.append((bucket, key))
            return True


CONDITIONAL_WRITE_CONFLICTS = ConditionalWriteConflicts()
_conflicts_lock = threading.Lock()
_conflicts_installed = False


def install_conditional_write_conflicts() -> None:
    """Patch moto's S3 PutObject to consult `CONDITIONAL_WRITE_CONFLICTS` (idempotent; works for the moto
    server and for `mock_aws` alike). Unarmed, PutObject behaves as before."""
    global _conflicts_installed
    with _conflicts_lock:
        if _conflicts_installed:
            return
        from xml.sax.saxutils import escape

        from moto.s3.responses import S3Response

        original = S3Response.put_object

        def put_object(self: Any) -> Any:
            conditional = self.headers.get("If-None-Match") or self.headers.get("If-Match")
            if conditional and CONDITIONAL_WRITE_CONFLICTS.take(self.bucket_name, self.parse_key_name()):
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ConditionalRequestConflict</Code>'
                    f"<Message>{escape(_CONFLICT_MESSAGE)}</Message>"
                    f"<Key>{escape(self.parse_key_name())}</Key></Error>"
                )
                return 409, {"Content-Type": "application/xml"}, body
            return original(self)

        S3Response.put_object = put_object
        _conflicts_installed = True


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


def install_fleet_model() -> None:
    """The Spot Fleet patches alone (idempotent): launch template versions and every override, request
    history, ActivityStatus, ValidUntil and failing pools."""
    with _lock:
        _install_fleet_model()


_fleet_model_installed = False


def _install_fleet_model() -> None:
    global _fleet_model_installed
    if _fleet_model_installed:
        return
    launch_fleets_from_requested_versions()
    _patch_spot_fleet_lifecycle()
    _patch_ec2_fleet()
    _patch_spot_fleet_on_demand()
    _patch_fleet_visibility()
    service_linked_roles_as_iam_does()
    look_up_instances_and_tags_by_id()
    _fleet_model_installed = True


# --- EC2: an instance and a resource's tags found by id, not by scanning the account ------------------------


def look_up_instances_and_tags_by_id() -> None:
    """moto finds an instance by id by copying every reservation of the region (`get_instance`), and a
    resource's tags by matching every tag of the region against a pattern of its id (`get_tags`). Both cost
    as much as the region holds, per instance: `DescribeInstances` of a 1,000-instance fleet looks each
    instance's tags up (quadratic: seconds per call), and so do registration and teardown, which name
    instances. EC2 answers by id whatever the account holds. Here both look the id up directly, with the
    same answers: an id with a wildcard (`*`, `?`, `[`, which no EC2 id has) still goes through moto's match
    (idempotent)."""
    if not _once("lookups_by_id"):
        return
    from moto.ec2.exceptions import InvalidInstanceIdError
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.models.instances import InstanceBackend
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    def get_instance(self: Any, instance_id: str) -> Any:
        for reservation in list(self.reservations.values()):
            for instance in reservation.instances:
                if instance.id == instance_id:
                    return instance
        raise InvalidInstanceIdError(instance_id)

    scanning_get_tags = TaggedEC2Resource.get_tags

    def get_tags(self: Any) -> list[dict[str, str]]:
        resource_id = getattr(self, "id", None)
        if not resource_id or not isinstance(resource_id, str) or any(c in resource_id for c in "*?["):
            return scanning_get_tags(self)
        tags = dict(self.ec2_backend.tags.get(resource_id) or {})
        resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
        return [
            {"resource_id": resource_id, "key": key, "value": value, "resource_type": resource_type}
            for key, value in tags.items()
        ]

    InstanceBackend.get_instance = get_instance
    TaggedEC2Resource.get_tags = get_tags


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
        # ModifySpotFleetRequest takes LaunchTemplateConfigs only for a request made with them.
        self.__dict__["_spotfill_from_templates"] = bool(configs)

    SpotFleetRequest.__init__ = __init__


def _patch_pending_fleet_instances() -> None:
    from moto.ec2.models.spot_requests import SpotFleetRequest

    _pending_launches["on"] = True

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


# --- Spot Fleet: request history, ActivityStatus, failing pools, ValidUntil ------------------------------

# What EC2 says when a pool cannot launch (the code starts the event's description, as on EC2).
POOL_ERRORS = {
    "Unsupported": "The requested instance type is not supported in the requested Availability Zone.",
    "InsufficientInstanceCapacity": "There is no Spot capacity available that matches your request.",
}
LIVE_FLEET_STATES = ("submitted", "active", "modifying")
_failing_pools: dict[str, str] = {}  # "type" or "type@zone" -> error code


def set_failing_pools(pools: dict[str, str]) -> None:
    """From now on the pools named (an instance type in every zone, or `type@zone`) fail to launch with the
    error code given (`Unsupported`, `InsufficientInstanceCapacity`, ...); an empty dict heals every pool."""
    unknown = sorted(code for code in pools.values() if code not in POOL_ERRORS)
    if unknown:
        raise ValueError(f"unknown pool error code(s) {unknown}; known: {sorted(POOL_ERRORS)}")
    _failing_pools.clear()
    _failing_pools.update(pools)


def record_fleet_event(
    fleet: Any, event_type: str, sub_type: str, description: str = "", instance_id: str | None = None
) -> None:
    """Append an event to the request's history (what DescribeSpotFleetRequestHistory answers)."""
    information: dict[str, str] = {"EventSubType": sub_type}
    if description:
        information["EventDescription"] = description
    if instance_id:
        information["InstanceId"] = instance_id
    fleet.__dict__.setdefault("_spotfill_history", []).append(
        {"EventType": event_type, "EventInformation": information, "Timestamp": datetime.now(UTC)}
    )


def fleet_history(fleet: Any) -> list[dict[str, Any]]:
    return list(fleet.__dict__.get("_spotfill_history", []))


def fleet_history_since(fleet: Any, start: datetime, event_type: str | None) -> list[dict[str, Any]]:
    """The fleet's history records from `start` on, of `event_type` when one is asked for (either API)."""
    return [
        record
        for record in fleet_history(fleet)
        if record["Timestamp"] >= start and (not event_type or record["EventType"] == event_type)
    ]


def _zone_of(fleet: Any, subnet_id: str | None) -> str | None:
    if not subnet_id:
        return None
    try:
        return fleet.ec2_backend.get_subnet(subnet_id).availability_zone
    except Exception:
        return None


def _pool_failure(fleet: Any, spec: Any) -> str | None:
    zone = _zone_of(fleet, spec.subnet_id)
    return _failing_pools.get(f"{spec.instance_type}@{zone}") or _failing_pools.get(spec.instance_type)


def _is_spot_fleet(fleet: Any) -> bool:
    return type(fleet).__name__ == "SpotFleetRequest"


def _error_type(fleet: Any) -> str:
    """The history's error event type: Spot Fleet's `error`, EC2 Fleet's `service-error` (the EventType and
    FleetEventType enums of the EC2 API reference)."""
    return "error" if _is_spot_fleet(fleet) else "service-error"


def _pool_description(fleet: Any, spec: Any, code: str) -> str:
    zone = _zone_of(fleet, spec.subnet_id) or "unknown zone"
    return (
        f"{spec.instance_type}, {spec.image_id}, Linux/UNIX (Amazon VPC), {zone}, {code}: {POOL_ERRORS[code]}"
    )


def usable_specs(fleet: Any) -> list[Any]:
    """The fleet's launch specs whose pool does not fail; each failing pool reports an event once, and
    `allLaunchSpecsTemporarilyBlacklisted` (an error event) once none is left.

    A failing pool's event is the API's: Spot Fleet reports a launch specification it stopped trying as an
    `information` event, sub-type `launchSpecTemporarilyBlacklisted` ("The configuration is not valid and
    several attempts to launch instances have failed", EventInformation in the EC2 API reference; the EC2
    user guide's "Spot Fleet event types": EC2 Spot Fleet Information); EC2 Fleet, whose history has no
    information type (FleetEventType: instance-change, fleet-change, service-error), a `service-error`
    `spotFleetRequestConfigurationInvalid`. Either names the pool the way EC2 does:
    `<type>, <ami>, <platform>, <zone>, <Code>: <message>`."""
    reported = fleet.__dict__.setdefault("_spotfill_failed_specs", set())
    usable = []
    for spec in fleet.launch_specs:
        code = _pool_failure(fleet, spec)
        if code is None:
            usable.append(spec)
            continue
        if id(spec) not in reported:
            reported.add(id(spec))
            if _is_spot_fleet(fleet):
                event_type, sub_type = "information", "launchSpecTemporarilyBlacklisted"
            else:
                event_type, sub_type = "service-error", "spotFleetRequestConfigurationInvalid"
            record_fleet_event(fleet, event_type, sub_type, _pool_description(fleet, spec, code))
    if not usable and "_spotfill_all_blacklisted" not in fleet.__dict__:
        fleet.__dict__["_spotfill_all_blacklisted"] = True
        record_fleet_event(
            fleet,
            _error_type(fleet),
            "allLaunchSpecsTemporarilyBlacklisted",
            "None of the launch specifications is valid and several attempts to launch instances have "
            "failed.",
        )
    return usable


def relaunch_specs(fleet: Any, configs: list[dict[str, Any]], members: list[tuple[Any, Any, str]]) -> None:
    """ModifyFleet / ModifySpotFleetRequest with `LaunchTemplateConfigs`: the fleet launches from the new
    launch templates and overrides (their `WeightedCapacity` included) from now on. Neither API reference nor
    user guide says what becomes of the instances already running; here each keeps counting at the weight of
    the override it launched from (`members`, pinned before the change), and none is launched or terminated
    by the change itself (only when the fleet next meets its target). The fleet then launches from the
    cheapest override per unit first (spot price / WeightedCapacity), as the price-based allocation strategies
    do; a fleet never modified so keeps launching in its request's order, as before."""
    from moto.ec2.models.spot_requests import SpotFleetLaunchSpec
    from moto.ec2.utils import convert_tag_spec

    refuse_too_many_overrides(configs)
    for request in fleet.spot_requests:  # moto's Spot Fleet requests do not keep their spec: pin it
        if _alive(request.instance) and getattr(request, "launch_spec", None) is None:
            request.launch_spec = next((s for i, s, _ in members if i is request.instance), None)
    backend = fleet.ec2_backend
    specs = []
    for config in configs:
        ref = dict(config.get("LaunchTemplateSpecification") or {})
        if "LaunchTemplateId" in ref:
            template = backend.get_launch_template(template_id=ref["LaunchTemplateId"])
        else:
            template = backend.get_launch_template_by_name(name=ref.get("LaunchTemplateName"))
        version = str(ref.get("Version") or template.default_version_number)
        if version == "$Latest":
            version = str(template.latest_version_number)
        elif version == "$Default":
            version = str(template.default_version_number)
        ref.update({"LaunchTemplateId": template.id, "Version": version})
        data = template.get_version(version).data
        for override in config.get("Overrides") or [{}]:
            spec = {**data, **{k: v for k, v in override.items() if k != "Priority"}}
            specs.append(
                SpotFleetLaunchSpec(
                    ebs_optimized=spec.get("EbsOptimized"),
                    group_set=list(spec.get("SecurityGroupIds") or spec.get("SecurityGroups") or []),
                    iam_instance_profile=spec.get("IamInstanceProfile"),
                    image_id=spec["ImageId"],
                    instance_type=spec["InstanceType"],
                    key_name=spec.get("KeyName"),
                    monitoring=spec.get("Monitoring"),
                    spot_price=spec.get("SpotPrice"),
                    subnet_id=spec.get("SubnetId"),
                    tag_specifications=convert_tag_spec(spec.get("TagSpecifications", [])),
                    user_data=spec.get("UserData"),
                    weighted_capacity=spec.get("WeightedCapacity", 1),
                    launch_template_spec=ref,
                    overrides=override or None,
                )
            )
    fleet.launch_specs = sorted(
        specs, key=lambda s: (pricing.spot_price(s.instance_type) or math.inf) / _weight(s)
    )
    if hasattr(fleet, "launch_template_configs"):
        fleet.launch_template_configs = configs


# "For fleets of type request and maintain, a maximum of 300 items is allowed across all launch templates"
# (FleetLaunchTemplateConfigRequest.Overrides in the EC2 API reference), and 300 Spot capacity pools (type and
# subnet pairs) per maintain or request fleet on either API ("Quotas for EC2 Fleet and Spot Fleet",
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/fleet-quotas.html): an override here is one pool.
MAX_FLEET_OVERRIDES = 300


def refuse_too_many_overrides(configs: list[dict[str, Any]]) -> None:
    """Refuse a request with more overrides across its launch templates than a fleet takes. The API reference
    states the limit, not the error's text: the code is EC2's for a bad parameter value, the message in the
    form EC2 uses for its other per-request maxima ("Your request contains more than the maximum allowed
    number of InstanceRequirements (4)")."""
    from moto.ec2.exceptions import EC2ClientError

    count = sum(len(config.get("Overrides") or []) for config in configs)
    if count > MAX_FLEET_OVERRIDES:
        raise EC2ClientError(
            "InvalidParameterValue",
            "Your request contains more than the maximum allowed number of launch template overrides "
            f"({MAX_FLEET_OVERRIDES}).",
        )


def _patch_spot_fleet_lifecycle() -> None:
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.spot_requests import SpotFleetRequest
    from moto.ec2.responses.spot_fleets import SpotFleets

    original_create = SpotFleetRequest.create_spot_requests

    def create_spot_requests(self: Any, weight_to_add: float) -> None:
        """Launch only into pools that do not fail; each failing pool reports one event (`usable_specs`)."""
        usable = usable_specs(self)
        if not usable:
            return
        before = {id(r) for r in self.spot_requests}
        launch_specs = self.launch_specs
        self.launch_specs = usable
        try:
            original_create(self, weight_to_add)
        finally:
            self.launch_specs = launch_specs
        for request in self.spot_requests:
            if id(request) not in before and request.instance is not None:
                record_fleet_event(self, "instanceChange", "launched", instance_id=request.instance.id)

    SpotFleetRequest.create_spot_requests = create_spot_requests

    original_terminate = SpotFleetRequest.terminate_instances

    def terminate_instances(self: Any) -> None:
        # moto asks EC2 to terminate no instance at all (an error) when the fleet never launched one.
        if any(r.instance is not None for r in self.spot_requests):
            original_terminate(self)

    SpotFleetRequest.terminate_instances = terminate_instances

    def activity_status(self: Any) -> str | None:
        if self.state not in LIVE_FLEET_STATES:
            return None
        if any(e["EventType"] == "error" for e in fleet_history(self)):
            return "error"  # as on EC2: once a launch failed, even while other pools fill
        if self.fulfilled_capacity >= self.target_capacity:
            return "fulfilled"
        return "pending_fulfillment"

    SpotFleetRequest.activity_status = property(activity_status)

    original_config = SpotFleetRequest.spot_fleet_request_config

    def spot_fleet_request_config(self: Any) -> dict[str, Any]:
        config = dict(original_config.fget(self))
        if self.__dict__.get("valid_until") is not None:
            config["ValidUntil"] = self.valid_until
            config["TerminateInstancesWithExpiration"] = self.terminate_instances_with_expiration
        return config

    SpotFleetRequest.spot_fleet_request_config = property(spot_fleet_request_config)

    original_request = SpotFleets.request_spot_fleet

    def request_spot_fleet(self: Any) -> Any:
        refuse_too_many_overrides(
            self._get_param("SpotFleetRequestConfig", {}).get("LaunchTemplateConfigs") or []
        )
        # moto requests the fleet even with DryRun; EC2 answers DryRunOperation (HTTP 412), requests nothing.
        self.error_on_dryrun()
        result = original_request(self)
        config = self._get_param("SpotFleetRequestConfig", {})
        fleet = self.ec2_backend.spot_fleet_requests[result.result["SpotFleetRequestId"]]
        # EC2 keeps the request's own tags where DescribeTags finds them (resource type spot-fleet-request);
        # moto shows them on the request only.
        tags = {
            t["Key"]: t["Value"]
            for spec in config.get("TagSpecifications") or []
            if spec.get("ResourceType") == "spot-fleet-request"
            for t in spec.get("Tags") or []
        }
        if tags:
            self.ec2_backend.create_tags([fleet.id], tags)
        valid_until = config.get("ValidUntil")
        if valid_until:
            fleet.valid_until = _timestamp(valid_until)
            fleet.terminate_instances_with_expiration = str(
                config.get("TerminateInstancesWithExpiration", "false")
            ).lower() in ("true", "1")
        history = fleet.__dict__.setdefault("_spotfill_history", [])
        now = datetime.now(UTC)
        history[:0] = [
            {"EventType": "fleetRequestChange", "EventInformation": {"EventSubType": s}, "Timestamp": now}
            for s in ("submitted", "active")
        ]
        return result

    SpotFleets.request_spot_fleet = request_spot_fleet

    def describe_spot_fleet_request_history(self: Any) -> Any:
        from moto.core.responses import ActionResult

        fleet_id = self._get_param("SpotFleetRequestId")
        start = _timestamp(self._get_param("StartTime"))
        event_type = self._get_param("EventType")
        fleet = self.ec2_backend.spot_fleet_requests.get(fleet_id)
        if fleet is None:
            raise EC2ClientError(
                "InvalidSpotFleetRequestId.NotFound", f"The spot fleet request ID '{fleet_id}' does not exist"
            )
        return ActionResult(
            {
                "HistoryRecords": fleet_history_since(fleet, start, event_type),
                "LastEvaluatedTime": datetime.now(UTC),
                "SpotFleetRequestId": fleet_id,
                "StartTime": start,
            }
        )

    SpotFleets.describe_spot_fleet_request_history = describe_spot_fleet_request_history

    # EC2's clock for ValidUntil runs whether or not the physics ticks: whoever looks at a fleet past its
    # ValidUntil sees it expired.
    for name in ("describe_spot_fleet_requests", "describe_spot_fleet_instances"):
        setattr(SpotFleets, name, _expiring_first(getattr(SpotFleets, name)))


def _expiring_first(describe: Any) -> Any:
    def described(self: Any) -> Any:
        expire_fleets(self.ec2_backend)
        return describe(self)

    described.__name__ = describe.__name__
    return described


def expired_fleets(backend: Any) -> dict[str, list[str]]:
    """Every request that expired so far -> the instances EC2 terminated when it did (from its history)."""
    expired: dict[str, list[str]] = {}
    for fleet in [*backend.spot_fleet_requests.values(), *backend.fleets.values()]:
        history = fleet_history(fleet)
        marks = [
            i
            for i, e in enumerate(history)
            if e["EventType"] in ("fleetRequestChange", "fleet-change")
            and e["EventInformation"]["EventSubType"] == "expired"
        ]
        if marks:
            expired[fleet.id] = [
                e["EventInformation"]["InstanceId"]
                for e in history[marks[0] :]
                if e["EventType"] in ("instanceChange", "instance-change")
                and e["EventInformation"]["EventSubType"] == "terminated"
            ]
    return expired


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def expire_fleets(backend: Any, now: datetime | None = None) -> dict[str, list[str]]:
    """EC2's clock for `ValidUntil`: every live request past it expires (an `expired` event); with
    `TerminateInstancesWithExpiration` its instances are terminated and the request ends `cancelled`, else it
    is `cancelled_running` and they run on. Returns each request that expired now -> the instances it
    terminated."""
    now = now or datetime.now(UTC)
    expired: dict[str, list[str]] = {}
    for fleet in list(backend.spot_fleet_requests.values()):
        valid_until = fleet.__dict__.get("valid_until")
        if valid_until is None or fleet.state not in LIVE_FLEET_STATES or now < valid_until:
            continue
        record_fleet_event(fleet, "fleetRequestChange", "expired")
        expired[fleet.id] = []
        if not fleet.__dict__.get("terminate_instances_with_expiration"):
            fleet.state = "cancelled_running"
            continue
        alive = [
            r.instance.id
            for r in fleet.spot_requests
            if r.instance is not None and r.instance._state.name in ("pending", "running")
        ]
        fleet.target_capacity = 0
        fleet.fulfilled_capacity = 0.0
        fleet.spot_requests = []
        if alive:
            backend.terminate_instances(alive)
        for instance_id in alive:
            record_fleet_event(fleet, "instanceChange", "terminated", instance_id=instance_id)
        expired[fleet.id] = alive
        fleet.state = "cancelled"
    expired.update(_expire_ec2_fleets(backend, now))
    return expired


# --- EC2: DeleteLaunchTemplateVersions ------------------------------------------------------------------


def delete_launch_template_versions_as_ec2_does() -> None:
    """`DeleteLaunchTemplateVersions`, which moto 5.2.5 does not implement (idempotent).

    As on EC2: a deleted version can no longer be described or launched from and its number is never reused,
    `$Latest` is the newest remaining version, and a version that cannot be deleted (missing, or the default)
    is reported per version in the response (`launchTemplateVersionDoesNotExist`, `unexpectedError`: the
    only codes the API's `ResponseError` has), not raised."""
    if not _once("delete_launch_template_versions_as_ec2_does"):
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


def quote_spot_prices() -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.responses.spot_instances import SpotInstances

    def describe_spot_price_history(self: Any) -> Any:
        # Each type asked for (else those of the static price table) in every zone (moto's offerings leave
        # some zones out, e.g. no c5 in us-east-1e, while its fleets still place instances there).
        from spotfill_control.instance_types import STATIC_ON_DEMAND_USD

        types = self._get_param("InstanceTypes", []) or sorted(STATIC_ON_DEMAND_USD)
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
            if (price := pricing.spot_price(instance_type)) is not None
            for zone in zones
        ]
        return ActionResult({"SpotPriceHistory": history})

    SpotInstances.describe_spot_price_history = describe_spot_price_history


# --- Service Quotas (EC2 Spot vCPU quotas) and EC2 instance type offerings ------------------------------

# A new account's Spot vCPU quotas (Amazon EC2 User Guide, "Spot Instance quotas"): 5 Standard vCPUs, 0 for
# every accelerated family.
AWS_DEFAULT_SPOT_VCPUS = {"L-34B43A08": 5.0}
_limits_lock = threading.Lock()
_limits_patched = False


def _spot_quota(code: str, value: float, region: str, account_id: str | None) -> dict[str, Any] | None:
    from spotfill_control.setup.preflight import SPOT_QUOTAS

    quota = next((q for q in SPOT_QUOTAS if q.code == code), None)
    if quota is None:
        return None
    usage_class = quota.family.split(" ")[0]  # "G and VT" -> G, as the AWS/Usage metric names it
    return {
        "ServiceCode": "ec2",
        "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
        "QuotaArn": f"arn:aws:servicequotas:{region}:{account_id or ''}:ec2/{code}",
        "QuotaCode": code,
        "QuotaName": quota.name,
        "Value": value,
        "Unit": "None",
        "Adjustable": True,
        "GlobalQuota": False,
        "UsageMetric": {
            "MetricNamespace": "AWS/Usage",
            "MetricName": "ResourceCount",
            "MetricDimensions": {
                "Class": f"{usage_class}/Spot",
                "Resource": "vCPU",
                "Service": "EC2",
                "Type": "Resource",
            },
            "MetricStatisticRecommendation": "Maximum",
        },
    }


def _applied_quotas(account_id: str, region: str) -> dict[tuple[str, str], float]:
    from moto.servicequotas.models import servicequotas_backends

    return servicequotas_backends[account_id][region].__dict__.setdefault("_spotfill_applied", {})


def set_service_quota(
    quota_code: str, value: float | None, *, region: str = "us-east-1", account_id: str = "123456789012"
) -> None:
    """Apply an EC2 quota value in the emulated account, up or down (AWS needs a request and its approval);
    None: never changed (GetServiceQuota answers NoSuchResourceException, and the AWS default applies)."""
    patch_account_limits()
    if _spot_quota(quota_code, 0.0, region, account_id) is None:
        raise ValueError(f"{quota_code} is not an EC2 Spot vCPU quota the emulator serves")
    applied = _applied_quotas(account_id, region)
    if value is None:
        applied.pop(("ec2", quota_code), None)
    else:
        applied[("ec2", quota_code)] = float(value)


# The local cloud's account has run spot before: its quotas were raised from a new account's.
LOCAL_CLOUD_SPOT_VCPUS = {"L-34B43A08": 256.0, "L-3819A6DF": 64.0}


def raise_spot_quotas(region: str, account_id: str = "123456789012") -> None:
    """Apply `LOCAL_CLOUD_SPOT_VCPUS` (the local cloud does at start; demos need more than 5 vCPUs)."""
    for code, vcpus in LOCAL_CLOUD_SPOT_VCPUS.items():
        set_service_quota(code, vcpus, region=region, account_id=account_id)


def set_instance_type_offerings(
    instance_type: str, zones: list[str], *, region: str = "us-east-1", account_id: str = "123456789012"
) -> None:
    """Offer `instance_type` in exactly these availability zones of the emulated Region (none: nowhere)."""
    from moto.ec2.models import ec2_backends

    patch_account_limits()
    backend = ec2_backends[account_id][region]
    backend.__dict__.setdefault("_spotfill_offerings", {})[instance_type] = list(zones)


def patch_account_limits() -> None:
    """Serve EC2 Spot vCPU quotas, controllable instance type offerings, a spot market with prices and the
    Price List's on-demand prices (idempotent, in process: the local cloud's server and the tests'
    in-process moto alike)."""
    global _limits_patched
    with _limits_lock:
        if _limits_patched:
            return
        _patch_service_quotas()
        _patch_instance_type_offerings()
        quote_spot_prices()
        pricing.install_in_process()
        _limits_patched = True


def _patch_service_quotas() -> None:
    from moto.core.exceptions import JsonRESTError
    from moto.servicequotas.models import ServiceQuotasBackend
    from moto.servicequotas.responses import ServiceQuotasResponse

    def no_such_quota(code: str) -> JsonRESTError:
        return JsonRESTError("NoSuchResourceException", f"The quota {code} has no applied value.")

    original_get = ServiceQuotasBackend.get_service_quota

    def get_service_quota(self: Any, service_code: str, quota_code: str) -> dict[str, Any]:
        if service_code != "ec2":
            return original_get(self, service_code, quota_code)
        applied = self.__dict__.get("_spotfill_applied", {}).get((service_code, quota_code))
        quota = _spot_quota(quota_code, applied or 0.0, self.region_name, self.account_id)
        if quota is None or applied is None:  # never changed from its default: AWS has no applied value
            raise no_such_quota(quota_code)
        return quota

    def get_aws_default_service_quota(self: Any, service_code: str, quota_code: str) -> dict[str, Any]:
        value = AWS_DEFAULT_SPOT_VCPUS.get(quota_code, 0.0)
        quota = _spot_quota(quota_code, value, self.region_name, None) if service_code == "ec2" else None
        if quota is None:
            raise no_such_quota(quota_code)
        return quota

    def request_service_quota_increase(
        self: Any, service_code: str, quota_code: str, desired: float
    ) -> dict[str, Any]:
        current = self.__dict__.get("_spotfill_applied", {}).get((service_code, quota_code))
        if current is None:
            current = get_aws_default_service_quota(self, service_code, quota_code)["Value"]
        if desired <= current:
            raise JsonRESTError(
                "IllegalArgumentException",
                f"The desired value {desired:g} is not above the quota {current:g}.",
            )
        self.__dict__.setdefault("_spotfill_applied", {})[(service_code, quota_code)] = float(desired)
        quota = get_service_quota(self, service_code, quota_code)
        return {
            "Id": f"{quota_code}-{int(desired)}",
            "ServiceCode": service_code,
            "ServiceName": quota["ServiceName"],
            "QuotaCode": quota_code,
            "QuotaName": quota["QuotaName"],
            "DesiredValue": float(desired),
            "Status": "APPROVED",
            "QuotaArn": quota["QuotaArn"],
            "GlobalQuota": False,
            "Unit": "None",
        }

    ServiceQuotasBackend.get_service_quota = get_service_quota
    ServiceQuotasBackend.get_aws_default_service_quota = get_aws_default_service_quota
    ServiceQuotasBackend.request_service_quota_increase = request_service_quota_increase

    def respond_default(self: Any) -> str:
        params = json.loads(self.body)
        quota = self.backend.get_aws_default_service_quota(params["ServiceCode"], params["QuotaCode"])
        return json.dumps({"Quota": quota})

    def respond_increase(self: Any) -> str:
        params = json.loads(self.body)
        requested = self.backend.request_service_quota_increase(
            params["ServiceCode"], params["QuotaCode"], float(params["DesiredValue"])
        )
        return json.dumps({"RequestedQuota": requested})

    ServiceQuotasResponse.get_aws_default_service_quota = respond_default
    ServiceQuotasResponse.request_service_quota_increase = respond_increase


def _patch_instance_type_offerings() -> None:
    from moto.ec2.models.instance_types import InstanceTypeOfferingBackend

    original = InstanceTypeOfferingBackend.describe_instance_type_offerings

    def describe_instance_type_offerings(
        self: Any, location_type: str | None = None, filters: dict[str, Any] | None = None
    ) -> list[Any]:
        found = original(self, location_type, filters)
        overrides: dict[str, list[str]] = self.__dict__.get("_spotfill_offerings", {})
        if not overrides:
            return found
        location_type = location_type or "region"
        zone_ids = {z.name: z.zone_id for z in self.describe_availability_zones()}
        kept = [o for o in found if o["InstanceType"] not in overrides]
        for instance_type, zones in overrides.items():
            if location_type == "region":
                locations = [self.region_name] if zones else []
            elif location_type == "availability-zone-id":
                locations = [zone_ids[z] for z in zones if z in zone_ids]
            else:
                locations = list(zones)
            for location in locations:
                offering = {
                    "InstanceType": instance_type,
                    "LocationType": location_type,
                    "Location": location,
                }
                if self.matches_filters(offering, filters or {}, location_type):
                    kept.append(offering)
        return kept

    InstanceTypeOfferingBackend.describe_instance_type_offerings = describe_instance_type_offerings


# --- ECS: deregistering a container instance (an unknown one; the cluster's count) --------------------------


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
        removed = original(self, cluster_str, container_instance_str, force)
        # ECS counts the cluster's registered instances (DescribeClusters); moto only ever adds to the count.
        cluster.registered_container_instances_count = max(
            0, cluster.registered_container_instances_count - 1
        )
        return removed

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
    """moto keeps an event's `time` as epoch seconds; AWS delivers an ISO 8601 string. moto puts an S3
    object's key in its EventBridge event as is; S3 URL-encodes keys in its events (form encoding, `/` kept),
    as AWS's own parsers of the EventBridge event expect (docs/contracts.md). moto names the object's ETag
    `eTag` and sends `version-id: null` for an unversioned bucket; S3 sends `etag`, and no version id."""
    shaped = copy.deepcopy(dict(event))
    shaped.pop("ingestion-time", None)
    if isinstance(shaped.get("time"), int | float):
        shaped["time"] = datetime.fromtimestamp(shaped["time"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    shaped.setdefault("version", "0")
    s3_object = shaped.get("detail", {}).get("object") if shaped.get("source") == "aws.s3" else None
    if isinstance(s3_object, dict) and isinstance(s3_object.get("key"), str):
        s3_object["key"] = quote_plus(s3_object["key"], safe="/")
    if isinstance(s3_object, dict):
        if "eTag" in s3_object:
            s3_object["etag"] = s3_object.pop("eTag")
        if s3_object.get("version-id") is None:
            s3_object.pop("version-id", None)
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


# --- SQS: visibility at most 12 hours from the latest receive ---------------------------------------------

SQS_MAX_VISIBILITY_SECONDS = 43_200
_sqs_visibility_patched = False
_sqs_lock = threading.Lock()


def patch_sqs_visibility_limit() -> None:
    """Make moto refuse a visibility change past 12 hours from the message's latest receive, as SQS does
    (idempotent; changes moto's SQS model classes for the whole process)."""
    global _sqs_visibility_patched
    with _sqs_lock:
        if _sqs_visibility_patched:
            return
        from moto.sqs import models
        from moto.sqs.exceptions import InvalidParameterValue, ReceiptHandleIsInvalid

        original_mark_received = models.Message.mark_received

        def mark_received(self: Any, visibility_timeout: int | None = None) -> None:
            original_mark_received(self, visibility_timeout)
            self.spotfill_received_at_ms = models.unix_time_millis()

        def change_message_visibility(
            self: Any, queue_name: str, receipt_handle: str, visibility_timeout: int
        ) -> None:
            queue = self.get_queue(queue_name)
            for message in queue._messages:
                if message.had_receipt_handle(receipt_handle):
                    received = getattr(message, "spotfill_received_at_ms", message.sent_timestamp)
                    until = models.unix_time_millis() + int(visibility_timeout) * 1000
                    if until - received > SQS_MAX_VISIBILITY_SECONDS * 1000:
                        raise InvalidParameterValue(
                            f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: "
                            f"Total VisibilityTimeout for the message is beyond the limit "
                            f"[{SQS_MAX_VISIBILITY_SECONDS} seconds]"
                        )
                    message.change_visibility(visibility_timeout)
                    if message.visible and message in queue.pending_messages:
                        queue.pending_messages.remove(message)
                    return
            raise ReceiptHandleIsInvalid

        def change_message_visibility_batch(
            self: Any, queue_name: str, entries: list[dict[str, Any]]
        ) -> tuple[list[str], list[dict[str, Any]]]:
            success: list[str] = []
            errors: list[dict[str, Any]] = []
            for entry in entries:
                try:
                    seconds = int(entry["VisibilityTimeout"])
                    if not 0 <= seconds <= SQS_MAX_VISIBILITY_SECONDS:
                        raise InvalidParameterValue("Visibility timeout invalid")
                    self.change_message_visibility(
                        queue_name=queue_name,
                        receipt_handle=entry["ReceiptHandle"],
                        visibility_timeout=seconds,
                    )
                    success.append(entry["Id"])
                except (InvalidParameterValue, ReceiptHandleIsInvalid) as exc:
                    errors.append(
                        {"Id": entry["Id"], "SenderFault": True, "Code": exc.code, "Message": exc.message}
                    )
            return success, errors

        models.Message.mark_received = mark_received
        models.SQSBackend.change_message_visibility = change_message_visibility
        models.SQSBackend.change_message_visibility_batch = change_message_visibility_batch
        _sqs_visibility_patched = True


# --- EC2 Fleet: launching, ModifyFleet, DescribeFleetHistory, DeleteFleets, ValidUntil, spot shortfalls ----

# EC2 Fleet's states of a fleet that ended (Spot Fleet's are `cancelled*`).
DELETED_FLEET_STATES = ("deleted", "deleted_running", "deleted_terminating")
_spot_capacity: dict[str, float] = {}  # instance type -> spot units of it one fleet can get
_pending_launches = {"on": False}  # the local cloud's instances boot (pending first); in process they run


def set_spot_capacity(units_by_type: dict[str, float]) -> None:
    """From now on a fleet gets at most this many spot units of each type named (spot is short there:
    EC2 reports `InsufficientInstanceCapacity` once per type and launches no more); {} ends the shortage.
    On-demand capacity is never short."""
    bad = sorted(t for t, units in units_by_type.items() if units < 0)
    if bad:
        raise ValueError(f"spot capacity must be >= 0 units, got a negative one for {bad}")
    _spot_capacity.clear()
    _spot_capacity.update(units_by_type)


def _weight(spec: Any) -> float:
    return float(spec.weighted_capacity or 1)


def _alive(instance: Any) -> bool:
    return instance is not None and instance._state.name in ("pending", "running")


def ec2_fleet_members(fleet: Any) -> list[tuple[Any, Any, str]]:
    """(instance, launch spec, lifecycle) of every live instance of an EC2 Fleet."""
    members = [(r.instance, r.launch_spec, "spot") for r in fleet.spot_requests if _alive(r.instance)]
    members += [(d["instance"], d.get("launch_spec"), "on-demand") for d in fleet.on_demand_instances]
    return [(i, s, lifecycle) for i, s, lifecycle in members if _alive(i)]


def _units(members: list[tuple[Any, Any, str]], lifecycle: str) -> float:
    return sum(_weight(spec) for _, spec, kind in members if kind == lifecycle and spec is not None)


def _ec2_fleet_targets(fleet: Any) -> tuple[float, float]:
    """(on-demand target, spot target) of an EC2 Fleet: the capacity its default type does not name goes to
    that type."""
    spec = fleet.target_capacity_specification
    total = float(spec.get("TotalTargetCapacity") or 0)
    on_demand = float(spec.get("OnDemandTargetCapacity") or 0)
    spot = float(spec.get("SpotTargetCapacity") or 0)
    if spec.get("DefaultTargetCapacityType", "on-demand") == "spot":
        on_demand = min(on_demand, total)
        return on_demand, total - on_demand
    spot = min(spot, total)
    return total - spot, spot


def _launch_one(fleet: Any, spec: Any, kind: str) -> Any:
    """Launch one instance of the spec (spot or on demand) and return it."""
    kept = fleet.launch_specs
    fleet.launch_specs = [spec]
    try:
        if kind == "spot":
            before = len(fleet.spot_requests)
            _ORIGINAL_FLEET_CREATE["spot"](fleet, _weight(spec))
            instance = fleet.spot_requests[before].instance
        else:
            before = len(fleet.on_demand_instances)
            _ORIGINAL_FLEET_CREATE["on-demand"](fleet, _weight(spec))
            instance = fleet.on_demand_instances[before]["instance"]
    finally:
        fleet.launch_specs = kept
    if _pending_launches["on"]:
        instance._state.name, instance._state.code = "pending", 0
    record_fleet_event(fleet, "instance-change", "launched", instance_id=instance.id)
    return instance


_ORIGINAL_FLEET_CREATE: dict[str, Any] = {}


def _spot_room(fleet: Any, spec: Any, members: list[tuple[Any, Any, str]]) -> bool:
    limit = _spot_capacity.get(spec.instance_type)
    if limit is None:
        return True
    held = sum(
        _weight(s) for i, s, kind in members if kind == "spot" and i.instance_type == spec.instance_type
    )
    if held + _weight(spec) <= limit + 1e-9:
        return True
    short = fleet.__dict__.setdefault("_spotfill_short_types", set())
    if spec.instance_type not in short:
        short.add(spec.instance_type)
        # An error event on both APIs (a Spot Fleet's, as EC2 reports it: `error`,
        # `spotFleetRequestConfigurationInvalid`, "There is no Spot capacity available that matches your
        # request.").
        record_fleet_event(
            fleet,
            _error_type(fleet),
            "spotFleetRequestConfigurationInvalid",
            _pool_description(fleet, spec, "InsufficientInstanceCapacity"),
        )
    return False


def maintain_ec2_fleet(fleet: Any) -> None:
    """What EC2 does for a live `maintain` EC2 Fleet: keep each purchase option at its target. Excess
    capacity (a lowered target) is terminated, on demand first (`ExcessCapacityTerminationPolicy`
    `termination`, the default); missing capacity is launched into the pools that do not fail, spot only as
    far as spot capacity lasts (`set_spot_capacity`)."""
    if fleet.state not in LIVE_FLEET_STATES or fleet.fleet_type != "maintain":
        return
    backend = fleet.ec2_backend
    on_demand_target, spot_target = _ec2_fleet_targets(fleet)
    fleet.spot_requests = [r for r in fleet.spot_requests if _alive(r.instance)]
    fleet.on_demand_instances = [d for d in fleet.on_demand_instances if _alive(d["instance"])]
    members = ec2_fleet_members(fleet)
    if fleet.excess_capacity_termination_policy != "no-termination":
        for kind, target in (("on-demand", on_demand_target), ("spot", spot_target)):
            mine = [(i, s) for i, s, k in members if k == kind]
            held = _units(members, kind)
            while mine and held - _weight(mine[-1][1]) >= target - 1e-9:
                instance, spec = mine.pop()
                held -= _weight(spec)
                backend.terminate_instances([instance.id])
                record_fleet_event(fleet, "instance-change", "terminated", instance_id=instance.id)
        members = ec2_fleet_members(fleet)
    for kind, target in (("on-demand", on_demand_target), ("spot", spot_target)):
        while _units(members, kind) < target - 1e-9:
            specs = [s for s in usable_specs(fleet) if kind != "spot" or _spot_room(fleet, s, members)]
            if not specs:
                break
            instance = _launch_one(fleet, specs[0], kind)
            members.append((instance, specs[0], kind))
    fleet.fulfilled_on_demand_capacity = _units(members, "on-demand")
    fleet.fulfilled_spot_capacity = _units(members, "spot")
    fleet.fulfilled_capacity = fleet.fulfilled_on_demand_capacity + fleet.fulfilled_spot_capacity


def _finish_deleted_fleets(backend: Any) -> None:
    """A `deleted_terminating` fleet is `deleted` once its instances are gone."""
    for fleet in list(backend.fleets.values()):
        if fleet.state == "deleted_terminating" and not ec2_fleet_members(fleet):
            fleet.state = "deleted"
            fleet.fulfilled_capacity = fleet.fulfilled_on_demand_capacity = fleet.fulfilled_spot_capacity = (
                0.0
            )
            record_fleet_event(fleet, "fleet-change", "deleted")


def _patch_ec2_fleet() -> None:
    """EC2 Fleet as EC2 runs it (moto 5.2.5 launches everything in the constructor, never replaces, and has no
    ModifyFleet or DescribeFleetHistory)."""
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.fleets import Fleet
    from moto.ec2.responses.fleets import Fleets

    _ORIGINAL_FLEET_CREATE["spot"] = Fleet.create_spot_requests
    _ORIGINAL_FLEET_CREATE["on-demand"] = Fleet.create_on_demand_requests
    original_init = Fleet.__init__

    def __init__(
        self: Any,
        ec2_backend: Any,
        fleet_id: str,
        on_demand_options: Any,
        spot_options: Any,
        target_capacity_specification: dict[str, Any],
        *args: Any,
    ) -> None:
        # moto launches from its constructor; here the fleet launches as EC2's maintain loop does.
        empty = {"TotalTargetCapacity": 0, "DefaultTargetCapacityType": "on-demand"}
        original_init(self, ec2_backend, fleet_id, on_demand_options, spot_options, empty, *args)
        self.target_capacity_specification = dict(target_capacity_specification)
        self.target_capacity = int(float(target_capacity_specification.get("TotalTargetCapacity") or 0))
        for spec in self.launch_specs:  # moto reads `GroupSet`; a launch template names `SecurityGroupIds`
            if not spec.group_set and spec.launch_template_spec:
                ref = spec.launch_template_spec
                data = (
                    ec2_backend.get_launch_template(template_id=ref["LaunchTemplateId"])
                    .get_version(ref["Version"])
                    .data
                )
                spec.group_set = list(data.get("SecurityGroupIds") or data.get("SecurityGroups") or [])
        if self.valid_until is not None:
            self.valid_until = _timestamp(self.valid_until)
        self.terminate_instances_with_expiration = str(self.terminate_instances_with_expiration).lower() in (
            "true",
            "1",
        )
        for sub_type in ("submitted", "active"):
            record_fleet_event(self, "fleet-change", sub_type)
        maintain_ec2_fleet(self)

    Fleet.__init__ = __init__

    def activity_status(self: Any) -> str | None:
        if self.state not in LIVE_FLEET_STATES:
            return None
        if any(e["EventType"] == "service-error" for e in fleet_history(self)):
            return "error"
        if self.fulfilled_capacity >= self.target_capacity:
            return "fulfilled"
        return "pending_fulfillment"

    Fleet.activity_status = property(activity_status)

    def _fleet(backend: Any, fleet_id: str) -> Any:
        fleet = backend.fleets.get(fleet_id)
        if fleet is None:
            raise EC2ClientError("InvalidFleetId.NotFound", f"The fleet ID '{fleet_id}' does not exist")
        return fleet

    original_create = Fleets.create_fleet

    def create_fleet(self: Any) -> Any:
        """An idempotent CreateFleet: the same `ClientToken` answers the fleet it made; more overrides than
        a `request` or `maintain` fleet takes are refused (`refuse_too_many_overrides`)."""
        if self._get_param("Type", if_none="maintain") != "instant":
            refuse_too_many_overrides(self._get_param("LaunchTemplateConfigs", []))
        token = self._get_param("ClientToken")
        if token:
            for fleet in self.ec2_backend.fleets.values():
                if fleet.__dict__.get("_spotfill_client_token") == token:
                    return ActionResult({"FleetId": fleet.id})
        result = original_create(self)
        if token:
            self.ec2_backend.fleets[result.result["FleetId"]].__dict__["_spotfill_client_token"] = token
        return result

    Fleets.create_fleet = create_fleet

    def modify_fleet(self: Any) -> Any:
        fleet = _fleet(self.ec2_backend, self._get_param("FleetId"))
        if fleet.fleet_type != "maintain":
            raise EC2ClientError("InvalidParameterValue", f"fleet {fleet.id} is not of type maintain")
        if fleet.state not in LIVE_FLEET_STATES:
            raise EC2ClientError("IncorrectState", f"fleet {fleet.id} is {fleet.state}")
        wanted = self._get_param("TargetCapacitySpecification", {}) or {}
        spec = dict(fleet.target_capacity_specification)
        for key in ("TotalTargetCapacity", "OnDemandTargetCapacity", "SpotTargetCapacity"):
            if wanted.get(key) is not None:
                spec[key] = int(float(wanted[key]))
        if wanted.get("SpotTargetCapacity") is None and spec.get("DefaultTargetCapacityType") == "spot":
            spec["SpotTargetCapacity"] = int(spec.get("TotalTargetCapacity") or 0) - int(
                spec.get("OnDemandTargetCapacity") or 0
            )
        if int(spec.get("OnDemandTargetCapacity") or 0) > int(spec.get("TotalTargetCapacity") or 0):
            raise EC2ClientError(
                "InvalidParameterValue", "OnDemandTargetCapacity cannot exceed TotalTargetCapacity"
            )
        configs = self._get_param("LaunchTemplateConfigs")
        if configs:
            relaunch_specs(fleet, configs, ec2_fleet_members(fleet))
        fleet.target_capacity_specification = spec
        fleet.target_capacity = int(spec.get("TotalTargetCapacity") or 0)
        policy = self._get_param("ExcessCapacityTerminationPolicy")
        if policy:
            fleet.excess_capacity_termination_policy = policy
        maintain_ec2_fleet(fleet)
        return ActionResult({"Return": True})

    Fleets.modify_fleet = modify_fleet

    def describe_fleet_history(self: Any) -> Any:
        fleet_id = self._get_param("FleetId")
        fleet = _fleet(self.ec2_backend, fleet_id)
        start = _timestamp(self._get_param("StartTime"))
        event_type = self._get_param("EventType")
        return ActionResult(
            {
                "HistoryRecords": fleet_history_since(fleet, start, event_type),
                "LastEvaluatedTime": datetime.now(UTC),
                "FleetId": fleet_id,
                "StartTime": start,
            }
        )

    Fleets.describe_fleet_history = describe_fleet_history

    def describe_fleet_instances(self: Any) -> Any:
        """Live instances only; `SpotInstanceRequestId` for spot ones only (moto gives on-demand ones their
        reservation's id)."""
        expire_fleets(self.ec2_backend)
        fleet_id = self._get_param("FleetId")
        fleet = _fleet(self.ec2_backend, fleet_id)
        active = []
        for instance, _, lifecycle in ec2_fleet_members(fleet):
            item = {
                "InstanceId": instance.id,
                "InstanceType": instance.instance_type,
                "InstanceHealth": "healthy",
            }
            if lifecycle == "spot":
                item["SpotInstanceRequestId"] = next(
                    r.id for r in fleet.spot_requests if r.instance is instance
                )
            active.append(item)
        return ActionResult({"ActiveInstances": active, "FleetId": fleet_id})

    Fleets.describe_fleet_instances = describe_fleet_instances

    def delete_fleets(self: Any) -> Any:
        """As EC2: per fleet, a missing one is `fleetIdDoesNotExist` and one already deleted
        `fleetNotInDeletableState` (not raised); TerminateInstances terminates every instance and the fleet
        is `deleted_terminating` until they are gone."""
        terminate = self._get_bool_param("TerminateInstances")
        done, failed = [], []
        for fleet_id in self._get_param("FleetIds", []):
            fleet = self.ec2_backend.fleets.get(fleet_id)
            if fleet is None:
                failed.append(
                    {
                        "Error": {
                            "Code": "fleetIdDoesNotExist",
                            "Message": f"The fleet ID '{fleet_id}' does not exist",
                        },
                        "FleetId": fleet_id,
                    }
                )
                continue
            if fleet.state in DELETED_FLEET_STATES:
                failed.append(
                    {
                        "Error": {
                            "Code": "fleetNotInDeletableState",
                            "Message": f"The fleet {fleet_id} is {fleet.state}",
                        },
                        "FleetId": fleet_id,
                    }
                )
                continue
            previous = fleet.state
            alive = [i.id for i, _, _ in ec2_fleet_members(fleet)]
            if terminate:
                fleet.state = "deleted_terminating"
                if alive:
                    self.ec2_backend.terminate_instances(alive)
                for instance_id in alive:
                    record_fleet_event(fleet, "instance-change", "terminated", instance_id=instance_id)
            else:
                fleet.state = "deleted_running"
            record_fleet_event(fleet, "fleet-change", fleet.state)
            done.append(
                {"CurrentFleetState": fleet.state, "PreviousFleetState": previous, "FleetId": fleet_id}
            )
        _finish_deleted_fleets(self.ec2_backend)
        return ActionResult({"SuccessfulFleetDeletions": done, "UnsuccessfulFleetDeletions": failed})

    Fleets.delete_fleets = delete_fleets
    Fleets.describe_fleets = _expiring_first(Fleets.describe_fleets)


def _expire_ec2_fleets(backend: Any, now: datetime) -> dict[str, list[str]]:
    """EC2 Fleet's ValidUntil: an `expired` event; with TerminateInstancesWithExpiration the instances are
    terminated and the fleet is deleted, else it is `deleted_running`."""
    expired: dict[str, list[str]] = {}
    for fleet in list(backend.fleets.values()):
        valid_until = fleet.valid_until
        if valid_until is None or fleet.state not in LIVE_FLEET_STATES or now < _timestamp(valid_until):
            continue
        record_fleet_event(fleet, "fleet-change", "expired")
        if not fleet.terminate_instances_with_expiration:
            fleet.state = "deleted_running"
            expired[fleet.id] = []
            continue
        alive = [i.id for i, _, _ in ec2_fleet_members(fleet)]
        if alive:
            backend.terminate_instances(alive)
        for instance_id in alive:
            record_fleet_event(fleet, "instance-change", "terminated", instance_id=instance_id)
        fleet.state = "deleted"
        fleet.fulfilled_capacity = fleet.fulfilled_on_demand_capacity = fleet.fulfilled_spot_capacity = 0.0
        record_fleet_event(fleet, "fleet-change", "deleted")
        expired[fleet.id] = alive
    return expired


def maintain_fleets(backend: Any) -> None:
    """EC2's clock for both fleet APIs: ValidUntil, deletions finishing, and each live maintain fleet kept at
    its targets (replacing lost instances)."""
    expire_fleets(backend)
    _finish_deleted_fleets(backend)
    for fleet in list(backend.fleets.values()):
        maintain_ec2_fleet(fleet)
    for spot_fleet in list(backend.spot_fleet_requests.values()):
        maintain_spot_fleet(spot_fleet)


# --- IAM: service-linked roles named and refused twice as IAM does --------------------------------------

# The service-linked roles of EC2's fleets, by service: IAM's names for them (moto derives `...Forec2fleet`).
SERVICE_LINKED_ROLE_NAMES = {"ec2fleet": "EC2Fleet", "spotfleet": "EC2SpotFleet", "spot": "EC2Spot"}


def service_linked_roles_as_iam_does() -> None:
    """`CreateServiceLinkedRole` names EC2's fleet roles as IAM does (AWSServiceRoleForEC2Fleet, ...), and a
    role that exists answers `InvalidInput` ("... has been taken in this account"), not moto's
    `EntityAlreadyExists` (idempotent)."""
    if not _once("service_linked_roles_as_iam_does"):
        return
    from moto.iam import models
    from moto.iam.exceptions import EntityAlreadyExists, InvalidInput

    models.SERVICE_NAME_CONVERSION.update(SERVICE_LINKED_ROLE_NAMES)
    original = models.IAMBackend.create_service_linked_role

    def create_service_linked_role(self: Any, service_name: str, description: str, suffix: str) -> Any:
        try:
            return original(self, service_name, description, suffix)
        except EntityAlreadyExists as exc:
            name = str(exc).split("Role with name ", 1)[-1].split(" already exists", 1)[0]
            raise InvalidInput(
                f"Service role name {name} has been taken in this account, please try a different suffix."
            ) from exc

    models.IAMBackend.create_service_linked_role = create_service_linked_role


# --- Spot Fleet: on-demand capacity (OnDemandTargetCapacity), spot shortfalls, maintenance -----------------

_requested = threading.local()  # the OnDemandTargetCapacity of the request being made on this thread


def spot_fleet_on_demand(fleet: Any) -> list[tuple[Any, Any]]:
    """(instance, launch spec) of a Spot Fleet's live on-demand instances."""
    members = fleet.__dict__.setdefault("_spotfill_on_demand", [])
    members[:] = [(i, s) for i, s in members if _alive(i)]
    return list(members)


def _spec_of(fleet: Any, request: Any) -> Any:
    """The launch spec a spot request came from (moto's Spot Fleet does not keep it on the request)."""
    if getattr(request, "launch_spec", None) is not None:
        return request.launch_spec
    instance = request.instance
    return next(
        (
            s
            for s in fleet.launch_specs
            if s.instance_type == instance.instance_type and s.subnet_id in (None, instance.subnet_id)
        ),
        fleet.launch_specs[0],
    )


def _spot_fleet_members(fleet: Any) -> list[tuple[Any, Any, str]]:
    spot = [(r.instance, _spec_of(fleet, r), "spot") for r in fleet.spot_requests if _alive(r.instance)]
    return spot + [(i, s, "on-demand") for i, s in spot_fleet_on_demand(fleet)]


def _launch_spot_fleet_on_demand(fleet: Any, spec: Any) -> Any:
    reservation = fleet.ec2_backend.run_instances(
        image_id=spec.image_id,
        count=1,
        instance_type=spec.instance_type,
        is_instance_type_default=False,
        key_name=spec.key_name,
        security_group_names=spec.group_set,
        user_data=spec.user_data,
        placement=None,
        kernel_id=None,
        ramdisk_id=None,
        monitoring_enabled=spec.monitoring_enabled,
        subnet_id=spec.subnet_id,
        spot_fleet_id=fleet.id,
        tags=spec.tag_specifications,
    )
    (instance,) = reservation.instances
    if _pending_launches["on"]:
        instance._state.name, instance._state.code = "pending", 0
    fleet.__dict__.setdefault("_spotfill_on_demand", []).append((instance, spec))
    record_fleet_event(fleet, "instanceChange", "launched", instance_id=instance.id)
    return instance


def maintain_spot_fleet(fleet: Any) -> None:
    """What EC2 does for a live `maintain` Spot Fleet with on-demand capacity: the on-demand part
    (`OnDemandTargetCapacity`) and the spot part (the rest) each kept at target; excess terminated (on
    demand first) unless the last ModifySpotFleetRequest said `ExcessCapacityTerminationPolicy:
    noTermination`, missing capacity launched into pools that do not fail, spot as far as it lasts."""
    if fleet.state not in LIVE_FLEET_STATES:
        return
    on_demand_target = min(
        float(fleet.__dict__.get("on_demand_target_capacity", 0)), float(fleet.target_capacity)
    )
    spot_target = float(fleet.target_capacity) - on_demand_target
    backend = fleet.ec2_backend
    fleet.spot_requests = [r for r in fleet.spot_requests if r.instance is not None and _alive(r.instance)]
    members = _spot_fleet_members(fleet)
    keep = fleet.__dict__.get("_spotfill_excess_policy") == "noTermination"
    for kind, target in (("on-demand", on_demand_target), ("spot", spot_target)):
        mine = [(i, s) for i, s, k in members if k == kind]
        held = _units(members, kind)
        while not keep and mine and held - _weight(mine[-1][1]) >= target - 1e-9:
            instance, spec = mine.pop()
            held -= _weight(spec)
            backend.terminate_instances([instance.id])
            record_fleet_event(fleet, "instanceChange", "terminated", instance_id=instance.id)
    fleet.spot_requests = [r for r in fleet.spot_requests if _alive(r.instance)]
    members = _spot_fleet_members(fleet)
    while _units(members, "on-demand") < on_demand_target - 1e-9:
        usable = usable_specs(fleet)
        if not usable:
            break
        members.append((_launch_spot_fleet_on_demand(fleet, usable[0]), usable[0], "on-demand"))
    while _units(members, "spot") < spot_target - 1e-9:
        specs = [s for s in usable_specs(fleet) if _spot_room(fleet, s, members)]
        if not specs:
            break
        before = len(fleet.spot_requests)
        kept = fleet.launch_specs
        fleet.launch_specs = [specs[0]]
        try:
            fleet.create_spot_requests(_weight(specs[0]))
        finally:
            fleet.launch_specs = kept
        if len(fleet.spot_requests) == before:
            break
        members.append((fleet.spot_requests[-1].instance, specs[0], "spot"))
    fleet.fulfilled_capacity = _units(members, "spot") + _units(members, "on-demand")


def _patch_spot_fleet_on_demand() -> None:
    """Spot Fleet's on-demand part, which moto 5.2.5 ignores (every unit is spot there)."""
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.spot_requests import SpotFleetRequest
    from moto.ec2.responses.spot_fleets import SpotFleets

    original_init = SpotFleetRequest.__init__

    def __init__(self: Any, ec2_backend: Any, *args: Any, **kwargs: Any) -> None:
        # moto launches every unit as spot from its constructor; here the fleet launches as EC2 maintains it.
        target = kwargs.get("target_capacity", 0)
        kwargs["target_capacity"] = "0"
        original_init(self, ec2_backend, *args, **kwargs)
        self.target_capacity = int(float(target))
        self.__dict__["on_demand_target_capacity"] = int(getattr(_requested, "on_demand", 0) or 0)
        maintain_spot_fleet(self)

    SpotFleetRequest.__init__ = __init__

    lifecycle_create = SpotFleetRequest.create_spot_requests

    def create_spot_requests(self: Any, weight_to_add: float) -> None:
        if weight_to_add > 0:  # moto's constructor asks for its (zeroed) target: nothing
            lifecycle_create(self, weight_to_add)

    SpotFleetRequest.create_spot_requests = create_spot_requests

    lifecycle_terminate = SpotFleetRequest.terminate_instances

    def terminate_instances(self: Any) -> None:
        lifecycle_terminate(self)
        if self.target_capacity == 0:  # cancelled with TerminateInstances: the on-demand ones go too
            alive = [i.id for i, _ in spot_fleet_on_demand(self)]
            if alive:
                self.ec2_backend.terminate_instances(alive)

    SpotFleetRequest.terminate_instances = terminate_instances

    config_of = SpotFleetRequest.spot_fleet_request_config

    def spot_fleet_request_config(self: Any) -> dict[str, Any]:
        config = dict(config_of.fget(self))
        on_demand = spot_fleet_on_demand(self)
        config["OnDemandTargetCapacity"] = int(self.__dict__.get("on_demand_target_capacity", 0))
        config["OnDemandFulfilledCapacity"] = sum(_weight(s) for _, s in on_demand)
        return config

    SpotFleetRequest.spot_fleet_request_config = property(spot_fleet_request_config)

    original_request = SpotFleets.request_spot_fleet

    def request_spot_fleet(self: Any) -> Any:
        config = self._get_param("SpotFleetRequestConfig", {})
        _requested.on_demand = config.get("OnDemandTargetCapacity") or 0
        try:
            return original_request(self)
        finally:
            _requested.on_demand = 0

    SpotFleets.request_spot_fleet = request_spot_fleet

    def modify_spot_fleet_request(self: Any) -> Any:
        fleet_id = self._get_param("SpotFleetRequestId")
        fleet = self.ec2_backend.spot_fleet_requests.get(fleet_id)
        if fleet is None:
            raise EC2ClientError(
                "InvalidSpotFleetRequestId.NotFound", f"The spot fleet request ID '{fleet_id}' does not exist"
            )
        total = self._get_param("TargetCapacity")
        on_demand = self._get_param("OnDemandTargetCapacity")
        new_total = int(float(total)) if total is not None else int(fleet.target_capacity)
        new_on_demand = (
            int(float(on_demand))
            if on_demand is not None
            else int(fleet.__dict__.get("on_demand_target_capacity", 0))
        )
        if new_total < new_on_demand:
            # As EC2 answers it (observed: jenkinsci/ec2-fleet-plugin#130); the API reference gives no text.
            raise EC2ClientError(
                "InvalidParameter",
                f"TargetCapacity ({new_total}) cannot be less than OnDemandTargetCapacity ({new_on_demand}).",
            )
        configs = self._get_param("LaunchTemplateConfigs")
        if configs:
            if not fleet.__dict__.get("_spotfill_from_templates"):
                # The rule is the API reference's; its error text is not documented.
                raise EC2ClientError(
                    "InvalidParameterCombination",
                    "LaunchTemplateConfigs can be modified only on a Spot Fleet request that specified a "
                    "launch template (LaunchTemplateConfigs); this request specified LaunchSpecifications.",
                )
            relaunch_specs(fleet, configs, _spot_fleet_members(fleet))
        fleet.target_capacity = new_total
        fleet.__dict__["on_demand_target_capacity"] = new_on_demand
        policy = self._get_param("ExcessCapacityTerminationPolicy")
        if policy:
            fleet.__dict__["_spotfill_excess_policy"] = policy
        maintain_spot_fleet(fleet)
        return ActionResult({"Return": True})

    SpotFleets.modify_spot_fleet_request = modify_spot_fleet_request

    original_instances = SpotFleets.describe_spot_fleet_instances

    def describe_spot_fleet_instances(self: Any) -> Any:
        """Spot instances with their request, on-demand ones without (as EC2 lists them)."""
        result = original_instances(self)
        fleet = self.ec2_backend.spot_fleet_requests.get(self._get_param("SpotFleetRequestId"))
        if fleet is not None:
            alive = {r.instance.id for r in fleet.spot_requests if _alive(r.instance)}
            active = [i for i in result.result["ActiveInstances"] if i["InstanceId"] in alive]
            active += [
                {"InstanceId": i.id, "InstanceType": i.instance_type} for i, _ in spot_fleet_on_demand(fleet)
            ]
            result.result["ActiveInstances"] = active
        return result

    SpotFleets.describe_spot_fleet_instances = _expiring_first(describe_spot_fleet_instances)


# --- EC2: a new fleet is not visible at once (eventual consistency) ----------------------------------------

# What EC2's describe calls answer about a fleet it does not (yet) know: the error code and its message.
_UNKNOWN_FLEET = {
    "ec2-fleet": ("InvalidFleetId.NotFound", "The fleet ID '{}' does not exist"),
    "spot-fleet": ("InvalidSpotFleetRequestId.NotFound", "The spot fleet request ID '{}' does not exist"),
}


class FleetVisibility:
    """EC2's API is eventually consistent ("Eventual consistency in the Amazon EC2 API", EC2 Developer Guide,
    https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html): right after a create, a call
    naming the new resource may answer that it does not exist. For `lag` seconds (by `clock`) after a
    CreateFleet or RequestSpotFleet made it, a call naming the new fleet answers so here: DescribeFleets,
    DescribeFleetInstances, DescribeFleetHistory and ModifyFleet raise `InvalidFleetId.NotFound` (Spot Fleet's
    calls `InvalidSpotFleetRequestId.NotFound`), and DeleteFleets / CancelSpotFleetRequests report it
    `fleetIdDoesNotExist` / `fleetRequestIdDoesNotExist` without deleting it. The fleet itself launches as
    usual. `lag` 0 (the default, `LocalCloudOptions.fleet_visibility_lag`): visible at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lag = 0.0
        self._clock: Any = None
        self._created: dict[str, float] = {}

    def set(self, lag: float, clock: Any = None) -> None:
        """New fleets stay unknown for `lag` seconds of `clock()` (default: time.monotonic)."""
        if lag < 0:
            raise ValueError(f"the fleet visibility lag must be 0 or more seconds, got {lag}")
        import time

        with self._lock:
            self.lag = float(lag)
            self._clock = clock or time.monotonic
            self._created.clear()

    def created(self, fleet_id: str) -> None:
        with self._lock:
            if self.lag > 0 and fleet_id not in self._created:
                self._created[fleet_id] = self._clock()

    def hidden(self, fleet_id: str) -> bool:
        with self._lock:
            made = self._created.get(fleet_id)
            return made is not None and self._clock() - made < self.lag


FLEET_VISIBILITY = FleetVisibility()


def _patch_fleet_visibility() -> None:
    """Both fleet APIs answer as `FLEET_VISIBILITY` says (installed after the other fleet patches)."""
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.responses.fleets import Fleets
    from moto.ec2.responses.spot_fleets import SpotFleets

    def refusing(api: str, describe: Any, param: str) -> Any:
        code, message = _UNKNOWN_FLEET[api]

        def answered(self: Any) -> Any:
            named = self._get_param(param)
            for fleet_id in named if isinstance(named, list) else [named]:
                if fleet_id and FLEET_VISIBILITY.hidden(fleet_id):
                    raise EC2ClientError(code, message.format(fleet_id))
            return describe(self)

        answered.__name__ = describe.__name__
        return answered

    for name, param in (
        ("describe_fleets", "FleetIds"),
        ("describe_fleet_instances", "FleetId"),
        ("describe_fleet_history", "FleetId"),
        ("modify_fleet", "FleetId"),
    ):
        setattr(Fleets, name, refusing("ec2-fleet", getattr(Fleets, name), param))
    for name, param in (
        ("describe_spot_fleet_requests", "SpotFleetRequestIds"),
        ("describe_spot_fleet_instances", "SpotFleetRequestId"),
        ("describe_spot_fleet_request_history", "SpotFleetRequestId"),
        ("modify_spot_fleet_request", "SpotFleetRequestId"),
    ):
        setattr(SpotFleets, name, refusing("spot-fleet", getattr(SpotFleets, name), param))

    def recording(create: Any, id_key: str) -> Any:
        def created(self: Any) -> Any:
            result = create(self)
            FLEET_VISIBILITY.created(result.result[id_key])
            return result

        created.__name__ = create.__name__
        return created

    Fleets.create_fleet = recording(Fleets.create_fleet, "FleetId")
    SpotFleets.request_spot_fleet = recording(SpotFleets.request_spot_fleet, "SpotFleetRequestId")

    original_delete = Fleets.delete_fleets

    def delete_fleets(self: Any) -> Any:
        """A fleet EC2 does not know yet is `fleetIdDoesNotExist` (not deleted); the others as before."""
        named = list(self._get_param("FleetIds", []) or [])
        hidden = [f for f in named if FLEET_VISIBILITY.hidden(f)]
        unknown = [
            {
                "Error": {"Code": "fleetIdDoesNotExist", "Message": f"The fleet ID '{f}' does not exist"},
                "FleetId": f,
            }
            for f in hidden
        ]
        if not hidden:
            return original_delete(self)
        visible = [f for f in named if f not in hidden]
        if not visible:
            return ActionResult({"SuccessfulFleetDeletions": [], "UnsuccessfulFleetDeletions": unknown})
        get_param = self._get_param
        self._get_param = lambda name, if_none=None: (
            visible if name == "FleetIds" else get_param(name, if_none)
        )
        try:
            result = original_delete(self)
        finally:
            del self._get_param
        result.result["UnsuccessfulFleetDeletions"] = [*result.result["UnsuccessfulFleetDeletions"], *unknown]
        return result

    Fleets.delete_fleets = delete_fleets

    def cancel_spot_fleet_requests(self: Any) -> Any:
        """As EC2, per request: one it does not know (yet) is `fleetRequestIdDoesNotExist`, one already
        cancelled `fleetRequestNotInCancellableState` (moto raises for an unknown id)."""
        terminate = self._get_bool_param("TerminateInstances")
        done, failed = [], []
        for fleet_id in self._get_param("SpotFleetRequestIds", []) or []:
            fleet = self.ec2_backend.spot_fleet_requests.get(fleet_id)
            if fleet is None or FLEET_VISIBILITY.hidden(fleet_id):
                code, message = (
                    "fleetRequestIdDoesNotExist",
                    f"The spot fleet request ID '{fleet_id}' does not exist",
                )
            elif fleet.state not in LIVE_FLEET_STATES:
                code, message = (
                    "fleetRequestNotInCancellableState",
                    f"The spot fleet request {fleet_id} is {fleet.state}",
                )
            else:
                previous = fleet.state
                self.ec2_backend.cancel_spot_fleet_requests([fleet_id], terminate)
                current = "cancelled_terminating" if terminate else "cancelled_running"
                done.append(
                    {
                        "SpotFleetRequestId": fleet_id,
                        "CurrentSpotFleetRequestState": current,
                        "PreviousSpotFleetRequestState": previous,
                    }
                )
                continue
            failed.append({"SpotFleetRequestId": fleet_id, "Error": {"Code": code, "Message": message}})
        return ActionResult({"SuccessfulFleetRequests": done, "UnsuccessfulFleetRequests": failed})

    SpotFleets.cancel_spot_fleet_requests = cancel_spot_fleet_requests
