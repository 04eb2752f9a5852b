"""GATT decoders as tables of vectors: each asserts the whole decoded object, and each valid frame
is also fed cut short (every shorter prefix -> TruncatedFrame naming a field of the layout) and
with trailing garbage (-> MalformedFrame "trailing_bytes").

Vector sources:
- NORDIC: Nordic Semiconductor's unit tests in Android-BLE-Common-Library c078e25 (2020), the
  same vectors as in Android-BLE-Library 4a86e6c (2026), directory
  ble-common/src/test/java/no/nordicsemi/android/ble/common/callback/:
    glucose/GlucoseMeasurementDataCallbackTest.java
    glucose/GlucoseMeasurementContextDataCallbackTest.java
    bps/BloodPressureMeasurementDataCallbackTest.java
    RecordAccessControlPointDataCallbackTest.java
  and SFLOAT/FLOAT values from Android-BLE-Library ble/src/test/java/no/nordicsemi/android/ble/
  data/DataTest.java. Where a test builds bytes with MutableData.setValue(float, SFLOAT), the
  bytes here are what its sfloatToInt produces (100.0f -> 0x0064; 123.45f -> 0xF4D3 = 123.5, as
  DataTest.setValue_SFLOAT_roundUp asserts; 34.5f -> 0xF159). Nordic has no Weight Measurement
  test. Where Vigil decides differently from Nordic, the vector says so.
- SPEC: built here from the field layouts of the Glucose Service v1.0.1 and the GATT
  Specification Supplement (shared/reference/gatt.md), one per rule a parser can get wrong.
HI/LO: status bit 5 (0x0020) is HI and bit 6 (0x0040) LO per the specification; Nordic's
GlucoseStatus reads them swapped, so no vector here takes its HI/LO meaning from Nordic.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from device_gateway.ble import (
    BloodPressureMeasurement,
    GattDecodeError,
    GattEncodeError,
    GlucoseContext,
    GlucoseMeasurement,
    GlucoseRecord,
    GlucoseRecordMatcher,
    MalformedFrame,
    RacpRecordCount,
    RacpResponse,
    ReadingMappingError,
    SpecialValue,
    TruncatedFrame,
    WeightMeasurement,
    blood_pressure_to_payload,
    decode_float,
    decode_racp_response,
    decode_sfloat,
    encode_racp_abort,
    encode_racp_count_all,
    encode_racp_count_from,
    encode_racp_report_all,
    encode_racp_report_from,
    glucose_to_payload,
    parse_blood_pressure_measurement,
    parse_glucose_context,
    parse_glucose_measurement,
    parse_weight_measurement,
    weight_to_payload,
)
from services.domain.readings import ReadingRejected
from services.domain.reasons import ReasonCode
from services.pipeline.payload import reading_from_bytes
from simulators import ble_frames

NAN, NRES = SpecialValue.NAN, SpecialValue.NRES
PINF, NINF = SpecialValue.POSITIVE_INFINITY, SpecialValue.NEGATIVE_INFINITY
MAX_PAYLOAD = 256 * 1024
T0 = datetime(2024, 3, 15, 8, 30)  # E8 07 03 0F 08 1E 00 in the SPEC vectors


def h(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr)


# --- IEEE 11073 SFLOAT and FLOAT ------------------------------------------------------------------

SFLOAT_VECTORS = [
    # (raw, str(Decimal) or SpecialValue, source)
    (0xF014, "2.0", "gatt.md: precision kept"),
    (0xE0C8, "2.00", "gatt.md: precision kept"),
    (0x0000, "0", "SPEC"),
    (0x001E, "30", "NORDIC GlucoseMeasurementDataCallbackTest"),
    (0xF065, "10.1", "NORDIC DataTest.setValue_SFLOAT_hex"),
    (0xF4D3, "123.5", "NORDIC DataTest.setValue_SFLOAT_roundUp (123.45f)"),
    (0xC4D2, "0.1234", "NORDIC DataTest.setValue_SFLOAT_roundDown (0.12344f)"),
    (0x43E8, "1.000E+7", "NORDIC DataTest.setValue_SFLOAT_high (10000000f)"),
    (0x0FFF, "-1", "SPEC: negative mantissa"),
    (0xFFFF, "-0.1", "SPEC: negative mantissa and exponent"),
    (0xF800, "-204.8", "SPEC: most negative mantissa, exponent -1"),
    (0xF7FF, "204.7", "SPEC: NaN's mantissa under exponent -1 is a number"),
    (0x07FD, "2045", "SPEC: largest positive number at exponent 0"),
    (0x0803, "-2045", "SPEC"),
    (0x8001, "1E-8", "SPEC: smallest exponent"),
    (0x7001, "1E+7", "SPEC: largest exponent"),
    (0xB078, "0.00120", "SPEC: 120 mg/dL as kg/L"),
    (0x07FF, NAN, "SPEC/NORDIC"),
    (0x0800, NRES, "SPEC"),
    (0x07FE, PINF, "SPEC/NORDIC"),
    (0x0802, NINF, "SPEC/NORDIC"),
    (0x0801, SpecialValue.RESERVED, "SPEC"),
]

FLOAT_VECTORS = [
    (0xFE12D687, "12345.67", "NORDIC DataTest.setValue_FLOAT_hex"),
    (0x00000001, "1", "NORDIC DataTest.setValue_FLOAT_basic"),
    (0xFFFFFFFF, "-0.1", "SPEC: negative mantissa and exponent"),
    (0x00800003, "-8388605", "SPEC"),
    (0x007FFFFD, "8388605", "SPEC"),
    (0x80000001, "1E-128", "SPEC: smallest exponent"),
    (0x017FFFFF, "8.388607E+7", "SPEC: NaN's mantissa under exponent 1 is a number"),
    (0x007FFFFF, NAN, "SPEC"),
    (0x00800000, NRES, "SPEC"),
    (0x007FFFFE, PINF, "SPEC"),
    (0x00800002, NINF, "SPEC"),
    (0x00800001, SpecialValue.RESERVED, "SPEC"),
]


def _assert_number(got: Decimal | SpecialValue, expected: str | SpecialValue) -> None:
    if isinstance(expected, SpecialValue):
        assert got is expected
    else:
        assert isinstance(got, Decimal)
        assert str(got) == expected  # the exponent, not only the value


@pytest.mark.parametrize(("raw", "expected", "source"), SFLOAT_VECTORS, ids=str)
def test_sfloat(raw: int, expected: str | SpecialValue, source: str) -> None:
    _assert_number(decode_sfloat(raw), expected)


@pytest.mark.parametrize(("raw", "expected", "source"), FLOAT_VECTORS, ids=str)
def test_float(raw: int, expected: str | SpecialValue, source: str) -> None:
    _assert_number(decode_float(raw), expected)


def test_special_values_carry_the_reading_format_names() -> None:
    assert [s.value for s in SpecialValue] == ["NaN", "NRes", "+INF", "-INF", "reserved"]


@pytest.mark.parametrize(("decode", "raw"), [(decode_sfloat, 0x10000), (decode_sfloat, -1),
                                             (decode_float, 1 << 32)])  # fmt: skip
def test_sfloat_out_of_range_raw_is_a_decode_error(
    decode: Callable[[int], object], raw: int
) -> None:
    with pytest.raises(MalformedFrame):
        decode(raw)


@pytest.mark.parametrize(("raw", "expected", "source"), SFLOAT_VECTORS, ids=str)
def test_simulator_sfloat_encoder_matches(
    raw: int, expected: str | SpecialValue, source: str
) -> None:
    """The simulators' own SFLOAT encoder produces the same codes (it must not import ours)."""
    if isinstance(expected, SpecialValue):
        assert ble_frames.encode_sfloat(expected.value) == raw
    else:
        sign, digits, exponent = Decimal(expected).as_tuple()
        mantissa = int("".join(map(str, digits))) * (-1 if sign else 1)
        assert isinstance(exponent, int)
        assert ble_frames.encode_sfloat((mantissa, exponent)) == raw


