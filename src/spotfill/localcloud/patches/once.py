"""Which of the local cloud's patches this process has installed.

Other emulations of AWS install some patches too (the Step Functions test harness, tests with moto in
process), each at most once per process. Follows no AWS page: this is bookkeeping.
"""

from __future__ import annotations

import threading

# Patches other emulations of AWS install too (the Step Functions test harness, moto in process), each once.
_done: set[str] = set()
_done_lock = threading.Lock()


def once(name: str) -> bool:
    """True the first time `name` is asked for in this process (the caller then installs it)."""
    with _done_lock:
        if name in _done:
            return False
        _done.add(name)
        return True
