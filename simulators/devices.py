"""How simulated devices misbehave (pure): clocks that drift or reset, outages, duplicates.

A `DevicePlan` is everything the fleet decides about one device before the run: its clock, its
connectivity outages, how often the network duplicates its messages, and its credentials. The
clock changes what the device *reports* (`measured_at`), so it shows in dry-run files too;
outages and duplicates are transport behaviour, played by `simulators.meter.VirtualMeter`.

Cellular meters keep time with a quartz RTC (tens of ppm) synchronised now and then; a meter
whose battery was changed starts again at its epoch, 2000-01-01 00:00 UTC, without a time zone.
Vigil's clock rule (docs/architecture.md) must notice both.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

from simulators.profiles import SimDevice

#: Where a reset meter clock starts counting.
CLOCK_RESET_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DeviceClock:
    """A device clock: right at `anchor` but for `offset_s`, gaining `drift_ppm`, and reset to
    2000-01-01 at `reset_at` (true time), after which it counts from there in UTC."""

    anchor: datetime = CLOCK_RESET_EPOCH
    offset_s: float = 0.0
    drift_ppm: float = 0.0
    reset_at: datetime | None = None

    def read(self, true_time: datetime, zone: tzinfo) -> datetime:
        """What the device stamps on a measurement taken at `true_time` (aware)."""
        if self.reset_at is not None and true_time >= self.reset_at:
            return CLOCK_RESET_EPOCH + timedelta(seconds=int((true_time - self.reset_at)
                                                              .total_seconds()))  # fmt: skip
        if not (self.offset_s or self.drift_ppm):
            return true_time.astimezone(zone)
        skew = self.offset_s + self.drift_ppm * 1e-6 * (true_time - self.anchor).total_seconds()
        return (true_time + timedelta(seconds=round(skew))).astimezone(zone)

    def drifted(self, ppm: float) -> DeviceClock:
        return DeviceClock(self.anchor, self.offset_s, ppm, self.reset_at)

    def reset(self, at: datetime) -> DeviceClock:
        return DeviceClock(self.anchor, self.offset_s, self.drift_ppm, at)


@dataclass(frozen=True, slots=True)
class DevicePlan:
    device_id: str
    username: str
    password: str
    clock: DeviceClock = field(default_factory=DeviceClock)
    outages: tuple[tuple[datetime, datetime], ...] = ()  # [from, until) true time
    duplicate_rate: float = 0.0  # P(a message is delivered twice)

    def offline_at(self, at: datetime) -> bool:
        return any(start <= at < end for start, end in self.outages)


@dataclass(frozen=True, slots=True)
class FaultShares:
    """Which share of the fleet misbehaves, and how."""

    offline: float = 0.0  # devices losing connectivity once during the run
    outage_hours: tuple[float, float] = (2.0, 36.0)
    clock_drift: float = 0.0  # devices with a drifting clock (50-400 ppm, either way)
    clock_reset: float = 0.0  # devices whose clock resets to 2000-01-01 during the run
    duplicate_rate: float = 0.0  # P(each message is duplicated), every device


def simulated_password(seed: int, device_id: str) -> str:
    """A per-device password derived from the seed (simulated credentials, not secrets)."""
    return hashlib.sha256(f"vigil-sim:{seed}:{device_id}".encode()).hexdigest()[:24]


def plan_devices(
    devices: Sequence[SimDevice],
    *,
    seed: int,
    start: datetime,
    end: datetime,
    faults: FaultShares,
) -> dict[str, DevicePlan]:
    """One plan per device. Exactly round(share x devices) devices get each fault, chosen by a
    seeded key per device, so "10% offline" means 10% in a small fleet too."""
    span = (end - start).total_seconds()
    draws = {d.id: random.Random(f"{seed}:device-plan:{d.id}") for d in devices}
    keys = {d.id: [draws[d.id].random() for _ in range(3)] for d in devices}

    def chosen(share: float, k: int) -> set[str]:
        n = round(share * len(devices))
        return {d.id for d in sorted(devices, key=lambda d: (keys[d.id][k], d.id))[:n]}

    offline, drifting, resetting = (
        chosen(faults.offline, 0), chosen(faults.clock_drift, 1), chosen(faults.clock_reset, 2)
    )  # fmt: skip
    plans: dict[str, DevicePlan] = {}
    for d in devices:
        rng = draws[d.id]
        hours = rng.uniform(*faults.outage_hours)
        outage_at = rng.uniform(0.0, max(0.0, span - hours * 3600.0))
        ppm = rng.choice((-1, 1)) * rng.uniform(50.0, 400.0)
        offset = rng.uniform(-90.0, 90.0)
        reset_after = rng.uniform(0.2, 0.8) * span
        outages: tuple[tuple[datetime, datetime], ...] = ()
        if d.id in offline:
            begin = start + timedelta(seconds=round(outage_at))
            outages = ((begin, min(end, begin + timedelta(hours=hours))),)
        clock = DeviceClock(anchor=start)
        if d.id in drifting:
            clock = DeviceClock(start, offset, ppm)
        if d.id in resetting:
            clock = clock.reset(start + timedelta(seconds=round(reset_after)))
        plans[d.id] = DevicePlan(
            device_id=d.id, username=d.id, password=simulated_password(seed, d.id),
            clock=clock, outages=outages, duplicate_rate=faults.duplicate_rate,
        )  # fmt: skip
    return plans
