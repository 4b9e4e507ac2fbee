"""moto's request routing, computed once (the speed of the local cloud's server, not an AWS behaviour).

moto's server finds a request's backend by computing each backend's URL table per request and by listing its
own package folder per request; neither changes while a local cloud runs. Follows no AWS page: nothing a
client sees changes.
"""

from __future__ import annotations

import threading
from typing import Any


def route_requests_once() -> None:
    """moto's server finds a request's backend by computing each backend's URL table per request (for S3 by
    reloading its `urls` module, so that a changed environment variable takes effect) and by listing its own
    package folder to recognise a service's host. Neither changes while a local cloud runs (its environment
    is set before it starts): each backend's table is computed once, the package listed once (idempotent)."""
    global _routing_once
    from moto import backends
    from moto.core.base_backend import BaseBackend

    with _routing_lock:
        if _routing_once:
            return
        urls = BaseBackend.urls

        def cached_urls(self: Any) -> Any:
            table = self.__dict__.get("_spotfill_urls")
            if table is None:
                table = self.__dict__["_spotfill_urls"] = urls.fget(self)
            return table

        BaseBackend.urls = property(cached_urls)  # type: ignore[method-assign, assignment]
        modules = tuple(backends.list_of_moto_modules())
        backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]
        _routing_once = True


_routing_lock = threading.Lock()
_routing_once = False