@pytest.mark.parametrize(
    ("value", "parts"),
    [("5.50", (550, -2)), ("120", (120, 0)), ("20000", (2000, 1)), ("-0.1", (-1, -1)),
     ("0.00120", (120, -5)), ("1E+8", (10, 7)), ("0E-12", (0, -8))],
)  # fmt: skip
def test_simulator_sfloat_from_decimal_keeps_precision(value: str, parts: tuple[int, int]) -> None:
    assert ble_frames.sfloat_from_decimal(value) == parts


@pytest.mark.parametrize("value", ["2046", "0.12345", "1E+12", "1E-9", "NaN", "Infinity"])
def test_simulator_sfloat_from_decimal_refuses_what_does_not_fit(value: str) -> None:
    with pytest.raises(ble_frames.FrameEncodingError):
        ble_frames.sfloat_from_decimal(value)


# --- Frame vectors ------------------------------------------------------------------------------


def _gm(**kw: Any) -> GlucoseMeasurement:
    base: dict[str, Any] = {
        "flags": 0, "sequence_number": 1, "base_time": T0, "time_offset": None,
        "concentration": None, "unit": "kg/L", "type": None, "sample_location": None,
        "sensor_status": None, "context_follows": False,
    }  # fmt: skip
    return GlucoseMeasurement(**(base | kw))


def _gc(**kw: Any) -> GlucoseContext:
    base: dict[str, Any] = {
        "flags": 0, "sequence_number": 1, "extended_flags": None, "carbohydrate_id": None,
        "carbohydrate_kg": None, "meal": None, "tester": None, "health": None,
        "exercise_duration_s": None, "exercise_intensity_pct": None, "medication_id": None,
        "medication": None, "medication_unit": None, "hba1c_pct": None,
    }  # fmt: skip
    return GlucoseContext(**(base | kw))


def _bpm(**kw: Any) -> BloodPressureMeasurement:
    base: dict[str, Any] = {
        "flags": 0, "unit": "mmHg", "timestamp": None, "pulse_rate": None, "user_id": None,
        "status": None,
    }  # fmt: skip
    return BloodPressureMeasurement(**(base | kw))


def _wm(**kw: Any) -> WeightMeasurement:
    base: dict[str, Any] = {
        "flags": 0, "unit": "kg", "timestamp": None, "user_id": None, "bmi": None, "height": None,
    }  # fmt: skip
    return WeightMeasurement(**(base | kw))


D = Decimal

