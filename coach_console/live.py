"""Live updates: one LISTEN on `vigil_alerts` per console process, fanned out to browsers.

The rule engine and the alert lifecycle NOTIFY `vigil_alerts` with {id, member_id, rule, tier,
event} when a change commits (alerting/engine.py). `AlertHub` holds one dedicated connection that
LISTENs (not a pool connection: LISTEN belongs to a session), looks up once per event what decides
who it concerns (access.AlertFacts), and puts a `Signal` on the queue of every connected browser
it concerns. The browser's stream (routes_live) turns signals into Server-Sent Events; the page
then fetches its own scoped queue, so an event never carries member data.

A lost listening connection is re-opened with jittered, capped exponential backoff; each
reconnect broadcasts a `resync` signal, because notifications sent while nobody listened are
gone (NOTIFY is not a queue) and every browser must re-fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import asyncpg

from alerting.engine import NOTIFY_CHANNEL
from coach_console.access import AlertFacts
from services.storage.db import Pool

log = logging.getLogger(__name__)

#: How the listening connection shows in pg_stat_activity.
APPLICATION_NAME: Final = "vigil-console-listen"
QUEUE_SIZE: Final = 256
PING_EVERY: Final = 30.0  # seconds: prove the listening connection is alive
BACKOFF_CAP: Final = 30.0


@dataclass(frozen=True, slots=True)
class Signal:
    event: str  # the lifecycle event ("opened", "acknowledged", ...) or "resync"
    alert_id: int | None = None
    tier: str | None = None
    facts: AlertFacts | None = None

    def as_json(self) -> str:
        return json.dumps({"id": self.alert_id, "tier": self.tier, "event": self.event})


RESYNC: Final = Signal("resync")


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()


class AlertHub:
    """An async context manager: listening from `__aenter__` until `__aexit__`."""

    def __init__(self, dsn: str, pool: Pool) -> None:
        self._dsn = dsn
        self._pool = pool
        self._subscribers: set[asyncio.Queue[Signal]] = set()
        self._inbox: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()

    async def __aenter__(self) -> AlertHub:
        self._tasks = [
            asyncio.create_task(self._listen(), name="console-listen-vigil_alerts"),
            asyncio.create_task(self._fan_out(), name="console-fan-out"),
        ]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Signal]]:
        q: asyncio.Queue[Signal] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, signal: Signal) -> None:
        for q in self._subscribers:
            try:
                q.put_nowait(signal)
            except asyncio.QueueFull:
                # A browser that stopped reading: replace its backlog with one resync.
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(RESYNC)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self._inbox.put_nowait(str(payload))

    async def _listen(self) -> None:
        attempt = 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=10, server_settings={"application_name": APPLICATION_NAME}
                )
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                attempt = 0
                self.listening.set()
                self.publish(RESYNC)
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), PING_EVERY)
                    if not lost.is_set():
                        async with asyncio.timeout(10):
                            await conn.fetchval("SELECT 1")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("console: listening on %s failed: %s", NOTIFY_CHANNEL,
                            type(exc).__name__)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)
            attempt += 1
            delay = min(BACKOFF_CAP, 0.5 * 2**attempt)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _fan_out(self) -> None:
        while True:
            payload = await self._inbox.get()
            try:
                doc = json.loads(payload)
                alert_id = int(doc["id"])
                event = str(doc["event"])
            except (ValueError, KeyError, TypeError):
                log.warning("console: ignored a malformed %s notification", NOTIFY_CHANNEL)
                continue
            try:
                facts = await self._facts(alert_id)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("console: alert facts unavailable (%s); resync", type(exc).__name__)
                self.publish(RESYNC)
                continue
            if facts is not None:
                self.publish(Signal(event, alert_id, facts.tier, facts))

    async def _facts(self, alert_id: int) -> AlertFacts | None:
        row = await self._pool.fetchrow(
            """SELECT a.tier, a.status, a.acknowledged_by, m.coach_id, mc.team
               FROM alerts a JOIN members m ON m.id = a.member_id
               LEFT JOIN coaches mc ON mc.id = m.coach_id WHERE a.id = $1""",
            alert_id,
        )
        if row is None:
            return None
        return AlertFacts(row["tier"], row["status"], row["acknowledged_by"], row["coach_id"],
                          row["team"])  # fmt: skip
