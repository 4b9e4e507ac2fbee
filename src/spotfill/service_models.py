"""botocore's service models, parsed once per process.

Every botocore session parses the JSON models of the services it makes clients for (EC2's alone takes over a
tenth of a CPU-second) and keeps them in a loader of its own. A process that makes many sessions parses them
again for each: the local cloud's (a new default session for every new endpoint or set of credentials, moto's
Step Functions interpreter calling back for every Task) and the test suite's (`mock_aws` starts every test
with a fresh default session). `share_service_models()` has every session made afterwards use one loader per
data path: the models are files of the installed botocore, identical for every session, and a loader holds
nothing else (credentials, Region and endpoints stay the session's own).
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

_lock = threading.Lock()
_shared = False


def share_service_models() -> None:
    """From now on, sessions created in this process share their service model loader (idempotent)."""
    global _shared
    with _lock:
        if _shared:
            return
        import botocore.loaders
        import botocore.session

        create = botocore.loaders.create_loader

        @cache
        def shared_loader(search_path_string: str | None = None) -> Any:
            return create(search_path_string)

        botocore.session.create_loader = shared_loader  # what Session._register_data_loader calls
        _shared = True
