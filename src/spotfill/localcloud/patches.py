"""Where moto 5.2.5 differs from AWS in ways a backfill would notice, the local cloud fills the gap here.

Each patch is installed once per process by `install()` and changes moto's in-process models only (the
server runs in this process), never the code under test:

- Spot Fleet: moto launches every `LaunchTemplateConfigs` entry from the template's *latest* version and
  its first override only. AWS uses the version the request names and every override, and a run's
  isolation depends on its own version's user data (two runs at once would otherwise swap clusters).
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
        _install_fleet_model()
        _patch_spot_fleet_pending()
        _patch_delete_launch_template_versions()
        _patch_execution_names()
        _patch_ecs_deregistration_error()
        _patch_rule_targets()
        _patch_spot_price_history()
        _installed = True


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
    _patch_spot_fleet_launch_templates()
    _patch_spot_fleet_lifecycle()
    _fleet_model_installed = True


# --- Spot Fleet: the launch template version and every override ---------------------------------------


def _patch_spot_fleet_launch_templates() -> None:
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


def _patch_spot_fleet_pending() -> None:
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


def _patch_spot_fleet_lifecycle() -> None:
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.models.spot_requests import SpotFleetRequest
    from moto.ec2.responses.spot_fleets import SpotFleets

    original_create = SpotFleetRequest.create_spot_requests

    def create_spot_requests(self: Any, weight_to_add: float) -> None:
        """Launch only into pools that do not fail; each failing pool reports an `error` event once."""
        reported = self.__dict__.setdefault("_spotfill_failed_specs", set())
        usable = []
        for spec in self.launch_specs:
            code = _pool_failure(self, spec)
            if code is None:
                usable.append(spec)
                continue
            if id(spec) not in reported:
                reported.add(id(spec))
                zone = _zone_of(self, spec.subnet_id) or "unknown zone"
                record_fleet_event(
                    self,
                    "error",
                    "spotFleetRequestConfigurationInvalid",
                    f"{spec.instance_type}, {spec.image_id}, Linux/UNIX (Amazon VPC), {zone}, {code}: "
                    f"{POOL_ERRORS[code]}",
                )
        if not usable:
            if "_spotfill_all_blacklisted" not in self.__dict__:
                self.__dict__["_spotfill_all_blacklisted"] = True
                record_fleet_event(
                    self,
                    "error",
                    "allLaunchSpecsTemporarilyBlacklisted",
                    "None of the launch specifications is valid and several attempts to launch instances "
                    "have failed.",
                )
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
        result = original_request(self)
        config = self._get_param("SpotFleetRequestConfig", {})
        fleet = self.ec2_backend.spot_fleet_requests[result.result["SpotFleetRequestId"]]
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
        records = [
            record
            for record in fleet_history(fleet)
            if record["Timestamp"] >= start and (not event_type or record["EventType"] == event_type)
        ]
        return ActionResult(
            {
                "HistoryRecords": records,
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
    for fleet in list(backend.spot_fleet_requests.values()):
        history = fleet_history(fleet)
        marks = [
            i
            for i, e in enumerate(history)
            if e["EventType"] == "fleetRequestChange" and e["EventInformation"]["EventSubType"] == "expired"
        ]
        if marks:
            expired[fleet.id] = [
                e["EventInformation"]["InstanceId"]
                for e in history[marks[0] :]
                if e["EventType"] == "instanceChange"
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
    return expired


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
