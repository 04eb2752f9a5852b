"""Seeded fuzzing of the GATT decoders against the simulated peripheral's encoders.

1. Round trip: random field values under every flags byte -> simulators.ble_frames encoder ->
   decoder -> the decoded object equals the one expected from the field values (Decimal exponents
   included). Hypothesis draws the flags at random; `test_every_flags_byte_round_trips` walks all
   256 flag values of every characteristic so no combination is left to chance.
2. Mutation: the same valid frames with bytes flipped, cut, deleted or appended -> the decoder
   returns its result type or raises a `GattDecodeError` subclass, nothing else (no IndexError,
   struct.error, ValueError, OverflowError).

The seed is printed (pytest shows it with a failure) and VIGIL_FUZZ_SEED=<n> replays a run:
`VIGIL_FUZZ_SEED=123 .venv/bin/pytest tests/test_ble_fuzz.py`. The example database is off so
the seed alone decides what runs. Budget: 300 examples per hypothesis test.
"""

from __future__ import annotations

import calendar
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from device_gateway.ble import (
    BloodPressureMeasurement,
    GattDecodeError,
    GlucoseContext,
    GlucoseMeasurement,
    RacpRecordCount,
    RacpResponse,
    SpecialValue,
    TruncatedFrame,
    WeightMeasurement,
    decode_racp_response,
    parse_blood_pressure_measurement,
    parse_glucose_context,
    parse_glucose_measurement,
    parse_weight_measurement,
)
from simulators import ble_frames

