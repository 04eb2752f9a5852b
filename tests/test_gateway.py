"""The MQTT gateway against a real Mosquitto and PostgreSQL: zero loss, acks after commit."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from services.embedded import private_mosquitto
from simulators.meter import VirtualMeter
from tests.gateway_harness import (
    GatewayProcess,
    gateway_env,
    readings_for,
    running,
    seed_fleet,
    wait_all_acked,
)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[str]:
    async with private_mosquitto(tmp_path) as url:
        yield url


def _meter(device_id: str, url: str, **kw: object) -> VirtualMeter:
    host_port = url.removeprefix("mqtt://")
    host, port = host_port.rsplit(":", 1)
    return VirtualMeter(device_id, host=host, port=int(port), **kw)  # type: ignore[arg-type]


async def test_two_workers_store_a_flood_exactly_once(
    db: asyncpg.Pool, database_url: str, broker: str
) -> None:
    ids = await seed_fleet(db, 200)
    env = gateway_env(database_url, broker, f"g-{uuid.uuid4().hex[:6]}")
    workers = [GatewayProcess(f"flood-{k}", env) for k in range(2)]
    for w in workers:
        await w.start()
    rng = random.Random(5)
    meters = []
    for d in ids:
        m = _meter(d, broker, resend_after=8.0)
        readings = readings_for(d, 100)
        resends = rng.sample(readings, 5)  # 5% sent twice
        m.record(readings + resends)
        meters.append(m)
    try:
        async with running(meters):
            await wait_all_acked(meters, timeout=120)
    finally:
        codes = [await w.stop() for w in workers]
    assert codes == [0, 0]
    assert await db.fetchval("SELECT count(*) FROM readings") == 20_000
    assert await db.fetchval("SELECT count(DISTINCT (device_id, seq)) FROM readings") == 20_000
    for m in meters:
        assert sorted(m.acked) == list(range(1, 101))
        assert set(m.acked.values()) <= {"accepted", "duplicate"}
    # both workers took part (one shared subscription)
    assert all(any("subscribed" in line for line in w.log) for w in workers)


async def test_bad_input_is_acked_with_reasons_and_quarantined(
    db: asyncpg.Pool, database_url: str, broker: str
) -> None:
    import aiomqtt

    await seed_fleet(db, 2)
    env = gateway_env(database_url, broker, f"g-{uuid.uuid4().hex[:6]}")
    worker = GatewayProcess("bad-input", env)
    await worker.start()
    host, port = broker.removeprefix("mqtt://").rsplit(":", 1)
    good = readings_for("gm-0000", 1)[0]
    messages = [
        orjson.dumps(good),
        orjson.dumps({**readings_for("gm-0000", 2)[1], "device_id": "gm-0001"}),  # not its own
        orjson.dumps(
            {"readings": [{**readings_for("gm-0000", 3)[2], "value": 5000},
                          readings_for("gm-0000", 4)[3]]}
        ),  # fmt: skip
        b"\x00\xff binary junk",
        b"[" * 100_000,
        b'{"seq": 9, "kind": "glucose", "unit": "mg/dL", "value": 90, "extra": 1, '
        b'"measured_at": "2026-10-01T00:00:00Z"}',
    ]
    acks: list[dict[str, object]] = []
    try:
        async with aiomqtt.Client(host, int(port), protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.subscribe("vigil/v1/devices/gm-0000/acks", qos=1)
            for payload in messages:
                await c.publish("vigil/v1/devices/gm-0000/readings", payload, qos=1)
            async with __import__("asyncio").timeout(20):
                async for msg in c.messages:
                    acks.append(orjson.loads(msg.payload))  # type: ignore[arg-type]
                    if sum(len(a["accepted"]) + len(a["rejected"]) for a in acks) >= 7:  # type: ignore[arg-type]
                        break
    finally:
        assert await worker.stop() == 0
    accepted = sorted(s for a in acks for s in a["accepted"])  # type: ignore[attr-defined]
    rejected = sorted(
        (r["seq"] if r["seq"] is not None else -1, r["reason"])
        for a in acks
        for r in a["rejected"]  # type: ignore[attr-defined]
    )
    assert accepted == [1, 4]
    assert rejected == [
        (-1, "invalid_encoding"), (-1, "malformed_json"), (2, "device_mismatch"),
        (3, "out_of_range"), (9, "unknown_field"),
    ]  # fmt: skip
    reasons = sorted(r["reason"] for r in await db.fetch("SELECT reason FROM quarantine"))
    assert reasons == sorted(r for _, r in rejected)
    assert await db.fetchval("SELECT count(*) FROM readings") == 2
    # the device's last-seen time and status were recorded
    assert await db.fetchval("SELECT last_seen_at IS NOT NULL FROM devices WHERE id = 'gm-0000'")


async def test_metrics_health_and_fleet_alarm(
    db: asyncpg.Pool, database_url: str, broker: str
) -> None:
    import asyncio
    import re

    ids = await seed_fleet(db, 3)
    # A fleet last heard from two hours ago: the alarm must fire (30 minutes by default).
    await db.execute("UPDATE devices SET last_seen_at = now() - INTERVAL '2 hours'")
    env = gateway_env(database_url, broker, f"g-{uuid.uuid4().hex[:6]}")
    worker = GatewayProcess("observed", env)
    await worker.start()
    try:
        port = next(
            int(m.group(1))
            for line in worker.log
            if (m := re.search(r"metrics and health on http://127.0.0.1:(\d+)/", line))
        )

        async def get(path: str) -> tuple[str, str]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = (await reader.read()).decode()
            writer.close()
            head, _, body = data.partition("\r\n\r\n")
            return head.split("\r\n")[0], body

        async with asyncio.timeout(10):
            while not any("FLEET ALARM" in line for line in worker.log):
                await asyncio.sleep(0.1)
        status, body = await get("/healthz")
        assert status.endswith("200 OK") and '"broker_connected": true' in body
        meters = [_meter(d, broker) for d in ids]
        for m in meters:
            m.record(readings_for(m.device_id, 5))
            m.record([{**readings_for(m.device_id, 6)[5], "value": 0}])  # out of range
        async with running(meters):
            await wait_all_acked(meters, timeout=30)
        _, metrics = await get("/metrics")
        assert 'vigil_gateway_readings_total{outcome="accepted",reason=""} 15.0' in metrics
        rejected = 'vigil_gateway_readings_total{outcome="rejected",reason="out_of_range"} 3.0'
        assert rejected in metrics
        assert "vigil_gateway_last_reading_timestamp_seconds" in metrics
        # member identity and values never appear in telemetry
        assert "m-gm-" not in metrics and "gm-0000" not in metrics
    finally:
        assert await worker.stop() == 0


async def test_a_worker_that_leaves_gets_no_more_readings(
    db: asyncpg.Pool, database_url: str, broker: str
) -> None:
    ids = await seed_fleet(db, 20)
    env = gateway_env(database_url, broker, f"g-{uuid.uuid4().hex[:6]}")
    stays = GatewayProcess("stays", env)
    leaver = GatewayProcess("leaver", env, "--leave")
    await stays.start()
    await leaver.start()
    assert await leaver.stop() == 0
    assert any("left: its broker session is gone" in line for line in leaver.log)
    # No resends allowed within the test: every reading must reach the remaining worker at once
    # (without --leave, Mosquitto would keep dealing every other message to the gone session).
    meters = [_meter(d, broker, resend_after=600.0) for d in ids]
    for m in meters:
        m.record(readings_for(m.device_id, 10))
    try:
        async with running(meters):
            await wait_all_acked(meters, timeout=30)
    finally:
        assert await stays.stop() == 0
    assert sum(m.stats.resent for m in meters) == 0
    assert await db.fetchval("SELECT count(*) FROM readings") == 200
