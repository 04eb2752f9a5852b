"""GATT frames a simulated Bluetooth peripheral sends: Glucose Measurement 0x2A18, Glucose
Measurement Context 0x2A34, Blood Pressure Measurement 0x2A35, Weight Measurement 0x2A9D, and the
Record Access Control Point 0x2A52 responses (plus a parser for the requests it receives).

This is the device side. Like every simulator it imports nothing from Vigil (device_gateway,
services, alerting): the small SFLOAT encoder below duplicates the gateway's decoder on purpose,
so that a round trip through both proves the wire format, not one implementation against itself.

Every encoder takes the field values explicitly. `flags=None` derives the flags byte from which
fields are given; an explicit `flags` is written as is (reserved bits included, so a fuzzer can
cover all 256 combinations) and must agree with the fields given. Values are raw wire values
where the wire has a scale (weight in 0.005 kg / 0.01 lb steps, BMI in 0.1, height in 0.001 m /
0.1 in); SFLOAT fields are a (mantissa, exponent) pair or the name of a special value.
Layouts: Bluetooth SIG Glucose Service v1.0.1 and the GATT Specification Supplement, as in
shared/reference/gatt.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final

#: An SFLOAT field: (mantissa, exponent), value = mantissa x 10^exponent, or a special's name.
SFloat = tuple[int, int] | str
#: A Date Time field: a datetime (its zone, if any, is dropped: the wire has none) or the raw
#: (year, month, day, hours, minutes, seconds), 0 meaning "not known" for year, month and day.
DateTimeValue = datetime | tuple[int, int, int, int, int, int]

#: IEEE 11073-20601 SFLOAT special values, by the names Vigil's reading format uses.
SFLOAT_SPECIALS: Final[dict[str, int]] = {
    "NaN": 0x07FF,
    "NRes": 0x0800,
    "+INF": 0x07FE,
    "-INF": 0x0802,
    "reserved": 0x0801,
}
WEIGHT_UNSUCCESSFUL: Final = 0xFFFF
USER_UNKNOWN: Final = 0xFF


class FrameEncodingError(ValueError):
    """Field values that the frame cannot carry, or that disagree with an explicit flags byte."""


def encode_sfloat(value: SFloat) -> int:
    """An SFLOAT as its u16. Any 12-bit mantissa (-2048..2047) and 4-bit exponent (-8..7) is
    accepted, so a simulator can also produce the special codes by their bit pattern."""
    if isinstance(value, str):
        try:
            return SFLOAT_SPECIALS[value]
        except KeyError:
            raise FrameEncodingError(f"unknown SFLOAT special value {value!r}") from None
    mantissa, exponent = value
    if not -2048 <= mantissa <= 2047 or not -8 <= exponent <= 7:
        raise FrameEncodingError(f"SFLOAT cannot hold {mantissa}e{exponent}")
    return ((exponent & 0x0F) << 12) | (mantissa & 0x0FFF)


def sfloat_from_decimal(value: Decimal | str | int) -> tuple[int, int]:
    """The (mantissa, exponent) that carries `value` exactly, keeping its written precision
    ("5.50" -> (550, -2)); FrameEncodingError if 12 bits of mantissa cannot."""
    sign, digits, exponent = Decimal(value).as_tuple()
    if not isinstance(exponent, int):
        raise FrameEncodingError(f"{value!r} is not a finite number")
    mantissa = int("".join(map(str, digits))) * (-1 if sign else 1)
    # Shed trailing zeros only when the mantissa or exponent does not fit otherwise.
    while (not -2045 <= mantissa <= 2045 or exponent < -8) and mantissa % 10 == 0:
        mantissa, exponent = mantissa // 10, exponent + 1
    while exponent > 7 and -2045 <= mantissa * 10 <= 2045:
        mantissa, exponent = mantissa * 10, exponent - 1
    if not -2045 <= mantissa <= 2045 or not -8 <= exponent <= 7:
        raise FrameEncodingError(f"{value} does not fit an SFLOAT exactly")
    return mantissa, exponent


def _u8(value: int) -> bytes:
    if not 0 <= value <= 0xFF:
        raise FrameEncodingError(f"{value} does not fit a u8")
    return bytes((value,))


def _u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise FrameEncodingError(f"{value} does not fit a u16")
    return value.to_bytes(2, "little")


def _s16(value: int) -> bytes:
    if not -0x8000 <= value <= 0x7FFF:
        raise FrameEncodingError(f"{value} does not fit an s16")
    return value.to_bytes(2, "little", signed=True)


def _sfloat(value: SFloat) -> bytes:
    return encode_sfloat(value).to_bytes(2, "little")


def _date_time(value: DateTimeValue) -> bytes:
    if isinstance(value, datetime):
        parts = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    else:
        parts = value
    year, *rest = parts
    return _u16(year) + b"".join(_u8(p) for p in rest)


def _nibbles(low: int, high: int) -> bytes:
    if not 0 <= low <= 15 or not 0 <= high <= 15:
        raise FrameEncodingError(f"nibbles {low}, {high} must be 0-15")
    return bytes(((high << 4) | low,))


def _frame(flags: int | None, extra_bits: int, fields: Sequence[tuple[int, bytes | None]]) -> bytes:
    """flags byte + the given fields in order. `fields` pairs each field with the flag bit that
    announces it (0: always present) and its encoding (None: absent). `extra_bits` are flag bits
    that announce no field (units, "context follows")."""
    derived = extra_bits
    for bit, encoded in fields:
        if bit == 0 and encoded is None:
            raise FrameEncodingError("a mandatory field is missing")
        if encoded is not None:
            derived |= bit
    if flags is None:
        flags = derived
    else:
        for bit, encoded in fields:
            if bit and bool(flags & bit) != (encoded is not None):
                given = "given" if encoded is not None else "not given"
                raise FrameEncodingError(
                    f"flags 0x{flags:02X} disagree with the field of bit 0x{bit:02X} ({given})"
                )
        if extra_bits & ~flags:
            raise FrameEncodingError(f"flags 0x{flags:02X} lack bits 0x{extra_bits:02X}")
    return _u8(flags) + b"".join(encoded for _, encoded in fields if encoded is not None)


def _opt_u8(value: int | None) -> bytes | None:
    return None if value is None else _u8(value)


def _opt_u16(value: int | None) -> bytes | None:
    return None if value is None else _u16(value)


def _opt_sfloat(value: SFloat | None) -> bytes | None:
    return None if value is None else _sfloat(value)


def _opt_id_and_sfloat(value: tuple[int, SFloat] | None) -> bytes | None:
    return None if value is None else _u8(value[0]) + _sfloat(value[1])


def _opt_date_time(value: DateTimeValue | None) -> bytes | None:
    return None if value is None else _date_time(value)


def glucose_measurement_frame(
    *,
    sequence_number: int,
    base_time: DateTimeValue,
    time_offset: int | None = None,
    concentration: SFloat | None = None,
    sample_type: int | None = None,
    sample_location: int | None = None,
    sensor_status: int | None = None,
    mol_per_l: bool = False,
    context_follows: bool = False,
    flags: int | None = None,
) -> bytes:
    """A Glucose Measurement (0x2A18). Concentration is in kg/L (120 mg/dL -> (120, -5)) or, with
    `mol_per_l`, in mol/L (5.5 mmol/L -> (55, -4)); it goes with sample_type and sample_location
    (type in the low nibble, location in the high one)."""
    sample: bytes | None = None
    if concentration is not None and sample_type is not None and sample_location is not None:
        sample = _sfloat(concentration) + _nibbles(sample_type, sample_location)
    elif (concentration, sample_type, sample_location) != (None, None, None):
        raise FrameEncodingError("concentration, sample_type and sample_location go together")
    return _frame(
        flags,
        (0x04 if mol_per_l else 0) | (0x10 if context_follows else 0),
        [
            (0, _u16(sequence_number)),
            (0, _date_time(base_time)),
            (0x01, None if time_offset is None else _s16(time_offset)),
            (0x02, sample),
            (0x08, _opt_u16(sensor_status)),
        ],
    )


def glucose_context_frame(
    *,
    sequence_number: int,
    extended_flags: int | None = None,
    carbohydrate: tuple[int, SFloat] | None = None,
    meal: int | None = None,
    tester: int | None = None,
    health: int | None = None,
    exercise: tuple[int, int] | None = None,
    medication: tuple[int, SFloat] | None = None,
    medication_in_litres: bool = False,
    hba1c: SFloat | None = None,
    flags: int | None = None,
) -> bytes:
    """A Glucose Measurement Context (0x2A34). carbohydrate = (id, kg), exercise = (duration s,
    intensity %), medication = (id, amount in kg or, with `medication_in_litres`, litres)."""
    tester_health: bytes | None = None
    if tester is not None and health is not None:
        tester_health = _nibbles(tester, health)
    elif (tester, health) != (None, None):
        raise FrameEncodingError("tester and health go together")
    return _frame(
        flags,
        0x20 if medication_in_litres else 0,
        [
            (0, _u16(sequence_number)),
            (0x80, _opt_u8(extended_flags)),
            (0x01, _opt_id_and_sfloat(carbohydrate)),
            (0x02, _opt_u8(meal)),
            (0x04, tester_health),
            (0x08, None if exercise is None else _u16(exercise[0]) + _u8(exercise[1])),
            (0x10, _opt_id_and_sfloat(medication)),
            (0x40, _opt_sfloat(hba1c)),
        ],
    )


def blood_pressure_frame(
    *,
    systolic: SFloat,
    diastolic: SFloat,
    mean_arterial: SFloat,
    kpa: bool = False,
    timestamp: DateTimeValue | None = None,
    pulse_rate: SFloat | None = None,
    user_id: int | None = None,
    status: int | None = None,
    flags: int | None = None,
) -> bytes:
    """A Blood Pressure Measurement (0x2A35), pressures in mmHg or (with `kpa`) kPa."""
    return _frame(
        flags,
        0x01 if kpa else 0,
        [
            (0, _sfloat(systolic)),
            (0, _sfloat(diastolic)),
            (0, _sfloat(mean_arterial)),
            (0x02, _opt_date_time(timestamp)),
            (0x04, _opt_sfloat(pulse_rate)),
            (0x08, _opt_u8(user_id)),
            (0x10, _opt_u16(status)),
        ],
    )


def weight_frame(
    *,
    weight: int,
    imperial: bool = False,
    timestamp: DateTimeValue | None = None,
    user_id: int | None = None,
    bmi_and_height: tuple[int, int] | None = None,
    flags: int | None = None,
) -> bytes:
    """A Weight Measurement (0x2A9D). `weight` is raw: 0.005 kg steps (0.01 lb imperial), or
    WEIGHT_UNSUCCESSFUL; `bmi_and_height` raw: (0.1 kg/m2 steps, 0.001 m or 0.1 in steps)."""
    return _frame(
        flags,
        0x01 if imperial else 0,
        [
            (0, _u16(weight)),
            (0x02, _opt_date_time(timestamp)),
            (0x04, _opt_u8(user_id)),
            (
                0x08,
                None
                if bmi_and_height is None
                else _u16(bmi_and_height[0]) + _u16(bmi_and_height[1]),
            ),
        ],
    )


def weight_raw(value: Decimal | str, unit: str) -> int:
    """A weight in kg or lb as the raw u16 (0.005 kg or 0.01 lb steps); it must be a whole
    number of steps."""
    step = {"kg": Decimal("0.005"), "lb": Decimal("0.01")}.get(unit)
    if step is None:
        raise FrameEncodingError(f"unit {unit!r} is not kg or lb")
    steps, rest = divmod(Decimal(value), step)
    if rest or not 0 <= steps < WEIGHT_UNSUCCESSFUL:
        raise FrameEncodingError(f"{value} {unit} is not a u16 number of {step} {unit} steps")
    return int(steps)


# --- Record Access Control Point (0x2A52) --------------------------------------------------------

RACP_REPORT_STORED_RECORDS: Final = 1
RACP_DELETE_STORED_RECORDS: Final = 2
RACP_ABORT: Final = 3
RACP_REPORT_NUMBER: Final = 4
RACP_NUMBER_RESPONSE: Final = 5
RACP_RESPONSE_CODE: Final = 6
RACP_SUCCESS: Final = 1
RACP_OPCODE_NOT_SUPPORTED: Final = 2
RACP_INVALID_OPERATOR: Final = 3
RACP_OPERATOR_NOT_SUPPORTED: Final = 4
RACP_INVALID_OPERAND: Final = 5
RACP_NO_RECORDS_FOUND: Final = 6
RACP_ABORT_UNSUCCESSFUL: Final = 7
RACP_PROCEDURE_NOT_COMPLETED: Final = 8
RACP_OPERAND_NOT_SUPPORTED: Final = 9


def racp_response_frame(request_opcode: int, response_code: int) -> bytes:
    """Response Code indication: 06 00 <request opcode> <response code>."""
    return bytes((RACP_RESPONSE_CODE, 0)) + _u8(request_opcode) + _u8(response_code)


def racp_count_frame(count: int) -> bytes:
    """Number of Stored Records Response indication: 05 00 <u16 count>."""
    return bytes((RACP_NUMBER_RESPONSE, 0)) + _u16(count)


@dataclass(frozen=True, slots=True)
class RacpRequest:
    """A request the peripheral received: opcode, operator and the raw operand bytes."""

    opcode: int
    operator: int
    operand: bytes

    @property
    def min_sequence_number(self) -> int | None:
        """n of a ">= n by sequence number" request (operator 3, filter type 1), else None."""
        if self.operator == 3 and len(self.operand) == 3 and self.operand[0] == 1:
            return int.from_bytes(self.operand[1:3], "little")
        return None


def parse_racp_request(data: bytes) -> RacpRequest:
    """Split a written RACP value. A peripheral answers a too-short one with "invalid operator"
    (GLS v1.0.1 leaves the details to the device); this raises FrameEncodingError for it."""
    if len(data) < 2:
        raise FrameEncodingError(f"an RACP request has at least 2 bytes, got {len(data)}")
    return RacpRequest(data[0], data[1], bytes(data[2:]))
