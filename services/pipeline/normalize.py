"""Normalization (pure, sans-IO): one canonical unit per quantity, originals kept, content hash.

The content hash identifies what the device reported, independent of how it was written: the same
instant in another UTC offset notation, keys in another order, 62 vs 62.0, or flags in another
order hash the same. It never includes anything Vigil computed (receive time, corrected time), so
a resend is recognised whatever happened to the device clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from hashlib import blake2b
from typing import NamedTuple

from services.domain.readings import BloodPressureReading, GlucoseReading, WeightReading
from services.domain.units import glucose_to_mgdl, pressure_to_mmhg, weight_to_kg

AnyReading = GlucoseReading | BloodPressureReading | WeightReading


class NormalizedReading(NamedTuple):  # a NamedTuple: built once per reading on the hot path
    device_id: str
    seq: int
    kind: str
    source: str
    measured_at: datetime  # device time as a UTC instant
    measured_offset: int  # the device's UTC offset in minutes, as sent
    flags: tuple[str, ...]
    unit: str  # original unit
    value: Decimal | None  # original glucose or weight value
    systolic: Decimal | None
    diastolic: Decimal | None
    mean_arterial: Decimal | None
    pulse: Decimal | None
    meal: str | None
    glucose_mgdl: Decimal | None
    systolic_mmhg: Decimal | None
    diastolic_mmhg: Decimal | None
    mean_arterial_mmhg: Decimal | None
    weight_kg: Decimal | None
    content_hash: bytes


def _num(d: Decimal | None) -> str:
    # 62, 62.0 and 6.2E+1 are the same reported value. A float's shortest repr is canonical, and
    # distinguishes every value a meter can report (far fewer than 15 significant digits).
    return "" if d is None else repr(float(d))


def normalize(r: AnyReading) -> NormalizedReading:
    measured = r.measured_at
    offset = measured.utcoffset()
    offset_min = int(offset.total_seconds()) // 60 if offset is not None else 0
    utc = measured.astimezone(UTC)
    flags = tuple(sorted(set(r.flags))) if r.flags else ()
    value = systolic = diastolic = mean_arterial = pulse = None
    glucose_mgdl = systolic_mmhg = diastolic_mmhg = mean_arterial_mmhg = weight_kg = None
    meal: str | None = None
    kind = r.kind
    if type(r) is GlucoseReading:  # `type() is` narrows for mypy, and is cheaper than isinstance
        value, meal = r.value, r.meal
        glucose_mgdl = None if value is None else glucose_to_mgdl(value, r.unit)
        canonical = f"g|{utc.timestamp()!r}|{r.source}|{r.unit}|{_num(value)}|{meal}|{flags}"
    elif type(r) is BloodPressureReading:
        systolic, diastolic, mean_arterial, pulse = (
            r.systolic,
            r.diastolic,
            r.mean_arterial,
            r.pulse,
        )
        systolic_mmhg = pressure_to_mmhg(systolic, r.unit)
        diastolic_mmhg = pressure_to_mmhg(diastolic, r.unit)
        if mean_arterial is not None:
            mean_arterial_mmhg = pressure_to_mmhg(mean_arterial, r.unit)
        canonical = (
            f"b|{utc.timestamp()!r}|{r.source}|{r.unit}|{_num(systolic)}|{_num(diastolic)}|"
            f"{_num(mean_arterial)}|{_num(pulse)}|{flags}"
        )
    elif type(r) is WeightReading:
        value = r.value
        weight_kg = weight_to_kg(value, r.unit)
        canonical = f"w|{utc.timestamp()!r}|{r.source}|{r.unit}|{_num(value)}|{flags}"
    else:  # pragma: no cover - the Reading union has exactly these three members
        raise TypeError(f"not a reading: {type(r).__name__}")
    return NormalizedReading(
        device_id=r.device_id,
        seq=r.seq,
        kind=kind,
        source=r.source,
        measured_at=utc,
        measured_offset=offset_min,
        flags=flags,
        unit=r.unit,
        value=value,
        systolic=systolic,
        diastolic=diastolic,
        mean_arterial=mean_arterial,
        pulse=pulse,
        meal=meal,
        glucose_mgdl=glucose_mgdl,
        systolic_mmhg=systolic_mmhg,
        diastolic_mmhg=diastolic_mmhg,
        mean_arterial_mmhg=mean_arterial_mmhg,
        weight_kg=weight_kg,
        content_hash=blake2b(canonical.encode(), digest_size=16).digest(),
    )
