"""The scale rehearsal's AWS endpoint: moto's server in a process of its own, made to scale.

`bench.scale` runs the real handlers with real boto3 against this endpoint over HTTP, so the handlers' CPU
time and memory are measured in the bench's process while moto's own work is done in this one. Commands that
have no AWS verb (create a million input objects, boot the fleet's instances, reclaim spot instances, let time
pass for SQS) arrive on a pipe from the bench.

moto keeps each queue as one list it scans on every receive, delete and depth read, and lists a bucket by
sorting every key on every page; at a million shards both grow quadratically. `install_scaling_patches`
replaces those parts of moto's in-memory backends, here only:

- SQS standard queues: an index per queue (a FIFO of ready messages, a heap of hidden and delayed ones by the
  time they show again, receipt handle -> message) so receive, delete, visibility changes and depth reads
  cost O(batch), with moto's redrive to the dead-letter queue after `maxReceiveCount` receives kept;
- SQS time: the queues' clock is the wall clock plus an offset the bench advances (`advance`), so a poll
  interval or a visibility timeout passes without waiting for it;
- S3 ListObjectsV2 without a delimiter: a sorted index of each bucket's key names, merged with the names
  added since the last listing, so a page costs O(page) plus the new names;
- EC2 tags: a resource's tags looked up, not searched for among all the account's tags (DescribeInstances
  with a tag filter is otherwise quadratic in instances).

Everything above moto's backends (its HTTP parsing and responses, and all of boto3) is unchanged.

One module of about 670 lines because it runs in a process of its own, started with this module as its whole
program: the patches above and the pipe's commands are installed together and only there.
"""

from __future__ import annotations

import bisect
import copy
import heapq
import io
import itertools
import os
import threading
import time
from collections import deque
from typing import Any

HOST = "127.0.0.1"
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"

_offset_ms = {"value": 0.0}


def clock_ms() -> float:
    return time.time() * 1000.0 + _offset_ms["value"]


def clock_s() -> float:
    return clock_ms() / 1000.0


# --- SQS ----------------------------------------------------------------------------------------------------


class QueueIndex:
    """A standard queue's messages by state: ready (visible, in send or return order), hidden (received and
    not yet visible again) or delayed; heap entries and ready entries that no longer match are skipped."""

    def __init__(self) -> None:
        self.ready: deque[tuple[int, Any]] = deque()
        self.waiting: list[tuple[float, int, Any]] = []  # (due ms, seq, message): hidden or delayed
        self.by_handle: dict[str, Any] = {}
        self.deleted_handles: set[str] = set()
        self.live: dict[str, Any] = {}
        self.counts = {"ready": 0, "hidden": 0, "delayed": 0}
        self.seq = itertools.count()

    def _set_state(self, message: Any, state: str) -> None:
        old = getattr(message, "_bench_state", None)
        if old in self.counts:
            self.counts[old] -= 1
        message._bench_state = state
        if state in self.counts:
            self.counts[state] += 1

    def make_ready(self, message: Any) -> None:
        self._set_state(message, "ready")
        token = next(self.seq)
        message._bench_token = token
        self.ready.append((token, message))

    def hide_until(self, message: Any, due_ms: float, state: str = "hidden") -> None:
        self._set_state(message, state)
        message._bench_due = due_ms
        heapq.heappush(self.waiting, (due_ms, next(self.seq), message))

    def add(self, message: Any) -> None:
        self.live[message.id] = message
        message._bench_state = None
        if message.delayed_until and message.delayed_until > clock_ms():
            self.hide_until(message, float(message.delayed_until), "delayed")
        else:
            self.make_ready(message)

    def release_due(self) -> None:
        now = clock_ms()
        while self.waiting and self.waiting[0][0] <= now:
            due, _, message = heapq.heappop(self.waiting)
            if (
                message.id in self.live
                and message._bench_state in ("hidden", "delayed")
                and message._bench_due == due
            ):
                self.make_ready(message)

    def next_ready(self) -> Any | None:
        while self.ready:
            token, message = self.ready.popleft()
            if message.id in self.live and message._bench_state == "ready" and message._bench_token == token:
                return message
        return None

    def remove(self, message: Any) -> None:
        self.live.pop(message.id, None)
        self._set_state(message, "gone")
        for handle in message.all_receipt_handles:
            if handle is not None:
                self.by_handle.pop(handle, None)


