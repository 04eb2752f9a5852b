"""A simulated member's days: when they measure, and what their devices show (pure).

`MemberLife(member, seed, start, end)` yields the member's measurements in time order: true time
(UTC), device, kind and the reading's value fields. Sequence numbers and device time stamps are
added by the fleet (`simulators.fleet`), which knows each device's counter and clock.

Testing plans follow common RPM instructions: glucose fasting on waking, two hours after a meal,
and at bedtime (ADA 2025 section 7); blood pressure in the morning before medication and in the
evening, two readings a minute apart for those who follow the advice (AHA 2017 home monitoring);
weight every morning after waking (heart-failure self-care, AAHFN).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal, TypeAlias
from zoneinfo import ZoneInfo

from simulators.errors import SimulationError
from simulators.physiology import (
    METER_HIGH_MGDL,
    METER_LOW_MGDL,
    RECHECK_AFTER_MIN,
    Adherence,
    BloodPressureModel,
    DailyRoutine,
    GlucoseModel,
    WeightModel,
)
from simulators.profiles import SimDevice, SimMember

Kind = Literal["glucose", "blood_pressure", "weight"]
#: Why a measurement was taken (not part of the reading; used by tests and summaries).
Label = Literal["planned", "hypo_check", "recheck", "housemate", "scripted"]
#: Minutes after the day's local midnight -> the UTC instant.
_At: TypeAlias = Callable[[float], datetime]


@dataclass(frozen=True, slots=True)
class Measurement:
    at: datetime  # true time, UTC, whole seconds
    device_id: str
    kind: Kind
    fields: tuple[tuple[str, Any], ...]  # reading fields after measured_at, in order
    label: Label = "planned"


class MemberLife:
    """The member's measurements over [start, end), merged with scripted ones, in time order."""

    def __init__(
        self,
        member: SimMember,
        *,
        seed: int,
        start: datetime,
        end: datetime,
        scripted: Iterable[Measurement] = (),
        background: bool = True,
    ) -> None:
        self.member = member
        self._seed, self._start, self._end = seed, start, end
        self._scripted = sorted(scripted, key=lambda m: m.at)
        self._background = background
        # Each model comes with its device (profiles.py gives a member the devices of its
        # profile and the models of those devices); a missing one is a bug, caught here.
        self._meter = _device(member, "glucose_meter", member.glucose is not None)
        self._cuff = _device(member, "bp_monitor", member.blood_pressure is not None)
        self._scale = _device(member, "scale", member.weight is not None)

    def __iter__(self) -> Iterator[Measurement]:
        if not self._scripted:
            return self._days() if self._background else iter(())
        if not self._background:
            return iter(self._scripted)
        return heapq.merge(self._days(), self._scripted, key=lambda m: m.at)

    def _days(self) -> Iterator[Measurement]:
        m, seed = self.member, self._seed

        def stream(purpose: str) -> random.Random:
            return random.Random(f"{seed}:{purpose}:{m.index}")

        zone = ZoneInfo(m.zone)
        routine_rng, plan_rng = stream("routine"), stream("plan")
        adherence = Adherence(m.adherence, stream("adherence"))
        glucose = GlucoseModel(m.glucose, stream("glucose")) if m.glucose else None
        pressure = BloodPressureModel(m.blood_pressure, stream("bp")) if m.blood_pressure else None
        weight = WeightModel(m.weight, stream("weight")) if m.weight else None
        first = self._start.astimezone(zone).date()
        last = self._end.astimezone(zone).date()
        for day_index in range((last - first).days + 1):
            day = first + timedelta(days=day_index)
            midnight = datetime.combine(day, time(), zone)

            def at(minute: float, midnight: datetime = midnight) -> datetime:
                local = midnight + timedelta(seconds=round(minute * 60.0))
                return local.astimezone(UTC)

            routine = DailyRoutine.draw(m.habits, day.weekday(), routine_rng)
            keep = adherence.day(day_index)
            today: list[Measurement] = []
            if glucose is not None:
                today += self._glucose(glucose, day_index, routine, keep, plan_rng, at)
            if pressure is not None:
                today += self._pressure(pressure, day_index, routine, keep, plan_rng, at)
            if weight is not None:
                today += self._weight(weight, day_index, day.weekday(), routine, keep, plan_rng,
                                      at)  # fmt: skip
            today.sort(key=lambda x: (x.at, x.device_id))
            yield from (x for x in today if self._start <= x.at < self._end)

    def _glucose(
        self,
        model: GlucoseModel,
        day_index: int,
        routine: DailyRoutine,
        keep: float,
        rng: random.Random,
        at: _At,
    ) -> list[Measurement]:
        device = self._meter
        state = model.day(day_index, routine)
        after_meal = routine.lunch_min if day_index % 2 else routine.dinner_min
        slots = {  # (minute, meal tag, P(done | the member keeps the plan today))
            "fasting": (routine.wake_min + 5, "fasting", 1.0),
            "after_meal": (after_meal + 120, "after_meal", 0.85),
            "bedtime": (routine.bed_min - 15, "bedtime", 0.85),
            "before_lunch": (routine.lunch_min - 10, "before_meal", 0.9),
            "before_dinner": (routine.dinner_min - 10, "before_meal", 0.9),
        }
        plan = {
            1: ("fasting",),
            2: ("fasting", "after_meal"),
            3: ("fasting", "after_meal", "bedtime"),
            4: ("fasting", "before_lunch", "before_dinner", "bedtime"),
        }[self.member.glucose_tests_per_day]
        out: list[Measurement] = []
        for name in plan:
            minute, meal, likelihood = slots[name]
            minute += rng.gauss(0, 8)
            if rng.random() < keep * likelihood:
                value = model.measure(state.level(minute))
                out.append(Measurement(at(minute), device.id, "glucose",
                                       _glucose_fields(value, meal)))  # fmt: skip
        hypo = state.hypo
        check = rng.random()
        if hypo is not None and hypo.felt and check < (0.85 if keep > 0.3 else 0.5):
            # Symptoms: check, take 15 g of fast carbohydrate, recheck after 15 minutes.
            nadir = model.measure(hypo.nadir_mgdl)
            recheck = model.measure(hypo.nadir_mgdl + hypo.recovery_mgdl)
            out.append(
                Measurement(
                    at(hypo.at_min),
                    device.id,
                    "glucose",
                    _glucose_fields(nadir, "other"),
                    "hypo_check",
                )
            )
            out.append(Measurement(at(hypo.at_min + RECHECK_AFTER_MIN), device.id, "glucose",
                                   _glucose_fields(recheck, "other"), "recheck"))  # fmt: skip
        return out

    def _pressure(
        self,
        model: BloodPressureModel,
        day_index: int,
        routine: DailyRoutine,
        keep: float,
        rng: random.Random,
        at: _At,
    ) -> list[Measurement]:
        device = self._cuff
        state = model.day(day_index)
        two = model.params.two_readings
        out: list[Measurement] = []
        sessions = (
            (True, routine.wake_min + rng.uniform(10, 40), 1.0),
            (False, routine.bed_min - rng.uniform(30, 90), 0.85),
        )
        for morning, minute, likelihood in sessions:
            if rng.random() >= keep * likelihood:
                continue
            for k in range(2 if two else 1):
                v = model.measure(state, morning=morning, first_of_session=two and k == 0)
                fields: list[tuple[str, Any]] = [
                    ("systolic", v.systolic), ("diastolic", v.diastolic), ("pulse", v.pulse),
                    ("unit", "mmHg"),
                ]  # fmt: skip
                if v.flags:
                    fields.append(("flags", list(v.flags)))
                out.append(Measurement(at(minute + k), device.id, "blood_pressure",
                                       tuple(fields)))  # fmt: skip
        return out

    def _weight(
        self,
        model: WeightModel,
        day_index: int,
        weekday: int,
        routine: DailyRoutine,
        keep: float,
        rng: random.Random,
        at: _At,
    ) -> list[Measurement]:
        device = self._scale
        state = model.day(day_index, weekday)
        minute = routine.wake_min + rng.uniform(5, 25)
        housemate_minute = rng.uniform(6 * 60, 22 * 60)
        out: list[Measurement] = []
        if rng.random() < keep:
            out.append(Measurement(at(minute), device.id, "weight",
                                   _weight_fields(model.measure(state.weight_lb))))  # fmt: skip
        if state.housemate_lb is not None:
            out.append(Measurement(at(housemate_minute), device.id, "weight",
                                   _weight_fields(model.measure(state.housemate_lb)),
                                   "housemate"))  # fmt: skip
        return out


def _device(member: SimMember, kind: str, needed: bool) -> SimDevice:
    device = member.device_of(kind)
    if device is None:
        if needed:
            raise SimulationError("invalid_population", f"{member.id} has a model but no {kind}")
        return SimDevice("", kind, member.id, member.zone)  # never used: no model
    return device


def _glucose_fields(mgdl: float, meal: str) -> tuple[tuple[str, Any], ...]:
    """A meter's reading: whole mg/dL, or HI / LO beyond the meter's range (no value then)."""
    if mgdl > METER_HIGH_MGDL:
        return (("unit", "mg/dL"), ("meal", meal), ("flags", ["HI"]))
    if mgdl < METER_LOW_MGDL:
        return (("unit", "mg/dL"), ("meal", meal), ("flags", ["LO"]))
    return (("value", round(mgdl)), ("unit", "mg/dL"), ("meal", meal))


def _weight_fields(lb: float) -> tuple[tuple[str, Any], ...]:
    return (("value", round(lb, 1)), ("unit", "lb"))
