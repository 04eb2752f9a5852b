"""Rule engine scenarios through the real pipeline: readings in, alerts out (PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from alerting.engine import RuleEngine
from alerting.lifecycle import AlertConflict, claim, queue, resolve
from services.pipeline import Incoming, ReadingPipeline
from tests.seed import seed_member

T0 = datetime(2026, 11, 3, 14, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class World:
    """A member with a glucose meter, a cuff and a scale; readings go through the pipeline and
    the rule engine exactly as they do in production, with the clock faked."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db
        self.clock = Clock(T0)
        self.pipeline = ReadingPipeline(db, sink=RuleEngine(db, clock=self.clock))
        self.seq = 0

    async def send(self, kind: str, *, at: datetime | None = None,
                   received: datetime | None = None, **fields: Any) -> None:  # fmt: skip
        self.seq += 1
        device = {"glucose": "gm-1", "blood_pressure": "bp-1", "weight": "sc-1"}[kind]
        at = at or self.clock.now
        doc = {"device_id": device, "seq": self.seq, "kind": kind,
               "measured_at": at.isoformat(), **fields}  # fmt: skip
        result = await self.pipeline.process(
            [Incoming(orjson.dumps(doc), received or self.clock.now, "file")]
        )
        assert result.outcomes[0].status == "accepted", result.outcomes

    async def glucose(self, value: float | None, unit: str = "mg/dL", **kw: Any) -> None:
        fields = {"unit": unit, **kw}
        if value is not None:
            fields["value"] = value
        await self.send("glucose", **fields)

    async def bp(self, systolic: float, diastolic: float, unit: str = "mmHg", **kw: Any) -> None:
        await self.send("blood_pressure", systolic=systolic, diastolic=diastolic, unit=unit, **kw)

    async def weight(self, value: float, unit: str = "lb", **kw: Any) -> None:
        await self.send("weight", value=value, unit=unit, **kw)

    async def alerts(self) -> list[tuple[str, str, int]]:
        rows = await self.db.fetch(
            "SELECT rule, tier, count FROM alerts WHERE status <> 'resolved' ORDER BY id"
        )
        return [(r["rule"], r["tier"], r["count"]) for r in rows]

    def later(self, **delta: float) -> None:
        self.clock.now += timedelta(**delta)


@pytest.fixture
async def world(db: asyncpg.Pool) -> World:
    await seed_member(db, devices={"gm-1": "glucose_meter", "bp-1": "bp_monitor",
                                   "sc-1": "scale"})  # fmt: skip
    await db.execute("INSERT INTO care_plans (member_id) VALUES ('m-1')")
    return World(db)


Send = Callable[[World], Any]

THRESHOLD_CASES: list[tuple[str, Send, list[tuple[str, str, int]]]] = [
    ("hypo 69 mg/dL", lambda w: w.glucose(69), [("hypoglycemia", "high", 1)]),
    ("hypo 70 mg/dL", lambda w: w.glucose(70), []),
    ("hypo 3.8 mmol/L", lambda w: w.glucose(3.8, "mmol/L"), [("hypoglycemia", "high", 1)]),
    ("hypo 3.9 mmol/L", lambda w: w.glucose(3.9, "mmol/L"), []),
    ("hypo 53 mg/dL", lambda w: w.glucose(53), [("hypoglycemia", "critical", 1)]),
    ("hypo 54 mg/dL", lambda w: w.glucose(54), [("hypoglycemia", "high", 1)]),
    ("hypo 2.9 mmol/L", lambda w: w.glucose(2.9, "mmol/L"), [("hypoglycemia", "critical", 1)]),
    ("hypo 3.0 mmol/L", lambda w: w.glucose(3.0, "mmol/L"), [("hypoglycemia", "high", 1)]),
    ("meter LO", lambda w: w.glucose(None, flags=["LO"]), [("hypoglycemia", "critical", 1)]),
    ("hyper 249", lambda w: w.glucose(249), []),
    ("hyper 250", lambda w: w.glucose(250), [("hyperglycemia", "medium", 1)]),
    ("hyper 13.9 mmol/L", lambda w: w.glucose(13.9, "mmol/L"), [("hyperglycemia", "medium", 1)]),
    ("hyper 400", lambda w: w.glucose(400), [("hyperglycemia", "critical", 1)]),
    ("meter HI", lambda w: w.glucose(None, flags=["HI"]), [("hyperglycemia", "critical", 1)]),
    ("control solution", lambda w: w.glucose(40, flags=["control_solution"]), []),
    ("bp 181/90", lambda w: w.bp(181, 90), [("bp_severe", "critical", 1)]),
    ("bp 180/120", lambda w: w.bp(180, 120), []),
    ("bp 170/121", lambda w: w.bp(170, 121), [("bp_severe", "critical", 1)]),
    ("bp 24.0 kPa", lambda w: w.bp(24.0, 11.0, "kPa"), []),
    ("bp 24.1 kPa", lambda w: w.bp(24.1, 11.0, "kPa"), [("bp_severe", "critical", 1)]),
    ("hypotension 89", lambda w: w.bp(89, 60), [("hypotension", "high", 1)]),
    ("hypotension 90", lambda w: w.bp(90, 60), []),
]


