"""The TimescaleDB path (services/storage/timescale.py). Runs only with VIGIL_REQUIRE_TIMESCALE=1,
against a server that has the extension (VIGIL_TEST_ADMIN_URL):

    VIGIL_REQUIRE_TIMESCALE=1 VIGIL_TEST_ADMIN_URL=postgresql://postgres@HOST:PORT/postgres \\
        .venv/bin/pytest tests/test_timescale.py

Production deployments use TimescaleDB; CI here has plain PostgreSQL, where this module skips.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest

from services.pipeline import Incoming, ReadingPipeline
from services.storage import timescale
from services.storage.rollups import refresh_rollups
from tests.conftest import REQUIRE_TIMESCALE
from tests.seed import seed_member

pytestmark = [
    pytest.mark.timescale,
    pytest.mark.skipif(not REQUIRE_TIMESCALE, reason="needs VIGIL_REQUIRE_TIMESCALE=1"),
]


def _g(seq: int, t: datetime, value: int = 100, device: str = "gm-1") -> Incoming:
    raw = orjson.dumps({"device_id": device, "seq": seq, "kind": "glucose", "value": value,
                        "unit": "mg/dL", "measured_at": t.isoformat()})  # fmt: skip
    return Incoming(raw=raw, received_at=datetime.now(UTC), transport="file")


async def test_schema_is_converted(db: asyncpg.Pool, migrated: str) -> None:
    assert migrated == "timescale"
    assert await db.fetchval(
        "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'readings'"
    )
    dims = await db.fetchrow(
        "SELECT column_name, time_interval FROM timescaledb_information.dimensions "
        "WHERE hypertable_name = 'readings'"
    )
    assert tuple(dims) == ("effective_at", timescale.CHUNK_INTERVAL)
    cagg = await db.fetchrow(
        "SELECT materialized_only FROM timescaledb_information.continuous_aggregates "
        "WHERE view_name = 'reading_rollup_hourly'"
    )
    assert cagg is not None and cagg["materialized_only"] is False
    jobs = {
        r["proc_name"]: r
        for r in await db.fetch(
            "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs "
            "WHERE proc_schema = '_timescaledb_functions'"
        )
    }
    assert {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"} <= set(
        jobs
    )
    retention = orjson.loads(jobs["policy_retention"]["config"])
    assert retention["drop_after"] in ("7 years 7 days", "2562 days")  # >= 7 years
    refresh = orjson.loads(jobs["policy_refresh_continuous_aggregate"]["config"])
    # the aggregate's refresh window stays inside retention: dropping raw chunks never
    # rewrites its history
    assert refresh["start_offset"] == "35 days"


async def test_on_conflict_into_a_compressed_chunk(db: asyncpg.Pool) -> None:
    await seed_member(db)
    pipeline = ReadingPipeline(db)
    old = datetime.now(UTC) - timedelta(days=60)
    first = await pipeline.process([_g(s, old + timedelta(hours=s)) for s in range(1, 6)])
    assert first.counts()["accepted"] == 5
    async with db.acquire() as conn:
        chunks = await conn.fetch(
            "SELECT show_chunks('readings', older_than => now() - INTERVAL '30 days') AS c"
        )
        for c in chunks:
            await conn.execute(
                "SELECT compress_chunk($1::regclass, if_not_compressed => true)", c["c"]
            )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'readings' AND is_compressed"
        )
        >= 1
    )
    # resends: duplicates, nothing written; a new reading lands in the compressed range
    again = await pipeline.process(
        [_g(s, old + timedelta(hours=s)) for s in range(1, 6)]
        + [_g(6, old + timedelta(hours=6, minutes=30))]
    )
    assert (again.counts()["duplicate"], again.counts()["accepted"]) == (5, 1)
    assert await db.fetchval("SELECT count(*) FROM readings WHERE device_id = 'gm-1'") == 6
    # and the unique index holds inside the compressed chunk: a raw re-insert is a no-op
    status = await db.execute(
        "INSERT INTO readings SELECT * FROM readings WHERE seq = 1 ON CONFLICT DO NOTHING"
    )
    assert status == "INSERT 0 0"


async def test_aggregate_is_real_time_and_survives_retention(db: asyncpg.Pool) -> None:
    await seed_member(db, "m-agg", {"gm-agg": "glucose_meter"})
    pipeline = ReadingPipeline(db)
    now = datetime.now(UTC).replace(minute=5, second=0, microsecond=0)
    old = now - timedelta(days=100)
    await pipeline.process(
        [_g(1, old, 90, "gm-agg"), _g(2, old + timedelta(minutes=10), 110, "gm-agg")]
    )
    q = ("SELECT bucket, n, primary_sum FROM reading_rollup_hourly WHERE member_id = 'm-agg' "
         "ORDER BY bucket")  # fmt: skip
    # real time: visible before any refresh (materialized_only = false)
    await pipeline.process([_g(3, now, 70, "gm-agg")])
    rows = [tuple(r) for r in await db.fetch(q)]
    assert [r[1:] for r in rows] == [(2, Decimal(200)), (1, Decimal(70))]
    async with db.acquire() as conn:
        await refresh_rollups(conn, since=old - timedelta(days=1))
        # raw chunks older than 90 days dropped (what the retention policy does at 7 years)
        await conn.execute(
            "SELECT drop_chunks('readings', older_than => now() - INTERVAL '90 days')"
        )
        await timescale.run_policies_now(conn)
    assert await db.fetchval("SELECT count(*) FROM readings WHERE member_id = 'm-agg'") == 1
    rows_after = [tuple(r) for r in await db.fetch(q)]
    assert [r[1:] for r in rows_after] == [(2, Decimal(200)), (1, Decimal(70))]