# (id, frame, expected object, the last field of the frame)
GLUCOSE_VECTORS = [
    pytest.param(
        # NORDIC GlucoseMeasurementDataCallbackTest.onGlucoseMeasurementReceived. Status 0x0105 is
        # battery low, sample size insufficient, temperature too low (Nordic's comment says
        # "device fault"; its assertions agree with these bits). No HI/LO bit is involved.
        h("1B 0100 E307 02 1B 0B 0A 1E FBFF 1E00 12 0501"),
        _gm(
            flags=0x1B,
            base_time=datetime(2019, 2, 27, 11, 10, 30),
            time_offset=-5,
            concentration=D(30),
            type=2,
            sample_location=1,
            sensor_status=0x0105,
            context_follows=True,
        ),
        "sensor_status",
        id="nordic-full",
    ),
    pytest.param(h("00 0100 E807 03 0F 08 1E 00"), _gm(), "base_time", id="spec-minimal"),
    pytest.param(
        # 120 mg/dL sent as 120e-5 kg/L; sample type 1 (capillary whole blood) low nibble,
        # location 1 (finger) high nibble.
        h("02 0201 E807 03 0F 08 1E 00 78B0 11"),
        _gm(flags=0x02, sequence_number=258, concentration=D("0.00120"), type=1, sample_location=1),
        "type_and_location",
        id="spec-mg/dL",
    ),
    pytest.param(
        # 5.5 mmol/L as 55e-4 mol/L, time offset -60 min (signed), type 1 / location 2 (AST):
        # swapping the nibbles would give type 2 / location 1.
        h("07 0300 E807 0C 1F 17 3B 3B C4FF 37C0 21"),
        _gm(
            flags=0x07,
            sequence_number=3,
            base_time=datetime(2024, 12, 31, 23, 59, 59),
            time_offset=-60,
            concentration=D("0.0055"),
            unit="mol/L",
            type=1,
            sample_location=2,
        ),
        "type_and_location",
        id="spec-mmol/L-negative-offset",
    ),
    pytest.param(
        # HI: status bit 5 (0x0020) with +INF. Nordic's GlucoseStatus would call this "lower".
        h("0A 0400 E807 03 0F 08 1E 00 FE07 11 2000"),
        _gm(
            flags=0x0A,
            sequence_number=4,
            concentration=PINF,
            type=1,
            sample_location=1,
            sensor_status=0x0020,
        ),
        "sensor_status",
        id="spec-HI-bit5",
    ),
    pytest.param(
        # LO: status bit 6 (0x0040), no concentration (flag bit 1 clear: none is read).
        h("08 0500 E807 03 0F 08 1E 00 4000"),
        _gm(flags=0x08, sequence_number=5, sensor_status=0x0040),
        "sensor_status",
        id="spec-LO-bit6",
    ),
    pytest.param(
        # Control solution: type 10, location 4.
        h("02 0600 E807 03 0F 08 1E 00 64B0 4A"),
        _gm(flags=0x02, sequence_number=6, concentration=D("0.00100"), type=10, sample_location=4),
        "type_and_location",
        id="spec-control-solution",
    ),
    pytest.param(
        # Year 0 = unknown base time; seq 0xFFFF is 65535 (unsigned); offset 0x8000 is -32768.
        h("01 FFFF 0000 01 01 00 00 00 0080"),
        _gm(flags=0x01, sequence_number=0xFFFF, base_time=None, time_offset=-32768),
        "time_offset",
        id="spec-unknown-year-extremes",
    ),
    pytest.param(
        # Reserved flag bits 5-7 are ignored (kept in flags); bit 4: context follows.
        h("F0 0700 E807 03 0F 08 1E 00"),
        _gm(flags=0xF0, sequence_number=7, context_follows=True),
        "base_time",
        id="spec-reserved-flags",
    ),
    pytest.param(
        h("02 0800 E807 03 0F 08 1E 00 FF07 11"),
        _gm(flags=0x02, sequence_number=8, concentration=NAN, type=1, sample_location=1),
        "type_and_location",
        id="spec-NaN",
    ),
]

CONTEXT_VECTORS = [
    pytest.param(
        # NORDIC GlucoseMeasurementContextDataCallbackTest.onGlucoseMeasurementContextReceived_full:
        # extended flags 0xB3, carbohydrate dinner (3) 100.0, meal casual (4), tester health care
        # professional (2) / health minor issues (1), 60 s at 50 %, long-acting insulin (4)
        # 123.45f (-> 123.5), flag bit 5 litres, HbA1c 34.5 %.
        h("FF 0000 B3 03 6400 04 12 3C00 32 04 D3F4 59F1"),
        _gc(
            flags=0xFF,
            sequence_number=0,
            extended_flags=0xB3,
            carbohydrate_id=3,
            carbohydrate_kg=D(100),
            meal=4,
            tester=2,
            health=1,
            exercise_duration_s=60,
            exercise_intensity_pct=50,
            medication_id=4,
            medication=D("123.5"),
            medication_unit="L",
            hba1c_pct=D("34.5"),
        ),
        "hba1c",
        id="nordic-full",
    ),
    pytest.param(
        # NORDIC ..._empty: flags 0, seq 1. Nordic sends it in a 17-byte buffer and accepts the 14
        # zero bytes after it; Vigil refuses bytes beyond the flagged fields (see
        # MALFORMED nordic-padded-context), so the vector is the 3 meaningful bytes.
        h("00 0100"),
        _gc(),
        "sequence_number",
        id="nordic-empty",
    ),
    pytest.param(
        h("02 0500 01"),
        _gc(flags=0x02, sequence_number=5, meal=1),
        "meal",
        id="spec-meal-preprandial",
    ),
    pytest.param(
        # Tester/health 0xFF (not available), exercise duration 0xFFFF (overrun), medication in kg
        # (bit 5 clear) reported NaN.
        h("1C 0900 FF FFFF 64 01 FF07"),
        _gc(
            flags=0x1C,
            sequence_number=9,
            tester=15,
            health=15,
            exercise_duration_s=0xFFFF,
            exercise_intensity_pct=100,
            medication_id=1,
            medication=NAN,
            medication_unit="kg",
        ),
        "medication",
        id="spec-not-available-overrun-NaN",
    ),
]

