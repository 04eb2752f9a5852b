"""`vigil gateway`: one gateway worker process, with graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from device_gateway.mqtt.observability import serve_observability
from device_gateway.mqtt.worker import GatewayWorker
from services.settings import Settings
from services.storage.db import open_pool

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    """Stable across restarts on the same host (a StatefulSet pod name, a VM's hostname)."""
    return socket.gethostname()


async def run_gateway(
    settings: Settings, worker_id: str, ready: asyncio.Event | None = None, *, leave: bool = False
) -> None:
    from services.commands import build_pipeline

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_pool(
        settings.dsn(),
        min_size=0,  # start (and keep serving the broker) while the database is away
        max_size=3,
        server_settings={"application_name": f"vigil-gw-{worker_id}"},
    ) as pool:
        worker = GatewayWorker(settings, build_pipeline(pool, settings), pool, worker_id)
        log.info("gateway worker %s starting (group %s)", worker.client_id, settings.gateway_group)
        async with (
            serve_observability(
                settings.gateway_metrics_host,
                settings.gateway_metrics_port,
                worker.metrics,
                lambda: worker.health,
            ),
            asyncio.TaskGroup() as tg,
        ):
            tg.create_task(worker.run(stop), name=f"gateway-{worker_id}")
            tg.create_task(worker.watch_fleet(stop), name="fleet-alarm")
            if ready is not None:
                await worker.subscribed.wait()
                ready.set()
        if leave:
            await worker.leave()
