"""Reading-driven clinical rules: pure functions of (member context, reading, history).

Every reading runs every rule here, with windows ending at that reading's `effective_at`.
Thresholds come from the member's care plan (alerting/thresholds.py, which cites the
guidelines); comparisons use the reading's original unit. Control-solution readings never
trigger. A finding is `retrospective` when the newest reading satisfying it is late (received
more than `late_after` after its effective time): it keeps its tier, but sorts below live alerts
and never pages.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Final, Literal
from zoneinfo import ZoneInfo

from alerting.thresholds import Thresholds

Tier = Literal["critical", "high", "medium", "low"]
TIER_RANK: Final[dict[str, int]] = {"low": 0, "medium": 1, "high": 2, "critical": 3}
WEEK: Final = timedelta(days=7)
EPISODE_GAP: Final = timedelta(hours=2)  # lows closer than this are one episode
_LB_PER_KG: Final = Decimal(1) / Decimal("0.45359237")


@dataclass(frozen=True, slots=True)
class RuleReading:
    """What the rules see of a stored reading."""

    device_id: str
    seq_epoch: int
    seq: int
    kind: str
    source: str
    effective_at: datetime
    received_at: datetime
    flags: tuple[str, ...]
    unit: str
    value: Decimal | None = None
    systolic: Decimal | None = None
    diastolic: Decimal | None = None
    glucose_mgdl: Decimal | None = None
    systolic_mmhg: Decimal | None = None
    diastolic_mmhg: Decimal | None = None
    weight_kg: Decimal | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return self.device_id, self.seq_epoch, self.seq

    @property
    def control(self) -> bool:
        return "control_solution" in self.flags


@dataclass(frozen=True, slots=True)
class MemberContext:
    member_id: str
    zone: ZoneInfo
    conditions: frozenset[str]
    thresholds: Thresholds
    late_after: timedelta = timedelta(hours=1)

    def late(self, r: RuleReading) -> bool:
        return r.received_at - r.effective_at > self.late_after


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    tier: Tier
    reading: RuleReading
    retrospective: bool
    value: Decimal | None
    unit: str | None
    #: Which way is worse for this rule's value: "low" (hypoglycaemia) or "high".
    worse: Literal["low", "high"] = "high"
    detail: dict[str, str] = field(default_factory=dict)


History = Sequence[RuleReading]  # the member's readings up to and including the current one


def _finding(ctx: MemberContext, rule: str, tier: Tier, r: RuleReading, value: Decimal | None,
             unit: str | None, worse: Literal["low", "high"] = "high",
             **detail: str) -> Finding:  # fmt: skip
    return Finding(rule, tier, r, ctx.late(r), value, unit, worse, detail)


def is_low(t: Thresholds, r: RuleReading) -> bool:
    if r.kind != "glucose" or r.control:
        return False
    if "LO" in r.flags:
        return True
    return r.value is not None and "HI" not in r.flags and r.value < t.hypo_level1.in_unit(r.unit)


def hypoglycemia(ctx: MemberContext, r: RuleReading, history: History) -> Finding | None:
    """ADA level 1 (< 70 mg/dL / 3.9 mmol/L): high; level 2 (< 54 / 3.0) or meter LO: critical."""
    if r.kind != "glucose" or r.control:
        return None
    t = ctx.thresholds
    if "LO" in r.flags:
        return _finding(ctx, "hypoglycemia", "critical", r, r.value, r.unit, "low", flag="LO")
    if r.value is None or "HI" in r.flags:
        return None
    if r.value < t.hypo_level2.in_unit(r.unit):
        return _finding(ctx, "hypoglycemia", "critical", r, r.value, r.unit, "low", level="2")
    if r.value < t.hypo_level1.in_unit(r.unit):
        return _finding(ctx, "hypoglycemia", "high", r, r.value, r.unit, "low", level="1")
    return None


def hyperglycemia(ctx: MemberContext, r: RuleReading, history: History) -> Finding | None:
    """>= 250 mg/dL (13.9 mmol/L): medium; >= 400 (22.2) or meter HI: critical."""
    if r.kind != "glucose" or r.control:
        return None
    t = ctx.thresholds
    if "HI" in r.flags:
        return _finding(ctx, "hyperglycemia", "critical", r, r.value, r.unit, flag="HI")
    if r.value is None or "LO" in r.flags:
        return None
    if r.value >= t.hyper_critical.in_unit(r.unit):
        return _finding(ctx, "hyperglycemia", "critical", r, r.value, r.unit)
    if r.value >= t.hyper_medium.in_unit(r.unit):
        return _finding(ctx, "hyperglycemia", "medium", r, r.value, r.unit)
    return None


def bp_severe(ctx: MemberContext, r: RuleReading, history: History) -> Finding | None:
    """AHA/ACC: systolic > 180 or diastolic > 120 mmHg (24.0 / 16.0 kPa). Never loosened."""
    if r.kind != "blood_pressure" or r.systolic is None or r.diastolic is None:
        return None
    t = ctx.thresholds
    if r.systolic > t.bp_severe_systolic.in_unit(r.unit) or r.diastolic > (
        t.bp_severe_diastolic.in_unit(r.unit)
    ):
        return _finding(ctx, "bp_severe", "critical", r, r.systolic, r.unit,
                        diastolic=str(r.diastolic))  # fmt: skip
    return None


def hypotension(ctx: MemberContext, r: RuleReading, history: History) -> Finding | None:
    """Systolic < 90 mmHg (12.0 kPa): high."""
    if r.kind != "blood_pressure" or r.systolic is None:
        return None
    if r.systolic < ctx.thresholds.hypotension_systolic.in_unit(r.unit):
        return _finding(ctx, "hypotension", "high", r, r.systolic, r.unit, "low")
    return None


def bp_uncontrolled(ctx: MemberContext, r: RuleReading, history: History) -> Finding | None:
    """7-day mean of >= 3 readings with systolic >= 135 or diastolic >= 85 mmHg (home-BP
    equivalent of office 140/90, ACC/AHA 2017): medium."""
    if r.kind != "blood_pressure":
        return None
    t = ctx.thresholds
    window = [
        h for h in history
        if h.kind == "blood_pressure" and r.effective_at - WEEK < h.effective_at <= r.effective_at
        and h.systolic_mmhg is not None and h.diastolic_mmhg is not None
    ]  # fmt: skip
    if len(window) < t.bp_uncontrolled_min_readings:
        return None
    sys_mean = statistics.fmean(float(h.systolic_mmhg or 0) for h in window)
    dia_mean = statistics.fmean(float(h.diastolic_mmhg or 0) for h in window)
    if sys_mean >= t.bp_uncontrolled_systolic or dia_mean >= t.bp_uncontrolled_diastolic:
        mean = Decimal(f"{sys_mean:.1f}")
        return _finding(ctx, "bp_uncontrolled", "medium", r, mean, "mmHg",
                        diastolic_mean=f"{dia_mean:.1f}", readings=str(len(window)))  # fmt: skip
    return None


def irregular_pulse(ctx: MemberContext, r: RuleReading, history: History) -> Finding | None:
    """The cuff's irregular-heartbeat flag on >= 2 readings within 7 days: medium."""
    if r.kind != "blood_pressure" or "irregular_heartbeat" not in r.flags:
        return None
    flagged = [
        h for h in history
        if h.kind == "blood_pressure" and "irregular_heartbeat" in h.flags
        and r.effective_at - WEEK < h.effective_at <= r.effective_at
    ]  # fmt: skip
    if len(flagged) >= ctx.thresholds.irregular_pulse_min_readings:
        return _finding(ctx, "irregular_pulse", "medium", r, None, None,
                        readings=str(len(flagged)))  # fmt: skip
    return None