BLOOD_PRESSURE_VECTORS = [
    pytest.param(
        # NORDIC BloodPressureMeasurementDataCallbackTest.onBloodPressureMeasurementReceived_full.
        # Its time stamp has year 0 ("not known"): Nordic keeps month/day/time, Vigil decodes a
        # partial date as None (it cannot place a reading in time).
        h("1E 8A00 5800 7800 0000 04 11 14 29 3B 3C00 01 2700"),
        _bpm(
            flags=0x1E,
            systolic=D(138),
            diastolic=D(88),
            mean_arterial=D(120),
            pulse_rate=D(60),
            user_id=1,
            status=0x27,
        ),
        "status",
        id="nordic-full",
    ),
    pytest.param(
        # NORDIC ..._some: kPa, pulse, status 0x12 = cuff too loose + pulse below range.
        h("15 BDF0 0B00 9FF0 3C00 1200"),
        _bpm(
            flags=0x15,
            unit="kPa",
            systolic=D("18.9"),
            diastolic=D(11),
            mean_arterial=D("15.9"),
            pulse_rate=D(60),
            status=0x12,
        ),
        "status",
        id="nordic-some",
    ),
    pytest.param(
        h("00 BDF0 0B00 9FF0"),  # NORDIC ..._minimal
        _bpm(systolic=D("18.9"), diastolic=D(11), mean_arterial=D("15.9")),
        "mean_arterial",
        id="nordic-minimal",
    ),
    pytest.param(
        # MAP not computed (NaN), full time stamp, user 0xFF (unknown), pulse above range (bit 3).
        h("1E 7900 5100 FF07 E807 03 0F 08 1E 00 4800 FF 0800"),
        _bpm(
            flags=0x1E,
            systolic=D(121),
            diastolic=D(81),
            mean_arterial=NAN,
            timestamp=T0,
            pulse_rate=D(72),
            user_id=0xFF,
            status=0x0008,
        ),
        "status",
        id="spec-MAP-NaN-timestamp",
    ),
]

WEIGHT_VECTORS = [
    pytest.param(h("00 B036"), _wm(weight=D("70.000")), "weight", id="spec-SI-minimal"),
    pytest.param(
        h("01 483C"),
        _wm(flags=0x01, unit="lb", weight=D("154.32")),
        "weight",
        id="spec-imperial-minimal",
    ),
    pytest.param(
        # One flag (bit 3) for BMI and height together: 22.9 kg/m2, 1.750 m.
        h("0E B036 E807 03 0F 08 1E 00 02 E500 D606"),
        _wm(
            flags=0x0E,
            weight=D("70.000"),
            timestamp=T0,
            user_id=2,
            bmi=D("22.9"),
            height=D("1.750"),
        ),
        "height",
        id="spec-SI-full",
    ),
    pytest.param(
        h("0F 483C E807 03 0F 08 1E 00 FF E500 B102"),
        _wm(
            flags=0x0F,
            unit="lb",
            weight=D("154.32"),
            timestamp=T0,
            user_id=0xFF,
            bmi=D("22.9"),
            height=D("68.9"),
        ),
        "height",
        id="spec-imperial-full-inches",
    ),
    pytest.param(h("00 FFFF"), _wm(weight=NAN), "weight", id="spec-measurement-unsuccessful"),
    pytest.param(
        h("F0 B036"), _wm(flags=0xF0, weight=D("70.000")), "weight", id="spec-reserved-flags"
    ),
]

RACP_VECTORS = [
    # NORDIC RecordAccessControlPointDataCallbackTest, each response code.
    pytest.param(h("06 00 01 01"), RacpResponse(1, 1), "response_code", id="nordic-success"),
    pytest.param(h("06 00 0C 02"), RacpResponse(12, 2), "response_code", id="nordic-opcode-ns"),
    pytest.param(h("06 00 01 03"), RacpResponse(1, 3), "response_code", id="nordic-inv-operator"),
    pytest.param(h("06 00 02 04"), RacpResponse(2, 4), "response_code", id="nordic-operator-ns"),
    pytest.param(h("06 00 01 05"), RacpResponse(1, 5), "response_code", id="nordic-inv-operand"),
    pytest.param(h("06 00 01 06"), RacpResponse(1, 6), "response_code", id="nordic-no-records"),
    pytest.param(h("06 00 03 07"), RacpResponse(3, 7), "response_code", id="nordic-abort-failed"),
    pytest.param(h("06 00 02 08"), RacpResponse(2, 8), "response_code", id="nordic-not-completed"),
    pytest.param(h("06 00 02 09"), RacpResponse(2, 9), "response_code", id="nordic-operand-ns"),
    pytest.param(h("06 00 01 0A"), RacpResponse(1, 10), "response_code", id="nordic-unknown-code"),
    pytest.param(h("05 00 02 01"), RacpRecordCount(258), "number_of_records", id="nordic-count"),
    pytest.param(h("05 00 00 00"), RacpRecordCount(0), "number_of_records", id="spec-count-0"),
    pytest.param(
        h("05 00 FF FF"), RacpRecordCount(65535), "number_of_records", id="spec-count-max"
    ),
]

PARSERS: dict[str, tuple[Callable[[bytes | bytearray], object], str]] = {
    "glucose": (parse_glucose_measurement, "Glucose Measurement (0x2A18)"),
    "context": (parse_glucose_context, "Glucose Measurement Context (0x2A34)"),
    "blood_pressure": (parse_blood_pressure_measurement, "Blood Pressure Measurement (0x2A35)"),
    "weight": (parse_weight_measurement, "Weight Measurement (0x2A9D)"),
    "racp": (decode_racp_response, "Record Access Control Point (0x2A52)"),
}
FIELDS = {
    "glucose": {"flags", "sequence_number", "base_time", "time_offset", "concentration",
                "type_and_location", "sensor_status"},
    "context": {"flags", "sequence_number", "extended_flags", "carbohydrate_id", "carbohydrate",
                "meal", "tester_and_health", "exercise_duration", "exercise_intensity",
                "medication_id", "medication", "hba1c"},
    "blood_pressure": {"flags", "systolic", "diastolic", "mean_arterial", "timestamp",
                       "pulse_rate", "user_id", "status"},
    "weight": {"flags", "weight", "timestamp", "user_id", "bmi", "height"},
    "racp": {"opcode", "operator", "request_opcode", "response_code", "number_of_records"},
}  # fmt: skip
TABLES = {
    "glucose": GLUCOSE_VECTORS,
    "context": CONTEXT_VECTORS,
    "blood_pressure": BLOOD_PRESSURE_VECTORS,
    "weight": WEIGHT_VECTORS,
    "racp": RACP_VECTORS,
}
ALL_VECTORS = [
    pytest.param(kind, *p.values, id=f"{kind}-{p.id}")
    for kind, table in TABLES.items()
    for p in table
]


