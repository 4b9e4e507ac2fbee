"""The ARNs a call is authorised on: built from the ARN formats of the action's resource types in the Service
Authorization Reference, each `${Placeholder}` filled from the call's parameters (`PLACEHOLDERS`), or `*` when
the action takes no resource-level permission (then only a statement whose Resource matches the literal `*`
grants it). `Account` is where calls are made, and what the evaluator looks up about existing resources.

AWS documentation followed:
- "Service Authorization Reference" (the resource types and their ARN formats):
  https://docs.aws.amazon.com/service-authorization/latest/reference/reference.html
- "IAM identifiers" (ARNs), IAM User Guide:
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_identifiers.html
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spotfill.iam.actions import privilege_of, service_data
from spotfill.iam.policies import UnmappedCall

PARTITION = "aws"


_PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")
_ACCOUNT_PLACEHOLDERS = {"Partition", "Region", "Account"}


@dataclass
class Account:
    """Where calls are made, and what the evaluator must look up about existing resources.

    `tags_of(resource id)` (EC2 resource tags, for `aws:ResourceTag/...`), `role_of_instance_profile(arn)`
    and `launch_template_data(id, version)` (the instance role a fleet's launch template passes) are
    answered by `AwsLookups` against the account itself; tests may pass plain functions."""

    region: str
    account_id: str
    tags_of: Callable[[str], Mapping[str, str]] = lambda _: {}
    role_of_instance_profile: Callable[[str], str] = lambda arn: arn
    launch_template_data: Callable[[str, str], Mapping[str, Any]] = lambda *_: {}
    partition: str = PARTITION

    def fill(self, arn_format: str, values: Mapping[str, str]) -> str:
        every = {"Partition": self.partition, "Region": self.region, "Account": self.account_id, **values}
        return _PLACEHOLDER.sub(lambda m: every[m.group(1)], arn_format)


def _format_pattern(arn_format: str) -> re.Pattern[str]:
    """An ARN format as a regex: names that hold paths (object keys, role paths) may contain "/"."""

    def placeholder(name: str) -> str:
        if name in _ACCOUNT_PLACEHOLDERS:
            return "[^:]*"
        if any(word in name for word in ("Object", "Path", "ParameterName", "LogStream")):
            return ".+"
        return "[^:/]+"

    pieces = _PLACEHOLDER.split(arn_format)  # text, placeholder name, text, ...
    regex = "".join(re.escape(p) if i % 2 == 0 else placeholder(p) for i, p in enumerate(pieces))
    return re.compile(f"^{regex}$")


def grants_something(action: str, resource: str) -> bool:
    """Whether a statement's Resource can name a resource the action is authorised on: `*` always; an ARN
    pattern only when it matches the ARN format of one of the action's resource types (an action that takes
    no resource ARN, such as ecs:ListServices, is granted by nothing but `*`)."""
    if resource == "*":
        return True
    prefix = action.split(":", 1)[0]
    data = service_data(prefix)
    literal = resource.replace("*", "x").replace("?", "x")
    return any(
        _format_pattern(data["resources"][name]["arn"]).match(literal)
        for name in privilege_of(action)["resource_types"]
        if name
    )


def arn_tail(value: str, sep: str = "/") -> str:
    return value.rsplit(sep, 1)[-1]


def param_values(params: Mapping[str, Any], *names: str) -> list[str] | None:
    """The first of `names` the call passes, as a list (scalars and lists alike)."""
    for name in names:
        value = params.get(name)
        if value is None:
            continue
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return None


def _ecs_cluster_name(params: Mapping[str, Any], operation: str) -> list[str] | None:
    names = param_values(params, "cluster", "clusterName", "clusters")
    if names is None:
        # A task definition is not in a cluster; every other cluster-scoped call defaults to "default".
        return None if "TaskDefinition" in operation else ["default"]
    return [arn_tail(n) for n in names]


def _ecs_service_name(params: Mapping[str, Any], operation: str) -> list[str] | None:
    names = param_values(params, "service", "serviceName", "services")
    return None if names is None else [arn_tail(n) for n in names]


def _ecs_task_definition(params: Mapping[str, Any], operation: str) -> tuple[str, str] | None:
    if operation == "RegisterTaskDefinition":
        return (params["family"], "*")  # the revision it creates
    value = params.get("taskDefinition")
    if value is None:
        return None
    family, _, revision = arn_tail(value).partition(":")
    return (family, revision or "*")


def _states_names(params: Mapping[str, Any], operation: str, part: str) -> list[str] | None:
    if "executionArn" in params:  # arn:aws:states:r:a:execution:<state machine>:<execution>
        pieces = params["executionArn"].split(":")
        return [pieces[6] if part == "machine" else pieces[7]]
    if part == "machine" and "stateMachineArn" in params:
        return [params["stateMachineArn"].split(":")[6]]
    return None


def _s3_keys(params: Mapping[str, Any], operation: str) -> list[str] | None:
    if operation == "DeleteObjects":
        return [o["Key"] for o in params["Delete"]["Objects"]]
    return param_values(params, "Key")


def _sqs_queue(params: Mapping[str, Any], operation: str) -> list[str] | None:
    if "QueueName" in params:
        return [params["QueueName"]]
    if "QueueUrl" in params:
        return [arn_tail(params["QueueUrl"].rstrip("/"))]
    return None


def _ec2_fleet_ids(params: Mapping[str, Any], operation: str) -> list[str] | None:
    if operation == "RequestSpotFleet":
        return ["*"]  # the request it creates
    return param_values(params, "SpotFleetRequestIds", "SpotFleetRequestId")


# The service-linked roles CreateServiceLinkedRole makes, by service (their names are fixed by AWS).
SERVICE_LINKED_ROLES = {
    "ec2fleet.amazonaws.com": "AWSServiceRoleForEC2Fleet",
    "spotfleet.amazonaws.com": "AWSServiceRoleForEC2SpotFleet",
    "spot.amazonaws.com": "AWSServiceRoleForEC2Spot",
}


def _service_linked_role(params: Mapping[str, Any]) -> list[str]:
    """`aws-service-role/<service>/<role>`: the path and name of the role CreateServiceLinkedRole makes."""
    service = params["AWSServiceName"]
    if service not in SERVICE_LINKED_ROLES:
        raise UnmappedCall(f"iam.CreateServiceLinkedRole: no known service-linked role for {service}")
    return [f"aws-service-role/{service}/{SERVICE_LINKED_ROLES[service]}"]


def _event_buses(params: Mapping[str, Any], operation: str) -> list[str] | None:
    if operation == "PutEvents":
        return sorted({arn_tail(e.get("EventBusName") or "default") for e in params["Entries"]})
    names = param_values(params, "EventBusName")
    return None if names is None else [arn_tail(n) for n in names]


Resolver = Callable[[Mapping[str, Any], str], "list[str] | None"]

# IAM prefix -> ARN placeholder -> the values a call's parameters give it (None: the call names none).
PLACEHOLDERS: dict[str, dict[str, Resolver]] = {
    "s3": {
        "BucketName": lambda p, op: param_values(p, "Bucket"),
        "ObjectName": _s3_keys,
    },
    "sqs": {"QueueName": _sqs_queue},
    "ecs": {
        "ClusterName": _ecs_cluster_name,
        "ServiceName": _ecs_service_name,
        "ContainerInstanceId": lambda p, op: (
            None
            if (v := param_values(p, "containerInstance", "containerInstances")) is None
            else [arn_tail(x) for x in v]
        ),
        "TaskId": lambda p, op: (
            None if (v := param_values(p, "task", "tasks")) is None else [arn_tail(x) for x in v]
        ),
        "TaskDefinitionFamilyName": lambda p, op: (
            None if (t := _ecs_task_definition(p, op)) is None else [t[0]]
        ),
        "TaskDefinitionRevisionNumber": lambda p, op: (
            None if (t := _ecs_task_definition(p, op)) is None else [t[1]]
        ),
        "CapacityProviderName": lambda p, op: (
            param_values(p, "capacityProvider", "name") if op.endswith("CapacityProvider") else None
        ),
        "TaskSetId": lambda p, op: param_values(p, "taskSet", "taskSets"),
    },
    "ec2": {
        "InstanceId": lambda p, op: param_values(p, "InstanceIds", "InstanceId"),
        "SpotFleetRequestId": _ec2_fleet_ids,
        "LaunchTemplateId": lambda p, op: (
            ["*"] if op == "CreateLaunchTemplate" else param_values(p, "LaunchTemplateId")
        ),
        "ImageId": lambda p, op: param_values(p, "ImageIds", "ImageId"),
        "SecurityGroupId": lambda p, op: param_values(p, "GroupIds", "GroupId", "SecurityGroupIds"),
        "SubnetId": lambda p, op: param_values(p, "SubnetIds", "SubnetId"),
        "VolumeId": lambda p, op: param_values(p, "VolumeIds", "VolumeId"),
        "VpcId": lambda p, op: param_values(p, "VpcIds", "VpcId"),
        "KeyPairName": lambda p, op: param_values(p, "KeyNames", "KeyName"),
        "SnapshotId": lambda p, op: param_values(p, "SnapshotIds", "SnapshotId"),
        "NetworkInterfaceId": lambda p, op: param_values(p, "NetworkInterfaceIds", "NetworkInterfaceId"),
        "PlacementGroupName": lambda p, op: param_values(p, "GroupNames") if "PlacementGroup" in op else None,
        "FleetId": lambda p, op: ["*"] if op == "CreateFleet" else param_values(p, "FleetIds", "FleetId"),
    },
    "states": {
        "StateMachineName": lambda p, op: _states_names(p, op, "machine"),
        "ExecutionId": lambda p, op: _states_names(p, op, "execution"),
    },
    "ssm": {
        "ParameterNameWithoutLeadingSlash": lambda p, op: (
            None if (v := param_values(p, "Names", "Name")) is None else [n.lstrip("/") for n in v]
        ),
    },
    "events": {
        "EventBusName": _event_buses,
        "RuleName": lambda p, op: param_values(p, "Rule", "Name") if "Rule" in op or "Target" in op else None,
    },
    "sns": {"TopicName": lambda p, op: None if "TopicArn" not in p else [arn_tail(p["TopicArn"], ":")]},
    "lambda": {
        "FunctionName": lambda p, op: None if "FunctionName" not in p else [arn_tail(p["FunctionName"], ":")]
    },
    "iam": {
        "RoleNameWithPath": lambda p, op: (
            _service_linked_role(p) if op == "CreateServiceLinkedRole" else param_values(p, "RoleName")
        ),
        "InstanceProfileNameWithPath": lambda p, op: param_values(p, "InstanceProfileName"),
        "PolicyNameWithPath": lambda p, op: None,
    },
    "logs": {
        "LogGroupName": lambda p, op: param_values(p, "logGroupName"),
        "LogStreamName": lambda p, op: param_values(p, "logStreamName"),
    },
    "cloudformation": {
        "StackName": lambda p, op: (
            None if "StackName" not in p else [arn_tail(p["StackName"].split("/")[0], ":")]
        ),
        "Id": lambda p, op: ["*"],
    },
    "ecr": {"RepositoryName": lambda p, op: param_values(p, "repositoryName")},
    "servicequotas": {
        "ServiceCode": lambda p, op: param_values(p, "ServiceCode"),
        "QuotaCode": lambda p, op: param_values(p, "QuotaCode"),
    },
}

# ARN fix-ups the formats do not express: AWS's public SSM parameters live in no account.
_PUBLIC_SSM = re.compile(r"^(arn:[^:]+:ssm:[^:]*:)[0-9]*(:parameter/aws/service/.*)$")


def fix_arn(arn: str) -> str:
    return _PUBLIC_SSM.sub(r"\1\2", arn)


def resources_of(
    prefix: str,
    privilege: dict[str, Any],
    params: Mapping[str, Any],
    operation: str,
    account: Account,
    call: str,
) -> list[str]:
    """The resource ARNs the call names for this action's resource types; ["*"] where it names none."""
    data = service_data(prefix)
    resource_types = {name: t for name, t in privilege["resource_types"].items() if name}
    if not resource_types:
        return ["*"]
    if any(k in params for k in ("resourceArn", "ResourceArn")):  # TagResource and the like name the ARN
        return [params.get("resourceArn") or params["ResourceArn"]]
    resolvers = PLACEHOLDERS.get(prefix, {})
    resolved: list[str] = []
    unknown: list[str] = []
    for name, resource_type in resource_types.items():
        arn_format = data["resources"][name]["arn"]
        wanted = [p for p in _PLACEHOLDER.findall(arn_format) if p not in _ACCOUNT_PLACEHOLDERS]
        missing = [p for p in wanted if p not in resolvers]
        if missing:
            if resource_type["required"]:
                unknown += [f"{p} (in {name}: {arn_format})" for p in missing]
            continue
        values = {p: resolvers[p](params, operation) for p in wanted}
        if any(v is None for v in values.values()):
            continue  # the call does not name a resource of this type
        combinations: list[dict[str, str]] = [{}]
        for placeholder, options in values.items():
            combinations = [{**c, placeholder: o} for c in combinations for o in options or []]
        resolved += [fix_arn(account.fill(arn_format, c)) for c in combinations]
    if resolved:
        return list(dict.fromkeys(resolved))
    if unknown:
        raise UnmappedCall(f"{call}: cannot derive the resource from the call: unknown placeholder {unknown}")
    return ["*"]


def ec2_arn(account: Account, resource: str, *, regional_account: bool = True) -> str:
    owner = "${Account}" if regional_account else ""
    return account.fill(f"arn:${{Partition}}:ec2:${{Region}}:{owner}:{resource}", {})
