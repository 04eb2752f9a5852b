"""bench `ingest_mqtt`: end-to-end readings/s of the MQTT gateway against a C-tools pipeline.

A fleet of glucose meters publishes QoS 1 messages of ONE reading each (devices interleaved, each
device in sequence order; bench/loadgen.py: 2 publisher processes, 50 connections each). Three
phases in the same run, each against its own fresh Mosquitto (persistence off, a per-client queue
larger than the run, so nothing is dropped whichever side is slower):
- generator alone: the same publishers into a broker that queues every message for an offline
  QoS 1 session (the broker's work in the other phases, minus delivery). This is the ceiling the
  load generator imposes; it must be well above both pipelines.
- baseline, C tools only: `mosquitto_sub -q 1 -c -C N -F '%t<TAB>%p' 'vigil/v1/devices/+/readings'
  | psql -1 -c '\\copy stage FROM pstdin' -c 'INSERT INTO bench_readings ... SELECT ... ON
  CONFLICT DO NOTHING'`: a persistent QoS 1 session subscribed before the first publish; psql
  COPYs topic and payload (jsonb) into a temporary table and, once mosquitto_sub has received
  all N messages, extracts the columns (device from the topic, seq, times, value, meal, an md5
  content hash) into `bench_readings`, a table with the same columns and indexes as `readings`,
  in one transaction. Clock: first publish -> psql committed and the rows counted.
- Vigil: W `vigil gateway` worker processes on one shared subscription, tuned via their
  settings (VIGIL_GATEWAY_BATCH_SIZE/_WAIT/_MAX_PENDING); one MQTT client counts the distinct
  (device, seq) pairs in the device acks the workers publish after each commit. Clock: first
  publish -> every reading acked and `readings` holding all N rows.
Vigil does more per reading than the baseline, as the product must: validation, normalization,
the `reading_keys` identity ledger, the rule engine's hand-off, per-device acks. The readings are
all in range (80-229 mg/dL), so no alert fires.
Target: ratio (Vigil / baseline readings/s) >= 0.6.

Recorded settings: 2 workers, batches of up to 10,000 readings, 50 ms batch wait (1 and 3
workers, batches of 2,000-20,000 and waits of 50-1,000 ms were no faster on 2 cores). Override
them for experiments with VIGIL_BENCH_GATEWAY_WORKERS, VIGIL_BENCH_GATEWAY_BATCH_SIZE,
VIGIL_BENCH_GATEWAY_BATCH_WAIT_MS and VIGIL_BENCH_GATEWAY_MAX_PENDING.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg

from bench.loadgen import AckCounter, LoadGenerator, LoadResult, Mode, device_id, member_id
from bench.record import Target, record
from services.embedded import MOSQUITTO_BINARY, free_port, mosquitto_config, port_open
from services.settings import Settings
from services.storage.migrate import migrate

TARGET = Target("ratio", 0.6, "at_least")
VIGIL = str(Path(sys.executable).with_name("vigil"))
HOST = "127.0.0.1"
READINGS_TOPIC = "vigil/v1/devices/+/readings"


@dataclass(frozen=True, slots=True)
class GatewayTuning:
    workers: int
    batch_size: int
    batch_wait_ms: int
    max_pending: int

    @classmethod
    def from_env(cls, workers: int, batch_size: int, batch_wait_ms: int) -> GatewayTuning:
        """The bench's tuned defaults, each overridable by a VIGIL_BENCH_GATEWAY_* variable."""
        env = os.environ
        batch_size = int(env.get("VIGIL_BENCH_GATEWAY_BATCH_SIZE", batch_size))
        return cls(
            workers=int(env.get("VIGIL_BENCH_GATEWAY_WORKERS", workers)),
            batch_size=batch_size,
            batch_wait_ms=int(env.get("VIGIL_BENCH_GATEWAY_BATCH_WAIT_MS", batch_wait_ms)),
            max_pending=int(env.get("VIGIL_BENCH_GATEWAY_MAX_PENDING", max(20_000,
                                                                           4 * batch_size))),
        )  # fmt: skip

    def env(self) -> dict[str, str]:
        return {
            "VIGIL_GATEWAY_BATCH_SIZE": str(self.batch_size),
            "VIGIL_GATEWAY_BATCH_WAIT": f"PT{self.batch_wait_ms / 1000:g}S",
            "VIGIL_GATEWAY_MAX_PENDING": str(self.max_pending),
        }


