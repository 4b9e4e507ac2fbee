"""The prediction loop: receive -> download -> decode | predict | encode -> upload -> delete.

Three stages overlap so the model never waits on I/O:

- receiver threads take the next messages, skip shards whose output already exists, and download and decode
  shards while the current one predicts. How many shards are in flight ahead of the forward pass is chosen
  from the measured seconds per shard of fetching and of computing (``spotfill_worker.depth``), so S3's and
  SQS's latency never leaves the forward pass waiting; ``prefetch_shards`` fixes it instead;
- the main thread runs the compiled forward pass;
- upload threads encode and write the output (a conditional put: exactly one object per shard), then delete
  the message; as many outputs may be in flight as shards fetching.

A stop (SIGTERM, a spot notice, or an idle queue) stops receiving, finishes the shard in hand only if it can
before the deadline, makes every other held message visible again, and exits 0.

One module of about 750 lines: most of it is `Worker`, the three stages above and the stop, which share the
queue of prepared shards, the messages held and the stop deadline; what stands apart already lives beside it
(``depth``, ``leases``, ``formats``, ``model``, ``interruption``, ``telemetry``).
"""

from __future__ import annotations

import json
import os
import queue
import random
import socket
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spotfill_worker.clients import Clients, S3Uri
from spotfill_worker.config import Classifier, ConfigError, WorkerConfig
from spotfill_worker.depth import DepthEstimate, DepthLimits, InFlight
from spotfill_worker.formats import Rows, ShapeMismatchError, ShardFormatError, decode, encode
from spotfill_worker.imds import Imds, InstanceFactsReader
from spotfill_worker.interruption import SpotNoticeWatcher, StopSignal, install_signal_handlers
from spotfill_worker.leases import Delivery, Leases
from spotfill_worker.reasons import one_line
from spotfill_worker.telemetry import Telemetry
from spotfill_worker.third_party import turn_off_dependency_telemetry

_MODELS: dict[tuple[str, str], Any] = {}  # (model URI, ETag) -> LoadedModel, per process
# (id(LoadedModel), batch size, XLA, runtime asked for, precision) -> Predictor, its runtime calibrated
_PREDICTORS: dict[tuple[int, int, bool, str, str], Any] = {}

# An output put that answers 409 ConditionalRequestConflict is tried this many times in all, waiting a random
# time up to CONFLICT_BACKOFF * 2**(n-1) seconds (at most CONFLICT_BACKOFF_CAP) before the n-th retry.
CONFLICT_ATTEMPTS = 5
CONFLICT_BACKOFF = 0.2
CONFLICT_BACKOFF_CAP = 2.0


# Errors no retry can fix: the shard goes to the dead-letter queue on its first failure.
POISON_ERRORS = (ShardFormatError, ShapeMismatchError)
# Any other failed shard is made visible again after RETRY_BACKOFF * 2**(receive count - 1) seconds (at most
# the visibility timeout): retried promptly, and dead-lettered by SQS after the queue's maxReceiveCount
# receives, instead of waiting out the visibility timeout before each retry (which outlasts a stall timeout).
RETRY_BACKOFF = 1
# A stopping worker waits for its receivers' calls in flight this long past the receive's own wait (within the
# stop's deadline) before it makes what it holds visible again.
RECEIVER_JOIN_SECONDS = 30.0


def _uploads_for(depth: int) -> int:
    """Outputs encoding or uploading at once: as many as the shards fetching, at least 2 (an upload's two
    requests take no longer than a fetch's three), so the forward pass never waits on them either, and memory
    stays bounded."""
    return max(2, depth)


def pacing_seconds(predict_seconds: float, speed: float) -> float:
    """How long a worker paced to `speed` (local cloud only: `WorkerConfig.local_cloud_speed`) sleeps after
    a batch that took `predict_seconds`, so the batch takes `predict_seconds / speed` in all; 0 at full
    speed."""
    if speed >= 1 or predict_seconds <= 0:
        return 0.0
    return predict_seconds * (1 / speed - 1)


def worker_rate(rows: int, seconds: float) -> float | None:
    """Rows per second over `seconds` (None before any time passed)."""
    return rows / seconds if seconds > 0 else None


class OutputWriteConflict(RuntimeError):
    """The conditional output put kept answering 409 ConditionalRequestConflict."""


