"""The typed errors of `device_gateway.ble`. Nothing else leaves its decoders.

BleError
 ├── GattDecodeError         bytes from a device that are not a valid frame of the characteristic
 │    ├── TruncatedFrame     the frame ended inside a field its flags announce (`field` names it)
 │    └── MalformedFrame     the bytes are all there but inconsistent: a field out of its range
 │                           (month 13, Feb 30, a response opcode that is a request, an operator
 │                           that is not Null in a response) or bytes after the last flagged
 │                           field (`field` is "trailing_bytes")
 ├── GattEncodeError         a RACP request asked for with an operand the wire cannot carry
 └── ReadingMappingError     a decoded measurement that cannot become a Vigil reading
                             (`reason` is one of MAPPING_REASONS)

Every decode error carries `characteristic` (e.g. "Glucose Measurement (0x2A18)") and `field` (the
name used in the decoded dataclass, dotted for a part: "base_time.month"), so a gateway can log
and count bad frames per meter and per field without parsing messages. A truncated frame (often a
radio or MTU problem, worth a retry) and a malformed frame (a firmware that does not follow the
specification) are different classes on purpose.

Reserved-for-future-use flag bits are NOT errors: the Bluetooth Core Specification's convention is
that a sender sets RFU bits to 0 and a receiver ignores them, so a later revision of a
characteristic stays readable. The raw flags are kept in each result. A future field announced by
such a bit would still be refused, as trailing bytes: Vigil cannot know its size or meaning.
"""

from __future__ import annotations

from typing import Final, Literal

#: Why a decoded measurement could not become a reading (closed set, for logs and tests).
MappingReason = Literal["unknown_device_time", "time_out_of_range", "context_mismatch"]
MAPPING_REASONS: Final[frozenset[str]] = frozenset(
    {"unknown_device_time", "time_out_of_range", "context_mismatch"}
)


class BleError(Exception):
    """Root of the Bluetooth LE decoders' errors."""


class GattDecodeError(BleError):
    """A frame that does not decode. Subclasses say whether it was cut short or inconsistent."""

    def __init__(self, characteristic: str, field: str, detail: str) -> None:
        super().__init__(characteristic, field, detail)
        self.characteristic = characteristic
        self.field = field
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.characteristic}: {self.field}: {self.detail}"


class TruncatedFrame(GattDecodeError):  # noqa: N818 - named for what the device sent
    """The frame ended before the end of `field`, which its flags (or the format) require."""


class MalformedFrame(GattDecodeError):  # noqa: N818 - named for what the device sent
    """Every byte is there, but `field` holds a value the specification does not allow, or
    bytes follow the last field the flags announce."""


class GattEncodeError(BleError):
    """A request Vigil was asked to write cannot be encoded (an operand out of its range)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(field, detail)
        self.field = field
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


class ReadingMappingError(BleError):
    """A well-formed measurement that cannot become a Vigil reading payload."""

    def __init__(self, reason: MappingReason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason: MappingReason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"
