"""bench `ingest_file`: readings/s of `vigil ingest` against a raw asyncpg staging-COPY.

Both sides load the same readings into a table with the same columns and indexes as `readings`,
in batches of the same size, in the same run:
- Vigil: the `vigil ingest FILE.jsonl` command, end to end (process start, JSON parsing,
  validation, normalization, dedupe against the identity ledger, attribution to members, the
  hourly rollup, commit), timed from the outside;
- baseline: pre-built row tuples COPYed into a temporary staging table, then
  `INSERT .. SELECT .. ON CONFLICT DO NOTHING` into an identical table: the floor of what any
  exactly-once loader through asyncpg can do here.
Target: ratio (Vigil / baseline) >= 0.5.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench.record import Target, record
from services.settings import Settings
from services.storage.migrate import migrate

TARGET = Target("ratio", 0.5, "at_least")
BATCH = 10_000
START = datetime(2026, 1, 1, tzinfo=UTC)


def _readings(n: int, devices: int) -> list[dict[str, Any]]:
    out = []
    per = n // devices
    for d in range(devices):
        for s in range(per):
            t = START + timedelta(minutes=17 * s + d)
            out.append(
                {
                    "device_id": f"gm-{d:05d}",
                    "seq": s,
                    "kind": "glucose",
                    "measured_at": t.isoformat(),
                    "value": 80 + (s * 7 + d) % 150,
                    "unit": "mg/dL",
                    "meal": "fasting" if s % 3 == 0 else "after_meal",
                }
            )
    out.sort(key=lambda r: (r["measured_at"], r["device_id"]))  # devices interleave, as in life
    return out


async def _fresh_database(admin_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{name}"


async def _seed(conn: asyncpg.Connection, devices: int) -> None:
    await conn.execute(
        "INSERT INTO clients (id, name, timezone, currency) VALUES ('bench', 'Bench', 'UTC', 'USD')"
    )
    await conn.copy_records_to_table(
        "members",
        records=[(f"m-{d:05d}", "bench", "Bench Member", date(1960, 1, 1), "UTC")
                 for d in range(devices)],
        columns=("id", "client_id", "name", "birth_date", "timezone"),
    )  # fmt: skip
    await conn.copy_records_to_table(
        "devices",
        records=[(f"gm-{d:05d}", "glucose_meter") for d in range(devices)],
        columns=("id", "kind"),
    )
    await conn.copy_records_to_table(
        "device_assignments",
        records=[(f"gm-{d:05d}", f"m-{d:05d}") for d in range(devices)],
        columns=("device_id", "member_id"),
    )


def _baseline_rows(readings: list[dict[str, Any]], now: datetime) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for r in readings:
        t = datetime.fromisoformat(r["measured_at"])
        v = Decimal(r["value"])
        rows.append((
            r["device_id"], 0, r["seq"], t, "m-" + r["device_id"][3:], "glucose", "device", t, 0,
            now, False, [], "mg/dL", v, None, None, None, None, r["meal"], v, None, None, None,
            None, "file", hashlib.blake2b(orjson.dumps(r), digest_size=16).digest(),
        ))  # fmt: skip
    return rows


READING_COLUMNS = (
    "device_id", "seq_epoch", "seq", "effective_at", "member_id", "kind", "source", "measured_at",
    "measured_offset", "received_at", "clock_corrected", "flags", "unit", "value", "systolic",
    "diastolic", "mean_arterial", "pulse", "meal", "glucose_mgdl", "systolic_mmhg",
    "diastolic_mmhg", "mean_arterial_mmhg", "weight_kg", "transport", "content_hash",
)  # fmt: skip


async def baseline_staging_copy(
    dsn: str, rows: list[tuple[Any, ...]], batch: int = BATCH
) -> float:
    """The raw baseline: COPY `rows` into a temporary stage and INSERT .. SELECT .. ON CONFLICT
    DO NOTHING into a table like `readings` (same columns and indexes), `batch` rows per
    transaction. Returns the seconds it took."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_readings")
        await conn.execute("CREATE TABLE bench_readings (LIKE readings INCLUDING ALL)")
        await conn.execute(
            "CREATE TEMP TABLE stage (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        cols = ", ".join(READING_COLUMNS)
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "stage", records=rows[i : i + batch], columns=READING_COLUMNS
                )
                await conn.execute(
                    f"INSERT INTO bench_readings ({cols}) SELECT {cols} FROM stage "
                    "ON CONFLICT DO NOTHING"
                )
        elapsed = time.perf_counter() - t0
        stored = await conn.fetchval("SELECT count(*) FROM bench_readings")
    finally:
        await conn.close()
    if stored != len(rows):
        raise RuntimeError(f"baseline stored {stored} of {len(rows)} rows")
    return elapsed


def _vigil_ingest(dsn: str, path: Path) -> tuple[float, str]:
    env = {**os.environ, "VIGIL_DATABASE_URL": dsn, "VIGIL_LOG_LEVEL": "WARNING"}
    vigil = Path(sys.executable).with_name("vigil")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(vigil), "ingest", str(path), "--batch-size", str(BATCH), "--format", "json"],
        env=env, capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"vigil ingest failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed, proc.stdout.strip()


async def run(settings: Settings, quick: bool) -> dict[str, Any]:
    n = 50_000 if quick else 1_000_000
    devices = 500 if quick else 2_000
    base, _, _ = settings.dsn().rpartition("/")
    dsn = await _fresh_database(f"{base}/postgres", f"vigil_bench_ingest_{os.getpid()}")
    try:
        conn = await asyncpg.connect(dsn)
        try:
            bench_settings = Settings(
                database_url=dsn,
                timescale=settings.timescale,
            )
            await migrate(conn, bench_settings)
            await _seed(conn, devices)
        finally:
            await conn.close()
        readings = _readings(n, devices)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "readings.jsonl"
            with path.open("wb") as fh:
                for r in readings:
                    fh.write(orjson.dumps(r) + b"\n")
            rows = _baseline_rows(readings, datetime.now(UTC))
            baseline_s = await baseline_staging_copy(dsn, rows)
            vigil_s, counts = _vigil_ingest(dsn, path)
        conn = await asyncpg.connect(dsn)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM readings")
        finally:
            await conn.close()
        if stored != len(readings):
            raise RuntimeError(f"vigil stored {stored} of {len(readings)} readings: {counts}")
        figures = {
            "readings": len(readings),
            "batch_size": BATCH,
            "vigil_readings_per_s": round(len(readings) / vigil_s),
            "baseline_readings_per_s": round(len(readings) / baseline_s),
            "ratio": round(baseline_s / vigil_s, 3),
        }
        return record("ingest_file", "quick" if quick else "full", figures, TARGET)
    finally:
        admin = await asyncpg.connect(f"{base}/postgres")
        try:
            await admin.execute(
                f'DROP DATABASE IF EXISTS "vigil_bench_ingest_{os.getpid()}" WITH (FORCE)'
            )
        finally:
            await admin.close()


if __name__ == "__main__":  # pragma: no cover - `vigil bench ingest_file` is the entry point
    asyncio.run(run(Settings(), "--quick" in sys.argv))
