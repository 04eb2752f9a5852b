"""Gateway metrics (Prometheus) and the health endpoint, served on one small HTTP listener.

- `GET /metrics`: readings by outcome and reason code, batch sizes, commit and ack latency, queue
  depth, the last reading's receive time, database retries, and the fleet-silence alarm.
- `GET /healthz`: 200 when connected to the broker and the last database contact succeeded,
  else 503, with a JSON body saying which (for readiness and liveness probes).

Metrics carry no member or device identity and no reading values (PHI stays out of telemetry).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry
    readings: Counter
    batch_size: Histogram
    commit_seconds: Histogram
    ack_seconds: Histogram
    pending: Gauge
    last_reading: Gauge
    db_retries: Counter
    fleet_silent: Gauge
    broker_connected: Gauge

    @classmethod
    def create(cls) -> GatewayMetrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            readings=Counter(
                "vigil_gateway_readings", "Readings processed, by outcome and reason code",
                ["outcome", "reason"], registry=r,
            ),
            batch_size=Histogram(
                "vigil_gateway_batch_size", "Readings per stored batch",
                buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000), registry=r,
            ),
            commit_seconds=Histogram(
                "vigil_gateway_commit_seconds", "Time to store and commit one batch", registry=r,
            ),
            ack_seconds=Histogram(
                "vigil_gateway_ack_seconds",
                "From the oldest reading's arrival to its ack being published", registry=r,
            ),
            pending=Gauge(
                "vigil_gateway_pending_readings", "Received, not yet stored (queue depth)",
                registry=r,
            ),
            last_reading=Gauge(
                "vigil_gateway_last_reading_timestamp_seconds",
                "Unix time the last reading was received", registry=r,
            ),
            db_retries=Counter(
                "vigil_gateway_database_retries", "Batches retried while the database was away",
                registry=r,
            ),
            fleet_silent=Gauge(
                "vigil_fleet_silent",
                "1 when no device has been heard from for VIGIL_FLEET_SILENCE_ALARM", registry=r,
            ),
            broker_connected=Gauge(
                "vigil_gateway_broker_connected", "1 while connected to the broker", registry=r,
            ),
        )  # fmt: skip


@dataclass
class Health:
    broker_connected: bool = False
    database_ok: bool = True
    last_batch_at: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "status": "ok" if self.ok else "unavailable",
            "broker_connected": self.broker_connected,
            "database_ok": self.database_ok,
            "last_batch_age_s": None
            if self.last_batch_at is None
            else round(time.time() - self.last_batch_at, 1),
        }

    @property
    def ok(self) -> bool:
        return self.broker_connected and self.database_ok


async def _handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    metrics: GatewayMetrics,
    health: Callable[[], Health],
) -> None:
    try:
        async with asyncio.timeout(5):
            request = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
        parts = request.decode("latin-1").split()
        path = parts[1] if len(parts) >= 2 else "/"
        if path == "/metrics":
            status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(metrics.registry)
        elif path in ("/healthz", "/readyz"):
            h = health()
            status = "200 OK" if h.ok else "503 Service Unavailable"
            ctype, body = "application/json", json.dumps(h.as_dict()).encode()
        else:
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode() + body
        )
        await writer.drain()
    except (TimeoutError, ConnectionError, UnicodeError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def serve_observability(
    host: str, port: int, metrics: GatewayMetrics, health: Callable[[], Health]
) -> AsyncIterator[int]:
    """Serve /metrics and /healthz; yields the bound port (port 0 picks a free one)."""
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, metrics, health), host=host, port=port
    )
    bound = server.sockets[0].getsockname()[1]
    log.info("metrics and health on http://%s:%d/metrics, /healthz", host, bound)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()
