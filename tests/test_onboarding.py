"""The onboarding importer (`vigil import FILE`, docs/onboarding.md) against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import yaml

from services import onboarding
from services.errors import ImportFileError
from services.onboarding import ImportSummary, import_onboarding_file, local_midnight

DATA = Path(__file__).resolve().parent / "data"
EXAMPLE = DATA / "onboarding_example.yaml"

# Table -> ORDER BY. Snapshots include xmin: an UPDATE that writes identical values still makes a
# new row version, so equal xmins prove that nothing was written at all.
TABLES = {
    "clients": "id",
    "contracts": "id",
    "contract_prices": "contract_id, programs",
    "contract_device_prices": "contract_id, device_kind",
    "coaches": "id",
    "members": "id",
    "care_plans": "member_id",
    "enrollments": "id",
    "devices": "id",
    "device_assignments": "id",
}
PHI = ("Pat Doe", "Sam Roe", "Lou Poe", "Kim Poe", "555-0101", "555-0199", "1961-04-02",
       "1958-11-30", "1970-07-14")  # fmt: skip


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


def member(data: dict[str, Any], member_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in data["members"] if m["id"] == member_id)
    return found


def write(tmp_path: Path, data: dict[str, Any], name: str = "onboarding.yaml") -> Path:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(data, default=str, indent=2))
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def snapshot(pool: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    return {
        table: [
            dict(r)
            for r in await pool.fetch(f"SELECT xmin::text AS xmin, * FROM {table} ORDER BY {order}")
        ]
        for table, order in TABLES.items()
    }


def counts(summary: ImportSummary) -> dict[str, tuple[int, int, int]]:
    return {name: (t.created, t.updated, t.unchanged) for name, t in summary.tallies.items()}


EXAMPLE_CREATED = {
    "clients": (1, 0, 0),
    "contracts": (1, 0, 0),
    "coaches": (2, 0, 0),
    "members": (3, 0, 0),
    "care_plans": (3, 0, 0),
    "enrollments": (3, 0, 0),
    "devices": (4, 0, 0),
    "device_assignments": (4, 0, 0),
}
EXAMPLE_UNCHANGED = {name: (0, 0, c) for name, (c, _, _) in EXAMPLE_CREATED.items()}


# -- the example -------------------------------------------------------------------------------


async def test_example_imports_every_entity(db: asyncpg.Pool) -> None:
    summary = await import_onboarding_file(db, EXAMPLE)

    assert counts(summary) == EXAMPLE_CREATED
    client = await db.fetchrow("SELECT * FROM clients")
    assert client is not None
    assert (client["id"], client["name"], client["timezone"], client["currency"]) == (
        "acme",
        "Acme Corp",
        "America/Chicago",
        "USD",
    )
    assert client["has_eligibility_file"] is False

    contract = await db.fetchrow("SELECT * FROM contracts")
    assert contract is not None
    assert (contract["client_id"], contract["start_date"], contract["end_date"]) == (
        "acme",
        date(2026, 1, 1),
        date(2027, 12, 31),
    )
    assert (contract["min_readings"], contract["bundle_fallback"]) == (1, "error")
    prices = {
        tuple(r["programs"]): r["unit_price"]
        for r in await db.fetch("SELECT programs, unit_price FROM contract_prices")
    }
    assert prices == {
        ("diabetes",): Decimal("68.00"),
        ("hypertension",): Decimal("45.00"),
        ("diabetes", "hypertension"): Decimal("98.00"),
        ("weight_management",): Decimal("30.00"),
    }
    assert all(isinstance(p, Decimal) for p in prices.values())
    assert [
        tuple(r)
        for r in await db.fetch("SELECT device_kind, unit_price FROM contract_device_prices")
    ] == [("cgm", Decimal("120.00"))]

    coaches = {r["id"]: dict(r) for r in await db.fetch("SELECT * FROM coaches")}
    assert (coaches["c-ana"]["role"], coaches["c-ana"]["credential"]) == ("coach", "CDCES")
    assert (coaches["c-bo"]["role"], coaches["c-bo"]["credential"]) == ("coach", "none")

    members = {r["id"]: dict(r) for r in await db.fetch("SELECT * FROM members")}
    pat = members["m-0001"]
    assert (pat["name"], pat["birth_date"], pat["phone"], pat["coach_id"]) == (
        "Pat Doe",
        date(1961, 4, 2),
        "+1-312-555-0101",
        "c-ana",
    )
    # m-0002 gives only the required fields: every default applies.
    sam = members["m-0002"]
    assert sam["birth_date"] == date(1958, 11, 30)  # quoted date string
    assert sam["timezone"] == "America/Chicago"  # the client's
    assert sam["consent_to_monitoring"] is True
    assert sam["language"] == "en"
    assert (sam["phone"], sam["coach_id"], sam["external_id"], sam["emergency_contact"]) == (
        None,
        None,
        None,
        None,
    )
    lou = members["m-0003"]
    assert (lou["timezone"], lou["language"], lou["external_id"]) == (
        "America/New_York",
        "es",
        "ACME-77812",
    )
    assert json.loads(lou["emergency_contact"]) == {
        "name": "Kim Poe",
        "phone": "+1-212-555-0199",
        "relationship": "spouse",
    }

    plans = {
        r["member_id"]: (r["conditions"], json.loads(r["overrides"]))
        for r in await db.fetch("SELECT member_id, conditions, overrides::text FROM care_plans")
    }
    assert plans["m-0001"] == (["heart_failure"], [])
    assert plans["m-0002"] == ([], [])
    assert plans["m-0003"] == (
        ["chronic_kidney_disease", "type_2_diabetes"],  # sorted
        [
            {
                "rule": "glucose_high",
                "parameter": "threshold",
                "value": "250",
                "unit": "mg/dL",
                "reason": "CKD stage 3: nephrology asked for a higher alert threshold",
                "set_by": "c-ana",
            }
        ],
    )

    enrollments = [
        tuple(r)
        for r in await db.fetch(
            "SELECT member_id, program, start_date, end_date FROM enrollments "
            "ORDER BY member_id, start_date"
        )
    ]
    assert enrollments == [
        ("m-0001", "diabetes", date(2026, 3, 1), None),
        ("m-0001", "hypertension", date(2026, 10, 15), date(2027, 3, 31)),
        ("m-0003", "diabetes", date(2026, 2, 1), None),
    ]

    devices = {
        r["id"]: tuple(r)[1:]
        for r in await db.fetch("SELECT id, kind, status, in_service_from, shipped_on FROM devices")
    }
    assert devices == {
        "gm-0001": ("glucose_meter", "active", None, None),
        "bp-0001": ("bp_monitor", "active", None, None),
        "sc-0001": ("scale", "active", None, None),
        "cgm-0001": ("cgm", "active", date(2026, 1, 15), date(2026, 1, 20)),
    }
    assignments = {
        r["device_id"]: (r["member_id"], r["assigned_from"], r["assigned_to"])
        for r in await db.fetch("SELECT * FROM device_assignments")
    }
    assert assignments == {
        "gm-0001": ("m-0001", None, None),  # from the beginning of time, still held
        # Midnight 2026-10-01 in Chicago (CDT, UTC-5).
        "bp-0001": ("m-0001", utc(2026, 10, 1, 5), None),
        "sc-0001": ("m-0001", None, None),
        # m-0003 is in New York: from midnight 2026-02-01 EST (UTC-5) up to the midnight that
        # starts 2026-08-01 EDT (UTC-4), since assigned_to 2026-07-31 is inclusive.
        "cgm-0001": ("m-0003", utc(2026, 2, 1, 5), utc(2026, 8, 1, 4)),
    }


async def test_reimport_writes_nothing_and_reports_unchanged(db: asyncpg.Pool) -> None:
    await import_onboarding_file(db, EXAMPLE)
    before = await snapshot(db)

    summary = await import_onboarding_file(db, EXAMPLE)

    assert counts(summary) == EXAMPLE_UNCHANGED
    assert summary.written == 0
    assert await snapshot(db) == before  # values and xmin: not one row version written
    rendered = summary.render()
    assert rendered.splitlines()[1].split() == ["clients", "0", "0", "1"]
    assert rendered.endswith("nothing changed")


async def test_an_edited_enrollment_end_updates_just_that(db: asyncpg.Pool, tmp_path: Path) -> None:
    await import_onboarding_file(db, EXAMPLE)
    before = await snapshot(db)
    data = example()
    member(data, "m-0001")["enrollments"][0]["end"] = "2026-12-31"

    summary = await import_onboarding_file(db, write(tmp_path, data))

    assert counts(summary) == EXAMPLE_UNCHANGED | {"enrollments": (0, 1, 2)}
    after = await snapshot(db)
    assert {t for t in TABLES if after[t] != before[t]} == {"enrollments"}
    changed = [
        (b, a) for b, a in zip(before["enrollments"], after["enrollments"], strict=True) if a != b
    ]
    assert len(changed) == 1
    old, new = changed[0]
    assert (old["member_id"], old["program"], old["end_date"]) == ("m-0001", "diabetes", None)
    assert (new["id"], new["end_date"]) == (old["id"], date(2026, 12, 31))


async def test_changed_prices_replace_the_table_and_a_new_member_is_added(
    db: asyncpg.Pool, tmp_path: Path
) -> None:
    await import_onboarding_file(db, EXAMPLE)
    data = example()
    data["clients"][0]["contract"]["prices"][0]["unit_price"] = "70.00"
    data["members"].append(
        {
            "id": "m-0004",
            "client": "acme",
            "name": "Ari Moe",
            "birth_date": "1980-01-01",
            "timezone": None,
        }
    )

    summary = await import_onboarding_file(db, write(tmp_path, data))

    assert counts(summary)["contracts"] == (0, 1, 0)
    assert counts(summary)["members"] == (1, 0, 3)
    assert counts(summary)["care_plans"] == (1, 0, 3)
    diabetes = "SELECT unit_price FROM contract_prices WHERE programs = '{diabetes}'"
    assert await db.fetchval(diabetes) == Decimal("70.00")
    assert await db.fetchval("SELECT count(*) FROM contract_prices") == 4
    assert await db.fetchval("SELECT timezone FROM members WHERE id = 'm-0004'") == (
        "America/Chicago"
    )


# -- the merge rule: omitted fields keep what is stored -------------------------------------------


async def test_omitted_fields_keep_values_changed_elsewhere(db: asyncpg.Pool) -> None:
    """Re-importing the original file does not re-consent a member, reactivate a revoked device,
    reopen an ended enrollment or drop a care plan's overrides."""
    await import_onboarding_file(db, EXAMPLE)
    await db.execute("UPDATE members SET consent_to_monitoring = false WHERE id = 'm-0002'")
    await db.execute("UPDATE devices SET status = 'revoked' WHERE id = 'gm-0001'")
    await db.execute(
        "UPDATE enrollments SET end_date = '2026-09-30' WHERE program = 'diabetes' "
        "AND member_id = 'm-0001'"
    )
    await db.execute("""UPDATE care_plans SET overrides = '[{"rule": "bp_high"}]'
                        WHERE member_id = 'm-0001'""")
    before = await snapshot(db)

    summary = await import_onboarding_file(db, EXAMPLE)

    assert summary.written == 0
    assert await snapshot(db) == before


