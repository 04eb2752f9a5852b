"""`vigil devices ...` and `vigil broker ...`: device identity at the broker and its lifecycle.

Two Typer sub-apps, `devices_app` and `broker_app`, and the coroutines behind them (usable
without the CLI, as the tests do). Every lifecycle change is one database transaction; the
broker's password and ACL files are rewritten inside it (services/devices.py says why), and after
the commit the broker is told to reload when VIGIL_BROKER_PIDFILE names its pid file.

stdout carries only the requested output (a new device password, shown this once); notes about
the broker files go to stderr. Exit codes as for `vigil`: 2 usage or input error, 3 the database
or broker cannot be reached (here also: the broker could not be told to reload; the change itself
is committed and the files written).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar
from urllib.parse import urlsplit

import typer

from device_gateway.broker import (
    BrokerFiles,
    BrokerReloadError,
    BrokerSettings,
    GatewayIdentity,
    PasswordEntry,
    render_broker_config,
    signal_reload,
    write_access_files,
    write_broker_config,
)
from services.cli_common import setup_logging as _logging
from services.errors import ConfigurationError
from services.settings import Settings

if TYPE_CHECKING:  # the commands import these when they run: `vigil --help` stays fast
    from services import devices
    from services.storage.db import Connection

T = TypeVar("T")

devices_app = typer.Typer(
    help=(
        "Devices: MQTT credentials at the broker, who holds which device, replacement and "
        "revocation. See docs/devices.md."
    ),
    no_args_is_help=True,
)
broker_app = typer.Typer(
    help="The MQTT broker's files: mosquitto.conf, the password file and the ACL file.",
    no_args_is_help=True,
)


@dataclass(frozen=True, slots=True)
class BrokerUpdate:
    files: BrokerFiles
    #: The broker's pid when it was sent SIGHUP; None when no pid file is configured.
    reloaded_pid: int | None = None
    reload_error: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    result: T
    broker: BrokerUpdate


# --- the coroutines ---------------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


async def _change(
    settings: Settings,
    broker: BrokerSettings,
    change: Callable[[Connection, GatewayIdentity], Awaitable[T]],
) -> Outcome[T]:
    """Run one lifecycle change, rewrite the broker files in its transaction, then reload."""
    import asyncpg

    from services import devices
    from services.storage.db import open_pool

    gateway = GatewayIdentity.from_url(settings.mqtt_url.get_secret_value())
    directory = broker.directory(settings.state_dir)
    async with open_pool(settings.dsn(), min_size=1, max_size=1) as pool, pool.acquire() as conn:
        try:
            async with devices.lifecycle_transaction(conn):
                result = await change(conn, gateway)
                users = await devices.broker_users(conn)
                files = await _write_access_files(directory, users, gateway, settings)
        except asyncpg.UndefinedTableError as exc:
            raise ConfigurationError(f"{exc}: run `vigil db migrate` first") from exc
    return Outcome(result, reload_broker(broker, files))


async def _write_access_files(
    directory: Path, users: list[PasswordEntry], gateway: GatewayIdentity, settings: Settings
) -> BrokerFiles:
    """Inside the change's transaction: a file that cannot be written rolls the change back."""
    try:
        return await asyncio.to_thread(
            write_access_files, directory, users, gateway, settings.mqtt_prefix
        )
    except OSError as exc:
        raise ConfigurationError(f"cannot write the broker files in {directory}: {exc}") from exc


def reload_broker(broker: BrokerSettings, files: BrokerFiles) -> BrokerUpdate:
    if broker.pidfile is None:
        return BrokerUpdate(files)
    try:
        pid = signal_reload(Path(broker.pidfile))
    except BrokerReloadError as exc:
        return BrokerUpdate(files, reload_error=str(exc))
    return BrokerUpdate(files, reloaded_pid=pid)


async def provision_command(
    settings: Settings,
    broker: BrokerSettings,
    device_id: str,
    kind: str,
    *,
    member_id: str | None = None,
    from_day: date | None = None,
    now: datetime | None = None,
) -> Outcome[devices.IssuedCredentials]:
    from services import devices

    at = _now(now)

    async def change(conn: Connection, gateway: GatewayIdentity) -> devices.IssuedCredentials:
        return await devices.provision(
            conn, device_id, kind, now=at, gateway_username=gateway.username,
            member_id=member_id, from_day=from_day,
        )  # fmt: skip

    return await _change(settings, broker, change)


