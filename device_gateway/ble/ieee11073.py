"""IEEE 11073-20601 numbers (SFLOAT, FLOAT) and the GATT field codecs the measurement
characteristics are built from, with the one generic loop that reads a table of them.

SFLOAT (16 bit): a 4-bit signed exponent over a 12-bit signed mantissa, value = mantissa x
10^exponent. FLOAT (32 bit): an 8-bit signed exponent over a 24-bit signed mantissa. Numbers come
back as `Decimal` built from (mantissa, exponent) exactly, so the device's precision is kept:
0xF014 is Decimal("2.0") and 0xE0C8 is Decimal("2.00").

Special values are `SpecialValue` members, never numbers. IEEE 11073-20601 defines them as whole
codes with a zero exponent (NaN 0x07FF, NRes 0x0800, +INF 0x07FE, -INF 0x0802, reserved 0x0801;
FLOAT 0x007FFFFF, 0x00800000, 0x007FFFFE, 0x00800002, 0x00800001). A large mantissa under a
non-zero exponent (0xF7FF) is an ordinary number (204.7), as in Nordic's Data.getFloatValue.

The codecs and `read_fields` live here rather than in a module of their own because they are the
20601 / GATT basic types (uint8, uint16, sint16, SFLOAT, Date Time): every characteristic module
describes its layout as a tuple of `FieldSpec` and calls `read_fields` once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final

from .errors import MalformedFrame, TruncatedFrame


class SpecialValue(Enum):
    """An IEEE 11073-20601 special value. `.value` is the name a reading payload carries."""

    NAN = "NaN"  # not a number: the device has no valid result
    NRES = "NRes"  # not at this resolution: the result does not fit the representation
    POSITIVE_INFINITY = "+INF"
    NEGATIVE_INFINITY = "-INF"
    RESERVED = "reserved"  # reserved for future use by 20601


_SFLOAT_SPECIALS: Final[dict[int, SpecialValue]] = {
    0x07FF: SpecialValue.NAN,
    0x0800: SpecialValue.NRES,
    0x07FE: SpecialValue.POSITIVE_INFINITY,
    0x0802: SpecialValue.NEGATIVE_INFINITY,
    0x0801: SpecialValue.RESERVED,
}
_FLOAT_SPECIALS: Final[dict[int, SpecialValue]] = {
    0x007FFFFF: SpecialValue.NAN,
    0x00800000: SpecialValue.NRES,
    0x007FFFFE: SpecialValue.POSITIVE_INFINITY,
    0x00800002: SpecialValue.NEGATIVE_INFINITY,
    0x00800001: SpecialValue.RESERVED,
}

Number = Decimal | SpecialValue
#: What a parser accepts: bleak hands notifications over as bytearray.
Frame = bytes | bytearray | memoryview


def decimal_from_parts(mantissa: int, exponent: int) -> Decimal:
    """mantissa x 10^exponent as a Decimal with exactly that exponent, whatever the context."""
    return Decimal((1 if mantissa < 0 else 0, tuple(int(d) for d in str(abs(mantissa))), exponent))


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def _decode(raw: int, bits: int, mantissa_bits: int, specials: dict[int, SpecialValue]) -> Number:
    if not 0 <= raw < 1 << bits:
        raise MalformedFrame(f"IEEE 11073 {bits}-bit float", "raw", f"{raw} is not a u{bits}")
    special = specials.get(raw)
    if special is not None:
        return special
    mantissa = _signed(raw & ((1 << mantissa_bits) - 1), mantissa_bits)
    exponent = _signed(raw >> mantissa_bits, bits - mantissa_bits)
    return decimal_from_parts(mantissa, exponent)


def decode_sfloat(raw: int) -> Decimal | SpecialValue:
    """A 16-bit IEEE 11073-20601 SFLOAT (as the little-endian u16 read from the frame)."""
    return _decode(raw, 16, 12, _SFLOAT_SPECIALS)


def decode_float(raw: int) -> Decimal | SpecialValue:
    """A 32-bit IEEE 11073-20601 FLOAT (as the little-endian u32 read from the frame)."""
    return _decode(raw, 32, 24, _FLOAT_SPECIALS)


# --- GATT field codecs and the generic layout loop -----------------------------------------------


class FieldValueError(Exception):
    """Raised by a codec for a value out of its range; `read_fields` turns it into
    `MalformedFrame` naming the field (and `part`, for a composite such as Date Time)."""

    def __init__(self, part: str, detail: str) -> None:
        super().__init__(part, detail)
        self.part = part
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Codec:
    """How one GATT field type is laid out: its size and how its bytes become a value."""

    name: str
    size: int
    decode: Callable[[bytes], Any]


def _uint(b: bytes) -> int:
    return int.from_bytes(b, "little")


def _sint(b: bytes) -> int:
    return int.from_bytes(b, "little", signed=True)


#: Date Time (GATT Specification Supplement, org.bluetooth.characteristic.date_time): year
#: 1582-9999 or 0 "not known", month 1-12 or 0, day 1-31 or 0, hours 0-23, minutes and seconds 0-59.
_DATE_TIME_LIMITS: Final = (
    ("month", 12),
    ("day", 31),
    ("hours", 23),
    ("minutes", 59),
    ("seconds", 59),
)


def _date_time(b: bytes) -> datetime | None:
    """A Date Time as a naive datetime (the GATT time carries no zone), or None when the year,
    month or day is 0 ("not known"): a partial date cannot place a reading in time."""
    year = _uint(b[0:2])
    if year != 0 and not 1582 <= year <= 9999:
        raise FieldValueError("year", f"{year} is neither 0 (unknown) nor 1582-9999")
    parts = dict(zip((name for name, _ in _DATE_TIME_LIMITS), b[2:7], strict=True))
    for name, high in _DATE_TIME_LIMITS:
        if parts[name] > high:
            raise FieldValueError(name, f"{parts[name]} is above {high}")
    if 0 in (year, parts["month"], parts["day"]):
        return None
    try:
        # Naive on purpose: the device's wall-clock time; to_reading attaches the hub's zone.
        return datetime(year, parts["month"], parts["day"], parts["hours"], parts["minutes"],  # noqa: DTZ001
                        parts["seconds"])  # fmt: skip
    except ValueError:
        raise FieldValueError(
            "day", f"{year}-{parts['month']:02}-{parts['day']:02} is not a calendar date"
        ) from None


U8: Final = Codec("uint8", 1, _uint)
U16: Final = Codec("uint16", 2, _uint)
S16: Final = Codec("sint16", 2, _sint)
SFLOAT: Final = Codec("SFLOAT", 2, lambda b: decode_sfloat(_uint(b)))
DATE_TIME: Final = Codec("date_time", 7, _date_time)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a flags-first characteristic: present always (`flag` 0) or when
    `flags & flag` is non-zero. Fields are read in table order."""

    name: str
    codec: Codec
    flag: int = 0


