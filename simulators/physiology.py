"""Seeded physiology and behaviour models of simulated members (pure: no I/O, no clock).

Every model takes its own `random.Random` (seeded by the caller from the run's seed and the
member, see `simulators.member`), draws in a fixed order and keeps only its own state, so the same
seed gives the same values and one member's model never shifts another's. Times are minutes after
local midnight of the member's day; values are what the body does (the `true` level) or what a
device shows (`measure`, with the device's error).

Scalar `random` rather than numpy: a member-day needs a handful of draws, where numpy's per-call
overhead would dominate; the statistics in tests and docs use numpy/scipy on the output.

- `DailyRoutine`: wake, meals and bedtime of one day (the clock the physiology runs on).
- `GlucoseModel`: fingerstick glucose for type 2 and type 1 diabetes: fasting level, meal
  excursions, dawn phenomenon, day-to-day variability, hypoglycaemia after missed meals or
  exercise (treated with 15 g and rechecked after 15 minutes), a slow trend.
- `BloodPressureModel`: home blood pressure: morning surge, first-reading outliers (the home
  analogue of white-coat), uncontrolled members near 150/95, rare severe days above 180/120,
  irregular-pulse episodes.
- `WeightModel`: morning weights: slow loss in a weight program, heart-failure fluid gains of
  several pounds in a week, a housemate stepping on the scale.
- `Adherence`: how much of the testing plan a member keeps each day: steady, fading out, or
  pausing for a week now and then.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

Risk = Literal["low", "moderate", "high"]
RISKS: Final[tuple[Risk, ...]] = ("low", "moderate", "high")

# --- Glucose thresholds (ADA Standards of Care 2025, section 6) --------------------------------
#: Level 1 hypoglycaemia: below 70 mg/dL; level 2: below 54 mg/dL.
HYPO_LEVEL_1_MGDL: Final = 70.0
HYPO_LEVEL_2_MGDL: Final = 54.0
#: Treatment of level 1: 15 g fast-acting carbohydrate, recheck after 15 minutes (ADA 2025).
RECHECK_AFTER_MIN: Final = 15.0
#: Glucose meters read 20-600 mg/dL and show HI / LO beyond (typical US meter range).
METER_LOW_MGDL: Final = 20.0
METER_HIGH_MGDL: Final = 600.0

# --- Blood pressure (ACC/AHA 2017; AHA/ACC 2025 for severe hypertension) -----------------------
SEVERE_SYSTOLIC_MMHG: Final = 180.0
SEVERE_DIASTOLIC_MMHG: Final = 120.0

#: Days per month, for rates quoted per month (365.25 / 12).
DAYS_PER_MONTH: Final = 30.4375
_DAWN_CENTRE_MIN: Final = 7.5 * 60  # dawn phenomenon: counter-regulatory hormones peak ~04-08 h
_DAWN_WIDTH_MIN: Final = 110.0


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


class _AR1:
    """A stationary AR(1) day-to-day deviation: each day keeps `phi` of yesterday's."""

    __slots__ = ("_phi", "_rng", "_sd", "value")

    def __init__(self, rng: random.Random, sd: float, phi: float) -> None:
        self._rng, self._sd, self._phi = rng, sd, phi
        self.value = rng.gauss(0.0, sd)

    def step(self) -> float:
        innovation = self._sd * math.sqrt(1.0 - self._phi**2)
        self.value = self._phi * self.value + self._rng.gauss(0.0, innovation)
        return self.value


# --- Daily routine -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Habits:
    """A member's usual day (minutes after local midnight)."""

    wake_min: float
    breakfast_after_wake_min: float
    lunch_min: float
    dinner_min: float
    bed_min: float
    weekend_lie_in_min: float

    @classmethod
    def draw(cls, rng: random.Random) -> Habits:
        return cls(
            wake_min=rng.uniform(5.5 * 60, 8.0 * 60),
            breakfast_after_wake_min=rng.uniform(20, 60),
            lunch_min=rng.uniform(11.75 * 60, 13.5 * 60),
            dinner_min=rng.uniform(17.5 * 60, 19.75 * 60),
            bed_min=rng.uniform(21.75 * 60, 23.75 * 60),
            weekend_lie_in_min=rng.uniform(20, 90),
        )