def recurring_hypoglycemia(ctx: MemberContext, r: RuleReading, history: History) -> Finding | None:
    """>= 3 low episodes within 7 days (lows less than 2 hours apart are one episode): medium."""
    t = ctx.thresholds
    if not is_low(t, r):
        return None
    lows = sorted(
        h.effective_at for h in history
        if r.effective_at - WEEK < h.effective_at <= r.effective_at and is_low(t, h)
    )  # fmt: skip
    episodes = 0
    last: datetime | None = None
    for at in lows:
        if last is None or at - last >= EPISODE_GAP:
            episodes += 1
        last = at
    if episodes >= t.recurring_hypo_episodes:
        return _finding(ctx, "recurring_hypoglycemia", "medium", r, Decimal(episodes), "episodes")
    return None


def other_person_on_scale(ctx: MemberContext, r: RuleReading, history: History) -> bool:
    """A weight more than 15% from the median of the previous 30 days' weights is someone else."""
    if r.kind != "weight" or r.weight_kg is None:
        return False
    previous = [
        h.weight_kg for h in history
        if h.kind == "weight" and h.weight_kg is not None and h.key != r.key
        and r.effective_at - timedelta(days=30) <= h.effective_at < r.effective_at
    ]  # fmt: skip
    if not previous:
        return False
    median = statistics.median(previous)
    return abs(r.weight_kg - median) > ctx.thresholds.weight_other_person_fraction * median


