"""The asyncpg connection pool, as an async context manager."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.errors import StorageUnavailable

log = logging.getLogger(__name__)

Pool = asyncpg.Pool
#: A connection, or one borrowed from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Sessions run in UTC so nothing depends on the server's zone; local days are computed with
    # explicit zones (AT TIME ZONE member/client zone).
    await conn.execute("SET TIME ZONE 'UTC'")


@asynccontextmanager
async def open_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 4, **kw: Any
) -> AsyncIterator[Pool]:
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection, **kw
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise StorageUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        yield pool
    finally:
        await pool.close()


async def ensure_database(dsn: str) -> bool:
    """Create the database named in `dsn` if it does not exist (development convenience; in
    production the operator creates it). Returns True when it was created."""
    parts = urlsplit(dsn)
    name = unquote(parts.path.lstrip("/")) or unquote(parts.username or "") or "postgres"
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    except (OSError, asyncpg.PostgresError) as exc:
        raise StorageUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    else:
        await conn.close()
        return False
    try:
        admin = await asyncpg.connect(dsn, database="postgres")
    except (OSError, asyncpg.PostgresError) as exc:
        raise StorageUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await admin.execute(f"CREATE DATABASE {quoted}")
        log.info("created database %s", name)
    except asyncpg.DuplicateDatabaseError:
        return False
    finally:
        await admin.close()
    return True
