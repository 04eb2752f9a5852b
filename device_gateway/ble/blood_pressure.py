"""Blood Pressure Service (0x1810): Blood Pressure Measurement 0x2A35. A pure function over bytes.

Layout (GATT Specification Supplement, Blood Pressure Measurement; shared/reference/gatt.md):
flags u8, systolic, diastolic and mean arterial pressure SFLOAT (mmHg, or kPa under flag bit 0),
[time stamp Date Time, bit 1], [pulse rate SFLOAT bpm, bit 2], [user id u8, bit 3, 0xFF unknown
user], [measurement status u16, bit 4]. Reserved flag bits are ignored; bytes after the last
flagged field are a `MalformedFrame`; a time stamp with year, month or day 0 ("not known")
decodes as None.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import IntFlag
from typing import Final, Literal

from .ieee11073 import DATE_TIME, SFLOAT, U8, U16, FieldSpec, Frame, SpecialValue, read_fields

BLOOD_PRESSURE_MEASUREMENT: Final = "Blood Pressure Measurement (0x2A35)"

UNIT_KPA: Final = 0x01
TIMESTAMP_PRESENT: Final = 0x02
PULSE_RATE_PRESENT: Final = 0x04
USER_ID_PRESENT: Final = 0x08
STATUS_PRESENT: Final = 0x10

#: User id 0xFF: "unknown user" (a cuff without user management).
USER_UNKNOWN: Final = 0xFF

PressureFlagName = Literal[
    "body_movement",
    "cuff_fit_problem",
    "irregular_heartbeat",
    "pulse_out_of_range",
    "improper_position",
]


class MeasurementStatus(IntFlag):
    """Measurement Status bits. Bits 3-4 are a 2-bit field: 0 pulse in range, 1 above the upper
    limit, 2 below the lower limit, 3 reserved. Bits 6-15 are reserved."""

    BODY_MOVEMENT = 0x0001
    CUFF_TOO_LOOSE = 0x0002
    IRREGULAR_PULSE = 0x0004
    PULSE_RATE_RANGE = 0x0018
    IMPROPER_POSITION = 0x0020


_LAYOUT: Final = (
    FieldSpec("systolic", SFLOAT),
    FieldSpec("diastolic", SFLOAT),
    FieldSpec("mean_arterial", SFLOAT),
    FieldSpec("timestamp", DATE_TIME, TIMESTAMP_PRESENT),
    FieldSpec("pulse_rate", SFLOAT, PULSE_RATE_PRESENT),
    FieldSpec("user_id", U8, USER_ID_PRESENT),
    FieldSpec("status", U16, STATUS_PRESENT),
)

#: Status bit -> Vigil's flag, in the order flags are listed.
_STATUS_FLAGS: Final[tuple[tuple[int, PressureFlagName], ...]] = (
    (MeasurementStatus.BODY_MOVEMENT, "body_movement"),
    (MeasurementStatus.CUFF_TOO_LOOSE, "cuff_fit_problem"),
    (MeasurementStatus.IRREGULAR_PULSE, "irregular_heartbeat"),
    (MeasurementStatus.PULSE_RATE_RANGE, "pulse_out_of_range"),  # any non-zero range value
    (MeasurementStatus.IMPROPER_POSITION, "improper_position"),
)


@dataclass(frozen=True, slots=True)
class BloodPressureMeasurement:
    """One decoded 0x2A35 frame. Pressures are in `unit`; pulse rate in beats per minute."""

    flags: int
    unit: Literal["mmHg", "kPa"]
    systolic: Decimal | SpecialValue
    diastolic: Decimal | SpecialValue
    mean_arterial: Decimal | SpecialValue
    #: Device wall-clock time, no zone; None when absent (flag bit 1) or reported unknown.
    timestamp: datetime | None
    pulse_rate: Decimal | SpecialValue | None
    user_id: int | None
    status: int | None

    @property
    def vigil_flags(self) -> tuple[PressureFlagName, ...]:
        status = self.status or 0
        return tuple(name for mask, name in _STATUS_FLAGS if status & mask)


def parse_blood_pressure_measurement(data: Frame) -> BloodPressureMeasurement:
    """Decode a Blood Pressure Measurement (0x2A35) indication, or raise `GattDecodeError`."""
    flags, v = read_fields(data, BLOOD_PRESSURE_MEASUREMENT, _LAYOUT)
    return BloodPressureMeasurement(
        flags=flags,
        unit="kPa" if flags & UNIT_KPA else "mmHg",
        systolic=v["systolic"],
        diastolic=v["diastolic"],
        mean_arterial=v["mean_arterial"],
        timestamp=v.get("timestamp"),
        pulse_rate=v.get("pulse_rate"),
        user_id=v.get("user_id"),
        status=v.get("status"),
    )
