"""IAM, evaluated as AWS evaluates it, on every AWS call a principal makes.

Its parts, lowest first:

- `policies`: statements as IAM reads them (policy documents, AWS managed policies, a deployed role's).
- `actions`: a botocore call mapped to its IAM action, from the Service Authorization Reference.
- `resources`: the ARNs the call is authorised on, built from the action's ARN formats and the call's
  parameters (`*` when the action takes no resource-level permission).
- `conditions`: the request context a call gives, and the condition operators statements test it with.
- `decision`: a request against a principal's statements: an explicit Deny wins, else an Allow, else the
  implicit deny.
- `requests`: `requests_of(service, operation, params, account)`, every authorization request IAM makes for
  a call, its own and those it implies (PassRole, tag-on-create, what a fleet launches as its caller). A
  call the evaluator cannot map raises `UnmappedCall` naming the call: nothing is ever allowed by default.
- `principals`: who acts on the calling thread (`acting_as`, or the process's principal in a worker process).
- `enforcement`: `enforcing()`, botocore hooks that evaluate every call of the acting principal before it is
  sent and fail a denied one as AWS fails it.

This package exports what its callers use.
"""

from spotfill.iam.actions import OPERATION_ACTIONS, iam_prefix, supports_resource_level_permissions
from spotfill.iam.decision import Decision, Request, evaluate, is_allowed
from spotfill.iam.enforcement import (
    Enforcer,
    Evaluated,
    describe,
    enforce_in_this_process,
    enforcing,
)
from spotfill.iam.policies import (
    MANAGED_POLICIES,
    Statement,
    UnmappedCall,
    managed_policy_statements,
    role_statements_from_iam,
    statements_of,
)
from spotfill.iam.principals import (
    Principal,
    RolePrincipals,
    acting_as,
    acting_as_nobody,
    current_principal,
    process_acting_as,
)
from spotfill.iam.requests import requests_of
from spotfill.iam.resources import Account, grants_something

__all__ = [
    "MANAGED_POLICIES",
    "OPERATION_ACTIONS",
    "Account",
    "Decision",
    "Enforcer",
    "Evaluated",
    "Principal",
    "Request",
    "RolePrincipals",
    "Statement",
    "UnmappedCall",
    "acting_as",
    "acting_as_nobody",
    "current_principal",
    "describe",
    "enforce_in_this_process",
    "enforcing",
    "evaluate",
    "grants_something",
    "iam_prefix",
    "is_allowed",
    "managed_policy_statements",
    "process_acting_as",
    "requests_of",
    "role_statements_from_iam",
    "statements_of",
    "supports_resource_level_permissions",
]
