"""Weight Scale Service (0x181D): Weight Measurement 0x2A9D. A pure function over bytes.

Layout (GATT Specification Supplement, Weight Measurement; shared/reference/gatt.md): flags u8
(bit 0 imperial, bit 1 time stamp, bit 2 user id, bit 3 BMI and height), weight u16 (x 0.005 kg,
or x 0.01 lb imperial), [time stamp Date Time], [user id u8, 0xFF unknown], [BMI u16 x 0.1 kg/m2
and height u16 x 0.001 m, or x 0.1 in imperial]. Bit 3 gates BMI AND height together: reading
them as two flags (some parsers do) misplaces every later byte.

Weight 0xFFFF is "Measurement Unsuccessful": decoded as `SpecialValue.NAN` (IEEE 11073's "no
valid result"), never as 327.675 kg. The field's unit is fixed; a Weight Scale Feature (0x2A9E)
resolution only says how coarse the scale's steps are within it. Reserved flag bits are ignored;
trailing bytes are a `MalformedFrame`; a time stamp with year, month or day 0 decodes as None.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final, Literal

from .ieee11073 import (
    DATE_TIME,
    U8,
    U16,
    FieldSpec,
    Frame,
    SpecialValue,
    decimal_from_parts,
    read_fields,
)

WEIGHT_MEASUREMENT: Final = "Weight Measurement (0x2A9D)"

IMPERIAL: Final = 0x01
TIMESTAMP_PRESENT: Final = 0x02
USER_ID_PRESENT: Final = 0x04
BMI_AND_HEIGHT_PRESENT: Final = 0x08

WEIGHT_UNSUCCESSFUL: Final = 0xFFFF
USER_UNKNOWN: Final = 0xFF

_LAYOUT: Final = (
    FieldSpec("weight", U16),
    FieldSpec("timestamp", DATE_TIME, TIMESTAMP_PRESENT),
    FieldSpec("user_id", U8, USER_ID_PRESENT),
    FieldSpec("bmi", U16, BMI_AND_HEIGHT_PRESENT),
    FieldSpec("height", U16, BMI_AND_HEIGHT_PRESENT),
)


@dataclass(frozen=True, slots=True)
class WeightMeasurement:
    """One decoded 0x2A9D frame. Weight is in `unit`, height in `height_unit`."""

    flags: int
    unit: Literal["kg", "lb"]
    weight: Decimal | SpecialValue
    #: Device wall-clock time, no zone; None when absent (flag bit 1) or reported unknown.
    timestamp: datetime | None
    user_id: int | None
    bmi: Decimal | None
    height: Decimal | None

    @property
    def height_unit(self) -> Literal["m", "in"]:
        return "in" if self.unit == "lb" else "m"


def parse_weight_measurement(data: Frame) -> WeightMeasurement:
    """Decode a Weight Measurement (0x2A9D) indication, or raise `GattDecodeError`."""
    flags, v = read_fields(data, WEIGHT_MEASUREMENT, _LAYOUT)
    imperial = bool(flags & IMPERIAL)
    raw_weight: int = v["weight"]
    weight: Decimal | SpecialValue
    if raw_weight == WEIGHT_UNSUCCESSFUL:
        weight = SpecialValue.NAN
    elif imperial:
        weight = decimal_from_parts(raw_weight, -2)  # 0.01 lb
    else:
        weight = decimal_from_parts(raw_weight * 5, -3)  # 0.005 kg
    bmi: int | None = v.get("bmi")
    height: int | None = v.get("height")
    return WeightMeasurement(
        flags=flags,
        unit="lb" if imperial else "kg",
        weight=weight,
        timestamp=v.get("timestamp"),
        user_id=v.get("user_id"),
        bmi=None if bmi is None else decimal_from_parts(bmi, -1),
        height=None if height is None else decimal_from_parts(height, -1 if imperial else -3),
    )
