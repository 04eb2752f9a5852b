"""The simulation engine (pure): a population's readings and device events, in time order.

`FleetSimulation(config, scenario)` builds the members (`simulators.profiles`), their devices'
plans (`simulators.devices`) and, lazily, the stream of what happens:

- `readings()`: every reading the devices take, ordered by true time, each with its device's
  next sequence number and its device clock's `measured_at`, as the JSON object of
  docs/readings.md (the reading-file line and the MQTT payload);
- `timeline()`: the same readings interleaved with device events (going offline, coming back);
- `write_jsonl(out)`: the readings as a reading file, for `vigil ingest` and dry runs.

The same config and scenario always give the same bytes: every random draw comes from a
generator seeded by (seed, purpose, member or device), never from the clock or a global state.
Nothing here does I/O beyond the stream it is handed; `simulators.runner` publishes over MQTT.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import IO, Any, Final
from zoneinfo import ZoneInfo

import orjson

from simulators.devices import DevicePlan, FaultShares, plan_devices
from simulators.errors import ScenarioError, SimulationError
from simulators.member import Kind, Label, Measurement, MemberLife
from simulators.population import DEMO_SEED
from simulators.profiles import (
    DEFAULT_MIX,
    DEFAULT_RISK,
    SimDevice,
    SimMember,
    build_members,
    onboarding_document,
)
from simulators.scenario import Scenario

DEFAULT_SEED: Final = DEMO_SEED
MAX_DAYS: Final = 3660


@dataclass(frozen=True, slots=True)
class FleetConfig:
    members: int
    days: float
    start: datetime  # aware
    seed: int = DEFAULT_SEED
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    risk: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RISK))
    faults: FaultShares = field(default_factory=FaultShares)
    id_prefix: str = ""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise SimulationError("invalid_option", "the start time needs a UTC offset")
        if not 0 < self.days <= MAX_DAYS:
            raise SimulationError("invalid_population", f"days must be within 0-{MAX_DAYS}")
        f = self.faults
        for name, share in (("offline share", f.offline), ("clock drift share", f.clock_drift),
                            ("clock reset share", f.clock_reset),
                            ("duplicate rate", f.duplicate_rate)):  # fmt: skip
            if not 0.0 <= share <= 1.0:
                raise SimulationError("invalid_option", f"{name} must be within 0-1, not {share}")
        low, high = f.outage_hours
        if not 0 < low <= high:
            raise SimulationError("invalid_option", "outage hours must be 0 < MIN <= MAX")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True, slots=True)
class SimReading:
    at: datetime  # true time (UTC)
    device_id: str
    member_id: str
    seq: int
    kind: Kind
    body: dict[str, Any]  # the reading object of docs/readings.md
    label: Label

    def line(self) -> bytes:
        """The reading as one compact JSON line (without the newline)."""
        return orjson.dumps(self.body)


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    at: datetime
    device_id: str
    online: bool  # False: connectivity lost; True: back (and flushing its backlog)


class FleetSimulation:
    def __init__(self, config: FleetConfig, scenario: Scenario | None = None) -> None:
        self.config = config
        self.scenario = scenario or Scenario()
        self.members: tuple[SimMember, ...] = build_members(
            config.members, seed=config.seed, mix=config.mix, risk=config.risk,
            id_prefix=config.id_prefix,
        )  # fmt: skip
        self.devices: dict[str, SimDevice] = {d.id: d for m in self.members for d in m.devices}
        self.plans: dict[str, DevicePlan] = plan_devices(
            list(self.devices.values()), seed=config.seed, start=config.start, end=config.end,
            faults=config.faults,
        )  # fmt: skip
        self._by_member = {m.id: m for m in self.members}
        self._scripted = self._resolve_readings()
        self._apply_faults()

    @property
    def start(self) -> datetime:
        return self.config.start

    @property
    def end(self) -> datetime:
        return self.config.end

    # --- scenario -----------------------------------------------------------------------------

    def _resolve_readings(self) -> dict[str, list[Measurement]]:
        scripted: dict[str, list[Measurement]] = {}
        for r in self.scenario.readings:
            member = self._by_member.get(r.member)
            if member is None:
                raise ScenarioError(
                    "unknown_member",
                    r.where,
                    f"member {r.member} is not in the simulated population",
                )
            kind_device = {"glucose": "glucose_meter", "blood_pressure": "bp_monitor",
                           "weight": "scale"}[r.kind]  # fmt: skip
            device = (
                next((d for d in member.devices if d.id == r.device), None)
                if r.device is not None
                else member.device_of(kind_device)
            )
            if device is None or device.kind != kind_device:
                raise ScenarioError("unknown_device", r.where,
                                    f"member {r.member} has no {kind_device}"
                                    + (f" {r.device}" if r.device else ""))  # fmt: skip
            at = r.when.resolve(ZoneInfo(member.zone), self.start).replace(microsecond=0)
            self._inside(at, r.where)
            scripted.setdefault(member.id, []).append(
                Measurement(at, device.id, r.kind, r.fields, "scripted")
            )
        return scripted

    def _apply_faults(self) -> None:
        for f in self.scenario.faults:
            device = self.devices.get(f.device)
            if device is None:
                raise ScenarioError(
                    "unknown_device",
                    f.where,
                    f"device {f.device} is not in the simulated population",
                )
            plan = self.plans[f.device]
            at = self.start
            if f.when is not None:
                at = f.when.resolve(ZoneInfo(device.zone), self.start).replace(microsecond=0)
                self._inside(at, f.where)
            if f.action == "offline":
                until = min(self.end, at + timedelta(hours=f.amount))
                plan = replace(plan, outages=_merged((*plan.outages, (at, until))))
            elif f.action == "clock_reset":
                plan = replace(plan, clock=plan.clock.reset(at))
            elif f.action == "clock_drift":
                plan = replace(plan, clock=plan.clock.drifted(f.amount))
            else:
                plan = replace(plan, duplicate_rate=f.amount)
            self.plans[f.device] = plan

    def _inside(self, at: datetime, where: str) -> None:
        if not self.start <= at < self.end:
            span = f"{self.start.isoformat()} .. {self.end.isoformat()}"
            raise ScenarioError("outside_run", where,
                                f"{at.isoformat()} is outside the run ({span})")  # fmt: skip

    # --- streams ------------------------------------------------------------------------------

    def readings(self) -> Iterator[SimReading]:
        lives = [
            MemberLife(m, seed=self.config.seed, start=self.start, end=self.end,
                       scripted=self._scripted.get(m.id, ()),
                       background=self.scenario.background)
            for m in self.members
        ]  # fmt: skip
        # Members are merged by (time, member order): a deterministic total order.
        streams = [_numbered(i, life) for i, life in enumerate(lives)]
        seqs: dict[str, int] = {}
        zones = {d.id: ZoneInfo(d.zone) for d in self.devices.values()}
        for _, _, _, x in heapq.merge(*streams):
            seq = seqs.get(x.device_id, 0) + 1
            seqs[x.device_id] = seq
            device = self.devices[x.device_id]
            stamped = self.plans[x.device_id].clock.read(x.at, zones[x.device_id])
            body: dict[str, Any] = {
                "device_id": x.device_id,
                "seq": seq,
                "kind": x.kind,
                "measured_at": stamped.isoformat(timespec="seconds"),
                **dict(x.fields),
            }
            yield SimReading(x.at, x.device_id, device.member_id, seq, x.kind, body, x.label)

    def device_events(self) -> list[DeviceEvent]:
        events = [
            DeviceEvent(at, device_id, online)
            for device_id, plan in self.plans.items()
            for start, end in plan.outages
            for at, online in ((start, False), (end, True))
        ]
        return sorted(events, key=lambda e: (e.at, e.online, e.device_id))

    def timeline(self) -> Iterator[SimReading | DeviceEvent]:
        """Readings and device events in time order (an event before a reading at the same
        instant, so a reading taken as the connection drops waits for the reconnection)."""
        events: Iterator[tuple[datetime, int, SimReading | DeviceEvent]] = (
            (e.at, 0, e) for e in self.device_events()
        )
        readings: Iterator[tuple[datetime, int, SimReading | DeviceEvent]] = (
            (r.at, 1, r) for r in self.readings()
        )
        for _, _, item in heapq.merge(events, readings, key=lambda t: (t[0], t[1])):
            yield item

    def write_jsonl(self, out: IO[bytes]) -> int:
        """Every reading as a reading-file line (docs/readings.md); returns how many."""
        n = 0
        for r in self.readings():
            out.write(r.line() + b"\n")
            n += 1
        return n

    def onboarding(self) -> dict[str, Any]:
        """The onboarding file of this population (docs/onboarding.md), ready for yaml.safe_dump."""
        return onboarding_document(
            self.members, first_day=self.start.date(), last_day=self.end.date()
        )

    def credentials(self) -> dict[str, tuple[str, str]]:
        return {d: (p.username, p.password) for d, p in self.plans.items()}


def _numbered(member: int, life: MemberLife) -> Iterator[tuple[datetime, int, int, Measurement]]:
    """(time, member, n, measurement): a total order heapq.merge can compare without a key."""
    for n, x in enumerate(life):
        yield x.at, member, n, x


def _merged(
    windows: tuple[tuple[datetime, datetime], ...],
) -> tuple[tuple[datetime, datetime], ...]:
    """Overlapping outage windows as one (a device is offline or not)."""
    out: list[tuple[datetime, datetime]] = []
    for start, end in sorted(windows):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return tuple(out)
