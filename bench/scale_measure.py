"""The scale rehearsal's measurements: each handler call's wall time, CPU time, peak memory and AWS calls.

`Harness.call` runs one handler (functions/spotfill_control/handlers, unchanged) with a Lambda context whose
remaining time runs down as it would at the function's MemorySize, and records an `Invocation`: wall seconds,
the CPU seconds of the calling thread (`time.thread_time`), the peak memory (RSS sampled during the call minus
RSS before it, or the tracemalloc peak), and the AWS calls by `service.Operation` (`CallCounter`, a botocore
`before-call` / `after-call` hook on the handlers' session).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import os
import sys
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LAMBDA_MB_PER_VCPU = 1769

# The state machine's Task states, their functions in template.yaml and their handler modules.
STAGES = {
    "Validate": ("ValidateFunction", "validate"),
    "PrepareRun": ("PrepareRunFunction", "prepare_run"),
    "RequestFleet": ("RequestFleetFunction", "request_fleet"),
    "CheckRegistration": ("CheckRegistrationFunction", "check_registration"),
    "ScaleService": ("ScaleServiceFunction", "scale_service"),
    "Monitor": ("MonitorFunction", "monitor"),
    "Teardown": ("TeardownFunction", "teardown"),
    "Report": ("ReportFunction", "report"),
}


@dataclass
class Invocation:
    wall_s: float
    cpu_s: float
    peak_bytes: int
    calls: Counter[str]
    call_seconds: Counter[str] = field(default_factory=Counter)


@dataclass
class Stage:
    name: str
    memory_mb: int
    timeout_s: int
    invocations: list[Invocation] = field(default_factory=list)


class CallCounter:
    """Counts the handlers' AWS calls by `service.Operation` while armed (botocore `before-call`), and the
    wall seconds they took (to `after-call`)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.armed = False
        self._started: dict[str, float] = {}

    @staticmethod
    def _name(model: Any) -> str:
        return f"{model.service_model.endpoint_prefix}.{model.name}"

    def before(self, model: Any, **_: Any) -> None:
        if self.armed:
            self.calls[self._name(model)] += 1
            self._started[self._name(model)] = time.perf_counter()

    def after(self, model: Any, **_: Any) -> None:
        started = self._started.pop(self._name(model), None)
        if self.armed and started is not None:
            self.seconds[self._name(model)] += time.perf_counter() - started

    def reset(self) -> None:
        self.calls, self.seconds = Counter(), Counter()


class RssSampler:
    """The process's peak resident set during a call, sampled every few milliseconds from /proc."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _release_freed_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: the RSS delta may then read high
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ProjectedContext:
    """A Lambda context whose remaining time runs down as it would on Lambda: local wall time stretched by the
    CPU share (MemorySize / 1,769 MB of a vCPU) the function gets there."""

    def __init__(self, function_name: str, memory_mb: int, timeout_s: int) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "bench/[$LATEST]scale"
        self._timeout_s = timeout_s
        self._stretch = max(1.0, LAMBDA_MB_PER_VCPU / memory_mb)
        self._started = time.monotonic()

    def get_remaining_time_in_millis(self) -> int:
        elapsed = (time.monotonic() - self._started) * self._stretch
        return max(0, int((self._timeout_s - elapsed) * 1000))


def function_limits() -> dict[str, tuple[int, int]]:
    """Function logical id -> (MemorySize MB, Timeout s), from template.yaml (Globals where it sets none)."""
    from spotfill.deploy import load_template

    template = load_template()
    defaults = template.get("Globals", {}).get("Function", {})
    limits = {}
    for name, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = resource.get("Properties", {})
        memory = int(properties.get("MemorySize", defaults.get("MemorySize", 128)))
        timeout = int(properties.get("Timeout", defaults.get("Timeout", 3)))
        limits[name] = (memory, timeout)
    return limits


class Harness:
    """Runs the handlers one call at a time and measures each call."""

    def __init__(self, counter: CallCounter, tracemalloc: bool = False, quiet: bool = False) -> None:
        import importlib

        limits = function_limits()
        self.tracemalloc = tracemalloc
        self.quiet = quiet
        self.counter = counter
        self.stages: dict[str, Stage] = {}
        self.handlers: dict[str, Callable[[dict[str, Any], Any], Any]] = {}
        for stage, (function, module) in STAGES.items():
            memory, timeout = limits[function]
            self.stages[stage] = Stage(stage, memory, timeout)
            self.handlers[stage] = importlib.import_module(f"spotfill_control.handlers.{module}").handler

    def call(self, stage_name: str, event: dict[str, Any]) -> Any:
        stage = self.stages[stage_name]
        context = ProjectedContext(f"spotfill-{stage_name}", stage.memory_mb, stage.timeout_s)
        handler = self.handlers[stage_name]
        _release_freed_memory()
        self.counter.reset()
        self.counter.armed = True
        # stdout swallowed: the Monitor prints its metrics (EMF records) there, as on Lambda
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                if self.tracemalloc:
                    tracemalloc.start()
                    wall, cpu = time.perf_counter(), time.thread_time()
                    result = handler(event, context)
                    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                    peak = tracemalloc.get_traced_memory()[1]
                else:
                    with RssSampler() as sampler:
                        before = sampler.peak
                        wall, cpu = time.perf_counter(), time.thread_time()
                        result = handler(event, context)
                        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                    peak = max(0, sampler.peak - before)
            finally:
                tracemalloc.stop()
                self.counter.armed = False
        stage.invocations.append(Invocation(wall, cpu, peak, self.counter.calls, self.counter.seconds))
        if not self.quiet:
            print(
                f"  {stage_name:<18} {wall:8.2f} s wall {cpu:8.2f} s CPU {peak / 2**20:8.1f} MiB "
                f"{sum(self.counter.calls.values()):7d} calls",
                file=sys.stderr,
                flush=True,
            )
        return result
