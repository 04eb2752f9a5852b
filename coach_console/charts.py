"""Server-side SVG charts for the member page. Pure: statistics in, SVG text out, no I/O.

No JavaScript chart library: an SVG the server writes is an image the browser shows as is, works
without scripts, prints, and keeps the page's Content-Security-Policy strict. Presentation goes in
SVG attributes (never `style`), and every text is XML-escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from typing import Final
from zoneinfo import ZoneInfo

from coach_console.glucose_stats import (
    LEVEL1_LOW,
    LEVEL2_LOW,
    TARGET_HIGH,
    VERY_HIGH,
    Band,
    GlucosePoint,
    TimeInRanges,
)
from coach_console.trends import (
    HOME_STAGE1,
    HOME_UNCONTROLLED,
    BpMean,
    BpPoint,
    WeightPoint,
)

WIDTH: Final = 720
HEIGHT: Final = 280
MARGIN: Final = (52, 16, 20, 34)  # left, right, top, bottom
FONT: Final = 'font-family="system-ui, sans-serif" font-size="11" fill="#333"'
# Colours: ranges as in the AGP report (red low, green in range, amber/orange high).
C_VERY_LOW: Final = "#b71c1c"
C_LOW: Final = "#e53935"
C_IN_RANGE: Final = "#2e7d32"
C_HIGH: Final = "#f9a825"
C_VERY_HIGH: Final = "#ef6c00"
C_GRID: Final = "#e0e0e0"
C_BAND_OUTER: Final = "#bbdefb"
C_BAND_INNER: Final = "#64b5f6"
C_MEDIAN: Final = "#0d47a1"
GLUCOSE_AXIS: Final = (0.0, 400.0)


@dataclass(frozen=True, slots=True)
class Frame:
    """Maps data coordinates into the plot area of a WIDTH x HEIGHT canvas."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def left(self) -> float:
        return float(MARGIN[0])

    @property
    def right(self) -> float:
        return float(self.width - MARGIN[1])

    @property
    def top(self) -> float:
        return float(MARGIN[2])

    @property
    def bottom(self) -> float:
        return float(self.height - MARGIN[3])

    def px(self, x: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (x - self.x0) / span * (self.right - self.left)

    def py(self, y: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        y = min(max(y, self.y0), self.y1)
        return self.bottom - (y - self.y0) / span * (self.bottom - self.top)


def _f(v: float) -> str:
    return f"{v:.1f}"


def _svg(title: str, body: list[str], frame: Frame | None = None) -> str:
    w, h = (frame.width, frame.height) if frame else (WIDTH, HEIGHT)
    t = escape(title)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" '
        f'height="{h}" role="img" aria-label="{t}"><title>{t}</title>'
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>' + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, s: str, anchor: str = "start", fill: str | None = None) -> str:
    colour = f' fill="{fill}"' if fill else ""
    font = FONT if not fill else FONT.replace(' fill="#333"', "")
    return (
        f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" {font}{colour}>{escape(s)}</text>'
    )


def _hline(fr: Frame, y: float, colour: str, dash: str = "", label: str = "") -> list[str]:
    d = f' stroke-dasharray="{dash}"' if dash else ""
    out = [
        f'<line x1="{_f(fr.left)}" x2="{_f(fr.right)}" y1="{_f(fr.py(y))}" y2="{_f(fr.py(y))}" '
        f'stroke="{colour}" stroke-width="1"{d}/>'
    ]
    if label:
        out.append(_text(fr.right - 2, fr.py(y) - 3, label, "end", colour))
    return out


def _y_axis(fr: Frame, ticks: Sequence[float], unit: str) -> list[str]:
    out = []
    for t in ticks:
        y = fr.py(t)
        out.append(
            f'<line x1="{_f(fr.left)}" x2="{_f(fr.right)}" y1="{_f(y)}" y2="{_f(y)}" '
            f'stroke="{C_GRID}" stroke-width="1"/>'
        )
        out.append(_text(fr.left - 6, y + 4, f"{t:g}", "end"))
    out.append(_text(4, fr.top - 6, unit))
    return out


def _empty(title: str, message: str) -> str:
    return _svg(title, [_text(WIDTH / 2, HEIGHT / 2, message, "middle")])


def _glucose_colour(v: float) -> str:
    if v < LEVEL2_LOW:
        return C_VERY_LOW
    if v < LEVEL1_LOW:
        return C_LOW
    if v <= TARGET_HIGH:
        return C_IN_RANGE
    if v <= VERY_HIGH:
        return C_HIGH
    return C_VERY_HIGH


def _hours_axis(fr: Frame) -> list[str]:
    out = []
    for h in range(0, 25, 3):
        x = fr.px(h * 60)
        out.append(
            f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(fr.top)}" y2="{_f(fr.bottom)}" '
            f'stroke="{C_GRID}" stroke-width="1"/>'
        )
        out.append(_text(x, fr.bottom + 16, f"{h:02d}:00", "middle"))
    return out


def _target_range(fr: Frame) -> list[str]:
    top, bottom = fr.py(TARGET_HIGH), fr.py(LEVEL1_LOW)
    return [
        f'<rect x="{_f(fr.left)}" y="{_f(top)}" width="{_f(fr.right - fr.left)}" '
        f'height="{_f(bottom - top)}" fill="#e8f5e9"/>',
        *_hline(fr, LEVEL2_LOW, C_VERY_LOW, "4 3", "54"),
        *_hline(fr, LEVEL1_LOW, C_LOW, "", "70"),
        *_hline(fr, TARGET_HIGH, C_HIGH, "", "180"),
        *_hline(fr, VERY_HIGH, C_VERY_HIGH, "4 3", "250"),
    ]


def modal_day_chart(points: Sequence[GlucosePoint], bands: Sequence[Band], zone: ZoneInfo) -> str:
    """Fingersticks by local time of day, with the 10-90 and 25-75 percentile bands of each
    3-hour bin and its median; LO and HI readings as triangles at the axis ends."""
    title = "Glucose by time of day (fingersticks)"
    if not points:
        return _empty(title, "No fingerstick readings in this period")
    fr = Frame(0, 1440, *GLUCOSE_AXIS)
    body = [*_y_axis(fr, (0, 54, 70, 180, 250, 400), "mg/dL"), *_target_range(fr)]
    body += _hours_axis(fr)
    for b in bands:
        x, w = fr.px(b.start_minute), fr.px(b.end_minute) - fr.px(b.start_minute)
        for lo, hi, colour in ((10, 90, C_BAND_OUTER), (25, 75, C_BAND_INNER)):
            y_top, y_bottom = fr.py(b.at(hi)), fr.py(b.at(lo))
            body.append(
                f'<rect x="{_f(x)}" y="{_f(y_top)}" width="{_f(w)}" '
                f'height="{_f(y_bottom - y_top)}" fill="{colour}" fill-opacity="0.55"/>'
            )
        ym = fr.py(b.at(50))
        body.append(
            f'<line x1="{_f(x)}" x2="{_f(x + w)}" y1="{_f(ym)}" y2="{_f(ym)}" '
            f'stroke="{C_MEDIAN}" stroke-width="2"/>'
        )
    for p in points:
        local = p.at.astimezone(zone)
        x = fr.px(local.hour * 60 + local.minute)
        if p.mgdl is None:
            y = fr.bottom if p.flag == "LO" else fr.top
            d = 6 if p.flag == "LO" else -6
            colour = C_VERY_LOW if p.flag == "LO" else C_VERY_HIGH
            body.append(
                f'<path d="M{_f(x - 4)} {_f(y - d)} L{_f(x + 4)} {_f(y - d)} L{_f(x)} {_f(y)} Z" '
                f'fill="{colour}"/>'
            )
            continue
        body.append(
            f'<circle cx="{_f(x)}" cy="{_f(fr.py(p.mgdl))}" r="2.6" '
            f'fill="{_glucose_colour(p.mgdl)}" fill-opacity="0.85"/>'
        )
    return _svg(title, body, fr)


def agp_chart(bands: Sequence[Band]) -> str:
    """The ambulatory glucose profile: median, 25-75 and 5-95 percentile bands by time of day."""
    title = "Ambulatory glucose profile (CGM, 14 days)"
    if not bands:
        return _empty(title, "Not enough CGM data for a profile")
    fr = Frame(0, 1440, *GLUCOSE_AXIS)
    body = [*_y_axis(fr, (0, 54, 70, 180, 250, 400), "mg/dL"), *_target_range(fr)]
    body += _hours_axis(fr)
    mids = [fr.px((b.start_minute + b.end_minute) / 2) for b in bands]
    for lo, hi, colour in ((5, 95, C_BAND_OUTER), (25, 75, C_BAND_INNER)):
        upper = [f"{_f(x)},{_f(fr.py(b.at(hi)))}" for x, b in zip(mids, bands, strict=True)]
        lower = [f"{_f(x)},{_f(fr.py(b.at(lo)))}" for x, b in zip(mids, bands, strict=True)]
        pts = " ".join(upper + lower[::-1])
        body.append(f'<polygon points="{pts}" fill="{colour}" fill-opacity="0.7"/>')
    median = " ".join(f"{_f(x)},{_f(fr.py(b.at(50)))}" for x, b in zip(mids, bands, strict=True))
    body.append(
        f'<polyline points="{median}" fill="none" stroke="{C_MEDIAN}" stroke-width="2.2"/>'
    )
    return _svg(title, body, fr)


def time_in_ranges_chart(r: TimeInRanges) -> str:
    """A stacked bar of the five consensus ranges with their shares and targets."""
    title = "Time in ranges (CGM)"
    w, h = 300, HEIGHT
    fr = Frame(0, 1, 0, 1, width=w, height=h)
    segments = (
        (r.very_high, C_VERY_HIGH, "Very high >250", "<5%"),
        (r.high, C_HIGH, "High 181-250", "<25% (>180)"),
        (r.in_range, C_IN_RANGE, "In range 70-180", ">70%"),
        (r.low, C_LOW, "Low 54-69", "<4% (<70)"),
        (r.very_low, C_VERY_LOW, "Very low <54", "<1%"),
    )
    body: list[str] = []
    y = fr.top
    bar_h = fr.bottom - fr.top
    for share, colour, _label, _target in segments:
        seg = share * bar_h
        body.append(
            f'<rect x="{_f(fr.left)}" y="{_f(y)}" width="40" height="{_f(seg)}" fill="{colour}"/>'
        )
        y += seg
    for i, (share, colour, label, target) in enumerate(segments):
        ty = fr.top + 14 + i * (bar_h / 5)
        body.append(_text(fr.left + 52, ty, f"{label}: {share * 100:.1f}%", fill=colour))
        body.append(_text(fr.left + 52, ty + 13, f"target {target}"))
    return _svg(title, body, fr)


def _time_axis(fr: Frame, start: datetime, end: datetime, zone: ZoneInfo) -> list[str]:
    days = max(1, round((end - start) / timedelta(days=1)))
    step = max(1, days // 6)
    out = []
    first = start.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    t = first + timedelta(days=1)
    while t < end:
        x = fr.px((t - start).total_seconds())
        out.append(
            f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(fr.top)}" y2="{_f(fr.bottom)}" '
            f'stroke="{C_GRID}" stroke-width="1"/>'
        )
        out.append(_text(x, fr.bottom + 16, t.strftime("%b %d"), "middle"))
        t += timedelta(days=step)
    return out


def bp_chart(
    points: Sequence[BpPoint], rolling: Sequence[BpMean], start: datetime, end: datetime,
    zone: ZoneInfo,
) -> str:  # fmt: skip
    """Home readings (systolic dark, diastolic light) with their 7-day means, against the home
    130/80 and 135/85 lines (ACC/AHA 2017 corresponding values)."""
    title = "Blood pressure (home readings, 7-day means)"
    if not points:
        return _empty(title, "No blood pressure readings in this period")
    fr = Frame(0, (end - start).total_seconds(), 40, 200)
    body = [*_y_axis(fr, (40, 80, 120, 160, 200), "mmHg"), *_time_axis(fr, start, end, zone)]
    body += _hline(fr, HOME_STAGE1[0], "#f9a825", "5 3", "130")
    body += _hline(fr, HOME_STAGE1[1], "#f9a825", "5 3", "80")
    body += _hline(fr, HOME_UNCONTROLLED[0], "#c62828", "2 2", "135")
    body += _hline(fr, HOME_UNCONTROLLED[1], "#c62828", "2 2", "85")
    for p in points:
        x = fr.px((p.at - start).total_seconds())
        body.append(f'<circle cx="{_f(x)}" cy="{_f(fr.py(p.systolic))}" r="2.6" fill="#283593"/>')
        body.append(f'<circle cx="{_f(x)}" cy="{_f(fr.py(p.diastolic))}" r="2.6" fill="#7986cb"/>')
    for attr, colour in (("systolic", "#283593"), ("diastolic", "#7986cb")):
        line = " ".join(
            f"{_f(fr.px((m.end - start).total_seconds()))},{_f(fr.py(getattr(m, attr)))}"
            for m in rolling
        )
        body.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
    return _svg(title, body, fr)


def weight_chart(points: Sequence[WeightPoint], start: datetime, end: datetime,
                 zone: ZoneInfo) -> str:  # fmt: skip
    title = "Weight"
    if not points:
        return _empty(title, "No weight readings in this period")
    lo = min(p.kg for p in points)
    hi = max(p.kg for p in points)
    pad = max(1.0, (hi - lo) * 0.15)
    y0, y1 = lo - pad, hi + pad
    fr = Frame(0, (end - start).total_seconds(), y0, y1)
    step = (y1 - y0) / 4
    body = [*_y_axis(fr, [round(y0 + i * step, 1) for i in range(5)], "kg")]
    body += _time_axis(fr, start, end, zone)
    ordered = sorted(points, key=lambda p: p.at)
    line = " ".join(
        f"{_f(fr.px((p.at - start).total_seconds()))},{_f(fr.py(p.kg))}" for p in ordered
    )
    body.append(f'<polyline points="{line}" fill="none" stroke="#5d4037" stroke-width="1.6"/>')
    for p in ordered:
        body.append(
            f'<circle cx="{_f(fr.px((p.at - start).total_seconds()))}" cy="{_f(fr.py(p.kg))}" '
            'r="2.4" fill="#5d4037"/>'
        )
    return _svg(title, body, fr)
