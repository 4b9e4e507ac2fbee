"""The IAM side of the least-privilege tests: what template.yaml grants each role, what a recorded call needs.

Grants come from the translated template (SAM policy templates and inline statements expanded by the SAM
translator into each function's role), with the values CloudFormation resolved read back from the deployed
role in moto: the role of a function is the template's `Role` of its `AWS::Lambda::Function`, its inline
policies are the template's `Policies` of that role, and AWS managed policies are expanded from
`spotfill.iam.MANAGED_POLICIES`.

What a call needs, and whether a role grants it, is decided by `spotfill.iam`, the evaluator the Step
Functions harness and the local cloud enforce on every call: the action and resource from the Service
Authorization Reference, the condition keys the call carries, the actions it implies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from spotfill.iam import Account, Request, Statement, is_allowed, managed_policy_statements, requests_of
from spotfill.iam import statements_of as _statements_of

from .aws_calls import RecordedCall

Need = Request  # one permission a call needs

__all__ = [
    "Account",
    "Need",
    "Statement",
    "function_statements",
    "handler_functions",
    "is_allowed",
    "needs_of",
    "role_statements",
    "ungranted",
]


def role_statements(
    translated: Mapping[str, Any], role_id: str, physical_ids: Mapping[str, str], iam: Any
) -> list[Statement]:
    """The statements of a role of the template: its inline policies as deployed, its managed policies."""
    role = translated["Resources"][role_id]["Properties"]
    statements: list[Statement] = []
    role_name = physical_ids[role_id]
    for policy in role.get("Policies", []):
        document = iam.get_role_policy(RoleName=role_name, PolicyName=policy["PolicyName"])["PolicyDocument"]
        statements += _statements_of(document, policy["PolicyName"])
    for arn in role.get("ManagedPolicyArns", []):
        name = _managed_policy_name(arn)
        statements += managed_policy_statements(name)
    return statements


def _managed_policy_name(arn: Any) -> str:
    """The policy name of a managed policy ARN, literal or `Fn::Sub`."""
    if isinstance(arn, Mapping):
        arn = arn.get("Fn::Sub", arn)
    if not isinstance(arn, str):
        raise AssertionError(f"managed policy ARN {arn!r} is neither a string nor an Fn::Sub")
    return arn.rsplit("/", 1)[-1]


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


def needs_of(call: RecordedCall, account: Account) -> list[Need]:
    """Every permission IAM checks for the recorded call (spotfill.iam.requests_of)."""
    return requests_of(call.service, call.operation, call.params, account)


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


def resource_level_actions_granted_on_star(translated: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(role, statement, action) for every Allow with `Resource: "*"` of an action that supports
    resource-level permissions, over every role of the template (functions', the task, instance, fleet, state
    machine and event rule roles): such a grant is wider than it need be unless a condition key scopes it."""
    from spotfill.iam import supports_resource_level_permissions

    found = []
    for role_id, resource in translated["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for policy in resource["Properties"].get("Policies", []):
            for statement in _statements_of(policy["PolicyDocument"], policy["PolicyName"]):
                if statement.effect != "Allow" or "*" not in statement.resources:
                    continue
                for action in statement.actions:
                    if supports_resource_level_permissions(action):
                        found.append((role_id, statement.source, action))
    return sorted(found)
