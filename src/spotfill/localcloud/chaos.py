"""Chaos: worker processes SIGKILLed and spot instances reclaimed while a run is in flight.

`kill=K,interrupt=I[,every=S][,warmup=W]`: once a worker is busy (it has finished a shard, so its model is
loaded and it holds work) and has run for W seconds, one event every S seconds (default 2), kills and
interruptions interleaved, until all K + I have happened; victims are always busy workers. Events are also
paced by the run's progress: the next waits until the fleet has finished PROGRESS_PER_WORKER shards per
running worker since the last, so the shards in hand (and prefetched) at one event are done before the next:
with kills or interruptions the local cloud fixes its workers' prefetch at one shard
(`SPOTFILL_PREFETCH_SHARDS`, unless the worker environment sets it), where a worker would otherwise choose
to hold up to 16 of a fast model's shards.
Paced by time alone, a slow machine would catch the same shard in hand at event after event until SQS
dead-lettered it (the queue's maxReceiveCount), which no fleet's interruption rate does. A kill is
SIGKILL to one random worker process (ECS replaces it); an interruption is a spot reclaim: SIGTERM to the
instance's tasks (ECS spot draining), SIGKILL after the stop timeout, then the instance terminated with
`Server.SpotInstanceTermination`, and the fleet replaces it.

`conflict=C` makes the first C conditional output writes (PutObject with `If-None-Match`) answer 409
`ConditionalRequestConflict`, one per key, as S3 answers a write that races another one on the same key
(`patches.s3.CONDITIONAL_WRITE_CONFLICTS`); workers retry them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from spotfill.localcloud.agent import EcsAgent
from spotfill.localcloud.fleet import FleetEmulator
from spotfill.localcloud.patches.s3 import CONDITIONAL_WRITE_CONFLICTS, install_conditional_write_conflicts

log = logging.getLogger(__name__)

# A spot instance gets two minutes' notice; the stop timeout of its tasks is usually shorter.
SPOT_NOTICE_SECONDS = 120.0
# Shards the fleet finishes per running worker between two events: the one in hand and the one prefetched
# (the local cloud fixes SPOTFILL_PREFETCH_SHARDS to PROGRESS_PER_WORKER - 1 under chaos).
PROGRESS_PER_WORKER = 2


class ChaosSpecError(ValueError):
    pass


@dataclass(frozen=True)
class ChaosSpec:
    kill: int = 0
    interrupt: int = 0
    every: float = 2.0
    warmup: float = 3.0
    conflict: int = 0

    @property
    def empty(self) -> bool:
        return self.kill == 0 and self.interrupt == 0 and self.conflict == 0

    @classmethod
    def parse(cls, text: str) -> ChaosSpec:
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in ("kill", "interrupt", "every", "warmup", "conflict"):
                raise ChaosSpecError(
                    f"chaos {part!r} is not kill=N, interrupt=N, conflict=N, every=SECONDS or warmup=SECONDS"
                )
            try:
                number = float(value)
            except ValueError:
                raise ChaosSpecError(f"chaos {key} must be a number, got {value!r}") from None
            if number < 0:
                raise ChaosSpecError(f"chaos {key} must not be negative")
            values[key] = number
        return cls(
            kill=int(values.get("kill", 0)),
            interrupt=int(values.get("interrupt", 0)),
            every=values.get("every", 2.0),
            warmup=values.get("warmup", 3.0),
            conflict=int(values.get("conflict", 0)),
        )


def interleave(kill: int, interrupt: int) -> list[str]:
    """Kills and interruptions spread evenly: e.g. 10 and 5 -> k k i k k i ..."""
    events = [(i / kill, "kill") for i in range(kill)] + [
        ((i + 0.5) / interrupt, "interrupt") for i in range(interrupt)
    ]
    return [name for _, name in sorted(events)]


class Chaos:
    def __init__(
        self, spec: ChaosSpec, fleet: FleetEmulator, agent: EcsAgent, seed: int | None = None
    ) -> None:
        self.spec = spec
        self.fleet = fleet
        self.agent = agent
        self.random = random.Random(seed)
        self.kills = 0
        self.interruptions = 0
        self.interrupted_instances: list[str] = []
        self._shards_done: dict[str, int] = {}  # by task id, kept after the task ends
        self._progress_wanted = 0  # what progress() must reach before the next event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="localcloud-chaos", daemon=True)

    @property
    def done(self) -> bool:
        return self.kills >= self.spec.kill and self.interruptions >= self.spec.interrupt

    def start(self) -> None:
        if self.spec.conflict:
            install_conditional_write_conflicts()
            CONDITIONAL_WRITE_CONFLICTS.arm(self.spec.conflict, per_key=1)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.spec.conflict:
            CONDITIONAL_WRITE_CONFLICTS.disarm()

    @property
    def conflicts(self) -> int:
        """Conditional writes answered 409 so far."""
        return len(CONDITIONAL_WRITE_CONFLICTS.answered) if self.spec.conflict else 0

    def _run(self) -> None:
        pending = interleave(self.spec.kill, self.spec.interrupt)
        while pending and not self._stop.is_set():
            if not self.due():
                self._stop.wait(0.25)
                continue
            event = pending[0]
            acted = self.kill_one() if event == "kill" else self.interrupt_one()
            if acted:
                pending.pop(0)
                self._stop.wait(self.spec.every)
            else:
                self._stop.wait(0.25)

    def due(self) -> bool:
        """A busy worker is past its warm-up, and the fleet has made the progress the last event asked for."""
        # progress() reads each running worker's log once; warm-up is judged from what it read
        return self.progress() >= self._progress_wanted and self._warm()

    def _paced(self) -> None:
        """After an event: the next waits for PROGRESS_PER_WORKER shards per running worker."""
        workers = len(self.agent.running_tasks())
        self._progress_wanted = self.progress() + PROGRESS_PER_WORKER * max(1, workers)

    def progress(self) -> int:
        """Shards the run's workers have finished so far, those of ended workers included."""
        for task in self.agent.running_tasks():
            self._shards_done[task.task_id] = max(self._shards_done.get(task.task_id, 0), task.shards_done)
        return sum(self._shards_done.values())

    def _warm(self) -> bool:
        """A running worker past its warm-up has finished a shard (as progress() last read its log)."""
        now = time.monotonic()
        return any(
            now - t.started_at >= self.spec.warmup and self._shards_done.get(t.task_id, 0) > 0
            for t in self.agent.running_tasks()
        )

    def kill_one(self) -> bool:
        now = time.monotonic()
        tasks = [t for t in self.agent.running_tasks() if now - t.started_at >= self.spec.warmup and t.busy]
        if not tasks:
            return False
        task = self.random.choice(tasks)
        log.info("chaos: SIGKILL task %s on %s", task.task_id, task.instance_id)
        self.agent.kill_task(task)
        self.kills += 1
        self._paced()
        return True

    def interrupt_one(self) -> bool:
        busy = {t.instance_id for t in self.agent.running_tasks() if t.busy}
        machines = [m for m in self.fleet.spot_machines() if m.instance_id in busy and not m.interrupted]
        if not machines:
            return False
        machine = self.random.choice(machines)
        log.info("chaos: spot interruption of %s", machine.instance_id)
        tasks = self.agent.drain(machine.instance_id)
        self.interruptions += 1
        self._paced()
        self.interrupted_instances.append(machine.instance_id)
        threading.Thread(
            target=self._reclaim, args=(machine, tasks), name="localcloud-spot-reclaim", daemon=True
        ).start()
        return True

    def _reclaim(self, machine, tasks) -> None:
        deadline = time.monotonic() + min(
            SPOT_NOTICE_SECONDS, max((t.stop_timeout for t in tasks), default=0.0)
        )
        while time.monotonic() < deadline and any(t.alive for t in tasks):
            time.sleep(0.1)
        self.fleet.interrupt(machine)
