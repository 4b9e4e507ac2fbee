"""A stand-in worker for the physics tests, run by the local cloud's agent as `python -m spotfill_fake_worker`
(allowed only through the test-only `LocalCloudOptions.extra_worker_modules`): it reports its environment,
then waits; on SIGTERM it writes "drained" and exits 0. With SPOTFILL_FAKE_STRAY=1 it first forks a child that
outlives it (as a telemetry sender blocked on a lookup that never answers would)."""

import json
import os
import signal
import sys
import time

print(json.dumps({k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "SPOTFILL_RUN_ID")}), flush=True)
if os.environ.get("SPOTFILL_FAKE_STRAY") == "1" and os.fork() == 0:
    time.sleep(600)
    os._exit(0)
signal.signal(signal.SIGTERM, lambda *a: (print("drained", flush=True), sys.exit(0)))
time.sleep(600)
