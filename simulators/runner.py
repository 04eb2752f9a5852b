"""Publishing a simulation over MQTT: one `VirtualMeter` per device, paced by simulated time.

`publish_fleet(sim, broker, speed=X)` plays `sim.timeline()`: simulated time runs X times faster
than real time (`speed=None`: as fast as the broker and the gateway take it, with the readings
in flight bounded by `max_in_flight`). Each reading is recorded by its device's meter, which
publishes it, resends it until acked, and holds it while the device is offline; a device coming
back flushes its backlog in `{"readings": [...]}` chunks. At the end every device is online and
the run waits (up to `drain_timeout` seconds) until every reading is acked.

Progress snapshots go to `on_progress` every `progress_every` seconds; nothing here prints.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from simulators.errors import SimulationError
from simulators.fleet import DeviceEvent, FleetSimulation
from simulators.meter import VirtualMeter


@dataclass(frozen=True, slots=True)
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "vigil/v1"
    #: device id -> (username, password); None: anonymous devices.
    credentials: Mapping[str, tuple[str, str]] | None = None


@dataclass(slots=True)
class FleetProgress:
    sim_time: datetime
    elapsed: float = 0.0
    members: int = 0
    members_online: int = 0
    devices: int = 0
    devices_online: int = 0
    generated: int = 0  # readings the devices took so far
    published: int = 0
    resent: int = 0
    duplicated: int = 0
    bursts: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    backlog: int = 0  # readings held by devices, not yet acked
    finished: bool = False


@dataclass(frozen=True, slots=True)
class FleetReport:
    progress: FleetProgress
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    devices_fully_acked: int = 0
    devices_with_bursts: int = 0
    stopped_early: bool = False

    @property
    def all_acked(self) -> bool:
        return self.progress.backlog == 0 and not self.stopped_early


async def publish_fleet(
    sim: FleetSimulation,
    broker: Broker,
    *,
    speed: float | None,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[FleetProgress], None] | None = None,
    progress_every: float = 0.5,
    resend_after: float = 5.0,
    burst_batch: int = 100,
    max_in_flight: int = 5_000,
    drain_timeout: float = 120.0,
) -> FleetReport:
    if speed is not None and not speed > 0:
        raise SimulationError("invalid_option", "speed must be above 0 (or None: at once)")
    creds = broker.credentials or {}
    meters = {
        device_id: VirtualMeter(
            device_id, host=broker.host, port=broker.port,
            username=creds[device_id][0] if device_id in creds else None,
            password=creds[device_id][1] if device_id in creds else None,
            prefix=broker.prefix, resend_after=resend_after, batch=1, burst_batch=burst_batch,
            duplicate_rate=plan.duplicate_rate, seed=sim.config.seed,
        )
        for device_id, plan in sim.plans.items()
    }  # fmt: skip
    run = _Run(sim, meters, stop or asyncio.Event(), on_progress)
    meters_stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        for device_id, meter in meters.items():
            tg.create_task(meter.run(meters_stop), name=f"meter {device_id}")
        reporter = tg.create_task(run.report(progress_every), name="fleet progress")
        try:
            await run.feed(speed, max_in_flight)
            await run.drain(drain_timeout)
        finally:
            meters_stop.set()
            reporter.cancel()
    return run.result()


class _Run:
    def __init__(
        self,
        sim: FleetSimulation,
        meters: dict[str, VirtualMeter],
        stop: asyncio.Event,
        on_progress: Callable[[FleetProgress], None] | None,
    ) -> None:
        self.sim, self.meters, self.stop, self.on_progress = sim, meters, stop, on_progress
        self.recorded: Counter[str] = Counter()
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.progress = FleetProgress(sim_time=sim.start, members=len(sim.members),
                                      devices=len(meters))  # fmt: skip
        self._member_meters = [[meters[d.id] for d in m.devices] for m in sim.members]
        self._backlog_clear = asyncio.Event()

    def snapshot(self, *, finished: bool = False) -> FleetProgress:
        p = self.progress
        p.elapsed = self.loop.time() - self.started
        p.devices_online = sum(m.online for m in self.meters.values())
        p.members_online = sum(all(m.online for m in ms) for ms in self._member_meters)
        p.generated = sum(self.recorded.values())
        totals = Counter[str]()
        for m in self.meters.values():
            s = m.stats
            totals.update(published=s.published, resent=s.resent, duplicated=s.duplicated,
                          bursts=s.bursts, accepted=s.accepted, duplicate=s.duplicate,
                          rejected=s.rejected, backlog=m.backlog)  # fmt: skip
        for name in ("published", "resent", "duplicated", "bursts", "accepted", "duplicate",
                     "rejected", "backlog"):  # fmt: skip
            setattr(p, name, totals[name])
        p.finished = finished
        return p

    async def report(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if self.on_progress is not None:
                self.on_progress(self.snapshot())

    def in_flight(self) -> int:
        """Readings online devices hold unacked (an offline device's wait for its outage)."""
        return sum(m.backlog for m in self.meters.values() if m.online)

    async def _below(self, limit: int) -> None:
        """Wait until the readings in flight are at most `limit` (or the run is stopped)."""
        while self.in_flight() > limit and not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.05)

    async def feed(self, speed: float | None, max_in_flight: int) -> None:
        sim, loop = self.sim, self.loop
        for n, item in enumerate(sim.timeline()):
            if self.stop.is_set():
                return
            if speed is not None:
                due = self.started + (item.at - sim.start).total_seconds() / speed
                if due > loop.time():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), due - loop.time())
                    if self.stop.is_set():
                        return
            elif n % 256 == 0:
                await asyncio.sleep(0)  # let the meters run
                await self._below(max_in_flight)
            self.progress.sim_time = item.at
            meter = self.meters[item.device_id]
            if isinstance(item, DeviceEvent):
                if item.online:
                    meter.go_online()
                else:
                    meter.go_offline()
            else:
                meter.record([item.body])
                self.recorded[item.device_id] += 1
        self.progress.sim_time = sim.end

    async def drain(self, within: float) -> None:
        for m in self.meters.values():
            if not m.online:
                m.go_online()  # an outage that outlasts the run ends with it
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._below(0)

    def result(self) -> FleetReport:
        final = self.snapshot(finished=True)
        if self.on_progress is not None:
            self.on_progress(final)
        meters = self.meters
        reasons: Counter[str] = Counter(
            verdict.split(":", 1)[1]
            for m in meters.values()
            for verdict in m.acked.values()
            if verdict.startswith("rejected:")
        )
        return FleetReport(
            progress=final,
            rejected_reasons=dict(sorted(reasons.items())),
            devices_fully_acked=sum(
                1 for d, m in meters.items() if m.backlog == 0 and len(m.acked) == self.recorded[d]
            ),
            devices_with_bursts=sum(1 for m in meters.values() if m.stats.bursts),
            stopped_early=self.stop.is_set(),
        )
