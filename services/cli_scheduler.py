"""`vigil scheduler`: run the time-driven alerting jobs (alerting/scheduler.py).

Registered in services/cli.py as a Typer command. Settings are read here, when the command runs:
the shared VIGIL_* settings (database, broker, environment), VIGIL_SCHEDULER_* (intervals) and
VIGIL_NOTIFIER_* (the SMS/voice provider: URL and bearer token, required in production).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from services.errors import VigilError
from services.runtime import run_loop
from services.settings import Settings

if TYPE_CHECKING:  # imported lazily at run time, so `vigil --help` stays fast
    from alerting.notifier import NotifierSettings
    from alerting.scheduler import SchedulerSettings


def scheduler(
    once: Annotated[
        bool, typer.Option("--once", help="Run every due job once, then exit (cron-style)")
    ] = False,
    instance: Annotated[
        str | None, typer.Option(help="Name recorded on the jobs this process runs (default: host)")
    ] = None,
) -> None:
    """Run the scheduler: SLA escalation, paging, outreach deadlines, emergency contacts,
    time-driven rules (no recent readings, rising glucose trend), member nudges, the rule
    outbox sweeper and the rollup refresh.

    Run two or more for availability: each job runs in one process at a time. Pages and
    emergency-contact texts go to the provider at VIGIL_NOTIFIER_URL; member messages go to the
    broker at VIGIL_MQTT_URL. SIGTERM finishes the current tick, then exits. Exit codes: 2
    configuration error (e.g. no provider in production), 3 database unreachable at start.
    """
    from alerting.notifier import NotifierSettings
    from alerting.scheduler import SchedulerSettings

    try:
        settings = Settings()
        scheduler_settings = SchedulerSettings()
        notifier_settings = NotifierSettings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        typer.echo(f"vigil: configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_loop(serve(settings, scheduler_settings, notifier_settings,
                       once=once, instance=instance or socket.gethostname()))  # fmt: skip
    except VigilError as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def serve(
    settings: Settings, scheduler_settings: SchedulerSettings,
    notifier_settings: NotifierSettings, *,
    once: bool, instance: str,
) -> None:  # fmt: skip
    from alerting.content import load_content
    from alerting.errors import ContentError
    from alerting.inbox import MqttTransport
    from alerting.notifier import build_notifier
    from alerting.scheduler import Scheduler
    from device_gateway.mqtt.topics import Topics
    from services.errors import ConfigurationError
    from services.storage.db import open_pool

    try:
        content = load_content()
    except ContentError as exc:
        raise ConfigurationError(str(exc)) from exc
    notifier = build_notifier(settings, notifier_settings)
    transport = MqttTransport(settings.mqtt_url.get_secret_value(),
                              client_id=f"vigil-scheduler-{instance}")  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_pool(
        settings.dsn(), min_size=0 if not once else 1, max_size=6,
        server_settings={"application_name": f"vigil-scheduler-{instance}"},
    ) as pool:  # fmt: skip
        sched = Scheduler(pool, notifier=notifier, content=content, transport=transport,
                          topics=Topics(settings.mqtt_prefix), settings=scheduler_settings,
                          instance=instance)  # fmt: skip
        if once:
            for result in await sched.tick():
                typer.echo(f"{result.name}\t{result.status}\t{result.count}")
            return
        logging.getLogger(__name__).info("scheduler %s starting", instance)
        await sched.run(stop)