@pytest.mark.parametrize(("kind", "frame", "expected", "last_field"), ALL_VECTORS)
def test_vector_decodes_to_the_whole_object(
    kind: str, frame: bytes, expected: object, last_field: str
) -> None:
    parse, _ = PARSERS[kind]
    assert parse(frame) == expected
    assert parse(bytearray(frame)) == expected  # what bleak hands over


@pytest.mark.parametrize(("kind", "frame", "expected", "last_field"), ALL_VECTORS)
def test_every_shorter_prefix_is_truncated(
    kind: str, frame: bytes, expected: object, last_field: str
) -> None:
    parse, characteristic = PARSERS[kind]
    for n in range(len(frame)):
        with pytest.raises(TruncatedFrame) as info:
            parse(frame[:n])
        assert info.value.characteristic == characteristic
        assert info.value.field in FIELDS[kind], (n, info.value)
        if n == 0:
            assert info.value.field in {"flags", "opcode"}
    with pytest.raises(TruncatedFrame) as info:
        parse(frame[:-1])
    assert info.value.field == last_field


@pytest.mark.parametrize("garbage", [b"\x00", b"\xde\xad", b"\xff" * 20])
@pytest.mark.parametrize(("kind", "frame", "expected", "last_field"), ALL_VECTORS)
def test_trailing_garbage_is_malformed(
    kind: str, frame: bytes, expected: object, last_field: str, garbage: bytes
) -> None:
    parse, characteristic = PARSERS[kind]
    with pytest.raises(MalformedFrame) as info:
        parse(frame + garbage)
    assert (info.value.characteristic, info.value.field) == (characteristic, "trailing_bytes")
    assert characteristic in str(info.value)


# Frames whose bytes are all there but whose content the specification does not allow.
MALFORMED = [
    pytest.param("glucose", h("00 0100 E807 0D 0F 08 1E 00"), "base_time.month", id="month-13"),
    pytest.param("glucose", h("00 0100 E807 02 1E 08 1E 00"), "base_time.day", id="feb-30"),
    pytest.param("glucose", h("00 0100 E807 03 20 08 1E 00"), "base_time.day", id="day-32"),
    pytest.param("glucose", h("00 0100 E807 03 0F 18 1E 00"), "base_time.hours", id="hour-24"),
    pytest.param("glucose", h("00 0100 E807 03 0F 08 3C 00"), "base_time.minutes", id="minute-60"),
    pytest.param("glucose", h("00 0100 E807 03 0F 08 1E 3C"), "base_time.seconds", id="second-60"),
    pytest.param("glucose", h("00 0100 2D06 03 0F 08 1E 00"), "base_time.year", id="year-1581"),
    pytest.param(
        "glucose", h("00 0100 0000 0D 00 00 00 00"), "base_time.month", id="unknown-year-month-13"
    ),
    pytest.param(
        "blood_pressure",
        h("02 7900 5100 5F00 E807 0D 0F 08 1E 00"),
        "timestamp.month",
        id="bp-month-13",
    ),
    pytest.param("weight", h("02 B036 E807 04 1F 08 1E 00"), "timestamp.day", id="weight-apr-31"),
    # NORDIC ..._empty sent as Nordic's 17-byte buffer: 14 zero bytes after the flagged fields.
    pytest.param("context", h("00 0100") + bytes(14), "trailing_bytes", id="nordic-padded-context"),
    # NORDIC RACP vectors Vigil refuses: the Glucose Service's record count is a u16, and a
    # request opcode (1) or a non-Null operator is not a response.
    pytest.param("racp", h("05 00 04 03 02 01"), "trailing_bytes", id="nordic-count-uint32"),
    pytest.param("racp", h("05 00 03 02 01"), "trailing_bytes", id="nordic-count-3-bytes"),
    pytest.param("racp", h("01 01"), "opcode", id="nordic-too-short-request"),
    pytest.param("racp", h("01 03 01 02 00"), "opcode", id="nordic-wrong-opcode"),
    pytest.param("racp", h("06 01 01"), "operator", id="nordic-invalid-operator"),
]


@pytest.mark.parametrize(("kind", "frame", "field"), MALFORMED)
def test_malformed_frames(kind: str, frame: bytes, field: str) -> None:
    parse, characteristic = PARSERS[kind]
    with pytest.raises(MalformedFrame) as info:
        parse(frame)
    assert (info.value.characteristic, info.value.field) == (characteristic, field)


