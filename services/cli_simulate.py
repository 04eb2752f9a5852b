"""`vigil simulate`: a simulated member population whose devices publish over MQTT.

The thin command line over `simulators` (docs/simulators.md): it parses options, reads
VIGIL_MQTT_URL from the settings, renders progress on stderr and the summary on stdout. The
engine (`simulators.fleet`) and the devices (`simulators.meter`, `simulators.runner`) live in
`simulators`, which imports nothing of Vigil: the devices reach it only over the wire.

Register with `app.command("simulate")(simulate)` in services/cli.py.

Exit codes: 0 done (every reading acked, or the dry-run file written); 2 invalid options or
scenario file; 3 the broker cannot be reached, or readings were still unacked when the drain time
ran out (is `vigil gateway` running?); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Final, NoReturn
from urllib.parse import urlsplit

import typer

from services.errors import VigilError
from services.runtime import run_loop
from services.settings import Settings
from simulators.errors import SimulationError
from simulators.physiology import RISKS
from simulators.population import DEMO_SEED
from simulators.profiles import DEFAULT_MIX, DEFAULT_RISK, PROFILES, parse_weights

if TYPE_CHECKING:  # the engine and the MQTT devices load when a simulation runs (fast --help)
    from simulators.fleet import FleetConfig, FleetSimulation
    from simulators.runner import FleetProgress, FleetReport

log = logging.getLogger(__name__)

PLAIN_PROGRESS_EVERY: Final = 5.0  # seconds between progress lines when stderr is not a terminal
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_INTERRUPTED: Final = 130


def _weights_help(weights: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in weights.items())


def simulate(
    members: Annotated[int, typer.Option(help="Simulated members")] = 100,
    days: Annotated[float, typer.Option(help="Simulated days")] = 7.0,
    speed: Annotated[
        str, typer.Option(help="Simulated time runs X times faster than real time, or 'max'")
    ] = "max",
    mix: Annotated[
        str,
        typer.Option(help=f"Population mix, profile=weight ({', '.join(PROFILES)})"),
    ] = _weights_help(DEFAULT_MIX),
    risk: Annotated[
        str, typer.Option(help=f"Risk classes, class=weight ({', '.join(RISKS)})")
    ] = _weights_help(DEFAULT_RISK),
    scenario: Annotated[
        Path | None, typer.Option(help="Scenario file (YAML or JSONL): scripted readings, faults")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed: the same seed and start give the same run")] = (
        DEMO_SEED
    ),
    start: Annotated[
        str | None,
        typer.Option(
            help="Simulated start (RFC 3339 with offset). Default: the run ends at the wall "
            "clock (now - days x (1 - 1/speed); now - days with max or --dry-run)"
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write the readings to --out instead of publishing")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Reading file (JSONL) for --dry-run; '-' for stdout")
    ] = None,
    write_population: Annotated[
        Path | None, typer.Option(help="Write the matching onboarding file (for `vigil import`)")
    ] = None,
    offline_share: Annotated[
        float, typer.Option(help="Share of devices that lose connectivity once, then burst")
    ] = 0.05,
    outage_hours: Annotated[
        str, typer.Option(help="Outage length range in simulated hours, MIN-MAX")
    ] = "2-36",
    clock_drift_share: Annotated[
        float, typer.Option(help="Share of devices whose clock drifts (50-400 ppm)")
    ] = 0.05,
    clock_reset_share: Annotated[
        float, typer.Option(help="Share of devices whose clock resets to 2000-01-01")
    ] = 0.01,
    duplicate_rate: Annotated[
        float, typer.Option(help="Probability that the network delivers a message twice")
    ] = 0.01,
    id_prefix: Annotated[
        str, typer.Option(help="Prefix of member and device ids (several populations side by side)")
    ] = "",
    credentials: Annotated[
        Path | None,
        typer.Option(help="Device credentials, lines DEVICE:PASSWORD (default: derived from seed)"),
    ] = None,
    write_credentials: Annotated[
        Path | None,
        typer.Option(help="Write DEVICE:PASSWORD lines (hash with `mosquitto_passwd -U FILE`)"),
    ] = None,
    anonymous: Annotated[
        bool, typer.Option("--anonymous", help="Devices connect without credentials")
    ] = False,
    resend_after: Annotated[float, typer.Option(help="Seconds before a device resends")] = 5.0,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the last acks at the end")
    ] = 120.0,
) -> None:
    """Simulate members and their devices: readings over MQTT, or a reading file (--dry-run).

    Members have profiles (type 2 and type 1 diabetes, hypertension, heart failure, weight
    program) and risk classes; their glucose, blood pressure and weight follow physiology models
    and their testing fades, pauses or stays steady. Devices drift, reset their clocks, go
    offline and burst their backlog, and get duplicated by the network. Import the matching
    population first (--write-population, then `vigil import`) and run `vigil gateway`.
    """
    from simulators.fleet import FleetSimulation
    from simulators.scenario import load_scenario

    try:
        options = _Options.parse(
            members=members, days=days, speed=speed, mix=mix, risk=risk, seed=seed, start=start,
            dry_run=dry_run, out=out, offline_share=offline_share, outage_hours=outage_hours,
            clock_drift_share=clock_drift_share, clock_reset_share=clock_reset_share,
            duplicate_rate=duplicate_rate, id_prefix=id_prefix,
        )  # fmt: skip
        sim = FleetSimulation(
            options.config, load_scenario(scenario) if scenario is not None else None
        )
        if write_population is not None:
            _write_population(write_population, sim)
        creds = None if anonymous else _credentials(sim, credentials)
        if write_credentials is not None:
            _write_atomically(write_credentials, _credential_lines(sim))
    except SimulationError as exc:
        _fail(str(exc), EXIT_USAGE)
    if out is not None:  # given exactly when --dry-run is (checked by _Options.parse)
        _dry_run(sim, out)
        return
    settings = _settings()
    logging.basicConfig(stream=sys.stderr, level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        report = run_loop(_publish(sim, settings, creds, options.speed, resend_after,
                                   drain_timeout))  # fmt: skip
    except VigilError as exc:
        _fail(str(exc), exc.exit_code)
    except SimulationError as exc:
        _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    typer.echo(_summary(sim, options, report))
    if report.stopped_early:
        raise typer.Exit(EXIT_INTERRUPTED)
    if not report.all_acked:
        _fail(
            f"{report.progress.backlog} readings still unacked after {drain_timeout:g} s: is "
            "`vigil gateway` running, and is the population imported?",
            EXIT_UNREACHABLE,
        )


@dataclass(frozen=True, slots=True)
class _Options:
    config: FleetConfig
    speed: float | None  # None: as fast as possible

    @classmethod
    def parse(
        cls, *, members: int, days: float, speed: str, mix: str, risk: str, seed: int,
        start: str | None, dry_run: bool, out: Path | None, offline_share: float,
        outage_hours: str, clock_drift_share: float, clock_reset_share: float,
        duplicate_rate: float, id_prefix: str,
    ) -> _Options:  # fmt: skip
        from simulators.devices import FaultShares
        from simulators.fleet import FleetConfig

        if dry_run and out is None:
            raise SimulationError("invalid_option", "--dry-run needs --out FILE (or - for stdout)")
        if out is not None and not dry_run:
            raise SimulationError("invalid_option", "--out is the --dry-run file")
        pace = _speed(speed)
        faults = FaultShares(
            offline=offline_share, outage_hours=_range(outage_hours, "--outage-hours"),
            clock_drift=clock_drift_share, clock_reset=clock_reset_share,
            duplicate_rate=duplicate_rate,
        )  # fmt: skip
        config = FleetConfig(
            members=members, days=days,
            start=_start(start, days, None if dry_run else pace),
            seed=seed, mix=parse_weights(mix, list(PROFILES), "--mix"),
            risk=parse_weights(risk, list(RISKS), "--risk"), faults=faults, id_prefix=id_prefix,
        )  # fmt: skip
        return cls(config, pace)


def _speed(text: str) -> float | None:
    if text.strip().lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise SimulationError("invalid_option", f"--speed {text!r}: a number or 'max'") from None
    if not value > 0:
        raise SimulationError("invalid_option", "--speed must be above 0")
    return value


def _start(text: str | None, days: float, speed: float | None) -> datetime:
    """The given start, or one that makes the simulated clock reach the wall clock at the end:
    readings are never from the future, which Vigil's clock rule would correct."""
    if text is not None:
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise SimulationError("invalid_option", f"--start {text!r} is not RFC 3339") from None
        if value.tzinfo is None:
            raise SimulationError("invalid_option", "--start needs a UTC offset (or Z)")
        return value
    behind = 1.0 if speed is None else max(0.0, 1.0 - 1.0 / speed)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now - timedelta(seconds=round(days * behind * 86_400))