@pytest.mark.parametrize(("send", "expected"), [c[1:] for c in THRESHOLD_CASES],
                         ids=[c[0] for c in THRESHOLD_CASES])  # fmt: skip
async def test_single_reading_rules_at_their_thresholds(
    world: World, send: Send, expected: list[tuple[str, str, int]]
) -> None:
    await send(world)
    assert await world.alerts() == expected


async def test_repeats_coalesce_and_the_tier_rises(world: World) -> None:
    await world.glucose(65)
    world.later(minutes=20)
    await world.glucose(62)
    assert await world.alerts() == [("hypoglycemia", "high", 2)]
    world.later(minutes=5)
    await world.glucose(48)
    assert await world.alerts() == [("hypoglycemia", "critical", 3)]
    row = await world.db.fetchrow("SELECT worst_value, latest_value, sla_due_at FROM alerts")
    assert (row["worst_value"], row["latest_value"]) == (48, 48)
    # the critical SLA (3 minutes) now applies, from the worse reading
    assert row["sla_due_at"] == world.clock.now + timedelta(minutes=3)
    events = [r["kind"] for r in await world.db.fetch("SELECT kind FROM alert_events ORDER BY id")]
    assert events == ["opened", "reading_attached", "tier_raised"]


async def test_windowed_bp_rules(world: World) -> None:
    await world.bp(138, 80)
    world.later(days=1)
    await world.bp(136, 82)
    assert await world.alerts() == []  # two readings are not enough
    world.later(days=1)
    await world.bp(134, 79, flags=["irregular_heartbeat"])
    assert await world.alerts() == [("bp_uncontrolled", "medium", 1)]  # mean 136/80.3
    world.later(days=2)
    await world.bp(120, 75, flags=["irregular_heartbeat"])
    rules = {r for r, _, _ in await world.alerts()}
    assert rules == {"bp_uncontrolled", "irregular_pulse"}
    world.later(days=8)  # a week later, one old-looking flag is out of the window
    await world.bp(118, 74, flags=["irregular_heartbeat"])
    counts = dict((r, c) for r, _, c in await world.alerts())
    assert counts["irregular_pulse"] == 1 and counts["bp_uncontrolled"] == 1


async def test_recurring_hypoglycemia_counts_episodes(world: World) -> None:
    await world.glucose(65)
    world.later(minutes=30)
    await world.glucose(60)  # same episode (< 2 hours)
    world.later(hours=6)
    await world.glucose(66)
    assert ("recurring_hypoglycemia", "medium", 1) not in await world.alerts()
    world.later(days=1)
    await world.glucose(64)
    assert ("recurring_hypoglycemia", "medium", 1) in await world.alerts()


async def test_weight_gain_needs_heart_failure_and_ignores_housemates(world: World) -> None:
    await world.weight(180.0)
    world.later(days=1)
    await world.weight(182.2)
    assert await world.alerts() == []  # not a heart-failure member
    await world.db.execute("UPDATE care_plans SET conditions = '{heart_failure}'")
    world.later(days=1)
    await world.weight(231.0)  # someone else on the scale: > 15% from the 30-day median
    assert await world.alerts() == [("weight_data_quality", "low", 1)]
    world.later(hours=1)
    await world.weight(184.5)  # not the first weighing of the day: no gain rule
    world.later(days=1)
    await world.weight(184.6)  # first of day: +2.4 lb on yesterday's first valid (182.2)... see
    assert ("weight_gain_rapid", "high", 1) in await world.alerts()


async def test_weight_gain_over_a_week(world: World) -> None:
    await world.db.execute("UPDATE care_plans SET conditions = '{heart_failure}'")
    for day, lb in enumerate([180.0, 181.0, 181.9, 182.8, 183.7, 185.1]):
        world.clock.now = T0 + timedelta(days=day)
        await world.weight(lb)
    # never +2 lb in a day, but +5.1 lb on the first-of-day weight five days earlier
    assert await world.alerts() == [("weight_gain_rapid", "high", 1)]
    detail = json.loads(await world.db.fetchval("SELECT detail FROM alerts"))
    assert detail == {"window": "7 days", "gain_lb": "5.1"}


async def test_late_data_is_retrospective_until_a_live_reading(world: World) -> None:
    await world.glucose(60, at=T0 - timedelta(hours=5))  # received now: 5 hours late
    row = await world.db.fetchrow("SELECT retrospective, sla_due_at FROM alerts")
    assert row["retrospective"] and row["sla_due_at"] == T0 + timedelta(hours=8)
    (live,) = await queue(world.db)
    assert live.retrospective
    world.later(minutes=10)
    await world.glucose(62)
    row = await world.db.fetchrow("SELECT retrospective, sla_due_at, count FROM alerts")
    assert not row["retrospective"] and row["count"] == 2
    assert row["sla_due_at"] == world.clock.now + timedelta(minutes=30)  # the live high SLA