def _index(queue: Any) -> QueueIndex:
    index = queue.__dict__.get("_bench_index")
    if index is None:
        index = queue.__dict__["_bench_index"] = QueueIndex()
    return index


def _patch_sqs() -> None:
    from moto.sqs import models
    from moto.sqs.exceptions import InvalidParameterValue, ReceiptHandleIsInvalid

    models.unix_time_millis = clock_ms
    models.unix_time = clock_s
    Queue, Backend = models.Queue, models.SQSBackend
    original_add = Queue.add_message

    def add_message(self: Any, message: Any) -> None:
        if self.fifo_queue:
            original_add(self, message)
            return
        _index(self).add(message)

    def delete_message(self: Any, receipt_handle: str) -> None:
        index = _index(self)
        message = index.by_handle.get(receipt_handle)
        if message is None:
            if receipt_handle in index.deleted_handles:
                return
            raise ReceiptHandleIsInvalid()
        handles = [h for h in message.all_receipt_handles if h is not None]
        index.remove(message)
        index.deleted_handles.update(handles)

    def depth(state: str) -> Any:
        def count(self: Any) -> int:
            index = _index(self)
            index.release_due()
            return index.counts[state]

        return property(count)

    def visible_messages(self: Any) -> list[Any]:
        index = _index(self)
        index.release_due()
        return [m for _, m in index.ready if m._bench_state == "ready" and m.id in index.live]

    def receive_message(
        self: Any,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        message_attribute_names: list[str] | None = None,
    ) -> list[Any]:
        queue = self.get_queue(queue_name)
        index = _index(queue)
        index.release_due()
        redrive = queue.redrive_policy if queue.dead_letter_queue is not None else None
        result: list[Any] = []
        given: set[str] = set()
        while len(result) < count:
            message = index.next_ready()
            if message is None or message.id in given:
                break
            if redrive and message.approximate_receive_count >= redrive["maxReceiveCount"]:
                index.remove(message)
                queue.dead_letter_queue.add_message(message)
                continue
            message.mark_received(visibility_timeout=visibility_timeout)
            index.by_handle[message.receipt_handle] = message
            if visibility_timeout:
                index.hide_until(message, float(message.visible_at))
            else:
                index.make_ready(message)
            given.add(message.id)
            delivered = copy.copy(message)
            delivered.message_attributes = copy.deepcopy(message.message_attributes)
            models._filter_message_attributes(delivered, message_attribute_names or [])
            result.append(delivered)
        return result

    def change_message_visibility(
        self: Any, queue_name: str, receipt_handle: str, visibility_timeout: int
    ) -> None:
        queue = self.get_queue(queue_name)
        index = _index(queue)
        message = index.by_handle.get(receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid()
        seconds = int(visibility_timeout)
        if not 0 <= seconds <= 43_200:
            raise InvalidParameterValue("Visibility timeout invalid")
        message.change_visibility(seconds)
        if seconds == 0:
            index.make_ready(message)
        else:
            index.hide_until(message, float(message.visible_at))

    def change_message_visibility_batch(
        self: Any, queue_name: str, entries: list[dict[str, Any]]
    ) -> tuple[list[str], list[dict[str, Any]]]:
        success: list[str] = []
        errors: list[dict[str, Any]] = []
        for entry in entries:
            try:
                self.change_message_visibility(queue_name, entry["ReceiptHandle"], entry["VisibilityTimeout"])
                success.append(entry["Id"])
            except (InvalidParameterValue, ReceiptHandleIsInvalid) as exc:
                errors.append(
                    {"Id": entry["Id"], "SenderFault": True, "Code": exc.code, "Message": exc.message}
                )
        return success, errors

    def purge_queue(self: Any, queue_name: str) -> None:
        queue = self.get_queue(queue_name)
        queue.__dict__["_bench_index"] = QueueIndex()
        queue.last_purged_at = clock_s()

    Queue.add_message = add_message
    Queue.delete_message = delete_message
    Queue.messages = property(visible_messages)
    Queue.approximate_number_of_messages = depth("ready")
    Queue.approximate_number_of_messages_not_visible = depth("hidden")
    Queue.approximate_number_of_messages_delayed = depth("delayed")
    Backend.receive_message = receive_message
    Backend.change_message_visibility = change_message_visibility
    Backend.change_message_visibility_batch = change_message_visibility_batch
    Backend.purge_queue = purge_queue


# --- S3 -----------------------------------------------------------------------------------------------------


class KeyIndex:
    """A bucket's key names, sorted, plus the names put since the last listing (merged in on the next)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.known: set[str] = set()
        self.added: list[str] = []

    def note(self, name: str) -> None:
        if name not in self.known:
            self.known.add(name)
            self.added.append(name)

    def sorted_names(self) -> list[str]:
        if self.added:
            self.added.sort()
            self.names = list(heapq.merge(self.names, self.added))
            self.added = []
        return self.names


def _patch_s3() -> None:
    from moto.s3 import models, utils

    store = utils._VersionedKeyStore
    original_setitem, original_setlist = store.__setitem__, store.setlist

    def noted(self: Any, key: str) -> None:
        index = self.__dict__.get("_bench_index")
        if index is None:
            index = self.__dict__["_bench_index"] = KeyIndex()
        index.note(key)

    def setitem(self: Any, key: str, value: Any) -> None:
        original_setitem(self, key, value)
        noted(self, key)

    def setlist(self: Any, key: str, list_: Any) -> Any:  # PutObject stores a key this way
        result = original_setlist(self, key, list_)
        noted(self, key)
        return result

    store.__setitem__ = setitem
    store.setlist = setlist
    original_list_v2 = models.S3Backend.list_objects_v2

    def list_objects_v2(
        self: Any,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        continuation_token: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> Any:
        index = bucket.keys.__dict__.get("_bench_index")
        if delimiter or index is None or isinstance(bucket, models.FakeTableStorageBucket):
            return original_list_v2(
                self, bucket, prefix, delimiter, continuation_token, start_after, max_keys
            )
        prefix = prefix or ""
        after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        names = index.sorted_names()
        position = bisect.bisect_left(names, prefix)
        if after is not None and after >= prefix:
            position = bisect.bisect_right(names, after)
        found: list[Any] = []
        while position < len(names) and len(found) <= max_keys:
            name = names[position]
            position += 1
            if not name.startswith(prefix):
                break
            key = bucket.keys.get(name)
            if key is None or isinstance(key, models.FakeDeleteMarker):
                continue
            found.append(key)
        if max_keys == 0:
            return [], False, None
        if len(found) > max_keys:
            found = found[:max_keys]
            token = models.md5_hash(found[-1].name.encode("utf-8")).hexdigest()
            self._pagination_tokens[token] = found[-1].name
            return found, True, token
        return found, False, None

    models.S3Backend.list_objects_v2 = list_objects_v2


# --- EC2 ------------------------------------------------------------------------------------------------


def _patch_ec2_tags() -> None:
    """A resource's own tags by a dict lookup: moto finds them by matching a regular expression against every
    tag of the account, once per instance per filter, which makes DescribeInstances quadratic in instances."""
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    def get_tags(self: Any) -> list[dict[str, str]]:
        tags = self.ec2_backend.tags.get(self.id) if self.id else None
        if not tags:
            return []
        kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
        return [
            {"resource_id": self.id, "key": k, "value": v, "resource_type": kind} for k, v in tags.items()
        ]

    TaggedEC2Resource.get_tags = get_tags


def install_scaling_patches() -> None:
    from spotfill.localcloud.patches.routing import route_requests_once

    _patch_sqs()
    _patch_s3()
    _patch_ec2_tags()
    _patch_ec2_instance_lookup()
    route_requests_once()


def _patch_ec2_instance_lookup() -> None:
    """An instance by its id from an index: moto copies every reservation and scans every instance per lookup,
    which the fleet emulator does for each of a thousand instances every tick."""
    from moto.ec2.models.instances import InstanceBackend

    original = InstanceBackend.get_instance

    def get_instance(self: Any, instance_id: str) -> Any:
        index = self.__dict__.setdefault("_bench_instances", {})
        if instance_id not in index:  # moto never removes an instance from its reservation: index anew
            index.update((i.id, i) for r in list(self.reservations.values()) for i in r.instances)
        if instance_id not in index:
            return original(self, instance_id)  # raises moto's InvalidInstanceID.NotFound
        return index[instance_id]

    InstanceBackend.get_instance = get_instance


# --- the process -------------------------------------------------------------------------------------------


def serve(port: int, connection: Any) -> None:
    """The emulator process's body: patch moto, start its server on `port`, then answer the bench's commands
    until it says "stop"."""
    os.environ.update(
        {
            "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
        }
    )
    import logging

    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    from spotfill.localcloud.patches import install
    from spotfill.localcloud.patches.account_limits import set_service_quota
    from spotfill.localcloud.patches.spot_prices import quote_spot_prices
    from spotfill.localcloud.pricing import PriceListRouter

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    class Server(ThreadedMotoServer):
        """moto's threaded server, the Price List API (which moto lacks) in front as in the local cloud."""

        def _server_entry(self) -> None:
            app = _Timed(PriceListRouter(DomainDispatcherApplication(create_backend_app)))
            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    from moto import mock_aws

    # The stand-in workers' clients (bench.scale_world.StandInFleet) are served in this process, from the
    # backends the server answers from: started first, since starting it resets them.
    mock = mock_aws()
    mock.start()
    endpoint = f"http://{HOST}:{port}"
    install(endpoint)
    quote_spot_prices()
    set_service_quota("L-34B43A08", 100_000, region=REGION, account_id=ACCOUNT_ID)
    install_scaling_patches()
    server = Server(ip_address=HOST, port=port, verbose=False)
    server.start()
    physics = Physics()
    sampler = StackSampler.from_environment()
    connection.send(("ready", endpoint))
    while True:
        command, arguments = connection.recv()
        if command == "stop":
            if sampler is not None:
                sampler.stop()
            server.stop()
            mock.stop()
            connection.send(("ok", None))
            return
        try:
            connection.send(("ok", getattr(physics, command)(*arguments)))
        except Exception as exc:  # the bench raises it with the command's name
            connection.send(("error", f"{command}: {type(exc).__name__}: {exc}"))


class StackSampler:
    """Where this process's time goes, by sampling every thread's stack (`SCALE_PROFILE=path`: every 10 ms,
    written to path every minute and at the end as `samples function` lines, inclusive, most first). The
    endpoint's threads are werkzeug's, which cProfile (one thread) does not see."""

    def __init__(self, path: str, interval: float = 0.01) -> None:
        self.path, self.interval = path, interval
        self.counts: dict[str, int] = {}
        self.samples = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample, name="stack-sampler", daemon=True)
        self.thread.start()

    @classmethod
    def from_environment(cls) -> StackSampler | None:
        path = os.environ.get("SCALE_PROFILE")
        return cls(path) if path else None

    def _sample(self) -> None:
        import sys

        own = threading.get_ident()
        written = time.monotonic()
        while not self.stopping.wait(self.interval):
            if time.monotonic() - written >= 60.0:
                self.write()
                written = time.monotonic()
            for ident, frame in sys._current_frames().items():
                if ident == own or _idle(frame):
                    continue
                self.samples += 1
                seen = set()
                while frame is not None:
                    code = frame.f_code
                    where = code.co_filename.rsplit("site-packages/", 1)[-1]
                    name = f"{where}:{code.co_firstlineno} {code.co_name}"
                    if name not in seen:
                        seen.add(name)
                        self.counts[name] = self.counts.get(name, 0) + 1
                    frame = frame.f_back

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.write()

    def write(self) -> None:
        ranked = sorted(self.counts.items(), key=lambda kv: -kv[1])
        with open(self.path, "w") as handle:
            handle.write(f"{self.samples} samples of busy threads every {self.interval * 1000:.0f} ms\n")
            handle.writelines(f"{count} {name}\n" for name, count in ranked[:400])


