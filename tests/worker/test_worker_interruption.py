"""Spot interruptions: the worker as a real OS process, stopped with a real SIGTERM, against a moto server."""

from __future__ import annotations

import http.server
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow.parquet as pq
import pytest

from .conftest import RUN_ID

pytestmark = pytest.mark.worker


class WorkerProcess:
    def __init__(self, endpoint: str, env: dict[str, str]) -> None:
        self.lines: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spotfill_worker"],
            env={**os.environ, "AWS_ENDPOINT_URL": endpoint, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                continue

    def wait_for(self, event: str, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.process.poll() is None, f"worker exited early: {self.seen[-3:]}"
                continue
            self.seen.append(line)
            if line.get("event") == event:
                return line
        raise AssertionError(f"no {event} within {timeout}s; last lines {self.seen[-3:]}")

    def events(self, name: str) -> list[dict]:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return [line for line in self.seen if line.get("event") == name]


def worker_env(cloud, model_uri: str, **extra: str) -> dict[str, str]:
    return {
        "SPOTFILL_RUN_ID": RUN_ID,
        "SPOTFILL_QUEUE_URL": cloud.queue_url,
        "SPOTFILL_MODEL_URI": model_uri,
        "SPOTFILL_INPUT_FORMAT": "npy",
        "SPOTFILL_RECEIVE_WAIT_SECONDS": "1",
        "SPOTFILL_SPOT_NOTICE": "false",
        "SPOTFILL_INSTANCE_METADATA": "false",
        **extra,
    }


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_sigterm_mid_shard_that_cannot_finish_releases_message_at_once_writes_nothing_and_exits_0(
    server_cloud, moto_endpoint, tabular_classifier
):
    # given a shard far too long for a 1 s stop timeout (one row per batch)
    cloud = server_cloud
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/long.npy", npy_bytes(np.ones((50_000, 5), np.float32)))
    message = cloud.send_shard("inputs/long.npy", "parquet")
    worker = WorkerProcess(
        moto_endpoint,
        worker_env(
            cloud,
            model_uri,
            SPOTFILL_BATCH_SIZE="1",
            SPOTFILL_STOP_TIMEOUT="1",
            SPOTFILL_VISIBILITY_TIMEOUT="600",
        ),
    )
    worker.wait_for("shard_started")
    time.sleep(0.3)

    # when ECS stops the task
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(timeout=30)

    # then: exit 0, the message visible again at once (not after the 600 s visibility), no output object
    assert code == 0
    assert worker.events("shard_released")[0]["reason"] == "SIGTERM"
    visible = cloud.visible_messages()
    assert [json.loads(m["Body"])["shard"] for m in visible] == [message["shard"]]
    assert visible[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    assert not cloud.exists(message["output"])
    assert not worker.events("shard_done")


def test_sigterm_mid_shard_that_can_finish_writes_it_stops_receiving_and_exits_0(
    server_cloud, moto_endpoint, tabular_classifier
):
    # given a short shard in hand, a second shard queued, and a generous stop timeout
    cloud = server_cloud
    x = np.random.default_rng(0).normal(size=(1000, 5)).astype(np.float32)
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    cloud.put("inputs/a.npy", npy_bytes(x))
    cloud.put("inputs/b.npy", npy_bytes(x))
    first = cloud.send_shard("inputs/a.npy", "parquet")
    worker = WorkerProcess(
        moto_endpoint, worker_env(cloud, model_uri, SPOTFILL_BATCH_SIZE="1", SPOTFILL_STOP_TIMEOUT="60")
    )
    worker.wait_for("shard_started")
    second = cloud.send_shard("inputs/b.npy", "parquet")

    # when
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(timeout=60)

    # then the shard in hand is complete and correct, the other untouched and visible, and the exit clean
    assert code == 0
    table = pq.read_table(io.BytesIO(cloud.get(first["output"])))
    predictions = np.asarray(table.column("prediction").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(predictions, tabular_classifier.predict(x), atol=1e-5)
    assert not cloud.exists(second["output"])
    visible = cloud.visible_messages()
    assert [json.loads(m["Body"])["shard"] for m in visible] == [second["shard"]]
    # received by the worker at most once before this check's receive: a stopping worker's receivers never
    # take back what it released, each time counting toward the queue's maxReceiveCount
    assert int(visible[0]["Attributes"]["ApproximateReceiveCount"]) <= 2
    assert worker.events("worker_stopped")[0]["reason"] == "SIGTERM"


class FakeImds(http.server.BaseHTTPRequestHandler):
    notice: dict | None = None

    def do_PUT(self) -> None:
        self._reply(200, b"token-1") if self.path == "/latest/api/token" else self._reply(404, b"")

    def do_GET(self) -> None:
        authorised = self.headers.get("X-aws-ec2-metadata-token") == "token-1"
        if self.path == "/latest/meta-data/spot/instance-action" and authorised and self.notice:
            self._reply(200, json.dumps(self.notice).encode())
        else:
            self._reply(404 if authorised else 401, b"")

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_spot_instance_action_notice_sets_stop_deadline_before_the_interruption_time():
    from spotfill_worker.interruption import SpotNoticeWatcher, StopSignal

    # given an IMDSv2 that announces a termination 60 s from now, after one quiet poll
    FakeImds.notice = None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeImds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop, events = StopSignal(), []
    watcher = SpotNoticeWatcher(
        stop,
        stop_timeout=120,
        on_event=lambda e, **f: events.append(e),
        endpoint=f"http://127.0.0.1:{server.server_port}",
        interval=0.05,
    )
    watcher.start()
    time.sleep(0.3)
    assert not stop.requested

    # when the notice appears
    when = datetime.now(UTC) + timedelta(seconds=60)
    FakeImds.notice = {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}

    # then the worker is told to stop, with a deadline inside the 60 s (less the safety margin)
    assert stop.wait(5)
    assert stop.reason == "spot-interruption"
    assert 40 < stop.seconds_left() <= 60
    assert events[:2] == ["spot_notice_watch_on", "spot_interruption_notice"]
    watcher.close()
    server.shutdown()


def test_unreachable_instance_metadata_turns_the_watch_off_quickly_without_stopping():
    from spotfill_worker.interruption import SpotNoticeWatcher, StopSignal

    # given nothing listening on the metadata endpoint
    stop, events = StopSignal(), []
    watcher = SpotNoticeWatcher(
        stop, 120, lambda e, **f: events.append(e), endpoint="http://127.0.0.1:9", timeout=0.5
    )

    # when
    started = time.monotonic()
    watcher.start()
    watcher.join(timeout=5)

    # then
    assert not watcher.is_alive() and time.monotonic() - started < 2
    assert events == ["spot_notice_watch_off"] and not stop.requested


class _SlowToReturn:
    """The SQS client, but a receive that brings `shard` back is answered `seconds` late, with the stop
    requested meanwhile: the receive a stop finds in flight on a machine too busy to run its thread."""

    def __init__(self, sqs, stop, shard: str, seconds: float) -> None:
        self._sqs, self._stop, self._shard, self._seconds = sqs, stop, shard, seconds

    def __getattr__(self, name: str):
        return getattr(self._sqs, name)

    def receive_message(self, **params):
        response = self._sqs.receive_message(**params)
        if any(json.loads(m["Body"])["shard"] == self._shard for m in response.get("Messages", [])):
            self._stop.request("SIGTERM", time.monotonic() + 60)
            time.sleep(self._seconds)
        return response


def test_a_stop_waits_for_the_receive_in_flight_and_makes_what_it_brings_back_visible_again(
    cloud, tabular_classifier
):
    from spotfill_worker.clients import Clients
    from spotfill_worker.config import WorkerConfig
    from spotfill_worker.interruption import StopSignal
    from spotfill_worker.telemetry import Telemetry
    from spotfill_worker.worker import Worker

    from .conftest import RUN_ID

    # given two shards queued, and a receive of the second that comes back only after the stop, later than
    # the receive's own wait (1 s) and then some
    x = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)
    model_uri = cloud.put("models/tabular.keras", tabular_classifier.path.read_bytes())
    for name in ("a", "b"):
        cloud.put(f"inputs/{name}.npy", npy_bytes(x))
    shards = [cloud.send_shard(f"inputs/{name}.npy", "parquet") for name in ("a", "b")]
    stop = StopSignal()
    sqs = _SlowToReturn(cloud.sqs, stop, shards[1]["shard"], seconds=5.0)
    config = WorkerConfig.model_validate(
        {
            "run_id": RUN_ID,
            "queue_url": cloud.queue_url,
            "model_uri": model_uri,
            "input_format": "npy",
            "receive_wait_seconds": 1,
            "spot_notice": False,
            "instance_metadata": False,
        }
    )
    worker = Worker(config, Clients(s3=cloud.s3, sqs=sqs), Telemetry(RUN_ID, io.StringIO()), stop=stop)

    # when the worker stops
    assert worker.run(install_signals=False) == 0

    # then no receiver is left running, and each shard is done or visible again: none is held by no one
    assert not [t for t in threading.enumerate() if t.name.startswith("receiver-") and t.is_alive()]
    done = {s["shard"] for s in shards if cloud.exists(s["output"])}
    visible = {json.loads(m["Body"])["shard"] for m in cloud.visible_messages()}
    assert done | visible == {s["shard"] for s in shards} and not done & visible
