"""Test harness for the MQTT gateway: gateway worker processes and a fleet of virtual meters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from simulators.meter import VirtualMeter

VIGIL = str(Path(sys.executable).with_name("vigil"))


class GatewayProcess:
    """`vigil gateway` as a real OS process (so tests can SIGKILL it)."""

    def __init__(self, worker_id: str, env: dict[str, str], *args: str) -> None:
        self.args = args
        self.worker_id = worker_id
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 20) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            VIGIL, "gateway", "--worker-id", self.worker_id, *self.args, env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        subscribed = asyncio.Event()

        async def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            async for line in self.proc.stderr:
                text = line.decode(errors="replace").rstrip()
                self.log.append(text)
                if "subscribed" in text:
                    subscribed.set()

        self._reader = asyncio.create_task(read())
        try:
            await asyncio.wait_for(subscribed.wait(), timeout)
        except TimeoutError:
            tail = "\n".join(self.log[-20:])
            raise AssertionError(f"gateway did not subscribe:\n{tail}") from None

    async def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 2)
        return self.proc.returncode or 0


def gateway_env(database_url: str, mqtt_url: str, group: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "VIGIL_DATABASE_URL": database_url,
        "VIGIL_MQTT_URL": mqtt_url,
        "VIGIL_GATEWAY_GROUP": group,
        "VIGIL_LOG_LEVEL": "INFO",
        "VIGIL_GATEWAY_METRICS_PORT": "0",
        **extra,
    }


async def seed_fleet(pool: asyncpg.Pool, n: int, prefix: str = "gm") -> list[str]:
    await pool.execute(
        "INSERT INTO clients (id, name, timezone, currency) "
        "VALUES ('fleet', 'Fleet', 'UTC', 'USD') ON CONFLICT DO NOTHING"
    )
    ids = [f"{prefix}-{i:04d}" for i in range(n)]
    await pool.executemany(
        "INSERT INTO members (id, client_id, name, birth_date, timezone) "
        "VALUES ($1, 'fleet', 'Fleet Member', '1970-01-01', 'UTC')",
        [(f"m-{d}",) for d in ids],
    )
    await pool.executemany(
        "INSERT INTO devices (id, kind) VALUES ($1, 'glucose_meter')", [(d,) for d in ids]
    )
    await pool.executemany(
        "INSERT INTO device_assignments (device_id, member_id) VALUES ($1, $2)",
        [(d, f"m-{d}") for d in ids],
    )
    return ids


def readings_for(device_id: str, n: int, start: datetime | None = None) -> list[dict[str, Any]]:
    t0 = start or datetime(2026, 10, 1, tzinfo=UTC)
    return [
        {"seq": s, "kind": "glucose", "unit": "mg/dL", "value": 70 + (s * 13) % 200,
         "measured_at": (t0 + timedelta(minutes=37 * s)).isoformat()}
        for s in range(1, n + 1)
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def running(meters: list[VirtualMeter]) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(m.run(stop)) for m in meters]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_all_acked(meters: list[VirtualMeter], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while any(m.backlog for m in meters):
        if asyncio.get_running_loop().time() > deadline:
            left = sum(m.backlog for m in meters)
            raise AssertionError(f"{left} readings still unacked after {timeout}s")
        await asyncio.sleep(0.2)
