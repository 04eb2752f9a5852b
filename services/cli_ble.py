"""`vigil ble ...`: Bluetooth LE meters relayed to Vigil by a hub (docs/ble.md).

The Typer sub-app `ble_app` (registered in services/cli.py as `vigil ble`) and the coroutines
behind it, usable without the CLI:
- `scan`: list the glucose meters, blood pressure monitors and scales in range;
- `sync`: download what is new on the configured devices in range, send it to Vigil, wait for
  the acks (at most --ack-timeout), exit; what is not acked stays queued for the next run;
- `bridge`: the hub: scan periodically, sync each configured device seen, forward until acked.

stdout carries only the requested output; logs go to stderr. Exit codes as for `vigil`: 0 ok;
2 configuration error, or a meter that requires bonding; 3 Bluetooth is not available, a device
could not be read, or readings were not acked in time (they stay in the local queue).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from services.cli_common import load_settings as _settings
from services.cli_common import setup_logging as _logging
from services.errors import VigilError
from services.settings import Settings

if TYPE_CHECKING:  # imported when a command runs: `vigil --help` stays fast
    from device_gateway.ble.bridge import BridgeConfig, BridgeTiming, SyncReport
    from device_gateway.ble.forward import DeliveryStats
    from device_gateway.ble.transport import BleTransportError, GattTransport

T = TypeVar("T")

ble_app = typer.Typer(
    help=(
        "Bluetooth LE glucose meters, blood pressure monitors and scales, relayed to Vigil by a "
        "hub as the devices themselves. See docs/ble.md."
    ),
    no_args_is_help=True,
)

EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="VIGIL_BLE_CONFIG",
        help="The hub's device file (YAML or JSON), default VIGIL_STATE_DIR/ble.yaml",
    ),
]
AdapterOption = Annotated[
    str | None, typer.Option(help="Bluetooth adapter, e.g. hci1 (default: the system's)")
]
FormatOption = Annotated[str, typer.Option("--format", help="table | json")]


def make_transport(adapter: str | None) -> GattTransport:
    """The radio. Tests replace this function with one returning a simulated radio."""
    from device_gateway.ble.transport import BleakTransport

    return BleakTransport(adapter=adapter)


def queue_path(settings: Settings) -> Path:
    """The bridge's store-and-forward queue (holds readings until acked: kept private)."""
    return Path(settings.state_dir) / "ble" / "queue.sqlite3"