@dataclass(frozen=True)
class ShardMessage:
    """The SQS message body (docs/contracts/shards-queue-outputs.md)."""

    run_id: str
    shard: str
    output: str
    error: str

    @classmethod
    def parse(cls, body: str) -> ShardMessage:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("message body is not a JSON object")
        missing = [k for k in ("run_id", "shard", "output", "error") if not data.get(k)]
        if missing:
            raise ValueError(f"message body lacks {missing}")
        message = cls(str(data["run_id"]), str(data["shard"]), str(data["output"]), str(data["error"]))
        for uri in (message.shard, message.output, message.error):
            S3Uri.parse(uri)
        return message


@dataclass
class Prepared:
    delivery: Delivery
    message: ShardMessage | None = None
    rows: Rows | None = None
    error: BaseException | None = None
    timings: dict[str, float] = field(default_factory=dict)
    bytes_in: int = 0
    fetch_seconds: float = 0.0  # from the receive call's start until decoded


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        clients: Clients | None = None,
        telemetry: Telemetry | None = None,
        stop: StopSignal | None = None,
    ) -> None:
        self.config = config
        # One receiver thread per shard that may be in flight, and as many upload threads.
        self._threads = config.prefetch_shards or config.max_prefetch_shards
        self.clients = clients or Clients(max_pool_connections=2 * self._threads + 4)
        self.telemetry = telemetry or Telemetry(config.run_id)
        self.stop = stop or StopSignal()
        self.shards_done = 0
        self.shards_failed = 0
        self.shards_skipped = 0
        self._ready: queue.Queue[Prepared] = queue.Queue()
        self._depth = DepthEstimate(
            DepthLimits(self._threads, config.prefetch_memory_mib * 2**20), fixed=config.prefetch_shards
        )
        self._slots = InFlight(self._depth.depth)  # shards received and not yet taken by the forward pass
        self._upload_slots = InFlight(_uploads_for(self._depth.depth))
        self._finished = threading.Event()
        self._busy_lock = threading.Lock()
        self._uploads_in_flight = 0
        self._last_busy = time.monotonic()
        # When the latest receive that found the queue empty began (idle exit counts only after one).
        self._empty_receive_started = float("-inf")
        # Running estimate of encode + upload seconds: can the shard in hand still finish before a deadline?
        self._upload_seconds = 1.0
        # This worker's own throughput, recorded with each output beside the instance's type (the control
        # plane weighs the fleet's instance types by it): rows written since its first prediction began.
        self._rows_written = 0
        self._working_since: float | None = None
        self._classifier = False
        self._instance_facts: InstanceFactsReader | None = None
        self.model: Any = None  # loaded_model.LoadedModel, once loaded
        self.predictor: Any = None  # model.Predictor, once the first shard's rows chose its runtime
        self._device = "CPU"
        self._batch_size = 0
        # the loaded model object's ETag, recorded on every output (spotfill-model-etag)
        self._model_etag = ""

    # ------------------------------------------------------------------------------------------ lifecycle

    def run(self, install_signals: bool = True) -> int:
        config = self.config
        if install_signals:
            install_signal_handlers(self.stop, config.stop_timeout)
        self.telemetry.log("worker_starting", config=config.model_dump(mode="json"), pid=os.getpid())
        if config.instance_metadata:
            self._instance_facts = InstanceFactsReader(Imds())
            self._instance_facts.start()
        watcher = None
        if config.spot_notice:
            watcher = SpotNoticeWatcher(self.stop, config.stop_timeout, self.telemetry.log)
            watcher.start()
        try:
            self.model = self._load_model()
        except Exception as exc:
            self.telemetry.log("model_load_failed", level="ERROR", error=f"{type(exc).__name__}: {exc}")
            self._record_model_error(exc)
            return 1
        if self.stop.requested:
            self.telemetry.log("worker_stopped", reason=self.stop.reason, shards=0)
            return 0

        self.leases = Leases(self.clients.sqs, config.queue_url, config.visibility_timeout, self.telemetry)
        self.leases.start_heartbeat()
        uploads = ThreadPoolExecutor(max_workers=max(2, self._threads), thread_name_prefix="upload")
        receivers = [
            threading.Thread(target=self._receive_loop, name=f"receiver-{i}", daemon=True)
            for i in range(self._threads)
        ]
        self._futures: list[Future] = []
        self._last_busy = time.monotonic()
        for receiver in receivers:
            receiver.start()
        try:
            self._compute_loop(uploads)
        finally:
            self._shutdown(uploads, receivers)
            if watcher is not None:
                watcher.close()
        return 0

    def _load_model(self) -> Any:
        """Download and load the model, and warm TensorFlow's full-batch trace up (a forward pass that fails
        fails the load); the runtime is chosen on the first shard's rows (``_calibrated_predictor``)."""
        from spotfill_worker.model import DEFAULT_BATCH_SIZE, configure_devices, download_model, load_model
        from spotfill_worker.runtimes import tensorflow_runtime

        config = self.config
        started = time.perf_counter()
        self._device = configure_devices()
        location = S3Uri.parse(config.model_uri)
        etag = self.clients.s3.head_object(Bucket=location.bucket, Key=location.key)["ETag"]
        self._model_etag = etag.strip('"')
        key = (config.model_uri, etag)
        model = _MODELS.get(key)
        if model is None:
            # Kept for the process: other runtimes and precisions convert or reload from this file.
            directory = Path(tempfile.mkdtemp(prefix="spotfill-model-"))
            model = _MODELS[key] = load_model(download_model(self.clients.s3, config.model_uri, directory))
        self._batch_size = config.batch_size or DEFAULT_BATCH_SIZE[self._device]
        if self._predictor_key(model) not in _PREDICTORS:
            self._warm_up(tensorflow_runtime(model, xla=config.xla), model, self._batch_size)
        self._classifier = {
            Classifier.AUTO: model.classifier,
            Classifier.TRUE: True,
            Classifier.FALSE: False,
        }[config.classifier]
        self.telemetry.log(
            "model_loaded",
            model=config.model_uri,
            kind=model.kind,
            input_shape=list(model.model_input.shape),
            input_dtype=str(model.model_input.dtype),
            classifier=self._classifier,
            device=self._device,
            batch_size=self._batch_size,
            xla=config.xla,
            seconds=round(time.perf_counter() - started, 3),
        )
        return model

    def _predictor_key(self, model: Any) -> tuple:
        config = self.config
        return (id(model), self._batch_size, config.xla, str(config.model_runtime), str(config.precision))

    def _calibrated_predictor(self, rows: Any) -> Any:
        """The process's predictor for this model and setting, its runtime chosen on ``rows`` (the first
        shard's) the first time; logs the choice (WARNING when a runtime was refused)."""
        from spotfill_worker.model import Predictor
        from spotfill_worker.runtimes import choose_runtime

        key = self._predictor_key(self.model)
        predictor = _PREDICTORS.get(key)
        if predictor is None:
            config = self.config
            runtime, calibration = choose_runtime(
                self.model,
                str(config.model_runtime),
                str(config.precision),
                rows[: 2 * self._batch_size],
                batch_size=self._batch_size,
                xla=config.xla,
                device=self._device,
            )
            predictor = Predictor(self.model, self._batch_size, runtime=runtime)
            predictor.calibration = calibration
            _PREDICTORS[key] = predictor
        calibration = predictor.calibration
        self.telemetry.log(
            "runtime_chosen",
            level="WARNING" if calibration.fallback_reason else "INFO",
            **calibration.as_log(),
        )
        return predictor

    def _record_model_error(self, exc: BaseException) -> None:
        """Write the model-load error record the monitor fails the run on
        (docs/contracts/worker-environment.md)."""
        if not self.config.model_error_uri:
            return
        record = {"run_id": self.config.run_id, "model": self.config.model_uri, **_error_fields(exc)}
        if self._write_error_record(self.config.model_error_uri, record):
            self.telemetry.log("model_error_recorded", error_record=self.config.model_error_uri)

    def _write_error_record(self, uri: str, record: dict[str, Any]) -> bool:
        """Put an error record as JSON at `uri`; a failed write is logged, never raised (the failure it
        records is what matters). Whether it was written."""
        location = S3Uri.parse(uri)
        try:
            self.clients.s3.put_object(
                Bucket=location.bucket,
                Key=location.key,
                Body=json.dumps(record, indent=2).encode(),
                ContentType="application/json",
            )
        except Exception as write_exc:
            self.telemetry.log("error_record_failed", level="ERROR", error=str(write_exc))
            return False
        return True

    @staticmethod
    def _warm_up(runtime: Any, model: Any, batch_size: int) -> None:
        """Trace the full-batch shape now, so the first shard is not the one that pays for it."""
        import numpy as np

        shape = model.model_input.row_shape
        if all(d is not None for d in shape):
            runtime(np.zeros((batch_size, *shape), dtype=model.model_input.dtype))

    def _shutdown(self, uploads: ThreadPoolExecutor, receivers: list[threading.Thread]) -> None:
        self._finished.set()
        pending = [f for f in self._futures if not f.done()]
        if pending:
            wait_futures(pending, timeout=max(0.0, self.stop.seconds_left()))
        # The receivers first: a receive in flight may still bring a message back, which its receiver keeps
        # held. Waited for as long as the stop allows (at most RECEIVER_JOIN_SECONDS past the receive's own
        # wait: a busy machine may run the thread late, and a process that exits first leaves what it brings
        # hidden until its visibility timeout). Then every held message is made visible again, once: none can
        # be received again by this worker and counted toward the queue's maxReceiveCount.
        join_by = time.monotonic() + max(
            0.0, min(self.config.receive_wait_seconds + RECEIVER_JOIN_SECONDS, self.stop.seconds_left())
        )
        for receiver in receivers:
            receiver.join(timeout=max(0.0, join_by - time.monotonic()))
        released = self.leases.release_all()
        if running := [r.name for r in receivers if r.is_alive()]:
            self.telemetry.log("receivers_still_running", level="WARNING", receivers=running)
        uploads.shutdown(wait=False, cancel_futures=True)
        self.leases.close()
        if released:
            self.telemetry.log(
                "messages_released",
                count=len(released),
                message_ids=[d.message_id for d in released],
                reason=self.stop.reason,
            )
        self.telemetry.log(
            "worker_stopped",
            reason=self.stop.reason,
            shards=self.shards_done,
            failed=self.shards_failed,
            skipped=self.shards_skipped,
        )

    def _touch(self) -> None:
        self._last_busy = time.monotonic()

    def _idle_for(self) -> float:
        """Seconds holding nothing, counted only once a receive begun since then came back empty."""
        with self._busy_lock:
            if self._uploads_in_flight or len(self.leases) or not self._ready.empty():
                self._last_busy = time.monotonic()
                return 0.0
            if self._empty_receive_started < self._last_busy:
                return 0.0
            return time.monotonic() - self._last_busy

    # ------------------------------------------------------------------------------------------ receive

    def _receive_loop(self) -> None:
        config = self.config
        while not (self.stop.requested or self._finished.is_set()):
            if not self._slots.acquire(timeout=0.2):
                continue
            receive_started = time.monotonic()
            try:
                response = self.clients.sqs.receive_message(
                    QueueUrl=config.queue_url,
                    MaxNumberOfMessages=1,
                    WaitTimeSeconds=config.receive_wait_seconds,
                    VisibilityTimeout=config.visibility_timeout,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                )
                received = time.monotonic()
            except Exception as exc:
                self._slots.release()
                self.telemetry.log("receive_failed", level="WARNING", error=str(exc))
                self.stop.wait(1.0)
                continue
            messages = response.get("Messages", [])
            if not messages:
                with self._busy_lock:
                    self._empty_receive_started = max(self._empty_receive_started, receive_started)
                self._slots.release()
                continue
            deliveries = [
                Delivery(
                    message_id=m["MessageId"],
                    receipt_handle=m["ReceiptHandle"],
                    body=m["Body"],
                    receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                    received_at=time.monotonic(),
                )
                for m in messages
            ]
            for delivery in deliveries:
                self.leases.add(delivery)
            self._touch()
            if self.stop.requested or self._finished.is_set():
                # Held until every receiver has stopped (`_shutdown` releases it then): released now, another
                # receive of this worker still polling could take it back, and each receive counts toward the
                # queue's maxReceiveCount, so a stopping worker could dead-letter a shard it never tried.
                self._slots.release()
                return
            prepared = self._prepare(deliveries[0])
            self._touch()
            if prepared is None:
                self._slots.release()
            else:
                prepared.timings["receive"] = received - receive_started
                prepared.fetch_seconds = time.monotonic() - receive_started
                self._ready.put(prepared)

    def _prepare(self, delivery: Delivery) -> Prepared | None:
        """Download and decode; ``None`` when the shard's output already exists (its message is deleted)."""
        item = Prepared(delivery)
        try:
            item.message = message = ShardMessage.parse(delivery.body)
            if message.run_id != self.config.run_id:
                raise ValueError(f"message belongs to run {message.run_id!r}, not {self.config.run_id!r}")
            if self._output_exists(message.output):
                self.leases.delete(delivery)
                with self._busy_lock:
                    self.shards_skipped += 1
                self.telemetry.log(
                    "shard_skipped", shard=message.shard, output=message.output, reason="output exists"
                )
                return None
            started = time.perf_counter()
            location = S3Uri.parse(message.shard)
            data = self.clients.s3.get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
            item.bytes_in = len(data)
            decoded_at = time.perf_counter()
            item.timings["download"] = decoded_at - started
            item.rows = decode(
                data,
                self.config.input_format,
                self.model.model_input,
                id_column=self.config.id_column,
                image_scale=self.config.image_scale,
                tfrecord=self.config.tfrecord,
            )
            item.timings["decode"] = time.perf_counter() - decoded_at
        except Exception as exc:
            item.error = exc
        return item

    def _output_exists(self, uri: str) -> bool:
        from botocore.exceptions import ClientError

        location = S3Uri.parse(uri)
        try:
            self.clients.s3.head_object(Bucket=location.bucket, Key=location.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    # ------------------------------------------------------------------------------------------ compute

    def _compute_loop(self, uploads: ThreadPoolExecutor) -> None:
        from spotfill_worker.model import ShardAborted

        idle_limit = self.config.exit_when_idle_seconds
        while not self.stop.requested:
            if idle_limit is not None and self._idle_for() >= idle_limit:
                self.stop.request("idle", time.monotonic() + self.config.stop_timeout)
                break
            try:
                item = self._ready.get(timeout=0.1)
            except queue.Empty:
                continue
            self._slots.release()
            if self.stop.requested:  # not started yet: let another worker have it now
                self._ready.put(item)
                break
            if item.error is not None:
                self._fail(item, item.error)
                continue
            assert item.rows is not None and item.message is not None
            self.telemetry.log("shard_started", shard=item.message.shard, rows=len(item.rows))
            started = time.perf_counter()
            try:
                if self.predictor is None:
                    self.predictor = self._calibrated_predictor(item.rows.features)
                    started = time.perf_counter()
                if self._working_since is None:
                    self._working_since = time.monotonic()
                predictions = self.predictor.predict(item.rows.features, should_abort=self._should_abort)
            except ShardAborted as exc:
                self.leases.release(item.delivery)
                self.telemetry.log(
                    "shard_released", shard=item.message.shard, reason=self.stop.reason, detail=str(exc)
                )
                break
            except Exception as exc:
                self._fail(item, exc)
                continue
            # The local cloud's slow instance types (off on AWS: `local_cloud_speed` is 1 there).
            self.stop.wait(pacing_seconds(time.perf_counter() - started, self.config.local_cloud_speed))
            item.timings["predict"] = time.perf_counter() - started
            self._adjust_depth(item)
            self._upload_slots.acquire()  # uploads behind by the most allowed
            with self._busy_lock:
                self._uploads_in_flight += 1
            self._futures = [f for f in self._futures if not f.done()]
            self._futures.append(uploads.submit(self._finish, item, predictions))

    def _adjust_depth(self, item: Prepared) -> None:
        """Feed the shard's fetch and compute seconds to the depth estimate; log a changed depth."""
        assert item.rows is not None
        shard_bytes = item.bytes_in + int(item.rows.features.nbytes)
        depth = self._depth.observe(item.fetch_seconds, item.timings["predict"], shard_bytes)
        if depth != self._slots.limit:
            self._slots.set_limit(depth)
            self._upload_slots.set_limit(_uploads_for(depth))
            self.telemetry.log(
                "prefetch_depth",
                depth=depth,
                fetch_seconds=round(self._depth.fetch_seconds or 0.0, 4),
                compute_seconds=round(self._depth.compute_seconds or 0.0, 4),
                shard_bytes=self._depth.shard_bytes,
            )

    def _should_abort(self, done: int, total: int, seconds: float) -> bool:
        if not self.stop.requested:
            return False
        remaining = (total - done) * seconds / done + self._upload_seconds
        return time.monotonic() + remaining > (self.stop.deadline or 0.0)

    # ------------------------------------------------------------------------------------------ upload

    def _finish(self, item: Prepared, predictions: Any) -> None:
        from botocore.exceptions import ClientError

        assert item.message is not None and item.rows is not None
        message = item.message
        try:
            started = time.perf_counter()
            body = encode(self.config.output_format, predictions, item.rows.ids, self._classifier)
            encoded_at = time.perf_counter()
            item.timings["encode"] = encoded_at - started
            written = self._put_output(
                S3Uri.parse(message.output),
                body,
                # The metadata lets the control plane count predictions with HeadObject, by purchase option
                # (docs/contracts/output-objects.md).
                {
                    "spotfill-rows": str(len(item.rows)),
                    "spotfill-run-id": message.run_id,
                    # Which model made it: a later run with another model refuses to keep it (Validate).
                    "spotfill-model-etag": self._model_etag,
                    **self._facts(len(item.rows)),
                    **self.predictor.calibration.as_metadata(),
                },
            )
            item.timings["upload"] = time.perf_counter() - encoded_at
            self._upload_seconds = 0.5 * self._upload_seconds + 0.5 * (time.perf_counter() - started)
            try:
                self.leases.delete(item.delivery)
            except ClientError as exc:  # the next delivery finds the output and deletes it then
                self.telemetry.log("delete_failed", level="WARNING", shard=message.shard, error=str(exc))
            rows = len(item.rows)
            seconds = time.monotonic() - item.delivery.received_at
            predict_seconds = item.timings.get("predict", 0.0)
            with self._busy_lock:
                self.shards_done += 1
            self.telemetry.log(
                "shard_done",
                shard=message.shard,
                output=message.output,
                rows=rows,
                seconds=round(seconds, 4),
                predictions_per_second=round(rows / predict_seconds, 1) if predict_seconds else None,
                bytes_in=item.bytes_in,
                bytes_out=len(body),
                written=written,
                receive_count=item.delivery.receive_count,
                timings={k: round(v, 4) for k, v in item.timings.items()},
                errors=0,
            )
            self.telemetry.metrics(predictions=rows, shards=1, shard_seconds=seconds)
        except Exception as exc:
            self._fail(item, exc)
        finally:
            self._upload_slots.release()
            with self._busy_lock:
                self._uploads_in_flight -= 1
                self._last_busy = time.monotonic()

    def _facts(self, rows: int) -> dict[str, str]:
        """The instance's purchase option and type, once IMDS answered (nothing off EC2), and with them this
        worker's predictions per second so far, counting the `rows` of the output about to be written
        (`spotfill-worker-rows-per-second`: rows written since its first prediction began, over the seconds
        since; docs/contracts/output-objects.md)."""
        facts = self._instance_facts.facts if self._instance_facts is not None else None
        if facts is None:
            return {}
        with self._busy_lock:
            self._rows_written += rows
            since = self._working_since
            rate = worker_rate(self._rows_written, time.monotonic() - since) if since is not None else None
        metadata = facts.as_metadata()
        if rate is not None:
            metadata["spotfill-worker-rows-per-second"] = f"{rate:.3f}"
        return metadata

    def _put_output(self, location: S3Uri, body: bytes, metadata: dict[str, str]) -> bool:
        """Create the output object if it does not exist yet; returns whether this call wrote it.

        Conditional create (``If-None-Match: *``): of two workers racing on one shard, exactly one writes the
        object, and the other's put answers 412 ``PreconditionFailed``. A put that overlaps another write to
        the key may answer 409 ``ConditionalRequestConflict`` instead, which S3 says to retry: it is retried
        with jittered exponential backoff, ``CONFLICT_ATTEMPTS`` puts in all, then raises
        ``OutputWriteConflict`` (the shard then fails as any other error does, and SQS delivers it again).
        """
        from botocore.exceptions import ClientError

        attempt = 1
        while True:
            try:
                self.clients.s3.put_object(
                    Bucket=location.bucket, Key=location.key, Body=body, IfNoneMatch="*", Metadata=metadata
                )
                return True
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412"):
                    return False
                if code not in ("ConditionalRequestConflict", "409"):
                    raise
                if attempt >= CONFLICT_ATTEMPTS:
                    raise OutputWriteConflict(
                        f"PutObject {location} answered 409 ConditionalRequestConflict "
                        f"{attempt} times in a row"
                    ) from exc
            delay = random.uniform(0.0, min(CONFLICT_BACKOFF_CAP, CONFLICT_BACKOFF * 2 ** (attempt - 1)))
            self.telemetry.log(
                "output_write_conflict",
                level="WARNING",
                output=str(location),
                attempt=attempt,
                retry_in=round(delay, 3),
            )
            time.sleep(delay)
            attempt += 1

    # ------------------------------------------------------------------------------------------ poison

    def _fail(self, item: Prepared, exc: BaseException) -> None:
        """Record the error; a shard no retry can fix (``POISON_ERRORS``) goes to the dead-letter queue now,
        any other failure makes its message visible again after a short backoff (``RETRY_BACKOFF``), so SQS
        delivers it again soon and redrives it to the dead-letter queue after the receive limit."""
        poison = isinstance(exc, POISON_ERRORS) and bool(self.config.dead_letter_queue_url)
        retry_in = min(
            self.config.visibility_timeout, RETRY_BACKOFF * 2 ** max(0, item.delivery.receive_count - 1)
        )
        if poison:
            self.leases.drop(item.delivery)
        else:
            self.leases.release(item.delivery, after=retry_in)
        with self._busy_lock:
            self.shards_failed += 1
        message = item.message
        record = {
            "run_id": self.config.run_id,
            "shard": message.shard if message else None,
            "output": message.output if message else None,
            "message_id": item.delivery.message_id,
            "receive_count": item.delivery.receive_count,
            **_error_fields(exc),
        }
        written_to = None
        if message is not None and self._write_error_record(message.error, record):
            written_to = message.error
        self.telemetry.log(
            "shard_failed",
            level="ERROR",
            shard=record["shard"],
            message_id=item.delivery.message_id,
            receive_count=item.delivery.receive_count,
            error=f"{type(exc).__name__}: {exc}",
            reason=record["reason"],
            error_record=written_to,
            retry_in=None if poison else retry_in,
            errors=1,
        )
        self.telemetry.metrics(predictions=0, shards=0, shard_seconds=0.0, shard_errors=1)
        if poison:
            self._dead_letter(item, record["shard"])

    def _dead_letter(self, item: Prepared, shard: str | None) -> None:
        """Move the message to the run's dead-letter queue: send its body there, then delete it here."""
        try:
            self.clients.sqs.send_message(
                QueueUrl=self.config.dead_letter_queue_url, MessageBody=item.delivery.body
            )
            self.clients.sqs.delete_message(
                QueueUrl=self.config.queue_url, ReceiptHandle=item.delivery.receipt_handle
            )
        except Exception as exc:  # left to time out: SQS redrives it after the receive limit
            self.telemetry.log("dead_letter_failed", level="WARNING", shard=shard, error=str(exc))
            return
        self.telemetry.log("shard_dead_lettered", shard=shard, message_id=item.delivery.message_id)


def main(environ: Any = None) -> int:
    """The process entry point: parse the environment once, then run until stopped or idle."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    turn_off_dependency_telemetry()  # first: whatever loads a runtime later finds its telemetry off
    try:
        config = WorkerConfig.from_env(environ)
    except ConfigError as exc:
        line = {"time": round(time.time(), 3), "level": "ERROR", "event": "config_invalid", "error": str(exc)}
        print(json.dumps(line), flush=True)
        return 2
    return Worker(config).run()


def _error_fields(exc: BaseException) -> dict[str, Any]:
    """What every error record says of the failure: its type, message, one line saying why (what reports
    quote), the traceback's tail, where, when."""
    return {
        "error_type": type(exc).__name__,
        "error": str(exc),
        "reason": one_line(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8))[-4000:],
        "worker": socket.gethostname(),
        "time": datetime.now(UTC).isoformat(),
    }
