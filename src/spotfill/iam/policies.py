"""IAM policies as the evaluator reads them: statements from policy documents, AWS managed policies and the
policies of a deployed role (`role_statements_from_iam`), and `UnmappedCall`, raised wherever the evaluator
cannot tell what IAM would check (nothing is ever allowed by default).

AWS documentation followed: "IAM JSON policy element reference", IAM User Guide,
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements.html
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class UnmappedCall(Exception):
    """The evaluator cannot tell what IAM would check for this call: never silently allowed."""


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