def _range(text: str, option: str) -> tuple[float, float]:
    low, sep, high = text.partition("-")
    try:
        bounds = (float(low), float(high) if sep else float(low))
    except ValueError:
        raise SimulationError("invalid_option", f"{option} {text!r}: expected MIN-MAX") from None
    return bounds


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        _fail(f"configuration error: {exc}", EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"vigil: {message}", err=True)
    raise typer.Exit(code)


# --- files --------------------------------------------------------------------------------------


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise SimulationError("invalid_option", f"cannot write {path}: {exc}") from exc


def _write_population(path: Path, sim: FleetSimulation) -> None:
    import json

    import yaml

    document = sim.onboarding()
    c = sim.config
    if path.suffix.lower() == ".json":
        text = json.dumps(document, indent=1, default=str) + "\n"
    else:
        text = (
            f"# Generated by `vigil simulate` (seed {c.seed}, {c.members} members, start "
            f"{c.start.isoformat()}). Format: docs/onboarding.md.\n"
            + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        )
    _write_atomically(path, text)


def _credentials(sim: FleetSimulation, path: Path | None) -> dict[str, tuple[str, str]]:
    if path is None:
        return sim.credentials()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SimulationError("invalid_option", f"cannot read {path}: {exc}") from exc
    found: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.strip().partition(":")
        if not sep or not user:
            raise SimulationError(
                "invalid_option", f"{path} line {number}: expected DEVICE:PASSWORD"
            )
        found[user] = (user, password)
    missing = sorted(set(sim.devices) - set(found))
    if missing:
        raise SimulationError("invalid_option", f"{path} has no credentials for {len(missing)} "
                              f"devices, e.g. {missing[0]}")  # fmt: skip
    return found


