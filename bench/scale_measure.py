"""The scale rehearsal's measurements: each handler call's wall time, CPU time, peak memory and AWS calls.

`Harness.call` runs one handler (functions/spotfill_control/handlers, unchanged) with a Lambda context whose
remaining time runs down as it would at the function's MemorySize, and records an `Invocation`: wall seconds,
the CPU seconds of the bench's process (`time.process_time`: the handler's thread and any threads it starts,
such as the Report's HeadObject pool and the Teardown's; the endpoint and the stand-in fleet run in another
process; `thread_cpu_s` keeps the calling thread's alone), the peak memory (RSS sampled during the call minus
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
class Unit:
    """One unit of a looping stage's work inside an invocation: a part prepared (`prepare_part`), a part
    verified (`verify_part`), or a dead-letter drain (`drain`), with the CPU, wall time and AWS calls it took
    and its size (`amount`: shards in the part, dead letters moved)."""

    kind: str
    cpu_s: float
    wall_s: float
    calls: Counter[str]
    amount: int


@dataclass
class Invocation:
    wall_s: float
    cpu_s: float
    peak_bytes: int
    calls: Counter[str]
    call_seconds: Counter[str] = field(default_factory=Counter)
    units: list[Unit] = field(default_factory=list)
    thread_cpu_s: float = 0.0


@dataclass
class Stage:
    name: str
    memory_mb: int
    timeout_s: int  # template.yaml's: the limits the projections are held against
    invocations: list[Invocation] = field(default_factory=list)
    context_timeout_s: int | None = None  # the Timeout the bench's context started from, when not timeout_s


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


class WorkSpy:
    """Marks the units of the looping stages' work, in the bench's process only: passive wrappers around the
    domain functions the handlers call through their modules (the handlers and the functions are unchanged).

    - PrepareRun calls `inputs.existing_among` once per part, at the part's start: a part is the work from one
      call to the next (its listing, the existence check, the sends, the part and checkpoint writes). The last
      part of an invocation runs into the invocation's tail and is not counted as a unit.
    - The Monitor verifies a part in `reconcile.verify_part` (its amount: the part's pending shards).
    - The Monitor and Teardown move dead letters in `dead_letters.drain` (its amount: the messages moved).
    """

    def __init__(self, counter: CallCounter) -> None:
        self.counter = counter
        self.units: list[Unit] = []
        self._part: tuple[float, float, Counter[str], int] | None = None
        self._originals: list[tuple[Any, str, Any]] = []

    def _mark(self) -> tuple[float, float, Counter[str]]:
        return time.process_time(), time.perf_counter(), Counter(self.counter.calls)

    def _unit(self, kind: str, mark: tuple[float, float, Counter[str]], amount: int) -> Unit:
        cpu, wall, calls = mark
        now_cpu, now_wall, now_calls = self._mark()
        return Unit(kind, now_cpu - cpu, now_wall - wall, now_calls - calls, amount)

    def start(self) -> None:
        self.units, self._part = [], None

    def install(self) -> None:
        from spotfill_control.monitoring import dead_letters, reconcile
        from spotfill_control.setup import inputs

        def part_started(original: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(outputs: Any, *args: Any, **kwargs: Any) -> Any:
                outputs = list(outputs)
                if self._part is not None:
                    self.units.append(self._unit("prepare_part", self._part[:3], self._part[3]))
                self._part = (*self._mark(), len(outputs))
                return original(outputs, *args, **kwargs)

            return wrapper

        Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]

        def around(kind: str, amount: Callable[[Any], int]) -> Wrap:
            def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
                def wrapper(*args: Any, **kwargs: Any) -> Any:
                    mark = self._mark()
                    result = original(*args, **kwargs)
                    self.units.append(self._unit(kind, mark, amount(result)))
                    return result

                return wrapper

            return wrap

        for module, name, wrap in (
            (inputs, "existing_among", part_started),
            (reconcile, "verify_part", around("verify_part", lambda result: int(result.pending))),
            (dead_letters, "drain", around("drain", lambda result: int(result.messages))),
        ):
            original = getattr(module, name)
            self._originals.append((module, name, original))
            setattr(module, name, wrap(original))

    def uninstall(self) -> None:
        while self._originals:
            module, name, original = self._originals.pop()
            setattr(module, name, original)


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

    def __init__(
        self,
        counter: CallCounter,
        tracemalloc: bool = False,
        quiet: bool = False,
        spy: WorkSpy | None = None,
        timeouts: dict[str, int] | None = None,
    ) -> None:
        import importlib

        limits = function_limits()
        self.tracemalloc = tracemalloc
        self.quiet = quiet
        self.counter = counter
        self.spy = spy
        self.stages: dict[str, Stage] = {}
        self.handlers: dict[str, Callable[[dict[str, Any], Any], Any]] = {}
        for stage, (function, module) in STAGES.items():
            memory, timeout = limits[function]
            # a shorter Timeout than template.yaml's makes a stage's budget bind at a size this machine runs
            self.stages[stage] = Stage(stage, memory, timeout, context_timeout_s=(timeouts or {}).get(stage))
            self.handlers[stage] = importlib.import_module(f"spotfill_control.handlers.{module}").handler

    def call(self, stage_name: str, event: dict[str, Any]) -> Any:
        stage = self.stages[stage_name]
        timeout = stage.timeout_s if stage.context_timeout_s is None else stage.context_timeout_s
        context = ProjectedContext(f"spotfill-{stage_name}", stage.memory_mb, timeout)
        handler = self.handlers[stage_name]
        _release_freed_memory()
        self.counter.reset()
        if self.spy is not None:
            self.spy.start()
        self.counter.armed = True
        # stdout swallowed: the Monitor prints its metrics (EMF records) there, as on Lambda
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                if self.tracemalloc:
                    tracemalloc.start()
                    wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
                    result = handler(event, context)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    own = time.thread_time() - own
                    peak = tracemalloc.get_traced_memory()[1]
                else:
                    with RssSampler() as sampler:
                        before = sampler.peak
                        wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
                        result = handler(event, context)
                        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                        own = time.thread_time() - own
                    peak = max(0, sampler.peak - before)
            finally:
                tracemalloc.stop()
                self.counter.armed = False
        units = list(self.spy.units) if self.spy is not None else []
        stage.invocations.append(
            Invocation(wall, cpu, peak, self.counter.calls, self.counter.seconds, units, thread_cpu_s=own)
        )
        if not self.quiet:
            print(
                f"  {stage_name:<18} {wall:8.2f} s wall {cpu:8.2f} s CPU {peak / 2**20:8.1f} MiB "
                f"{sum(self.counter.calls.values()):7d} calls",
                file=sys.stderr,
                flush=True,
            )
        return result
