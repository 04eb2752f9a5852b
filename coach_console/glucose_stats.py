"""Glucose statistics for the member page: fingerstick summaries, CGM metrics and the AGP.

Pure functions of readings (no I/O), values in mg/dL (Vigil's canonical glucose unit). Sources
(shared/reference/clinical.md):

- ADA Standards of Care 2025, section 6: level 1 hypoglycaemia < 70 mg/dL, level 2 < 54 mg/dL.
- Battelino et al., "Clinical targets for CGM data interpretation: recommendations from the
  international consensus on time in range", Diabetes Care 2019;42(8):1593. Ranges < 54, 54-69,
  70-180, 181-250, > 250 mg/dL; targets TIR > 70 %, < 70 under 4 %, < 54 under 1 %, > 180 under
  25 %, > 250 under 5 %, CV <= 36 %; the metrics need 14 days with >= 70 % of possible readings.
  These are CGM metrics: fingerstick data is too sparse for them and gets its own summary.
- Bergenstal et al., "Glucose Management Indicator (GMI)", Diabetes Care 2018;41(11):2275:
  GMI (%) = 3.31 + 0.02392 x mean glucose (mg/dL).
- The ambulatory glucose profile (AGP, International Diabetes Center): the 5th, 25th, 50th, 75th
  and 95th percentiles of the readings by time of day, in the member's own time zone.

Conventions: SD is the sample standard deviation (n - 1 denominator), CV = SD / mean x 100.
Percentiles interpolate linearly between closest ranks (Hyndman and Fan type 7, numpy's default).
A meter or sensor LO or HI (below or above its measuring range, no number) counts in the range
shares (LO as below 54, HI as above 250) but not in means, SDs or percentiles, which need a
number. Range bounds for non-integer values (converted from mmol/L): very low v < 54, low
54 <= v < 70, in range 70 <= v <= 180, high 180 < v <= 250, very high v > 250.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo

Flag = Literal["LO", "HI"]

LEVEL2_LOW: Final = 54.0  # ADA 2025 level 2 hypoglycaemia: < 54 mg/dL
LEVEL1_LOW: Final = 70.0  # ADA 2025 level 1 hypoglycaemia: < 70 mg/dL
TARGET_HIGH: Final = 180.0  # consensus 2019: time in range 70-180 mg/dL
VERY_HIGH: Final = 250.0  # consensus 2019: level 2 time above range > 250 mg/dL
GMI_INTERCEPT: Final = 3.31  # Bergenstal 2018
GMI_SLOPE: Final = 0.02392  # % per mg/dL, Bergenstal 2018
CGM_WINDOW: Final = timedelta(days=14)  # consensus 2019: 14 days of data
CGM_MIN_WEAR: Final = 0.70  # consensus 2019: >= 70 % of possible readings
CV_TARGET: Final = 36.0  # consensus 2019: CV <= 36 % (stable glucose)
AGP_QUANTILES: Final = (5, 25, 50, 75, 95)
MODAL_DAY_QUANTILES: Final = (10, 25, 50, 75, 90)
#: AGP bins: 15 minutes give ~42 CGM readings per bin over 14 days at a 5-minute interval.
AGP_BIN_MINUTES: Final = 15
#: Fingersticks are a few a day: 3-hour bins, and a band only where a bin has 5 readings.
MODAL_DAY_BIN_MINUTES: Final = 180
MIN_POINTS_PER_BIN: Final = 5


@dataclass(frozen=True, slots=True)
class GlucosePoint:
    at: datetime  # aware
    mgdl: float | None  # None only for a LO or HI reading
    meal: str | None = None
    flag: Flag | None = None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ascending values, type 7 (linear between closest ranks)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0-100")
    h = (len(sorted_values) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None when there are too few values)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def gmi(mean_mgdl: float) -> float:
    """Glucose management indicator (%), Bergenstal 2018."""
    return GMI_INTERCEPT + GMI_SLOPE * mean_mgdl


def _is_below(p: GlucosePoint, bound: float) -> bool:
    return p.flag == "LO" or (p.mgdl is not None and p.mgdl < bound)


@dataclass(frozen=True, slots=True)
class MealMean:
    meal: str
    n: int
    mean: float


@dataclass(frozen=True, slots=True)
class FingerstickSummary:
    n: int  # readings, LO and HI included
    n_values: int  # readings with a number: mean and SD are over these
    mean: float | None
    sd: float | None
    below_70: float | None  # fraction of all readings below 70 mg/dL (below 54 included)
    below_54: float | None
    by_meal: tuple[MealMean, ...]  # in MEAL_ORDER, only contexts with readings


#: Meal contexts in display order (services/domain/readings.py Meal, then no context given).
MEAL_ORDER: Final = ("fasting", "before_meal", "after_meal", "bedtime", "other", "unspecified")


def fingerstick_summary(points: Iterable[GlucosePoint]) -> FingerstickSummary:
    ps = list(points)
    values = [p.mgdl for p in ps if p.mgdl is not None]
    mean, sd = mean_sd(values)
    by: dict[str, list[float]] = defaultdict(list)
    for p in ps:
        if p.mgdl is not None:
            by[p.meal or "unspecified"].append(p.mgdl)
    meals = tuple(
        MealMean(meal, len(by[meal]), math.fsum(by[meal]) / len(by[meal]))
        for meal in MEAL_ORDER
        if by.get(meal)
    )
    n = len(ps)
    return FingerstickSummary(
        n=n, n_values=len(values), mean=mean, sd=sd,
        below_70=sum(_is_below(p, LEVEL1_LOW) for p in ps) / n if n else None,
        below_54=sum(_is_below(p, LEVEL2_LOW) for p in ps) / n if n else None,
        by_meal=meals,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Band:
    """Percentiles of the readings whose local time of day falls in [start, end) minutes."""

    start_minute: int
    end_minute: int
    n: int
    quantiles: tuple[tuple[int, float], ...]  # (q, value), ascending q

    def at(self, q: int) -> float:
        return dict(self.quantiles)[q]


def time_of_day_bands(
    points: Iterable[GlucosePoint],
    zone: ZoneInfo,
    *,
    bin_minutes: int,
    quantiles: Sequence[int],
    min_points: int = MIN_POINTS_PER_BIN,
) -> tuple[Band, ...]:
    """Percentile bands by local time of day (the modal day); bins with too few readings are
    left out rather than drawn from two or three values."""
    if bin_minutes <= 0 or 1440 % bin_minutes:
        raise ValueError("bin_minutes must divide a day")
    bins: dict[int, list[float]] = defaultdict(list)
    for p in points:
        if p.mgdl is None:
            continue
        local = p.at.astimezone(zone)
        bins[(local.hour * 60 + local.minute) // bin_minutes].append(p.mgdl)
    out = []
    for b in sorted(bins):
        vs = sorted(bins[b])
        if len(vs) < min_points:
            continue
        qs = tuple((q, percentile(vs, q)) for q in quantiles)
        out.append(Band(b * bin_minutes, (b + 1) * bin_minutes, len(vs), qs))
    return tuple(out)


def modal_day_bands(points: Iterable[GlucosePoint], zone: ZoneInfo) -> tuple[Band, ...]:
    return time_of_day_bands(
        points, zone, bin_minutes=MODAL_DAY_BIN_MINUTES, quantiles=MODAL_DAY_QUANTILES
    )


def agp_bands(points: Iterable[GlucosePoint], zone: ZoneInfo) -> tuple[Band, ...]:
    return time_of_day_bands(points, zone, bin_minutes=AGP_BIN_MINUTES, quantiles=AGP_QUANTILES)


@dataclass(frozen=True, slots=True)
class TimeInRanges:
    """Fractions of readings (sum 1) in the consensus 2019 ranges."""

    very_low: float  # < 54
    low: float  # 54-69
    in_range: float  # 70-180
    high: float  # 181-250
    very_high: float  # > 250


def time_in_ranges(points: Iterable[GlucosePoint]) -> TimeInRanges | None:
    counts = [0, 0, 0, 0, 0]
    for p in points:
        if p.flag == "LO":
            counts[0] += 1
        elif p.flag == "HI":
            counts[4] += 1
        elif p.mgdl is not None:
            v = p.mgdl
            if v < LEVEL2_LOW:
                counts[0] += 1
            elif v < LEVEL1_LOW:
                counts[1] += 1
            elif v <= TARGET_HIGH:
                counts[2] += 1
            elif v <= VERY_HIGH:
                counts[3] += 1
            else:
                counts[4] += 1
    n = sum(counts)
    if n == 0:
        return None
    return TimeInRanges(*(c / n for c in counts))


@dataclass(frozen=True, slots=True)
class Wear:
    readings: int
    interval_minutes: int  # the sensor's sampling interval, from the data
    fraction: float  # readings / possible readings in the window, at most 1


def sensor_wear(points: Sequence[GlucosePoint], start: datetime, end: datetime) -> Wear:
    """Share of possible sensor readings present in [start, end). The sampling interval is the
    median gap between consecutive readings in whole minutes (5 for most sensors, 15 for some),
    so a sensor is not penalised for its own cadence."""
    times = sorted(p.at for p in points if start <= p.at < end)
    if not times:
        return Wear(0, 0, 0.0)
    gaps = sorted(
        (b - a).total_seconds() / 60 for a, b in itertools.pairwise(times) if b > a
    )
    interval = max(1, round(percentile(gaps, 50))) if gaps else 5
    possible = (end - start).total_seconds() / 60 / interval
    return Wear(len(times), interval, min(1.0, len(times) / possible))


@dataclass(frozen=True, slots=True)
class CgmSummary:
    start: datetime
    end: datetime
    wear: Wear
    sufficient: bool  # 14 days with >= 70 % wear: the metrics below may be reported
    n: int
    mean: float | None
    sd: float | None
    cv: float | None  # %
    gmi: float | None  # %
    ranges: TimeInRanges | None


def cgm_summary(
    points: Iterable[GlucosePoint], end: datetime, window: timedelta = CGM_WINDOW
) -> CgmSummary:
    """CGM metrics over the `window` before `end` (consensus 2019)."""
    start = end - window
    ps = [p for p in points if start <= p.at < end]
    wear = sensor_wear(ps, start, end)
    values = [p.mgdl for p in ps if p.mgdl is not None]
    mean, sd = mean_sd(values)
    return CgmSummary(
        start=start, end=end, wear=wear,
        sufficient=window >= CGM_WINDOW and wear.fraction >= CGM_MIN_WEAR,
        n=len(ps), mean=mean, sd=sd,
        cv=None if mean is None or sd is None or mean == 0 else sd / mean * 100,
        gmi=None if mean is None else gmi(mean),
        ranges=time_in_ranges(ps),
    )  # fmt: skip
