"""Clinical thresholds: defaults with their guideline, per-care-plan overrides, and floors.

Every threshold is kept in the unit of the guideline *for each unit a device may send*, so a
comparison never flips on conversion rounding: 70 mg/dL and 3.9 mmol/L are both "not below 70".

Sources (shared/reference/clinical.md):
- ADA Standards of Care 2025, section 6: level 1 hypoglycaemia < 70 mg/dL (3.9 mmol/L), level 2
  < 54 mg/dL (3.0 mmol/L).
- Hyperglycaemia: >= 250 mg/dL (13.9 mmol/L) warrants follow-up (ADA sick-day/ketone guidance);
  >= 400 mg/dL (22.2 mmol/L) or a meter HI reading is an emergency-level value.
- ACC/AHA 2017 and AHA/ACC 2025: severe hypertension > 180 systolic and/or > 120 diastolic
  (24.0 / 16.0 kPa); home-BP equivalent of office 140/90 is 135/85 (18.0 / 11.3 kPa).
- Hypotension: systolic < 90 mmHg (12.0 kPa).
- Heart-failure self-care (AAHFN): gain > 2 lb (0.9 kg) in a day or 5 lb (2.3 kg) in a week.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Final

D = Decimal


@dataclass(frozen=True, slots=True)
class PerUnit:
    """One threshold, stated in each unit a device may send."""

    values: dict[str, Decimal]

    def in_unit(self, unit: str) -> Decimal:
        return self.values[unit]


@dataclass(frozen=True, slots=True)
class Thresholds:
    hypo_level1: PerUnit = PerUnit({"mg/dL": D(70), "mmol/L": D("3.9")})
    hypo_level2: PerUnit = PerUnit({"mg/dL": D(54), "mmol/L": D("3.0")})
    hyper_medium: PerUnit = PerUnit({"mg/dL": D(250), "mmol/L": D("13.9")})
    hyper_critical: PerUnit = PerUnit({"mg/dL": D(400), "mmol/L": D("22.2")})
    bp_severe_systolic: PerUnit = PerUnit({"mmHg": D(180), "kPa": D("24.0")})
    bp_severe_diastolic: PerUnit = PerUnit({"mmHg": D(120), "kPa": D("16.0")})
    hypotension_systolic: PerUnit = PerUnit({"mmHg": D(90), "kPa": D("12.0")})
    # Home BP (ACC/AHA 2017 corresponding values), compared on the 7-day mean in mmHg.
    bp_uncontrolled_systolic: Decimal = D(135)
    bp_uncontrolled_diastolic: Decimal = D(85)
    bp_uncontrolled_min_readings: int = 3
    irregular_pulse_min_readings: int = 2
    # Heart failure: kg (lb converted exactly: 2 lb = 0.90718474 kg, 5 lb = 2.26796185 kg).
    weight_gain_day_kg: Decimal = D("0.90718474")
    weight_gain_week_kg: Decimal = D("2.26796185")
    weight_other_person_fraction: Decimal = D("0.15")
    recurring_hypo_episodes: int = 3
    glucose_trend_mgdl_per_week: Decimal = D(5)
    no_recent_readings_days: int = 7


DEFAULTS: Final = Thresholds()

# Overridable parameters: name -> (attribute, unit of the override value or None for counts).
OVERRIDABLE: Final[dict[tuple[str, str], str]] = {
    ("hypoglycemia", "level1_mgdl"): "hypo_level1",
    ("hyperglycemia", "medium_mgdl"): "hyper_medium",
    ("hyperglycemia", "critical_mgdl"): "hyper_critical",
    ("hypotension", "systolic_mmhg"): "hypotension_systolic",
    ("bp_uncontrolled", "systolic_mmhg"): "bp_uncontrolled_systolic",
    ("bp_uncontrolled", "diastolic_mmhg"): "bp_uncontrolled_diastolic",
    ("weight_gain_rapid", "day_kg"): "weight_gain_day_kg",
    ("weight_gain_rapid", "week_kg"): "weight_gain_week_kg",
}

# Floors no care plan can disable or loosen (the safety rule): level-2 hypoglycaemia and
# severe blood pressure always alert at the guideline values. Level 1 may not be set below
# level 2 either.
FLOORED: Final = frozenset({"hypo_level2", "bp_severe_systolic", "bp_severe_diastolic"})
_MGDL_PER_MMOLL: Final = D("18.016")
_MMHG_PER_KPA: Final = D("7.50062")


class OverrideRefused(ValueError):  # noqa: N818 - a verdict on a care-plan edit
    pass


def _per_unit_mgdl(v: Decimal) -> PerUnit:
    return PerUnit({"mg/dL": v, "mmol/L": (v / _MGDL_PER_MMOLL).quantize(D("0.1"))})


def _per_unit_mmhg(v: Decimal) -> PerUnit:
    return PerUnit({"mmHg": v, "kPa": (v / _MMHG_PER_KPA).quantize(D("0.1"))})


def apply_overrides(overrides: list[dict[str, object]]) -> Thresholds:
    """A member's thresholds: the defaults with their care plan's valid overrides applied.

    Invalid or floor-violating entries are skipped here (the engine must always run); they are
    refused with a reason where a person edits the care plan (`validate_override`).
    """
    t = DEFAULTS
    for o in overrides:
        try:
            t = _apply(t, str(o.get("rule")), str(o.get("parameter")), D(str(o.get("value"))))
        except (OverrideRefused, ArithmeticError, ValueError):
            continue
    return t


def validate_override(rule: str, parameter: str, value: Decimal, credential: str) -> None:
    """Raises OverrideRefused with the reason a care-plan override is not allowed."""
    if credential not in ("RN", "CDCES", "RD"):
        raise OverrideRefused("care-plan thresholds are set by clinically credentialed staff")
    _apply(DEFAULTS, rule, parameter, value)


def _apply(t: Thresholds, rule: str, parameter: str, value: Decimal) -> Thresholds:
    attr = OVERRIDABLE.get((rule, parameter))
    if attr is None:
        raise OverrideRefused(f"{rule}.{parameter} cannot be overridden")
    if attr == "hypo_level1":
        if value < DEFAULTS.hypo_level2.in_unit("mg/dL"):
            raise OverrideRefused("level 1 cannot be set below the level-2 floor (54 mg/dL)")
        return replace(t, hypo_level1=_per_unit_mgdl(value))
    if attr == "hyper_medium":
        return replace(t, hyper_medium=_per_unit_mgdl(value))
    if attr == "hyper_critical":
        return replace(t, hyper_critical=_per_unit_mgdl(value))
    if attr == "hypotension_systolic":
        return replace(t, hypotension_systolic=_per_unit_mmhg(value))
    if value <= 0:
        raise OverrideRefused("thresholds are positive")
    decimals: dict[str, Decimal] = {attr: value}
    return replace(t, **decimals)  # type: ignore[arg-type]  # a Decimal field, by OVERRIDABLE
