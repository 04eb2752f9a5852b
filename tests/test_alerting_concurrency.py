"""Two OS processes evaluate the same critical reading at the same moment: one alert."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

import asyncpg
import orjson

from services.pipeline import Incoming, ReadingPipeline
from tests.seed import seed_member


async def test_two_processes_one_alert(db: asyncpg.Pool, database_url: str) -> None:
    await seed_member(db)
    raw = orjson.dumps({"device_id": "gm-1", "seq": 1, "kind": "glucose", "value": 41,
                        "unit": "mg/dL", "measured_at": datetime.now(UTC).isoformat()})  # fmt: skip
    # Stored without evaluation (a plain pipeline), so that only the two racers evaluate it.
    await ReadingPipeline(db).process([Incoming(raw, datetime.now(UTC), "file")])
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.alert_racer", database_url, "gm-1", "1",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout is not None
        assert (await asyncio.wait_for(p.stdout.readline(), 30)).strip() == b"ready"
    for p in procs:  # release both together
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        await p.stdin.drain()
    outs = [await asyncio.wait_for(p.communicate(), 30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = await db.fetch("SELECT rule, tier, count, status FROM alerts")
    assert [tuple(r) for r in rows] == [("hypoglycemia", "critical", 1, "open")]
    assert await db.fetchval("SELECT count(*) FROM alert_readings") == 1
    # the guarantee is the database's: a partial unique index on active alerts
    indexdef = await db.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'alerts_one_active'"
    )
    assert "UNIQUE" in indexdef and "(member_id, rule)" in indexdef
    assert "WHERE (status = ANY (ARRAY['open'::text, 'acknowledged'::text]))" in indexdef
