"""Who makes calls: a principal (an assumed role session with its role's statements), and who acts on the
calling thread (`acting_as`, or the process's principal in a worker process). Work a principal hands to a
thread pool carries it (`carried`).

AWS documentation followed: "IAM identifiers" (assumed-role session ARNs), IAM User Guide:
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_identifiers.html
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from spotfill.iam.policies import Statement, role_statements_from_iam
from spotfill.iam.resources import PARTITION, arn_tail


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
        role_name = arn_tail(role_arn)
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
                        role_statements_from_iam(self._client("iam"), arn_tail(role_arn))
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


def set_process_principal(principal: Principal | None) -> None:
    """Every thread of this process acts as `principal` from now on (unless it says otherwise)."""
    global _process_principal
    _process_principal = principal


def carried(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, to run on another thread acting as whoever acts on this one (nobody included); `fn` itself when
    this thread names no one (the other thread then acts as the process's principal, if any)."""
    principal = getattr(_acting, "principal", None)
    if principal is None:
        return fn

    def as_submitter(*inner_args: Any, **inner_kwargs: Any) -> Any:
        with acting_as(None if principal is _NOBODY else principal):
            return fn(*inner_args, **inner_kwargs)

    return as_submitter