async def test_a_stated_null_clears_and_a_stated_value_overrides(
    db: asyncpg.Pool, tmp_path: Path
) -> None:
    await import_onboarding_file(db, EXAMPLE)
    await db.execute("UPDATE members SET consent_to_monitoring = false WHERE id = 'm-0002'")
    data = example()
    member(data, "m-0001")["phone"] = None
    member(data, "m-0002")["consent_to_monitoring"] = True

    summary = await import_onboarding_file(db, write(tmp_path, data))

    assert counts(summary)["members"] == (0, 2, 1)
    rows = {r["id"]: r for r in await db.fetch("SELECT * FROM members")}
    assert rows["m-0001"]["phone"] is None
    assert rows["m-0002"]["consent_to_monitoring"] is True


async def test_members_of_a_stored_client(db: asyncpg.Pool, tmp_path: Path) -> None:
    await import_onboarding_file(db, EXAMPLE)
    data = {
        "members": [
            {
                "id": "m-0005",
                "client": "acme",
                "name": "Jo Yu",
                "birth_date": "1990-05-05",
                "coach": "c-bo",
            }
        ]
    }

    summary = await import_onboarding_file(db, write(tmp_path, data))

    assert counts(summary)["members"] == (1, 0, 0)
    assert counts(summary)["clients"] == (0, 0, 0)
    row = await db.fetchrow("SELECT timezone, coach_id FROM members WHERE id = 'm-0005'")
    assert row is not None
    assert tuple(row) == ("America/Chicago", "c-bo")


