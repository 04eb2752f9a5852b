"""bench `ingest_backlog`: store-and-forward backlogs through the gateway vs a raw staging-COPY.

Devices reconnect holding a backlog and send it as `{"readings": [50 readings]}` QoS 1 messages
(bench/loadgen.py: 2 publisher processes, 50 connections each, every device's messages in
order, devices interleaved). In the same run:
- generator alone: the publishers into a broker that queues every message for an offline
  session, the ceiling the load generator imposes;
- Vigil: W `vigil gateway` workers on one shared subscription (batch size B); clock from the
  first publish until every reading was acked (device acks, counted by one subscriber) and
  `readings` holds them all;
- baseline: the same readings as pre-built row tuples, COPYed by asyncpg into a temporary
  staging table and `INSERT .. SELECT .. ON CONFLICT DO NOTHING` into `bench_readings` (same
  columns and indexes as `readings`), B rows per transaction, one connection, as in
  bench/ingest_file.py: the floor of any exactly-once loader through asyncpg, without MQTT.
Target: ratio (Vigil / baseline readings/s) >= 0.7.

Recorded settings: 2 workers, batches of up to 10,000 readings (the baseline's batch size too),
50 ms batch wait (1 worker was slower, 3 no faster on 2 cores). Override them for experiments
with the VIGIL_BENCH_GATEWAY_* variables of bench/ingest_mqtt.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from bench.ingest_file import baseline_staging_copy
from bench.ingest_mqtt import (
    Fleet,
    GatewayTuning,
    fresh_database,
    generator_alone,
    load_note,
    vigil_gateway,
)
from bench.loadgen import device_id, member_id, reading
from bench.record import Target, record
from services.settings import Settings

TARGET = Target("ratio", 0.7, "at_least")
READINGS_PER_MESSAGE = 50

def baseline_rows(fleet: Fleet, now: datetime) -> list[tuple[Any, ...]]:
    """The fleet's readings as `readings` rows, in the order they are published."""
    rows: list[tuple[Any, ...]] = []
    for lo in range(1, fleet.per_device + 1, fleet.batch):
        for d in range(fleet.devices):
            for s in range(lo, min(lo + fleet.batch, fleet.per_device + 1)):
                r = reading(d, s)
                t = datetime.fromisoformat(r["measured_at"])
                v = Decimal(r["value"])
                rows.append((
                    device_id(d), 0, s, t, member_id(d), "glucose", "device", t, 0, now, False,
                    [], "mg/dL", v, None, None, None, None, r["meal"], v, None, None, None, None,
                    "mqtt", hashlib.blake2b(orjson.dumps(r), digest_size=16).digest(),
                ))  # fmt: skip
    return rows


async def run(settings: Settings, quick: bool) -> dict[str, Any]:
    fleet = (
        Fleet(devices=200, per_device=250, mode="batch", batch=READINGS_PER_MESSAGE)
        if quick
        else Fleet(devices=1_000, per_device=500, mode="batch", batch=READINGS_PER_MESSAGE)
    )
    tuning = GatewayTuning.from_env(workers=2, batch_size=10_000, batch_wait_ms=50)
    note = load_note()
    name = f"vigil_bench_backlog_{os.getpid()}"
    async with fresh_database(settings, name, fleet.devices) as dsn:
        with tempfile.TemporaryDirectory(prefix="vigil-bench-backlog-") as tmp:
            state = Path(tmp)
            alone = await generator_alone(fleet, state)
            rows = baseline_rows(fleet, datetime.now(UTC))
            baseline_s = await baseline_staging_copy(dsn, rows, tuning.batch_size)
            del rows
            vigil = await vigil_gateway(dsn, fleet, tuning, state)
    n = fleet.readings
    figures = {
        "readings": n,
        "devices": fleet.devices,
        "readings_per_message": READINGS_PER_MESSAGE,
        "workers": tuning.workers,
        "batch_size": tuning.batch_size,
        "batch_wait_ms": tuning.batch_wait_ms,
        "generator_readings_per_s": round(alone.rate),
        "vigil_readings_per_s": round(n / vigil.seconds),
        "baseline_readings_per_s": round(n / baseline_s),
        **vigil.figures(fleet),
        "ratio": round(baseline_s / vigil.seconds, 3),
    }
    return record("ingest_backlog", "quick" if quick else "full", figures, TARGET, note)


if __name__ == "__main__":  # pragma: no cover - `vigil bench ingest_backlog` is the entry point
    asyncio.run(run(Settings(), "--quick" in sys.argv))
