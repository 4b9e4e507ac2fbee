"""Run moto's Lambda invocations in this process, with the real handlers.

moto runs function code only in Docker. spotfill's control functions are plain Python that is installed in
this process anyway, so `inprocess_lambdas()` replaces `moto.awslambda.models.LambdaFunction.invoke`: an
invocation imports the function's `Handler` (`package.module.attr`), applies the function's environment
variables, and calls the handler with the decoded event and a small Lambda context. It works wherever moto's
backend runs in this process: under `mock_aws()` (Step Functions' interpreter calls Lambda through the
patched botocore) and inside a `ThreadedMotoServer` (the interpreter calls `http://localhost:$MOTO_PORT`,
which is served by this process).

Errors look exactly as a real Lambda reports them: an exception raised by the handler becomes FunctionError
`Unhandled` with the payload `{"errorType": <class name>, "errorMessage": str(e), "stackTrace": [...]}`, so
the state machine's `Retry` and `Catch` match on the class name (`InvalidSpecError`, `TransientAwsError`,
...). A result that is not JSON-serialisable is a `Runtime.MarshalError`, as on Lambda.

For tests the dispatcher records every invocation (which function, the event, the outcome, and the AWS API
calls the handler made, on its own thread or on threads it started, such as a thread pool's workers: the
least-privilege test compares them with the template's policies) and can inject a failure into a named
function, before or after its handler runs.

With `enforce_iam=True` every invocation acts as its function's execution role (`spotfill.iam`): each AWS
call the handler makes, on its thread or in a thread pool it submits work to, is evaluated against the
policies of the role as deployed (its inline and attached policies, read from the emulator's IAM once per
role), and a call the role does not grant fails as AWS fails it.

All control functions share one environment (template `Globals`), but the process has one `os.environ`: the
dispatcher applies a function's variables under a lock for the length of the invocation and restores them
after, clearing `spotfill_control.config.settings()` so the handler sees exactly that function's
configuration.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import botocore.client
from moto.awslambda.models import LambdaFunction

# Variables that change how boto3 clients are built: when one of them changes, cached clients are stale.
_CLIENT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class AwsCall:
    """One AWS API call a handler made, named the way boto3 names it."""

    service: str  # boto3 client name: "s3", "sqs", "ec2", "ecs", "stepfunctions", ...
    operation: str  # API operation: "SendMessageBatch", "RequestSpotFleet", ...

    @property
    def iam_action(self) -> str:
        """The IAM action that authorises the call, as `spotfill.iam` maps it (ListObjectsV2 is s3:ListBucket,
        HeadObject s3:GetObject, SendMessageBatch sqs:SendMessage, ...); the actions a call implies (PassRole,
        tag-on-create) and its resources are `spotfill.iam.requests_of`'s."""
        from spotfill.iam import OPERATION_ACTIONS, iam_prefix

        return OPERATION_ACTIONS.get(
            (self.service, self.operation), f"{iam_prefix(self.service)}:{self.operation}"
        )