# -- devices -------------------------------------------------------------------------------------


async def test_a_device_reassigned_between_members(db: asyncpg.Pool, tmp_path: Path) -> None:
    """Each member's dates are read in that member's zone; assigned_to is inclusive."""
    data = example()
    member(data, "m-0001")["devices"][2] |= {"assigned_to": "2026-06-30"}  # sc-0001, Chicago
    member(data, "m-0003")["devices"].append(  # New York
        {"id": "sc-0001", "kind": "scale", "assigned_from": "2026-07-01"}
    )

    # Chicago's 2026-07-01 begins at 05:00 UTC, New York's an hour earlier: both would hold the
    # scale from 04:00 to 05:00 UTC.
    with pytest.raises(ImportFileError) as caught:
        await import_onboarding_file(db, write(tmp_path, data))
    assert (caught.value.entry, caught.value.field) == (
        "members[2] (id m-0003)",
        "devices[1].assigned_from",
    )
    assert (
        "2026-07-01T04:00:00+00:00..open (member m-0003) overlaps "
        "open..2026-07-01T05:00:00+00:00 (member m-0001, members[0] (id m-0001) devices[2])"
    ) in str(caught.value)

    member(data, "m-0003")["devices"][1]["assigned_from"] = "2026-07-02"
    summary = await import_onboarding_file(db, write(tmp_path, data))

    assert counts(summary)["devices"] == (4, 0, 0)
    assert counts(summary)["device_assignments"] == (5, 0, 0)
    rows = [
        tuple(r)
        for r in await db.fetch(
            "SELECT member_id, assigned_from, assigned_to FROM device_assignments "
            "WHERE device_id = 'sc-0001' ORDER BY assigned_from NULLS FIRST"
        )
    ]
    assert rows == [
        ("m-0001", None, utc(2026, 7, 1, 5)),
        ("m-0003", utc(2026, 7, 2, 4), None),
    ]


