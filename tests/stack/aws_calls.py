"""Record the AWS API calls each control-plane handler makes, with their parameters.

A botocore event hook on every client created while recording: `before-parameter-build` keeps the call's API
parameters in the request context, `before-call` records the call. A call is attributed to the handler being
executed by looking up the Python stack for the outermost frame of a `spotfill_control.handlers.<name>`
module, so attribution needs no cooperation from whoever invokes the handler (the Step Functions harness, the
local cloud, or a test calling a handler directly) and calls made by anything else (moto, the harness's
simulated workers) are ignored. Work a handler hands to a thread pool (batched sends, parallel HeadObjects)
runs on threads whose stacks hold no handler frame: while recording, `ThreadPoolExecutor.submit` carries the
submitting handler over to the task.
"""

from __future__ import annotations

import copy
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import botocore.session

from spotfill.iam import acting_as_nobody

HANDLER_PACKAGE = "spotfill_control.handlers."
_PARAMS_KEY = "spotfill.api_params"
_inherited = threading.local()  # the handler that submitted the task this pool thread runs


@dataclass(frozen=True)
class RecordedCall:
    handler: str  # handler module: "monitor", "prepare_run", ...
    service: str  # botocore service name: "s3", "stepfunctions", ...
    operation: str  # "ListObjectsV2", "RequestSpotFleet", ...
    params: dict[str, Any] = field(hash=False, compare=False)

    def __str__(self) -> str:
        return f"{self.handler}: {self.service}.{self.operation}"


@dataclass
class CallRecorder:
    calls: list[RecordedCall] = field(default_factory=list)
    attribute_all_to: str | None = None  # record every call under this name (a process that is one actor)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def by_handler(self) -> dict[str, list[RecordedCall]]:
        grouped: dict[str, list[RecordedCall]] = {}
        for call in self.calls:
            grouped.setdefault(call.handler, []).append(call)
        return grouped

    # ---- botocore hooks

    def _keep_params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[_PARAMS_KEY] = copy.deepcopy(params)

    def _record(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        handler = self.attribute_all_to or current_handler()
        if handler is None or acting_as_nobody():  # spotfill.iam's own lookups, inside a handler's call
            return
        call = RecordedCall(
            handler=handler,
            service=model.service_model.service_name,
            operation=model.name,
            params=context.get(_PARAMS_KEY, {}),
        )
        with self._lock:
            self.calls.append(call)

    def hook(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build", self._keep_params)
        client.meta.events.register("before-call", self._record)


def current_handler() -> str | None:
    """The handler module whose code is running on this thread: the outermost one on the stack."""
    frame = sys._getframe(1)
    found = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith(HANDLER_PACKAGE):
            found = module[len(HANDLER_PACKAGE) :].split(".", 1)[0]
        frame = frame.f_back
    return found or getattr(_inherited, "handler", None)


@contextmanager
def recording_aws_calls(attribute_all_to: str | None = None) -> Iterator[CallRecorder]:
    """Record handler AWS calls for the length of the block (or every call, under `attribute_all_to`).

    Every botocore client created inside the block (boto3's default session included) carries the hooks;
    the control plane's cached clients are dropped on entry and exit, so none made outside the block is used
    inside it and none carrying the hooks outlives it.
    """
    from spotfill_control import aws

    recorder = CallRecorder(attribute_all_to=attribute_all_to)
    original_create_client = botocore.session.Session.create_client

    def create_client(self: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
        client = original_create_client(self, *args, **kwargs)
        recorder.hook(client)
        return client

    original_submit = ThreadPoolExecutor.submit

    def submit(self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        handler = current_handler()
        if handler is None:
            return original_submit(self, fn, *args, **kwargs)

        def attributed(*inner_args: Any, **inner_kwargs: Any) -> Any:
            _inherited.handler = handler
            try:
                return fn(*inner_args, **inner_kwargs)
            finally:
                _inherited.handler = None

        return original_submit(self, attributed, *args, **kwargs)

    aws.reset_clients()
    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = submit  # type: ignore[method-assign]
    try:
        yield recorder
    finally:
        botocore.session.Session.create_client = original_create_client  # type: ignore[method-assign]
        ThreadPoolExecutor.submit = original_submit  # type: ignore[method-assign]
        aws.reset_clients()
