"""Load profiles for benchmarks: schedules of (time, device, payload) to publish (pure).

Each profile is a generator of `LoadEvent(at, device_id, payload)` in time order; `payload` is
the MQTT message body of the v1 protocol (one reading, or a `{"readings": [...]}` chunk of a
backlog). A benchmark driver publishes each payload on `{prefix}/devices/{device_id}/readings`
at `at` (shifted to its own clock, or as fast as it can), and measures what the gateway does.

- `steady_state`: readings spread over the day as a Poisson process, the fleet's average rate;
- `morning_peak`: everyone measuring after waking (fasting glucose, morning blood pressure and
  weight) in the members' time zone: most of a day's readings within about three hours;
- `mass_reconnect`: a carrier outage ends and every device flushes the backlog it stored during
  the outage at once (within `reconnect_spread`), in chunks.

Values are plausible (glucose, blood pressure and weight by the device id's `gm-`/`bp-`/`sc-`
prefix) but not modelled member by member: for that, use `simulators.fleet`. Each device's seq
counts from `first_seq`, so a schedule replayed into a fresh database is all new readings.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, NamedTuple
from zoneinfo import ZoneInfo

import orjson

from simulators.errors import SimulationError

#: Most readings the gateway takes in one message (device_gateway MAX_BATCH: 500).
MAX_CHUNK: Final = 500


class LoadEvent(NamedTuple):
    at: datetime
    device_id: str
    payload: bytes
    readings: int  # readings in the payload


class _Devices:
    """Per-device seq counters and plausible values, from one seeded generator."""

    def __init__(self, device_ids: Sequence[str], seed: int, first_seq: int) -> None:
        if not device_ids:
            raise SimulationError("invalid_population", "a load profile needs devices")
        self.ids = list(device_ids)
        self.rng = random.Random(f"{seed}:load")
        self._seq = dict.fromkeys(self.ids, first_seq - 1)

    def reading(self, device_id: str, at: datetime) -> dict[str, Any]:
        self._seq[device_id] += 1
        rng = self.rng
        body: dict[str, Any] = {
            "device_id": device_id,
            "seq": self._seq[device_id],
            "measured_at": at.isoformat(timespec="seconds"),
        }
        if device_id.startswith("bp-"):
            systolic = round(rng.gauss(134, 14))
            body |= {"kind": "blood_pressure", "systolic": systolic,
                     "diastolic": min(systolic - 25, round(rng.gauss(83, 9))),
                     "pulse": round(rng.gauss(72, 9)), "unit": "mmHg"}  # fmt: skip
        elif device_id.startswith("sc-"):
            body |= {"kind": "weight", "value": round(rng.gauss(210, 35), 1), "unit": "lb"}
        else:
            value = min(590, max(40, round(rng.lognormvariate(math.log(150), 0.28))))
            body |= {"kind": "glucose", "value": value, "unit": "mg/dL"}
        return body


def steady_state(
    device_ids: Sequence[str],
    *,
    start: datetime,
    duration: timedelta,
    readings_per_device_per_day: float = 3.0,
    seed: int = 0,
    first_seq: int = 1,
) -> Iterator[LoadEvent]:
    """Poisson arrivals at the fleet's average rate, each from a device picked at random."""
    devices = _Devices(device_ids, seed, first_seq)
    rate = len(device_ids) * readings_per_device_per_day / 86_400.0  # readings per second
    if not rate > 0:
        raise SimulationError("invalid_option", "readings per device per day must be above 0")
    t = 0.0
    limit = duration.total_seconds()
    while True:
        t += devices.rng.expovariate(rate)
        if t >= limit:
            return
        device = devices.ids[devices.rng.randrange(len(devices.ids))]
        at = start + timedelta(seconds=round(t, 3))
        yield LoadEvent(at, device, orjson.dumps(devices.reading(device, at)), 1)


def morning_peak(
    device_ids: Sequence[str],
    *,
    day: date,
    zone: str = "America/Chicago",
    peak_at: time = time(7, 15),
    spread_minutes: float = 50.0,
    readings_per_device: float = 1.5,
    seed: int = 0,
    first_seq: int = 1,
) -> Iterator[LoadEvent]:
    """Each device measures around `peak_at` local time (normal, `spread_minutes` SD, within
    04:30-11:00): 1 or 2 readings (a second one a minute later: the two-reading BP advice)."""
    devices = _Devices(device_ids, seed, first_seq)
    tz = ZoneInfo(zone)
    peak = datetime.combine(day, peak_at, tz)
    earliest = datetime.combine(day, time(4, 30), tz)
    latest = datetime.combine(day, time(11, 0), tz)
    rng = devices.rng
    takes: list[tuple[datetime, str]] = []
    for device in devices.ids:
        at = peak + timedelta(minutes=rng.gauss(0.0, spread_minutes))
        at = min(latest, max(earliest, at)).replace(microsecond=0)
        takes.append((at, device))
        if rng.random() < readings_per_device - 1.0:
            takes.append((at + timedelta(minutes=1), device))
    takes.sort()
    for at, device in takes:
        yield LoadEvent(at.astimezone(UTC), device, orjson.dumps(devices.reading(device, at)), 1)


def mass_reconnect(
    device_ids: Sequence[str],
    *,
    outage_start: datetime,
    outage: timedelta,
    readings_per_device_per_day: float = 3.0,
    reconnect_spread: timedelta = timedelta(seconds=30),
    chunk: int = 100,
    seed: int = 0,
    first_seq: int = 1,
) -> Iterator[LoadEvent]:
    """A carrier outage of `outage` from `outage_start`: every device stores what it measures,
    then all reconnect within `reconnect_spread` after the outage and flush their backlogs in
    `{"readings": [...]}` chunks of at most `chunk` (one message after another)."""
    if not 1 <= chunk <= MAX_CHUNK:
        raise SimulationError("invalid_option", f"chunk must be within 1-{MAX_CHUNK}")
    devices = _Devices(device_ids, seed, first_seq)
    rng = devices.rng
    per_second = readings_per_device_per_day / 86_400.0
    end = outage_start + outage
    flushes: list[tuple[datetime, str, list[dict[str, Any]]]] = []
    for device in devices.ids:
        backlog: list[dict[str, Any]] = []
        t = rng.expovariate(per_second) if per_second > 0 else math.inf
        while t < outage.total_seconds():
            backlog.append(devices.reading(device, outage_start + timedelta(seconds=round(t))))
            t += rng.expovariate(per_second)
        back = end + timedelta(seconds=rng.uniform(0.0, reconnect_spread.total_seconds()))
        if backlog:
            flushes.append((back, device, backlog))
    events = []
    for back, device, backlog in flushes:
        for k in range(0, len(backlog), chunk):
            part = backlog[k : k + chunk]
            at = back + timedelta(milliseconds=20 * (k // chunk))
            events.append(LoadEvent(at, device, orjson.dumps({"readings": part}), len(part)))
    yield from sorted(events)
