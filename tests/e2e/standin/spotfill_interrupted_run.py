"""`spotfill` with a Ctrl-C delivered when a given phase of `run --local`'s start-up is reached, so a test can
interrupt at a chosen moment without sleeps tuned to timing.

    python spotfill_interrupted_run.py PHASE HOW MARKER -- spotfill arguments...

PHASE: `model-checked` (the model and first shard checked), `stack-deploying` (the local cloud deploying its
stack), `cloud-started` (the local cloud up), `triggered` (the manifest uploaded, its execution found),
`following` (the first poll of the execution). HOW: `signal` (SIGINT, as Ctrl-C), `finaliser` (SIGINT raised
inside a `__del__`, where Python cannot propagate the KeyboardInterrupt: "Exception ignored in ..."), or
`ignored-at-start` (the process starts with SIGINT ignored, as a shell without job control starts a
background command, then gets SIGINT). MARKER: a file written when the phase is reached.
"""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path

phase, how, marker = sys.argv[1:4]
arguments = sys.argv[sys.argv.index("--") + 1 :]
if how == "ignored-at-start":
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _InterruptedFinaliser:
    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def _interrupt() -> None:
    Path(marker).write_text(phase)
    if how == "finaliser":
        _InterruptedFinaliser()  # dropped at once: its __del__ runs here
    else:
        signal.raise_signal(signal.SIGINT)


def _after(owner: object, name: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        _interrupt()
        return result

    setattr(owner, name, wrapped)


def _before(owner: object, name: str, once: bool = False) -> None:
    original = getattr(owner, name)
    done = []

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        if not (once and done):
            done.append(True)
            _interrupt()
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


from spotfill import deploy, localrun  # noqa: E402
from spotfill.cli import main  # noqa: E402
from spotfill.localcloud.cloud import LocalCloud  # noqa: E402

if phase == "model-checked":
    _after(localrun, "check_model_and_shards")
elif phase == "stack-deploying":
    _before(deploy, "deploy_stack")
elif phase == "cloud-started":
    _after(LocalCloud, "start")
elif phase == "triggered":
    _after(localrun, "upload_and_trigger")
elif phase == "following":
    _before(localrun.RunWatcher, "poll", once=True)
else:
    raise SystemExit(f"unknown phase {phase!r}")

sys.exit(main(arguments))
