"""IAM enforced on every AWS call: `enforcing()` installs botocore hooks on every client created while it is
active. For the principal acting on the calling thread, each call is evaluated before it is sent; a denied
call fails as AWS fails it (`ClientError` AccessDenied / AccessDeniedException / UnauthorizedOperation, HTTP
403, AWS's message) without reaching the service, and an S3 GetObject or HeadObject of a missing key answers
403, not 404, when the principal may not s3:ListBucket the bucket, as S3 does; an allowed EC2 call with
`DryRun=True` answers DryRunOperation (HTTP 412) without reaching the service, a denied one
UnauthorizedOperation (403), as EC2 does. Calls made outside any principal (a test's setup, the CLI acting as
the user, the emulator's internals) are not evaluated.

AWS documentation followed:
- "Troubleshoot access denied error messages", IAM User Guide:
  https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_access-denied.html
- "GetObject" (a missing key without s3:ListBucket is 403), Amazon S3 API Reference:
  https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html
- The `DryRun` parameter of every EC2 action, e.g. "CreateFleet", Amazon EC2 API Reference:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateFleet.html
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import botocore.session
from botocore.awsrequest import AWSResponse

from spotfill.iam.decision import Decision, Request, evaluate
from spotfill.iam.policies import UnmappedCall
from spotfill.iam.principals import (
    Principal,
    RolePrincipals,
    acting_as,
    carried,
    current_principal,
    set_process_principal,
)
from spotfill.iam.requests import requests_of
from spotfill.iam.resources import PARTITION, Account

_PARAMS_KEY = "spotfill.iam.params"
# EC2's answer to an authorised DryRun request (HTTP 412), word for word.
DRY_RUN_MESSAGE = "Request would have succeeded, but DryRun flag is set."


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
    return _patched["submit"](self, carried(fn), *args, **kwargs)


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
    client = client or _default_client
    principal = RolePrincipals(client)(role_arn, session_name)
    enforcer = Enforcer(AwsLookups(client))
    _install(enforcer)
    set_process_principal(principal)
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