async def assign_command(
    settings: Settings,
    device_id: str,
    member_id: str,
    *,
    from_day: date | None = None,
    now: datetime | None = None,
) -> devices.Holding:
    """No broker change: who holds a device is Vigil's business, not the broker's."""
    from services import devices
    from services.storage.db import open_pool

    async with (
        open_pool(settings.dsn(), min_size=1, max_size=1) as pool,
        pool.acquire() as conn,
        devices.lifecycle_transaction(conn),
    ):
        return await devices.assign(conn, device_id, member_id, now=_now(now), from_day=from_day)


async def replace_command(
    settings: Settings,
    broker: BrokerSettings,
    old_id: str,
    new_id: str,
    *,
    now: datetime | None = None,
) -> Outcome[devices.Replacement]:
    from services import devices

    at = _now(now)

    async def change(conn: Connection, gateway: GatewayIdentity) -> devices.Replacement:
        return await devices.replace(conn, old_id, new_id, now=at,
                                     gateway_username=gateway.username)  # fmt: skip

    return await _change(settings, broker, change)


async def revoke_command(
    settings: Settings, broker: BrokerSettings, device_id: str, *, now: datetime | None = None
) -> Outcome[bool]:
    from services import devices

    at = _now(now)

    async def change(conn: Connection, gateway: GatewayIdentity) -> bool:
        return await devices.revoke(conn, device_id, now=at)

    return await _change(settings, broker, change)


async def broker_config_command(
    settings: Settings,
    directory: Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    max_queued_messages: int = 100_000,
    log_file: Path | None = None,
    run_as: str | None = None,
) -> BrokerFiles:
    """Write mosquitto.conf, the password file and the ACL file into `directory`."""
    from services import devices
    from services.storage.db import open_pool

    gateway = GatewayIdentity.from_url(settings.mqtt_url.get_secret_value())
    if port is None:
        try:
            port = urlsplit(settings.mqtt_url.get_secret_value()).port or 1883
        except ValueError as exc:
            raise ConfigurationError(f"VIGIL_MQTT_URL: {exc}") from exc
    async with (
        open_pool(settings.dsn(), min_size=1, max_size=1) as pool,
        pool.acquire() as conn,
        devices.lifecycle_transaction(conn),
    ):
        users = await devices.broker_users(conn)
        files = await _write_access_files(directory, users, gateway, settings)
    config = render_broker_config(files, port=port, host=host, log_file=log_file, run_as=run_as,
                                  max_queued_messages=max_queued_messages)  # fmt: skip
    try:
        await asyncio.to_thread(write_broker_config, files, config)
    except OSError as exc:
        raise ConfigurationError(f"cannot write {files.config}: {exc}") from exc
    return files


# --- the CLI ----------------------------------------------------------------------------------


def _settings() -> tuple[Settings, BrokerSettings]:
    try:
        return Settings(), BrokerSettings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        typer.echo(f"vigil: configuration error: {exc}", err=True)
        raise typer.Exit(2) from None




def _run(coro: Coroutine[Any, Any, T]) -> T:
    from services.cli import run  # late: services.cli imports this module to register it

    return run(coro)


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        typer.echo(f"vigil: {option} {value!r} is not a date (YYYY-MM-DD)", err=True)
        raise typer.Exit(2) from None


def _report(update: BrokerUpdate) -> None:
    """Where the files went and whether the broker reloaded (stderr); exit 3 if it did not."""
    typer.echo(f"broker files written to {update.files.directory}", err=True)
    if update.reload_error is not None:
        typer.echo(f"vigil: the change is committed but the broker was not reloaded: "
                   f"{update.reload_error}", err=True)  # fmt: skip
        raise typer.Exit(3)
    if update.reloaded_pid is not None:
        typer.echo(f"broker (pid {update.reloaded_pid}) told to reload", err=True)
    else:
        typer.echo("VIGIL_BROKER_PIDFILE is not set: reload the broker to apply this "
                   "(systemctl reload mosquitto, or SIGHUP)", err=True)  # fmt: skip


def _show_credentials(issued: devices.IssuedCredentials, fmt: str) -> None:
    if fmt == "json":
        shown = {"device_id": issued.device_id, "kind": issued.kind,
                 "username": issued.username, "password": issued.password}  # fmt: skip
        typer.echo(json.dumps(shown))
        return
    typer.echo(f"MQTT credentials of {issued.device_id} ({issued.kind}), shown only this once:\n"
               f"username: {issued.username}\npassword: {issued.password}")  # fmt: skip


Format = Annotated[str, typer.Option("--format", help="text | json (for provisioning scripts)")]


def _check_format(fmt: str) -> None:
    if fmt not in ("text", "json"):
        typer.echo(f"vigil: --format {fmt!r}: use text or json", err=True)
        raise typer.Exit(2)


