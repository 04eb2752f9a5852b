"""`vigil console` (the coach console web app) and `vigil users ...` (its accounts).

Registered in services/cli.py: the command function `console` and the Typer sub-app
`users_app`. Settings are read when a command runs. stdout carries only the requested output
(an otpauth URI to enrol an authenticator app); notes go to stderr.
Exit codes as for `vigil`: 2 usage or input error, 3 the database cannot be reached.
"""

from __future__ import annotations

import getpass
import logging
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import asyncpg
import typer

from services.cli_common import load_settings as _settings
from services.cli_common import setup_logging as _logging
from services.errors import VigilError
from services.runtime import run_loop
from services.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)

users_app = typer.Typer(
    help=(
        "Coach console accounts: sign-in passwords (argon2id) and TOTP second factors. "
        "See docs/console.md."
    ),
    no_args_is_help=True,
)






def _run(coro: Coroutine[Any, Any, T]) -> T:
    from coach_console.accounts import AccountError

    try:
        return run_loop(coro)
    except AccountError as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(2) from None
    except asyncpg.UndefinedTableError:
        typer.echo("vigil: the console's tables are missing: run `vigil db migrate`", err=True)
        raise typer.Exit(2) from None
    except VigilError as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def cli_actor() -> str:
    """How the audit log names a person at the command line."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def console(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on")] = 8081,
) -> None:
    """Serve the coach console: live alert queue, member pages, supervisor view, audit log.

    Listens on 127.0.0.1:8081 unless told otherwise; put a TLS-terminating proxy in front of it
    (cookies are Secure outside VIGIL_ENV=development). Idle logoff, lockout and session length
    come from VIGIL_CONSOLE_* variables (coach_console/settings.py). Accounts are made with
    `vigil users create`. A database that cannot be reached at startup exits with code 3.
    """
    import uvicorn

    from coach_console.app import create_app
    from coach_console.settings import ConsoleSettings

    settings = _settings()
    try:
        console_settings = ConsoleSettings()
    except ValueError as exc:
        typer.echo(f"vigil: configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    _logging(settings)
    # Access logs show paths and query strings only: member ids (pseudonymous), never names,
    # contact data or values. Open event streams get 5 s to end on shutdown.
    uvicorn.run(
        create_app(settings, console_settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=5,
    )


def _read_password() -> str:
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


async def create_user_command(
    settings: Settings, *, coach_id: str, name: str, role: str | None, email: str | None,
    password: str, team: str | None, credential: str | None, totp: bool,
) -> tuple[str, str | None]:  # fmt: skip
    """Create the account; returns the role and the otpauth URI when a factor was enrolled."""
    from coach_console import accounts
    from coach_console.audit import audit
    from services.storage.db import open_pool

    if role is not None and role not in accounts.ROLES:
        raise accounts.AccountError(f"role must be one of {', '.join(accounts.ROLES)}")
    async with (
        open_pool(settings.dsn(), min_size=1, max_size=1) as pool,
        pool.acquire() as conn,
        conn.transaction(),
    ):
        effective = await accounts.create_account(
            conn, coach_id=coach_id, name=name, role=role, email=email,
            password=password, team=team, credential=credential,
        )  # fmt: skip
        uri = None
        if totp or effective in accounts.TOTP_REQUIRED:
            uri = await accounts.enroll_totp(conn, coach_id)
        await audit(conn, cli_actor(), "users.create", None,
                    {"coach_id": coach_id, "role": effective, "totp": uri is not None})
    return effective, uri


async def enroll_totp_command(settings: Settings, coach_id: str) -> str:
    from coach_console import accounts
    from coach_console.audit import audit
    from services.storage.db import open_pool

    async with open_pool(settings.dsn(), min_size=1, max_size=1) as pool, pool.acquire() as conn:
        async with conn.transaction():
            uri = await accounts.enroll_totp(conn, coach_id)
            await audit(conn, cli_actor(), "users.enroll_totp", None, {"coach_id": coach_id})
        return uri


async def set_password_command(settings: Settings, coach_id: str, password: str) -> None:
    from coach_console import accounts
    from coach_console.audit import audit
    from services.storage.db import open_pool

    async with (
        open_pool(settings.dsn(), min_size=1, max_size=1) as pool,
        pool.acquire() as conn,
        conn.transaction(),
    ):
        await accounts.set_password(conn, coach_id, password, datetime.now(UTC))
        await audit(conn, cli_actor(), "users.set_password", None, {"coach_id": coach_id})


async def set_disabled_command(settings: Settings, coach_id: str, disabled: bool) -> None:
    from coach_console import accounts
    from coach_console.audit import audit
    from services.storage.db import open_pool

    async with (
        open_pool(settings.dsn(), min_size=1, max_size=1) as pool,
        pool.acquire() as conn,
        conn.transaction(),
    ):
        await accounts.set_disabled(conn, coach_id, disabled, datetime.now(UTC))
        await audit(conn, cli_actor(), "users.disable" if disabled else "users.enable", None,
                    {"coach_id": coach_id})  # fmt: skip


_URI_NOTE = (
    "Add this to the person's authenticator app (as a QR code or typed); it is shown once and "
    "holds the secret:"
)


@users_app.command("create")
def users_create(
    coach_id: Annotated[str, typer.Option("--id", help="The coach id; also the login name")],
    name: Annotated[str, typer.Option(help="Full name, as colleagues see it")],
    role: Annotated[
        str | None,
        typer.Option(help="coach | supervisor | admin (default: coach, or the role on file)"),
    ] = None,
    email: Annotated[str | None, typer.Option(help="Work e-mail")] = None,
    team: Annotated[str | None, typer.Option(help="Team (supervisors see their team)")] = None,
    credential: Annotated[
        str | None, typer.Option(help="RN | CDCES | RD | none (care-plan edits need one)")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first stdin line")
    ] = False,
    totp: Annotated[
        bool, typer.Option("--totp", help="Enrol a second factor (always for supervisor/admin)")
    ] = False,
) -> None:
    """Create a console account (and the coach record if it is new).

    The password is read from stdin (--password-stdin), never from the command line where
    other users and shell history could see it; at least 12 characters. Supervisors and admins
    get a TOTP secret at once: the otpauth URI is printed on stdout, once.
    """
    if not password_stdin:
        typer.echo("vigil: give the password on stdin with --password-stdin", err=True)
        raise typer.Exit(2)
    password = _read_password()
    settings = _settings()
    _logging(settings)
    effective, uri = _run(create_user_command(
        settings, coach_id=coach_id, name=name, role=role, email=email, password=password,
        team=team, credential=credential, totp=totp,
    ))  # fmt: skip
    typer.echo(f"created console account {coach_id} ({effective})", err=True)
    if uri is not None:
        typer.echo(_URI_NOTE, err=True)
        typer.echo(uri)


@users_app.command("enroll-totp")
def users_enroll_totp(
    coach_id: Annotated[str, typer.Option("--id", help="The coach id")],
) -> None:
    """(Re-)enrol the account's TOTP second factor; prints the otpauth URI on stdout, once.

    A previous secret stops working at once.
    """
    settings = _settings()
    _logging(settings)
    uri = _run(enroll_totp_command(settings, coach_id))
    typer.echo(_URI_NOTE, err=True)
    typer.echo(uri)


@users_app.command("set-password")
def users_set_password(
    coach_id: Annotated[str, typer.Option("--id", help="The coach id")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first stdin line")
    ] = False,
) -> None:
    """Set a new password (read from stdin)."""
    if not password_stdin:
        typer.echo("vigil: give the password on stdin with --password-stdin", err=True)
        raise typer.Exit(2)
    password = _read_password()
    settings = _settings()
    _logging(settings)
    _run(set_password_command(settings, coach_id, password))
    typer.echo(f"password of {coach_id} changed", err=True)


@users_app.command("disable")
def users_disable(coach_id: Annotated[str, typer.Option("--id", help="The coach id")]) -> None:
    """Disable an account; its sessions end at once."""
    settings = _settings()
    _logging(settings)
    _run(set_disabled_command(settings, coach_id, True))
    typer.echo(f"{coach_id} disabled", err=True)


@users_app.command("enable")
def users_enable(coach_id: Annotated[str, typer.Option("--id", help="The coach id")]) -> None:
    """Enable a disabled account again."""
    settings = _settings()
    _logging(settings)
    _run(set_disabled_command(settings, coach_id, False))
    typer.echo(f"{coach_id} enabled", err=True)