@dataclass
class Invocation:
    """One call of a function's handler."""

    function_name: str
    handler: str  # "spotfill_control.handlers.monitor.handler"
    event: Any
    request_id: str
    started_at: float
    ended_at: float | None = None
    error_type: str | None = None  # None: the handler returned normally
    error_message: str | None = None
    injected: bool = False
    aws_calls: list[AwsCall] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The handler's module name, which is also the state's handler in docs/contracts/state-machine.md:
        "monitor"."""
        module = self.handler.rsplit(".", 1)[0]
        return module.rsplit(".", 1)[-1]

    @property
    def succeeded(self) -> bool:
        return self.ended_at is not None and self.error_type is None


@dataclass
class _Injection:
    error: BaseException | type[BaseException]
    when: Literal["before", "after"]
    remaining: int | None  # None: every invocation

    def make(self) -> BaseException:
        if isinstance(self.error, BaseException):
            return self.error
        return self.error("injected failure")


class LambdaContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    def __init__(self, fn: LambdaFunction, request_id: str) -> None:
        self.function_name = fn.function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = fn.function_arn
        self.memory_limit_in_mb = int(fn.memory_size)
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{fn.function_name}"
        self.log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{request_id.replace('-', '')}"
        self._deadline = time.monotonic() + float(fn.timeout)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class Dispatcher:
    """Calls handlers for moto's Lambda, records invocations, and injects failures on request."""

    def __init__(
        self, max_records: int | None = None, principal_of: Callable[[LambdaFunction], Any] | None = None
    ) -> None:
        self.invocations: list[Invocation] = []
        self._principal_of = principal_of  # the function -> the principal its handler acts as
        self.iam: Any = None  # the spotfill.iam.Enforcer, when IAM is enforced
        self._max_records = max_records
        self._injections: dict[str, _Injection] = {}
        self._lock = threading.RLock()  # one invocation at a time: os.environ is process-wide
        self._records = threading.Lock()
        self._current = threading.local()

    # ---- what tests use ----

    def inject_failure(
        self,
        name: str,
        error: BaseException | type[BaseException],
        *,
        when: Literal["before", "after"] = "before",
        times: int | None = None,
    ) -> None:
        """Make function `name` (handler module name such as "monitor", or the function's name) raise `error`.

        `when="before"` raises instead of running the handler; `"after"` runs it, keeps its side effects and
        then raises (a crash after the work, as a retried Lambda sees it). `times` limits how many invocations
        fail; None: all of them.
        """
        with self._records:
            self._injections[name] = _Injection(error, when, times)

    def clear_failures(self) -> None:
        with self._records:
            self._injections.clear()

    def invoked(self) -> list[str]:
        """Handler names in the order they were invoked."""
        with self._records:
            return [inv.name for inv in self.invocations]

    def calls_of(self, name: str) -> list[Invocation]:
        with self._records:
            return [inv for inv in self.invocations if name in (inv.name, inv.function_name)]

    # ---- what moto calls ----

    def invoke(self, fn: LambdaFunction, body: Any, request_headers: Any, response_headers: Any) -> bytes:
        event = _decode(body)
        invocation_type = _header(request_headers, "x-amz-invocation-type") or "RequestResponse"
        if invocation_type == "DryRun":
            return b""
        if invocation_type == "Event":
            threading.Thread(target=self._run, args=(fn, event), daemon=True, name="lambda-event").start()
            return b""
        payload, function_error = self._run(fn, event)
        if function_error:
            response_headers["x-amz-function-error"] = function_error
        return payload

    def _run(self, fn: LambdaFunction, event: Any) -> tuple[bytes, str | None]:
        request_id = str(uuid.uuid4())
        invocation = Invocation(
            function_name=fn.function_name,
            handler=fn.handler or "",
            event=event,
            request_id=request_id,
            started_at=time.time(),
        )
        with self._records:
            self.invocations.append(invocation)
            if self._max_records is not None and len(self.invocations) > self._max_records:
                del self.invocations[: len(self.invocations) - self._max_records]
            injection = self._take_injection(invocation)
        principal = self._principal_of(fn) if self._principal_of is not None else None
        with self._lock, _environment(fn), _acting_as(principal):
            outer = self.current_invocation()  # a handler that invokes another function synchronously
            self._current.invocation = invocation
            try:
                if injection is not None and injection.when == "before":
                    invocation.injected = True
                    raise injection.make()
                handler = _load_handler(fn.handler)
                _follow_stdout()
                result = handler(event, LambdaContext(fn, request_id))
                if injection is not None:
                    invocation.injected = True
                    raise injection.make()
            except Exception as exc:
                invocation.error_type = type(exc).__name__
                invocation.error_message = str(exc)
                return _error_payload(exc, request_id), "Unhandled"
            finally:
                self._current.invocation = outer
                invocation.ended_at = time.time()
        try:
            return json.dumps(result).encode(), None
        except (TypeError, ValueError) as exc:
            invocation.error_type = "Runtime.MarshalError"
            invocation.error_message = str(exc)
            problem = {
                "errorType": "Runtime.MarshalError",
                "errorMessage": f"Unable to marshal response: {exc}",
                "requestId": request_id,
                "stackTrace": [],
            }
            return json.dumps(problem).encode(), "Unhandled"

    def _take_injection(self, invocation: Invocation) -> _Injection | None:
        for key in (invocation.name, invocation.function_name):
            injection = self._injections.get(key)
            if injection is None:
                continue
            if injection.remaining is not None:
                injection.remaining -= 1
                if injection.remaining <= 0:
                    del self._injections[key]
            return injection
        return None

    def current_invocation(self) -> Invocation | None:
        """The invocation this thread works for: a handler's thread, or a thread a handler started."""
        return getattr(self._current, "invocation", None)

    def record_call(self, service: str, operation: str) -> None:
        invocation = self.current_invocation()
        if invocation is not None:
            invocation.aws_calls.append(AwsCall(service, operation))

    def adopt(self, thread: threading.Thread) -> None:
        """Make a thread the current handler starts (a thread pool's worker) record into its invocation."""
        invocation = self.current_invocation()
        if invocation is None:
            return
        run = thread.run

        def run_for_invocation() -> None:
            self._current.invocation = invocation
            try:
                run()
            finally:
                self._current.invocation = None

        thread.run = run_for_invocation  # type: ignore[method-assign]


@contextmanager
def _acting_as(principal: Any) -> Iterator[None]:
    if principal is None:
        yield
        return
    from spotfill import iam

    with iam.acting_as(principal):
        yield


