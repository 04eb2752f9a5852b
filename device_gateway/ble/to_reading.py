"""Decoded GATT measurements -> Vigil reading payloads (docs/readings.md) as JSON-ready dicts.

The BLE bridge sends these dicts over the same wire format as every other device, so the pipeline
validates, normalizes and quarantines them exactly as it does MQTT or file readings.

- measured_at: GATT times are the meter's wall clock with no zone. They get the hub's zone (`tz`,
  the zone the meter's clock is set to, normally the member's) and are written as RFC 3339 with
  that offset. Glucose: base time + time offset (the user-facing time, GLS v1.0.1).
- Numbers: a Decimal with a non-negative exponent becomes an int, any other becomes the nearest
  float. JSON has no decimal type, and a float's repr (what json/orjson write) is the shortest
  text that reads back as the same float, which for the <= 6 significant digits a GATT field can
  carry is the device's decimal itself: Decimal("5.5") -> 5.5, Decimal("70.005") -> 70.005. Only
  trailing zeros are lost ("2.00" -> 2.0), which no validation or alert depends on.
- Special values (NaN, NRes, +INF, -INF, reserved): the value field carries the special's name,
  which the pipeline quarantines as `special_value`. Exceptions, decided here:
  * glucose flagged HI or LO: the value is omitted (the meter could not measure, and says why);
  * blood pressure mean arterial pressure and pulse: omitted when special. Both are optional in
    Vigil's format, and a cuff that does not compute MAP must still send the field and fills it
    with NaN; quarantining its valid systolic/diastolic for that would lose real readings.
- Blood pressure and weight frames carry no sequence number: the caller passes `seq` (the gateway
  keeps a per-device counter or derives one from the device time so that a resent stored
  measurement maps to the same seq).
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from .blood_pressure import BloodPressureMeasurement
from .errors import ReadingMappingError
from .glucose import GlucoseContext, GlucoseMeasurement
from .ieee11073 import SpecialValue
from .weight import WeightMeasurement

JsonNumber = int | float


def json_number(d: Decimal) -> JsonNumber:
    """A finite Decimal as the JSON number that reads back as the same decimal (see above)."""
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= 0:
        return int(d)
    return float(d)


def _measured_at(local: datetime | None, tz: tzinfo, received_at: datetime | None) -> str:
    if local is not None:
        return local.replace(tzinfo=tz).isoformat(timespec="seconds")
    if received_at is not None:
        if received_at.tzinfo is None:
            raise ReadingMappingError("unknown_device_time", "received_at must carry a zone")
        return received_at.astimezone(tz).isoformat(timespec="seconds")
    raise ReadingMappingError(
        "unknown_device_time", "the device reported no time (or year/month/day unknown)"
    )


def _measure(value: Decimal | SpecialValue) -> JsonNumber | str:
    return value.value if isinstance(value, SpecialValue) else json_number(value)


def glucose_to_payload(
    m: GlucoseMeasurement, context: GlucoseContext | None, device_id: str, tz: tzinfo
) -> dict[str, Any]:
    """A glucose reading payload. `seq` is the measurement's sequence number.

    A glucose record comes from the meter's memory (RACP), so the hub's receive time is not its
    measurement time: a record whose base time is unknown raises `ReadingMappingError`.
    """
    if context is not None and context.sequence_number != m.sequence_number:
        raise ReadingMappingError(
            "context_mismatch",
            f"context seq {context.sequence_number} for measurement seq {m.sequence_number}",
        )
    local = m.base_time
    if local is not None and m.time_offset is not None:
        try:
            local += timedelta(minutes=m.time_offset)
        except OverflowError:
            raise ReadingMappingError(
                "time_out_of_range", "base time + time offset is outside years 1-9999"
            ) from None
    payload: dict[str, Any] = {
        "device_id": device_id,
        "seq": m.sequence_number,
        "kind": "glucose",
        "measured_at": _measured_at(local, tz, None),
        "source": "device",
    }
    flags = m.vigil_flags
    value = m.reading_value
    out_of_meter_range = "HI" in flags or "LO" in flags
    if value is not None and not (out_of_meter_range and isinstance(value, SpecialValue)):
        payload["value"] = _measure(value)
    payload["unit"] = m.reading_unit
    meal = None if context is None else context.vigil_meal
    if meal is not None:
        payload["meal"] = meal
    payload["flags"] = list(flags)
    return payload


def blood_pressure_to_payload(
    m: BloodPressureMeasurement,
    device_id: str,
    tz: tzinfo,
    *,
    seq: int,
    received_at: datetime | None = None,
) -> dict[str, Any]:
    """A blood pressure reading payload.

    `received_at` (aware) stands in for the measurement time only when the cuff sent none; pass
    it only for cuffs that indicate live measurements, never for ones that replay stored ones.
    """
    payload: dict[str, Any] = {
        "device_id": device_id,
        "seq": seq,
        "kind": "blood_pressure",
        "measured_at": _measured_at(m.timestamp, tz, received_at),
        "source": "device",
        "systolic": _measure(m.systolic),
        "diastolic": _measure(m.diastolic),
    }
    if isinstance(m.mean_arterial, Decimal):
        payload["mean_arterial"] = json_number(m.mean_arterial)
    if isinstance(m.pulse_rate, Decimal):
        payload["pulse"] = json_number(m.pulse_rate)
    payload["unit"] = m.unit
    payload["flags"] = list(m.vigil_flags)
    return payload


def weight_to_payload(
    m: WeightMeasurement,
    device_id: str,
    tz: tzinfo,
    *,
    seq: int,
    received_at: datetime | None = None,
) -> dict[str, Any]:
    """A weight reading payload (kg or lb as the scale sent). `received_at` as for blood
    pressure. An unsuccessful measurement (0xFFFF) is sent as "NaN" and quarantined."""
    return {
        "device_id": device_id,
        "seq": seq,
        "kind": "weight",
        "measured_at": _measured_at(m.timestamp, tz, received_at),
        "source": "device",
        "value": _measure(m.weight),
        "unit": m.unit,
        "flags": [],
    }
