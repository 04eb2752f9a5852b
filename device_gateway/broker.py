"""Device identity at the broker: Mosquitto's password file, ACL file and mosquitto.conf.

Vigil owns these files. They are generated from the database (services/devices.py) by
`vigil broker config` and rewritten by every `vigil devices` lifecycle command, so the broker's
view of who may connect is never edited by hand. The rendering functions are pure (text in, text
out); `write_access_files` / `write_broker_config` put the text on disk atomically and
`signal_reload` tells a running Mosquitto to re-read it.

Password file: one `username:$7$<iterations>$<base64 salt>$<base64 hash>` line per user, the
PBKDF2-SHA512 format that `mosquitto_passwd` 2.x writes by default (12-byte salt, 64-byte hash,
101 iterations; checked against the real tool and a live broker in tests/test_broker_acl.py).
The broker gets hashes only. Device passwords are 192-bit random secrets, so the low iteration
count costs nothing in strength (there is no dictionary to try) and keeps a reconnect storm of
thousands of meters cheap for the broker.

ACL file (Mosquitto `acl_file`): `pattern` lines, where `%u` is the MQTT username, which for a
meter is its device id:
- a device may write only `{prefix}/devices/<itself>/readings` and `.../status` (its last will
  included: Mosquitto drops a will the client may not publish);
- it may receive only `{prefix}/devices/<itself>/acks` and `.../messages`;
- the gateway user reads every device's readings and status (its `$share/<group>/...`
  subscription) and writes every device's acks and messages; nothing else.

Mosquitto 2.0's acl_file plugin grants every SUBSCRIBE and enforces `read` on each message it
delivers (src/security_default.c: "FIXME - implement ACL subscription strings"), so a device that
subscribes to another device's acks gets a SUBACK but never a message.

Usernames must be valid as a password file entry (no `:`), as a topic level and for Mosquitto's
pattern substitution (no `/`, `+`, `#`: Mosquitto denies such users everything), hence
`check_username`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import unquote, urlsplit

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.errors import ConfigurationError, StorageUnavailable

#: mosquitto_passwd 2.0's defaults for `-H sha512-pbkdf2` (src/password_mosq.h: SALT_LEN 12,
#: PW_DEFAULT_ITERATIONS 101); Mosquitto reads the count from each line, so others also work.
PBKDF2_ITERATIONS: Final = 101
SALT_BYTES: Final = 12
HASH_BYTES: Final = 64  # SHA-512 digest size
_B64: Final = r"([A-Za-z0-9+/]+={0,2})"
_HASH_FORMAT: Final = re.compile(rf"^\$7\$(\d{{1,7}})\${_B64}\${_B64}$")
#: Letters, digits and `. _ -`, starting with a letter or digit: Vigil's id rule
#: (services/domain/organisation.py) without `:`, which separates user and hash in the file.
_USERNAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: A topic prefix: levels without wildcards, `%` (pattern substitution) or whitespace.
_PREFIX: Final = re.compile(r"^[^/+#%\s]+(/[^/+#%\s]+)*$")

BROKER_CONF: Final = "mosquitto.conf"
PASSWORD_FILE: Final = "passwd"  # noqa: S105 - a file name
ACL_FILE: Final = "acl"
LOOPBACK: Final = "127.0.0.1"
#: Readable by the broker's group too: Mosquitto re-reads the files on SIGHUP as its own user.
FILE_MODE: Final = 0o640

BrokerReason = Literal[
    "invalid_username", "duplicate_username", "invalid_prefix", "invalid_hash",
    "no_gateway_credentials",
]  # fmt: skip


class BrokerConfigError(ConfigurationError):
    """Broker files cannot be generated as asked (exit 2). `reason` is one of BrokerReason."""

    def __init__(self, reason: BrokerReason, message: str, *, username: str | None = None) -> None:
        self.reason: BrokerReason = reason
        self.username = username
        super().__init__(message)


class BrokerReloadError(StorageUnavailable):
    """The broker could not be told to reload its files (exit 3: the broker is unreachable)."""

    def __init__(self, pidfile: Path, message: str) -> None:
        self.pidfile = pidfile
        super().__init__(message)


class BrokerSettings(BaseSettings):
    """Where the broker files live and how to reach the running broker (VIGIL_BROKER_*).

    With Mosquitto's dynamic-security plugin or a broker cluster, leave `pidfile` unset: the
    operator's tooling loads the generated files (or their content) and reloads the brokers.
    """

    model_config = SettingsConfigDict(env_prefix="VIGIL_BROKER_", extra="ignore", frozen=True)

    #: Folder of mosquitto.conf, `passwd` and `acl` (default: VIGIL_STATE_DIR/broker).
    dir: str | None = None
    #: A file holding the running Mosquitto's pid: lifecycle commands send it SIGHUP.
    pidfile: str | None = None

    def directory(self, state_dir: str) -> Path:
        return Path(self.dir) if self.dir else Path(state_dir) / "broker"


# --- passwords --------------------------------------------------------------------------------


def new_password() -> str:
    """A device password: 192 random bits, URL-safe (it may end up in a device's config URL)."""
    return secrets.token_urlsafe(24)


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """`$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>`, as `mosquitto_passwd` 2.x writes it."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def parse_hash(encoded: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, digest) of a `$7$` hash; BrokerConfigError(invalid_hash) otherwise."""
    m = _HASH_FORMAT.match(encoded)
    if m is None:
        raise BrokerConfigError("invalid_hash", "not a Mosquitto $7$ (PBKDF2-SHA512) hash")
    try:
        salt = base64.b64decode(m.group(2), validate=True)
        digest = base64.b64decode(m.group(3), validate=True)
    except binascii.Error:
        raise BrokerConfigError("invalid_hash", "the hash's base64 is malformed") from None
    if int(m.group(1)) < 1 or not salt or len(digest) != HASH_BYTES:
        raise BrokerConfigError("invalid_hash", "a $7$ hash needs iterations >= 1, a salt and "
                                                "a 64-byte digest")  # fmt: skip
    return int(m.group(1)), salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """What Mosquitto does on CONNECT: recompute with the stored salt and count, compare."""
    iterations, salt, digest = parse_hash(encoded)
    candidate = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(candidate, digest)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- users and files --------------------------------------------------------------------------


def check_username(username: str) -> str:
    """`username` if it can be a broker user and a topic level; BrokerConfigError otherwise."""
    if not _USERNAME.match(username):
        raise BrokerConfigError(
            "invalid_username",
            f"{username[:80]!r} cannot be an MQTT username: use 1-64 letters, digits and . _ - "
            "(starting with a letter or digit); ':' separates user and hash in Mosquitto's "
            "password file and '/', '+', '#' would change what its ACL patterns match",
            username=username,
        )
    return username


def check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise BrokerConfigError(
            "invalid_prefix",
            f"topic prefix {prefix!r} must be topic levels without '+', '#', '%' or spaces",
        )
    return prefix


@dataclass(frozen=True, slots=True)
class PasswordEntry:
    username: str
    password_hash: str

    def __repr__(self) -> str:  # hashes stay out of logs and tracebacks
        return f"PasswordEntry({self.username!r})"


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """The gateway's MQTT user, from the user:password of VIGIL_MQTT_URL."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"GatewayIdentity({self.username!r})"

    @classmethod
    def from_url(cls, mqtt_url: str) -> GatewayIdentity:
        parts = urlsplit(mqtt_url)
        username = unquote(parts.username) if parts.username else ""
        password = unquote(parts.password) if parts.password else ""
        if not username or not password:
            raise BrokerConfigError(
                "no_gateway_credentials",
                "VIGIL_MQTT_URL carries no user:password: the broker's password file needs the "
                "gateway's own user (mqtt://USER:PASSWORD@host:port), the same URL the gateway "
                "workers connect with",
            )
        return cls(check_username(username), password)


def render_password_file(entries: Iterable[PasswordEntry]) -> str:
    """Mosquitto's password file: `user:hash` lines, sorted. No comment line: Mosquitto 2.0
    has no comment syntax in this file and would read one as a user."""
    seen: dict[str, str] = {}
    for e in entries:
        check_username(e.username)
        parse_hash(e.password_hash)
        if e.username in seen:
            raise BrokerConfigError("duplicate_username", f"{e.username!r} is listed twice in "
                                    "the password file", username=e.username)  # fmt: skip
        seen[e.username] = e.password_hash
    return "".join(f"{user}:{seen[user]}\n" for user in sorted(seen))


def render_acl_file(prefix: str, gateway_username: str) -> str:
    """The ACL: each device its own topics, the gateway user every device's; nothing else."""
    check_prefix(prefix)
    check_username(gateway_username)
    devices = f"{prefix}/devices"
    return "\n".join([
        "# Generated by Vigil (device_gateway/broker.py): regenerate, do not edit.",
        "# Devices: the MQTT username is the device id (%u). Anything not granted is denied.",
        f"pattern write {devices}/%u/readings",
        f"pattern write {devices}/%u/status",
        f"pattern read {devices}/%u/acks",
        f"pattern read {devices}/%u/messages",
        "",
        "# The gateway workers: their $share subscription reads every device's readings and",
        "# status; they answer with acks and messages.",
        f"user {gateway_username}",
        f"topic read {devices}/+/readings",
        f"topic read {devices}/+/status",
        f"topic write {devices}/+/acks",
        f"topic write {devices}/+/messages",
        "",
    ])  # fmt: skip


def password_entries(
    devices: Iterable[PasswordEntry], gateway: GatewayIdentity, *, salt: bytes | None = None
) -> list[PasswordEntry]:
    """The device entries plus the gateway's own (hashed here; its secret is in the URL)."""
    entries = list(devices)
    if any(e.username == gateway.username for e in entries):
        raise BrokerConfigError(
            "duplicate_username",
            f"device {gateway.username!r} has the gateway's MQTT username: it would get the "
            "gateway's rights; rename the gateway user in VIGIL_MQTT_URL or revoke the device",
            username=gateway.username,
        )
    entries.append(PasswordEntry(gateway.username, hash_password(gateway.password, salt=salt)))
    return entries


# --- on disk ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / BROKER_CONF

    @property
    def password_file(self) -> Path:
        return self.directory / PASSWORD_FILE

    @property
    def acl_file(self) -> Path:
        return self.directory / ACL_FILE

    @property
    def persistence_dir(self) -> Path:
        return self.directory / "data"


def write_atomically(path: Path, text: str, mode: int = FILE_MODE) -> None:
    """Replace `path` in one rename, so a broker reloading meanwhile reads old or new, never
    half a file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_access_files(
    directory: Path, devices: Iterable[PasswordEntry], gateway: GatewayIdentity, prefix: str
) -> BrokerFiles:
    """Write the password and ACL files (what lifecycle commands change) into `directory`."""
    files = BrokerFiles(directory.resolve())
    passwd = render_password_file(password_entries(devices, gateway))
    acl = render_acl_file(prefix, gateway.username)
    files.directory.mkdir(parents=True, exist_ok=True)
    write_atomically(files.password_file, passwd)
    write_atomically(files.acl_file, acl)
    return files


def render_broker_config(
    files: BrokerFiles,
    *,
    port: int,
    host: str = LOOPBACK,
    max_queued_messages: int = 100_000,
    log_file: Path | None = None,
    run_as: str | None = None,
) -> str:
    """mosquitto.conf for these files: the same generator the test brokers use
    (services.embedded.mosquitto_config), with persistence on and no anonymous clients."""
    from services.embedded import mosquitto_config  # late: it imports aiomqtt and asyncpg

    return mosquitto_config(
        port=port, host=host, persistence_dir=files.persistence_dir, log_file=log_file,
        password_file=files.password_file, acl_file=files.acl_file, allow_anonymous=False,
        run_as=run_as, max_queued_messages=max_queued_messages,
    )  # fmt: skip


def write_broker_config(files: BrokerFiles, config: str) -> None:
    files.persistence_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(files.config, config)


# --- reload -----------------------------------------------------------------------------------


def signal_reload(pidfile: Path) -> int:
    """SIGHUP the Mosquitto whose pid is in `pidfile`: it re-reads the password and ACL files and
    disconnects clients that are no longer allowed. Returns the pid.

    The pid is checked to be a running `mosquitto` first, so a stale pid file never signals an
    unrelated process that reused the number.
    """
    try:
        pid = int(pidfile.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        raise BrokerReloadError(pidfile, f"cannot read a pid from {pidfile}: {exc}") from exc
    proc = Path("/proc")
    if proc.is_dir():
        try:
            name = (proc / str(pid) / "comm").read_text(encoding="utf-8").strip()
        except OSError:
            raise BrokerReloadError(pidfile, f"no process {pid} (from {pidfile}) is running: "
                                    "is the broker up?") from None  # fmt: skip
        if name != "mosquitto":
            raise BrokerReloadError(pidfile, f"process {pid} (from {pidfile}) is {name!r}, not "
                                    "mosquitto: the pid file is stale")  # fmt: skip
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:  # gone since, or not ours to signal
        raise BrokerReloadError(pidfile, f"cannot signal mosquitto ({pid}): {exc}") from exc
    return pid