@dataclass(frozen=True, slots=True)
class DailyRoutine:
    """One day: when the member wakes, eats and goes to bed (minutes after local midnight)."""

    wake_min: float
    breakfast_min: float
    lunch_min: float
    dinner_min: float
    bed_min: float

    @classmethod
    def draw(cls, habits: Habits, weekday: int, rng: random.Random) -> DailyRoutine:
        """`weekday`: 0 Monday .. 6 Sunday."""
        lie_in = habits.weekend_lie_in_min if weekday >= 5 else 0.0
        wake = habits.wake_min + lie_in + rng.gauss(0, 15)
        return cls(
            wake_min=wake,
            breakfast_min=wake + habits.breakfast_after_wake_min + rng.gauss(0, 10),
            lunch_min=habits.lunch_min + rng.gauss(0, 20),
            dinner_min=habits.dinner_min + rng.gauss(0, 20),
            bed_min=habits.bed_min + rng.gauss(0, 20),
        )


# --- Glucose -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GlucoseParams:
    """A member's glucose physiology. Fasting levels follow ADA targets and HbA1c via ADAG
    (estimated average glucose = 28.7 x HbA1c - 46.7: HbA1c 8% is 183 mg/dL)."""

    fasting_mgdl: float  # at the start of the run, before the trend
    meal_rise_mgdl: float  # peak rise after a typical meal
    meal_peak_min: float  # minutes from the first bite to the peak
    dawn_mgdl: float  # dawn phenomenon amplitude
    day_sd_mgdl: float  # day-to-day variability of the fasting level (AR(1), phi 0.6)
    trend_mgdl_per_30d: float  # < 0 improving, > 0 worsening
    meter_cv: float  # the meter's relative error (ISO 15197:2013 allows about +-15% at 95%)
    hypo_per_trigger: float  # P(hypoglycaemia | missed meal or exercise): SU or insulin users
    spontaneous_hypo_per_day: float  # insulin dosing mismatches (type 1)
    missed_meal_per_day: float
    exercise_per_day: float
    level_2_share: float  # share of hypoglycaemia nadirs below 54 mg/dL
    floor_mgdl: float  # the fasting level never drifts below this

    @classmethod
    def type_2(cls, risk: Risk, rng: random.Random) -> GlucoseParams:
        fasting = {"low": (100, 128), "moderate": (122, 155), "high": (148, 195)}[risk]
        rise = {"low": (35, 55), "moderate": (45, 72), "high": (55, 95)}[risk]
        # Sulfonylureas and insulin cause most type 2 hypoglycaemia (ADA 2025 section 9); the
        # share on them grows with the stage of the disease, i.e. with the risk class.
        on_su_or_insulin = rng.random() < {"low": 0.3, "moderate": 0.45, "high": 0.55}[risk]
        return cls(
            fasting_mgdl=rng.uniform(*fasting),
            meal_rise_mgdl=rng.uniform(*rise),
            meal_peak_min=rng.uniform(60, 95),
            dawn_mgdl=rng.uniform(5, 25),
            day_sd_mgdl=rng.uniform(8, 16),
            trend_mgdl_per_30d=_clamp(rng.gauss(-2.0, 5.0), -12.0, 10.0),
            meter_cv=0.05,
            hypo_per_trigger=rng.uniform(0.3, 0.55) if on_su_or_insulin else 0.0,
            spontaneous_hypo_per_day=0.0,
            missed_meal_per_day=rng.uniform(0.05, 0.12),
            exercise_per_day=rng.uniform(0.08, 0.3),
            level_2_share=0.15,
            floor_mgdl=85.0,
        )

    @classmethod
    def type_1(cls, risk: Risk, rng: random.Random) -> GlucoseParams:
        fasting = {"low": (120, 160), "moderate": (140, 185), "high": (165, 220)}[risk]
        return cls(
            fasting_mgdl=rng.uniform(*fasting),
            meal_rise_mgdl=rng.uniform(80, 150),  # no endogenous insulin to blunt the rise
            meal_peak_min=rng.uniform(45, 75),
            dawn_mgdl=rng.uniform(10, 40),
            day_sd_mgdl=rng.uniform(25, 40),
            trend_mgdl_per_30d=_clamp(rng.gauss(-1.0, 6.0), -15.0, 12.0),
            meter_cv=0.05,
            hypo_per_trigger=rng.uniform(0.3, 0.6),
            spontaneous_hypo_per_day=rng.uniform(0.08, 0.2),
            missed_meal_per_day=rng.uniform(0.03, 0.08),
            exercise_per_day=rng.uniform(0.1, 0.3),
            level_2_share=0.3,
            floor_mgdl=90.0,
        )