@devices_app.command("provision")
def provision(
    device_id: Annotated[str, typer.Argument(help="The device id; also its MQTT username")],
    kind: Annotated[str, typer.Option(help="glucose_meter | bp_monitor | scale | cgm")],
    member: Annotated[str | None, typer.Option(help="Assign it to this member")] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="With --member: first day held (member's zone; default now)"),
    ] = None,
    fmt: Format = "text",
) -> None:
    """Create the device if needed and issue new MQTT credentials, shown once on stdout.

    Only a hash is stored. Provisioning a device again rotates its password: the old one stops
    working when the broker reloads. Revoked and retired devices are refused.
    """
    _check_format(fmt)
    if from_ is not None and member is None:
        typer.echo("vigil: --from needs --member", err=True)
        raise typer.Exit(2)
    settings, broker = _settings()
    _logging(settings)
    outcome = _run(provision_command(settings, broker, device_id, kind, member_id=member,
                                     from_day=_day(from_, "--from")))  # fmt: skip
    _show_credentials(outcome.result, fmt)
    _report(outcome.broker)


@devices_app.command("assign")
def assign(
    device_id: Annotated[str, typer.Argument(help="The device")],
    member_id: Annotated[str, typer.Argument(help="The member who holds it from now on")],
    from_: Annotated[
        str | None, typer.Option("--from", help="First day held, in the member's zone")
    ] = None,
) -> None:
    """Hand a device to a member: its current holding ends where the new one starts.

    --from DATE starts at midnight of DATE in the member's time zone; without it, now.
    """
    settings, _ = _settings()
    _logging(settings)
    held = _run(assign_command(settings, device_id, member_id, from_day=_day(from_, "--from")))
    since = held.assigned_from.isoformat() if held.assigned_from else "the beginning"
    if not held.changed:
        typer.echo(f"{device_id} is already held by {member_id} (since {since}); nothing changed")
        return
    ended = f"; {held.ended[0]}'s holding ends then" if held.ended else ""
    typer.echo(f"{device_id} held by {member_id} from {since}{ended}")


@devices_app.command("replace")
def replace(
    old_id: Annotated[str, typer.Argument(help="The broken or lost device")],
    new_id: Annotated[str, typer.Argument(help="The device that replaces it (same kind)")],
    fmt: Format = "text",
) -> None:
    """Swap a broken or lost meter for a new one, held by the same member from now.

    OLD's holding ends now, its credentials are revoked and it is retired; NEW (same kind, not
    held by anyone) is provisioned, its credentials shown once.
    """
    _check_format(fmt)
    settings, broker = _settings()
    _logging(settings)
    outcome = _run(replace_command(settings, broker, old_id, new_id))
    done = outcome.result
    typer.echo(f"{old_id} retired; {new_id} held by {done.member_id} from {done.at.isoformat()}",
               err=fmt == "json")  # fmt: skip
    _show_credentials(done.issued, fmt)
    _report(outcome.broker)


@devices_app.command("revoke")
def revoke(device_id: Annotated[str, typer.Argument(help="The device to shut out")]) -> None:
    """Mark a device revoked, revoke its credentials and have the broker disconnect it.

    The broker reloads when VIGIL_BROKER_PIDFILE names its pid file; with Mosquitto's dynamic
    security plugin or a broker cluster, the operator's tooling applies the files.
    """
    settings, broker = _settings()
    _logging(settings)
    outcome = _run(revoke_command(settings, broker, device_id))
    typer.echo(f"{device_id} revoked" if outcome.result else f"{device_id} was already revoked")
    _report(outcome.broker)


@broker_app.command("config")
def broker_config(
    out: Annotated[
        Path | None, typer.Option(help="Folder for the files (default: VIGIL_BROKER_DIR)")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Listener port (default: VIGIL_MQTT_URL's)")
    ] = None,
    host: Annotated[str, typer.Option(help="Listener address")] = "127.0.0.1",
    max_queued_messages: Annotated[
        int, typer.Option(min=1000, help="Per-session queue; size it for a gateway outage")
    ] = 100_000,
    log_file: Annotated[Path | None, typer.Option(help="Broker log (default: stderr)")] = None,
    run_as: Annotated[str | None, typer.Option(help="OS user the broker runs as")] = None,
) -> None:
    """Write mosquitto.conf, the password file (hashes only) and the ACL file.

    The conf enables persistence (in DIR/data), refuses anonymous clients and names the two
    files, which the `vigil devices` commands keep up to date. See docs/devices.md.
    """
    settings, broker = _settings()
    _logging(settings)
    directory = out or broker.directory(settings.state_dir)
    files = _run(broker_config_command(settings, directory, port=port, host=host, run_as=run_as,
                                       max_queued_messages=max_queued_messages,
                                       log_file=log_file))  # fmt: skip
    typer.echo(str(files.config))
