"""Who the simulated members are: the population mix, risk classes and each member's models.

A member is a *profile* (programs, conditions, devices: type 2 diabetes, hypertension, heart
failure, ...) and a *risk class* (low, moderate, high), which set the parameters of the
physiology and adherence models of `simulators.physiology`. Member *i* is drawn from a generator
seeded by (seed, i) alone, so it is the same member in every population of that seed and mix,
however many members are asked for.

`onboarding_document` writes the population in the onboarding file format (docs/onboarding.md)
for `vigil import`: the same ids the simulated devices then report.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

from simulators.errors import SimulationError
from simulators.physiology import (
    RISKS,
    AdherenceParams,
    BloodPressureParams,
    GlucoseParams,
    Habits,
    Risk,
    WeightParams,
)
from simulators.population import AREA_CODES, FIRST_NAMES, SURNAMES, Client

#: Device kind -> id prefix (the same as the demo population's).
DEVICE_PREFIX: Final[dict[str, str]] = {"glucose_meter": "gm", "bp_monitor": "bp", "scale": "sc"}

#: Enrollments and contracts start on this day (or earlier, for a run that starts earlier), so a
#: population written again on a later day is the same file and its re-import changes nothing.
ANCHOR: Final = date(2025, 1, 1)
CONTRACT_END: Final = date(2030, 12, 31)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    programs: tuple[str, ...]
    conditions: tuple[str, ...]
    devices: tuple[str, ...]
    description: str


PROFILES: Final[dict[str, Profile]] = {
    p.name: p
    for p in (
        Profile("t2", ("diabetes",), ("type_2_diabetes",), ("glucose_meter",),
                "type 2 diabetes, glucose meter"),
        Profile("t1", ("diabetes",), ("type_1_diabetes",), ("glucose_meter",),
                "type 1 diabetes (wider swings, more hypoglycaemia), glucose meter"),
        Profile("htn", ("hypertension",), (), ("bp_monitor",), "hypertension, cuff"),
        Profile("t2_htn", ("diabetes", "hypertension"), ("type_2_diabetes",),
                ("glucose_meter", "bp_monitor"), "type 2 diabetes and hypertension"),
        Profile("weight", ("weight_management",), (), ("scale",), "weight program, scale"),
        # Heart failure: daily weights catch fluid retention early (AHA/ACC/HFSA 2022), so these
        # members get a scale beside the cuff without the weight program.
        Profile("hf", ("hypertension",), ("heart_failure",), ("bp_monitor", "scale"),
                "heart failure with hypertension: cuff and daily weights"),
        Profile("htn_weight", ("hypertension", "weight_management"), (),
                ("bp_monitor", "scale"), "hypertension and the weight program"),
    )
}  # fmt: skip

#: Relative frequencies, close to a US employer/health-plan RPM book of business.
DEFAULT_MIX: Final[dict[str, float]] = {
    "t2": 28, "t1": 6, "htn": 24, "t2_htn": 16, "weight": 14, "hf": 8, "htn_weight": 4,
}  # fmt: skip
DEFAULT_RISK: Final[dict[str, float]] = {"low": 45, "moderate": 35, "high": 20}

#: Glucose tests a day a type 2 member is asked for (1: fasting; 2: + after a meal; 3: +
#: bedtime), and how often each plan is given.
T2_TESTS_PER_DAY: Final[tuple[tuple[int, float], ...]] = ((1, 0.25), (2, 0.55), (3, 0.2))
T1_TESTS_PER_DAY: Final = 4


CLIENTS: Final = (
    Client(
        "sim-lakeside-health", "Lakeside Health Plan (simulated)", "America/Chicago",
        ("America/Chicago", "America/Chicago", "America/New_York", "America/Denver"), "error",
        ((("diabetes",), "68.00"), (("hypertension",), "55.00"), (("weight_management",), "45.00"),
         (("diabetes", "hypertension"), "98.00"),
         (("hypertension", "weight_management"), "84.00")),
    ),
    Client(
        "sim-coastal-employers", "Coastal Employers Trust (simulated)", "America/Los_Angeles",
        ("America/Los_Angeles", "America/Los_Angeles", "America/Phoenix", "America/New_York"),
        "sum",
        ((("diabetes",), "72.00"), (("hypertension",), "58.00"), (("weight_management",), "49.00"),
         (("diabetes", "hypertension"), "112.00")),
    ),
)  # fmt: skip
COACHES: Final = (
    {"id": "sim-coach-rn", "name": "Avery Example", "role": "coach", "credential": "RN"},
    {"id": "sim-coach-cdces", "name": "Blair Sample", "role": "coach", "credential": "CDCES"},
    {"id": "sim-coach-rd", "name": "Emery Placeholder", "role": "coach", "credential": "RD"},
    {"id": "sim-supervisor", "name": "Harper Testwell", "role": "supervisor", "credential": "RN"},
)
_CARE_COACHES: Final = tuple(c["id"] for c in COACHES if c["role"] == "coach")


@dataclass(frozen=True, slots=True)
class SimDevice:
    id: str
    kind: str  # glucose_meter | bp_monitor | scale
    member_id: str
    zone: str


@dataclass(frozen=True, slots=True)
class SimMember:
    index: int
    id: str
    client: Client
    zone: str
    profile: Profile
    risk: Risk
    name: str
    birth_date: date
    phone: str
    coach: str
    devices: tuple[SimDevice, ...]
    habits: Habits
    adherence: AdherenceParams
    glucose: GlucoseParams | None
    glucose_tests_per_day: int
    blood_pressure: BloodPressureParams | None
    weight: WeightParams | None

    def device_of(self, kind: str) -> SimDevice | None:
        return next((d for d in self.devices if d.kind == kind), None)


def parse_weights(text: str, known: Sequence[str], what: str) -> dict[str, float]:
    """`"t2=40,htn=30"` -> {"t2": 40.0, "htn": 30.0}; names must be in `known`."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise SimulationError(
                "invalid_mix", f"{what} entry {part.strip()!r}: expected NAME=WEIGHT with NAME "
                f"one of {', '.join(known)}"
            )  # fmt: skip
        try:
            weight = float(value)
        except ValueError:
            raise SimulationError(
                "invalid_mix", f"{what} weight {value!r} is not a number"
            ) from None
        if not weight >= 0:
            raise SimulationError("invalid_mix", f"{what} weight of {name} must be >= 0")
        weights[name] = weights.get(name, 0.0) + weight
    if not any(weights.values()):
        raise SimulationError("invalid_mix", f"{what} needs at least one weight above 0")
    return weights