@dataclass(frozen=True, slots=True)
class Hypoglycaemia:
    at_min: float  # time of the nadir
    nadir_mgdl: float
    felt: bool  # symptomatic: the member checks at the nadir, treats, and rechecks
    recovery_mgdl: float  # rise 15 minutes after 15 g of carbohydrate


@dataclass(frozen=True, slots=True)
class GlucoseDay:
    basal_mgdl: float
    dawn_mgdl: float
    meal_rise_mgdl: float
    meal_peak_min: float
    meals: tuple[tuple[float, float], ...]  # (minute, relative size; 0 = skipped)
    exercise: tuple[float, float] | None  # (minute, glucose lowering at its peak)
    hypo: Hypoglycaemia | None

    def level(self, minute: float) -> float:
        """True glucose (mg/dL) at `minute` of the day."""
        g = self.basal_mgdl + self.dawn_mgdl * math.exp(
            -(((minute - _DAWN_CENTRE_MIN) / _DAWN_WIDTH_MIN) ** 2)
        )
        peak = self.meal_peak_min
        for at, size in self.meals:
            tau = minute - at
            if tau > 0 and size > 0:
                # A gamma-shaped excursion: peak `meal_rise` at `peak`, mostly gone by 4 h.
                g += self.meal_rise_mgdl * size * (tau / peak) * math.exp(1.0 - tau / peak)
        if self.exercise is not None:
            at, drop = self.exercise
            tau = minute - at
            if tau > 0:
                g -= drop * (tau / 60.0) * math.exp(1.0 - tau / 60.0)
        if self.hypo is not None:
            weight = math.exp(-(((minute - self.hypo.at_min) / 35.0) ** 2))
            if minute > self.hypo.at_min and self.hypo.felt:
                weight *= math.exp(-(minute - self.hypo.at_min) / 12.0)  # treated: recovers
            g = g * (1.0 - weight) + self.hypo.nadir_mgdl * weight
        return g