TRUNCATED = [
    # NORDIC GlucoseMeasurementDataCallbackTest.onInvalidDataReceived ("time offset missing"):
    # 15 bytes for flags 0x1B that announce 17; the frame ends inside the sensor status.
    pytest.param(
        "glucose",
        h("1B 0000 E207 04 1A 0B 09 1E 1E00 12 0501"),
        "sensor_status",
        id="nordic-glucose-invalid",
    ),
    # NORDIC GlucoseMeasurementContextDataCallbackTest.onInvalidDataReceived: 5 of 17 bytes.
    pytest.param("context", h("FF 0000 B3 03"), "carbohydrate", id="nordic-context-invalid"),
    # NORDIC BloodPressureMeasurementDataCallbackTest.onInvalidDataReceived_toShort / _noTimestamp
    pytest.param("blood_pressure", h("01 0203 0405 06"), "mean_arterial", id="nordic-bp-short"),
    pytest.param("blood_pressure", h("03 0203 0405 0607"), "timestamp", id="nordic-bp-no-ts"),
    # NORDIC RecordAccessControlPointDataCallbackTest.onNumberOfRecordsReceived_uint8: Nordic reads
    # a 1-byte count; the Glucose Service's is a u16.
    pytest.param("racp", h("05 00 01"), "number_of_records", id="nordic-count-uint8"),
    pytest.param("racp", h("06 00 01"), "response_code", id="racp-no-code"),
    pytest.param("glucose", b"", "flags", id="empty"),
]


@pytest.mark.parametrize(("kind", "frame", "field"), TRUNCATED)
def test_truncated_frames(kind: str, frame: bytes, field: str) -> None:
    parse, characteristic = PARSERS[kind]
    with pytest.raises(TruncatedFrame) as info:
        parse(frame)
    assert (info.value.characteristic, info.value.field) == (characteristic, field)
    assert isinstance(info.value, GattDecodeError)
    assert not isinstance(info.value, MalformedFrame)


# --- Helper properties in Vigil's terms ----------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "value", "unit", "flags"),
    [
        (h("02 0201 E807 03 0F 08 1E 00 78B0 11"), "120", "mg/dL", ()),
        (h("07 0300 E807 0C 1F 17 3B 3B C4FF 37C0 21"), "5.5", "mmol/L", ()),
        (h("0A 0400 E807 03 0F 08 1E 00 FE07 11 2000"), PINF, "mg/dL", ("HI",)),
        (h("08 0500 E807 03 0F 08 1E 00 4000"), None, "mg/dL", ("LO",)),
        (h("02 0600 E807 03 0F 08 1E 00 64B0 4A"), "100", "mg/dL", ("control_solution",)),
        (h("00 0100 E807 03 0F 08 1E 00"), None, "mg/dL", ()),
    ],
)
def test_glucose_in_vigil_units_and_flags(
    frame: bytes, value: str | SpecialValue | None, unit: str, flags: tuple[str, ...]
) -> None:
    m = parse_glucose_measurement(frame)
    got = m.reading_value
    assert (str(got) if isinstance(got, Decimal) else got) == value
    assert (m.reading_unit, m.vigil_flags) == (unit, flags)


def test_blood_pressure_status_flags() -> None:
    full = parse_blood_pressure_measurement(h("1E 8A00 5800 7800 0000 04 11 14 29 3B 3C00 01 2700"))
    assert full.vigil_flags == (
        "body_movement", "cuff_fit_problem", "irregular_heartbeat", "improper_position"
    )  # fmt: skip
    some = parse_blood_pressure_measurement(h("15 BDF0 0B00 9FF0 3C00 1200"))
    assert some.vigil_flags == ("cuff_fit_problem", "pulse_out_of_range")


def test_context_meal_names() -> None:
    names = [parse_glucose_context(bytes((0x02, 1, 0, code))).vigil_meal for code in range(7)]
    assert names == [None, "before_meal", "after_meal", "fasting", "other", "bedtime", None]


# --- RACP requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (encode_racp_report_from(0), h("01 03 01 0000")),
        (encode_racp_report_from(0x1234), h("01 03 01 3412")),
        (encode_racp_report_from(0xFFFF), h("01 03 01 FFFF")),
        (encode_racp_count_from(7), h("04 03 01 0700")),
        (encode_racp_report_all(), h("01 01")),
        (encode_racp_count_all(), h("04 01")),
        (encode_racp_abort(), h("03 00")),
    ],
)
def test_racp_requests(frame: bytes, expected: bytes) -> None:
    assert frame == expected


@pytest.mark.parametrize("seq", [-1, 0x10000])
def test_racp_seq_out_of_range(seq: int) -> None:
    with pytest.raises(GattEncodeError) as info:
        encode_racp_report_from(seq)
    assert info.value.field == "seq"


def test_racp_response_properties() -> None:
    assert decode_racp_response(h("06 00 01 01")) == RacpResponse(1, 1)
    done = decode_racp_response(h("06 00 01 01"))
    none = decode_racp_response(h("06 00 01 06"))
    assert isinstance(done, RacpResponse) and isinstance(none, RacpResponse)
    assert (done.succeeded, done.no_records, none.succeeded, none.no_records) == (
        True, False, False, True,
    )  # fmt: skip


# --- Simulator encoders reproduce the vectors ---------------------------------------------------


