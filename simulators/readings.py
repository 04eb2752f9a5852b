"""Seeded reading payloads from a simulated population's devices.

`ReadingSimulator(population).take(now, n)` returns `n` readings as the bytes a device sends (the
reading-file / MQTT JSON format of docs/readings.md): glucose in mg/dL with a meal tag, blood
pressure in mmHg with pulse, weight in lb. Each device's `seq` increases by one per reading, from
`start_seq` (what the device sent last) onwards. `measured_at` is `now` in the member's zone, with
its UTC offset, as a meter with a set clock reports it.

Values are plausible for each member's baseline; a small share is dangerous on purpose so the
alerting side has something to show:
- glucose below 54 mg/dL: level 2 hypoglycemia (ADA Standards of Care 2025, section 6);
- blood pressure above 180/120 mmHg: severe hypertension (AHA/ACC 2025 high blood pressure
  guideline).
The same seed, population, start_seq and sequence of `now`s give the same bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from simulators.population import DEMO_SEED, PopulationError

Hazard = Literal["glucose_below_54", "bp_above_180_120"]

#: Level 2 hypoglycemia, mg/dL (ADA Standards of Care 2025, section 6).
GLUCOSE_LEVEL_2_HYPO_MGDL: Final = 54
#: Severe hypertension, mmHg systolic / diastolic (AHA/ACC 2025).
SEVERE_SYSTOLIC_MMHG: Final = 180
SEVERE_DIASTOLIC_MMHG: Final = 120

#: How often each kind of device is used, relative to each other: meters several times a day,
#: cuffs morning and evening, scales once.
_USE_WEIGHT: Final[dict[str, int]] = {"glucose_meter": 3, "bp_monitor": 2, "scale": 1}
_MEALS: Final = ("fasting", "before_meal", "after_meal", "after_meal", "bedtime")
_MEAL_OFFSET_MGDL: Final[dict[str, float]] = {
    "fasting": -15.0, "before_meal": 0.0, "after_meal": 40.0, "bedtime": 10.0,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SimulatedReading:
    payload: bytes
    device_id: str
    seq: int
    kind: str  # glucose | blood_pressure | weight
    hazard: Hazard | None = None


@dataclass(slots=True)
class _Device:
    device_id: str
    kind: str  # the device kind: glucose_meter | bp_monitor | scale
    member_id: str
    zone: ZoneInfo
    baseline: tuple[float, ...]
    seq: int
    rng: random.Random = field(repr=False)


class ReadingSimulator:
    """Readings from every device of a population (see `simulators.population`)."""

    def __init__(
        self,
        population: Mapping[str, Any],
        *,
        seed: int = DEMO_SEED,
        start_seq: Mapping[str, int] | None = None,
        danger_rate: float = 0.04,
    ) -> None:
        if not 0.0 <= danger_rate <= 1.0:
            raise PopulationError(f"danger_rate must be within 0..1, not {danger_rate}")
        start_seq = start_seq or {}
        zones = {c["id"]: c["timezone"] for c in population.get("clients", [])}
        conditions: dict[str, set[str]] = {}
        self._devices: list[_Device] = []
        for member in population.get("members", []):
            zone = ZoneInfo(member.get("timezone") or zones[member["client"]])
            conditions[member["id"]] = set(member.get("care_plan", {}).get("conditions", []))
            for device in member.get("devices", []):
                kind = device["kind"]
                if kind not in _USE_WEIGHT:
                    continue  # CGMs stream through their vendor, not as single readings
                rng = random.Random(f"{seed}:device:{device['id']}")
                self._devices.append(
                    _Device(
                        device_id=device["id"], kind=kind, member_id=member["id"], zone=zone,
                        baseline=_baseline(kind, conditions[member["id"]], rng),
                        seq=start_seq.get(device["id"], 0), rng=rng,
                    )
                )  # fmt: skip
        if not self._devices:
            raise PopulationError("the population has no glucose meter, cuff or scale")
        self._weights = [_USE_WEIGHT[d.kind] for d in self._devices]
        self._rng = random.Random(f"{seed}:stream")
        self._danger_rate = danger_rate

    @property
    def device_ids(self) -> list[str]:
        return [d.device_id for d in self._devices]

    def take(self, now: datetime, count: int) -> list[SimulatedReading]:
        """`count` readings measured at `now` (an aware datetime), from devices picked at random
        (weighted by how often each kind is used)."""
        if now.tzinfo is None:
            raise PopulationError("`now` must be an aware datetime")
        picked: Sequence[_Device] = self._rng.choices(self._devices, self._weights, k=count)
        return [self._reading(device, now) for device in picked]

    def _reading(self, device: _Device, now: datetime) -> SimulatedReading:
        device.seq += 1
        danger = self._rng.random() < self._danger_rate
        rng = device.rng
        body: dict[str, Any] = {
            "device_id": device.device_id,
            "seq": device.seq,
            "kind": "",
            "measured_at": now.astimezone(device.zone).isoformat(timespec="seconds"),
        }
        hazard: Hazard | None = None
        if device.kind == "glucose_meter":
            meal = rng.choice(_MEALS)
            if danger:
                value = rng.randint(38, GLUCOSE_LEVEL_2_HYPO_MGDL - 1)
                hazard = "glucose_below_54"
            else:
                mean, sd = device.baseline
                value = round(_clamp(rng.gauss(mean + _MEAL_OFFSET_MGDL[meal], sd), 60, 420))
            body |= {"kind": "glucose", "value": value, "unit": "mg/dL", "meal": meal}
        elif device.kind == "bp_monitor":
            mean_sys, mean_dia, mean_pulse = device.baseline
            if danger:
                systolic = rng.randint(SEVERE_SYSTOLIC_MMHG + 2, 212)
                diastolic = rng.randint(SEVERE_DIASTOLIC_MMHG + 1, 132)
                hazard = "bp_above_180_120"
            else:
                systolic = round(_clamp(rng.gauss(mean_sys, 9), 92, 176))
                diastolic = round(_clamp(rng.gauss(mean_dia, 6), 54, min(112, systolic - 25)))
            pulse = round(_clamp(rng.gauss(mean_pulse, 6), 45, 130))
            body |= {"kind": "blood_pressure", "systolic": systolic, "diastolic": diastolic,
                     "pulse": pulse, "unit": "mmHg"}  # fmt: skip
        else:
            (mean_lb,) = device.baseline
            body |= {"kind": "weight", "value": round(rng.gauss(mean_lb, 0.8), 1), "unit": "lb"}
        payload = json.dumps(body, separators=(",", ":")).encode()
        return SimulatedReading(payload, device.device_id, device.seq, body["kind"], hazard)


def _baseline(kind: str, conditions: set[str], rng: random.Random) -> tuple[float, ...]:
    if kind == "glucose_meter":
        if "type_1_diabetes" in conditions:
            return (rng.uniform(130, 170), 45.0)  # wider swings on insulin
        return (rng.uniform(105, 165), 25.0)
    if kind == "bp_monitor":
        return (rng.uniform(118, 152), rng.uniform(72, 94), rng.uniform(58, 86))
    low, high = (150.0, 260.0) if "heart_failure" in conditions else (140.0, 290.0)
    return (rng.uniform(low, high),)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))