class GlucoseModel:
    """Day after day of one member's glucose."""

    def __init__(self, params: GlucoseParams, rng: random.Random) -> None:
        self.params = params
        self._rng = rng
        self._day_effect = _AR1(rng, params.day_sd_mgdl, 0.6)

    def day(self, day_index: int, routine: DailyRoutine) -> GlucoseDay:
        p, rng = self.params, self._rng
        deviation = self._day_effect.step()
        basal = max(
            p.floor_mgdl, p.fasting_mgdl + p.trend_mgdl_per_30d * day_index / 30.0 + deviation
        )
        skipped = rng.random() < p.missed_meal_per_day  # the skipped meal is lunch
        meals = (
            (routine.breakfast_min, rng.uniform(0.7, 1.2)),
            (routine.lunch_min, 0.0 if skipped else rng.uniform(0.6, 1.3)),
            (routine.dinner_min, rng.uniform(0.8, 1.4)),
        )
        exercise: tuple[float, float] | None = None
        if rng.random() < p.exercise_per_day:
            exercise = (routine.dinner_min - rng.uniform(60, 150), rng.uniform(15, 40))
        hypo: Hypoglycaemia | None = None
        triggers = [routine.lunch_min + rng.uniform(90, 180)] if skipped else []
        if exercise is not None:
            triggers.append(exercise[0] + rng.uniform(45, 180))
        draw = rng.random()  # always drawn: keeps the stream aligned whatever the triggers
        when = rng.uniform(0, 24 * 60)
        if triggers and draw < p.hypo_per_trigger:
            hypo = self._hypo(triggers[0])
        elif draw > 1.0 - p.spontaneous_hypo_per_day:
            hypo = self._hypo(when)
        return GlucoseDay(basal, p.dawn_mgdl, p.meal_rise_mgdl, p.meal_peak_min, meals, exercise,
                          hypo)  # fmt: skip

    def _hypo(self, at: float) -> Hypoglycaemia:
        rng = self._rng
        if rng.random() < self.params.level_2_share:
            nadir = rng.uniform(40.0, HYPO_LEVEL_2_MGDL - 0.5)
        else:
            nadir = rng.uniform(HYPO_LEVEL_2_MGDL + 0.5, HYPO_LEVEL_1_MGDL - 1.0)
        # Most members feel level 1-2 hypoglycaemia; hypoglycaemia unawareness is the rest.
        felt = rng.random() < 0.8
        return Hypoglycaemia(at, nadir, felt, rng.uniform(25.0, 55.0))

    def measure(self, true_mgdl: float) -> float:
        """What the meter shows: the true level with the meter's error (mg/dL, not rounded)."""
        sd = max(4.0, self.params.meter_cv * true_mgdl)
        return max(1.0, true_mgdl + self._rng.gauss(0.0, sd))


# --- Blood pressure ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BloodPressureParams:
    """Home blood pressure (ACC/AHA 2017). `systolic`/`diastolic`: the evening resting level."""

    systolic: float
    diastolic: float
    pulse: float
    morning_surge: float  # systolic mmHg extra in the first two hours after waking
    trend_per_30d: float  # systolic mmHg per 30 days (treatment titration, or drift)
    first_reading_outlier: float  # P(an alerting reaction on a session's first reading)
    severe_per_day: float  # P(a day with a hypertensive crisis reading)
    irregular_per_day: float  # P(an irregular-pulse episode starts), 0 if not prone
    two_readings: bool  # follows the advice of two readings a minute apart

    @classmethod
    def draw(
        cls, risk: Risk, rng: random.Random, *, heart_failure: bool = False
    ) -> BloodPressureParams:
        if risk == "high":  # uncontrolled: near 150/95
            systolic, diastolic = rng.gauss(149.0, 5.0), rng.gauss(94.0, 3.0)
        elif risk == "moderate":
            systolic, diastolic = rng.uniform(128, 143), rng.uniform(79, 90)
        else:
            systolic, diastolic = rng.uniform(116, 132), rng.uniform(70, 82)
        # Atrial fibrillation: ~2% of adults, ~10% in hypertension clinics, 25%+ in heart failure.
        prone = rng.random() < (0.25 if heart_failure else 0.1)
        return cls(
            systolic=systolic,
            diastolic=diastolic,
            pulse=rng.uniform(60, 82),
            morning_surge=rng.uniform(4, 16),
            trend_per_30d=_clamp(rng.gauss(-1.0, 2.0), -5.0, 3.0),
            first_reading_outlier=rng.uniform(0.01, 0.05),
            severe_per_day={"low": 0.0002, "moderate": 0.0008, "high": 0.004}[risk],
            irregular_per_day=rng.uniform(0.01, 0.05) if prone else 0.0,
            two_readings=rng.random() < 0.4,
        )


@dataclass(frozen=True, slots=True)
class BloodPressureDay:
    systolic: float
    diastolic: float
    pulse: float
    severe_session: Literal["morning", "evening"] | None
    irregular: bool


@dataclass(frozen=True, slots=True)
class BloodPressureValue:
    systolic: int
    diastolic: int
    pulse: int
    flags: tuple[str, ...]