SEED = int(os.environ.get("VIGIL_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
FUZZ = settings(max_examples=300, deadline=None, database=None)

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _print_seed() -> None:
    """Per test, so pytest shows the seed in the captured output of whichever test fails."""
    print(f"BLE fuzz seed {SEED}: replay with VIGIL_FUZZ_SEED={SEED}")


class Source(Protocol):
    """Where random field values come from: hypothesis (shrinks) or a seeded random.Random."""

    def int(self, low: int, high: int) -> int: ...

    def pick(self, options: Sequence[T]) -> T: ...


class DrawSource:
    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def int(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def pick(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))


class RandomSource:
    def __init__(self, rnd: random.Random) -> None:
        self._rnd = rnd

    def int(self, low: int, high: int) -> int:
        return self._rnd.randint(low, high)

    def pick(self, options: Sequence[T]) -> T:
        return self._rnd.choice(options)


# --- Field values and what the decoder must make of them (stated independently of it) ----------

_SPECIAL_BY_PARTS = {  # (mantissa, exponent) of the 20601 special codes: exponent 0 only
    (2047, 0): SpecialValue.NAN,
    (-2048, 0): SpecialValue.NRES,
    (2046, 0): SpecialValue.POSITIVE_INFINITY,
    (-2046, 0): SpecialValue.NEGATIVE_INFINITY,
    (-2047, 0): SpecialValue.RESERVED,
}


def sfloat(src: Source) -> tuple[ble_frames.SFloat, Decimal | SpecialValue]:
    if src.int(0, 5) == 0:
        name = src.pick(sorted(ble_frames.SFLOAT_SPECIALS))
        return name, SpecialValue(name)
    mantissa = src.int(-2048, 2047)
    exponent = src.pick((0, 0, src.int(-8, 7)))
    special = _SPECIAL_BY_PARTS.get((mantissa, exponent))
    return (mantissa, exponent), special or Decimal(f"{mantissa}E{exponent}")


def date_time(src: Source) -> tuple[tuple[int, int, int, int, int, int], datetime | None]:
    year, month = src.int(1582, 9999), src.int(1, 12)
    day = src.int(1, calendar.monthrange(year, month)[1])
    parts = [year, month, day, src.int(0, 23), src.int(0, 59), src.int(0, 59)]
    if src.int(0, 4) == 0:  # year, month or day "not known"
        parts[src.int(0, 2)] = 0
        return (parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]), None
    return (year, month, day, parts[3], parts[4], parts[5]), datetime(
        year, month, day, parts[3], parts[4], parts[5]
    )


def maybe(flags: int, bit: int, make: Callable[[], T]) -> T | None:
    return make() if flags & bit else None


Case = tuple[bytes, Any]


def glucose_case(src: Source, flags: int) -> Case:
    seq, (time_wire, time) = src.int(0, 0xFFFF), date_time(src)
    offset = maybe(flags, 0x01, lambda: src.int(-0x8000, 0x7FFF))
    conc = maybe(flags, 0x02, lambda: sfloat(src))
    stype = maybe(flags, 0x02, lambda: src.int(0, 15))
    location = maybe(flags, 0x02, lambda: src.int(0, 15))
    status = maybe(flags, 0x08, lambda: src.int(0, 0xFFFF))
    frame = ble_frames.glucose_measurement_frame(
        flags=flags, sequence_number=seq, base_time=time_wire, time_offset=offset,
        concentration=None if conc is None else conc[0], sample_type=stype,
        sample_location=location, sensor_status=status,
    )  # fmt: skip
    return frame, GlucoseMeasurement(
        flags=flags, sequence_number=seq, base_time=time, time_offset=offset,
        concentration=None if conc is None else conc[1], unit="mol/L" if flags & 0x04 else "kg/L",
        type=stype, sample_location=location, sensor_status=status,
        context_follows=bool(flags & 0x10),
    )  # fmt: skip


def context_case(src: Source, flags: int) -> Case:
    seq = src.int(0, 0xFFFF)
    extended = maybe(flags, 0x80, lambda: src.int(0, 255))
    carb = maybe(flags, 0x01, lambda: (src.int(0, 255), sfloat(src)))
    meal = maybe(flags, 0x02, lambda: src.int(0, 255))
    tester = maybe(flags, 0x04, lambda: src.int(0, 15))
    health = maybe(flags, 0x04, lambda: src.int(0, 15))
    exercise = maybe(flags, 0x08, lambda: (src.int(0, 0xFFFF), src.int(0, 255)))
    med = maybe(flags, 0x10, lambda: (src.int(0, 255), sfloat(src)))
    hba1c = maybe(flags, 0x40, lambda: sfloat(src))
    frame = ble_frames.glucose_context_frame(
        flags=flags, sequence_number=seq, extended_flags=extended,
        carbohydrate=None if carb is None else (carb[0], carb[1][0]), meal=meal, tester=tester,
        health=health, exercise=exercise, medication=None if med is None else (med[0], med[1][0]),
        hba1c=None if hba1c is None else hba1c[0],
    )  # fmt: skip
    return frame, GlucoseContext(
        flags=flags, sequence_number=seq, extended_flags=extended,
        carbohydrate_id=None if carb is None else carb[0],
        carbohydrate_kg=None if carb is None else carb[1][1], meal=meal, tester=tester,
        health=health, exercise_duration_s=None if exercise is None else exercise[0],
        exercise_intensity_pct=None if exercise is None else exercise[1],
        medication_id=None if med is None else med[0],
        medication=None if med is None else med[1][1],
        medication_unit=None if med is None else ("L" if flags & 0x20 else "kg"),
        hba1c_pct=None if hba1c is None else hba1c[1],
    )  # fmt: skip


def blood_pressure_case(src: Source, flags: int) -> Case:
    sys_, dia, mean = sfloat(src), sfloat(src), sfloat(src)
    stamp = maybe(flags, 0x02, lambda: date_time(src))
    pulse = maybe(flags, 0x04, lambda: sfloat(src))
    user = maybe(flags, 0x08, lambda: src.int(0, 255))
    status = maybe(flags, 0x10, lambda: src.int(0, 0xFFFF))
    frame = ble_frames.blood_pressure_frame(
        flags=flags, systolic=sys_[0], diastolic=dia[0], mean_arterial=mean[0],
        timestamp=None if stamp is None else stamp[0],
        pulse_rate=None if pulse is None else pulse[0], user_id=user, status=status,
    )  # fmt: skip
    return frame, BloodPressureMeasurement(
        flags=flags, unit="kPa" if flags & 0x01 else "mmHg", systolic=sys_[1], diastolic=dia[1],
        mean_arterial=mean[1], timestamp=None if stamp is None else stamp[1],
        pulse_rate=None if pulse is None else pulse[1], user_id=user, status=status,
    )  # fmt: skip


def weight_case(src: Source, flags: int) -> Case:
    imperial = bool(flags & 0x01)
    raw = src.int(0, 0xFFFF)
    raw = src.pick((raw, raw, raw, ble_frames.WEIGHT_UNSUCCESSFUL))
    stamp = maybe(flags, 0x02, lambda: date_time(src))
    user = maybe(flags, 0x04, lambda: src.int(0, 255))
    bmi_height = maybe(flags, 0x08, lambda: (src.int(0, 0xFFFF), src.int(0, 0xFFFF)))
    frame = ble_frames.weight_frame(
        flags=flags, weight=raw, timestamp=None if stamp is None else stamp[0], user_id=user,
        bmi_and_height=bmi_height,
    )  # fmt: skip
    weight: Decimal | SpecialValue = SpecialValue.NAN
    if raw != 0xFFFF:
        weight = Decimal(f"{raw}E-2") if imperial else Decimal(f"{raw * 5}E-3")
    return frame, WeightMeasurement(
        flags=flags, unit="lb" if imperial else "kg", weight=weight,
        timestamp=None if stamp is None else stamp[1], user_id=user,
        bmi=None if bmi_height is None else Decimal(f"{bmi_height[0]}E-1"),
        height=None if bmi_height is None
        else Decimal(f"{bmi_height[1]}E-1" if imperial else f"{bmi_height[1]}E-3"),
    )  # fmt: skip


def racp_case(src: Source, flags: int) -> Case:
    """RACP responses have no flags byte; `flags` picks the response type."""
    if flags & 1:
        count = src.int(0, 0xFFFF)
        return ble_frames.racp_count_frame(count), RacpRecordCount(count)
    opcode, code = src.int(0, 255), src.int(0, 255)
    return ble_frames.racp_response_frame(opcode, code), RacpResponse(opcode, code)


Parser = Callable[[bytes], object]
CASES: dict[str, tuple[Callable[[Source, int], Case], Parser, type | tuple[type, ...]]] = {
    "glucose": (glucose_case, parse_glucose_measurement, GlucoseMeasurement),
    "context": (context_case, parse_glucose_context, GlucoseContext),
    "blood_pressure": (
        blood_pressure_case, parse_blood_pressure_measurement, BloodPressureMeasurement
    ),
    "weight": (weight_case, parse_weight_measurement, WeightMeasurement),
    "racp": (racp_case, decode_racp_response, (RacpResponse, RacpRecordCount)),
}  # fmt: skip


@st.composite
def cases(draw: st.DrawFn, kind: str) -> Case:
    make = CASES[kind][0]
    return make(DrawSource(draw), draw(st.integers(0, 255)))


def exact(obj: object) -> object:
    """An object's fields with Decimals as text, so "2.0" and "2.00" differ (== would not)."""
    if not is_dataclass(obj):
        return obj
    return {
        f.name: str(v) if isinstance(v, Decimal) else v
        for f in fields(obj)
        for v in [getattr(obj, f.name)]
    }


def assert_round_trip(kind: str, frame: bytes, expected: object) -> None:
    decoded = CASES[kind][1](frame)
    assert decoded == expected, frame.hex(" ")
    assert exact(decoded) == exact(expected), frame.hex(" ")


def assert_decodes_or_refuses(kind: str, frame: bytes) -> None:
    _, parse, result_type = CASES[kind]
    error: GattDecodeError | None = None
    try:
        result = parse(frame)
    except GattDecodeError as exc:
        error = exc
    if error is None:
        assert isinstance(result, result_type), frame.hex(" ")
    else:
        assert error.field, frame.hex(" ")
        assert error.characteristic, frame.hex(" ")


KINDS = list(CASES)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(kind: str) -> None:
    @seed(SEED)
    @FUZZ
    @given(cases(kind))
    def check(case: Case) -> None:
        assert_round_trip(kind, *case)

    check()


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> bytes:
    frame = bytearray(draw(cases(kind))[0])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "flip", "cut", "delete", "append", "insert")))
        if op == "flip" and frame:
            frame[draw(st.integers(0, len(frame) - 1))] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del frame[draw(st.integers(0, len(frame))) :]
        elif op == "delete" and frame:
            del frame[draw(st.integers(0, len(frame) - 1))]
        elif op == "append":
            frame += draw(st.binary(min_size=1, max_size=8))
        elif op == "insert":
            at = draw(st.integers(0, len(frame)))
            frame[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(frame)


@pytest.mark.parametrize("kind", KINDS)
def test_mutated_frames_only_raise_decode_errors(kind: str) -> None:
    @seed(SEED)
    @FUZZ
    @given(mutated(kind))
    def check(frame: bytes) -> None:
        assert_decodes_or_refuses(kind, frame)

    check()


@pytest.mark.parametrize("kind", KINDS)
def test_every_flags_byte_round_trips(kind: str) -> None:
    """All 256 flags values (reserved bits included), 4 random field sets each, each also cut at
    every length and with a byte flipped."""
    rnd = random.Random(f"{SEED}-{kind}")
    src = RandomSource(rnd)
    make = CASES[kind][0]
    for flags in range(256):
        for _ in range(4):
            frame, expected = make(src, flags)
            assert_round_trip(kind, frame, expected)
            for n in range(len(frame)):
                with pytest.raises(TruncatedFrame):
                    CASES[kind][1](frame[:n])
            flipped = bytearray(frame)
            flipped[rnd.randrange(len(frame))] ^= 1 << rnd.randrange(8)
            assert_decodes_or_refuses(kind, bytes(flipped))