def _credential_lines(sim: FleetSimulation) -> str:
    return "".join(f"{user}:{password}\n" for user, password in sim.credentials().values())


@contextlib.contextmanager
def _output(out: Path) -> Iterator[IO[bytes]]:
    if str(out) == "-":
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            yield f
        os.replace(tmp, out)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc}", EXIT_USAGE)
    finally:
        tmp.unlink(missing_ok=True)


def _dry_run(sim: FleetSimulation, out: Path) -> None:
    with _output(out) as stream:
        count = sim.write_jsonl(stream)
    c = sim.config
    typer.echo(
        f"dry run: {count} readings from {len(sim.devices)} devices of {len(sim.members)} "
        f"members, {c.start.isoformat()} .. {c.end.isoformat()} (seed {c.seed}) -> {out}",
        err=str(out) == "-",
    )


# --- publishing ---------------------------------------------------------------------------------


async def _publish(
    sim: FleetSimulation,
    settings: Settings,
    creds: dict[str, tuple[str, str]] | None,
    speed: float | None,
    resend_after: float,
    drain_timeout: float,
) -> FleetReport:
    from services.embedded import mqtt_reachable
    from simulators.runner import Broker, publish_fleet

    url = settings.mqtt_url.get_secret_value()
    parts = urlsplit(url)
    if not await mqtt_reachable(url):
        _fail(f"no MQTT broker answers at {parts.hostname}:{parts.port or 1883} "
              "(VIGIL_MQTT_URL)", EXIT_UNREACHABLE)  # fmt: skip
    broker = Broker(parts.hostname or "127.0.0.1", parts.port or 1883, settings.mqtt_prefix,
                    creds)  # fmt: skip
    stop = asyncio.Event()
    view = _ProgressView(sim, speed)
    with _stop_on_signals(stop), view:
        return await publish_fleet(sim, broker, speed=speed, stop=stop, on_progress=view.update,
                                   resend_after=resend_after,
                                   drain_timeout=drain_timeout)  # fmt: skip


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT/SIGTERM stop feeding readings and end the run; a second one cancels it."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def handle() -> None:
        if stop.is_set() and task is not None:
            task.cancel()
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, handle)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