class BloodPressureModel:
    def __init__(self, params: BloodPressureParams, rng: random.Random) -> None:
        self.params = params
        self._rng = rng
        self._sys_day = _AR1(rng, 5.0, 0.5)
        self._dia_day = _AR1(rng, 3.0, 0.5)
        self._irregular_days_left = 0

    def day(self, day_index: int) -> BloodPressureDay:
        p, rng = self.params, self._rng
        systolic = p.systolic + p.trend_per_30d * day_index / 30.0 + self._sys_day.step()
        diastolic = p.diastolic + 0.5 * p.trend_per_30d * day_index / 30.0 + self._dia_day.step()
        severe_draw, session_draw, irregular_draw = rng.random(), rng.random(), rng.random()
        severe: Literal["morning", "evening"] | None = None
        if severe_draw < p.severe_per_day:
            severe = "morning" if session_draw < 0.6 else "evening"
        if self._irregular_days_left == 0 and irregular_draw < p.irregular_per_day:
            self._irregular_days_left = rng.randint(1, 5)
        irregular = self._irregular_days_left > 0
        self._irregular_days_left = max(0, self._irregular_days_left - 1)
        return BloodPressureDay(systolic, diastolic, p.pulse + rng.gauss(0, 3), severe, irregular)

    def measure(
        self, day: BloodPressureDay, *, morning: bool, first_of_session: bool
    ) -> BloodPressureValue:
        p, rng = self.params, self._rng
        systolic = day.systolic + rng.gauss(0, 6.0)
        diastolic = day.diastolic + rng.gauss(0, 4.0)
        if morning:  # the morning surge, half as large in diastolic
            systolic += p.morning_surge
            diastolic += 0.5 * p.morning_surge
        outlier = rng.random() < p.first_reading_outlier
        if first_of_session:
            systolic += 3.0  # the first of two readings runs a few mmHg higher
            if outlier:
                systolic += rng.uniform(15, 35)
                diastolic += rng.uniform(5, 15)
        session = "morning" if morning else "evening"
        crisis_sys, crisis_dia = rng.uniform(182, 215), rng.uniform(108, 132)
        if day.severe_session == session:
            systolic, diastolic = crisis_sys, crisis_dia
        flags: list[str] = []
        pulse = day.pulse + rng.gauss(0, 4.0)
        movement = rng.random()
        if day.irregular:
            pulse += rng.uniform(10, 35)
            flags.append("irregular_heartbeat")
        elif movement < 0.004:
            flags.append("irregular_heartbeat")  # an ectopic beat: a flag without an episode
        if 0.004 <= movement < 0.014:
            flags.append("body_movement")
        systolic = _clamp(systolic, 80.0, 250.0)
        diastolic = _clamp(diastolic, 40.0, min(150.0, systolic - 20.0))
        return BloodPressureValue(round(systolic), round(diastolic), round(_clamp(pulse, 40, 180)),
                                  tuple(flags))  # fmt: skip


# --- Weight ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WeightParams:
    start_lb: float
    loss_pct_per_month: float  # weight program: 0-1% of body weight a month; 0 otherwise
    water_sd_lb: float  # day-to-day water and gut content (AR(1))
    fluid_episode_per_day: float  # heart failure: P(a fluid-retention episode starts)
    housemate_lb: float | None  # someone else who uses the scale, and their weight
    housemate_per_day: float

    @classmethod
    def draw(
        cls, risk: Risk, rng: random.Random, *, program: bool, heart_failure: bool
    ) -> WeightParams:
        start = _clamp(rng.gauss(218.0, 38.0), 130.0, 400.0)
        loss = 0.0
        if program:
            loss = rng.uniform(*{"low": (0.35, 0.95), "moderate": (0.2, 0.8),
                                 "high": (0.05, 0.6)}[risk])  # fmt: skip
        fluid = 0.0
        if heart_failure:
            fluid = {"low": 1 / 90, "moderate": 1 / 50, "high": 1 / 30}[risk]
        housemate = None
        if rng.random() < 0.1:
            housemate = _clamp(start + rng.choice((-1, 1)) * rng.uniform(30, 90), 95.0, 380.0)
        return cls(start, loss, rng.uniform(0.6, 1.4), fluid, housemate, rng.uniform(0.04, 0.15))


@dataclass(frozen=True, slots=True)
class WeightDay:
    weight_lb: float  # the member's true morning weight
    fluid_lb: float  # of which retained fluid (heart failure)
    housemate_lb: float | None  # the housemate weighs in today


