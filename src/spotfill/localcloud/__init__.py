"""The local cloud: moto on loopback plus the EC2 and ECS physics.

Its names load on first use (PEP 562): a worker process imports `spotfill.localcloud.worker_iam` at start-up
(its `sitecustomize`), and must not pay for the emulator's modules (moto's EC2 models alone take most of a
CPU-second) nor carry them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spotfill.localcloud.chaos import ChaosSpec
    from spotfill.localcloud.cloud import LocalCloud, LocalCloudOptions

__all__ = ["ChaosSpec", "LocalCloud", "LocalCloudOptions"]
_HOMES = {"ChaosSpec": "chaos", "LocalCloud": "cloud", "LocalCloudOptions": "cloud"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
