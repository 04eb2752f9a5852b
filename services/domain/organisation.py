"""Clients, contracts, programs, members, enrollments, devices, care plans and coaches.

These are the onboarding file's entries (docs/onboarding.md) after validation. Money is Decimal.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Final, Literal
from zoneinfo import ZoneInfo, available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]


class Program(StrEnum):
    DIABETES = "diabetes"
    HYPERTENSION = "hypertension"
    WEIGHT_MANAGEMENT = "weight_management"
    BEHAVIORAL_HEALTH = "behavioral_health"


#: Programs billed per participant per month. Behavioral health is offered but billed otherwise.
PPPM_PROGRAMS: Final = frozenset(
    {Program.DIABETES, Program.HYPERTENSION, Program.WEIGHT_MANAGEMENT}
)


class DeviceKind(StrEnum):
    GLUCOSE_METER = "glucose_meter"
    BP_MONITOR = "bp_monitor"
    SCALE = "scale"
    CGM = "cgm"


class DeviceStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    RETIRED = "retired"


class CoachRole(StrEnum):
    COACH = "coach"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


class Credential(StrEnum):
    RN = "RN"
    CDCES = "CDCES"
    RD = "RD"
    NONE = "none"


class Condition(StrEnum):
    HEART_FAILURE = "heart_failure"
    PREGNANCY = "pregnancy"
    TYPE_1_DIABETES = "type_1_diabetes"
    TYPE_2_DIABETES = "type_2_diabetes"
    CHRONIC_KIDNEY_DISEASE = "chronic_kidney_disease"


def _valid_zone(name: str) -> str:
    if name not in _zones():
        raise ValueError(f"unknown IANA time zone {name!r}")
    return name


_ZONES: set[str] = set()


def _zones() -> set[str]:
    if not _ZONES:
        _ZONES.update(available_timezones())
    return _ZONES


TimeZone = Annotated[str, AfterValidator(_valid_zone)]
Money = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2, allow_inf_nan=False)]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceEntry(_Entry):
    programs: frozenset[Program] = Field(min_length=1)
    unit_price: Money

    @field_validator("programs")
    @classmethod
    def _billed_only(cls, v: frozenset[Program]) -> frozenset[Program]:
        unbilled = v - PPPM_PROGRAMS
        if unbilled:
            raise ValueError(f"{sorted(unbilled)} are not billed per member per month")
        return v


class ActiveRule(_Entry):
    min_readings: int = Field(default=1, ge=1)


class Contract(_Entry):
    """One dated contract term. A client has one or more, which must not overlap."""

    start: date
    end: date
    active_rule: ActiveRule = ActiveRule()
    bundle_fallback: Literal["error", "sum"] = "error"
    prices: tuple[PriceEntry, ...] = Field(min_length=1)
    device_prices: dict[DeviceKind, Money] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        seen: set[frozenset[Program]] = set()
        for entry in self.prices:
            if entry.programs in seen:
                raise ValueError(f"program set {sorted(entry.programs)} is priced twice")
            seen.add(entry.programs)
        return self


class Client(_Entry):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    timezone: TimeZone
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    contracts: tuple[Contract, ...] = Field(min_length=1)
    has_eligibility_file: bool = False

    # A field validator (not a model validator) so that the error's location is `contracts`,
    # which the onboarding importer reports as the field to fix.
    @field_validator("contracts")
    @classmethod
    def _terms_do_not_overlap(cls, v: tuple[Contract, ...]) -> tuple[Contract, ...]:
        terms = sorted(v, key=lambda c: c.start)
        for before, after in pairwise(terms):
            if after.start <= before.end:
                raise ValueError(
                    f"contract terms {before.start}..{before.end} and "
                    f"{after.start}..{after.end} overlap"
                )
        return v

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Coach(_Entry):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    role: CoachRole = CoachRole.COACH
    credential: Credential = Credential.NONE
    team: str | None = None
    email: str | None = None


class Enrollment(_Entry):
    program: Program
    start: date
    end: date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Enrollment:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self


class Device(_Entry):
    id: Id
    kind: DeviceKind
    assigned_from: date | None = None  # None: from the beginning of time
    assigned_to: date | None = None  # None: still assigned
    in_service_from: date | None = None
    shipped_on: date | None = None
    status: DeviceStatus = DeviceStatus.ACTIVE

    @model_validator(mode="after")
    def _ordered(self) -> Device:
        if (
            self.assigned_from is not None
            and self.assigned_to is not None
            and self.assigned_to < self.assigned_from
        ):
            raise ValueError(f"assigned_to {self.assigned_to} is before {self.assigned_from}")
        return self


class ThresholdOverride(_Entry):
    """A care-plan threshold override. The rule engine validates names, floors and credentials."""

    rule: str = Field(min_length=1, max_length=64)
    parameter: str = Field(min_length=1, max_length=64)
    value: Decimal = Field(allow_inf_nan=False)
    unit: str | None = None
    reason: str = Field(min_length=1, max_length=500)
    set_by: Id


class CarePlan(_Entry):
    conditions: frozenset[Condition] = frozenset()
    overrides: tuple[ThresholdOverride, ...] = ()


class EmergencyContact(_Entry):
    name: str = Field(min_length=1, max_length=200)
    phone: str = Field(min_length=3, max_length=40)
    relationship: str | None = None


class Member(_Entry):
    id: Id
    client: Id
    name: str = Field(min_length=1, max_length=200)
    birth_date: date
    phone: str | None = Field(default=None, max_length=40)
    emergency_contact: EmergencyContact | None = None
    language: str = Field(default="en", min_length=2, max_length=16)
    timezone: TimeZone | None = None  # None: the client's
    consent_to_monitoring: bool = True  # the client enrolled them
    external_id: str | None = Field(default=None, max_length=128)
    coach: Id | None = None
    care_plan: CarePlan = CarePlan()
    enrollments: tuple[Enrollment, ...] = ()
    devices: tuple[Device, ...] = ()