async def test_closing_an_assignment_then_handing_the_device_over(
    db: asyncpg.Pool, tmp_path: Path
) -> None:
    await import_onboarding_file(db, EXAMPLE)
    data = example()
    member(data, "m-0001")["devices"][1]["assigned_to"] = "2026-12-31"  # bp-0001
    member(data, "m-0002")["devices"] = [
        {"id": "bp-0001", "kind": "bp_monitor", "assigned_from": "2027-01-01"}
    ]

    summary = await import_onboarding_file(db, write(tmp_path, data))

    assert counts(summary)["device_assignments"] == (1, 1, 3)
    rows = [
        tuple(r)
        for r in await db.fetch(
            "SELECT member_id, assigned_from, assigned_to FROM device_assignments "
            "WHERE device_id = 'bp-0001' ORDER BY assigned_from"
        )
    ]
    assert rows == [
        ("m-0001", utc(2026, 10, 1, 5), utc(2027, 1, 1, 6)),  # CST after November
        ("m-0002", utc(2027, 1, 1, 6), None),
    ]
    assert (await import_onboarding_file(db, write(tmp_path, data))).written == 0


def test_local_midnight_is_the_first_instant_of_the_local_day() -> None:
    chicago = ZoneInfo("America/Chicago")
    assert local_midnight(date(2026, 10, 1), chicago) == utc(2026, 10, 1, 5)
    assert local_midnight(date(2026, 12, 1), chicago) == utc(2026, 12, 1, 6)
    # Santiago skips 00:00-01:00 on 2026-09-06: the day begins at 01:00 -03, 04:00 UTC.
    santiago = ZoneInfo("America/Santiago")
    first = local_midnight(date(2026, 9, 6), santiago)
    assert first == utc(2026, 9, 6, 4)
    assert first.astimezone(santiago).date() == date(2026, 9, 6)
    assert (local_midnight(date(2026, 9, 7), santiago) - first).total_seconds() == 23 * 3600


# -- contracts -------------------------------------------------------------------------------------


def two_terms() -> dict[str, Any]:
    data = example()
    client = data["clients"][0]
    term = client.pop("contract")
    later = copy.deepcopy(term) | {
        "start": "2028-01-01",
        "end": "2028-12-31",
        "bundle_fallback": "sum",
    }
    later["prices"] = [{"programs": ["diabetes"], "unit_price": "72.50"}]
    client["contracts"] = [term, later]
    return data


