"""Canonical units and the conversion constants between units, each with its source.

Vigil keeps one canonical unit per quantity: glucose in mg/dL, blood pressure in mmHg, weight in kg.
The reading's original value and unit are always stored beside the normalized value, and clinical
threshold comparisons use the original unit (see alerting), so a conversion never flips a decision.
Conversions are exact Decimal arithmetic; nothing is rounded on the way into the database.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final, Literal

GlucoseUnit = Literal["mg/dL", "mmol/L"]
PressureUnit = Literal["mmHg", "kPa"]
WeightUnit = Literal["kg", "lb"]

#: mg/dL per mmol/L of glucose: the molar mass of glucose, 180.16 g/mol, divided by 10
#: (shared/reference/clinical.md "Units"; Tidepool uses 18.01559, we use the conventional 18.016).
GLUCOSE_MGDL_PER_MMOLL: Final = Decimal("18.016")

#: mmHg per kPa (1 kPa = 7.50062 mmHg; shared/reference/clinical.md "Blood pressure").
MMHG_PER_KPA: Final = Decimal("7.50062")

#: kg per international avoirdupois pound, exact by definition (1959 international yard and pound).
KG_PER_LB: Final = Decimal("0.45359237")


def glucose_to_mgdl(value: Decimal, unit: GlucoseUnit) -> Decimal:
    return value if unit == "mg/dL" else value * GLUCOSE_MGDL_PER_MMOLL


def pressure_to_mmhg(value: Decimal, unit: PressureUnit) -> Decimal:
    return value if unit == "mmHg" else value * MMHG_PER_KPA


def weight_to_kg(value: Decimal, unit: WeightUnit) -> Decimal:
    return value if unit == "kg" else value * KG_PER_LB