class WeightModel:
    def __init__(self, params: WeightParams, rng: random.Random) -> None:
        self.params = params
        self._rng = rng
        self._water = _AR1(rng, params.water_sd_lb, 0.5)
        self._episode: tuple[int, float, int] | None = None  # (day started, gain lb, days rising)

    def day(self, day_index: int, weekday: int) -> WeightDay:
        p, rng = self.params, self._rng
        trend = p.start_lb * (1.0 - p.loss_pct_per_month / 100.0 * day_index / DAYS_PER_MONTH)
        weekend = 0.7 if weekday == 0 else 0.3 if weekday == 6 else 0.0  # weekend salt and food
        start_draw = rng.random()
        if self._episode is None and start_draw < p.fluid_episode_per_day:
            # Several pounds over 4-7 days (the "5 lb in a week" call threshold, AAHFN), then
            # three days of diuresis once the care team adjusts the diuretic.
            self._episode = (day_index, rng.uniform(4.0, 9.0), rng.randint(4, 7))
        fluid = 0.0
        if self._episode is not None:
            began, gain, rising = self._episode
            elapsed = day_index - began
            if elapsed <= rising:
                fluid = gain * elapsed / rising
            elif elapsed <= rising + 3:
                fluid = gain * (1.0 - (elapsed - rising) / 3.0)
            else:
                self._episode = None
        housemate = None
        if p.housemate_lb is not None and rng.random() < p.housemate_per_day:
            housemate = p.housemate_lb + rng.gauss(0.0, 1.5)
        return WeightDay(trend + self._water.step() + weekend + fluid, fluid, housemate)

    def measure(self, true_lb: float) -> float:
        """The scale's display: 0.2 lb resolution, ~0.2 lb repeatability."""
        return round((true_lb + self._rng.gauss(0.0, 0.2)) * 5.0) / 5.0


# --- Adherence ---------------------------------------------------------------------------------


class AdherencePattern(StrEnum):
    STEADY = "steady"  # keeps the plan (e.g. tests twice a day) most days
    FADING = "fading"  # engaged at first, then testing less and less
    PAUSING = "pausing"  # steady, but stops for a week now and then (travel, illness)


@dataclass(frozen=True, slots=True)
class AdherenceParams:
    pattern: AdherencePattern
    keep: float  # P(a planned test is done) on an ordinary day
    honeymoon_days: float  # fading: days before the fade starts
    half_life_days: float  # fading: days for the probability to halve
    pause_per_day: float  # pausing: P(a pause starts)

    @classmethod
    def draw(cls, risk: Risk, rng: random.Random) -> AdherenceParams:
        weights = {"low": (0.7, 0.1, 0.2), "moderate": (0.55, 0.2, 0.25),
                   "high": (0.45, 0.3, 0.25)}[risk]  # fmt: skip
        pattern = rng.choices(list(AdherencePattern), weights=weights)[0]
        return cls(
            pattern=pattern,
            keep=rng.uniform(0.7, 0.97),
            honeymoon_days=rng.uniform(7, 28),
            half_life_days=rng.uniform(15, 60),
            pause_per_day=rng.uniform(1 / 60, 1 / 25) if pattern is AdherencePattern.PAUSING else 0,
        )


class Adherence:
    def __init__(self, params: AdherenceParams, rng: random.Random) -> None:
        self.params = params
        self._rng = rng
        self._pause_left = 0

    def day(self, day_index: int) -> float:
        """P(each planned test happens) today; 0 during a pause."""
        p = self.params
        start_pause = self._rng.random() < p.pause_per_day
        length = self._rng.randint(5, 10)
        if self._pause_left == 0 and start_pause:
            self._pause_left = length
        if self._pause_left > 0:
            self._pause_left -= 1
            return 0.0
        if p.pattern is AdherencePattern.FADING and day_index > p.honeymoon_days:
            fade: float = 0.5 ** ((day_index - p.honeymoon_days) / p.half_life_days)
            return p.keep * fade
        return p.keep
