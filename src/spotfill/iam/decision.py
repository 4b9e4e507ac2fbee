"""The IAM decision: an authorization request (action, resource, context) against a principal's statements,
decided as IAM decides for identity-based policies: an explicit Deny wins, else an Allow, else the implicit
deny.

AWS documentation followed: "Policy evaluation logic" and "Determining whether a request is allowed or denied
within an account", IAM User Guide:
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html,
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic_policy-eval-denyallow.html
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from spotfill.iam.conditions import condition_holds
from spotfill.iam.policies import Statement


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