class _ProgressView:
    """Live progress on stderr: a refreshing panel on a terminal, a line every few seconds
    otherwise (logs, CI)."""

    def __init__(self, sim: FleetSimulation, speed: float | None) -> None:
        from rich.console import Console

        self._console = Console(stderr=True)
        self._sim = sim
        self._speed = "max" if speed is None else f"x{speed:g}"
        self._live: Any = None
        self._last_line = 0.0

    def __enter__(self) -> _ProgressView:
        if self._console.is_terminal:
            from rich.live import Live

            self._live = Live(console=self._console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, p: FleetProgress) -> None:
        if self._live is not None:
            self._live.update(self._table(p))
        elif p.finished or p.elapsed - self._last_line >= PLAIN_PROGRESS_EVERY:
            self._last_line = p.elapsed
            print(f"vigil simulate: {_line(p)}", file=sys.stderr, flush=True)

    def _table(self, p: FleetProgress) -> Any:
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("simulated time", f"{p.sim_time:%Y-%m-%d %H:%M} UTC "
                      f"(speed {self._speed}, {p.elapsed:.0f} s)")  # fmt: skip
        table.add_row("members online", f"{p.members_online} / {p.members}")
        table.add_row("devices online", f"{p.devices_online} / {p.devices}")
        table.add_row("readings", f"{p.generated} taken, {p.published} sent, "
                      f"{p.accepted + p.duplicate + p.rejected} acked")  # fmt: skip
        table.add_row("acks", f"{p.accepted} accepted, {p.duplicate} duplicate, "
                      f"{p.rejected} rejected")  # fmt: skip
        table.add_row("resent / duplicated", f"{p.resent} / {p.duplicated}")
        table.add_row("backlog", f"{p.backlog} held by devices ({p.bursts} burst chunks)")
        return table


def _line(p: FleetProgress) -> str:
    return (
        f"{p.sim_time:%Y-%m-%d %H:%M} UTC, {p.elapsed:.0f} s: members online "
        f"{p.members_online}/{p.members}, devices online {p.devices_online}/{p.devices}; "
        f"readings {p.generated} taken, {p.published} sent, "
        f"{p.accepted + p.duplicate + p.rejected} acked; backlog {p.backlog}"
    )


def _summary(sim: FleetSimulation, options: _Options, report: FleetReport) -> str:
    c, p = sim.config, report.progress
    speed = "max" if options.speed is None else f"x{options.speed:g}"
    rate = p.generated / p.elapsed if p.elapsed > 0 else 0.0
    rejected = ", ".join(f"{k} {n}" for k, n in report.rejected_reasons.items())
    return "\n".join((
        f"simulated {p.members} members with {p.devices} devices, {c.start.isoformat()} .. "
        f"{c.end.isoformat()} (seed {c.seed}, speed {speed})",
        f"readings: {p.generated} taken, {p.published} sent, {p.resent} resent, "
        f"{p.duplicated} duplicated by the network, {p.bursts} burst chunks from "
        f"{report.devices_with_bursts} devices",
        f"acks: {p.accepted} accepted, {p.duplicate} duplicate, {p.rejected} rejected"
        + (f" ({rejected})" if rejected else "")
        + f"; unacked {p.backlog}; devices fully acked {report.devices_fully_acked}/{p.devices}",
        f"wall time {p.elapsed:.1f} s ({rate:.0f} readings/s)",
    ))  # fmt: skip
