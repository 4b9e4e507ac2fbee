"""Dependencies that phone home, turned off before they are imported.

Two of the worker's runtimes send usage data to their vendors unless told not to, and a fleet's workers must
send nothing to third parties:

- OpenVINO's converter (``ov.convert_model``, ``openvino.tools.ovc``) reports through ``openvino_telemetry``
  to Google Analytics, from a forked process per event. Without a route out (a private subnet, a machine
  offline) each child blocks in ``getaddrinfo`` and outlives the worker. ``openvino_telemetry`` has no
  switch of its own that holds everywhere: its consent file lives under the home folder (absent or read-only
  in a container run as another user), and ``opt_in_out --opt_out`` itself sends an "opted out" event. The
  converter imports it in ``try``/``except ImportError`` and then uses a stub that sends nothing, so the
  worker makes that import fail (``sys.modules`` entries of ``None``), which needs no home folder and no
  network.
- ONNX Runtime (1.29 and later, also on Linux) starts a native uploader to Microsoft's 1DS collector when
  it is imported, and keeps a device id and an event store under ``~/.cache/Microsoft``.
  ``ORT_DISABLE_TELEMETRY=1`` stops it, read when the library loads; ``disable_telemetry_events()`` after
  the import cannot undo what the import started.

TensorFlow, Keras, tf2onnx and onnx send nothing when they load or convert a model (they reach the network
only when asked to download something).

The worker image sets the same in its environment (worker/Dockerfile), so the opt-outs hold for any Python
in the image, whatever imports first.
"""

from __future__ import annotations

import os
import sys

# Variables the runtimes read at import: the value that turns their telemetry off.
TELEMETRY_OFF_ENVIRONMENT = {"ORT_DISABLE_TELEMETRY": "1"}
# Modules whose import is made to fail, so their importers fall back to sending nothing.
TELEMETRY_MODULES = (
    "openvino_telemetry",
    "openvino_telemetry.backend",
    "openvino_telemetry.backend.backend_ga4",
)


def turn_off_dependency_telemetry() -> None:
    """No telemetry from OpenVINO or ONNX Runtime; to be called before either is imported (idempotent, cheap).
    A module imported already is left alone: blocking it then would break its importers, not silence it."""
    os.environ.update(TELEMETRY_OFF_ENVIRONMENT)  # overrides a "0" inherited from the environment
    for name in TELEMETRY_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # `import name` raises ImportError
