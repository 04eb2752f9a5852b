"""Device messages (sans-IO): splitting a readings message into pipeline items, and acks.

A message carries one reading object (device_id optional: the topic says which device) or a
store-and-forward batch `{"readings": [...]}`. Every reading becomes one pipeline item; a message
that is not JSON, not an object or an oversized batch becomes one item that the pipeline
quarantines with its reason. Acks list every seq as accepted, duplicate or rejected (with its
reason code), published only after the commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

import orjson

from services.domain.readings import ReadingRejected
from services.domain.reasons import ReasonCode
from services.pipeline import Incoming, Outcome
from services.pipeline.payload import decode_json, reading_from_object

#: Most readings one message may carry (a meter's store-and-forward backlog is sent in chunks).
MAX_BATCH: Final = 500


def split_readings_message(
    payload: bytes, device_id: str, received_at: datetime, max_bytes: int
) -> list[Incoming]:
    """One MQTT readings message -> pipeline items, decoded where possible.

    Items that fail here carry `raw` for quarantine and are judged by the pipeline again (it
    re-derives the same reason code), so every failure path ends in one place.
    """
    try:
        doc = decode_json(payload, max_bytes)
    except ReadingRejected:
        return [Incoming(payload, received_at, "mqtt", topic_device_id=device_id)]
    if isinstance(doc, dict) and "readings" in doc and "kind" not in doc:
        items = doc["readings"]
        if not isinstance(items, list) or len(doc) != 1 or len(items) > MAX_BATCH:
            return [Incoming(payload, received_at, "mqtt", topic_device_id=device_id)]
        return [_item(obj, device_id, received_at) for obj in items]
    return [_item(doc, device_id, received_at, payload)]


def _item(obj: Any, device_id: str, received_at: datetime, raw: bytes | None = None) -> Incoming:
    raw = raw if raw is not None else orjson.dumps(obj)
    try:
        reading = reading_from_object(obj, device_id)
    except ReadingRejected:
        reading = None  # the pipeline re-validates `raw` and quarantines it with the reason
    return Incoming(raw, received_at, "mqtt", topic_device_id=device_id, reading=reading)


def build_acks(outcomes: Iterable[tuple[str, Outcome]]) -> dict[str, bytes]:
    """(device the message came from, outcome) pairs -> one ack payload per device."""
    acks: dict[str, dict[str, list[Any]]] = {}
    for device_id, o in outcomes:
        ack = acks.setdefault(device_id, {"accepted": [], "duplicate": [], "rejected": []})
        if o.status == "rejected":
            reason = o.reason.value if o.reason else ReasonCode.INVALID_TYPE.value
            ack["rejected"].append({"seq": o.seq, "reason": reason})
        else:
            ack[o.status].append(o.seq)
    return {device: orjson.dumps(ack) for device, ack in acks.items()}
