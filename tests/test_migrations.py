"""`vigil db migrate`: idempotent, refuses edited migrations, upgrades keep rows."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest

from services.errors import MigrationError
from services.pipeline import Incoming, ReadingPipeline
from services.settings import Settings
from services.storage.db import open_pool
from services.storage.migrate import Migration, load_migrations, migrate
from tests.conftest import ADMIN_URL, REQUIRE_TIMESCALE
from tests.seed import seed_member

VIGIL = str(Path(sys.executable).with_name("vigil"))


@pytest.fixture
async def fresh_url() -> AsyncIterator[str]:
    """An empty database of its own (dropped afterwards)."""
    name = f"vigil_mig_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield ADMIN_URL.rpartition("/")[0] + "/" + name
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _migrate(url: str, migrations: list[Migration] | None = None) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        settings = Settings(database_url=url, timescale="require" if REQUIRE_TIMESCALE else "auto")  # type: ignore[arg-type]
        return (await migrate(conn, settings, migrations)).applied
    finally:
        await conn.close()


async def test_migrate_twice_is_a_no_op(fresh_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        first = await _migrate(fresh_url)
    assert first == [f"{m.version:04d}_{m.name}" for m in load_migrations()]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("storage: ")]
    expected = "storage: TimescaleDB" if REQUIRE_TIMESCALE else "storage: plain PostgreSQL"
    assert len(said) == 1 and said[0].startswith(expected)  # says which, in one log line
    assert await _migrate(fresh_url) == []
    conn = await asyncpg.connect(fresh_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(first)
    finally:
        await conn.close()


async def test_an_edited_applied_migration_is_refused(fresh_url: str) -> None:
    migrations = load_migrations()
    await _migrate(fresh_url, migrations)
    edited = [
        Migration(m.version, m.name, m.sql + "\n-- a quiet edit\n") if i == 0 else m
        for i, m in enumerate(migrations)
    ]
    with pytest.raises(MigrationError, match="edited after it was applied"):
        await _migrate(fresh_url, edited)


async def test_a_database_newer_than_the_code_is_refused(fresh_url: str) -> None:
    migrations = load_migrations()
    newer = [*migrations, Migration(9999, "from_the_future", "SELECT 1")]
    await _migrate(fresh_url, newer)
    with pytest.raises(MigrationError, match="does not know"):
        await _migrate(fresh_url, migrations)


async def test_upgrade_keeps_existing_rows(fresh_url: str) -> None:
    previous = load_migrations()
    await _migrate(fresh_url, previous)
    async with open_pool(fresh_url) as pool:
        await seed_member(pool)
        raw = orjson.dumps({
            "device_id": "gm-1", "seq": 1, "kind": "glucose", "value": 101, "unit": "mg/dL",
            "measured_at": "2026-10-03T07:12:00-05:00",
        })  # fmt: skip
        await ReadingPipeline(pool).process(
            [Incoming(raw=raw, received_at=datetime.now(UTC), transport="file")]
        )
    upgrade = Migration(
        previous[-1].version + 1,
        "add_reading_note",
        "ALTER TABLE readings ADD COLUMN note text; "
        "CREATE INDEX readings_note ON readings (note) WHERE note IS NOT NULL;",
    )
    assert await _migrate(fresh_url, [*previous, upgrade]) == [
        f"{upgrade.version:04d}_add_reading_note"
    ]
    conn = await asyncpg.connect(fresh_url)
    try:
        row = await conn.fetchrow("SELECT member_id, value, note FROM readings")
        assert tuple(row) == ("m-1", 101, None)
        assert await conn.fetchval("SELECT count(*) FROM reading_keys") == 1
    finally:
        await conn.close()


async def test_cli_creates_the_database_and_reports(fresh_url: str) -> None:
    url = fresh_url + "_cli"
    env = {**os.environ, "VIGIL_DATABASE_URL": url}
    try:
        for expected in ("0001_core", "none pending"):
            proc = await asyncio.create_subprocess_exec(
                VIGIL, "db", "migrate", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert expected in out.decode()
            assert (
                "storage: timescale" if REQUIRE_TIMESCALE else "storage: postgres"
            ) in out.decode()
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')
        finally:
            await admin.close()