# --- database -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fresh_database(settings: Settings, name: str, devices: int) -> AsyncIterator[str]:
    """A new database `name` on the configured server, migrated and seeded with `devices`
    meters (gm-NNNNN), each assigned to its own member (m-NNNNN) of one client; dropped after."""
    base, _, _ = settings.dsn().rpartition("/")
    admin_dsn = f"{base}/postgres"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = f"{base}/{name}"
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, Settings(database_url=dsn, timescale=settings.timescale))
            await seed(conn, devices)
        finally:
            await conn.close()
        yield dsn
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def seed(conn: asyncpg.Connection, devices: int) -> None:
    await conn.execute(
        "INSERT INTO clients (id, name, timezone, currency) VALUES ('bench', 'Bench', 'UTC', 'USD')"
    )
    await conn.copy_records_to_table(
        "members",
        records=[(member_id(d), "bench", "Bench Member", date(1960, 1, 1), "UTC")
                 for d in range(devices)],
        columns=("id", "client_id", "name", "birth_date", "timezone"),
    )  # fmt: skip
    await conn.copy_records_to_table(
        "devices",
        records=[(device_id(d), "glucose_meter") for d in range(devices)],
        columns=("id", "kind"),
    )
    await conn.copy_records_to_table(
        "device_assignments",
        records=[(device_id(d), member_id(d)) for d in range(devices)],
        columns=("device_id", "member_id"),
    )


