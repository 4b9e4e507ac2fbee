"""The IAM side of the least-privilege test: what template.yaml grants each function, what a call needs.

Grants come from the translated template (SAM policy templates and inline statements expanded by the SAM
translator into each function's role), with the values CloudFormation resolved read back from the deployed
role in moto: the role of a function is the template's `Role` of its `AWS::Lambda::Function`, its inline
policies are the template's `Policies` of that role, and AWS managed policies are expanded from a small local
map (the template uses only AWSLambdaBasicExecutionRole on functions).

What a call needs is derived from its API parameters as IAM authorises it: the action (ListObjectsV2 is
s3:ListBucket, HeadObject s3:GetObject, the SQS batch calls their single action, ...), the resource ARN where
the action supports resource-level permissions and the parameters name it (None where it does not: the
statement's Resource is then not consulted), the condition keys the request carries, and the actions a call
implies (iam:PassRole for the roles a fleet or a task definition names, tag-on-create permissions).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from .aws_calls import RecordedCall

PARTITION = "aws"

# Managed policies the template attaches to function roles, as AWS defines them.
MANAGED_POLICIES: dict[str, list[dict[str, Any]]] = {
    "AWSLambdaBasicExecutionRole": [
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": "*",
        }
    ]
}

_IAM_PREFIX = {"stepfunctions": "states", "service-quotas": "servicequotas"}


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: Mapping[str, Mapping[str, Any]] = field(hash=False)
    source: str = ""  # "<policy name>/<sid or index>", for messages

    @classmethod
    def parse(cls, raw: Mapping[str, Any], source: str) -> Statement:
        def as_tuple(value: Any) -> tuple[str, ...]:
            return (value,) if isinstance(value, str) else tuple(value)

        return cls(
            effect=raw["Effect"],
            actions=as_tuple(raw.get("Action", ())),
            resources=as_tuple(raw.get("Resource", ("*",))),
            conditions=raw.get("Condition", {}),
            source=source,
        )


@dataclass(frozen=True)
class Need:
    """One permission a call needs."""

    action: str
    resource: str | None  # None: the action takes no resource-level permission (or it cannot be derived)
    context: Mapping[str, str | list[str]] = field(default_factory=dict, hash=False)

    def __str__(self) -> str:
        where = f" on {self.resource}" if self.resource else ""
        when = f" with {dict(self.context)}" if self.context else ""
        return f"{self.action}{where}{when}"


# ------------------------------------------------------------------------------------------ grants


def role_statements(
    translated: Mapping[str, Any], role_id: str, physical_ids: Mapping[str, str], iam: Any
) -> list[Statement]:
    """The statements of a role of the template: its inline policies as deployed, its managed policies."""
    role = translated["Resources"][role_id]["Properties"]
    statements: list[Statement] = []
    role_name = physical_ids[role_id]
    for policy in role.get("Policies", []):
        document = iam.get_role_policy(RoleName=role_name, PolicyName=policy["PolicyName"])["PolicyDocument"]
        document = json.loads(document) if isinstance(document, str) else document
        raw_statements = document["Statement"]
        if isinstance(raw_statements, dict):
            raw_statements = [raw_statements]
        for index, raw in enumerate(raw_statements):
            statements.append(Statement.parse(raw, f"{policy['PolicyName']}/{raw.get('Sid', index)}"))
    for arn in role.get("ManagedPolicyArns", []):
        name = json.dumps(arn).rsplit("/", 1)[-1].strip('"}]')
        if name not in MANAGED_POLICIES:
            raise AssertionError(f"{role_id}: managed policy {arn} is not in the local map")
        statements += [Statement.parse(raw, name) for raw in MANAGED_POLICIES[name]]
    return statements


def function_statements(
    translated: Mapping[str, Any], physical_ids: Mapping[str, str], iam: Any
) -> dict[str, list[Statement]]:
    """Logical id of every function -> the statements its role grants."""
    return {
        logical_id: role_statements(
            translated, resource["Properties"]["Role"]["Fn::GetAtt"][0], physical_ids, iam
        )
        for logical_id, resource in translated["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
    }


def handler_functions(translated: Mapping[str, Any]) -> dict[str, str]:
    """Handler module ("monitor") -> function logical id ("MonitorFunction")."""
    functions = {}
    for logical_id, resource in translated["Resources"].items():
        if resource["Type"] == "AWS::Lambda::Function":
            handler = resource["Properties"]["Handler"]
            functions[handler.rsplit(".", 2)[-2]] = logical_id
    return functions


# ------------------------------------------------------------------------------------------ evaluation


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, Any]) -> bool:
    if_exists = operator.endswith("IfExists")
    operator = operator.removesuffix("IfExists")
    actual = next((v for k, v in context.items() if k.lower() == key.lower()), None)
    if actual is None:
        return if_exists
    actual_values = actual if isinstance(actual, list) else [actual]
    expected_values = expected if isinstance(expected, list) else [expected]
    compare: Callable[[str, str], bool]
    if operator in ("StringEquals", "ArnEquals"):
        compare = lambda a, e: a == e  # noqa: E731
    elif operator in ("StringLike", "ArnLike"):
        compare = fnmatchcase
    elif operator == "StringEqualsIgnoreCase":
        compare = lambda a, e: a.lower() == e.lower()  # noqa: E731
    elif operator == "Bool":
        compare = lambda a, e: str(a).lower() == str(e).lower()  # noqa: E731
    elif operator in ("StringNotEquals", "StringNotLike"):
        positive = "StringEquals" if operator == "StringNotEquals" else "StringLike"
        return not _condition_holds(positive, key, expected, context)
    else:
        raise AssertionError(f"condition operator {operator} is not supported by this test")
    return all(any(compare(str(a), str(e)) for e in expected_values) for a in actual_values)


def statement_applies(statement: Statement, need: Need) -> bool:
    if not any(fnmatchcase(need.action.lower(), pattern.lower()) for pattern in statement.actions):
        return False
    if need.resource is not None and not any(fnmatchcase(need.resource, r) for r in statement.resources):
        return False
    return all(
        _condition_holds(operator, key, expected, need.context)
        for operator, pairs in statement.conditions.items()
        for key, expected in pairs.items()
    )


def is_allowed(statements: Iterable[Statement], need: Need) -> bool:
    applying = [s for s in statements if statement_applies(s, need)]
    return any(s.effect == "Allow" for s in applying) and not any(s.effect == "Deny" for s in applying)


# ------------------------------------------------------------------------------------------ what calls need


@dataclass(frozen=True)
class Account:
    region: str
    account_id: str
    # For the implied permissions: instance profile ARN -> role ARN; launch template version -> data;
    # EC2 resource id -> tags.
    role_of_instance_profile: Callable[[str], str]
    launch_template_data: Callable[[str, str], Mapping[str, Any]]
    tags_of: Callable[[str], Mapping[str, str]]

    def arn(self, service: str, resource: str, *, account: bool = True, region: bool = True) -> str:
        return (
            f"arn:{PARTITION}:{service}:{self.region if region else ''}:{self.account_id if account else ''}:"
            f"{resource}"
        )


def _s3(call: RecordedCall, account: Account) -> list[Need]:
    p, op = call.params, call.operation
    bucket_arn = f"arn:{PARTITION}:s3:::{p.get('Bucket', '')}"
    if op in ("ListObjectsV2", "ListObjects"):
        return [Need("s3:ListBucket", bucket_arn, {"s3:prefix": p.get("Prefix", "")})]
    if op == "HeadBucket":
        return [Need("s3:ListBucket", bucket_arn)]
    if op in ("HeadObject", "GetObject"):
        return [Need("s3:GetObject", f"{bucket_arn}/{p['Key']}")]
    if op == "DeleteObjects":
        return [Need("s3:DeleteObject", f"{bucket_arn}/{o['Key']}") for o in p["Delete"]["Objects"]]
    if op == "CopyObject":
        source = p["CopySource"]
        source = source if isinstance(source, str) else f"{source['Bucket']}/{source['Key']}"
        return [
            Need("s3:PutObject", f"{bucket_arn}/{p['Key']}"),
            Need("s3:GetObject", f"arn:aws:s3:::{source}"),
        ]
    if "Key" in p:
        return [Need(f"s3:{op}", f"{bucket_arn}/{p['Key']}")]
    return [Need(f"s3:{op}", bucket_arn if "Bucket" in p else None)]


def _sqs(call: RecordedCall, account: Account) -> list[Need]:
    p = call.params
    name = p.get("QueueName") or (p["QueueUrl"].rstrip("/").rsplit("/", 1)[-1] if "QueueUrl" in p else None)
    resource = account.arn("sqs", name) if name else None
    action = f"sqs:{call.operation.removesuffix('Batch')}"
    needs = [Need(action, resource)]
    if call.operation == "CreateQueue" and p.get("tags"):
        needs.append(Need("sqs:TagQueue", resource))
    return needs


def _ecs_cluster(value: str | None, account: Account) -> str:
    value = value or "default"
    return value if value.startswith("arn:") else account.arn("ecs", f"cluster/{value}")


def _ecs(call: RecordedCall, account: Account) -> list[Need]:
    p, op = call.params, call.operation
    cluster_arn = _ecs_cluster(p.get("cluster") or p.get("clusterName"), account)
    cluster_name = cluster_arn.rsplit("/", 1)[-1]

    def service_arn(service: str) -> str:
        return (
            service if service.startswith("arn:") else account.arn("ecs", f"service/{cluster_name}/{service}")
        )

    needs: list[Need] = []
    if op == "CreateCluster":
        needs.append(Need("ecs:CreateCluster", cluster_arn))
        if p.get("tags"):
            needs.append(Need("ecs:TagResource", cluster_arn, {"ecs:CreateAction": "CreateCluster"}))
    elif op == "DescribeClusters":
        needs += [Need(f"ecs:{op}", _ecs_cluster(c, account)) for c in p.get("clusters", ["default"])]
    elif op in ("CreateService", "UpdateService", "DeleteService"):
        arn = service_arn(p.get("serviceName") or p["service"])
        needs.append(Need(f"ecs:{op}", arn))
        if op == "CreateService" and p.get("tags"):
            needs.append(Need("ecs:TagResource", arn, {"ecs:CreateAction": "CreateService"}))
    elif op == "DescribeServices":
        needs += [Need(f"ecs:{op}", service_arn(s)) for s in p["services"]]
    elif op == "DescribeContainerInstances":
        needs += [
            Need(
                f"ecs:{op}",
                c if c.startswith("arn:") else account.arn("ecs", f"container-instance/{cluster_name}/{c}"),
            )
            for c in p["containerInstances"]
        ]
    elif op in (
        "DeleteCluster",
        "ListServices",
        "ListContainerInstances",
        "ListTasks",
        "DeregisterContainerInstance",
        "UpdateContainerInstancesState",
    ):
        needs.append(Need(f"ecs:{op}", cluster_arn))
    elif op == "RegisterTaskDefinition":
        needs.append(Need(f"ecs:{op}", None))
        for key in ("taskRoleArn", "executionRoleArn"):
            if p.get(key):
                needs.append(Need("iam:PassRole", p[key], {"iam:PassedToService": "ecs-tasks.amazonaws.com"}))
        if p.get("tags"):
            needs.append(Need("ecs:TagResource", None, {"ecs:CreateAction": "RegisterTaskDefinition"}))
    else:  # task definitions and the List*/Describe* calls without resource-level permissions
        needs.append(Need(f"ecs:{op}", None))
    return needs


def _ec2(call: RecordedCall, account: Account) -> list[Need]:
    p, op = call.params, call.operation
    if op in ("CreateLaunchTemplateVersion", "DeleteLaunchTemplateVersions", "ModifyLaunchTemplate"):
        return [Need(f"ec2:{op}", account.arn("ec2", f"launch-template/{p['LaunchTemplateId']}"))]
    if op == "CancelSpotFleetRequests":
        return [
            Need(f"ec2:{op}", account.arn("ec2", f"spot-fleet-request/{i}")) for i in p["SpotFleetRequestIds"]
        ]
    if op in ("ModifySpotFleetRequest", "DescribeSpotFleetRequestHistory"):
        return [Need(f"ec2:{op}", account.arn("ec2", f"spot-fleet-request/{p['SpotFleetRequestId']}"))]
    if op == "TerminateInstances":
        return [
            Need(
                f"ec2:{op}",
                account.arn("ec2", f"instance/{i}"),
                {f"aws:ResourceTag/{k}": v for k, v in account.tags_of(i).items()},
            )
            for i in p["InstanceIds"]
        ]
    if op == "RequestSpotFleet":
        config = p["SpotFleetRequestConfig"]
        fleet = account.arn("ec2", "spot-fleet-request/*")
        needs = [
            Need(f"ec2:{op}", fleet),
            Need("iam:PassRole", config["IamFleetRole"], {"iam:PassedToService": "spotfleet.amazonaws.com"}),
        ]
        for launch_config in config.get("LaunchTemplateConfigs", []):
            specification = launch_config["LaunchTemplateSpecification"]
            data = account.launch_template_data(
                specification["LaunchTemplateId"], str(specification["Version"])
            )
            profile = data.get("IamInstanceProfile", {}).get("Arn")
            if profile:
                needs.append(
                    Need(
                        "iam:PassRole",
                        account.role_of_instance_profile(profile),
                        {"iam:PassedToService": "ec2.amazonaws.com"},
                    )
                )
        if config.get("TagSpecifications"):
            needs.append(Need("ec2:CreateTags", fleet, {"ec2:CreateAction": "RequestSpotFleet"}))
        return needs
    return [Need(f"ec2:{op}", None)]  # Describe* take no resource-level permissions


def _events(call: RecordedCall, account: Account) -> list[Need]:
    if call.operation != "PutEvents":
        return [Need(f"events:{call.operation}", None)]
    needs = []
    for entry in call.params["Entries"]:
        bus = entry.get("EventBusName", "default")
        needs.append(
            Need(
                "events:PutEvents",
                bus if bus.startswith("arn:") else account.arn("events", f"event-bus/{bus}"),
            )
        )
    return needs


def _states(call: RecordedCall, account: Account) -> list[Need]:
    p = call.params
    resource = p.get("stateMachineArn") or p.get("executionArn")
    return [Need(f"states:{call.operation}", resource)]


def _ssm(call: RecordedCall, account: Account) -> list[Need]:
    p = call.params
    names = p["Names"] if "Names" in p else [p["Name"]] if "Name" in p else []

    def arn(name: str) -> str:
        if name.startswith("arn:"):
            return name
        public = name.startswith("/aws/service/")
        return account.arn("ssm", f"parameter/{name.lstrip('/')}", account=not public)

    return [Need(f"ssm:{call.operation}", arn(n)) for n in names] or [Need(f"ssm:{call.operation}", None)]


def _sns(call: RecordedCall, account: Account) -> list[Need]:
    return [Need(f"sns:{call.operation}", call.params.get("TopicArn"))]


def _cloudwatch(call: RecordedCall, account: Account) -> list[Need]:
    context = {"cloudwatch:namespace": call.params["Namespace"]} if "Namespace" in call.params else {}
    return [Need(f"cloudwatch:{call.operation}", None, context)]


def _servicequotas(call: RecordedCall, account: Account) -> list[Need]:
    p = call.params
    if call.operation == "GetServiceQuota":  # the quota's ARN; GetAWSDefaultServiceQuota takes none
        quota = account.arn("servicequotas", f"{p['ServiceCode']}/{p['QuotaCode']}")
        return [Need("servicequotas:GetServiceQuota", quota, {"servicequotas:service": p["ServiceCode"]})]
    return [Need(f"servicequotas:{call.operation}", None)]


def _ecr(call: RecordedCall, account: Account) -> list[Need]:
    p = call.params
    if "repositoryName" not in p:
        return [Need(f"ecr:{call.operation}", None)]
    registry = p.get("registryId", account.account_id)
    repository = f"arn:{PARTITION}:ecr:{account.region}:{registry}:repository/{p['repositoryName']}"
    return [Need(f"ecr:{call.operation}", repository)]


_NEEDS = {
    "s3": _s3,
    "sqs": _sqs,
    "ecs": _ecs,
    "ec2": _ec2,
    "events": _events,
    "stepfunctions": _states,
    "ssm": _ssm,
    "sns": _sns,
    "cloudwatch": _cloudwatch,
    "service-quotas": _servicequotas,
    "ecr": _ecr,
}


def needs_of(call: RecordedCall, account: Account) -> list[Need]:
    derive = _NEEDS.get(call.service)
    if derive is None:
        return [Need(f"{_IAM_PREFIX.get(call.service, call.service)}:{call.operation}", None)]
    return derive(call, account)


def ungranted(
    calls: Iterable[tuple[RecordedCall, list[Need]]],
    grants: Mapping[str, list[Statement]],
    functions: Mapping[str, str],
) -> list[str]:
    """One line per permission a call needs and its function is not granted: function, call, missing grant."""
    missing = set()
    for call, needs in calls:
        function = functions[call.handler]
        for need in needs:
            if not is_allowed(grants[function], need):
                missing.add(
                    f"{function} ({call.handler}) calls {call.service}.{call.operation}, which needs {need}: "
                    f"no statement of {function}'s role in template.yaml grants it"
                )
    return sorted(missing)
