"""`vigil ingest` end to end: the command, its counts and exit codes, and concurrent runs."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson

from tests.seed import seed_member

VIGIL = str(Path(sys.executable).with_name("vigil"))
DEVICES = {f"gm-{i}": "glucose_meter" for i in range(10)} | {
    f"bp-{i}": "bp_monitor" for i in range(5)
} | {f"sc-{i}": "scale" for i in range(5)}  # fmt: skip


def _reading(device_id: str, seq: int) -> dict[str, object]:
    t = datetime(2026, 9, 1, tzinfo=UTC) + timedelta(hours=seq * 3, minutes=len(device_id))
    stamp = t.astimezone(__import__("zoneinfo").ZoneInfo("America/Chicago")).isoformat()
    if device_id.startswith("gm"):
        return {"device_id": device_id, "seq": seq, "kind": "glucose", "measured_at": stamp,
                "value": 70 + seq % 150, "unit": "mg/dL", "meal": "fasting"}  # fmt: skip
    if device_id.startswith("bp"):
        return {"device_id": device_id, "seq": seq, "kind": "blood_pressure",
                "measured_at": stamp, "systolic": 110 + seq % 60, "diastolic": 70 + seq % 20,
                "pulse": 60 + seq % 30, "unit": "mmHg"}  # fmt: skip
    return {"device_id": device_id, "seq": seq, "kind": "weight", "measured_at": stamp,
            "value": round(180 + (seq % 50) / 10, 1), "unit": "lb"}  # fmt: skip


def _resend(r: dict[str, object], rng: random.Random) -> bytes:
    """The same reading written differently: keys reordered, the instant in UTC ('Z')."""
    r = dict(r)
    if rng.random() < 0.5:
        instant = datetime.fromisoformat(str(r["measured_at"])).astimezone(UTC)
        r["measured_at"] = instant.isoformat().replace("+00:00", "Z")
    keys = list(r)
    rng.shuffle(keys)
    return orjson.dumps({k: r[k] for k in keys})


def make_file(path: Path) -> None:
    """10,000 lines: 9,000 unique readings and 1,000 resends of them."""
    rng = random.Random(2026)
    ids = list(DEVICES)
    originals = [_reading(ids[i % len(ids)], i // len(ids)) for i in range(9000)]
    lines = [orjson.dumps(r) for r in originals]
    for r in rng.sample(originals, 1000):
        lines.insert(rng.randrange(originals.index(r) + 1, len(lines) + 1), _resend(r, rng))
    path.write_bytes(b"\n".join(lines) + b"\n")


async def _run(database_url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        VIGIL, *args,
        env={**os.environ, "VIGIL_DATABASE_URL": database_url, "VIGIL_LOG_LEVEL": "WARNING"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _seed(db: asyncpg.Pool) -> None:
    await seed_member(db, "m-1", DEVICES)


async def test_ingest_10k_file_with_1k_resends_stores_9k(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    await _seed(db)
    path = tmp_path / "readings.jsonl"
    make_file(path)
    code, out, err = await _run(database_url, "ingest", str(path), "--format", "json")
    assert code == 0, err
    assert json.loads(out) == {"accepted": 9000, "duplicate": 1000, "rejected": 0,
                               "rejected_by_reason": {}}  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM readings") == 9000
    assert await db.fetchval("SELECT count(*) FROM reading_keys") == 9000


async def test_two_concurrent_ingests_of_one_file_store_it_once(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    await _seed(db)
    path = tmp_path / "readings.jsonl"
    make_file(path)
    (c1, o1, e1), (c2, o2, e2) = await asyncio.gather(
        _run(database_url, "ingest", str(path), "--format", "json", "--batch-size", "1000"),
        _run(database_url, "ingest", str(path), "--format", "json", "--batch-size", "1000"),
    )
    assert (c1, c2) == (0, 0), (e1, e2)
    r1, r2 = json.loads(o1), json.loads(o2)
    assert r1["accepted"] + r2["accepted"] == 9000
    assert r1["rejected"] == r2["rejected"] == 0
    assert await db.fetchval("SELECT count(*) FROM readings") == 9000


async def test_table_output_lists_rejections_by_reason(
    db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    await _seed(db)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([
        orjson.dumps(_reading("gm-1", 1)),
        orjson.dumps({**_reading("gm-1", 2), "value": 0}),
        orjson.dumps({**_reading("gm-1", 1), "value": 99,
                      "measured_at": "2026-08-01T00:00:00Z"}),  # same seq, earlier: conflict
        orjson.dumps({**_reading("gm-1", 3), "device_id": "gm-unknown"}),
        b"not json at all",
    ]) + b"\n")  # fmt: skip
    code, out, err = await _run(database_url, "ingest", str(path))
    assert code == 0, err
    assert out.split() == [
        "accepted", "1", "duplicate", "0", "rejected", "4",
        "malformed_json", "1", "out_of_range", "1", "seq_conflict", "1", "unknown_device", "1",
    ]  # fmt: skip
    code, out, _ = await _run(database_url, "quarantine", "list", "--format", "jsonl")
    assert code == 0
    reasons = sorted(json.loads(line)["reason"] for line in out.splitlines())
    assert reasons == ["malformed_json", "out_of_range", "seq_conflict", "unknown_device"]


async def test_exit_codes(database_url: str, tmp_path: Path) -> None:
    code, _, err = await _run(database_url, "ingest", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "no such file" in err
    path = tmp_path / "one.jsonl"
    path.write_bytes(orjson.dumps(_reading("gm-1", 1)) + b"\n")
    code, _, err = await _run(
        "postgresql://postgres@127.0.0.1:1/vigil", "ingest", str(path), "--workers", "1"
    )
    assert code == 3 and "cannot connect to PostgreSQL" in err