def weight_data_quality(ctx: MemberContext, r: RuleReading, history: History) -> Finding | None:
    if other_person_on_scale(ctx, r, history):
        return _finding(ctx, "weight_data_quality", "low", r, r.value, r.unit,
                        reason="differs by more than 15% from the 30-day median")  # fmt: skip
    return None


def weight_gain_rapid(ctx: MemberContext, r: RuleReading, history: History) -> Finding | None:
    """Heart failure only: first-of-day weight up >= 2 lb on the previous day's, or >= 5 lb on
    any first-of-day weight of the previous 7 days (AAHFN self-care guidance): high. Days are the
    member's local days; weighings by someone else (see `other_person_on_scale`) are ignored."""
    if r.kind != "weight" or r.weight_kg is None or "heart_failure" not in ctx.conditions:
        return None
    if other_person_on_scale(ctx, r, history):
        return None
    zone = ctx.zone
    firsts: dict[date, Decimal] = {}
    first_key: dict[date, tuple[str, int, int]] = {}
    for h in sorted(history, key=lambda h: h.effective_at):
        if h.kind != "weight" or h.weight_kg is None or h.effective_at > r.effective_at:
            continue
        if other_person_on_scale(ctx, h, history):
            continue
        d = h.effective_at.astimezone(zone).date()
        if d not in firsts:
            firsts[d], first_key[d] = h.weight_kg, h.key
    day = r.effective_at.astimezone(zone).date()
    if first_key.get(day) != r.key:
        return None  # only the first weighing of the day counts
    t = ctx.thresholds
    yesterday = firsts.get(day - timedelta(days=1))
    if yesterday is not None and r.weight_kg - yesterday >= t.weight_gain_day_kg:
        return _gain_finding(ctx, r, r.weight_kg - yesterday, "1 day")
    week = [w for d, w in firsts.items() if day - timedelta(days=7) <= d < day]
    if week and r.weight_kg - min(week) >= t.weight_gain_week_kg:
        return _gain_finding(ctx, r, r.weight_kg - min(week), "7 days")
    return None


def _gain_finding(ctx: MemberContext, r: RuleReading, gain_kg: Decimal, window: str) -> Finding:
    return _finding(ctx, "weight_gain_rapid", "high", r, r.value, r.unit, window=window,
                    gain_lb=f"{gain_kg * _LB_PER_KG:.1f}")  # fmt: skip


Rule = Callable[[MemberContext, RuleReading, History], Finding | None]

#: Every reading-driven rule (no_recent_readings and glucose_trend_rising are time-driven).
READING_RULES: Final[tuple[Rule, ...]] = (
    hypoglycemia, hyperglycemia, bp_severe, hypotension, bp_uncontrolled, irregular_pulse,
    recurring_hypoglycemia, weight_gain_rapid, weight_data_quality,
)  # fmt: skip
#: How far back each kind's history must reach for the rules above.
HISTORY: Final[dict[str, timedelta]] = {
    "glucose": WEEK,
    "blood_pressure": WEEK,
    "weight": timedelta(days=38),  # 7 days of first-of-day weights, each checked on 30 days
}


_BY_KIND: Final[dict[str, tuple[Rule, ...]]] = {
    "glucose": (hypoglycemia, hyperglycemia, recurring_hypoglycemia),
    "blood_pressure": (bp_severe, hypotension, bp_uncontrolled, irregular_pulse),
    "weight": (weight_gain_rapid, weight_data_quality),
}
assert {r for rules in _BY_KIND.values() for r in rules} == set(READING_RULES)  # noqa: S101


def evaluate(ctx: MemberContext, r: RuleReading, history: History) -> list[Finding]:
    """All findings for one reading. `history` holds the member's stored readings (it may
    include later ones: every rule bounds its window by `r.effective_at`)."""
    return [f for rule in _BY_KIND.get(r.kind, ()) if (f := rule(ctx, r, history)) is not None]
