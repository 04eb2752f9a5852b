"""The reading payload format: validation, reason codes and normalization (no database)."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from services.domain.readings import ReadingRejected
from services.pipeline.normalize import normalize
from services.pipeline.payload import reading_from_bytes

MAX = 256 * 1024


def _g(**kw: object) -> bytes:
    base: dict[str, object] = {
        "device_id": "gm-1", "seq": 1, "kind": "glucose",
        "measured_at": "2026-10-03T07:12:00-05:00", "value": 100, "unit": "mg/dL",
    }  # fmt: skip
    base.update(kw)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def _bp(**kw: object) -> bytes:
    base: dict[str, object] = {
        "device_id": "bp-1", "seq": 1, "kind": "blood_pressure",
        "measured_at": "2026-10-03T07:12:00-05:00", "systolic": 120, "diastolic": 80,
        "unit": "mmHg",
    }  # fmt: skip
    base.update(kw)
    return orjson.dumps(base)


def _w(**kw: object) -> bytes:
    base: dict[str, object] = {
        "device_id": "sc-1", "seq": 1, "kind": "weight",
        "measured_at": "2026-10-03T07:12:00-05:00", "value": 80, "unit": "kg",
    }  # fmt: skip
    base.update(kw)
    return orjson.dumps(base)


REJECTIONS = [
    (_g(value=0), "out_of_range"),
    (_g(value=2000), "out_of_range"),
    (_g(value=5.6, unit="mmol/L", flags=["bogus"]), "invalid_flag"),
    (_g(value=...), "value_required"),
    (_g(value=..., flags=["HI", "LO"]), "conflicting_flags"),
    (_g(unit="mg/dl"), "invalid_unit"),
    (_g(meal="brunch"), "invalid_value"),
    (_g(measured_at="2026-10-03T07:12:00"), "invalid_time"),
    (_g(measured_at="yesterday"), "invalid_time"),
    (_g(seq=-1), "invalid_value"),
    (_g(seq="17"), "invalid_type"),
    (_g(value="62"), "invalid_type"),
    (_g(value="NaN"), "special_value"),
    (_bp(systolic="reserved"), "special_value"),
    (_g(color="blue"), "unknown_field"),
    (_g(kind="ketone"), "unknown_kind"),
    (orjson.dumps({"device_id": "gm-1", "seq": 1}), "missing_field"),
    (_bp(systolic=300, diastolic=20), "out_of_range"),
    (_bp(systolic=120, diastolic=130), "diastolic_not_below_systolic"),
    (_bp(systolic=120, diastolic=120), "diastolic_not_below_systolic"),
    (_bp(flags=["irregular_heartbeat", "HI"]), "invalid_flag"),
    (_w(value=-1), "out_of_range"),
    (_w(value=80, unit="st"), "invalid_unit"),
    (_w(flags=["HI"]), "invalid_flag"),
    (b"{not json", "malformed_json"),
    (b"\xff\xfe\x00binary", "invalid_encoding"),
    (b"[1, 2, 3]", "not_an_object"),
    (b"42", "not_an_object"),
    (b"{" * 5000 + b"}" * 5000, "malformed_json"),
    (b'{"pad": "' + b"x" * MAX + b'"}', "payload_too_large"),
]


@pytest.mark.parametrize(("raw", "reason"), REJECTIONS, ids=[r for _, r in REJECTIONS])
def test_rejections_carry_a_reason_code(raw: bytes, reason: str) -> None:
    with pytest.raises(ReadingRejected) as info:
        reading_from_bytes(raw, MAX)
    assert info.value.reason.value == reason


def test_rejection_names_the_device_and_seq_when_it_can() -> None:
    with pytest.raises(ReadingRejected) as info:
        reading_from_bytes(_g(value=0, seq=44, device_id="gm-9"), MAX)
    assert (info.value.device_id, info.value.seq) == ("gm-9", 44)


def test_hi_lo_readings_need_no_value_and_skip_the_range_check() -> None:
    lo = reading_from_bytes(_g(value=..., flags=["LO"]), MAX)
    hi = reading_from_bytes(_g(value=700, flags=["HI"]), MAX)  # 700: the meter's printed limit
    assert lo.value is None and lo.flags == ("LO",)  # type: ignore[union-attr]
    assert hi.value == 700  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        (_g(value=5.6, unit="mmol/L"), "glucose_mgdl", Decimal("100.9")),
        (_bp(systolic=18.9, diastolic=12, unit="kPa"), "systolic_mmhg", Decimal("141.8")),
        (_w(value=182.4, unit="lb"), "weight_kg", Decimal("82.74")),
    ],
)
def test_normalization_to_canonical_units(raw: bytes, field: str, expected: Decimal) -> None:
    n = normalize(reading_from_bytes(raw, MAX))
    got = getattr(n, field)
    assert round(got, len(str(expected).split(".")[1])) == expected
    # the original value and unit are kept beside the normalized one
    assert n.unit in ("mmol/L", "kPa", "lb")


def test_kpa_ranges_are_checked_in_kpa() -> None:
    # 37.5 kPa = 281 mmHg: out of range whatever the rounding
    with pytest.raises(ReadingRejected) as info:
        reading_from_bytes(_bp(systolic=37.5, diastolic=12, unit="kPa"), MAX)
    assert info.value.reason.value == "out_of_range"


def test_content_hash_ignores_notation_but_not_content() -> None:
    a = normalize(reading_from_bytes(_g(measured_at="2026-10-03T07:12:00-05:00", value=62), MAX))
    b = normalize(
        reading_from_bytes(
            b'{"unit": "mg/dL", "value": 62.0, "measured_at": "2026-10-03T12:12:00Z", '
            b'"kind": "glucose", "seq": 1, "device_id": "gm-1"}',
            MAX,
        )
    )
    c = normalize(reading_from_bytes(_g(value=63), MAX))
    assert a.content_hash == b.content_hash
    assert a.content_hash != c.content_hash
    assert a.measured_offset == -300 and b.measured_offset == 0
