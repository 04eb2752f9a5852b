"""Shared fixtures. Integration tests talk to the real PostgreSQL (and Mosquitto).

Each test session creates its own database on the server named by VIGIL_TEST_ADMIN_URL (default
the local server, user postgres), migrates it once, and drops it at the end. Tests that write
take `db`, which empties every data table first, so each test starts from a known state.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from services.settings import Settings
from services.storage.db import open_pool
from services.storage.migrate import migrate

ADMIN_URL = os.environ.get("VIGIL_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parent.parent

# Tables that hold data (not migrations' reference rows such as programs or vigil_meta).
DATA_TABLES = (
    "scheduler_jobs",
    "alert_events", "alert_readings", "alerts", "rule_outbox",
    "readings", "reading_keys", "quarantine", "device_assignments", "devices", "enrollments",
    "care_plans", "members", "coaches", "contract_device_prices", "contract_prices", "contracts",
    "clients",
)  # fmt: skip


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"vigil_test_{uuid.uuid4().hex[:10]}"
    import asyncio

    async def create() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    url = _with_database(ADMIN_URL, name)
    yield url
    asyncio.run(drop())


REQUIRE_TIMESCALE = os.environ.get("VIGIL_REQUIRE_TIMESCALE") == "1"


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,  # type: ignore[arg-type]
        env="test",
        timescale="require" if REQUIRE_TIMESCALE else "auto",
    )


@pytest.fixture(scope="session")
async def migrated(settings: Settings) -> str:
    conn = await asyncpg.connect(settings.dsn())
    try:
        result = await migrate(conn, settings)
    finally:
        await conn.close()
    return result.storage_mode


@pytest.fixture(scope="session")
async def pool(settings: Settings, migrated: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(settings.dsn(), min_size=1, max_size=6) as p:
        yield p


@pytest.fixture
async def db(pool: asyncpg.Pool) -> asyncpg.Pool:
    """The session's pool, with every data table emptied first."""
    mode = await pool.fetchval("SELECT value FROM vigil_meta WHERE key = 'storage_mode'")
    tables = DATA_TABLES
    if mode != "timescale":
        tables = (*DATA_TABLES, "reading_rollup_hourly_materialized")
    await pool.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    await pool.execute("UPDATE vigil_meta SET value = '-infinity' WHERE key = 'rollup_watermark'")
    return pool
