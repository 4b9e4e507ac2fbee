"""TensorFlow in the CLI's own process, without its start-up noise.

Importing TensorFlow writes to file descriptor 2 from C++ before its logging is configured: absl's "All log
messages before absl::InitializeLog() is called are written to STDERR", the oneDNN notice and the CPU feature
notice. `TF_CPP_MIN_LOG_LEVEL=3` silences what TensorFlow logs later but not those lines, so the import runs
with descriptor 2 pointed at /dev/null and restored afterwards. `TF_ENABLE_ONEDNN_OPTS` is left alone: it
changes numerics, and the demo checks the workers' predictions against this process's. Worker processes are
not concerned: their stderr goes to their log files.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and Keras in this process; unless `verbose`, their start-up lines are dropped."""
    if "tensorflow" in sys.modules:
        return
    if verbose:
        import keras
        import tensorflow

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
