"""Private PostgreSQL and Mosquitto servers (services.embedded), started for real."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import asyncpg
import pytest

from services.embedded import (
    LOOPBACK,
    fallback_cluster_root,
    free_port,
    mosquitto_config,
    mqtt_reachable,
    port_open,
    postgres_bindir,
    postgres_reachable,
    private_mosquitto,
    private_postgres,
)
from services.errors import ConfigurationError
from tests.conftest import ADMIN_URL


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state directory the `postgres` OS user can reach (pytest's tmp_path is private, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="vigil-embedded-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_mosquitto_config_defaults_keep_queued_messages() -> None:
    conf = mosquitto_config(port=18830, persistence_dir=Path("/srv/state"))
    lines = conf.splitlines()
    assert "listener 18830 127.0.0.1" in lines
    # Mosquitto's default of 1000 silently drops QoS 1 messages beyond it.
    assert "max_queued_messages 100000" in lines
    assert "allow_anonymous true" in lines
    assert "persistence true" in lines
    assert "persistence_location /srv/state/" in lines
    assert not any(line.startswith(("password_file", "acl_file")) for line in lines)


def test_mosquitto_config_with_password_and_acl_files_refuses_anonymous() -> None:
    conf = mosquitto_config(
        port=1, password_file=Path("/etc/vigil/passwd"), acl_file=Path("/etc/vigil/acl")
    )
    lines = conf.splitlines()
    assert "password_file /etc/vigil/passwd" in lines
    assert "acl_file /etc/vigil/acl" in lines
    assert "allow_anonymous false" in lines
    assert "persistence false" in lines


async def test_private_mosquitto_delivers_qos1_over_mqtt5(tmp_path: Path) -> None:
    async with private_mosquitto(tmp_path) as url:
        parts = urlsplit(url)
        assert parts.scheme == "mqtt"
        assert parts.hostname == LOOPBACK
        port = parts.port
        assert port is not None
        assert await mqtt_reachable(url)
        conf = (tmp_path / "mosquitto" / "mosquitto.conf").read_text()
        assert "max_queued_messages 100000" in conf.splitlines()
        assert f"listener {port} {LOOPBACK}" in conf.splitlines()

        v5 = aiomqtt.ProtocolVersion.V5
        async with (
            aiomqtt.Client(LOOPBACK, port, identifier="sub", protocol=v5, timeout=5) as sub,
            aiomqtt.Client(LOOPBACK, port, identifier="pub", protocol=v5, timeout=5) as pub,
        ):
            await sub.subscribe("vigil/test/#", qos=1)
            await pub.publish("vigil/test/reading", b'{"seq": 1}', qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(sub.messages))
        assert str(message.topic) == "vigil/test/reading"
        assert message.payload == b'{"seq": 1}'
        assert message.qos == 1
    assert not await port_open(LOOPBACK, port, limit=1)
    assert not await mqtt_reachable(url)


async def test_mqtt_reachable_is_false_without_a_broker() -> None:
    assert not await mqtt_reachable(f"mqtt://{LOOPBACK}:{free_port()}")


async def test_mqtt_url_with_another_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="scheme"):
        await mqtt_reachable("http://127.0.0.1:1883")


async def test_postgres_reachable_counts_a_missing_database_as_reachable() -> None:
    base = ADMIN_URL.rpartition("/")[0]
    assert await postgres_reachable(f"{base}/vigil_no_such_database")
    assert not await postgres_reachable(f"postgresql://postgres@{LOOPBACK}:{free_port()}/x")


@pytest.mark.skipif(postgres_bindir() is None, reason="no PostgreSQL server binaries here")
async def test_private_postgres_runs_btree_gist_and_stops(state_dir: Path) -> None:
    async with private_postgres(state_dir, durable=False) as dsn:
        port = urlsplit(dsn).port
        assert port is not None
        assert urlsplit(dsn).hostname == LOOPBACK
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            await conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_extension WHERE extname = 'btree_gist'"
            ) == 1
            assert await conn.fetchval("SHOW listen_addresses") == LOOPBACK
        finally:
            await conn.close()
    assert not await port_open(LOOPBACK, port, limit=1)
    assert (state_dir / "pg" / "data" / "PG_VERSION").exists()

    # A second start finds the same cluster: what the demo stored is still there.
    async with private_postgres(state_dir, durable=False) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_extension WHERE extname = 'btree_gist'"
            ) == 1
        finally:
            await conn.close()


@pytest.mark.skipif(
    postgres_bindir() is None or os.geteuid() != 0, reason="needs root and PostgreSQL binaries"
)
async def test_private_postgres_under_a_private_folder_moves_to_var_tmp(tmp_path: Path) -> None:
    private = tmp_path / "home"
    private.mkdir(mode=0o700)  # like /root: the postgres OS user cannot reach inside
    state = private / "state"
    fallback = fallback_cluster_root(state)
    try:
        async with private_postgres(state, durable=False) as dsn:
            conn = await asyncpg.connect(dsn)
            try:
                assert await conn.fetchval("SELECT 1") == 1
            finally:
                await conn.close()
        assert (fallback / "data" / "PG_VERSION").exists()
    finally:
        shutil.rmtree(fallback, ignore_errors=True)


@pytest.mark.skipif(postgres_bindir() is None, reason="no PostgreSQL server binaries here")
def test_private_servers_start_under_uvloop(state_dir: Path) -> None:
    """The CLI runs on uvloop, whose subprocesses pass inherited descriptors on: `pg_ctl start`
    once handed our output pipe to the server and the start never returned."""
    uvloop = pytest.importorskip("uvloop")

    async def start_both() -> tuple[int, bool]:
        async with (
            asyncio.timeout(60),
            private_postgres(state_dir, durable=False) as dsn,
            private_mosquitto(state_dir) as url,
        ):
            conn = await asyncpg.connect(dsn)
            try:
                one: int = await conn.fetchval("SELECT 1")
            finally:
                await conn.close()
            return one, await mqtt_reachable(url)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(start_both()) == (1, True)
