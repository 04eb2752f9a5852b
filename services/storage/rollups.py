"""Refreshing the hourly rollup (`reading_rollup_hourly`).

With TimescaleDB this is the continuous aggregate's refresh (services/storage/timescale.py). On
plain PostgreSQL the same semantics are built from a materialized table, a watermark and a view
(0001_core.sql): buckets before the watermark are read from the table, later ones are aggregated
live from `readings`. A refresh recomputes the buckets of a window (by default the last 35 days,
like the TimescaleDB policy) and advances the watermark. Correctness never depends on refreshing:
the view is always complete; refreshing only makes it cheaper to read. Late readings older than the
refresh window reach the table at the next refresh that covers them (`vigil db refresh-rollups
--since`), as with TimescaleDB's refresh window.
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.storage import timescale
from services.storage.db import Connection

REFRESH_WINDOW = timescale.CAGG_REFRESH_START
REFRESH_LAG = timescale.CAGG_REFRESH_END

_REFRESH_SQL = """
INSERT INTO reading_rollup_hourly_materialized
    (member_id, kind, bucket, n, n_values, primary_sum, primary_min, primary_max, diastolic_sum)
SELECT member_id, kind, date_trunc('hour', effective_at, 'UTC'), count(*),
       count(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)),
       sum(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)),
       min(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)),
       max(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)),
       sum(diastolic_mmhg)
FROM readings
WHERE effective_at >= $1 AND effective_at < $2 AND NOT ('control_solution' = ANY (flags))
GROUP BY 1, 2, 3
"""


def _hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


async def refresh_rollups(
    conn: Connection,
    *,
    since: datetime | None = None,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """Materialize the buckets in [since, now - lag) and return the window refreshed."""
    end = _hour((now or datetime.now(UTC)) - REFRESH_LAG)
    start = _hour(since) if since is not None else end - REFRESH_WINDOW
    if await timescale.storage_mode(conn) == "timescale":
        await timescale.refresh_rollups(conn, start, end)
        return start, end
    lower = "least($1::timestamptz, (SELECT value::timestamptz FROM vigil_meta "
    lower += "WHERE key = 'rollup_watermark'))"
    async with conn.transaction():
        # One refresher at a time; readers keep reading the view meanwhile. Buckets between the
        # old watermark and `start` were served live until now, so they are materialized too
        # (on the first refresh the watermark is -infinity: everything so far).
        await conn.execute("LOCK TABLE reading_rollup_hourly_materialized IN EXCLUSIVE MODE")
        await conn.execute(
            f"DELETE FROM reading_rollup_hourly_materialized WHERE bucket >= {lower} "
            "AND bucket < $2",
            start,
            end,
        )
        await conn.execute(_REFRESH_SQL.replace("$1", lower), start, end)
        await conn.execute(
            "UPDATE vigil_meta SET value = greatest(value::timestamptz, $1)::text "
            "WHERE key = 'rollup_watermark'",
            end,
        )
    return start, end
