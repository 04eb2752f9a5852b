"""Decoding a payload's bytes into a validated reading (pure, sans-IO).

Size, encoding and JSON shape are checked before validation; every failure is a typed
`ReadingRejected` with a reason code, never an exception that could stop a transport's loop.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from services.domain.readings import (
    READING_ADAPTER,
    BloodPressureReading,
    GlucoseReading,
    ReadingRejected,
    WeightReading,
    parse_reading,
    rejection_from,
)
from services.domain.reasons import ReasonCode

AnyReading = GlucoseReading | BloodPressureReading | WeightReading


def decode_json(raw: bytes, max_bytes: int) -> Any:
    """Bytes -> JSON value, or `ReadingRejected` (too large, not UTF-8, malformed)."""
    if len(raw) > max_bytes:
        raise ReadingRejected(
            ReasonCode.PAYLOAD_TOO_LARGE, f"payload of {len(raw)} bytes exceeds {max_bytes}"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ReadingRejected(ReasonCode.INVALID_ENCODING, "payload is not UTF-8") from None
        # orjson also refuses nesting deeper than 1024 levels here, before any recursion of ours.
        raise ReadingRejected(ReasonCode.MALFORMED_JSON, f"not JSON: {exc.msg}") from None


def reading_from_object(obj: Any, topic_device_id: str | None = None) -> AnyReading:
    """A decoded JSON object -> validated reading. `topic_device_id` (MQTT) fills an omitted
    `device_id` and must agree with a present one."""
    if not isinstance(obj, dict):
        raise ReadingRejected(ReasonCode.NOT_AN_OBJECT, "a reading must be a JSON object")
    if topic_device_id is not None:
        claimed = obj.get("device_id")
        if claimed is None:
            obj = {**obj, "device_id": topic_device_id}
        elif claimed != topic_device_id:
            seq = obj.get("seq")
            raise ReadingRejected(
                ReasonCode.DEVICE_MISMATCH,
                "payload device_id disagrees with the device it arrived from",
                topic_device_id,
                seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None,
            )
    return parse_reading(obj)


def reading_from_bytes(
    raw: bytes, max_bytes: int, topic_device_id: str | None = None
) -> AnyReading:
    """One payload (a reading-file line, an MQTT message with one reading) -> validated reading.

    The common case (a well-formed object with its device_id) takes pydantic's JSON fast path.
    """
    if topic_device_id is None and len(raw) <= max_bytes:
        try:
            return READING_ADAPTER.validate_json(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]["type"]
            if first not in ("json_invalid", "json_type"):
                # Re-decode only to name the device and seq in the rejection.
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    obj = None
                if not isinstance(obj, dict):
                    raise ReadingRejected(
                        ReasonCode.NOT_AN_OBJECT, "a reading must be a JSON object"
                    ) from None
                raise rejection_from(exc, obj) from None
    return reading_from_object(decode_json(raw, max_bytes), topic_device_id)
