"""EC2 physics moto leaves out: instances take a while to boot, and a maintained fleet replaces lost ones.

Both fleet APIs: EC2 Fleets (`CreateFleet`, their spot and on-demand instances, kept at each purchase
option's target by `patches.fleet_clock.maintain_fleets`, spot only as far as
`patches.fleets.set_spot_capacity` allows) and Spot Fleet requests.

moto marks a fleet's instances `running` the moment the request is made; here a new instance shows as
`pending` for the boot delay and only then becomes `running` and reaches the ECS agent, one at a time: a
fleet's instances boot at least `boot_interval` apart (on AWS a fleet's instances register over minutes).
Fleets past their `ValidUntil` expire on this clock too (`patches.fleets.expire_fleets`). moto lowers a
fleet's fulfilled capacity when one of its instances terminates but never launches a replacement; AWS does
for a `maintain` fleet, so this does too. Both act on moto's in-process models, because the API has no verb
for "the instance finished booting" or "the fleet launched a replacement".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.ec2.models.instances import StateReason

from spotfill.localcloud.patches.fleet_clock import maintain_fleets
from spotfill.localcloud.patches.fleets import ec2_fleet_members
from spotfill.localcloud.patches.spot_fleet import spot_fleet_on_demand

log = logging.getLogger(__name__)


@dataclass
class Machine:
    """An emulated EC2 instance, as the fleet and the ECS agent see it."""

    instance_id: str
    instance_type: str
    fleet_id: str
    launched_at: float
    booted_at: float | None = None  # monotonic seconds it became running
    booted: bool = False
    terminated: bool = False
    interrupted: bool = False
    terminated_at: float | None = None  # epoch seconds the emulator saw it terminated
    lifecycle: str = "spot"  # the purchase option: "spot" or "on-demand" (IMDS instance-life-cycle)


class FleetEmulator:
    """Watches every fleet in the emulator (EC2 Fleet and Spot Fleet): boots its instances after a delay,
    replaces lost ones."""

    def __init__(
        self,
        region: str,
        boot_delay: float,
        on_boot: Callable[[Machine], None],
        on_terminate: Callable[[Machine], None],
        tick: float = 0.25,
        boot_interval: float = 0.0,
    ) -> None:
        self.region = region
        self.boot_delay = boot_delay
        self.boot_interval = boot_interval
        self.on_boot = on_boot
        self.on_terminate = on_terminate
        self.tick = tick
        self.machines: dict[str, Machine] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="localcloud-ec2", daemon=True)

    @property
    def backend(self):  # moto's EC2 models for our account and region
        return ec2_backends[DEFAULT_ACCOUNT_ID][self.region]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def spot_machines(self) -> list[Machine]:
        """Running spot instances: what the spot service can reclaim."""
        return [m for m in self.running_machines() if m.lifecycle == "spot"]

    def running_machines(self) -> list[Machine]:
        with self._lock:
            return [m for m in self.machines.values() if m.booted and not m.terminated]

    def pending_machines(self) -> list[Machine]:
        with self._lock:
            return [m for m in self.machines.values() if not m.booted and not m.terminated]

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.step()
            except Exception:  # the physics must outlive one bad tick (e.g. a fleet deleted mid-read)
                log.exception("EC2 emulator tick failed")

    def step(self) -> None:
        now = time.monotonic()
        booted: list[Machine] = []
        gone: list[Machine] = []
        with self._lock:
            maintain_fleets(self.backend)  # ValidUntil; both APIs kept at their targets
            last_boot: dict[str, float] = {}
            for machine in self.machines.values():
                if machine.booted_at is not None:
                    last_boot[machine.fleet_id] = max(last_boot.get(machine.fleet_id, 0.0), machine.booted_at)
            for fleet in list(self.backend.spot_fleet_requests.values()):
                for request in list(fleet.spot_requests):
                    instance = request.instance
                    if instance is None or instance.id in self.machines:
                        continue
                    self.machines[instance.id] = Machine(instance.id, instance.instance_type, fleet.id, now)
                for instance, _ in spot_fleet_on_demand(fleet):
                    if instance.id not in self.machines:
                        self.machines[instance.id] = Machine(
                            instance.id, instance.instance_type, fleet.id, now, lifecycle="on-demand"
                        )
            for ec2_fleet in list(self.backend.fleets.values()):
                for instance, _, lifecycle in ec2_fleet_members(ec2_fleet):
                    if instance.id not in self.machines:
                        self.machines[instance.id] = Machine(
                            instance.id, instance.instance_type, ec2_fleet.id, now, lifecycle=lifecycle
                        )
            for machine in self.machines.values():
                if machine.terminated:
                    continue
                instance = self._instance(machine.instance_id)
                if instance is None or instance._state.name in ("terminated", "shutting-down", "stopped"):
                    machine.terminated = True
                    machine.terminated_at = time.time()
                    gone.append(machine)
                elif (
                    not machine.booted
                    and now - machine.launched_at >= self.boot_delay
                    and (
                        machine.fleet_id not in last_boot
                        or now - last_boot[machine.fleet_id] >= self.boot_interval
                    )
                ):
                    instance._state.name, instance._state.code = "running", 16
                    machine.booted, machine.booted_at = True, now
                    last_boot[machine.fleet_id] = now
                    booted.append(machine)
        for callback, machines in ((self.on_terminate, gone), (self.on_boot, booted)):
            for machine in machines:
                try:
                    callback(machine)
                except Exception:  # one instance's trouble must not stop the others' boot or shutdown
                    log.exception("%s of %s failed", callback.__name__, machine.instance_id)

    def _instance(self, instance_id: str):
        try:
            return self.backend.get_instance(instance_id)
        except Exception:
            return None

    def interrupt(self, machine: Machine) -> None:
        """The spot service reclaims the instance: terminated with the reason AWS gives."""
        with self._lock:
            instance = self._instance(machine.instance_id)
            if instance is None or instance._state.name == "terminated":
                return
            machine.interrupted = True
            self.backend.terminate_instances([machine.instance_id])
            instance.state_reason = StateReason(
                "Server.SpotInstanceTermination: Spot instance termination", "Server.SpotInstanceTermination"
            )
