"""Glucose Service (0x1808): Glucose Measurement 0x2A18, Glucose Measurement Context 0x2A34, and
pairing a measurement with its context by sequence number. Pure functions over bytes.

Layouts: Bluetooth SIG Glucose Service/Profile v1.0.1 (see shared/reference/gatt.md). Points
where parsers elsewhere go wrong, and what this one does:
- sensor status bit 5 (0x0020) is "result higher than the device can process" (Vigil flag HI) and
  bit 6 (0x0040) "lower" (LO), as Wireshark's dissector and vendor SDKs read them; Nordic's
  Android-BLE-Library GlucoseStatus has the two swapped;
- time offset is signed (s16 minutes), sequence number unsigned (u16);
- concentration and type/sample location exist only when flag bit 1 is set;
- type is the LOW nibble, sample location the HIGH nibble.
Decisions: a base time with year, month or day 0 ("not known") decodes as None; reserved flag
bits are ignored (kept in `flags`); bytes after the last flagged field are a `MalformedFrame`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import IntFlag
from typing import Final, Literal

from .ieee11073 import DATE_TIME, S16, SFLOAT, U8, U16, FieldSpec, Frame, SpecialValue, read_fields

GLUCOSE_MEASUREMENT: Final = "Glucose Measurement (0x2A18)"
GLUCOSE_CONTEXT: Final = "Glucose Measurement Context (0x2A34)"

# Glucose Measurement flags
TIME_OFFSET_PRESENT: Final = 0x01
CONCENTRATION_PRESENT: Final = 0x02  # concentration SFLOAT + type/sample location u8
UNIT_MOL_PER_L: Final = 0x04  # 0: kg/L, 1: mol/L
SENSOR_STATUS_PRESENT: Final = 0x08
CONTEXT_FOLLOWS: Final = 0x10

#: Sample type 10 and sample location 4 both say "control solution" (GLS v1.0.1 type and
#: sample location tables); either marks the reading control_solution, never used clinically.
TYPE_CONTROL_SOLUTION: Final = 10
LOCATION_CONTROL_SOLUTION: Final = 4

GlucoseUnitSI = Literal["kg/L", "mol/L"]
GlucoseReadingUnit = Literal["mg/dL", "mmol/L"]
GlucoseFlagName = Literal["HI", "LO", "control_solution"]
MealName = Literal["before_meal", "after_meal", "fasting", "other", "bedtime"]


class SensorStatus(IntFlag):
    """Sensor Status Annunciation bits (GLS v1.0.1). Bits 12-15 are reserved."""

    BATTERY_LOW = 0x0001
    SENSOR_MALFUNCTION = 0x0002
    SAMPLE_SIZE_INSUFFICIENT = 0x0004
    STRIP_INSERTION_ERROR = 0x0008
    STRIP_TYPE_INCORRECT = 0x0010
    RESULT_TOO_HIGH = 0x0020  # HI: higher than the device can process (Nordic: bit 6, wrongly)
    RESULT_TOO_LOW = 0x0040  # LO: lower than the device can process (Nordic: bit 5, wrongly)
    TEMPERATURE_TOO_HIGH = 0x0080
    TEMPERATURE_TOO_LOW = 0x0100
    READ_INTERRUPTED = 0x0200
    GENERAL_DEVICE_FAULT = 0x0400
    TIME_FAULT = 0x0800


_MEASUREMENT_LAYOUT: Final = (
    FieldSpec("sequence_number", U16),
    FieldSpec("base_time", DATE_TIME),
    FieldSpec("time_offset", S16, TIME_OFFSET_PRESENT),
    FieldSpec("concentration", SFLOAT, CONCENTRATION_PRESENT),
    FieldSpec("type_and_location", U8, CONCENTRATION_PRESENT),
    FieldSpec("sensor_status", U16, SENSOR_STATUS_PRESENT),
)


@dataclass(frozen=True, slots=True)
class GlucoseMeasurement:
    """One decoded 0x2A18 frame, fields as the device sent them."""

    flags: int
    sequence_number: int
    #: Device wall-clock time, no zone; None when the meter reports its year/month/day unknown.
    base_time: datetime | None
    #: Minutes to add to base_time for the user-facing time; None when flag bit 0 is clear.
    time_offset: int | None
    #: In `unit` (kg/L or mol/L, as on the wire); None when flag bit 1 is clear.
    concentration: Decimal | SpecialValue | None
    unit: GlucoseUnitSI
    type: int | None
    sample_location: int | None
    sensor_status: int | None
    context_follows: bool

    @property
    def reading_unit(self) -> GlucoseReadingUnit:
        return "mmol/L" if self.unit == "mol/L" else "mg/dL"

    @property
    def reading_value(self) -> Decimal | SpecialValue | None:
        """The concentration in Vigil's unit: kg/L x 100000 = mg/dL, mol/L x 1000 = mmol/L
        (decimal shifts, so 0xB078 = 120e-5 kg/L is exactly 120 mg/dL)."""
        c = self.concentration
        if not isinstance(c, Decimal):
            return c
        return c.scaleb(3 if self.unit == "mol/L" else 5)

    @property
    def vigil_flags(self) -> tuple[GlucoseFlagName, ...]:
        """Vigil's glucose flags: HI (status bit 5), LO (bit 6), control_solution."""
        status = self.sensor_status or 0
        out: list[GlucoseFlagName] = []
        if status & SensorStatus.RESULT_TOO_HIGH:
            out.append("HI")
        if status & SensorStatus.RESULT_TOO_LOW:
            out.append("LO")
        if self.type == TYPE_CONTROL_SOLUTION or self.sample_location == LOCATION_CONTROL_SOLUTION:
            out.append("control_solution")
        return tuple(out)