def build_members(
    count: int,
    *,
    seed: int,
    mix: Mapping[str, float] = DEFAULT_MIX,
    risk: Mapping[str, float] = DEFAULT_RISK,
    id_prefix: str = "",
) -> tuple[SimMember, ...]:
    if count < 1:
        raise SimulationError("invalid_population", f"at least one member is needed, not {count}")
    unknown = (set(mix) - set(PROFILES)) | (set(risk) - set(RISKS))
    if unknown:
        raise SimulationError("invalid_mix", f"unknown profile or risk {sorted(unknown)}")
    profiles = [PROFILES[name] for name in mix]
    profile_weights = [mix[p.name] for p in profiles]
    risks = [r for r in RISKS if r in risk]
    risk_weights = [risk[r] for r in risks]
    return tuple(
        _member(i, seed, id_prefix, profiles, profile_weights, risks, risk_weights)
        for i in range(1, count + 1)
    )


def _member(
    index: int,
    seed: int,
    prefix: str,
    profiles: list[Profile],
    profile_weights: list[float],
    risks: list[Risk],
    risk_weights: list[float],
) -> SimMember:
    rng = random.Random(f"{seed}:member:{index}")
    client = CLIENTS[rng.randrange(len(CLIENTS))]
    profile = rng.choices(profiles, weights=profile_weights)[0]
    risk = rng.choices(risks, weights=risk_weights)[0]
    zone = rng.choice(client.member_zones)
    member_id = f"{prefix}m-{index:04d}"
    devices = tuple(
        SimDevice(f"{prefix}{DEVICE_PREFIX[kind]}-{index:04d}", kind, member_id, zone)
        for kind in profile.devices
    )
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"
    birth = date(1942, 1, 1) + timedelta(days=rng.randrange(0, 56 * 365))
    phone = f"+1-{rng.choice(AREA_CODES)}-555-01{rng.randrange(100):02d}"
    coach = rng.choice(_CARE_COACHES)
    # Model parameters come from their own streams, so a new parameter in one model does not
    # change the members' other models.
    conditions = set(profile.conditions)
    glucose: GlucoseParams | None = None
    tests: int = 0
    if "glucose_meter" in profile.devices:
        grng = random.Random(f"{seed}:glucose-params:{index}")
        if "type_1_diabetes" in conditions:
            glucose, tests = GlucoseParams.type_1(risk, grng), T1_TESTS_PER_DAY
        else:
            glucose = GlucoseParams.type_2(risk, grng)
            plans = [n for n, _ in T2_TESTS_PER_DAY]
            tests = grng.choices(plans, weights=[w for _, w in T2_TESTS_PER_DAY])[0]
    pressure = None
    if "bp_monitor" in profile.devices:
        pressure = BloodPressureParams.draw(
            risk, random.Random(f"{seed}:bp-params:{index}"),
            heart_failure="heart_failure" in conditions,
        )  # fmt: skip
    weight = None
    if "scale" in profile.devices:
        weight = WeightParams.draw(
            risk, random.Random(f"{seed}:weight-params:{index}"),
            program="weight_management" in profile.programs,
            heart_failure="heart_failure" in conditions,
        )  # fmt: skip
    habits_rng = random.Random(f"{seed}:habits:{index}")
    return SimMember(
        index=index, id=member_id, client=client, zone=zone, profile=profile, risk=risk,
        name=name, birth_date=birth, phone=phone, coach=coach, devices=devices,
        habits=Habits.draw(habits_rng), adherence=AdherenceParams.draw(risk, habits_rng),
        glucose=glucose, glucose_tests_per_day=tests, blood_pressure=pressure, weight=weight,
    )  # fmt: skip