# What a thread waiting (in a lock, a select, a socket accept or read, a queue get) is in.
_WAITING = frozenset(
    {
        "wait",
        "select",
        "accept",
        "recv",
        "recv_into",
        "readinto",
        "poll",
        "_wait_for_tstate_lock",
        "get",
        "recv_bytes",
        "_recv",
        "_recv_bytes",
    }
)


def _idle(frame: Any) -> bool:
    return frame.f_code.co_name in _WAITING


SERVED: dict[str, list[float]] = {}  # request kind -> [count, seconds]: where the emulator's time goes


class _Timed:
    """WSGI middleware: the time the emulator spends on each kind of request (Action, X-Amz-Target or the S3
    method), for `Physics.served`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        kind = environ.get("HTTP_X_AMZ_TARGET") or _action(environ) or environ.get("REQUEST_METHOD", "?")
        started = time.perf_counter()
        try:
            return list(self.app(environ, start_response))
        finally:
            entry = SERVED.setdefault(kind, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - started
            _settle_heap()


_requests_since_freeze = {"count": 0}
FREEZE_EVERY = 2_000  # requests


def _settle_heap(force: bool = False) -> None:
    """Move what the emulator holds out of the garbage collector's sight (`gc.freeze`) now and then: with
    millions of objects (keys, messages) each full collection walks them all (in process, a SendMessageBatch
    took 2.5 ms beside an empty bucket, 5.7 ms beside 300,000 keys, 2.4 ms beside a million frozen ones). What
    is frozen is never collected, so cycles frozen with it stay: a bench process's price for a flat cost per
    request."""
    import gc

    _requests_since_freeze["count"] += 1
    if force or _requests_since_freeze["count"] >= FREEZE_EVERY:
        _requests_since_freeze["count"] = 0
        gc.freeze()


def _action(environ: dict[str, Any]) -> str:
    from urllib.parse import parse_qs

    query = parse_qs(environ.get("QUERY_STRING", ""))
    if "Action" in query:
        return query["Action"][0]
    content_type = environ.get("CONTENT_TYPE", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        stream = environ["wsgi.input"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = stream.read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        found = parse_qs(body.decode(errors="replace")).get("Action")
        return found[0] if found else ""
    return ""


class Physics:
    """What has no AWS verb: bulk objects, booting and reclaiming instances, the passing of time."""

    def __init__(self) -> None:
        from spotfill.localcloud.fleet import FleetEmulator

        self.ec2 = FleetEmulator(REGION, boot_delay=0.0, on_boot=self._booted, on_terminate=self._gone)
        self.booted: list[tuple[str, str]] = []
        self.gone: list[str] = []
        self.lock = threading.Lock()

    def start_fleet(
        self,
        run: dict[str, Any],
        poisoned: list[str],
        visibility_timeout: int,
        model_etag: str,
        calls: str = "boto3",
    ) -> None:
        from bench.scale_world import StandInFleet

        self.stand_ins = StandInFleet(self, run, set(poisoned), visibility_timeout, model_etag, calls=calls)

    def fleet(self, method: str, *arguments: Any) -> Any:
        """Call a `StandInFleet` method: sync, work, interrupt, check; "tally" returns its counts."""
        if method == "tally":
            return dict(vars(self.stand_ins.tally))
        return getattr(self.stand_ins, method)(*arguments)

    def _booted(self, machine: Any) -> None:
        self.booted.append((machine.instance_id, machine.instance_type))

    def _gone(self, machine: Any) -> None:
        self.gone.append(machine.instance_id)

    def put_objects(self, bucket: str, keys: list[str], body: bytes, metadata: dict[str, str]) -> int:
        from moto.s3.models import s3_backends

        backend = s3_backends[ACCOUNT_ID]["aws"]
        for key in keys:
            stored = backend.put_object(bucket, key, body)
            if metadata:
                stored.set_metadata(metadata)
        _settle_heap(force=True)
        return len(keys)

    def step_fleet(self) -> dict[str, list[Any]]:
        """One tick of EC2: fleets kept at their targets, new instances booted. Returns what booted and what
        terminated since the last tick."""
        self.ec2.step()
        booted, gone = self.booted, self.gone
        self.booted, self.gone = [], []
        return {"booted": booted, "gone": gone}

    def interrupt(self, instance_ids: list[str]) -> int:
        machines = [self.ec2.machines[i] for i in instance_ids if i in self.ec2.machines]
        for machine in machines:
            self.ec2.interrupt(machine)
        return len(machines)

    def advance(self, seconds: float) -> float:
        _settle_heap(force=True)  # the stand-ins' outputs and messages since the last poll
        _offset_ms["value"] += seconds * 1000.0
        return _offset_ms["value"] / 1000.0

    def served(self) -> dict[str, list[float]]:
        return {k: [v[0], round(v[1], 3)] for k, v in sorted(SERVED.items(), key=lambda kv: -kv[1][1])}

    def memory(self) -> int:
        """This process's resident set size in bytes."""
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
