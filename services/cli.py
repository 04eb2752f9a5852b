"""`vigil`: the command line. stdout carries only the requested output; logs go to stderr.

Exit codes: 0 success; 1 unexpected error (a bug: please report it); 2 usage, configuration or
input-file error; 3 the database or broker cannot be reached; 4 a migration failed or an applied
migration was edited.
"""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from services.cli_ble import ble_app
from services.cli_common import load_settings as _settings
from services.cli_common import setup_logging as _logging
from services.cli_devices import broker_app, devices_app
from services.errors import VigilError
from services.runtime import run_loop

T = TypeVar("T")

app = typer.Typer(
    name="vigil",
    help=(
        "Vigil: remote monitoring of diabetes, hypertension and weight.\n\n"
        "Devices and apps send readings; Vigil stores each exactly once, raises clinical alerts "
        "for coaches and bills clients per active member per month.\n\n"
        "Configuration comes from VIGIL_* environment variables: VIGIL_DATABASE_URL (PostgreSQL, "
        "default postgresql://postgres@127.0.0.1:5432/vigil), VIGIL_MQTT_URL, VIGIL_ENV "
        "(development | test | production). Exit codes: 0 ok, 1 bug, 2 usage or input error, "
        "3 database or broker unreachable, 4 migration error."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema: migrations.", no_args_is_help=True)
quarantine_app = typer.Typer(
    help="Rejected readings: every one is kept with its reason code until replayed.",
    no_args_is_help=True,
)
alerts_app = typer.Typer(help="Clinical alerts raised by the rule engine.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
app.add_typer(ble_app, name="ble")
app.add_typer(broker_app, name="broker")
app.add_typer(db_app, name="db")
app.add_typer(alerts_app, name="alerts")
app.add_typer(quarantine_app, name="quarantine")






def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, mapping Vigil's typed errors to documented exit codes."""
    try:
        return run_loop(coro)
    except VigilError as exc:
        typer.echo(f"vigil: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@db_app.command("migrate")
def db_migrate() -> None:
    """Create the database if needed and apply pending migrations (idempotent).

    A migration edited after it was applied is refused (exit 4). With the TimescaleDB extension
    available, readings become a hypertable with compression, retention and continuous
    aggregates; otherwise plain PostgreSQL tables with the same semantics are used.
    """
    from services.commands import migrate_command

    settings = _settings()
    _logging(settings)
    result = run(migrate_command(settings))
    applied = ", ".join(result.applied) or "none pending"
    typer.echo(
        f"migrations applied: {len(result.applied)} ({applied}); storage: {result.storage_mode}"
    )


@db_app.command("refresh-rollups")
def db_refresh_rollups(
    since: Annotated[
        str | None, typer.Option(help="Recompute from this RFC 3339 time (default: 35 days ago)")
    ] = None,
) -> None:
    """Materialize the hourly rollup up to an hour ago (the scheduler does this periodically).

    Reads are always complete without it; it makes reading the rollup cheaper and brings late
    readings older than the default window into the materialized part.
    """
    from datetime import datetime

    from services.commands import refresh_rollups_command

    settings = _settings()
    _logging(settings)
    try:
        start = datetime.fromisoformat(since) if since else None
    except ValueError:
        typer.echo(f"vigil: --since {since!r} is not an RFC 3339 time", err=True)
        raise typer.Exit(2) from None
    if start is not None and start.tzinfo is None:
        typer.echo("vigil: --since needs a UTC offset", err=True)
        raise typer.Exit(2)
    typer.echo(run(refresh_rollups_command(settings, start)))


@app.command("import")
def import_file(
    file: Annotated[
        Path, typer.Argument(help="Onboarding file (YAML or JSON), see docs/onboarding.md")
    ],
) -> None:
    """Load clients, contracts, coaches, members, care plans, enrollments and devices.

    Re-importing the same file changes nothing. An invalid entry is reported with its entry and
    field, and nothing from the file is written (exit 2).
    """
    from services.commands import import_command

    settings = _settings()
    _logging(settings)
    summary = run(import_command(settings, file))
    typer.echo(summary)


@app.command("ingest")
def ingest(
    file: Annotated[Path, typer.Argument(help="Reading file: one JSON reading per line (JSONL)")],
    batch_size: Annotated[int | None, typer.Option(help="Readings per transaction")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: one per core, at most 4)")
    ] = None,
    output: Annotated[str, typer.Option("--format", help="table | json")] = "table",
) -> None:
    """Send a reading file through the pipeline and print counts.

    Prints accepted, duplicate and rejected counts (by reason code). Rejected readings are kept in
    quarantine. Exits 0 when the file was processed, whatever was rejected.
    """
    from services.commands import ingest_command

    settings = _settings()
    _logging(settings)
    counts = run(ingest_command(settings, file, batch_size or settings.batch_size, workers))
    typer.echo(counts.render(output))


@quarantine_app.command("list")
def quarantine_list(
    reason: Annotated[str | None, typer.Option(help="Only this reason code")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device")] = None,
    status: Annotated[str, typer.Option(help="open | resolved | all")] = "open",
    limit: Annotated[int, typer.Option(help="At most this many entries")] = 100,
    output: Annotated[str, typer.Option("--format", help="table | jsonl")] = "table",
) -> None:
    """List quarantined readings, newest first, with reason code and raw payload."""
    from services.commands import quarantine_list_command

    settings = _settings()
    _logging(settings)
    typer.echo(run(quarantine_list_command(settings, reason, device, status, limit, output)))


@quarantine_app.command("replay")
def quarantine_replay(
    reason: Annotated[str | None, typer.Option(help="Only entries with this reason code")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device's entries")] = None,
    entry_id: Annotated[list[int] | None, typer.Option("--id", help="Only these entries")] = None,
) -> None:
    """Re-run open quarantine entries through the pipeline after their cause was fixed.

    Entries that are now accepted (or turn out to be duplicates) are marked resolved; the others
    stay open with their new reason and an attempt count.
    """
    from services.commands import quarantine_replay_command

    settings = _settings()
    _logging(settings)
    typer.echo(run(quarantine_replay_command(settings, reason, device, entry_id or [])))


@app.command("gateway")
def gateway(
    worker_id: Annotated[
        str | None,
        typer.Option(help="Stable worker id: the MQTT client id is vigil-gw-<id> (default: host)"),
    ] = None,
    leave: Annotated[
        bool,
        typer.Option(
            "--leave",
            help="On shutdown, end this worker's broker session for good (scale-down), so the "
            "shared subscription stops dealing readings to it",
        ),
    ] = False,
) -> None:
    """Run one MQTT gateway worker: readings in, stored exactly once, acked after commit.

    Workers share one MQTT 5 subscription ($share/VIGIL_GATEWAY_GROUP/...), so run as many as
    the load needs, each with its own stable --worker-id. SIGTERM stores and acks what was
    received, then exits.
    """
    from device_gateway.mqtt.service import default_worker_id, run_gateway

    settings = _settings()
    _logging(settings)
    run(run_gateway(settings, worker_id or default_worker_id(), leave=leave))


@alerts_app.command("list")
def alerts_list(
    status: Annotated[
        str, typer.Option(help="active | open | acknowledged | resolved | all")
    ] = "active",
    output: Annotated[str, typer.Option("--format", help="table | jsonl")] = "table",
    limit: Annotated[int, typer.Option(help="At most this many alerts")] = 500,
) -> None:
    """The alert queue in priority order: live before retrospective, tier, then SLA deadline.

    JSONL objects carry id, member_id, rule, tier, status, retrospective, opened_at, count,
    worst_value (and latest_value, unit, sla_due_at, acknowledged_by, escalated).
    """
    from services.commands import alerts_list_command

    if status not in ("active", "open", "acknowledged", "resolved", "all"):
        typer.echo(f"vigil: unknown status {status!r}", err=True)
        raise typer.Exit(2)
    settings = _settings()
    _logging(settings)
    typer.echo(run(alerts_list_command(settings, status, output, limit)))


@app.command("api")
def api(
    host: Annotated[str, typer.Option(help="Listen address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port")] = 8080,
) -> None:
    """Run the member app API: sign-up, POST /v1/readings, the member's own readings and
    summaries (bearer tokens bound to one member)."""
    from services.cli_api import api as api_command

    api_command(host=host, port=port)


def _register_simulate() -> None:
    from services.cli_simulate import simulate

    app.command("simulate")(simulate)


def _register_console() -> None:
    from services.cli_console import console, users_app

    app.command("console")(console)
    app.add_typer(users_app, name="users")


def _register_scheduler() -> None:
    from services.cli_scheduler import scheduler

    app.command("scheduler")(scheduler)


_register_simulate()
_register_scheduler()
_register_console()


@app.command("demo")
def demo(
    members: Annotated[int, typer.Option(help="Simulated members")] = 60,
    rate: Annotated[float, typer.Option(help="Readings per second streamed")] = 20.0,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
) -> None:
    """Run Vigil with a simulated population: migrate, import, stream readings.

    Uses VIGIL_DATABASE_URL and VIGIL_MQTT_URL when they are reachable; otherwise starts private
    PostgreSQL and Mosquitto servers under VIGIL_STATE_DIR. Ctrl-C stops it.
    """
    from services.demo import demo_command

    settings = _settings()
    _logging(settings)
    run(demo_command(settings, members=members, rate=rate, duration=duration))


@app.command("bench")
def bench(
    name: Annotated[str | None, typer.Argument(help="Benchmark name (default: all)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Seconds, for CI and rechecks")] = False,
) -> None:
    """Run benchmarks and record figures in docs/benchmarks.md and docs/benchmarks.jsonl."""
    from bench import run_benchmarks

    settings = _settings()
    _logging(settings)
    run(run_benchmarks(settings, name, quick=quick))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