def enrollment_start(first_day: date) -> date:
    """The day enrollments and device assignments start: the fixed anchor, or two days before a
    run that starts earlier (two days: the run's first instant is a day earlier in some zones)."""
    return min(ANCHOR, first_day - timedelta(days=2))


def onboarding_document(
    members: Sequence[SimMember], *, first_day: date, last_day: date
) -> dict[str, Any]:
    """The onboarding file (docs/onboarding.md) of these members, for a run over
    `first_day`..`last_day` (UTC dates): everything assigned before the run starts."""
    begin = enrollment_start(first_day)
    end = max(CONTRACT_END, last_day + timedelta(days=366))
    used = dict.fromkeys(m.client.id for m in members)
    return {
        "clients": [_client(c, begin, end) for c in CLIENTS if c.id in used],
        "coaches": [dict(c) for c in COACHES],
        "members": [_member_entry(m, begin) for m in members],
    }


def _client(c: Client, begin: date, end: date) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "timezone": c.timezone,
        "currency": "USD",
        "contract": {
            "start": _fresh(begin),
            "end": _fresh(end),
            "active_rule": {"min_readings": 1},
            "bundle_fallback": c.bundle_fallback,
            "prices": [{"programs": list(p), "unit_price": price} for p, price in c.prices],
        },
    }


def _member_entry(m: SimMember, begin: date) -> dict[str, Any]:
    return {
        "id": m.id,
        "client": m.client.id,
        "name": m.name,
        "birth_date": _fresh(m.birth_date),
        "phone": m.phone,
        "timezone": m.zone,
        "coach": m.coach,
        "care_plan": {"conditions": sorted(m.profile.conditions)},
        "enrollments": [{"program": p, "start": _fresh(begin)} for p in m.profile.programs],
        "devices": [
            {"id": d.id, "kind": d.kind, "assigned_from": _fresh(begin)} for d in m.devices
        ],
    }


def _fresh(day: date) -> date:
    """A new date object: yaml.safe_dump aliases a shared object (&id001), which is valid YAML
    but hard for a person to read."""
    return date.fromordinal(day.toordinal())
