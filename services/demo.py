"""`vigil demo`: the whole system with a simulated population, from an empty machine.

1. Resolve the database and the broker: the configured ones when they answer, else private servers
   under VIGIL_STATE_DIR (services.embedded).
2. Migrate, write the seeded population to state_dir/demo-population.yaml and import it (the same
   file on every run, so a rerun imports nothing new).
3. `vigil up`'s roles as child processes (services/up.py): a gateway worker (which runs the rule
   engine after each commit), the scheduler, the coach console and the member app API, whichever
   this build has; a console login is created and printed with the console's address.
4. Every simulated device is a virtual cellular meter (simulators/meter.py) publishing its
   readings over MQTT at `rate` per second in total, with store-and-forward until Vigil acks
   them, until Ctrl-C / SIGTERM or `duration` seconds. Each device continues its sequence numbers
   from what the database already holds, as a real meter's counter would. Dangerous readings
   among them raise alerts that appear in the console's queue live.

stdout carries the endpoints at the start and the summary at the end; progress goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import yaml
from pydantic import SecretStr

from services.commands import migrate_command
from services.embedded import (
    mqtt_reachable,
    postgres_reachable,
    private_mosquitto,
    private_postgres,
)
from services.errors import ConfigurationError, StorageUnavailable
from services.onboarding import import_onboarding_file
from services.settings import Settings
from services.storage.db import open_pool
from simulators.meter import VirtualMeter
from simulators.population import DEMO_SEED, generate_population
from simulators.readings import (
    GLUCOSE_LEVEL_2_HYPO_MGDL,
    SEVERE_DIASTOLIC_MMHG,
    SEVERE_SYSTOLIC_MMHG,
    ReadingSimulator,
)

log = logging.getLogger(__name__)

POPULATION_FILE: Final = "demo-population.yaml"
PROGRESS_EVERY: Final = 3.0  # seconds between progress lines on stderr
BATCHES_PER_SECOND: Final = 4
MAX_BATCH: Final = 500
DEMO_TRANSPORT: Final = "demo"
#: Losing the database mid-stream is "unreachable" (exit 3); any other database error is a bug.
_CONNECTION_LOST: Final = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


def redact_url(url: str) -> str:
    """The URL without its password (user, host, port and database stay)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{hostport}" if user else hostport))


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


@dataclass(slots=True)
class _Tally:
    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    low_glucose: int = 0  # stored this run, counted in the database
    severe_bp: int = 0
    alerts: int = 0

    def line(self) -> str:
        rejected = self.outcomes["rejected"]
        reasons = ", ".join(
            f"{k.split(':', 1)[1]} {n}" for k, n in sorted(self.outcomes.items()) if ":" in k
        )
        return (
            f"{self.sent} readings sent: {self.outcomes['accepted']} accepted, "
            f"{self.outcomes['duplicate']} duplicate, {rejected} rejected"
            + (f" ({reasons})" if reasons else "")
        )

    def hazards(self) -> str:
        return (
            f"stored: {self.low_glucose} glucose < {GLUCOSE_LEVEL_2_HYPO_MGDL} mg/dL, "
            f"{self.severe_bp} BP > {SEVERE_SYSTOLIC_MMHG}/{SEVERE_DIASTOLIC_MMHG} mmHg"
        )


async def demo_command(
    settings: Settings, *, members: int, rate: float, duration: float | None
) -> None:
    if members < 1:
        raise ConfigurationError(f"--members must be at least 1, not {members}")
    if not rate > 0:
        raise ConfigurationError(f"--rate must be above 0 readings per second, not {rate}")
    if duration is not None and not duration > 0:
        raise ConfigurationError(f"--duration must be above 0 seconds, not {duration}")
    state_dir = _state_dir(settings)
    stop = asyncio.Event()
    with _stop_on_signals(stop) as forced:
        try:
            await _run(settings, state_dir, members=members, rate=rate, duration=duration,
                       stop=stop)  # fmt: skip
        except asyncio.CancelledError:
            if forced():  # a second Ctrl-C: servers were stopped on the way out
                raise KeyboardInterrupt from None
            raise


