"""Chaos: a gateway worker SIGKILLed mid-transaction, and the database stopped mid-flood.

Each test prints `published N, stored N, duplicates 0` and holds every reading exactly once.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from services.embedded import private_mosquitto, private_postgres
from services.settings import Settings
from services.storage.migrate import migrate
from simulators.meter import VirtualMeter
from tests.gateway_harness import (
    GatewayProcess,
    gateway_env,
    readings_for,
    running,
    seed_fleet,
    wait_all_acked,
)

pytestmark = pytest.mark.slow


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[str]:
    async with private_mosquitto(tmp_path) as url:
        yield url


def _meters(ids: list[str], url: str, per_device: int) -> list[VirtualMeter]:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    meters = []
    for d in ids:
        m = VirtualMeter(d, host=host, port=int(port), resend_after=3.0)
        m.record(readings_for(d, per_device))
        meters.append(m)
    return meters


_IN_BATCH = """
SELECT pid FROM pg_stat_activity
WHERE application_name = $1 AND xact_start IS NOT NULL
  AND (state = 'idle in transaction' OR query ILIKE '%_vigil_stage%'
       OR query ILIKE '%reading_keys%' OR query ILIKE '%device_assignments%')
"""


async def test_worker_sigkilled_mid_transaction_loses_nothing(
    db: asyncpg.Pool, database_url: str, broker: str
) -> None:
    ids = await seed_fleet(db, 100)
    env = gateway_env(database_url, broker, f"g-{uuid.uuid4().hex[:6]}",
                      VIGIL_GATEWAY_BATCH_SIZE="500")  # fmt: skip
    worker = GatewayProcess("chaos", env)  # the same id each restart: it resumes its session
    await worker.start()
    meters = _meters(ids, broker, 100)
    kills = 0
    try:
        async with running(meters):
            while kills < 5:
                # Kill only while a batch transaction is open (uncommitted) in the database.
                async with asyncio.timeout(60):
                    while not await db.fetchval(_IN_BATCH, "vigil-gw-chaos"):
                        await asyncio.sleep(0.002)
                await worker.kill()
                kills += 1
                await worker.start()
                await asyncio.sleep(0.5)
            await wait_all_acked(meters, timeout=120)
    finally:
        code = await worker.stop()
    assert code == 0
    published = sum(m.stats.published for m in meters)
    stored = await db.fetchval("SELECT count(*) FROM readings")
    unique = await db.fetchval("SELECT count(DISTINCT (device_id, seq)) FROM readings")
    print(f"published {published}, stored {stored}, duplicates {stored - unique}, kills {kills}")
    assert kills == 5
    assert published == stored == unique == 10_000
    assert all(sorted(m.acked) == list(range(1, 101)) for m in meters)


def _pg_ctl(data: str, *args: str) -> None:
    bindir = next(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")).parent
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D", data, *args],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


async def test_database_outage_stops_acks_and_loses_nothing(
    tmp_path: Path, broker: str
) -> None:
    async with private_postgres(tmp_path / "pg") as admin_dsn:
        dsn = admin_dsn.rpartition("/")[0] + "/vigil"
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute("CREATE DATABASE vigil")
            data = await admin.fetchval("SHOW data_directory")
        finally:
            await admin.close()
        opts = shlex.split((Path(data) / "postmaster.opts").read_text())[1:]
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, Settings(database_url=dsn))  # type: ignore[arg-type]
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            ids = await seed_fleet(pool, 50)
        finally:
            await pool.close()
        worker = GatewayProcess("outage", gateway_env(dsn, broker, f"g-{uuid.uuid4().hex[:6]}"))
        await worker.start()
        meters = _meters(ids, broker, 100)
        try:
            async with running(meters):
                await asyncio.sleep(1.0)
                _pg_ctl(data, "stop", "-m", "immediate")  # a crash: uncommitted work is gone
                await asyncio.sleep(1.0)  # acks of batches committed before the crash land
                acked_during = sum(len(m.acked) for m in meters)
                await asyncio.sleep(3.0)
                # Nothing was acked while the database was down.
                assert sum(len(m.acked) for m in meters) == acked_during
                assert acked_during < 5_000  # the outage really hit the flood
                _pg_ctl(data, "start", "-w", "-o", shlex.join(opts[2:]),
                        "-l", f"{data}/restart.log")  # fmt: skip
                await wait_all_acked(meters, timeout=120)
        finally:
            code = await worker.stop()
        assert code == 0
        conn = await asyncpg.connect(dsn)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM readings")
            unique = await conn.fetchval("SELECT count(DISTINCT (device_id, seq)) FROM readings")
        finally:
            await conn.close()
        published = sum(m.stats.published for m in meters)
        print(f"published {published}, stored {stored}, duplicates {stored - unique}")
        assert published == stored == unique == 5_000
        assert any("database unavailable" in line for line in worker.log)
