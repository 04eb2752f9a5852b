"""Readings as devices and apps send them: the reading-file / MQTT / HTTP payload format.

`Reading` is a discriminated union on `kind` (glucose | blood_pressure | weight). Parsing validates
shape, units, flags and physiological plausibility; a reading that fails gets a typed
`ReadingRejected` with a closed `ReasonCode` and is quarantined by the pipeline, never clipped.

Plausibility ranges are per unit (compared in the unit the device used), wide enough for every real
measurement and narrow enough to catch a misparsed frame or a typo. They are not clinical
thresholds: those live in alerting/ and are configurable per care plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .reasons import ReasonCode
from .units import GlucoseUnit, PressureUnit, WeightUnit

Source = Literal["device", "manual", "cgm"]
Meal = Literal["fasting", "before_meal", "after_meal", "bedtime", "other"]
GlucoseFlag = Literal["HI", "LO", "control_solution"]
PressureFlag = Literal[
    "irregular_heartbeat",
    "body_movement",
    "cuff_fit_problem",
    "improper_position",
    "pulse_out_of_range",
]


#: IEEE 11073-20601 special values a Bluetooth meter can report instead of a number. A relay
#: forwards them by name (JSON has no NaN); they are quarantined as `special_value`, never stored
#: as numbers.
SPECIAL_VALUES: Final = frozenset({"NaN", "NRes", "+INF", "-INF", "reserved"})


def _json_number(v: Any) -> Any:
    """Clinical values must be JSON numbers: "62" or true is a wrong type, not a value."""
    if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v in SPECIAL_VALUES:
        raise PydanticCustomError(
            ReasonCode.SPECIAL_VALUE.value, "the device reported {special}, not a number",
            {"special": v},
        )  # fmt: skip
    raise PydanticCustomError(ReasonCode.INVALID_TYPE.value, "must be a JSON number")


#: A measured value: a finite JSON number, kept exactly as a Decimal.
Measure = Annotated[Decimal, BeforeValidator(_json_number), Field(allow_inf_nan=False)]

DeviceId = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]
#: Sequence numbers are unsigned and fit PostgreSQL's bigint.
Seq = Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)]

# Plausibility limits by unit: (low, high), inclusive. A meter reads 10-600 mg/dL at most (ISO
# 15197 meters report HI/LO outside their range); 1000 mg/dL leaves room for lab-grade devices.
GLUCOSE_RANGE: Final[dict[str, tuple[Decimal, Decimal]]] = {
    "mg/dL": (Decimal(10), Decimal(1000)),
    "mmol/L": (Decimal("0.5"), Decimal("55.5")),
}
# Oscillometric cuffs measure roughly 40-280 mmHg systolic; the kPa limits are the same pressures
# (/ 7.50062) rounded outward.
SYSTOLIC_RANGE: Final[dict[str, tuple[Decimal, Decimal]]] = {
    "mmHg": (Decimal(40), Decimal(280)),
    "kPa": (Decimal("5.3"), Decimal("37.4")),
}
DIASTOLIC_RANGE: Final[dict[str, tuple[Decimal, Decimal]]] = {
    "mmHg": (Decimal(25), Decimal(200)),
    "kPa": (Decimal("3.3"), Decimal("26.7")),
}
MEAN_ARTERIAL_RANGE: Final = DIASTOLIC_RANGE
PULSE_RANGE: Final = (Decimal(20), Decimal(300))  # beats per minute
# Bluetooth scales report up to 327.675 kg (u16 x 0.005 kg); 1 kg admits infant scales.
WEIGHT_RANGE: Final[dict[str, tuple[Decimal, Decimal]]] = {
    "kg": (Decimal(1), Decimal(400)),
    "lb": (Decimal("2.2"), Decimal(882)),
}


def _check_range(field: str, value: Decimal, bounds: tuple[Decimal, Decimal], unit: str) -> None:
    low, high = bounds
    if not low <= value <= high:
        raise PydanticCustomError(
            ReasonCode.OUT_OF_RANGE.value,
            "{field} {value} {unit} is outside the plausible range {low}-{high} {unit}",
            {"field": field, "value": str(value), "unit": unit, "low": str(low), "high": str(high)},
        )


class _ReadingBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    device_id: DeviceId
    seq: Seq
    measured_at: AwareDatetime
    source: Source = "device"


class GlucoseReading(_ReadingBase):
    kind: Literal["glucose"]
    value: Measure | None = None
    unit: GlucoseUnit
    meal: Meal | None = None
    flags: tuple[GlucoseFlag, ...] = ()

    @model_validator(mode="after")
    def _plausible(self) -> GlucoseReading:
        out_of_meter_range = "HI" in self.flags or "LO" in self.flags
        if "HI" in self.flags and "LO" in self.flags:
            raise PydanticCustomError(
                ReasonCode.CONFLICTING_FLAGS.value, "a reading cannot be both HI and LO"
            )
        if self.value is None:
            if not out_of_meter_range:
                raise PydanticCustomError(
                    ReasonCode.VALUE_REQUIRED.value, "value is required unless flagged HI or LO"
                )
        elif not out_of_meter_range:  # HI/LO: the meter could not measure, no range applies
            _check_range("value", self.value, GLUCOSE_RANGE[self.unit], self.unit)
        return self


class BloodPressureReading(_ReadingBase):
    kind: Literal["blood_pressure"]
    systolic: Measure
    diastolic: Measure
    mean_arterial: Measure | None = None
    pulse: Measure | None = None
    unit: PressureUnit
    flags: tuple[PressureFlag, ...] = ()

    @model_validator(mode="after")
    def _plausible(self) -> BloodPressureReading:
        _check_range("systolic", self.systolic, SYSTOLIC_RANGE[self.unit], self.unit)
        _check_range("diastolic", self.diastolic, DIASTOLIC_RANGE[self.unit], self.unit)
        if self.diastolic >= self.systolic:
            raise PydanticCustomError(
                ReasonCode.DIASTOLIC_NOT_BELOW_SYSTOLIC.value,
                "diastolic {diastolic} is not below systolic {systolic}",
                {"diastolic": str(self.diastolic), "systolic": str(self.systolic)},
            )
        if self.mean_arterial is not None:
            _check_range(
                "mean_arterial", self.mean_arterial, MEAN_ARTERIAL_RANGE[self.unit], self.unit
            )
        if self.pulse is not None:
            _check_range("pulse", self.pulse, PULSE_RANGE, "bpm")
        return self


class WeightReading(_ReadingBase):
    kind: Literal["weight"]
    value: Measure
    unit: WeightUnit
    flags: tuple[()] = ()

    @model_validator(mode="after")
    def _plausible(self) -> WeightReading:
        _check_range("value", self.value, WEIGHT_RANGE[self.unit], self.unit)
        return self


Reading = Annotated[
    GlucoseReading | BloodPressureReading | WeightReading, Field(discriminator="kind")
]
ReadingKind = Literal["glucose", "blood_pressure", "weight"]

READING_ADAPTER: Final[TypeAdapter[GlucoseReading | BloodPressureReading | WeightReading]] = (
    TypeAdapter(Reading)
)


@dataclass(frozen=True, slots=True)
class ReadingRejected(Exception):  # noqa: N818 - a verdict, not a crash: it travels as a value
    """A payload that is not an acceptable reading, with the reason code that quarantines it."""

    reason: ReasonCode
    detail: str
    device_id: str | None = None
    seq: int | None = None

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


# pydantic error types -> reason codes. Custom errors raised above already carry a reason code.
_PYDANTIC_REASONS: Final[dict[str, ReasonCode]] = {
    "missing": ReasonCode.MISSING_FIELD,
    "extra_forbidden": ReasonCode.UNKNOWN_FIELD,
    "union_tag_invalid": ReasonCode.UNKNOWN_KIND,
    "union_tag_not_found": ReasonCode.MISSING_FIELD,
    "model_attributes_type": ReasonCode.NOT_AN_OBJECT,
    "model_type": ReasonCode.NOT_AN_OBJECT,
    "dict_type": ReasonCode.NOT_AN_OBJECT,
    "json_invalid": ReasonCode.MALFORMED_JSON,
    "json_type": ReasonCode.MALFORMED_JSON,
    "timezone_aware": ReasonCode.INVALID_TIME,
    "datetime_parsing": ReasonCode.INVALID_TIME,
    "datetime_from_date_parsing": ReasonCode.INVALID_TIME,
    "datetime_type": ReasonCode.INVALID_TIME,
    "finite_number": ReasonCode.SPECIAL_VALUE,
    "string_pattern_mismatch": ReasonCode.INVALID_VALUE,
    "string_too_long": ReasonCode.INVALID_VALUE,
    "string_too_short": ReasonCode.INVALID_VALUE,
    "greater_than_equal": ReasonCode.INVALID_VALUE,
    "less_than_equal": ReasonCode.INVALID_VALUE,
}
_REASON_VALUES: Final = {r.value for r in ReasonCode}


def _reason_for(error: Any) -> ReasonCode:
    etype: str = error["type"]
    if etype in _REASON_VALUES:
        return ReasonCode(etype)
    if etype == "literal_error":
        field = next((str(p) for p in reversed(error["loc"]) if isinstance(p, str)), "")
        if field == "unit":
            return ReasonCode.INVALID_UNIT
        if field == "flags" or (len(error["loc"]) >= 2 and error["loc"][-2] == "flags"):
            return ReasonCode.INVALID_FLAG
        return ReasonCode.INVALID_VALUE
    if etype == "too_long" and "flags" in error["loc"]:
        return ReasonCode.INVALID_FLAG  # weight readings carry no flags
    return _PYDANTIC_REASONS.get(etype, ReasonCode.INVALID_TYPE)


def rejection_from(exc: ValidationError, raw: object = None) -> ReadingRejected:
    """Translate pydantic's error into Vigil's reason code, naming the first offending field.

    The detail names fields and limits, never the member; values appear only for range errors,
    which are operator-facing and stored with the quarantined payload anyway.
    """
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    reason = _reason_for(first)
    loc = ".".join(str(p) for p in first["loc"][1:] or first["loc"])
    detail = f"{loc}: {first['msg']}" if loc else first["msg"]
    device_id = seq = None
    if isinstance(raw, dict):
        d, s = raw.get("device_id"), raw.get("seq")
        device_id = d if isinstance(d, str) and len(d) <= 64 else None
        seq = s if isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 else None
    return ReadingRejected(reason, detail, device_id, seq)


def parse_reading(payload: dict[str, Any]) -> GlucoseReading | BloodPressureReading | WeightReading:
    """Validate one decoded JSON object as a reading, or raise `ReadingRejected`."""
    try:
        return READING_ADAPTER.validate_python(payload)
    except ValidationError as exc:
        raise rejection_from(exc, payload) from None