def parse_glucose_measurement(data: Frame) -> GlucoseMeasurement:
    """Decode a Glucose Measurement (0x2A18) notification, or raise a `GattDecodeError`."""
    flags, v = read_fields(data, GLUCOSE_MEASUREMENT, _MEASUREMENT_LAYOUT)
    type_location: int | None = v.get("type_and_location")
    return GlucoseMeasurement(
        flags=flags,
        sequence_number=v["sequence_number"],
        base_time=v["base_time"],
        time_offset=v.get("time_offset"),
        concentration=v.get("concentration"),
        unit="mol/L" if flags & UNIT_MOL_PER_L else "kg/L",
        type=None if type_location is None else type_location & 0x0F,
        sample_location=None if type_location is None else type_location >> 4,
        sensor_status=v.get("sensor_status"),
        context_follows=bool(flags & CONTEXT_FOLLOWS),
    )


# --- Glucose Measurement Context 0x2A34 ----------------------------------------------------------

CARBOHYDRATE_PRESENT: Final = 0x01
MEAL_PRESENT: Final = 0x02
TESTER_HEALTH_PRESENT: Final = 0x04
EXERCISE_PRESENT: Final = 0x08
MEDICATION_PRESENT: Final = 0x10
MEDICATION_IN_LITRES: Final = 0x20  # 0: kilograms, 1: litres
HBA1C_PRESENT: Final = 0x40
EXTENDED_FLAGS_PRESENT: Final = 0x80

#: Exercise duration 0xFFFF means "overrun" (longer than the field can count).
EXERCISE_DURATION_OVERRUN: Final = 0xFFFF

#: Meal (GLS v1.0.1): 1 preprandial, 2 postprandial, 3 fasting, 4 casual, 5 bedtime -> Vigil.
MEAL_NAMES: Final[dict[int, MealName]] = {
    1: "before_meal",
    2: "after_meal",
    3: "fasting",
    4: "other",
    5: "bedtime",
}

_CONTEXT_LAYOUT: Final = (
    FieldSpec("sequence_number", U16),
    # Extended flags come right after the sequence number, before every other optional field.
    FieldSpec("extended_flags", U8, EXTENDED_FLAGS_PRESENT),
    FieldSpec("carbohydrate_id", U8, CARBOHYDRATE_PRESENT),
    FieldSpec("carbohydrate", SFLOAT, CARBOHYDRATE_PRESENT),
    FieldSpec("meal", U8, MEAL_PRESENT),
    FieldSpec("tester_and_health", U8, TESTER_HEALTH_PRESENT),
    FieldSpec("exercise_duration", U16, EXERCISE_PRESENT),
    FieldSpec("exercise_intensity", U8, EXERCISE_PRESENT),
    FieldSpec("medication_id", U8, MEDICATION_PRESENT),
    FieldSpec("medication", SFLOAT, MEDICATION_PRESENT),
    FieldSpec("hba1c", SFLOAT, HBA1C_PRESENT),
)


