"""spotfill's data plane: the prediction worker that runs in the ECS container on every spot instance.

Importing this package is cheap: TensorFlow is imported only when a model is loaded, so the control plane,
the CLI and the local cloud can import the worker's configuration without paying for it.
Run it with ``python -m spotfill_worker`` (configuration from ``SPOTFILL_*`` environment variables).
"""

from __future__ import annotations

__all__ = ["main"]


def main(environ=None) -> int:
    """Run the worker until it is told to stop or the queue stays idle; returns the process exit code."""
    from spotfill_worker.worker import main as _main

    return _main(environ)