TRAILING_BYTES: Final = "trailing_bytes"


def read_fields(
    data: Frame, characteristic: str, layout: Sequence[FieldSpec]
) -> tuple[int, dict[str, Any]]:
    """Read a u8 flags byte, then each field of `layout` that the flags announce, to the end.

    Returns (flags, {field name: value}) with absent fields left out. Raises `TruncatedFrame`
    naming the first field that runs past the end, `MalformedFrame` naming a field whose value is
    out of range or "trailing_bytes" when bytes follow the last announced field.
    """
    frame = bytes(data)
    if not frame:
        raise TruncatedFrame(characteristic, "flags", "empty frame")
    flags = frame[0]
    offset = 1
    values: dict[str, Any] = {}
    for spec in layout:
        if spec.flag and not flags & spec.flag:
            continue
        end = offset + spec.codec.size
        if end > len(frame):
            raise TruncatedFrame(
                characteristic,
                spec.name,
                f"{spec.codec.name} needs bytes {offset}-{end - 1}, the frame has {len(frame)}",
            )
        try:
            values[spec.name] = spec.codec.decode(frame[offset:end])
        except FieldValueError as exc:
            raise MalformedFrame(characteristic, f"{spec.name}.{exc.part}", exc.detail) from None
        offset = end
    if offset != len(frame):
        raise MalformedFrame(
            characteristic,
            TRAILING_BYTES,
            f"{len(frame) - offset} bytes after the last field flags 0x{flags:02X} announce",
        )
    return flags, values