def test_simulator_frames_reproduce_nordic_bytes() -> None:
    """The simulated peripheral's encoders write exactly what Nordic's tests build."""
    assert ble_frames.blood_pressure_frame(
        systolic=(138, 0), diastolic=(88, 0), mean_arterial=(120, 0),
        timestamp=(0, 4, 17, 20, 41, 59), pulse_rate=(60, 0), user_id=1, status=0b100111,
    ) == h("1E 8A00 5800 7800 0000 04 11 14 29 3B 3C00 01 2700")  # fmt: skip
    assert ble_frames.blood_pressure_frame(
        systolic=(189, -1), diastolic=(11, 0), mean_arterial=(159, -1), kpa=True,
        pulse_rate=(60, 0), status=0b010010,
    ) == h("15 BDF0 0B00 9FF0 3C00 1200")  # fmt: skip
    assert ble_frames.glucose_context_frame(
        sequence_number=0, extended_flags=0xB3, carbohydrate=(3, (100, 0)), meal=4, tester=2,
        health=1, exercise=(60, 50), medication=(4, (1235, -1)), medication_in_litres=True,
        hba1c=(345, -1),
    ) == h("FF 0000 B3 03 6400 04 12 3C00 32 04 D3F4 59F1")  # fmt: skip
    assert ble_frames.glucose_measurement_frame(
        sequence_number=1, base_time=datetime(2019, 2, 27, 11, 10, 30), time_offset=-5,
        concentration=(30, 0), sample_type=2, sample_location=1, sensor_status=0x0105,
        context_follows=True,
    ) == h("1B 0100 E307 02 1B 0B 0A 1E FBFF 1E00 12 0501")  # fmt: skip
    assert ble_frames.weight_frame(
        weight=ble_frames.weight_raw("70", "kg"),
        timestamp=T0,
        user_id=2,
        bmi_and_height=(229, 1750),
    ) == h("0E B036 E807 03 0F 08 1E 00 02 E500 D606")
    assert ble_frames.racp_response_frame(1, 6) == h("06 00 01 06")
    assert ble_frames.racp_count_frame(258) == h("05 00 02 01")


def test_simulator_refuses_flags_that_disagree_with_fields() -> None:
    with pytest.raises(ble_frames.FrameEncodingError):
        ble_frames.weight_frame(weight=1, flags=0x04)  # announces a user id that is not given
    with pytest.raises(ble_frames.FrameEncodingError):
        ble_frames.weight_frame(weight=1, user_id=3, flags=0x00)


# --- Matching a context to its measurement ------------------------------------------------------


def _m(seq: int, follows: bool) -> GlucoseMeasurement:
    return _gm(sequence_number=seq, context_follows=follows, flags=0x10 if follows else 0)


def test_matcher_pairs_context_by_sequence_number() -> None:
    matcher = GlucoseRecordMatcher()
    m1, c1 = _m(1, follows=True), _gc(sequence_number=1, flags=0x02, meal=3)
    assert matcher.measurement(m1) == []
    assert matcher.context(c1) == [GlucoseRecord(m1, c1)]
    assert matcher.flush() == []


def test_matcher_releases_a_measurement_whose_context_never_came() -> None:
    matcher = GlucoseRecordMatcher()
    m1, m2, m3 = _m(1, follows=True), _m(2, follows=False), _m(3, follows=True)
    assert matcher.measurement(m1) == []
    assert matcher.measurement(m2) == [GlucoseRecord(m1, None), GlucoseRecord(m2, None)]
    assert matcher.measurement(m3) == []
    assert matcher.flush() == [GlucoseRecord(m3, None)]
    assert matcher.flush() == []


def test_matcher_keeps_a_context_for_another_seq_aside() -> None:
    matcher = GlucoseRecordMatcher()
    m1, stray, c1 = _m(1, follows=True), _gc(sequence_number=9), _gc(sequence_number=1)
    assert matcher.context(stray) == []
    assert matcher.measurement(m1) == []
    assert matcher.context(_gc(sequence_number=2)) == []
    assert matcher.context(c1) == [GlucoseRecord(m1, c1)]
    assert matcher.unmatched == [stray, _gc(sequence_number=2)]


# --- Decoded measurement -> Vigil reading payload -------------------------------------------------

CET = timezone(timedelta(hours=1))
EST = timezone(timedelta(hours=-5))


def _accepted(payload: dict[str, Any]) -> Any:
    """The payload through the real JSON wire format and the pipeline's parser."""
    return reading_from_bytes(orjson.dumps(payload), MAX_PAYLOAD)


def _rejection(payload: dict[str, Any]) -> ReasonCode:
    with pytest.raises(ReadingRejected) as info:
        _accepted(payload)
    return info.value.reason


def test_glucose_payload_mg_dl_with_meal() -> None:
    m = parse_glucose_measurement(h("12 0201 E807 03 0F 08 1E 00 78B0 11"))
    c = parse_glucose_context(h("02 0201 03"))
    payload = glucose_to_payload(m, c, "gm-1", EST)
    assert payload == {
        "device_id": "gm-1", "seq": 258, "kind": "glucose",
        "measured_at": "2024-03-15T08:30:00-05:00", "source": "device", "value": 120,
        "unit": "mg/dL", "meal": "fasting", "flags": [],
    }  # fmt: skip
    reading = _accepted(payload)
    assert (reading.value, reading.meal, reading.measured_at.utcoffset()) == (
        Decimal(120), "fasting", timedelta(hours=-5),
    )  # fmt: skip


def test_glucose_payload_applies_the_signed_time_offset() -> None:
    # NORDIC vector: 11:10:30 with offset -5 min is 11:05:30 (Nordic asserts minute 5).
    m = parse_glucose_measurement(h("1B 0100 E307 02 1B 0B 0A 1E FBFF 1E00 12 0501"))
    assert glucose_to_payload(m, None, "gm-1", CET)["measured_at"] == "2019-02-27T11:05:30+01:00"
    m = parse_glucose_measurement(h("07 0300 E807 0C 1F 17 3B 3B C4FF 37C0 21"))
    payload = glucose_to_payload(m, None, "gm-1", UTC)
    assert (payload["measured_at"], payload["value"], payload["unit"]) == (
        "2024-12-31T22:59:59+00:00", 5.5, "mmol/L",
    )  # fmt: skip
    assert _accepted(payload).value == Decimal("5.5")