@dataclass(frozen=True, slots=True)
class GlucoseContext:
    """One decoded 0x2A34 frame. Codes are kept as the integers the specification lists."""

    flags: int
    sequence_number: int
    extended_flags: int | None
    #: 1 breakfast, 2 lunch, 3 dinner, 4 snack, 5 drink, 6 supper, 7 brunch.
    carbohydrate_id: int | None
    carbohydrate_kg: Decimal | SpecialValue | None
    #: 1 preprandial, 2 postprandial, 3 fasting, 4 casual, 5 bedtime (see `vigil_meal`).
    meal: int | None
    #: Low nibble: 1 self, 2 health care professional, 3 lab test, 15 not available.
    tester: int | None
    #: High nibble: 1 minor issues, 2 major issues, 3 menses, 4 stress, 5 none, 15 not available.
    health: int | None
    #: Seconds; EXERCISE_DURATION_OVERRUN (0xFFFF) means longer than the field counts.
    exercise_duration_s: int | None
    exercise_intensity_pct: int | None
    #: 1 rapid-acting, 2 short-acting, 3 intermediate-acting, 4 long-acting, 5 pre-mixed insulin.
    medication_id: int | None
    medication: Decimal | SpecialValue | None
    medication_unit: Literal["kg", "L"] | None
    hba1c_pct: Decimal | SpecialValue | None

    @property
    def vigil_meal(self) -> MealName | None:
        return None if self.meal is None else MEAL_NAMES.get(self.meal)


def parse_glucose_context(data: Frame) -> GlucoseContext:
    """Decode a Glucose Measurement Context (0x2A34) notification, or raise `GattDecodeError`."""
    flags, v = read_fields(data, GLUCOSE_CONTEXT, _CONTEXT_LAYOUT)
    tester_health: int | None = v.get("tester_and_health")
    medication_unit: Literal["kg", "L"] | None = None
    if flags & MEDICATION_PRESENT:
        medication_unit = "L" if flags & MEDICATION_IN_LITRES else "kg"
    return GlucoseContext(
        flags=flags,
        sequence_number=v["sequence_number"],
        extended_flags=v.get("extended_flags"),
        carbohydrate_id=v.get("carbohydrate_id"),
        carbohydrate_kg=v.get("carbohydrate"),
        meal=v.get("meal"),
        tester=None if tester_health is None else tester_health & 0x0F,
        health=None if tester_health is None else tester_health >> 4,
        exercise_duration_s=v.get("exercise_duration"),
        exercise_intensity_pct=v.get("exercise_intensity"),
        medication_id=v.get("medication_id"),
        medication=v.get("medication"),
        medication_unit=medication_unit,
        hba1c_pct=v.get("hba1c"),
    )


# --- Pairing measurements with their context -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class GlucoseRecord:
    """A measurement with the context the meter sent for it (None when it sent none)."""

    measurement: GlucoseMeasurement
    context: GlucoseContext | None


@dataclass(slots=True)
class GlucoseRecordMatcher:
    """Pairs each 0x2A18 measurement with its 0x2A34 context by sequence number (sans-IO).

    GLS v1.0.1: a measurement whose flag bit 4 is set is followed by a context notification with
    the same sequence number before the next measurement. Feed notifications in arrival order;
    each call returns the records that are complete. A measurement whose context never comes is
    released without one when the next measurement arrives or on `flush()` (call it when the RACP
    procedure completes). A context that matches no waiting measurement is kept in `unmatched`
    for the caller to log; it never stops the download.
    """

    unmatched: list[GlucoseContext] = field(default_factory=list)
    _pending: GlucoseMeasurement | None = field(default=None, init=False, repr=False)

    def measurement(self, m: GlucoseMeasurement) -> list[GlucoseRecord]:
        out = self.flush()
        if m.context_follows:
            self._pending = m
        else:
            out.append(GlucoseRecord(m, None))
        return out

    def context(self, c: GlucoseContext) -> list[GlucoseRecord]:
        pending = self._pending
        if pending is None or pending.sequence_number != c.sequence_number:
            self.unmatched.append(c)
            return []
        self._pending = None
        return [GlucoseRecord(pending, c)]

    def flush(self) -> list[GlucoseRecord]:
        pending, self._pending = self._pending, None
        return [] if pending is None else [GlucoseRecord(pending, None)]
