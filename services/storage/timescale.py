"""Every TimescaleDB-specific statement in Vigil, in one module, so it can be checked where the
extension exists (tests/test_timescale.py runs with VIGIL_REQUIRE_TIMESCALE=1).

With the extension:
- `readings` becomes a hypertable partitioned by `effective_at` (7-day chunks). Its unique index
  (device_id, seq_epoch, seq, effective_at) includes the partitioning column, as TimescaleDB
  requires; exactly-once identity itself lives in the plain `reading_keys` ledger.
- chunks are compressed after `VIGIL_COMPRESS_AFTER` (default 30 days), segmented by member and
  device so a member's timeline and the ON CONFLICT check touch few compressed batches;
- chunks are dropped after `VIGIL_READINGS_RETENTION` (default 7 years + 7 days);
- `reading_rollup_hourly` becomes a continuous aggregate with the same columns,
  `materialized_only = false` so today's readings are visible. Its refresh window starts well inside
  the retention period (35 days back), so dropping raw chunks never rewrites, and never empties,
  the aggregate's history; the aggregate itself has no retention policy.

Without it (plain PostgreSQL) the SQL migrations' tables are used as they are,
`reading_rollup_hourly` is a view over a materialized table plus the live tail
(services/storage/rollups.py), and one log line says so.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Final, Literal

import asyncpg

from services.errors import MigrationError
from services.settings import Settings
from services.storage.db import Connection

log = logging.getLogger(__name__)

StorageMode = Literal["timescale", "postgres"]

CHUNK_INTERVAL: Final = timedelta(days=7)
CAGG_REFRESH_START: Final = timedelta(days=35)
CAGG_REFRESH_END: Final = timedelta(hours=1)
CAGG_REFRESH_EVERY: Final = timedelta(minutes=30)

# The continuous aggregate's definition: the same columns as the plain table in 0001_core.sql.
_CAGG_SQL: Final = """
CREATE MATERIALIZED VIEW reading_rollup_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT member_id,
       kind,
       time_bucket(INTERVAL '1 hour', effective_at) AS bucket,
       count(*) AS n,
       count(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)) AS n_values,
       sum(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)) AS primary_sum,
       min(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)) AS primary_min,
       max(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)) AS primary_max,
       sum(diastolic_mmhg) AS diastolic_sum
FROM readings
WHERE NOT ('control_solution' = ANY (flags))
GROUP BY member_id, kind, time_bucket(INTERVAL '1 hour', effective_at)
WITH NO DATA
"""


async def storage_mode(conn: Connection) -> StorageMode:
    value = await conn.fetchval("SELECT value FROM vigil_meta WHERE key = 'storage_mode'")
    return "timescale" if value == "timescale" else "postgres"


async def _extension_ready(conn: Connection) -> bool:
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        return True
    if not await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"):
        return False
    preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    if "timescaledb" not in preload:
        # Creating it now would make the server drop this connection.
        log.warning(
            "the timescaledb extension is installed but not in shared_preload_libraries; "
            "using plain PostgreSQL"
        )
        return False
    try:
        async with conn.transaction():
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:  # installed but not preloaded, or not permitted
        log.warning("the timescaledb extension is installed but cannot be created: %s", exc)
        return False
    return True


async def apply(conn: Connection, settings: Settings) -> StorageMode:
    """Convert the schema to TimescaleDB objects when the extension is there; idempotent."""
    ready = settings.timescale != "off" and await _extension_ready(conn)
    if not ready:
        if settings.timescale == "require":
            raise MigrationError("VIGIL_TIMESCALE=require but the timescaledb extension is absent")
        if await storage_mode(conn) == "timescale":
            raise MigrationError(
                "this database was converted to TimescaleDB but the extension is not available"
            )
        await _set_mode(conn, "postgres")
        log.info(
            "storage: plain PostgreSQL (TimescaleDB not available): readings is a plain table, "
            "reading_rollup_hourly a view over a refreshed table plus live readings; "
            "same schema semantics"
        )
        return "postgres"

    await conn.execute(
        "SELECT create_hypertable('readings', by_range('effective_at', $1::interval), "
        "migrate_data => true, if_not_exists => true)",
        CHUNK_INTERVAL,
    )
    await conn.execute(
        "ALTER TABLE readings SET (timescaledb.compress, "
        "timescaledb.compress_segmentby = 'member_id, device_id', "
        "timescaledb.compress_orderby = 'effective_at DESC, seq_epoch, seq')"
    )
    await conn.execute(
        "SELECT add_compression_policy('readings', compress_after => $1::interval, "
        "if_not_exists => true)",
        settings.compress_after,
    )
    await conn.execute(
        "SELECT add_retention_policy('readings', drop_after => $1::interval, "
        "if_not_exists => true)",
        settings.readings_retention,
    )
    is_cagg = await conn.fetchval(
        "SELECT 1 FROM timescaledb_information.continuous_aggregates "
        "WHERE view_name = 'reading_rollup_hourly'"
    )
    if not is_cagg:
        async with conn.transaction():
            # Replace plain PostgreSQL's view + materialized table (0001_core.sql) by the
            # continuous aggregate of the same name and columns.
            await conn.execute("DROP VIEW IF EXISTS reading_rollup_hourly")
            await conn.execute("DROP TABLE IF EXISTS reading_rollup_hourly_materialized")
            await conn.execute(_CAGG_SQL)
        # Materialize what exists (outside a transaction block, as TimescaleDB requires).
        await conn.execute("CALL refresh_continuous_aggregate('reading_rollup_hourly', NULL, NULL)")
    await conn.execute(
        "SELECT add_continuous_aggregate_policy('reading_rollup_hourly', "
        "start_offset => $1::interval, end_offset => $2::interval, "
        "schedule_interval => $3::interval, if_not_exists => true)",
        CAGG_REFRESH_START,
        CAGG_REFRESH_END,
        CAGG_REFRESH_EVERY,
    )
    await _set_mode(conn, "timescale")
    log.info("storage: TimescaleDB (hypertable, compression, retention, continuous aggregate)")
    return "timescale"


async def run_policies_now(conn: Connection) -> None:
    """Run Vigil's TimescaleDB policies by hand (where background workers cannot, e.g. on a
    PostgreSQL point release whose background jobs fail, or in a test)."""
    job_ids = await conn.fetch(
        "SELECT job_id FROM timescaledb_information.jobs "
        "WHERE hypertable_name IN ('readings', 'reading_rollup_hourly') "
        "OR hypertable_name IN (SELECT materialization_hypertable_name "
        "  FROM timescaledb_information.continuous_aggregates "
        "  WHERE view_name = 'reading_rollup_hourly') ORDER BY job_id"
    )
    for row in job_ids:
        await conn.execute("CALL run_job($1)", row["job_id"])


async def refresh_rollups(conn: Connection, start: datetime, end: datetime) -> None:
    """Refresh the continuous aggregate over [start, end) (outside a transaction block)."""
    await conn.execute(
        "CALL refresh_continuous_aggregate('reading_rollup_hourly', $1::timestamptz, "
        "$2::timestamptz)",
        start,
        end,
    )


async def _set_mode(conn: Connection, mode: StorageMode) -> None:
    await conn.execute(
        "INSERT INTO vigil_meta (key, value) VALUES ('storage_mode', $1) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        mode,
    )
