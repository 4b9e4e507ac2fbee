"""A task for tests/e2e/test_fork_server.py, run as `python -m spotfill_probe_task` both fresh and forked by
the local cloud's fork server: it prints, as one JSON line, what a program can see of how it was started,
then ends as PROBE_END says (an exit status, "raise", "term" to wait for SIGTERM and exit 0 from its
handler, or "wait" to sleep until killed)."""

import json
import os
import signal
import stat
import sys
import tempfile
import time

import numpy

print(
    json.dumps(
        {
            "name": __name__,
            "argv": sys.argv,
            "path": sys.path,
            "cwd": os.getcwd(),
            "environment": dict(os.environ),
            "tmp": tempfile.gettempdir(),
            "session_leader": os.getsid(0) == os.getpid(),
            "stdin_is_devnull": stat.S_ISCHR(os.fstat(0).st_mode),
            "sitecustomize": getattr(sys.modules.get("sitecustomize"), "__file__", None),
            "draw": float(numpy.random.random()),
            "tensorflow_loaded": "tensorflow" in sys.modules,  # the probe never imports it
        }
    ),
    flush=True,
)
print("to stderr", file=sys.stderr, flush=True)
end = os.environ.get("PROBE_END", "0")
if end == "raise":
    raise RuntimeError("the probe failed")
if end == "term":
    signal.signal(signal.SIGTERM, lambda *_: (print("drained", flush=True), sys.exit(0)))
    print("waiting", flush=True)
    time.sleep(600)
if end == "wait":
    print("waiting", flush=True)
    time.sleep(600)
sys.exit(int(end))
