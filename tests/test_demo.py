"""`vigil demo` end to end, as a person runs it: a subprocess, its output and what it stored."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from services.embedded import LOOPBACK, free_port, port_open, postgres_bindir

pytestmark = pytest.mark.slow

VIGIL = Path(sys.executable).with_name("vigil")  # the entry point of the venv running the tests
_SUMMARY = re.compile(r"(\d+) readings sent: (\d+) accepted, (\d+) duplicate, (\d+) rejected")


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(overrides)
    return env


async def _vigil_demo(env: dict[str, str], *args: str, limit: float = 180) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(VIGIL), "demo", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A state directory the postgres OS user can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="vigil-demo-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_demo_streams_readings_into_the_configured_database(
    database_url: str, tmp_path: Path
) -> None:
    started = datetime.now(UTC)
    code, out, err = await _vigil_demo(
        _env(VIGIL_DATABASE_URL=database_url, VIGIL_STATE_DIR=str(tmp_path)),
        "--members", "10", "--rate", "50", "--duration", "6",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert f"database: {database_url}" in lines
    assert any(line.startswith("broker: mqtt://") for line in lines)
    assert any(line.startswith("console: http://127.0.0.1:") for line in lines)
    assert any(line.startswith("login: demo-coach") for line in lines)
    assert "vigil demo:" not in out  # progress goes to stderr, never stdout
    assert "vigil demo:" in err
    assert (tmp_path / "demo-population.yaml").exists()

    summary = _SUMMARY.search(out)
    assert summary is not None, out
    sent, accepted, duplicate, rejected = map(int, summary.groups())
    assert sent >= 100  # 50/s for 6 s is 300; leave room for a slow machine
    assert (accepted, duplicate, rejected) == (sent, 0, 0)

    expected = {f"demo-m{i:04d}" for i in range(1, 11)}
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT member_id, count(*) AS n FROM readings "
            "WHERE transport = 'mqtt' AND received_at >= $1 GROUP BY member_id",
            started,
        )
        members = await conn.fetchval(
            "SELECT count(*) FROM members WHERE id = ANY($1::text[])", list(expected)
        )
        alerts = await conn.fetchval(
            "SELECT count(*) FROM alerts WHERE member_id = ANY($1::text[]) AND opened_at >= $2",
            list(expected), started,
        )  # fmt: skip
    finally:
        await conn.close()
    assert members == 10
    # the seeded simulation includes dangerous readings: the rule engine raised alerts for them
    assert alerts > 0 and f"alerts raised: {alerts}" in out
    assert sum(r["n"] for r in rows) == accepted
    assert {r["member_id"] for r in rows} <= expected
    assert len(rows) >= 5  # readings reach most members, not one device


async def test_demo_rerun_continues_device_sequences(database_url: str, tmp_path: Path) -> None:
    env = _env(VIGIL_DATABASE_URL=database_url, VIGIL_STATE_DIR=str(tmp_path))
    for _ in range(2):
        code, out, err = await _vigil_demo(env, "--members", "4", "--rate", "40", "--duration", "2")
        assert code == 0, err
        summary = _SUMMARY.search(out)
        assert summary is not None, out
        sent, accepted, _, _ = map(int, summary.groups())
        assert accepted == sent > 0  # the second run's seqs do not collide with the first's
    conn = await asyncpg.connect(database_url)
    try:
        epochs = await conn.fetchval(
            "SELECT max(seq_epoch) FROM reading_keys WHERE device_id LIKE 'demo-%'"
        )
    finally:
        await conn.close()
    assert epochs == 0  # no sequence reuse, so no new epoch


async def test_sigterm_stops_the_demo_gracefully(database_url: str, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(VIGIL), "demo", "--members", "3", "--rate", "20",
        env=_env(VIGIL_DATABASE_URL=database_url, VIGIL_STATE_DIR=str(tmp_path)),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(120):
            seen = b""
            while b"console:" not in seen:
                line = await proc.stdout.readline()
                assert line, "demo exited before printing its endpoints"
                seen += line
            await asyncio.sleep(3)
            proc.send_signal(signal.SIGTERM)
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert "demo finished after" in out.decode()


@pytest.mark.skipif(postgres_bindir() is None, reason="no PostgreSQL server binaries here")
async def test_demo_starts_private_servers_when_none_answer(public_dir: Path) -> None:
    dead_db = f"postgresql://postgres@{LOOPBACK}:{free_port()}/vigil"
    dead_broker = f"mqtt://{LOOPBACK}:{free_port()}"
    code, out, err = await _vigil_demo(
        _env(VIGIL_DATABASE_URL=dead_db, VIGIL_MQTT_URL=dead_broker,
             VIGIL_STATE_DIR=str(public_dir)),
        "--members", "3", "--rate", "30", "--duration", "2",
    )  # fmt: skip
    assert code == 0, err
    db_line = next(line for line in out.splitlines() if line.startswith("database: "))
    broker_line = next(line for line in out.splitlines() if line.startswith("broker: "))
    assert "(private server" in db_line
    assert "(private Mosquitto" in broker_line
    summary = _SUMMARY.search(out)
    assert summary is not None, out
    assert int(summary.group(2)) > 0
    db_port = urlsplit(db_line.split()[1]).port
    broker_port = urlsplit(broker_line.split()[1]).port
    assert db_port is not None
    assert broker_port is not None
    # Both servers were stopped on the way out.
    assert not await port_open(LOOPBACK, db_port, limit=1)
    assert not await port_open(LOOPBACK, broker_port, limit=1)
    assert (public_dir / "pg" / "data" / "PG_VERSION").exists()
