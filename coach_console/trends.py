"""Blood pressure and weight trends for the member page. Pure functions, no I/O.

Sources (shared/reference/clinical.md):
- Home blood pressure (ACC/AHA 2017, table of corresponding values): office 130/80 = home 130/80
  (stage 1 hypertension), office 140/90 = home 135/85. The 7-day home mean is compared with both,
  "at or above" meaning systolic >= or diastolic >= the line (as alerting.rules.bp_uncontrolled).
- Weight: heart-failure self-care guidance (AAHFN) watches the change over a day and a week; the
  console shows the change over 7 days on the weight closest to a week before the latest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from services.domain.units import KG_PER_LB

WEEK: Final = timedelta(days=7)
HOME_STAGE1: Final = (130.0, 80.0)  # ACC/AHA 2017: home 130/80 corresponds to office 130/80
HOME_UNCONTROLLED: Final = (135.0, 85.0)  # ACC/AHA 2017: home 135/85 corresponds to office 140/90
LB_PER_KG: Final = 1 / float(KG_PER_LB)


@dataclass(frozen=True, slots=True)
class BpPoint:
    at: datetime
    systolic: float  # mmHg
    diastolic: float  # mmHg


@dataclass(frozen=True, slots=True)
class BpMean:
    end: datetime
    n: int
    systolic: float
    diastolic: float

    def at_or_above(self, line: tuple[float, float]) -> bool:
        return self.systolic >= line[0] or self.diastolic >= line[1]


def bp_mean(points: Iterable[BpPoint], end: datetime, window: timedelta = WEEK) -> BpMean | None:
    """Mean of the readings in (end - window, end]; None without readings."""
    inside = [p for p in points if end - window < p.at <= end]
    if not inside:
        return None
    n = len(inside)
    systolic = math.fsum(p.systolic for p in inside) / n
    return BpMean(end, n, systolic, math.fsum(p.diastolic for p in inside) / n)


def rolling_bp_means(points: Sequence[BpPoint], window: timedelta = WEEK) -> list[BpMean]:
    """The 7-day mean as of each reading (the line drawn through the scatter)."""
    ordered = sorted(points, key=lambda p: p.at)
    out: list[BpMean] = []
    lo = 0
    sys_sum = dia_sum = 0.0
    for hi, p in enumerate(ordered):
        sys_sum += p.systolic
        dia_sum += p.diastolic
        while ordered[lo].at <= p.at - window:
            sys_sum -= ordered[lo].systolic
            dia_sum -= ordered[lo].diastolic
            lo += 1
        n = hi - lo + 1
        out.append(BpMean(p.at, n, sys_sum / n, dia_sum / n))
    return out


@dataclass(frozen=True, slots=True)
class WeightPoint:
    at: datetime
    kg: float


@dataclass(frozen=True, slots=True)
class WeightChange:
    latest: WeightPoint
    baseline: WeightPoint | None  # the weight closest to a week before the latest
    change_kg: float | None

    @property
    def change_lb(self) -> float | None:
        return None if self.change_kg is None else self.change_kg * LB_PER_KG


def weight_change(
    points: Iterable[WeightPoint], span: timedelta = WEEK, tolerance: timedelta = timedelta(days=1)
) -> WeightChange | None:
    """Latest weight and its change against the weight closest to `span` earlier (within
    `tolerance`; on a tie the earlier one). None without readings."""
    ps = sorted(points, key=lambda p: p.at)
    if not ps:
        return None
    latest = ps[-1]
    target = latest.at - span
    near = [p for p in ps[:-1] if abs(p.at - target) <= tolerance]
    if not near:
        return WeightChange(latest, None, None)
    baseline = min(near, key=lambda p: (abs(p.at - target), p.at))
    return WeightChange(latest, baseline, latest.kg - baseline.kg)
