"""The member page's statistics against hand-computed examples (coach_console.glucose_stats,
coach_console.trends). Every expected number is worked out in the comments."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from coach_console.glucose_stats import (
    GlucosePoint,
    MealMean,
    agp_bands,
    cgm_summary,
    fingerstick_summary,
    gmi,
    modal_day_bands,
    percentile,
    time_in_ranges,
)
from coach_console.trends import BpPoint, WeightPoint, bp_mean, rolling_bp_means, weight_change

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")


def test_percentile_is_type_7() -> None:
    # h = (n - 1) q / 100; [1, 2, 3, 4]: q25 -> h 0.75 -> 1.75; q50 -> 2.5; q90 -> h 2.7 -> 3.7
    assert percentile([1, 2, 3, 4], 25) == pytest.approx(1.75)
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([7], 95) == 7
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_fingerstick_summary_hand_computed() -> None:
    day = T0 + timedelta(hours=8)
    points = [
        GlucosePoint(day, 100, "fasting"),
        GlucosePoint(day + timedelta(hours=2), 140, "after_meal"),
        GlucosePoint(day + timedelta(hours=4), 60, "before_meal"),
        GlucosePoint(day + timedelta(hours=14), 50, "bedtime"),
        GlucosePoint(day + timedelta(days=1), 200, "after_meal"),
        GlucosePoint(day + timedelta(days=1, hours=1), 90, None),
        GlucosePoint(day + timedelta(days=1, hours=2), None, None, "LO"),
    ]
    s = fingerstick_summary(points)
    assert (s.n, s.n_values) == (7, 6)
    # mean of the six numbers: 640 / 6
    assert s.mean == pytest.approx(106.6667, abs=1e-4)
    # sum of squares 83800 - 640^2 / 6 = 15533.33; sample variance / 5 = 3106.67; SD 55.7375
    assert s.sd == pytest.approx(55.7375, abs=1e-4)
    # below 70: 60, 50 and the LO reading, of 7; below 54: 50 and LO
    assert s.below_70 == pytest.approx(3 / 7)
    assert s.below_54 == pytest.approx(2 / 7)
    assert s.by_meal == (
        MealMean("fasting", 1, 100), MealMean("before_meal", 1, 60),
        MealMean("after_meal", 2, 170), MealMean("bedtime", 1, 50),
        MealMean("unspecified", 1, 90),
    )  # fmt: skip


def test_fingerstick_summary_of_nothing() -> None:
    s = fingerstick_summary([])
    assert (s.n, s.mean, s.sd, s.below_70, s.by_meal) == (0, None, None, None, ())


def test_modal_day_bands_by_local_time() -> None:
    zone = ZoneInfo("America/Chicago")  # CST, UTC-6, in November
    # Five mornings at 07:30 local (13:30 UTC): 80, 90, 100, 110, 200 -> the 06:00-09:00 bin.
    values = [80, 90, 100, 110, 200]
    points = [GlucosePoint(T0 + timedelta(days=d, hours=13, minutes=30), v)
              for d, v in enumerate(values)]  # fmt: skip
    # Four evenings at 20:00 local (02:00 UTC): too few for a band.
    points += [GlucosePoint(T0 + timedelta(days=d, hours=2), 150) for d in range(1, 5)]
    (band,) = modal_day_bands(points, zone)
    assert (band.start_minute, band.end_minute, band.n) == (360, 540, 5)
    # type 7 on [80, 90, 100, 110, 200]: p10 h=0.4 -> 84; p25 90; p50 100; p75 110;
    # p90 h=3.6 -> 110 + 0.6 x 90 = 164
    assert dict(band.quantiles) == pytest.approx({10: 84, 25: 90, 50: 100, 75: 110, 90: 164})


def test_agp_bands_use_15_minute_bins_and_5_to_95() -> None:
    points = [GlucosePoint(T0 + timedelta(days=d, hours=8, minutes=5), v)
              for d, v in enumerate([100, 120, 140, 160, 300])]  # fmt: skip
    (band,) = agp_bands(points, UTC_ZONE)
    assert (band.start_minute, band.end_minute) == (480, 495)
    # p5 h=0.2 -> 104; p95 h=3.8 -> 160 + 0.8 x 140 = 272
    assert dict(band.quantiles) == pytest.approx({5: 104, 25: 120, 50: 140, 75: 160, 95: 272})


def test_time_in_ranges_bounds() -> None:
    values = [53.9, 54, 69.9, 70, 180, 180.1, 250, 250.1]
    points = [GlucosePoint(T0, v) for v in values]
    points += [GlucosePoint(T0, None, None, "LO"), GlucosePoint(T0, None, None, "HI")]
    r = time_in_ranges(points)
    assert r is not None
    # very low: 53.9, LO; low: 54, 69.9; in range: 70, 180; high: 180.1, 250; very high:
    # 250.1, HI -- two of ten each
    assert (r.very_low, r.low, r.in_range, r.high, r.very_high) == pytest.approx((0.2,) * 5)
    assert time_in_ranges([]) is None


def test_gmi_formula() -> None:
    # Bergenstal 2018: 3.31 + 0.02392 x 154 = 6.99368 (about 7.0 %)
    assert gmi(154) == pytest.approx(6.99368)


# Ten values repeating every 50 minutes: mean 1500 / 10 = 150; in the consensus ranges
# 50 (very low), 65 (low), 100 120 150 180 125 (in range, 180 included), 200 250 (high, 250
# included), 260 (very high).
PATTERN = [50, 65, 100, 120, 150, 180, 200, 250, 260, 125]


def _cgm(end: datetime, days: float, every: int = 5, drop_last: int = 0) -> list[GlucosePoint]:
    n = int(days * 24 * 60 / every) - drop_last
    start = end - timedelta(days=days)
    return [GlucosePoint(start + timedelta(minutes=every * i), PATTERN[i % 10]) for i in range(n)]


def test_cgm_summary_hand_computed() -> None:
    end = T0 + timedelta(days=14)
    # 14 days at 5 minutes is 4032 possible readings; 4030 present (403 whole patterns).
    s = cgm_summary(_cgm(end, 14, drop_last=2), end)
    assert s.n == 4030 and s.wear.interval_minutes == 5
    assert s.wear.fraction == pytest.approx(4030 / 4032)
    assert s.sufficient
    assert s.mean == pytest.approx(150)
    # squared deviations of one pattern from 150: 10000 7225 2500 900 0 900 2500 10000 12100
    # 625 = 46750; the sample SD over 403 patterns: sqrt(403 x 46750 / 4029)
    sd = math.sqrt(403 * 46750 / 4029)
    assert s.sd == pytest.approx(sd)  # 68.38...
    assert s.cv == pytest.approx(sd / 150 * 100)  # 45.6 %: above the 36 % target
    assert s.gmi == pytest.approx(3.31 + 0.02392 * 150)  # 6.898 %
    assert s.ranges is not None
    r = s.ranges
    assert (r.very_low, r.low, r.in_range, r.high, r.very_high) == pytest.approx(
        (0.1, 0.1, 0.5, 0.2, 0.1)
    )


def test_cgm_needs_70_percent_of_14_days() -> None:
    end = T0 + timedelta(days=14)
    nine_days = cgm_summary(_cgm(end, 9), end)  # 9 of 14 days: 64 % wear
    assert nine_days.wear.fraction == pytest.approx(9 / 14)
    assert not nine_days.sufficient
    ten_days = cgm_summary(_cgm(end, 10), end)  # 71 %
    assert ten_days.sufficient
    # A 15-minute sensor is judged on its own cadence: 96 readings a day is full wear.
    libre = cgm_summary(_cgm(end, 14, every=15), end)
    assert libre.wear.interval_minutes == 15 and libre.wear.fraction == pytest.approx(1.0)
    assert libre.sufficient


def test_bp_means_hand_computed() -> None:
    pts = [BpPoint(T0, 140, 90), BpPoint(T0 + timedelta(days=2), 130, 80),
           BpPoint(T0 + timedelta(days=5), 120, 70), BpPoint(T0 + timedelta(days=7), 150, 95)]
    # (T0, T0 + 7 d]: the reading exactly a week earlier is out: (130 + 120 + 150) / 3 = 133.3,
    # (80 + 70 + 95) / 3 = 81.7: at or above 130/80, below 135/85.
    m = bp_mean(pts, T0 + timedelta(days=7))
    assert m is not None and m.n == 3
    assert (m.systolic, m.diastolic) == pytest.approx((400 / 3, 245 / 3))
    assert m.at_or_above((130, 80)) and not m.at_or_above((135, 85))
    rolling = rolling_bp_means(pts)
    assert [(r.n, round(r.systolic, 2), round(r.diastolic, 2)) for r in rolling] == [
        (1, 140, 90), (2, 135, 85), (3, 130, 80), (3, 133.33, 81.67)
    ]
    assert bp_mean(pts, T0 - timedelta(days=1)) is None


def test_weight_change_over_a_week() -> None:
    pts = [WeightPoint(T0 + timedelta(hours=7), 80.0),
           WeightPoint(T0 + timedelta(days=1, hours=7), 80.5),
           WeightPoint(T0 + timedelta(days=6, hours=8), 81.0),
           WeightPoint(T0 + timedelta(days=7, hours=8), 82.5)]  # fmt: skip
    c = weight_change(pts)
    assert c is not None
    # a week before the latest is day 0 08:00; day 0 07:00 is an hour off, day 1 23 hours
    assert c.baseline == pts[0]
    assert c.change_kg == pytest.approx(2.5)
    assert c.change_lb == pytest.approx(2.5 / 0.45359237)  # 5.5 lb
    only_recent = weight_change(pts[2:])
    assert only_recent is not None and only_recent.change_kg is None
    assert weight_change([]) is None
