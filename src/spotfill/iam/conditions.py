"""IAM conditions: the request context a call gives (the condition keys the evaluator can derive from it:
`s3:prefix`, `ecs:cluster`, `aws:ResourceTag/...` of EC2 resources, `cloudwatch:namespace`, ...), and the
condition operators a statement tests it with (`condition_holds`).

AWS documentation followed:
- "IAM JSON policy elements: Condition operators", IAM User Guide:
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html
- "Single-valued vs. multivalued context keys" (ForAllValues, ForAnyValue), IAM User Guide:
  https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-single-vs-multi-valued-context-keys.html
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from spotfill.iam.policies import UnmappedCall
from spotfill.iam.resources import Account, arn_tail, param_values

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


def ec2_resource_context(resource: str, account: Account) -> dict[str, str]:
    """aws:ResourceTag/* (and ec2:ResourceTag/*) of an existing EC2 resource named in the ARN."""
    match = re.match(r"^arn:[^:]+:ec2:[^:]*:[^:]*:[a-z-]+/((i|sfr|lt|fleet)-[0-9a-zA-Z-]+)$", resource)
    if not match:
        return {}
    context: dict[str, str] = {}
    for key, value in account.tags_of(match.group(1)).items():
        context[f"aws:ResourceTag/{key}"] = value
        context[f"ec2:ResourceTag/{key}"] = value
    return context


def request_context(
    prefix: str, privilege: dict[str, Any], params: Mapping[str, Any], operation: str, account: Account
) -> dict[str, str | list[str]]:
    keys = {k.lower() for t in privilege["resource_types"].values() for k in t["condition_keys"]}
    context: dict[str, str | list[str]] = {"aws:SecureTransport": "true"}
    if prefix == "s3" and "s3:prefix" in keys and operation in ("ListObjectsV2", "ListObjects"):
        context["s3:prefix"] = params.get("Prefix", "")
        if "Delimiter" in params:
            context["s3:delimiter"] = params["Delimiter"]
    if prefix == "ecs" and "ecs:cluster" in keys:
        cluster = param_values(params, "cluster") or ["default"]  # the cluster the call works in
        context["ecs:cluster"] = account.fill(
            "arn:${Partition}:ecs:${Region}:${Account}:cluster/${Name}", {"Name": arn_tail(cluster[0])}
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
