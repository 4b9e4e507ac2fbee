"""The worker phones no one: a worker process that converts its model to OpenVINO or ONNX Runtime reaches
nothing but its endpoint, and leaves no process and no telemetry identity behind.

The worker runs as a real process against a moto server on loopback. A `sitecustomize` on its PYTHONPATH
installs an audit hook (`sys.addaudithook`) that records and refuses every name lookup and connection to a
host other than loopback; the hook is inherited by forked children and loaded again by spawned ones, so a
telemetry sender in a child process is caught too. Native code that opens sockets itself (ONNX Runtime's
uploader) bypasses Python's audit events: it is caught by what it writes first, its identity files under
the home folder, which the test points at an empty folder of its own.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import RUN_ID

pytestmark = pytest.mark.worker

CONNECTION_GUARD = """
import os
import sys

_LOOPBACK = {"127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost", b"::1"}
_LOG = os.environ["SPOTFILL_TEST_CONNECTIONS"]


def _destination(event, args):
    if event == "socket.getaddrinfo":
        return args[0]
    address = args[1]  # socket.connect and socket.sendto: (socket, address)
    return address[0] if isinstance(address, tuple) else None  # a str is a Unix socket's path


def _guard(event, args):
    if event not in ("socket.getaddrinfo", "socket.connect", "socket.sendto"):
        return
    host = _destination(event, args)
    if host is None or host in _LOOPBACK:
        return
    with open(_LOG, "a") as log:
        log.write(f"{os.getpid()} {event} {host!r} argv={sys.argv!r}\\n")
    raise OSError(f"this test refuses {event} to {host!r}")


sys.addaudithook(_guard)
"""

# What the telemetry of each runtime writes under the home folder before it sends anything.
TELEMETRY_IDENTITIES = ("intel", ".cache/Microsoft")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _session_members(session: int) -> list[str]:
    """Processes still alive in the session `session` leads (zombies have exited: left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] not in ("Z", "X"):
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc for the worker's processes")
@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_a_worker_converting_its_model_connects_to_nothing_but_its_endpoint_and_leaves_no_process(
    runtime, server_cloud, moto_endpoint, digits_cnn, tmp_path
):
    # given a digits shard, the runtime asked for, and a worker process whose every connection is watched
    cloud = server_cloud
    model_uri = cloud.put("models/digits.keras", digits_cnn.path.read_bytes())
    rows = np.random.default_rng(0).random((40, 8, 8, 1), dtype=np.float32)
    cloud.put(f"inputs/{runtime}-part-0.npy", _npy(rows))
    message = cloud.send_shard(f"inputs/{runtime}-part-0.npy", "npy")
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(CONNECTION_GUARD)
    connections, home = tmp_path / "connections.log", tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(guard), env.get("PYTHONPATH", ""), *sys.path]),
            "SPOTFILL_TEST_CONNECTIONS": str(connections),
            "HOME": str(home),
            "AWS_ENDPOINT_URL": moto_endpoint,
            "SPOTFILL_RUN_ID": RUN_ID,
            "SPOTFILL_QUEUE_URL": cloud.queue_url,
            "SPOTFILL_MODEL_URI": model_uri,
            "SPOTFILL_INPUT_FORMAT": "npy",
            "SPOTFILL_OUTPUT_FORMAT": "npy",
            "SPOTFILL_MODEL_RUNTIME": runtime,
            "SPOTFILL_RECEIVE_WAIT_SECONDS": "1",
            "SPOTFILL_EXIT_WHEN_IDLE_SECONDS": "1",
            "SPOTFILL_SPOT_NOTICE": "false",
            "SPOTFILL_INSTANCE_METADATA": "false",
        }
    )

    # when the worker serves the shard with that runtime and exits idle
    process = subprocess.Popen(
        [sys.executable, "-m", "spotfill_worker"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]

    # then it served the shard with that runtime
    assert process.returncode == 0, lines[-3:]
    (chosen,) = [line for line in lines if line.get("event") == "runtime_chosen"]
    assert chosen["runtime"] == runtime, chosen
    assert cloud.exists(message["output"])
    # and no process of it asked for, or connected to, anything but loopback
    assert not connections.exists(), connections.read_text()
    # and no runtime's telemetry wrote its identity under the home folder
    assert [name for name in TELEMETRY_IDENTITIES if (home / name).exists()] == []
    # and no process it started is left
    assert _session_members(process.pid) == []
