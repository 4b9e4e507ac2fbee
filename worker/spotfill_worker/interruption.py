"""Knowing when to stop: SIGTERM from ECS spot draining, and the EC2 spot ``instance-action`` notice.

Either one sets a deadline. The worker stops receiving at once, finishes the shard in hand only if it can
before the deadline, and otherwise makes its messages visible again so another instance picks them up
immediately.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import urllib.error
from collections.abc import Callable
from datetime import UTC, datetime

from spotfill_worker.imds import Imds


def safety_margin(stop_timeout: float) -> float:
    """Time kept in hand before SIGKILL for releasing messages and exiting cleanly."""
    return min(10.0, 0.2 * stop_timeout)


class StopSignal:
    """A thread-safe 'stop by this deadline' flag (deadline on the monotonic clock)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.deadline: float | None = None
        self.reason: str | None = None

    def request(self, reason: str, deadline: float) -> None:
        with self._lock:
            if self.deadline is None or deadline < self.deadline:
                self.deadline = deadline
            if self.reason is None:
                self.reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def seconds_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


def install_signal_handlers(stop: StopSignal, stop_timeout: float) -> None:
    """SIGTERM (ECS stop, spot draining) and SIGINT: stop with the task's stop timeout as the budget."""

    def handle(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        stop.request(name, time.monotonic() + stop_timeout - safety_margin(stop_timeout))

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


class SpotNoticeWatcher(threading.Thread):
    """Polls IMDSv2 for the spot interruption notice, if the metadata service answers at all.

    Off EC2 (or with the container's hop limit in the way) the first token request fails within ``timeout``
    and the watcher ends; it runs in a daemon thread so it never delays start-up.
    """

    def __init__(
        self,
        stop: StopSignal,
        stop_timeout: float,
        on_event: Callable[..., None],
        endpoint: str | None = None,
        interval: float = 5.0,
        timeout: float = 1.0,
    ) -> None:
        super().__init__(name="spot-notice", daemon=True)
        self._stop_signal = stop
        self._stop_timeout = stop_timeout
        self._on_event = on_event
        self._imds = Imds(endpoint, timeout)
        self._endpoint = self._imds.endpoint
        self._interval = interval
        self._finished = threading.Event()

    def close(self) -> None:
        self._finished.set()

    def _token(self) -> str:
        return self._imds.token()

    def _instance_action(self, token: str) -> dict | None:
        try:
            return json.loads(self._imds.get("spot/instance-action", token))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # no interruption scheduled
                return None
            raise

    def run(self) -> None:
        try:
            token = self._token()
        except (OSError, urllib.error.URLError) as exc:
            self._on_event("spot_notice_watch_off", reason=f"instance metadata unreachable: {exc}")
            return
        self._on_event("spot_notice_watch_on", endpoint=self._endpoint)
        while not self._finished.wait(self._interval if self._stop_signal.deadline is None else 60):
            try:
                notice = self._instance_action(token)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    with contextlib.suppress(OSError, urllib.error.URLError):
                        token = self._token()
                continue
            except (OSError, urllib.error.URLError, ValueError):
                continue
            if notice:
                self._stop_signal.request("spot-interruption", self._deadline_from(notice))
                self._on_event("spot_interruption_notice", notice=notice)

    def _deadline_from(self, notice: dict) -> float:
        budget = self._stop_timeout
        try:
            when = datetime.fromisoformat(str(notice["time"]).replace("Z", "+00:00"))
            budget = min(budget, (when - datetime.now(UTC)).total_seconds())
        except (KeyError, ValueError):
            pass
        return time.monotonic() + max(0.0, budget - safety_margin(self._stop_timeout))
