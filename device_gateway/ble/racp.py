"""Record Access Control Point (0x2A52) of the Glucose Service: the requests Vigil writes and the
indications it reads back. Pure functions over bytes.

Frame: opcode u8, operator u8, operand. Vigil's requests (GLS v1.0.1):
- report stored records with sequence number >= n: 01 03 01 <u16 n> (">=" is inclusive: ask for
  the last acknowledged sequence number + 1);
- report all stored records: 01 01; report the number of all stored records: 04 01;
- abort the running procedure: 03 00.
Responses carry operator 0 (Null): `06 00 <request opcode> <response code>` and, for a count
request, `05 00 <u16 number of records>`.

Decisions: the record count is a u16 for the Glucose Service (other services define a u32, which
Nordic's generic parser accepts as well as a u8): any other length is a `TruncatedFrame` or, when
too long, a `MalformedFrame`. A response code outside 1-9 is kept as its integer, not refused: the
request opcode it answers is what the caller acts on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from .errors import GattEncodeError, MalformedFrame, TruncatedFrame
from .ieee11073 import Frame

RECORD_ACCESS_CONTROL_POINT: Final = "Record Access Control Point (0x2A52)"


class RacpOpcode(IntEnum):
    REPORT_STORED_RECORDS = 1
    DELETE_STORED_RECORDS = 2
    ABORT_OPERATION = 3
    REPORT_NUMBER_OF_STORED_RECORDS = 4
    NUMBER_OF_STORED_RECORDS_RESPONSE = 5
    RESPONSE_CODE = 6


class RacpOperator(IntEnum):
    NULL = 0
    ALL_RECORDS = 1
    LESS_THAN_OR_EQUAL = 2
    GREATER_THAN_OR_EQUAL = 3
    WITHIN_RANGE = 4
    FIRST_RECORD = 5
    LAST_RECORD = 6


class RacpResponseCode(IntEnum):
    SUCCESS = 1
    OPCODE_NOT_SUPPORTED = 2
    INVALID_OPERATOR = 3
    OPERATOR_NOT_SUPPORTED = 4
    INVALID_OPERAND = 5
    NO_RECORDS_FOUND = 6
    ABORT_UNSUCCESSFUL = 7
    PROCEDURE_NOT_COMPLETED = 8
    OPERAND_NOT_SUPPORTED = 9


#: Filter type, the first operand byte of a filtered request.
FILTER_SEQUENCE_NUMBER: Final = 1
FILTER_USER_FACING_TIME: Final = 2


def _u16(field: str, value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise GattEncodeError(field, f"{value} does not fit a u16 (0-65535)")
    return value.to_bytes(2, "little")


def encode_racp_report_from(seq: int) -> bytes:
    """Report stored records whose sequence number is >= `seq` (inclusive)."""
    return (
        bytes((
            RacpOpcode.REPORT_STORED_RECORDS,
            RacpOperator.GREATER_THAN_OR_EQUAL,
            FILTER_SEQUENCE_NUMBER,
        ))
        + _u16("seq", seq)
    )  # fmt: skip


def encode_racp_report_all() -> bytes:
    return bytes((RacpOpcode.REPORT_STORED_RECORDS, RacpOperator.ALL_RECORDS))


def encode_racp_count_all() -> bytes:
    return bytes((RacpOpcode.REPORT_NUMBER_OF_STORED_RECORDS, RacpOperator.ALL_RECORDS))


def encode_racp_count_from(seq: int) -> bytes:
    """Report the number of stored records whose sequence number is >= `seq`."""
    return (
        bytes((
            RacpOpcode.REPORT_NUMBER_OF_STORED_RECORDS,
            RacpOperator.GREATER_THAN_OR_EQUAL,
            FILTER_SEQUENCE_NUMBER,
        ))
        + _u16("seq", seq)
    )  # fmt: skip


def encode_racp_abort() -> bytes:
    return bytes((RacpOpcode.ABORT_OPERATION, RacpOperator.NULL))


@dataclass(frozen=True, slots=True)
class RacpResponse:
    """A Response Code indication: how the request with `request_opcode` ended."""

    request_opcode: int
    response_code: int

    @property
    def succeeded(self) -> bool:
        return self.response_code == RacpResponseCode.SUCCESS

    @property
    def no_records(self) -> bool:
        """True for "no records found": an incremental download with nothing new, not an error."""
        return self.response_code == RacpResponseCode.NO_RECORDS_FOUND


@dataclass(frozen=True, slots=True)
class RacpRecordCount:
    """A Number of Stored Records Response indication."""

    count: int


#: Response opcode -> its operand fields (name, size in bytes), after the Null operator.
_RESPONSE_OPERANDS: Final[dict[int, tuple[tuple[str, int], ...]]] = {
    RacpOpcode.RESPONSE_CODE: (("request_opcode", 1), ("response_code", 1)),
    RacpOpcode.NUMBER_OF_STORED_RECORDS_RESPONSE: (("number_of_records", 2),),
}


def _malformed(field: str, detail: str) -> MalformedFrame:
    return MalformedFrame(RECORD_ACCESS_CONTROL_POINT, field, detail)


def decode_racp_response(data: Frame) -> RacpResponse | RacpRecordCount:
    """Decode an RACP indication, or raise a `GattDecodeError`."""
    frame = bytes(data)
    if not frame:
        raise TruncatedFrame(RECORD_ACCESS_CONTROL_POINT, "opcode", "empty frame")
    operands = _RESPONSE_OPERANDS.get(frame[0])
    if operands is None:
        raise _malformed("opcode", f"{frame[0]} is not a response opcode (5 or 6)")
    if len(frame) < 2:
        raise TruncatedFrame(RECORD_ACCESS_CONTROL_POINT, "operator", "frame ends after the opcode")
    if frame[1] != RacpOperator.NULL:
        raise _malformed("operator", f"{frame[1]} in a response, which uses Null (0)")
    values: dict[str, int] = {}
    offset = 2
    for name, size in operands:
        if offset + size > len(frame):
            raise TruncatedFrame(
                RECORD_ACCESS_CONTROL_POINT,
                name,
                f"needs bytes {offset}-{offset + size - 1}, the frame has {len(frame)}",
            )
        values[name] = int.from_bytes(frame[offset : offset + size], "little")
        offset += size
    if offset != len(frame):
        raise _malformed("trailing_bytes", f"{len(frame) - offset} bytes after the operand")
    if frame[0] == RacpOpcode.RESPONSE_CODE:
        return RacpResponse(values["request_opcode"], values["response_code"])
    return RacpRecordCount(values["number_of_records"])
