"""`vigil scheduler`: the time-driven half of alerting, as a loop of jobs.

Each tick runs every job that is due, in priority order (people first: escalation and paging
before nudges and housekeeping):

    escalate_sla, page, first_outreach, unreachable   every tick
    nudge_lows, deliver_messages, outbox              every tick
    no_recent_readings, glucose_trend, member_nudges, rollups   every N minutes (settings)

Any number of scheduler processes may run (for availability). A job runs in one process at a
time: the process locks the job's `scheduler_jobs` row (`FOR UPDATE SKIP LOCKED`, a
transaction-scoped lock that dies with the connection if the process does) for the duration
of the job, and a process finding it locked skips the job this tick. `last_run_at` in that row
spaces the every-N-minutes jobs across all processes. The work itself commits in its own
transactions and is guarded by the rows it changes, so even a job run twice in a row does
nothing twice (one escalation, one page, one message per trigger).

The loop LISTENs on `vigil_alerts` and `vigil_member_messages`: a critical alert opening, an
outreach being recorded or a nudge being queued starts a tick at once, so the first page goes
out within seconds (Livongo aimed to call within 90 seconds of a dangerous reading), while the
tick interval (default 10 s) bounds the delay when a notification is missed. The clock is
injectable; tests drive `tick()` directly with a fake one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from alerting.content import Content
from alerting.engine import NOTIFY_CHANNEL, Clock, RuleEngine
from alerting.errors import AlertingError
from alerting.escalation import escalate_first_outreach, escalate_missed_sla, notify_unreachable
from alerting.inbox import MessageTransport, deliver_due
from alerting.notifier import Notifier
from alerting.nudges import (
    MESSAGES_CHANNEL,
    missed_testing_reminders,
    nudge_recent_lows,
    weekly_encouragement,
)
from alerting.paging import page_due
from alerting.timed_rules import raise_glucose_trends, raise_no_recent_readings
from device_gateway.mqtt.topics import Topics
from services.storage.db import Connection
from services.storage.rollups import refresh_rollups

log = logging.getLogger(__name__)

# The database is away: back off and retry the tick, as the gateway does.
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
              asyncpg.exceptions.OperatorInterventionError)  # fmt: skip
_MIN_SPACING: Final = 0.5  # seconds between ticks woken by notifications (a burst is one tick)


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_SCHEDULER_", extra="ignore", frozen=True)

    tick: timedelta = timedelta(seconds=10)
    no_recent_readings_every: timedelta = timedelta(minutes=15)
    glucose_trend_every: timedelta = timedelta(hours=1)
    member_nudges_every: timedelta = timedelta(hours=1)
    rollups_every: timedelta = timedelta(minutes=30)
    #: Outbox batches older than this are assumed orphaned by a stopped process (seconds).
    outbox_older_than: float = Field(default=30.0, gt=0)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    every: timedelta  # zero: every tick
    run: Callable[[Connection, datetime], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class JobResult:
    name: str
    status: str  # "ran", "not_due", "locked", "failed"
    count: int = 0


class Scheduler:
    def __init__(
        self, pool: asyncpg.Pool, *, notifier: Notifier, content: Content,
        transport: MessageTransport | None = None, topics: Topics | None = None,
        settings: SchedulerSettings | None = None, clock: Clock = _utcnow,
        instance: str | None = None,
    ) -> None:  # fmt: skip
        self._pool = pool
        self._notifier = notifier
        self._content = content
        self._transport = transport
        self._topics = topics or Topics()
        self.settings = settings or SchedulerSettings()
        self._clock = clock
        self.instance = instance or socket.gethostname()
        self._engine = RuleEngine(pool, clock=clock)
        self._wake = asyncio.Event()
        self._ready = False
        self.jobs = self._jobs()

    def _jobs(self) -> list[Job]:
        s, c, n = self.settings, self._content, self._notifier
        tick = timedelta(0)

        async def outbox(_: Connection, __: datetime) -> int:
            # The engine takes its own connections (it is shared with the gateway's sink).
            return await self._engine.sweep_outbox(older_than=s.outbox_older_than)

        async def rollups(conn: Connection, now: datetime) -> int:
            await refresh_rollups(conn, now=now)
            return 1

        async def deliver(conn: Connection, now: datetime) -> int:
            if self._transport is None:
                return 0
            return await deliver_due(conn, self._transport, self._topics, now)

        async def member_nudges(conn: Connection, now: datetime) -> int:
            return (await weekly_encouragement(conn, c, now)
                    + await missed_testing_reminders(conn, c, now))  # fmt: skip

        return [
            Job("escalate_sla", tick, lambda conn, now: escalate_missed_sla(conn, n, c, now)),
            Job("page", tick, lambda conn, now: page_due(conn, n, c, now)),
            Job("first_outreach", tick,
                lambda conn, now: escalate_first_outreach(conn, n, c, now)),
            Job("unreachable", tick, lambda conn, now: notify_unreachable(conn, n, c, now)),
            Job("nudge_lows", tick, lambda conn, now: nudge_recent_lows(conn, c, now)),
            Job("deliver_messages", tick, deliver),
            Job("outbox", tick, outbox),
            Job("no_recent_readings", s.no_recent_readings_every,
                lambda conn, now: raise_no_recent_readings(conn, self._engine, now)),
            Job("glucose_trend", s.glucose_trend_every,
                lambda conn, now: raise_glucose_trends(conn, self._engine, now)),
            Job("member_nudges", s.member_nudges_every, member_nudges),
            Job("rollups", s.rollups_every, rollups),
        ]  # fmt: skip

    async def tick(self) -> list[JobResult]:
        """Run every due job once (those another process is running are skipped)."""
        if not self._ready:
            await self._pool.executemany(
                "INSERT INTO scheduler_jobs (name) VALUES ($1) ON CONFLICT DO NOTHING",
                [(j.name,) for j in self.jobs],
            )
            self._ready = True
        now = self._clock()
        return [await self._run(job, now) for job in self.jobs]

    async def _run(self, job: Job, now: datetime) -> JobResult:
        async with self._pool.acquire() as lock, lock.transaction():
            row = await lock.fetchrow(
                "SELECT last_run_at FROM scheduler_jobs WHERE name = $1 FOR UPDATE SKIP LOCKED",
                job.name,
            )
            if row is None:
                return JobResult(job.name, "locked")
            last: datetime | None = row["last_run_at"]
            # (a last run in the future means the clock went back: run rather than stall)
            if job.every and last is not None and last <= now and now - last < job.every:
                return JobResult(job.name, "not_due")
            error: str | None = None
            count = 0
            try:
                async with self._pool.acquire() as conn:
                    count = await job.run(conn, now)
            except AlertingError as exc:  # expected trouble (the broker away): no traceback
                log.warning("scheduler job %s: %s", job.name, exc)
                error = str(exc)
            except _DB_ERRORS:
                raise
            except Exception as exc:  # one failing job must not stop the others
                log.exception("scheduler job %s failed", job.name)
                error = f"{type(exc).__name__}: {exc}"[:1000]
            await lock.execute(
                """UPDATE scheduler_jobs SET last_run_at = $2, run_by = $3, last_error = $4,
                       last_ok_at = CASE WHEN $4::text IS NULL THEN $2 ELSE last_ok_at END
                   WHERE name = $1""",
                job.name, now, self.instance, error,
            )  # fmt: skip
        if error is not None:
            return JobResult(job.name, "failed")
        if count:
            log.info("scheduler job %s: %d", job.name, count)
        return JobResult(job.name, "ran", count)

    def _on_notify(self, _conn: Connection, _pid: int, _channel: str, _payload: object) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set; survives database outages with jittered backoff."""
        delay = 1.0
        while not stop.is_set():
            try:
                async with self._pool.acquire() as listener:
                    await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
                    await listener.add_listener(MESSAGES_CHANNEL, self._on_notify)
                    try:
                        await self._serve(stop, listener)
                    finally:
                        with contextlib.suppress(*_DB_ERRORS):
                            await listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
                            await listener.remove_listener(MESSAGES_CHANNEL, self._on_notify)
                delay = 1.0
            except (*_DB_ERRORS, asyncpg.PostgresError) as exc:
                log.warning("scheduler: database unavailable (%s); retrying in %.0fs",
                            type(exc).__name__, delay)  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 60.0)
        log.info("scheduler %s stopped", self.instance)

    async def _serve(self, stop: asyncio.Event, listener: Connection) -> None:
        interval = self.settings.tick.total_seconds()
        while not stop.is_set() and not listener.is_closed():
            self._wake.clear()
            await self.tick()
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
            if self._wake.is_set() and not stop.is_set():
                await asyncio.sleep(_MIN_SPACING)  # let a burst of notifications gather
