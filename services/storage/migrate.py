"""Ordered `.sql` migrations and the small runner behind `vigil db migrate`.

Files are `NNNN_name.sql` in this package's `migrations/` folder, applied in order, each in its own
transaction, and recorded in `schema_migrations` with a SHA-256 of the file. Running again is a
no-op; a migration edited after it was applied is refused (its checksum changed): write a new one.
A session-level advisory lock keeps concurrent runners from applying the same file twice.
After the SQL files, the TimescaleDB module converts what it owns when the extension is present.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import asyncpg

from services.errors import MigrationError
from services.settings import Settings
from services.storage import timescale
from services.storage.db import Connection

log = logging.getLogger(__name__)

_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: Arbitrary constant naming Vigil's migration lock (pg_advisory_lock key space is shared).
_LOCK_KEY: Final = 0x56_49_47_49_4C  # "VIGIL"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    folder = resources.files("services.storage") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number: {versions}")
    return found


@dataclass(frozen=True, slots=True)
class MigrateResult:
    applied: list[str]
    storage_mode: str


async def migrate(
    conn: Connection,
    settings: Settings,
    migrations: list[Migration] | None = None,
) -> MigrateResult:
    """Apply pending migrations, then the TimescaleDB conversion. Idempotent."""
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {r["version"]: r for r in rows}
        done: list[str] = []
        for mig in migrations:
            row = applied.get(mig.version)
            if row is not None:
                if row["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name} was edited after it was applied "
                        f"(checksum {row['checksum'][:12]} in the database, {mig.checksum[:12]} on "
                        "disk); applied migrations are immutable: add a new migration instead"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(mig.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        mig.version,
                        mig.name,
                        mig.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {mig.version:04d}_{mig.name} failed: {exc}"
                ) from exc
            log.info("applied migration %04d_%s", mig.version, mig.name)
            done.append(f"{mig.version:04d}_{mig.name}")
        unknown = sorted(set(applied) - {m.version for m in migrations})
        if unknown:
            raise MigrationError(
                f"the database has migrations this version of Vigil does not know: {unknown} "
                "(is an older Vigil running against a newer schema?)"
            )
        mode = await timescale.apply(conn, settings)
        return MigrateResult(done, mode)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
