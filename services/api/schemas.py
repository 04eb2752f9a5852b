"""Request (`...Create`) and response (`...Public`) schemas of the member app API.

Public schemas list exactly what the app may see: no internal member id, no sequence epoch, no
content hash. Measured values are JSON numbers: originals have the few digits a device sends and
normalized values at most 15 significant digits, which a double renders exactly.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_validator

from services.domain.organisation import Id
from services.domain.readings import ReadingKind

#: A measured value as a JSON number (stored exactly as numeric; see the module docstring).
Number = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- signup and tokens -------------------------------------------------------------------------


class SignupCreate(_Schema):
    """Who is signing up: the client, the member's id there or ours, and the birth date."""

    client_id: Id
    external_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    member_id: Id | None = None
    birth_date: date

    @model_validator(mode="after")
    def _one_identifier(self) -> SignupCreate:
        if (self.external_id is None) == (self.member_id is None):
            raise ValueError("give exactly one of external_id and member_id")
        return self


class TokenPublic(_Schema):
    token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth 2 token type
    expires_at: datetime


# --- POST /v1/readings -------------------------------------------------------------------------


class ReadingsBatchCreate(_Schema):
    """For the OpenAPI document only: the route reads the body itself, so that a body that is not
    JSON is quarantined rather than refused by the framework."""

    readings: list[dict[str, object]] = Field(
        description="Reading objects in the reading-file format (docs/readings.md); manual "
        "entries carry source: manual and the id of a device assigned to the member."
    )


class ReadingOutcomePublic(_Schema):
    index: int = Field(description="Position of the reading in the request")
    status: Literal["accepted", "duplicate", "rejected"]
    device_id: str | None
    seq: int | None
    reason: str | None = Field(description="Reason code (docs/readings.md) when rejected")
    detail: str | None


class ReadingsResultPublic(_Schema):
    accepted: int
    duplicate: int
    rejected: int
    results: list[ReadingOutcomePublic]


# --- GET /v1/me/readings -----------------------------------------------------------------------


class OriginalValuesPublic(_Schema):
    """What the device or member reported, in the unit they used."""

    unit: str
    value: Number | None
    systolic: Number | None
    diastolic: Number | None
    mean_arterial: Number | None
    pulse: Number | None


class NormalizedValuesPublic(_Schema):
    """Canonical units: glucose mg/dL, pressure mmHg, weight kg."""

    glucose_mgdl: Number | None
    systolic_mmhg: Number | None
    diastolic_mmhg: Number | None
    mean_arterial_mmhg: Number | None
    weight_kg: Number | None


class ReadingPublic(_Schema):
    kind: ReadingKind
    device_id: str
    seq: int
    source: Literal["device", "manual", "cgm"]
    effective_at: datetime = Field(
        description="The reading's time for every purpose: the device time, or the receive time "
        "when the device clock was implausible (clock_corrected)"
    )
    measured_at: datetime = Field(description="Device time, in the UTC offset the device sent")
    clock_corrected: bool
    flags: list[str]
    meal: str | None
    original: OriginalValuesPublic
    normalized: NormalizedValuesPublic


class ReadingPagePublic(_Schema):
    readings: list[ReadingPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")


# --- GET /v1/me/summary ------------------------------------------------------------------------


class GlucoseSummaryPublic(_Schema):
    count: int
    mean_mgdl: Number | None = Field(description="Mean of measured values (HI/LO excluded)")
    in_range: int
    below_range: int
    above_range: int
    in_range_share: Number | None = Field(description="in_range / count, 4 decimals")


class PressureSummaryPublic(_Schema):
    count: int
    mean_systolic_mmhg: Number | None
    mean_diastolic_mmhg: Number | None
    below_target: int = Field(description="Readings below 130/80 mmHg")
    below_target_share: Number | None


class WeightSummaryPublic(_Schema):
    count: int
    first_kg: Number | None
    last_kg: Number | None
    change_kg: Number | None


class SummaryPublic(_Schema):
    days: int
    timezone: str
    start: datetime = Field(description="Local midnight starting the first day of the window")
    end: datetime
    glucose: GlucoseSummaryPublic
    blood_pressure: PressureSummaryPublic
    weight: WeightSummaryPublic