async def test_cool_down_for_medium_but_never_for_critical(world: World) -> None:
    async with world.db.acquire() as conn:
        await world.db.execute("INSERT INTO coaches (id, name) VALUES ('c-1', 'Coach One')")
        await world.glucose(260)
        (alert,) = await queue(world.db)
        await claim(conn, alert.id, "c-1", now=world.clock.now)
        await resolve(conn, alert.id, "c-1", "reached_member", now=world.clock.now)
        world.later(minutes=10)
        await world.glucose(270)
        assert await world.alerts() == []  # within the 30-minute cool-down
        world.later(minutes=25)
        await world.glucose(265)
        assert await world.alerts() == [("hyperglycemia", "medium", 1)]
        # a critical low after treatment: the retest that matters, no cool-down
        await world.glucose(50)
        (low,) = [a for a in await queue(world.db) if a.rule == "hypoglycemia"]
        await claim(conn, low.id, "c-1", now=world.clock.now)
        await resolve(conn, low.id, "c-1", "treated_per_protocol", now=world.clock.now)
        world.later(minutes=15)
        await world.glucose(52)
        assert ("hypoglycemia", "critical", 1) in await world.alerts()


async def test_claim_is_exclusive(world: World) -> None:
    await world.db.execute("INSERT INTO coaches (id, name) VALUES ('c-1', 'A'), ('c-2', 'B')")
    await world.glucose(50)
    (alert,) = await queue(world.db)
    async with world.db.acquire() as conn:
        await claim(conn, alert.id, "c-1")
        with pytest.raises(AlertConflict):
            await claim(conn, alert.id, "c-2")
    row = await world.db.fetchrow("SELECT status, acknowledged_by, first_outreach_due_at FROM alerts")
    assert (row["status"], row["acknowledged_by"]) == ("acknowledged", "c-1")
    assert row["first_outreach_due_at"] is not None  # critical: first outreach within 5 minutes


async def test_care_plan_overrides_and_their_floors(world: World) -> None:
    overrides = [
        {"rule": "hypoglycemia", "parameter": "level1_mgdl", "value": "80", "reason": "elderly",
         "set_by": "c-rn"},  # fmt: skip
    ]
    await world.db.execute("UPDATE care_plans SET overrides = $1", json.dumps(overrides))
    await world.glucose(75)
    assert await world.alerts() == [("hypoglycemia", "high", 1)]
    await world.db.execute("TRUNCATE alerts, alert_readings, alert_events CASCADE")
    # An override cannot loosen the level-2 floor: 40 below level 2 is ignored, 50 is critical.
    loosened = [{"rule": "hypoglycemia", "parameter": "level1_mgdl", "value": "40",
                 "reason": "x", "set_by": "c-rn"},
                {"rule": "bp_severe", "parameter": "systolic_mmhg", "value": "220",
                 "reason": "x", "set_by": "c-rn"}]  # fmt: skip
    await world.db.execute("UPDATE care_plans SET overrides = $1", json.dumps(loosened))
    await world.glucose(50)
    await world.bp(190, 100)
    await world.glucose(65)
    assert await world.alerts() == [("hypoglycemia", "critical", 2), ("bp_severe", "critical", 1)]


async def test_alerts_list_cli_prints_the_queue_in_priority_order(
    world: World, database_url: str
) -> None:
    import asyncio
    import os
    import sys
    from pathlib import Path

    # (the late reading goes first: a lower seq with a later time would be a clock fault)
    await world.glucose(45, at=T0 - timedelta(hours=4))  # critical but retrospective
    await world.glucose(260)  # medium
    await world.bp(185, 95)  # critical, live
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("vigil")), "alerts", "list", "--format", "jsonl",
        env={**os.environ, "VIGIL_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in out.decode().splitlines()]
    assert [(r["rule"], r["tier"], r["retrospective"]) for r in rows] == [
        ("bp_severe", "critical", False),
        ("hyperglycemia", "medium", False),
        ("hypoglycemia", "critical", True),
    ]
    assert {"id", "member_id", "rule", "tier", "status", "retrospective", "opened_at", "count",
            "worst_value"} <= set(rows[0])  # fmt: skip
    assert rows[2]["worst_value"] == str(Decimal(45))


async def test_alerts_list_cli_audits_the_members_it_shows(world: World, database_url: str) -> None:
    import asyncio
    import os
    import sys
    from pathlib import Path

    await world.glucose(50)
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("vigil")), "alerts", "list",
        env={**os.environ, "VIGIL_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err
    rows = await world.db.fetch(
        "SELECT actor, action, member_id FROM audit_log WHERE action = 'alerts.list'"
    )
    assert [(r["action"], r["member_id"]) for r in rows][-1:] == [("alerts.list", "m-1")]
    assert rows[-1]["actor"].startswith("cli:")