def _state_dir(settings: Settings) -> Path:
    state_dir = Path(settings.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create VIGIL_STATE_DIR {state_dir}: {exc}") from exc
    return state_dir


async def _run(
    settings: Settings,
    state_dir: Path,
    *,
    members: int,
    rate: float,
    duration: float | None,
    stop: asyncio.Event,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        dsn, db_note = await _database(settings, state_dir, stack)
        mqtt_url, mqtt_note = await _broker(settings, state_dir, stack)
        run_settings = settings.model_copy(
            update={"database_url": SecretStr(dsn), "mqtt_url": SecretStr(mqtt_url)}
        )
        migrated = await migrate_command(run_settings)
        log.info("database ready (storage: %s)", migrated.storage_mode)

        population = generate_population(members, seed=DEMO_SEED)
        path = _write_population(state_dir, population, members)
        async with open_pool(dsn, max_size=2) as pool:
            summary = await import_onboarding_file(pool, path)
            _progress(f"imported {path}:\n{summary.render()}")
            simulator = ReadingSimulator(
                population, seed=DEMO_SEED, start_seq=await _last_seqs(pool, population)
            )
            coaches = [c["id"] for c in population.get("coaches", [])]
            endpoints = await _start_roles(run_settings, state_dir, pool, stack, coaches)
            print(
                f"Vigil demo ({members} simulated members, {rate:g} readings/s over MQTT)\n"
                f"database: {redact_url(dsn)}{db_note}\n"
                f"broker: {redact_url(mqtt_url)}{mqtt_note}\n" + endpoints,
                flush=True,
            )
            member_ids = [m["id"] for m in population["members"]]
            tally, elapsed = await _stream(mqtt_url, settings.mqtt_prefix, pool, simulator,
                                           member_ids=member_ids, rate=rate,
                                           duration=duration, stop=stop)  # fmt: skip
        stop.set()  # the roles stop with the exit stack
    print(f"demo finished after {elapsed:.1f} s: {tally.line()}", flush=True)
    print(f"{tally.hazards()}; alerts raised: {tally.alerts}", flush=True)


def _registered() -> set[str]:
    from services.cli import app

    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    return names | {g.name or "" for g in app.registered_groups}


async def _start_roles(
    settings: Settings,
    state_dir: Path,
    pool: asyncpg.Pool,
    stack: contextlib.AsyncExitStack,
    coaches: list[str],
) -> str:
    """`vigil up`'s roles for the demo; returns the lines to print about them."""
    from services.embedded import free_port
    from services.up import Role, run_roles, vigil_argv

    env = {
        "VIGIL_DATABASE_URL": settings.dsn(),
        "VIGIL_MQTT_URL": settings.mqtt_url.get_secret_value(),
        "VIGIL_GATEWAY_GROUP": "vigil-demo",
        "VIGIL_GATEWAY_METRICS_PORT": "0",
        "VIGIL_STATE_DIR": str(state_dir),
    }
    have = _registered()
    roles = [Role("gateway", vigil_argv("gateway", "--worker-id", "demo-0"), env)]
    lines = []
    if "scheduler" in have:
        roles.append(Role("scheduler", vigil_argv("scheduler"), env))
    if "console" in have:
        port = free_port()
        roles.append(Role("console", vigil_argv("console", "--port", str(port)), env))
        login = await _console_login(settings, pool, coaches)
        lines.append(f"console: http://127.0.0.1:{port}/login\n{login}")
    else:
        lines.append("console: not in this build")
    if "api" in have:
        port = free_port()
        roles.append(Role("api", vigil_argv("api", "--port", str(port)), env))
        lines.append(f"member app API: http://127.0.0.1:{port}/v1/")
    roles_stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(run_roles(roles, roles_stop))

    async def finish() -> None:
        roles_stop.set()
        await task

    stack.push_async_callback(finish)
    return "\n".join(lines)


async def _console_login(settings: Settings, pool: asyncpg.Pool, coaches: list[str]) -> str:
    """A demo coach login for the console (created once; the password is printed each run)."""
    from coach_console.accounts import ensure_demo_login

    user, password = await ensure_demo_login(pool, settings, coaches)
    return f"login: {user} / {password}"


async def _database(
    settings: Settings, state_dir: Path, stack: contextlib.AsyncExitStack
) -> tuple[str, str]:
    dsn = settings.dsn()
    if await postgres_reachable(dsn):
        return dsn, ""
    _progress(f"no PostgreSQL answers at {redact_url(dsn)}; starting a private one")
    server = await stack.enter_async_context(private_postgres(state_dir))
    name = urlsplit(dsn).path.lstrip("/") or "vigil"
    return _with_database(server, name), f" (private server, data under {state_dir})"


async def _broker(
    settings: Settings, state_dir: Path, stack: contextlib.AsyncExitStack
) -> tuple[str, str]:
    url = settings.mqtt_url.get_secret_value()
    if await mqtt_reachable(url):
        return url, ""
    _progress(f"no MQTT broker answers at {redact_url(url)}; starting a private Mosquitto")
    private = await stack.enter_async_context(private_mosquitto(state_dir))
    return private, f" (private Mosquitto, state under {state_dir})"


def _write_population(state_dir: Path, population: dict[str, Any], members: int) -> Path:
    path = state_dir / POPULATION_FILE
    text = (
        f"# Generated by `vigil demo` (simulators/population.py, seed {DEMO_SEED}, {members} "
        "members);\n# rewritten on every run. Format: docs/onboarding.md.\n"
        + yaml.safe_dump(population, sort_keys=False, allow_unicode=True)
    )
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


async def _last_seqs(pool: asyncpg.Pool, population: dict[str, Any]) -> dict[str, int]:
    """Each demo device's last stored sequence number (current epoch), so a rerun continues."""
    ids = [d["id"] for m in population["members"] for d in m["devices"]]
    rows = await pool.fetch(
        "SELECT DISTINCT ON (device_id) device_id, seq FROM reading_keys "
        "WHERE device_id = ANY($1::text[]) ORDER BY device_id, seq_epoch DESC, seq DESC",
        ids,
    )
    return {r["device_id"]: r["seq"] for r in rows}


async def _stream(
    mqtt_url: str,
    prefix: str,
    pool: asyncpg.Pool,
    simulator: ReadingSimulator,
    *,
    member_ids: list[str],
    rate: float,
    duration: float | None,
    stop: asyncio.Event,
) -> tuple[_Tally, float]:
    """Publish the simulator's readings from virtual meters over MQTT, paced at `rate`."""
    loop = asyncio.get_running_loop()
    host, _, port = urlsplit(mqtt_url).netloc.rpartition("@")[2].partition(":")
    meters = {
        d: VirtualMeter(d, host=host or "127.0.0.1", port=int(port or 1883), prefix=prefix,
                        resend_after=10.0)
        for d in simulator.device_ids
    }  # fmt: skip
    batch = max(1, min(MAX_BATCH, round(rate / BATCHES_PER_SECOND)))
    period = batch / rate
    started = loop.time()
    since = datetime.now(UTC)
    deadline = started + duration if duration is not None else None
    tally = _Tally()
    next_batch = next_progress = started
    next_progress += PROGRESS_EVERY
    meters_stop = asyncio.Event()
    tasks = [loop.create_task(m.run(meters_stop)) for m in meters.values()]
    try:
        while not stop.is_set() and (deadline is None or loop.time() < deadline):
            now = datetime.now(UTC)
            for r in simulator.take(now, batch):
                meters[r.device_id].record([json.loads(r.payload)])
                tally.sent += 1
            if loop.time() >= next_progress:
                _tally_meters(meters, tally)
                await _count_hazards(pool, member_ids, since, tally)
                _progress(f"{loop.time() - started:6.1f} s  {tally.line()}; {tally.hazards()}; "
                          f"alerts raised: {tally.alerts}")  # fmt: skip
                next_progress += PROGRESS_EVERY
            next_batch = max(next_batch + period, loop.time() - period)
            wake = next_batch if deadline is None else min(next_batch, deadline)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake):
                    await stop.wait()
        # Let the meters deliver what they hold (bounded), then count.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while any(m.backlog for m in meters.values()):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        _tally_meters(meters, tally)
        await _count_hazards(pool, member_ids, since, tally)
    except _CONNECTION_LOST as exc:
        raise StorageUnavailable(f"lost PostgreSQL during the demo: {exc}") from exc
    finally:
        meters_stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return tally, loop.time() - started


def _tally_meters(meters: dict[str, VirtualMeter], tally: _Tally) -> None:
    tally.outcomes = Counter()
    for m in meters.values():
        for verdict in m.acked.values():
            key = verdict if ":" not in verdict else "rejected"
            tally.outcomes[key] += 1
            if ":" in verdict:
                tally.outcomes[verdict] += 1


async def _count_hazards(
    pool: asyncpg.Pool, member_ids: list[str], since: datetime, tally: _Tally
) -> None:
    """What the coming alert console would show: dangerous readings stored during this run."""
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE glucose_mgdl < $3) AS low_glucose, "
        "count(*) FILTER (WHERE systolic_mmhg > $4 OR diastolic_mmhg > $5) AS severe_bp "
        "FROM readings WHERE member_id = ANY($1::text[]) AND received_at >= $2",
        member_ids, since, GLUCOSE_LEVEL_2_HYPO_MGDL, SEVERE_SYSTOLIC_MMHG,
        SEVERE_DIASTOLIC_MMHG,
    )  # fmt: skip
    if row is not None:
        tally.low_glucose, tally.severe_bp = row["low_glucose"], row["severe_bp"]
    tally.alerts = await pool.fetchval(
        "SELECT count(*) FROM alerts WHERE member_id = ANY($1::text[]) AND opened_at >= $2",
        member_ids, since,
    )  # fmt: skip


def _progress(message: str) -> None:
    print(f"vigil demo: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[Callable[[], bool]]:
    """SIGINT/SIGTERM ask the demo to stop after the batch in flight; a second one cancels it.

    Yields a function telling whether the stop was forced (second signal)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    forced = False

    def handle(signum: int) -> None:
        nonlocal forced
        if stop.is_set():
            forced = True
            if task is not None:
                task.cancel()
            return
        _progress(f"{signal.Signals(signum).name}: stopping after the batch in flight")
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handle, sig)
            installed.append(sig)
    try:
        yield lambda: forced
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