async def test_a_contracts_list_with_two_terms(db: asyncpg.Pool, tmp_path: Path) -> None:
    summary = await import_onboarding_file(db, write(tmp_path, two_terms()))

    assert counts(summary)["contracts"] == (2, 0, 0)
    rows = [
        tuple(r)
        for r in await db.fetch(
            "SELECT c.start_date, c.end_date, c.bundle_fallback, count(p.*), sum(p.unit_price) "
            "FROM contracts c JOIN contract_prices p ON p.contract_id = c.id "
            "GROUP BY c.id ORDER BY c.start_date"
        )
    ]
    assert rows == [
        (date(2026, 1, 1), date(2027, 12, 31), "error", 4, Decimal("241.00")),
        (date(2028, 1, 1), date(2028, 12, 31), "sum", 1, Decimal("72.50")),
    ]
    # A re-import written with `contracts:` instead of `contract:` matches the same terms.
    assert (await import_onboarding_file(db, write(tmp_path, two_terms()))).written == 0


async def test_overlapping_contract_terms_are_refused(db: asyncpg.Pool, tmp_path: Path) -> None:
    data = two_terms()
    data["clients"][0]["contracts"][1]["start"] = "2027-12-31"  # the first ends that day

    with pytest.raises(ImportFileError) as caught:
        await import_onboarding_file(db, write(tmp_path, data))

    assert (caught.value.entry, caught.value.field) == ("clients[0] (id acme)", "contracts")
    assert "overlap" in str(caught.value)
    assert await db.fetchval("SELECT count(*) FROM contracts") == 0


async def test_a_term_overlapping_a_stored_term_is_refused(
    db: asyncpg.Pool, tmp_path: Path
) -> None:
    await import_onboarding_file(db, EXAMPLE)
    before = await snapshot(db)
    data = example()
    data["clients"][0]["contract"]["start"] = "2026-06-01"  # a new term: keyed by start date

    with pytest.raises(ImportFileError) as caught:
        await import_onboarding_file(db, write(tmp_path, data))

    assert (caught.value.entry, caught.value.field) == ("clients[0] (id acme)", "contract")
    assert "stored term 2026-01-01..2027-12-31" in str(caught.value)
    assert await snapshot(db) == before


# -- formats ---------------------------------------------------------------------------------------


async def test_a_json_file_imports_the_same_rows(db: asyncpg.Pool, tmp_path: Path) -> None:
    data = example()
    data["clients"][0]["contract"]["prices"][0]["unit_price"] = 68.00  # a JSON number: exact
    path = write(tmp_path, data, "onboarding.json")

    assert counts(await import_onboarding_file(db, path)) == EXAMPLE_CREATED
    # The YAML example holds the same data: nothing to change.
    assert counts(await import_onboarding_file(db, EXAMPLE)) == EXAMPLE_UNCHANGED
    # JSON content under another extension is read as YAML, which accepts it.
    other = tmp_path / "onboarding.txt"
    other.write_text(path.read_text())
    assert (await import_onboarding_file(db, other)).written == 0


@pytest.mark.parametrize(
    ("written", "accepted"),
    [("68.00", Decimal("68.00")), ("68.5", Decimal("68.50")), ("68", Decimal("68.00"))],
)
async def test_unquoted_money_is_accepted_when_exact(
    db: asyncpg.Pool, tmp_path: Path, written: str, accepted: Decimal
) -> None:
    text = EXAMPLE.read_text().replace('unit_price: "68.00"', f"unit_price: {written}")
    path = tmp_path / "onboarding.yaml"
    path.write_text(text)

    await import_onboarding_file(db, path)

    diabetes = "SELECT unit_price FROM contract_prices WHERE programs = '{diabetes}'"
    assert await db.fetchval(diabetes) == accepted
    assert (await import_onboarding_file(db, path)).written == 0


# -- errors: they name the entry and field, and nothing is written ---------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of the example: "members.1.birth_date" = value (None deletes the key)."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is None:
            del node[last]
        else:
            node[last] = value

    return mutate