def _run(coro: Coroutine[Any, Any, T]) -> T:
    from device_gateway.ble.transport import BleTransportError, BluetoothUnavailable
    from services.runtime import run_loop

    try:
        return run_loop(coro)
    except VigilError as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except BluetoothUnavailable as exc:
        typer.echo(f"vigil: {exc.hint}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except BleTransportError as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _load_config(settings: Settings, path: Path | None) -> BridgeConfig:
    from device_gateway.ble.bridge import BridgeConfig

    try:
        return BridgeConfig.load(path or Path(settings.state_dir) / "ble.yaml")
    except VigilError as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


# --- scan ---------------------------------------------------------------------------------------


async def scan_command(transport: GattTransport, duration: float) -> list[dict[str, Any]]:
    """Nearby devices offering a Vigil service, as {address, name, kind}."""
    from device_gateway.ble.bridge import kind_of
    from device_gateway.ble.transport import VIGIL_SERVICES

    found = await transport.scan(VIGIL_SERVICES, duration)
    return [
        {"address": d.address, "name": d.name, "kind": kind_of(d)}
        for d in sorted(found, key=lambda d: d.address)
    ]


@ble_app.command("scan")
def scan(
    duration: Annotated[float, typer.Option("--timeout", help="Seconds to listen")] = 10.0,
    adapter: AdapterOption = None,
    output: FormatOption = "table",
) -> None:
    """List nearby glucose meters, blood pressure monitors and scales, with their addresses.

    Devices advertising the Glucose (0x1808), Blood Pressure (0x1810) or Weight Scale (0x181D)
    service are listed with the address to put in the hub's device file.

    Many meters advertise only for a minute after a measurement or a button press: wake the
    device before scanning.
    """
    settings = _settings()
    _logging(settings)
    devices = _run(scan_command(make_transport(adapter), duration))
    if output == "json":
        typer.echo(json.dumps(devices))
        return
    for d in devices:
        typer.echo(f"{d['address']}  {d['kind'] or '?':<13}  {d['name'] or ''}")
    if not devices:
        typer.echo("no glucose meter, blood pressure monitor or scale in range", err=True)


# --- sync ---------------------------------------------------------------------------------------


@dataclass
class SyncOutcome:
    reports: list[SyncReport]
    not_in_range: list[str]
    #: Readings still waiting for Vigil's ack (all devices).
    pending: int
    delivery: dict[str, DeliveryStats] = field(default_factory=dict)
    #: The radio could not scan (the queue was delivered all the same).
    radio_error: BleTransportError | None = None

    @property
    def exit_code(self) -> int:
        from device_gateway.ble.transport import PairingRequired

        if any(isinstance(r.error, PairingRequired) for r in self.reports):
            return EXIT_CONFIG
        failed = self.radio_error is not None or any(r.error is not None for r in self.reports)
        if self.pending or failed:
            return EXIT_UNREACHABLE
        return 0


async def sync_command(
    settings: Settings,
    config: BridgeConfig,
    transport: GattTransport,
    *,
    addresses: list[str] | None = None,
    ack_timeout: float = 60.0,
    timing: BridgeTiming | None = None,
    resend_after: float = 30.0,
) -> SyncOutcome:
    """One pass: sync the configured devices in range, then deliver the whole queue (also when
    the radio is unavailable: what earlier runs queued still goes out)."""
    from device_gateway.ble.bridge import Bridge, BridgeDevice
    from device_gateway.ble.forward import BrokerEndpoint, MqttUplink
    from device_gateway.ble.store import BridgeStore
    from device_gateway.ble.transport import BluetoothUnavailable

    broker = BrokerEndpoint.parse(config.broker or settings.mqtt_url.get_secret_value())
    uplink = MqttUplink(broker, prefix=settings.mqtt_prefix, resend_after=resend_after)
    radio_error: BleTransportError | None = None
    with BridgeStore(queue_path(settings)) as store:
        bridge = Bridge(transport, store, config, uplink=uplink, timing=timing)
        reports: list[SyncReport] = []
        missing: list[BridgeDevice] = []
        try:
            reports, missing = await bridge.sync_in_range(addresses=addresses)
        except BluetoothUnavailable as exc:
            radio_error = exc
        if store.pending():
            try:
                async with asyncio.timeout(ack_timeout):
                    await bridge.deliver()
            except TimeoutError:
                logging.getLogger(__name__).warning(
                    "%d readings not acked within %g s; kept in the queue for the next run",
                    store.pending(), ack_timeout,
                )  # fmt: skip
        return SyncOutcome(
            reports, [d.device_id for d in missing], store.pending(), uplink.stats, radio_error
        )


def _report_dict(report: SyncReport) -> dict[str, Any]:
    error = report.error
    return {
        "device_id": report.device_id,
        "address": report.address,
        "kind": report.kind,
        "requested_from": report.requested_from,
        "racp": report.racp,
        "queued": report.queued,
        "already_queued": report.already_queued,
        "duplicates": report.duplicates,
        "skipped": report.skipped,
        "other_users": report.other_users,
        "attempts": report.attempts,
        "error": None if error is None else {"reason": error.reason, "message": str(error)},
    }


@ble_app.command("sync")
def sync(
    config: ConfigOption = None,
    address: Annotated[
        list[str] | None, typer.Option(help="Only this device (repeatable; default: all)")
    ] = None,
    ack_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for Vigil's acks before exiting")
    ] = 60.0,
    adapter: AdapterOption = None,
    output: FormatOption = "table",
) -> None:
    """Download new readings from the configured devices in range, once, and send them to Vigil.

    Glucose meters are asked (RACP) for the records after the last one Vigil acknowledged;
    blood pressure monitors and scales send their stored measurements. Readings are kept in a
    local queue (VIGIL_STATE_DIR/ble/queue.sqlite3) until Vigil acks them, so nothing is lost
    when the broker is away: the next sync or bridge run sends them.
    """
    settings = _settings()
    _logging(settings)
    bridge_config = _load_config(settings, config)
    outcome = _run(
        sync_command(settings, bridge_config, make_transport(adapter), addresses=address,
                     ack_timeout=ack_timeout)
    )  # fmt: skip
    if output == "json":
        typer.echo(json.dumps({
            "devices": [_report_dict(r) for r in outcome.reports],
            "not_in_range": outcome.not_in_range,
            "pending": outcome.pending,
        }))  # fmt: skip
    else:
        for r in outcome.reports:
            typer.echo(r.summary())
        for device_id in outcome.not_in_range:
            typer.echo(f"{device_id}: not in range")
        typer.echo(f"readings waiting for Vigil's ack: {outcome.pending}")
    if outcome.radio_error is not None:
        typer.echo(f"vigil: {outcome.radio_error.hint}", err=True)
    for r in outcome.reports:
        if r.error is not None:
            typer.echo(f"vigil: {r.device_id}: {r.error}", err=True)
    raise typer.Exit(outcome.exit_code)


# --- bridge -------------------------------------------------------------------------------------


async def bridge_command(
    settings: Settings,
    config: BridgeConfig,
    transport: GattTransport,
    stop: asyncio.Event,
    timing: BridgeTiming | None = None,
) -> None:
    from device_gateway.ble.bridge import Bridge
    from device_gateway.ble.forward import BrokerEndpoint, MqttUplink
    from device_gateway.ble.store import BridgeStore

    broker = BrokerEndpoint.parse(config.broker or settings.mqtt_url.get_secret_value())
    with BridgeStore(queue_path(settings)) as store:
        uplink = MqttUplink(broker, prefix=settings.mqtt_prefix)
        bridge = Bridge(transport, store, config, uplink=uplink, timing=timing)
        logging.getLogger(__name__).info(
            "BLE bridge for %d devices, broker %s:%d, %d readings queued",
            len(config.devices), broker.host, broker.port, store.pending(),
        )  # fmt: skip
        await bridge.run(stop)


@ble_app.command("bridge")
def bridge(
    config: ConfigOption = None,
    adapter: AdapterOption = None,
    scan_interval: Annotated[float, typer.Option(help="Seconds between scans")] = 30.0,
) -> None:
    """Run the hub: scan, sync each configured device in range, forward readings until acked.

    A device synced in the last five minutes is not synced again when seen. SIGTERM or Ctrl-C
    stops it after the sync in progress; unacked readings stay queued for the next start.
    """
    from device_gateway.ble.bridge import BridgeTiming

    settings = _settings()
    _logging(settings)
    bridge_config = _load_config(settings, config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await bridge_command(settings, bridge_config, make_transport(adapter), stop,
                             BridgeTiming(scan_interval=scan_interval))  # fmt: skip

    _run(main())
