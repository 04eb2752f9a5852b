"""The closed set of reason codes for a rejected (quarantined) reading.

Operators, devices (in acks), the HTTP API and tests rely on these strings; adding one is an API
change and must be documented in docs/readings.md.
"""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    # The payload could not be read as a reading at all.
    MALFORMED_JSON = "malformed_json"
    INVALID_ENCODING = "invalid_encoding"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_AN_OBJECT = "not_an_object"
    # The payload is JSON but not a valid reading.
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_TYPE = "invalid_type"
    UNKNOWN_KIND = "unknown_kind"
    INVALID_UNIT = "invalid_unit"
    INVALID_FLAG = "invalid_flag"
    INVALID_VALUE = "invalid_value"
    INVALID_TIME = "invalid_time"
    VALUE_REQUIRED = "value_required"
    CONFLICTING_FLAGS = "conflicting_flags"
    SPECIAL_VALUE = "special_value"
    # The reading is well formed but physiologically impossible: never clipped, never guessed.
    OUT_OF_RANGE = "out_of_range"
    DIASTOLIC_NOT_BELOW_SYSTOLIC = "diastolic_not_below_systolic"
    # The reading cannot be attributed to a member, or contradicts what is stored.
    UNKNOWN_DEVICE = "unknown_device"
    UNASSIGNED_DEVICE = "unassigned_device"
    DEVICE_REVOKED = "device_revoked"
    DEVICE_MISMATCH = "device_mismatch"
    SEQ_CONFLICT = "seq_conflict"
