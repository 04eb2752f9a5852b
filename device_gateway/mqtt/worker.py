"""A gateway worker (`vigil gateway`): MQTT in, the pipeline, acks out after the commit.

- MQTT v5, QoS 1, `clean_start=False` with a session expiry and a stable client id, so a
  restarted worker resumes its own session (and what the broker queued for it meanwhile).
- One shared subscription: N workers split the devices' messages.
- Messages are batched by size and age; each batch is one pipeline transaction; the acks for a
  batch are published only after its commit. A database outage stops acks and the batch is
  retried until the database is back; devices keep their backlog meanwhile.
- Bounded memory: above `gateway_max_pending` received-but-unstored messages the worker stops
  reading its socket, and the broker holds the rest.
- SIGTERM (the `stop` event) stops reading, stores and acks everything received, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import aiomqtt
import asyncpg
import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_gateway.mqtt.client import PausableClient
from device_gateway.mqtt.messages import build_acks, split_readings_message
from device_gateway.mqtt.observability import GatewayMetrics, Health
from device_gateway.mqtt.topics import Topics
from services.errors import StorageUnavailable
from services.pipeline import Incoming, ReadingPipeline
from services.settings import Settings

log = logging.getLogger(__name__)

# The database is away (restarting, failing over, unreachable): keep the batch, retry, no acks.
_DB_ERRORS = (
    OSError,
    TimeoutError,
    StorageUnavailable,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # class 57: admin/crash shutdown, starting up
    asyncpg.InterfaceError,  # the connection was closed under us
)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp", ""):
            raise ValueError(f"unsupported broker URL scheme {parts.scheme!r} (use mqtt://)")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 1883,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


@dataclass(slots=True)
class GatewayStats:
    messages: int = 0
    readings: int = 0
    batches: int = 0
    acks: int = 0
    db_retries: int = 0
    last_reading_at: float | None = None
    outcomes: dict[str, int] = field(default_factory=dict)


class GatewayWorker:
    def __init__(
        self,
        settings: Settings,
        pipeline: ReadingPipeline,
        pool: asyncpg.Pool,
        worker_id: str,
    ) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._pool = pool
        self._topics = Topics(settings.mqtt_prefix)
        self.client_id = f"vigil-gw-{worker_id}"
        self.stats = GatewayStats()
        self._pending: list[tuple[str, Incoming]] = []
        self._wake = asyncio.Event()
        self._client: PausableClient | None = None
        self.subscribed = asyncio.Event()
        self.metrics = GatewayMetrics.create()
        self.fleet_silent = False
        self.health = Health()

    def _make_client(self) -> PausableClient:
        broker = BrokerAddress.parse(self._settings.mqtt_url.get_secret_value())
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = int(self._settings.gateway_session_expiry.total_seconds())
        return PausableClient(
            broker.host,
            broker.port,
            username=broker.username,
            password=broker.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            keepalive=30,
            timeout=10,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; reconnect with jittered, capped exponential backoff."""
        delay = 0.5
        while not stop.is_set():
            try:
                await self._serve(stop)
                delay = 0.5
            except aiomqtt.MqttError as exc:
                log.warning("broker connection lost (%s); reconnecting in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 30.0)
        # Whatever arrived before the stop is stored and acked if the broker is reachable;
        # otherwise devices resend it.
        log.info("gateway worker %s stopped: %s", self.client_id, self.stats)

    async def leave(self) -> None:
        """End this worker's persistent session (a scale-down). Mosquitto keeps dealing shared-
        subscription messages to an offline member's session until it expires; reconnecting
        with a clean start and a zero expiry removes it at once. Whatever the broker had queued
        for it is dropped unacked, so devices resend it to the remaining workers."""
        broker = BrokerAddress.parse(self._settings.mqtt_url.get_secret_value())
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        async with aiomqtt.Client(
            broker.host, broker.port, username=broker.username, password=broker.password,
            identifier=self.client_id, protocol=aiomqtt.ProtocolVersion.V5, clean_start=True,
            properties=props, timeout=10,
        ):  # fmt: skip
            pass
        log.info("gateway worker %s left: its broker session is gone", self.client_id)

    async def _serve(self, stop: asyncio.Event) -> None:
        async with self._make_client() as client:
            self._client = client
            await client.subscribe(
                self._topics.shared(self._settings.gateway_group, "readings"), qos=1
            )
            await client.subscribe(
                self._topics.shared(self._settings.gateway_group, "status"), qos=1
            )
            self.subscribed.set()
            self.health.broker_connected = True
            self.metrics.broker_connected.set(1)
            log.info("gateway worker %s subscribed", self.client_id)
            try:
                async with asyncio.TaskGroup() as tg:
                    reader = tg.create_task(self._read(client), name="gateway-read")
                    storer = tg.create_task(self._store_loop(client, stop), name="gateway-store")
                    await stop.wait()
                    client.pause_reading()
                    # Drain what the client already holds, then the last batch.
                    while client.queued:  # noqa: ASYNC110 - aiomqtt's queue has no event
                        await asyncio.sleep(0.01)
                    reader.cancel()
                    self._wake.set()
                    await storer
            finally:
                self.subscribed.clear()
                self.health.broker_connected = False
                self.metrics.broker_connected.set(0)
                self._client = None

    async def _read(self, client: PausableClient) -> None:
        max_pending = self._settings.gateway_max_pending
        max_bytes = self._settings.max_payload_bytes
        async for message in client.messages:
            parsed = self._topics.parse(message.topic.value)
            if parsed is None:
                continue
            device_id, channel = parsed
            payload = message.payload if isinstance(message.payload, bytes) else b""
            now = datetime.now(UTC)
            self.stats.messages += 1
            if channel == "status":
                await self._status(device_id, payload, now)
                continue
            for item in split_readings_message(payload, device_id, now, max_bytes):
                self._pending.append((device_id, item))
            if len(self._pending) >= self._settings.gateway_batch_size:
                self._wake.set()
            self.metrics.pending.set(len(self._pending))
            if len(self._pending) + client.queued >= max_pending:
                client.pause_reading()

    async def _store_loop(self, client: PausableClient, stop: asyncio.Event) -> None:
        wait = self._settings.gateway_batch_wait.total_seconds()
        size = self._settings.gateway_batch_size
        while True:
            if not self._pending:
                if stop.is_set() and client.queued == 0:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            if len(self._pending) < size and not stop.is_set():
                # Let a batch fill for up to `wait` after its first message.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            batch, self._pending = self._pending[:size], self._pending[size:]
            await self._store_and_ack(client, batch)
            if len(self._pending) + client.queued < self._settings.gateway_max_pending // 2:
                client.resume_reading()

    async def _store_and_ack(
        self, client: PausableClient, batch: Sequence[tuple[str, Incoming]]
    ) -> None:
        try:
            await self._store_and_ack_batch(client, batch)
        except asyncpg.PostgresError as exc:
            # Not an outage: something in this batch the database refuses (a bug to fix). Keep
            # serving everyone else: store the messages one by one, and leave any that still
            # fails unacked (its device resends it; nothing is lost, nothing loops).
            # Only the error's type: its message may quote a reading's values (PHI).
            log.error(  # noqa: TRY400
                "batch of %d refused by the database (%s); storing one by one",
                len(batch), type(exc).__name__,
            )  # fmt: skip
            for one in batch:
                try:
                    await self._store_and_ack_batch(client, [one])
                except asyncpg.PostgresError as single:
                    log.error(  # noqa: TRY400
                        "a reading from device %s was refused (%s): left unacked",
                        one[0], type(single).__name__,
                    )  # fmt: skip

    async def _store_and_ack_batch(
        self, client: PausableClient, batch: Sequence[tuple[str, Incoming]]
    ) -> None:
        items = [item for _, item in batch]
        prepared = self._pipeline.prepare(items)
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                result = await self._pipeline.store(prepared)
                self.health.database_ok = True
                break
            except _DB_ERRORS as exc:
                # No commit, no ack: devices keep these readings and resend if we die.
                self.health.database_ok = False
                self.metrics.db_retries.inc()
                self.stats.db_retries += 1
                log.warning("database unavailable (%s); batch of %d kept, retry in %.1fs",
                            type(exc).__name__, len(items), delay)  # fmt: skip
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 10.0)
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(items))
        self.stats.batches += 1
        self.stats.readings += len(items)
        self.stats.last_reading_at = self.health.last_batch_at = time.time()
        self.metrics.last_reading.set(max(i.received_at for i in items).timestamp())
        for o in result.outcomes:
            key = o.reason.value if o.reason else o.status
            self.stats.outcomes[key] = self.stats.outcomes.get(key, 0) + 1
            self.metrics.readings.labels(o.status, o.reason.value if o.reason else "").inc()
        pairs = zip(batch, result.outcomes, strict=True)
        acks = build_acks((device, o) for (device, _), o in pairs)
        # QoS 0 acks are handed to the client's socket buffer in one go: awaiting each publish
        # costs an event-loop round trip per device (a lost ack only causes a resend).
        for device_id, payload in acks.items():
            client.publish_nowait(self._topics.device(device_id, "acks"), payload)
        self.stats.acks += len(acks)
        oldest = min(i.received_at for i in items)
        self.metrics.ack_seconds.observe((datetime.now(UTC) - oldest).total_seconds())
        await self._touch_devices(set(acks), datetime.now(UTC))

    async def watch_fleet(self, stop: asyncio.Event, every: float = 60.0) -> None:
        """The fleet alarm: when no device anywhere has been heard from for
        `fleet_silence_alarm`, it is an outage (carrier, broker, gateway), not quiet members.
        Raised loudly here and as a metric, long before every member shows "no recent readings"."""
        limit = self._settings.fleet_silence_alarm
        while not stop.is_set():
            try:
                last: datetime | None = await self._pool.fetchval(
                    "SELECT max(last_seen_at) FROM devices WHERE status = 'active'"
                )
            except _DB_ERRORS:
                last = None
            else:
                silent = last is not None and datetime.now(UTC) - last > limit
                if silent and not self.fleet_silent:
                    log.error("FLEET ALARM: no device heard from since %s", last)
                self.fleet_silent = silent
                self.metrics.fleet_silent.set(1 if silent else 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def _touch_devices(self, device_ids: set[str], now: datetime) -> None:
        try:
            await self._pool.execute(
                "UPDATE devices SET last_seen_at = greatest(last_seen_at, $2) "
                "WHERE id = ANY($1::text[])",
                list(device_ids),
                now,
            )
        except _DB_ERRORS as exc:  # last-seen is advisory; the readings are already stored
            log.info("could not update last-seen for %d devices: %s", len(device_ids), exc)

    async def _status(self, device_id: str, payload: bytes, now: datetime) -> None:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict):
            return
        battery = doc.get("battery")
        signal = doc.get("signal")
        firmware = doc.get("firmware")
        online = doc.get("online", True)
        try:
            await self._pool.execute(
                """UPDATE devices SET last_seen_at = greatest(last_seen_at, $2),
                       online = $3,
                       battery_pct = coalesce($4, battery_pct),
                       signal_dbm = coalesce($5, signal_dbm),
                       firmware = coalesce($6, firmware)
                   WHERE id = $1""",
                device_id,
                now,
                bool(online),
                battery if isinstance(battery, int) and 0 <= battery <= 100 else None,
                signal if isinstance(signal, int) and -200 <= signal <= 0 else None,
                firmware if isinstance(firmware, str) and len(firmware) <= 64 else None,
            )
        except _DB_ERRORS as exc:
            log.info("could not record a device status: %s", exc)