async def count_rows(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        n: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return n
    finally:
        await conn.close()


# --- processes ----------------------------------------------------------------------------------


def _start(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    # subprocess.Popen (close_fds) rather than asyncio's uvloop subprocesses, which would hand our
    # own descriptors (a test's capture pipe) to long-running children.
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip


async def _stop(proc: subprocess.Popen[bytes], limit: float = 60) -> int:
    """SIGTERM, then SIGKILL after `limit` seconds; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(proc.wait, limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        return await asyncio.to_thread(proc.wait)


@contextlib.asynccontextmanager
async def mosquitto(state: Path, max_queued: int) -> AsyncIterator[int]:
    """A fresh private broker for one phase; yields its port."""
    port = free_port()
    conf = state / f"mosquitto-{port}.conf"
    conf.write_text(mosquitto_config(
        port=port, log_file=state / f"mosquitto-{port}.log", max_queued_messages=max_queued,
    ))  # fmt: skip
    proc = _start([str(MOSQUITTO_BINARY), "-c", str(conf)], state / f"mosquitto-{port}.out")
    try:
        for _ in range(200):
            if await port_open(HOST, port, 1):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({proc.returncode}); see {conf}")
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("mosquitto did not listen within 10 s")
        yield port
    finally:
        await _stop(proc, 30)


@dataclass
class Gateways:
    """W `vigil gateway` processes on one shared subscription, logs under `state`."""

    tuning: GatewayTuning
    dsn: str
    port: int
    state: Path
    procs: list[subprocess.Popen[bytes]] | None = None

    def _log(self, k: int) -> Path:
        return self.state / f"gateway-{self.port}-{k}.log"

    async def start(self, limit: float = 60) -> None:
        """Start the workers; wait (at most `limit` seconds) until each one subscribed."""
        env = {
            **os.environ,
            "VIGIL_DATABASE_URL": self.dsn,
            "VIGIL_MQTT_URL": f"mqtt://{HOST}:{self.port}",
            "VIGIL_GATEWAY_GROUP": f"bench-{self.port}",
            "VIGIL_LOG_LEVEL": "INFO",
            "VIGIL_GATEWAY_METRICS_PORT": "0",  # W workers on one host: any free port each
            **self.tuning.env(),
        }
        self.procs = [
            _start([VIGIL, "gateway", "--worker-id", f"bench-{k}"], self._log(k), env)
            for k in range(self.tuning.workers)
        ]
        deadline = time.monotonic() + limit
        for k, proc in enumerate(self.procs):
            while "subscribed" not in self._log(k).read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    await self.stop()
                    tail = self._log(k).read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"gateway worker {k} did not subscribe:\n{tail}")
                await asyncio.sleep(0.05)

    def cpu_seconds(self) -> float:
        """User + system CPU time the workers used so far (Linux /proc)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for p in self.procs or []:
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    async def stop(self) -> list[dict[str, int]]:
        """SIGTERM every worker; their final stats (messages, readings, batches, acks...)."""
        codes = [await _stop(p) for p in self.procs or []]
        stats = []
        for k, code in enumerate(codes):
            text = self._log(k).read_text(errors="replace")
            if code != 0:
                raise RuntimeError(f"gateway worker {k} exited {code}:\n{text[-2000:]}")
            m = re.search(r"stopped: GatewayStats\((.*?), last_reading_at", text)
            if m:
                stats.append({
                    key: int(v) for key, v in re.findall(r"(\w+)=(\d+)", m.group(1))
                })  # fmt: skip
        self.procs = None
        return stats


# --- phases -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fleet:
    devices: int
    per_device: int
    mode: Mode = "single"
    batch: int = 50  # readings per message in batch mode

    @property
    def readings(self) -> int:
        return self.devices * self.per_device

    @property
    def messages(self) -> int:
        if self.mode == "single":
            return self.readings
        return self.devices * -(-self.per_device // self.batch)

    def generator(self, port: int, client_prefix: str) -> LoadGenerator:
        return LoadGenerator(
            port=port, devices=self.devices, per_device=self.per_device, mode=self.mode,
            batch=self.batch, client_prefix=client_prefix,
        )  # fmt: skip


def _subscribe_session(port: int, client_id: str, topic: str) -> None:
    """Create a persistent QoS 1 session subscribed to `topic` (the broker queues for it)."""
    subprocess.run(
        ["mosquitto_sub", "-h", HOST, "-p", str(port), "-c", "-i", client_id, "-q", "1",
         "-t", topic, "-E"],
        check=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


async def generator_alone(fleet: Fleet, state: Path) -> LoadResult:
    """The publishers against a broker that queues every message for an offline session."""
    async with mosquitto(state, max_queued=2 * fleet.messages + 1000) as port:
        _subscribe_session(port, "bench-sink", READINGS_TOPIC)
        gen = fleet.generator(port, "gen-alone")
        await gen.start()
        try:
            gen.go()
            return await gen.wait()
        finally:
            await gen.kill()


_BASELINE_COLUMNS = (
    "device_id, seq_epoch, seq, effective_at, member_id, kind, source, measured_at, "
    "measured_offset, received_at, clock_corrected, flags, unit, value, meal, glucose_mgdl, "
    "transport, content_hash"
)
_BASELINE_SQL = f"""
INSERT INTO bench_readings ({_BASELINE_COLUMNS})
SELECT d, 0, (p->>'seq')::bigint, (p->>'measured_at')::timestamptz, 'm-' || substr(d, 4),
       p->>'kind', coalesce(p->>'source', 'device'), (p->>'measured_at')::timestamptz, 0, now(),
       false, '{{}}', p->>'unit', (p->>'value')::numeric, p->>'meal', (p->>'value')::numeric,
       'mqtt', decode(md5(p::text), 'hex')
FROM (SELECT split_part(topic, '/', 4) AS d, payload AS p FROM stage) s
ON CONFLICT DO NOTHING
"""


def _start_c_pipeline(
    port: int, messages: int, dsn: str, log: Path
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """`mosquitto_sub ... | psql ...`, resuming the persistent session `bench-baseline`."""
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", HOST, "-p", str(port), "-c", "-i", "bench-baseline",
         "-q", "1", "-t", READINGS_TOPIC, "-C", str(messages), "-F", r"%t\t%p"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    with log.open("ab") as out:
        psql = subprocess.Popen(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", dsn,
             "-c", "CREATE TEMP TABLE stage (topic text, payload jsonb)",
             "-c", r"\copy stage FROM pstdin", "-c", _BASELINE_SQL],
            stdin=sub.stdout, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    if sub.stdout is not None:
        sub.stdout.close()  # psql holds the pipe now: mosquitto_sub sees EPIPE if psql dies
    return sub, psql


async def baseline_c_pipeline(dsn: str, fleet: Fleet, state: Path) -> tuple[float, LoadResult]:
    """mosquitto_sub | psql COPY into a `readings`-shaped table; (seconds, generator result)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_readings")
        await conn.execute("CREATE TABLE bench_readings (LIKE readings INCLUDING ALL)")
    finally:
        await conn.close()
    async with mosquitto(state, max_queued=2 * fleet.messages + 1000) as port:
        _subscribe_session(port, "bench-baseline", READINGS_TOPIC)
        gen = fleet.generator(port, "gen-baseline")
        await gen.start()  # connect and encode before the clock starts
        sub, psql = _start_c_pipeline(port, fleet.messages, dsn, state / "psql.log")
        try:
            t0 = gen.go()
            loaded = await gen.wait()
            code = await asyncio.to_thread(psql.wait, 900)
            if code != 0:
                raise RuntimeError(f"baseline psql exited {code}: "
                                   f"{(state / 'psql.log').read_text()[-2000:]}")  # fmt: skip
            stored = await count_rows(dsn, "bench_readings")
            elapsed = time.monotonic() - t0
        finally:
            for p in (sub, psql):
                if p.poll() is None:
                    p.kill()
                    p.wait()
            await gen.kill()
    if stored != fleet.readings:
        raise RuntimeError(f"baseline stored {stored} of {fleet.readings} readings")
    return elapsed, loaded


@dataclass(frozen=True, slots=True)
class VigilRun:
    seconds: float
    loaded: LoadResult
    worker_cpu_s: float  # CPU time of the gateway workers from the first publish to the end
    batches: int | None  # batches the workers stored (from their exit log), if reported

    def figures(self, fleet: Fleet) -> dict[str, Any]:
        n = fleet.readings
        return {
            "vigil_mean_batch": round(n / self.batches) if self.batches else None,
            "vigil_worker_cpu_us_per_reading": round(1e6 * self.worker_cpu_s / n, 1),
        }


async def vigil_gateway(dsn: str, fleet: Fleet, tuning: GatewayTuning, state: Path) -> VigilRun:
    """The fleet through `vigil gateway` workers; clock stops when all is acked and stored."""
    limit = max(120.0, fleet.readings / 500)  # far beyond any healthy run
    async with mosquitto(state, max_queued=2 * fleet.messages + 1000) as port:
        gateways = Gateways(tuning, dsn, port, state)
        await gateways.start()
        counter = None
        gen = fleet.generator(port, "gen-vigil")
        try:
            counter = await AckCounter.open(HOST, port, fleet.readings)
            await gen.start()
            cpu0 = gateways.cpu_seconds()
            t0 = gen.go()
            loaded = await gen.wait()
            await counter.wait(limit)
            stored = await count_rows(dsn, "readings")
            elapsed = time.monotonic() - t0
            cpu = gateways.cpu_seconds() - cpu0
            rejected = counter.rejected
        except BaseException:
            with contextlib.suppress(Exception):
                await gateways.stop()
            raise
        finally:
            if counter is not None:
                counter.close()
            await gen.kill()
        stats = await gateways.stop()
    if stored != fleet.readings or rejected:
        raise RuntimeError(
            f"vigil stored {stored} of {fleet.readings} readings ({rejected} rejected)"
        )
    batches = sum(s.get("batches", 0) for s in stats) if len(stats) == tuning.workers else None
    return VigilRun(elapsed, loaded, cpu, batches)


def load_note() -> str:
    try:
        load = Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return ""
    return f"1-min load average before the run: {load} (on {os.cpu_count()} cores)"


async def run(settings: Settings, quick: bool) -> dict[str, Any]:
    fleet = Fleet(devices=500, per_device=40) if quick else Fleet(devices=2_000, per_device=100)
    tuning = GatewayTuning.from_env(workers=2, batch_size=10_000, batch_wait_ms=50)
    note = load_note()
    name = f"vigil_bench_mqtt_{os.getpid()}"
    async with fresh_database(settings, name, fleet.devices) as dsn:
        with tempfile.TemporaryDirectory(prefix="vigil-bench-mqtt-") as tmp:
            state = Path(tmp)
            alone = await generator_alone(fleet, state)
            baseline_s, _ = await baseline_c_pipeline(dsn, fleet, state)
            vigil = await vigil_gateway(dsn, fleet, tuning, state)
    n = fleet.readings
    figures = {
        "readings": n,
        "devices": fleet.devices,
        "readings_per_message": 1,
        "workers": tuning.workers,
        "batch_size": tuning.batch_size,
        "batch_wait_ms": tuning.batch_wait_ms,
        "generator_readings_per_s": round(alone.rate),
        "vigil_readings_per_s": round(n / vigil.seconds),
        "baseline_readings_per_s": round(n / baseline_s),
        **vigil.figures(fleet),
        "ratio": round(baseline_s / vigil.seconds, 3),
    }
    return record("ingest_mqtt", "quick" if quick else "full", figures, TARGET, note)


if __name__ == "__main__":  # pragma: no cover - `vigil bench ingest_mqtt` is the entry point
    asyncio.run(run(Settings(), "--quick" in sys.argv))
