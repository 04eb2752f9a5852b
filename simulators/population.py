"""A seeded demo population in the onboarding file's format (docs/onboarding.md).

`generate_population(n)` returns a dict ready for `yaml.safe_dump`: two clients with a contract
each, four coaches and `n` members with care plans, enrollments and devices. The same seed always
gives the same file, and member *i* does not depend on how many members were asked for, so a demo
rerun with more members extends the population instead of contradicting the first import.

Every name, phone number and id is obviously fictional: ids start with `demo-`, phone numbers are
in the 555-0100..0199 block reserved for fiction, surnames are words like "Example".
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

DEMO_SEED: Final = 1729

#: Contracts start here; enrollments start within the following 330 days. Fixed (not "today") so a
#: rerun on a later day produces the same file and the import stays a no-op.
ANCHOR: Final = date(2025, 1, 1)
CONTRACT_END: Final = date(2030, 12, 31)

#: The device each program ships (docs/onboarding.md).
PROGRAM_DEVICE: Final[dict[str, str]] = {
    "diabetes": "glucose_meter",
    "hypertension": "bp_monitor",
    "weight_management": "scale",
}
DEVICE_PREFIX: Final[dict[str, str]] = {"glucose_meter": "gm", "bp_monitor": "bp", "scale": "sc"}


class PopulationError(ValueError):
    """The population cannot be generated as asked (e.g. fewer than one member)."""


@dataclass(frozen=True, slots=True)
class _Profile:
    programs: tuple[str, ...]
    conditions: tuple[str, ...]
    extra_devices: tuple[str, ...]
    weight: int  # relative frequency in the population


_PROFILES: Final = (
    _Profile(("diabetes",), ("type_2_diabetes",), (), 28),
    _Profile(("diabetes",), ("type_1_diabetes",), (), 6),
    _Profile(("hypertension",), (), (), 24),
    _Profile(("weight_management",), (), (), 14),
    _Profile(("diabetes", "hypertension"), ("type_2_diabetes",), (), 16),
    # Heart failure: daily weights catch fluid retention early (AHA/ACC/HFSA 2022 heart failure
    # guideline), so these members get a scale beside the cuff without the weight program.
    _Profile(("hypertension",), ("heart_failure",), ("scale",), 8),
    _Profile(("hypertension", "weight_management"), (), (), 4),
)
_PROFILE_WEIGHTS: Final = [p.weight for p in _PROFILES]


@dataclass(frozen=True, slots=True)
class Client:
    """A B2B client of a simulated population (also used by simulators/profiles.py)."""

    id: str
    name: str
    timezone: str
    member_zones: tuple[str, ...]
    bundle_fallback: str
    prices: tuple[tuple[tuple[str, ...], str], ...]


_CLIENTS: Final = (
    Client(
        "demo-prairie-health",
        "Prairie Health Plan (demo)",
        "America/Chicago",
        ("America/Chicago", "America/Chicago", "America/New_York", "America/Denver"),
        "error",  # every program set its members can have is priced
        (
            (("diabetes",), "68.00"),
            (("hypertension",), "55.00"),
            (("weight_management",), "45.00"),
            (("diabetes", "hypertension"), "98.00"),
            (("hypertension", "weight_management"), "84.00"),
        ),
    ),
    Client(
        "demo-harbor-employers",
        "Harbor Employers Trust (demo)",
        "America/Los_Angeles",
        ("America/Los_Angeles", "America/Los_Angeles", "America/Phoenix", "America/Denver"),
        "sum",  # unpriced bundles bill as the sum of their programs
        (
            (("diabetes",), "72.00"),
            (("hypertension",), "58.00"),
            (("weight_management",), "49.00"),
            (("diabetes", "hypertension"), "112.00"),
        ),
    ),
)

_COACHES: Final = (
    {"id": "demo-coach-rn", "name": "Riley Example", "role": "coach", "credential": "RN"},
    {"id": "demo-coach-cdces", "name": "Casey Sample", "role": "coach", "credential": "CDCES"},
    {"id": "demo-coach-rd", "name": "Jordan Placeholder", "role": "coach", "credential": "RD"},
    {"id": "demo-supervisor", "name": "Morgan Testwell", "role": "supervisor", "credential": "RN"},
)
_CARE_COACHES: Final = tuple(c["id"] for c in _COACHES if c["role"] == "coach")

FIRST_NAMES: Final = (
    "Ada", "Ben", "Cora", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lena",
    "Milo", "Nora", "Otto", "Pia", "Quin", "Rosa", "Sami", "Tess", "Uma", "Vic", "Wren", "Yara",
)  # fmt: skip
SURNAMES: Final = (
    "Example", "Sample", "Testwell", "Placeholder", "Mockley", "Fakename", "Dummyson",
    "Specimen", "Demoski", "Fixture", "Stubbs", "Synthetic",
)  # fmt: skip
AREA_CODES: Final = ("312", "415", "512", "617", "720", "206")


def generate_population(members: int, *, seed: int = DEMO_SEED) -> dict[str, Any]:
    """The onboarding file of a demo population with `members` members (deterministic)."""
    if members < 1:
        raise PopulationError(f"a population needs at least one member, not {members}")
    return {
        "clients": [_client(c) for c in _CLIENTS],
        "coaches": [dict(c) for c in _COACHES],
        "members": [_member(i, seed) for i in range(1, members + 1)],
    }


def _client(c: Client) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "timezone": c.timezone,
        "currency": "USD",
        "contract": {
            "start": _fresh(ANCHOR),
            "end": _fresh(CONTRACT_END),
            "active_rule": {"min_readings": 1},
            "bundle_fallback": c.bundle_fallback,
            "prices": [
                {"programs": list(programs), "unit_price": price} for programs, price in c.prices
            ],
        },
    }


def _member(index: int, seed: int) -> dict[str, Any]:
    # One generator per member, seeded by (seed, index): member i is the same in every population.
    rng = random.Random(f"{seed}:member:{index}")  # demo data (S311 is off here)
    client = _CLIENTS[rng.randrange(len(_CLIENTS))]
    profile = rng.choices(_PROFILES, weights=_PROFILE_WEIGHTS)[0]
    start = ANCHOR + timedelta(days=rng.randrange(0, 331))
    birth = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 58 * 365))
    member_id = f"demo-m{index:04d}"
    kinds = [PROGRAM_DEVICE[p] for p in profile.programs] + list(profile.extra_devices)
    devices = [
        {
            "id": f"demo-{DEVICE_PREFIX[kind]}-{index:04d}",
            "kind": kind,
            "assigned_from": _fresh(start),
        }
        for kind in dict.fromkeys(kinds)  # a scale from two sources is still one scale
    ]
    return {
        "id": member_id,
        "client": client.id,
        "name": f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}",
        "birth_date": birth,
        "phone": f"+1-{rng.choice(AREA_CODES)}-555-01{rng.randrange(100):02d}",
        "timezone": rng.choice(client.member_zones),
        "coach": rng.choice(_CARE_COACHES),
        "care_plan": {"conditions": list(profile.conditions)},
        "enrollments": [{"program": p, "start": _fresh(start)} for p in profile.programs],
        "devices": devices,
    }


def _fresh(day: date) -> date:
    """A new date object: yaml.safe_dump writes a shared object once and aliases it (&id001),
    which is valid YAML but hard for a person to read in an onboarding file."""
    return date.fromordinal(day.toordinal())
