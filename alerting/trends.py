"""Trend statistics of daily glucose means (pure: no I/O).

`glucose_trend_rising` asks whether a member's daily mean glucose has been climbing over the
last 14 member-local days:
- the slope is the Theil-Sen estimator (median of pairwise slopes; Sen 1968), robust to the
  odd very high or low day that a least-squares line would chase;
- its significance is the Mann-Kendall test (Mann 1945; Kendall 1975), which is Kendall's tau
  of the value against time: `scipy.stats.kendalltau(day, mean)` gives the same statistic, with
  an exact p-value for short series without ties and the tie-corrected normal approximation
  otherwise;
- rising means slope > `Thresholds.glucose_trend_mgdl_per_week` (default 5 mg/dL per week) and a
  two-sided p < 0.05.
It needs at least `MIN_DAYS` daily means (half the window): with fewer, a few days' noise would
decide, and fingerstick members often skip days. Days are the member's local days; days without
readings are simply absent (the test uses the actual day numbers, not positions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final

from scipy import stats

WINDOW_DAYS: Final = 14
MIN_DAYS: Final = 7
ALPHA: Final = 0.05


@dataclass(frozen=True, slots=True)
class Trend:
    slope_per_week: float  # mg/dL per week (Theil-Sen)
    p_value: float  # Mann-Kendall, two-sided; NaN for a constant series
    tau: float
    days: int

    def rising(self, threshold_per_week: float, alpha: float = ALPHA) -> bool:
        return (
            self.slope_per_week > threshold_per_week
            and not math.isnan(self.p_value)
            and self.p_value < alpha
        )


def daily_trend(means: Sequence[tuple[date, float]]) -> Trend | None:
    """The trend of (day, mean) pairs; None with fewer than MIN_DAYS distinct days."""
    by_day = dict(sorted(means))
    if len(by_day) < MIN_DAYS:
        return None
    first = min(by_day).toordinal()
    x = [d.toordinal() - first for d in by_day]
    y = list(by_day.values())
    slope = float(stats.theilslopes(y, x)[0])
    result = stats.kendalltau(x, y)
    return Trend(slope * 7, float(result.pvalue), float(result.statistic), len(by_day))