def _append(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        for part in path.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        node.append(value)

    return mutate


@dataclass(frozen=True)
class Refused:
    mutate: Callable[[dict[str, Any]], None]
    entry: str
    field: str
    message: str


def _refused(
    mutate: Callable[[dict[str, Any]], None], entry: str, field: str, message: str, *, id: str
) -> Any:
    return pytest.param(Refused(mutate, entry, field, message), id=id)


ERRORS = [
    _refused(_set("members.1.birth_date", None), "members[1] (id m-0002)", "birth_date",
                 "required", id="missing-birth-date"),
    _refused(_set("members.0.birth_date", "1961-02-30"), "members[0] (id m-0001)",
                 "birth_date", "day value is outside expected range", id="impossible-date"),
    _refused(_set("members.0.client", "globex"), "members[0] (id m-0001)", "client",
                 "unknown client 'globex'", id="unknown-client"),
    _refused(_set("members.0.coach", "c-zed"), "members[0] (id m-0001)", "coach",
                 "unknown coach 'c-zed'", id="unknown-coach"),
    _refused(_set("clients.0.timezone", "America/Chicgo"), "clients[0] (id acme)",
                 "timezone", "unknown IANA time zone 'America/Chicgo'", id="bad-client-zone"),
    _refused(_set("members.2.timezone", "EST5"), "members[2] (id m-0003)", "timezone",
                 "unknown IANA time zone", id="bad-member-zone"),
    _refused(_set("members.0.enrollments.1.program", "cardiology"),
                 "members[0] (id m-0001)", "enrollments[1].program", "Input should be",
                 id="unknown-program"),
    _refused(_set("clients.0.contract.prices.2.programs", ["diabetes", "oncology"]),
                 "clients[0] (id acme)", "contract.prices[2].programs[1]", "Input should be",
                 id="unknown-priced-program"),
    _refused(_set("clients.0.contract.prices.0.programs", ["behavioral_health"]),
                 "clients[0] (id acme)", "contract.prices[0].programs",
                 "not billed per member per month", id="unbilled-program-priced"),
    _refused(_set("clients.0.contract.prices.0.unit_price", 68.125),
                 "clients[0] (id acme)", "contract.prices[0].unit_price",
                 'no more than 2 decimal places; write money as a quoted string',
                 id="inexact-money"),
    _refused(_set("clients.0.contract.device_prices", {"tablet": "5.00"}),
                 "clients[0] (id acme)", "contract.device_prices.tablet", "Input should be",
                 id="unknown-device-kind-priced"),
    _refused(_set("clients.0.currency", "usd"), "clients[0] (id acme)", "currency",
                 "String should match pattern", id="lowercase-currency"),
    _refused(_set("members.0.nickname", "Patty"), "members[0] (id m-0001)", "nickname",
                 "unknown field", id="unknown-field"),
    _refused(_set("members.2.id", "m-0001"), "members[2] (id m-0001)", "id",
                 "duplicate id, also at members[0] (id m-0001)", id="duplicate-member"),
    _refused(_set("members.2.care_plan.overrides.0.set_by", "c-zed"),
                 "members[2] (id m-0003)", "care_plan.overrides[0].set_by",
                 "unknown coach 'c-zed'", id="unknown-override-author"),
    _refused(_set("members.0.enrollments.1.end", "2026-01-01"), "members[0] (id m-0001)",
                 "enrollments[1]", "end 2026-01-01 is before start 2026-10-15",
                 id="enrollment-ends-before-start"),
    _refused(_append("members.0.enrollments", {"program": "diabetes", "start": "2026-05-01"}),
                 "members[0] (id m-0001)", "enrollments[2]", "overlaps enrollments[0]",
                 id="overlapping-enrollments"),
    _refused(_set("members.1.devices", [{"id": "bp-0001", "kind": "bp_monitor",
                                              "assigned_from": "2026-12-01"}]),
                 "members[1] (id m-0002)", "devices[0].assigned_from",
                 "device bp-0001 would be held twice at once", id="device-held-twice"),
    _refused(_set("members.1.devices", [{"id": "bp-0001", "kind": "scale",
                                              "assigned_from": "2025-01-01",
                                              "assigned_to": "2025-12-31"}]),
                 "members[1] (id m-0002)", "devices[0].kind",
                 "device bp-0001 has kind bp_monitor under members[0] (id m-0001) devices[1]",
                 id="device-kind-differs-in-file"),
    _refused(_set("clients.0.contracts", []), "clients[0] (id acme)", "contract",
                 "not both", id="contract-and-contracts"),
]  # fmt: skip


@pytest.mark.parametrize("case", ERRORS)
async def test_an_invalid_entry_is_named_and_nothing_is_written(
    db: asyncpg.Pool, tmp_path: Path, case: Refused
) -> None:
    entry, field, message = case.entry, case.field, case.message
    data = example()
    case.mutate(data)
    path = write(tmp_path, data)

    # Into an empty database ...
    with pytest.raises(ImportFileError) as caught:
        await import_onboarding_file(db, path)
    assert (caught.value.entry, caught.value.field) == (entry, field)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{entry}: {field}: ")
    assert not any(p in str(caught.value) for p in PHI)
    assert await snapshot(db) == {table: [] for table in TABLES}

    # ... and over the imported example, with a valid change (the client's name) before it.
    await import_onboarding_file(db, EXAMPLE)
    before = await snapshot(db)
    data["clients"][0]["name"] = "Acme Corporation"
    with pytest.raises(ImportFileError) as again:
        await import_onboarding_file(db, write(tmp_path, data))
    assert (again.value.entry, again.value.field) == (entry, field)
    assert await snapshot(db) == before


async def test_a_stored_device_keeps_its_kind(db: asyncpg.Pool, tmp_path: Path) -> None:
    await import_onboarding_file(db, EXAMPLE)
    before = await snapshot(db)
    data = example()
    member(data, "m-0001")["devices"][0]["kind"] = "cgm"

    with pytest.raises(ImportFileError) as caught:
        await import_onboarding_file(db, write(tmp_path, data))

    assert (caught.value.entry, caught.value.field) == ("members[0] (id m-0001)", "devices[0].kind")
    assert "stored as a glucose_meter" in str(caught.value)
    assert await snapshot(db) == before


async def test_an_assignment_overlapping_a_stored_one_is_refused(
    db: asyncpg.Pool, tmp_path: Path
) -> None:
    """A file that does not list m-0001 cannot hand m-0001's open-ended device to someone else."""
    await import_onboarding_file(db, EXAMPLE)
    before = await snapshot(db)
    data = example()
    data["members"] = [member(data, "m-0002")]
    data["members"][0]["devices"] = [
        {"id": "gm-0001", "kind": "glucose_meter", "assigned_from": "2027-01-01"}
    ]

    with pytest.raises(ImportFileError) as caught:
        await import_onboarding_file(db, write(tmp_path, data))

    assert (caught.value.entry, caught.value.field) == (
        "members[0] (id m-0002)",
        "devices[0].assigned_from",
    )
    assert "the stored assignment open..open (member m-0001)" in str(caught.value)
    assert await snapshot(db) == before


async def test_the_databases_exclusion_constraint_is_translated_and_rolls_back(
    db: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer outside the importer's lock takes the device after the importer read what is
    stored: PostgreSQL's exclusion constraint refuses the import, which is reported like the
    importer's own check, and the writes already made (the client's name, m-0001's assignment)
    are rolled back."""
    await import_onboarding_file(db, EXAMPLE)
    data = example()
    data["clients"][0]["name"] = "Acme Corporation"
    member(data, "m-0001")["devices"][1]["assigned_to"] = "2026-12-31"  # bp-0001
    # m-0003 returned cgm-0001 on 2026-07-31; the file hands it to m-0002 ...
    member(data, "m-0002")["devices"] = [
        {"id": "cgm-0001", "kind": "cgm", "assigned_from": "2026-09-01"}
    ]
    path = write(tmp_path, data)
    load = onboarding.Stored.load

    async def load_then_race(conn: Any, doc: onboarding.OnboardingFile) -> onboarding.Stored:
        stored = await load(conn, doc)
        await db.execute(  # ... while another connection gives it to m-0001 (commits at once)
            "INSERT INTO device_assignments (device_id, member_id, assigned_from) "
            "VALUES ('cgm-0001', 'm-0001', '2026-10-01T05:00Z')"
        )
        return stored

    monkeypatch.setattr(onboarding.Stored, "load", load_then_race)
    before = await snapshot(db)

    with pytest.raises(ImportFileError) as caught:
        await import_onboarding_file(db, path)

    assert isinstance(caught.value.__cause__, asyncpg.ExclusionViolationError)
    assert (caught.value.entry, caught.value.field) == ("members[1] (id m-0002)", "devices[0]")
    assert "overlaps an interval stored in the database" in str(caught.value)
    after = await snapshot(db)
    assert len(after["device_assignments"]) == len(before["device_assignments"]) + 1
    assert after | {"device_assignments": before["device_assignments"]} == before
    assert after["device_assignments"][:-1] == before["device_assignments"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("clients: []\npatients: []\n", "patients: unknown section"),
        ("members: {id: m-1}\n", "members: must be a list"),
        ("clients: [\n", "not valid YAML: "),
        ("coaches:\n  - id: c-1\n    name: A\n    name: B\n", "found duplicate key 'name'"),
    ],
)
async def test_a_malformed_file_is_refused(
    db: asyncpg.Pool, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "onboarding.yaml"
    path.write_text(text)
    with pytest.raises(ImportFileError) as caught:
        await import_onboarding_file(db, path)
    assert caught.value.entry == str(path)
    assert message in str(caught.value)


async def test_yaml_errors_do_not_quote_the_file(db: asyncpg.Pool, tmp_path: Path) -> None:
    path = tmp_path / "onboarding.yaml"
    path.write_text("members:\n  - {id: m-1, name: Pat Doe, phone: 555-0101\n")
    with pytest.raises(ImportFileError) as caught:
        await import_onboarding_file(db, path)
    assert "line 3" in str(caught.value)
    assert "Pat Doe" not in str(caught.value)
    assert "555-0101" not in str(caught.value)


async def test_json_errors(db: asyncpg.Pool, tmp_path: Path) -> None:
    path = tmp_path / "onboarding.json"
    path.write_text('{"clients": [], "clients": []}')
    with pytest.raises(ImportFileError, match="duplicate key 'clients'"):
        await import_onboarding_file(db, path)
    path.write_text('{"clients": [,]}')
    with pytest.raises(ImportFileError, match=r"not valid JSON: .* \(line 1, column 14\)"):
        await import_onboarding_file(db, path)


async def test_the_documented_examples_import(db: asyncpg.Pool, tmp_path: Path) -> None:
    """docs/onboarding.md's examples are real: its first YAML block is tests/data's example, and
    every YAML and JSON block imports (in order, so later ones may refer to earlier ones)."""
    text = (DATA.parent.parent / "docs" / "onboarding.md").read_text()
    blocks = re.findall(r"```(yaml|json)\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 3
    assert yaml.safe_load(blocks[0][1]) == example()
    for n, (kind, body) in enumerate(blocks):
        path = tmp_path / f"block{n}.{kind}"
        path.write_text(body)
        assert (await import_onboarding_file(db, path)).written > 0, f"block {n}"
    assert await db.fetchval("SELECT count(*) FROM contracts WHERE client_id = 'globex'") == 2
    assert await db.fetchval(
        "SELECT assigned_from FROM device_assignments WHERE device_id = 'bp-0100'"
    ) == utc(2026, 5, 1, 4)


# -- the command line ------------------------------------------------------------------------------


async def _vigil(database_url: str, *args: str) -> tuple[int, str, str]:
    env = os.environ | {
        "VIGIL_DATABASE_URL": database_url,
        "VIGIL_ENV": "test",
        "VIGIL_LOG_LEVEL": "DEBUG",
    }
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("vigil")),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_vigil_import_on_the_command_line(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    code, out, err = await _vigil(database_url, "import", str(EXAMPLE))
    assert code == 0, err
    assert out.splitlines()[4].split() == ["members", "3", "0", "0"]
    assert await db.fetchval("SELECT count(*) FROM members") == 3
    code, out, err = await _vigil(database_url, "import", str(EXAMPLE))
    assert code == 0, err
    assert out.rstrip().endswith("nothing changed")
    assert "onboarding import committed" in err  # logged, with counts only
    assert not any(p in out + err for p in PHI)

    data = example()
    member(data, "m-0002")["birth_date"] = "1958-11-31"
    code, out, err = await _vigil(database_url, "import", str(write(tmp_path, data)))
    assert code == 2
    assert out == ""
    assert "members[1] (id m-0002): birth_date: " in err
    assert not any(p in err for p in (*PHI, "1958-11-31"))