@pytest.mark.parametrize(
    ("frame", "fields", "verdict"),
    [
        # HI with +INF: no value, flag HI; accepted without a range check.
        (h("0A 0400 E807 03 0F 08 1E 00 FE07 11 2000"), {"flags": ["HI"]}, None),
        (h("08 0500 E807 03 0F 08 1E 00 4000"), {"flags": ["LO"]}, None),
        # A special value without HI/LO travels by name and is quarantined as special_value.
        (h("02 0800 E807 03 0F 08 1E 00 FF07 11"), {"value": "NaN", "flags": []},
         ReasonCode.SPECIAL_VALUE),
        (h("02 0600 E807 03 0F 08 1E 00 64B0 4A"), {"value": 100, "flags": ["control_solution"]},
         None),
        # No concentration and no HI/LO: nothing to store, the pipeline says why.
        (h("00 0100 E807 03 0F 08 1E 00"), {"flags": []}, ReasonCode.VALUE_REQUIRED),
    ],
)  # fmt: skip
def test_glucose_payload_values_specials_and_flags(
    frame: bytes, fields: dict[str, Any], verdict: ReasonCode | None
) -> None:
    payload = glucose_to_payload(parse_glucose_measurement(frame), None, "gm-1", UTC)
    assert {k: payload.get(k) for k in fields} == fields
    if "value" not in fields:
        assert "value" not in payload
    if verdict is None:
        _accepted(payload)
    else:
        assert _rejection(payload) == verdict


@pytest.mark.parametrize(
    ("frame", "context", "reason"),
    [
        (h("01 FFFF 0000 01 01 00 00 00 0080"), None, "unknown_device_time"),
        (h("01 0100 0F27 0C 1F 17 3B 00 FF7F"), None, "time_out_of_range"),
        (h("10 0100 E807 03 0F 08 1E 00"), h("02 0200 01"), "context_mismatch"),
    ],
)
def test_glucose_payload_refusals(frame: bytes, context: bytes | None, reason: str) -> None:
    m = parse_glucose_measurement(frame)
    c = None if context is None else parse_glucose_context(context)
    with pytest.raises(ReadingMappingError) as info:
        glucose_to_payload(m, c, "gm-1", UTC)
    assert info.value.reason == reason


def test_blood_pressure_payload() -> None:
    m = parse_blood_pressure_measurement(h("1E 7900 5100 FF07 E807 03 0F 08 1E 00 4800 FF 0800"))
    payload = blood_pressure_to_payload(m, "bp-1", CET, seq=17)
    # MAP reported NaN is left out (optional in Vigil, see to_reading), the reading is kept.
    assert payload == {
        "device_id": "bp-1", "seq": 17, "kind": "blood_pressure",
        "measured_at": "2024-03-15T08:30:00+01:00", "source": "device", "systolic": 121,
        "diastolic": 81, "pulse": 72, "unit": "mmHg", "flags": ["pulse_out_of_range"],
    }  # fmt: skip
    assert _accepted(payload).systolic == Decimal(121)


def test_blood_pressure_payload_kpa_and_received_time() -> None:
    # NORDIC _full has no usable time stamp (year 0): only an explicit receive time places it.
    m = parse_blood_pressure_measurement(h("1E 8A00 5800 7800 0000 04 11 14 29 3B 3C00 01 2700"))
    with pytest.raises(ReadingMappingError) as info:
        blood_pressure_to_payload(m, "bp-1", CET, seq=1)
    assert info.value.reason == "unknown_device_time"
    received = datetime(2024, 3, 15, 7, 0, tzinfo=UTC)
    payload = blood_pressure_to_payload(m, "bp-1", CET, seq=1, received_at=received)
    assert payload["measured_at"] == "2024-03-15T08:00:00+01:00"
    assert payload["mean_arterial"] == 120
    kpa = parse_blood_pressure_measurement(h("17 BDF0 0B00 9FF0 E807 03 0F 08 1E 00 3C00 1200"))
    payload = blood_pressure_to_payload(kpa, "bp-1", CET, seq=2)
    assert {k: payload[k] for k in ("systolic", "diastolic", "mean_arterial", "pulse", "unit")} == {
        "systolic": 18.9, "diastolic": 11, "mean_arterial": 15.9, "pulse": 60, "unit": "kPa",
    }  # fmt: skip
    assert _accepted(payload).systolic == Decimal("18.9")


def test_blood_pressure_special_systolic_is_quarantined() -> None:
    m = parse_blood_pressure_measurement(
        ble_frames.blood_pressure_frame(
            systolic="NRes", diastolic=(80, 0), mean_arterial=(93, 0), timestamp=T0
        )
    )
    payload = blood_pressure_to_payload(m, "bp-1", UTC, seq=3)
    assert payload["systolic"] == "NRes"
    assert _rejection(payload) == ReasonCode.SPECIAL_VALUE


@pytest.mark.parametrize(
    ("frame", "value", "unit", "verdict"),
    [
        (h("0E B036 E807 03 0F 08 1E 00 02 E500 D606"), 70.0, "kg", None),
        (h("0F 483C E807 03 0F 08 1E 00 FF E500 B102"), 154.32, "lb", None),
        (h("02 FFFF E807 03 0F 08 1E 00"), "NaN", "kg", ReasonCode.SPECIAL_VALUE),
    ],
)
def test_weight_payload(
    frame: bytes, value: float | str, unit: str, verdict: ReasonCode | None
) -> None:
    payload = weight_to_payload(parse_weight_measurement(frame), "ws-1", CET, seq=5)
    assert payload == {
        "device_id": "ws-1", "seq": 5, "kind": "weight",
        "measured_at": "2024-03-15T08:30:00+01:00", "source": "device", "value": value,
        "unit": unit, "flags": [],
    }  # fmt: skip
    if verdict is None:
        assert _accepted(payload).value == Decimal(str(value))
    else:
        assert _rejection(payload) == verdict