@contextmanager
def inprocess_lambdas(
    max_records: int | None = None, *, enforce_iam: bool = False, iam_log_size: int | None = None
) -> Iterator[Dispatcher]:
    """Dispatch every moto Lambda invocation to its handler in this process, for the length of the block.

    Use it around `mock_aws()` work or around a `ThreadedMotoServer`: both run moto's backend in this process.
    Nested use is allowed; the innermost dispatcher handles invocations. `max_records` keeps only the latest
    invocations (a long-lived local cloud); None keeps them all (tests). `enforce_iam`: each handler acts as
    its function's role, and every call it makes is evaluated (`spotfill.iam.enforcing`); the enforcer is
    the dispatcher's `iam` attribute, whose log keeps the latest `iam_log_size` calls (None: all) and every
    denied one.
    """
    with contextlib.ExitStack() as stack:
        principal_of = None
        enforcer = None
        if enforce_iam:
            from spotfill import iam

            enforcer = stack.enter_context(iam.enforcing(keep=iam_log_size))
            principals = iam.RolePrincipals(_admin_client)

            def principal_of(fn: LambdaFunction) -> Any:
                return principals(fn.role, fn.function_name)

        dispatcher = Dispatcher(max_records, principal_of)
        dispatcher.iam = enforcer
        yield from _dispatching(dispatcher)


def _admin_client(service: str) -> Any:
    import boto3

    return boto3.client(service)


def _dispatching(dispatcher: Dispatcher) -> Iterator[Dispatcher]:
    original_invoke = LambdaFunction.invoke
    original_call = botocore.client.BaseClient._make_api_call
    original_start = threading.Thread.start

    def invoke(self: LambdaFunction, body: Any, request_headers: Any, response_headers: Any) -> bytes:
        return dispatcher.invoke(self, body, request_headers, response_headers)

    def make_api_call(client: Any, operation_name: str, api_params: Any) -> Any:
        dispatcher.record_call(client.meta.service_model.service_name, operation_name)
        return original_call(client, operation_name, api_params)

    def start(thread: threading.Thread) -> None:
        dispatcher.adopt(thread)
        original_start(thread)

    LambdaFunction.invoke = invoke  # type: ignore[method-assign]
    botocore.client.BaseClient._make_api_call = make_api_call  # type: ignore[method-assign]
    threading.Thread.start = start  # type: ignore[method-assign]
    try:
        yield dispatcher
    finally:
        LambdaFunction.invoke = original_invoke  # type: ignore[method-assign]
        botocore.client.BaseClient._make_api_call = original_call  # type: ignore[method-assign]
        threading.Thread.start = original_start  # type: ignore[method-assign]


def _load_handler(spec: str | None) -> Callable[[Any, Any], Any]:
    if not spec or "." not in spec:
        raise ImportError(f"Bad handler {spec!r}: expected module.attribute")
    module_name, attribute = spec.rsplit(".", 1)
    return getattr(importlib.import_module(module_name), attribute)


@contextmanager
def _environment(fn: LambdaFunction) -> Iterator[None]:
    """The function's environment in os.environ, as Lambda sets it, for the length of the block."""
    wanted = {str(k): str(v) for k, v in (fn.environment_vars or {}).items()}
    wanted.setdefault("AWS_REGION", fn.region)
    wanted.setdefault("AWS_DEFAULT_REGION", fn.region)
    saved = {key: os.environ.get(key) for key in wanted}
    clients_stale = any(os.environ.get(key) != wanted[key] for key in _CLIENT_VARIABLES if key in wanted)
    os.environ.update(wanted)
    _forget_cached_configuration(clients_stale)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _forget_cached_configuration(clients_stale)


def _forget_cached_configuration(clients_stale: bool) -> None:
    """Settings are read once per cold start; here every invocation may see another environment."""
    try:
        from spotfill_control import aws, config
    except ImportError:  # a function outside spotfill's control plane (tests' throwaway handlers)
        return
    config.settings.cache_clear()
    if clients_stale:
        aws.reset_clients()


def _decode(body: Any) -> Any:
    if body is None or body == b"" or body == "":
        return {}
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8")
    if isinstance(body, str):
        return json.loads(body)
    return body


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if str(key).lower() == wanted and value:
            return str(value)
    return None


def _error_payload(exc: BaseException, request_id: str) -> bytes:
    """What the Python runtime returns for an unhandled exception."""
    frames = traceback.format_list(traceback.extract_tb(exc.__traceback__))
    return json.dumps(
        {
            "errorMessage": str(exc),
            "errorType": type(exc).__name__,
            "requestId": request_id,
            "stackTrace": frames,
        }
    ).encode()


def _follow_stdout() -> None:
    """A Lambda logs to its runtime's stdout. Here every function shares one interpreter whose `sys.stdout`
    changes (pytest's capture, the CLI's console), and Powertools binds each Logger's handler to the
    `sys.stdout` of the moment the handler module was first imported: a handler whose stream has since been
    closed writes to the current one instead of failing with "I/O operation on closed file"."""
    for logger in list(logging.Logger.manager.loggerDict.values()):
        for log_handler in getattr(logger, "handlers", []):
            if isinstance(log_handler, logging.StreamHandler) and getattr(
                log_handler.stream, "closed", False
            ):
                # Not setStream: it flushes the old stream first, which a closed file refuses.
                with log_handler.lock or contextlib.nullcontext():
                    log_handler.stream = sys.stdout
