"""The coroutines behind the CLI commands: each opens what it needs and closes it again."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import asyncpg

from services.errors import StorageUnavailable
from services.ingest_file import IngestCounts, ingest_file
from services.pipeline import ReadingPipeline, ReadingSink
from services.quarantine import list_entries, render_entries, replay
from services.settings import Settings
from services.storage.db import ensure_database, open_pool
from services.storage.migrate import MigrateResult, migrate
from services.storage.rollups import refresh_rollups


def reading_sink(pool: asyncpg.Pool, settings: Settings) -> ReadingSink:
    """The rule engine's entry point for committed readings: every process that stores
    readings (gateway workers, the API, `vigil ingest`) evaluates them right after commit."""
    from alerting.engine import RuleEngine

    return RuleEngine(pool)


def build_pipeline(pool: asyncpg.Pool, settings: Settings) -> ReadingPipeline:
    return ReadingPipeline(
        pool,
        sink=reading_sink(pool, settings),
        max_payload_bytes=settings.max_payload_bytes,
        clock_future_tolerance=settings.clock_future_tolerance,
    )


async def migrate_command(settings: Settings) -> MigrateResult:
    await ensure_database(settings.dsn())
    try:
        conn = await asyncpg.connect(settings.dsn())
    except (OSError, asyncpg.PostgresError) as exc:
        raise StorageUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        return await migrate(conn, settings)
    finally:
        await conn.close()


async def refresh_rollups_command(settings: Settings, since: datetime | None) -> str:
    async with open_pool(settings.dsn(), max_size=1) as pool, pool.acquire() as conn:
        start, end = await refresh_rollups(conn, since=since)
    return f"rollups refreshed from {start.isoformat()} to {end.isoformat()}"


async def alerts_list_command(settings: Settings, status: str, fmt: str, limit: int) -> str:
    import getpass

    from alerting.lifecycle import queue
    from coach_console.audit import audit

    async with open_pool(settings.dsn(), max_size=1) as pool:
        alerts = await queue(pool, status=status, limit=limit)
        # Printing alerts shows members' clinical values: every read by a person is audited.
        actor = f"cli:{getpass.getuser()}"
        async with pool.acquire() as conn, conn.transaction():
            for member_id in sorted({a.member_id for a in alerts}):
                await audit(conn, actor, "alerts.list", member_id, {"status": status})
    if fmt == "jsonl":
        return "\n".join(json.dumps(a.as_json()) for a in alerts)
    lines = [f"{'id':>7}  {'tier':<8} {'rule':<24} {'member':<14} {'status':<12} "
             f"{'count':>5}  {'worst':>8}  {'due':<20} live"]  # fmt: skip
    lines += [
        f"{a.id:>7}  {a.tier:<8} {a.rule:<24} {a.member_id[:14]:<14} {a.status:<12} "
        f"{a.count:>5}  {a.worst_value or '-'!s:>8}  {a.sla_due_at.isoformat()[:19]:<20} "
        f"{'no' if a.retrospective else 'yes'}"
        for a in alerts
    ]
    return "\n".join(lines)


async def import_command(settings: Settings, path: Path) -> str:
    from services.onboarding import import_onboarding_file

    async with open_pool(settings.dsn(), max_size=2) as pool:
        summary = await import_onboarding_file(pool, path)
    return summary.render()


async def ingest_command(
    settings: Settings, path: Path, batch_size: int, workers: int | None
) -> IngestCounts:
    return await ingest_file(settings, path, batch_size, workers)


async def quarantine_list_command(
    settings: Settings, reason: str | None, device: str | None, status: str, limit: int, fmt: str
) -> str:
    async with open_pool(settings.dsn(), max_size=1) as pool:
        entries = await list_entries(pool, reason=reason, device=device, status=status, limit=limit)
    return render_entries(entries, fmt)


async def quarantine_replay_command(
    settings: Settings, reason: str | None, device: str | None, ids: list[int]
) -> str:
    async with open_pool(settings.dsn(), max_size=2) as pool:
        result = await replay(build_pipeline(pool, settings), pool, reason=reason, device=device,
                              ids=ids)  # fmt: skip
    return json.dumps(result)
