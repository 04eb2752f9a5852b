"""The reading pipeline against the real PostgreSQL: exactly-once storage, quarantine, clocks."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson

from services.pipeline import Incoming, ReadingPipeline
from services.quarantine import replay
from tests.seed import seed_member

NOW = datetime(2026, 11, 3, 15, 0, tzinfo=UTC)  # the receive clock, faked


def _items(payloads: list[dict[str, object] | bytes], at: datetime = NOW) -> list[Incoming]:
    return [
        Incoming(raw=p if isinstance(p, bytes) else orjson.dumps(p), received_at=at,
                 transport="file")
        for p in payloads
    ]  # fmt: skip


def glucose(seq: int, value: float = 100, t: str = "2026-10-03T07:12:00-05:00", **kw: object):
    return {"device_id": "gm-1", "seq": seq, "kind": "glucose", "measured_at": t,
            "value": value, "unit": "mg/dL", **kw}  # fmt: skip


async def _readings(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM readings ORDER BY device_id, seq_epoch, seq")


async def _quarantine(pool: asyncpg.Pool) -> list[tuple[str, str | None, int | None]]:
    rows = await pool.fetch("SELECT reason, device_id, seq FROM quarantine ORDER BY id")
    return [(r["reason"], r["device_id"], r["seq"]) for r in rows]


async def test_resends_in_other_notations_are_stored_once(db: asyncpg.Pool) -> None:
    await seed_member(db)
    pipeline = ReadingPipeline(db)
    t0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
    originals = [
        glucose(s, 80 + s % 100, (t0 + timedelta(hours=s)).astimezone().isoformat())
        for s in range(300)
    ]
    rng = random.Random(7)
    resends: list[dict[str, object] | bytes] = []
    for o in rng.sample(originals, 60):
        instant = datetime.fromisoformat(str(o["measured_at"]))
        shuffled = dict(reversed(list(o.items())))  # keys in another order
        shuffled["measured_at"] = instant.astimezone(UTC).isoformat().replace("+00:00", "Z")
        shuffled["value"] = float(o["value"])  # type: ignore[arg-type]  # 80 vs 80.0
        resends.append(shuffled)
    result = await pipeline.process(_items([*originals, *resends]))
    counts = result.counts()
    assert (counts["accepted"], counts["duplicate"]) == (300, 60)
    assert await db.fetchval("SELECT count(*) FROM readings") == 300
    # and a second pass of everything is a no-op
    again = await pipeline.process(_items([*originals, *resends]))
    assert again.counts()["duplicate"] == 360
    assert await db.fetchval("SELECT count(*) FROM readings") == 300
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 0


async def test_originals_and_normalized_values_are_stored(db: asyncpg.Pool) -> None:
    await seed_member(db, devices={"gm-1": "glucose_meter", "bp-1": "bp_monitor", "sc-1": "scale"})
    pipeline = ReadingPipeline(db)
    await pipeline.process(_items([
        glucose(1, 5.6, unit="mmol/L", meal="fasting"),
        {"device_id": "bp-1", "seq": 1, "kind": "blood_pressure", "unit": "kPa",
         "measured_at": "2026-10-03T07:15:00-05:00", "systolic": 18.9, "diastolic": 12.0,
         "pulse": 71, "flags": ["irregular_heartbeat"]},
        {"device_id": "sc-1", "seq": 1, "kind": "weight", "unit": "lb",
         "measured_at": "2026-10-03T07:20:00-05:00", "value": 182.4},
    ]))  # fmt: skip
    rows = {r["device_id"]: r for r in await _readings(db)}
    g, bp, w = rows["gm-1"], rows["bp-1"], rows["sc-1"]
    assert (g["value"], g["unit"], round(g["glucose_mgdl"], 1)) == (
        Decimal("5.6"), "mmol/L", Decimal("100.9"))  # fmt: skip
    assert g["meal"] == "fasting" and g["member_id"] == "m-1"
    assert (bp["systolic"], bp["unit"], round(bp["systolic_mmhg"], 1)) == (
        Decimal("18.9"), "kPa", Decimal("141.8"))  # fmt: skip
    assert round(bp["diastolic_mmhg"], 1) == Decimal("90.0")
    assert bp["pulse"] == 71 and bp["flags"] == ["irregular_heartbeat"]
    assert (w["value"], w["unit"], round(w["weight_kg"], 2)) == (
        Decimal("182.4"), "lb", Decimal("82.74"))  # fmt: skip
    # device time and its offset are kept; effective_at is the same instant
    assert g["measured_offset"] == -300
    assert g["measured_at"] == g["effective_at"] == datetime(2026, 10, 3, 12, 12, tzinfo=UTC)
    assert g["received_at"] == NOW and not g["clock_corrected"]


async def test_impossible_values_are_quarantined_with_their_payload(db: asyncpg.Pool) -> None:
    await seed_member(db, devices={"gm-1": "glucose_meter", "bp-1": "bp_monitor", "sc-1": "scale"})
    bad = [
        glucose(1, 0),
        glucose(2, 2000),
        {"device_id": "bp-1", "seq": 1, "kind": "blood_pressure", "unit": "mmHg",
         "measured_at": "2026-10-03T07:15:00-05:00", "systolic": 300, "diastolic": 20},
        {"device_id": "bp-1", "seq": 2, "kind": "blood_pressure", "unit": "mmHg",
         "measured_at": "2026-10-03T07:15:00-05:00", "systolic": 110, "diastolic": 130},
        {"device_id": "sc-1", "seq": 1, "kind": "weight", "unit": "kg",
         "measured_at": "2026-10-03T07:20:00-05:00", "value": -1},
        b"\x00\x01 not json",
    ]  # fmt: skip
    result = await ReadingPipeline(db).process(_items(bad))
    assert [o.status for o in result.outcomes] == ["rejected"] * 6
    assert await _quarantine(db) == [
        ("out_of_range", "gm-1", 1),
        ("out_of_range", "gm-1", 2),
        ("out_of_range", "bp-1", 1),
        ("diastolic_not_below_systolic", "bp-1", 2),
        ("out_of_range", "sc-1", 1),
        ("malformed_json", None, None),
    ]
    raw = await db.fetchval("SELECT raw FROM quarantine WHERE device_id = 'gm-1' AND seq = 2")
    assert orjson.loads(raw)["value"] == 2000  # kept exactly as sent, never clipped
    assert await db.fetchval("SELECT count(*) FROM readings") == 0


async def test_hi_lo_and_control_solution_are_stored_as_flagged(db: asyncpg.Pool) -> None:
    await seed_member(db)
    await ReadingPipeline(db).process(_items([
        {"device_id": "gm-1", "seq": 1, "kind": "glucose", "unit": "mg/dL",
         "measured_at": "2026-10-03T21:40:00-05:00", "flags": ["LO"]},
        glucose(2, 130, flags=["control_solution"]),
    ]))  # fmt: skip
    rows = await _readings(db)
    assert [(r["seq"], r["value"], r["flags"]) for r in rows] == [
        (1, None, ["LO"]), (2, Decimal(130), ["control_solution"])]  # fmt: skip


async def test_reset_meter_clock_is_corrected_not_lost(db: asyncpg.Pool) -> None:
    await seed_member(db, assigned_from=datetime(2026, 1, 1, 6, tzinfo=UTC))
    pipeline = ReadingPipeline(db)
    result = await pipeline.process(_items([glucose(5, 90, "2000-01-01T00:03:00Z")]))
    assert result.outcomes[0].status == "accepted"
    (row,) = await _readings(db)
    assert row["effective_at"] == NOW and row["clock_corrected"]
    assert row["measured_at"] == datetime(2000, 1, 1, 0, 3, tzinfo=UTC)  # the device time, kept
    # A resend later is recognised by its content, whatever the receive time.
    later = await pipeline.process(_items([glucose(5, 90, "2000-01-01T00:03:00Z")],
                                          at=NOW + timedelta(hours=2)))  # fmt: skip
    assert later.outcomes[0].status == "duplicate"
    assert await db.fetchval("SELECT count(*) FROM readings") == 1


async def test_clock_rule_future_in_service_and_backwards(db: asyncpg.Pool) -> None:
    await seed_member(db, in_service_from=date(2026, 6, 1))
    pipeline = ReadingPipeline(db)
    await pipeline.process(_items([
        glucose(1, 90, "2026-10-31T08:00:00+00:00"),
        glucose(2, 91, (NOW + timedelta(minutes=6)).isoformat()),   # future: corrected
        glucose(3, 92, "2026-05-20T08:00:00+00:00"),                 # before in service
        glucose(10, 93, "2026-11-01T08:00:00+00:00"),
        glucose(11, 94, "2026-10-30T08:00:00+00:00"),                # went backwards
        glucose(12, 95, "2026-11-02T08:00:00+00:00"),                # fine again
        glucose(13, 96, (NOW + timedelta(minutes=4)).isoformat()),   # within 5 min: fine
    ]))  # fmt: skip
    corrected = {r["seq"]: r["clock_corrected"] for r in await _readings(db)}
    assert corrected == {1: False, 2: True, 3: True, 10: False, 11: True, 12: False, 13: False}
    # the backwards rule also holds across batches (the lower seq is already stored)
    await pipeline.process(_items([glucose(14, 97, "2026-10-01T08:00:00+00:00")]))
    row = await db.fetchrow("SELECT clock_corrected, effective_at FROM readings WHERE seq = 14")
    assert row["clock_corrected"] and row["effective_at"] == NOW


async def test_seq_conflict_and_sequence_reuse(db: asyncpg.Pool) -> None:
    await seed_member(db)
    pipeline = ReadingPipeline(db)
    await pipeline.process(_items([glucose(17, 62, "2026-10-03T07:12:00-05:00")]))
    # same seq, different value, earlier time: never silently dropped, quarantined
    r1 = await pipeline.process(_items([glucose(17, 99, "2026-10-03T07:00:00-05:00")]))
    assert r1.outcomes[0].reason is not None and r1.outcomes[0].reason.value == "seq_conflict"
    # same seq, different content, later time (16-bit wrap or reset memory): a new reading
    r2 = await pipeline.process(_items([
        glucose(17, 140, "2026-10-20T07:00:00-05:00"),
        glucose(18, 141, "2026-10-20T09:00:00-05:00"),
    ]))  # fmt: skip
    assert [o.status for o in r2.outcomes] == ["accepted", "accepted"]
    rows = [(r["seq_epoch"], r["seq"], r["value"]) for r in await _readings(db)]
    assert rows == [(0, 17, 62), (1, 17, 140), (1, 18, 141)]
    # resends of either epoch's readings are duplicates
    r3 = await pipeline.process(_items([
        glucose(17, 62, "2026-10-03T07:12:00-05:00"),
        glucose(17, 140, "2026-10-20T07:00:00-05:00"),
    ]))  # fmt: skip
    assert [o.status for o in r3.outcomes] == ["duplicate", "duplicate"]
    assert await _quarantine(db) == [("seq_conflict", "gm-1", 17)]


async def test_unknown_and_unassigned_devices_then_replay(db: asyncpg.Pool) -> None:
    await seed_member(db, assigned_from=datetime(2026, 10, 10, 5, tzinfo=UTC))
    pipeline = ReadingPipeline(db)
    result = await pipeline.process(_items([
        {**glucose(1, 100), "device_id": "gm-404"},
        glucose(2, 101, "2026-10-03T07:12:00-05:00"),   # before the assignment
        glucose(3, 102, "2026-10-12T07:12:00-05:00"),
    ]))  # fmt: skip
    assert [o.reason.value if o.reason else o.status for o in result.outcomes] == [
        "unknown_device", "unassigned_device", "accepted"]  # fmt: skip
    # The operator fixes the cause: the device was handed out on 2026-10-01 after all.
    await db.execute(
        "UPDATE device_assignments SET assigned_from = '2026-10-01T05:00:00Z' "
        "WHERE device_id = 'gm-1'"
    )
    summary = await replay(pipeline, db, reason="unassigned_device")
    assert summary["accepted"] == 1
    assert [r["seq"] for r in await _readings(db)] == [2, 3]
    states = await db.fetch("SELECT reason, status, resolution FROM quarantine ORDER BY id")
    assert [tuple(s) for s in states] == [
        ("unknown_device", "open", None),
        ("unassigned_device", "resolved", "accepted"),
    ]
    # replaying the still-broken entry keeps it, with an attempt counted
    await replay(pipeline, db)
    row = await db.fetchrow(
        "SELECT status, attempts FROM quarantine WHERE reason = 'unknown_device'"
    )
    assert tuple(row) == ("open", 2)


async def test_reassigned_device_attributes_by_effective_time(db: asyncpg.Pool) -> None:
    switch = datetime(2026, 10, 15, 5, tzinfo=UTC)
    await seed_member(db, "m-1", assigned_to=switch)
    await seed_member(db, "m-2", devices={}, client_id="acme")
    await db.execute(
        "INSERT INTO device_assignments (device_id, member_id, assigned_from) "
        "VALUES ('gm-1', 'm-2', $1)", switch,
    )  # fmt: skip
    await ReadingPipeline(db).process(_items([
        glucose(1, 100, "2026-10-14T07:00:00-05:00"), glucose(2, 100, "2026-10-16T07:00:00-05:00"),
    ]))  # fmt: skip
    assert [r["member_id"] for r in await _readings(db)] == ["m-1", "m-2"]


async def test_rollup_view_matches_readings_before_and_after_refresh(db: asyncpg.Pool) -> None:
    from services.storage.rollups import refresh_rollups

    await seed_member(db)
    pipeline = ReadingPipeline(db)
    await pipeline.process(_items([glucose(s, 100 + s, f"2026-10-03T07:{s:02d}:00-05:00")
                                   for s in range(1, 11)]))  # fmt: skip
    query = ("SELECT bucket, n, n_values, primary_sum, primary_min, primary_max "
             "FROM reading_rollup_hourly WHERE member_id = 'm-1' ORDER BY bucket")  # fmt: skip
    live = [tuple(r) for r in await db.fetch(query)]
    assert live == [(datetime(2026, 10, 3, 12, tzinfo=UTC), 10, 10, Decimal(1055),
                     Decimal(101), Decimal(110))]  # fmt: skip
    async with db.acquire() as conn:
        await refresh_rollups(conn, now=NOW)
    assert [tuple(r) for r in await db.fetch(query)] == live
    # a reading after the refresh is visible at once (materialized + live tail)
    await pipeline.process(_items([glucose(11, 90, "2026-11-03T14:30:00+00:00")]))
    rows = await db.fetch(query)
    assert len(rows) == 2 and rows[-1]["n"] == 1


async def test_hostile_text_and_revoked_devices_are_quarantined(db: asyncpg.Pool) -> None:
    await seed_member(db)
    nul = b'{"device_id": "gm-1\\u0000x", "seq": 1, "kind": "glucose", "val\\u0000ue": 1}'
    result = await ReadingPipeline(db).process(_items([nul, glucose(2)]))
    assert [o.status for o in result.outcomes] == ["rejected", "accepted"]
    raw = await db.fetchval("SELECT raw FROM quarantine")
    assert bytes(raw) == nul  # the raw payload is kept exactly
    await db.execute("UPDATE devices SET status = 'revoked'")
    result = await ReadingPipeline(db).process(_items([glucose(3)]))
    assert result.outcomes[0].reason is not None
    assert result.outcomes[0].reason.value == "device_revoked"
    assert await db.fetchval("SELECT count(*) FROM readings") == 1
