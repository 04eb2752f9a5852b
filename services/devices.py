"""The device lifecycle in the database: provision, assign, replace, revoke.

- A device's MQTT username is its id. `provision` issues it a random password, returned once to
  the caller and stored only as its Mosquitto `$7$` hash in `device_credentials`; provisioning a
  device again rotates its password (the old one is revoked in the same transaction).
- Assignments are half-open intervals `[assigned_from, assigned_to)` of instants, one holder at
  a time (the table's exclusion constraint). A `from_day` means midnight at the start of that day
  in the member's time zone, as the onboarding file's dates do (docs/onboarding.md); without one
  the change takes effect now.
- `replace` swaps a broken or lost meter: the old one's holding ends now, its credentials are
  revoked and it is retired; the new one is provisioned and held by the same member from now.
- `revoke` marks a device `revoked` and revokes its credentials. Its assignment is left as it
  is: readings it stored stay the member's (use `replace` or `assign` to hand over a device).

Each change runs in one transaction under an advisory lock, and the caller writes the broker's
files from `broker_users` inside that transaction (services/cli_devices.py): changes are
serialized, and the files on disk always reflect the last committed change. A file that cannot
be written rolls the change back, so a revocation never commits without reaching the file.

Errors are `DeviceLifecycleError` (exit 2) with a reason from `DeviceReason`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Final, Literal
from zoneinfo import ZoneInfo

import asyncpg

from device_gateway.broker import (
    BrokerConfigError,
    PasswordEntry,
    check_username,
    hash_password,
    new_password,
)
from services.errors import ConfigurationError
from services.onboarding import local_midnight
from services.storage.db import Connection

#: pg_advisory_xact_lock key of device lifecycle changes (the key space is shared: "VIGID").
LOCK_KEY: Final = 0x56_49_47_49_44
DEVICE_KINDS: Final = frozenset({"glucose_meter", "bp_monitor", "scale", "cgm"})

DeviceReason = Literal[
    "invalid_device_id",  # not usable as an MQTT username and topic level
    "invalid_kind",
    "unknown_device",
    "unknown_member",
    "kind_mismatch",  # provisioned or replaced with another kind than the stored one
    "device_not_active",  # revoked or retired devices get no credentials and no holder
    "assignment_conflict",  # the new holding would overlap or precede a stored one
    "not_assigned",  # replace: nobody holds the old device now
    "same_device",
]


class DeviceLifecycleError(ConfigurationError):
    def __init__(
        self, reason: DeviceReason, device_id: str, message: str, *, hint: str | None = None
    ) -> None:
        self.reason: DeviceReason = reason
        self.device_id = device_id
        self.hint = hint
        super().__init__(f"device {device_id}: {message}" + (f" ({hint})" if hint else ""))


@dataclass(frozen=True, slots=True)
class IssuedCredentials:
    """A device's new MQTT credentials. The password exists only here: show it once."""

    device_id: str
    kind: str
    password: str = field(repr=False)

    @property
    def username(self) -> str:
        return self.device_id


@dataclass(frozen=True, slots=True)
class Holding:
    device_id: str
    member_id: str
    assigned_from: datetime | None
    #: The holding this one ended (device handed over), if any.
    ended: tuple[str, datetime] | None = None
    changed: bool = True


@dataclass(frozen=True, slots=True)
class Replacement:
    old_device_id: str
    member_id: str
    at: datetime
    issued: IssuedCredentials


@asynccontextmanager
async def lifecycle_transaction(conn: Connection) -> AsyncIterator[Connection]:
    """One lifecycle change: a transaction holding the lifecycle lock until it commits."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        yield conn


def check_device_id(device_id: str) -> str:
    try:
        return check_username(device_id)
    except BrokerConfigError as exc:
        raise DeviceLifecycleError(
            "invalid_device_id", device_id[:80], "cannot be an MQTT username",
            hint="1-64 letters, digits and . _ - starting with a letter or digit",
        ) from exc  # fmt: skip


async def provision(
    conn: Connection,
    device_id: str,
    kind: str,
    *,
    now: datetime,
    gateway_username: str,
    member_id: str | None = None,
    from_day: date | None = None,
) -> IssuedCredentials:
    """Create the device if needed and issue it new credentials (revoking older ones); with
    `member_id`, also assign it (see `assign`). Call inside `lifecycle_transaction`."""
    check_device_id(device_id)
    if device_id == gateway_username:
        raise DeviceLifecycleError("invalid_device_id", device_id, "is the gateway's MQTT user")
    if kind not in DEVICE_KINDS:
        raise DeviceLifecycleError("invalid_kind", device_id, f"unknown kind {kind!r}",
                                   hint="one of " + ", ".join(sorted(DEVICE_KINDS)))  # fmt: skip
    row = await conn.fetchrow("SELECT kind, status FROM devices WHERE id = $1 FOR UPDATE",
                              device_id)  # fmt: skip
    if row is None:
        await conn.execute("INSERT INTO devices (id, kind) VALUES ($1, $2)", device_id, kind)
    elif row["kind"] != kind:
        raise DeviceLifecycleError("kind_mismatch", device_id,
                                   f"is a {row['kind']}, not a {kind}")  # fmt: skip
    elif row["status"] != "active":
        raise DeviceLifecycleError(
            "device_not_active", device_id, f"is {row['status']}",
            hint="a revoked or retired device is not issued credentials again; provision the "
            "meter that replaces it under its own id",
        )  # fmt: skip
    issued = await _issue(conn, device_id, kind, now)
    if member_id is not None:
        await assign(conn, device_id, member_id, now=now, from_day=from_day)
    return issued


async def _issue(conn: Connection, device_id: str, kind: str, now: datetime) -> IssuedCredentials:
    await _revoke_credentials(conn, device_id, now)
    password = new_password()
    await conn.execute(
        "INSERT INTO device_credentials (device_id, password_hash, created_at) VALUES ($1, $2, $3)",
        device_id,
        hash_password(password),
        now,
    )
    return IssuedCredentials(device_id, kind, password)


async def _revoke_credentials(conn: Connection, device_id: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE device_credentials SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL",
        device_id,
        now,
    )


async def _member_zone(conn: Connection, member_id: str, device_id: str) -> ZoneInfo:
    zone = await conn.fetchval("SELECT timezone FROM members WHERE id = $1", member_id)
    if zone is None:
        raise DeviceLifecycleError("unknown_member", device_id, f"no member {member_id!r}")
    return ZoneInfo(zone)


async def _active_device(conn: Connection, device_id: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT kind, status FROM devices WHERE id = $1 FOR UPDATE",
                              device_id)  # fmt: skip
    if row is None:
        raise DeviceLifecycleError("unknown_device", device_id, "no such device",
                                   hint="provision it first")  # fmt: skip
    if row["status"] != "active":
        raise DeviceLifecycleError("device_not_active", device_id, f"is {row['status']}")
    return row


async def assign(
    conn: Connection,
    device_id: str,
    member_id: str,
    *,
    now: datetime,
    from_day: date | None = None,
) -> Holding:
    """`member_id` holds the device from `from_day` (midnight in the member's zone) or now.

    The device's open holding, if any, ends where the new one starts (assigned_to = start);
    when it already is this member's, nothing changes. Call inside `lifecycle_transaction`.
    """
    await _active_device(conn, device_id)
    zone = await _member_zone(conn, member_id, device_id)
    start = local_midnight(from_day, zone) if from_day is not None else now
    current = await conn.fetchrow(
        "SELECT id, member_id, assigned_from FROM device_assignments "
        "WHERE device_id = $1 AND assigned_to IS NULL",
        device_id,
    )
    ended: tuple[str, datetime] | None = None
    if current is not None:
        since: datetime | None = current["assigned_from"]
        if current["member_id"] == member_id and (since is None or since <= start):
            return Holding(device_id, member_id, since, changed=False)
        if since is not None and since >= start:
            raise DeviceLifecycleError(
                "assignment_conflict", device_id,
                f"{current['member_id']} holds it from {since.isoformat()}, not before "
                f"{start.isoformat()}", hint="end or correct that holding first",
            )  # fmt: skip
        await conn.execute("UPDATE device_assignments SET assigned_to = $2 WHERE id = $1",
                           current["id"], start)  # fmt: skip
        ended = (current["member_id"], start)
    await _insert_holding(conn, device_id, member_id, start)
    return Holding(device_id, member_id, start, ended)


async def _insert_holding(
    conn: Connection, device_id: str, member_id: str, start: datetime
) -> None:
    try:
        async with conn.transaction():  # a savepoint: the violation is translated, not fatal
            await conn.execute(
                "INSERT INTO device_assignments (device_id, member_id, assigned_from) "
                "VALUES ($1, $2, $3)",
                device_id,
                member_id,
                start,
            )
    except asyncpg.ExclusionViolationError:
        raise DeviceLifecycleError(
            "assignment_conflict", device_id,
            f"a stored holding overlaps [{start.isoformat()}, open)",
            hint="a later holding is already on record; see device_assignments",
        ) from None  # fmt: skip


async def replace(
    conn: Connection,
    old_id: str,
    new_id: str,
    *,
    now: datetime,
    gateway_username: str,
) -> Replacement:
    """The member holding `old_id` now gets `new_id` from now; `old_id` is retired and its
    credentials revoked; `new_id` is provisioned (same kind). Call inside
    `lifecycle_transaction`."""
    if old_id == new_id:
        raise DeviceLifecycleError("same_device", old_id, "cannot replace a device by itself")
    # Lock both rows in id order, so two replacements never deadlock each other.
    for device_id in sorted((old_id, new_id)):
        await conn.execute("SELECT 1 FROM devices WHERE id = $1 FOR UPDATE", device_id)
    old = await conn.fetchrow("SELECT kind FROM devices WHERE id = $1", old_id)
    if old is None:
        raise DeviceLifecycleError("unknown_device", old_id, "no such device")
    holding = await conn.fetchrow(
        "SELECT id, member_id, assigned_from FROM device_assignments "
        "WHERE device_id = $1 AND tstzrange(assigned_from, assigned_to) @> $2::timestamptz",
        old_id,
        now,
    )
    if holding is None:
        raise DeviceLifecycleError(
            "not_assigned", old_id, f"nobody holds it at {now.isoformat()}",
            hint="use `vigil devices assign` for the new device",
        )  # fmt: skip
    if holding["assigned_from"] == now:  # [now, now) would be empty: the holding is undone
        await conn.execute("DELETE FROM device_assignments WHERE id = $1", holding["id"])
    else:
        await conn.execute("UPDATE device_assignments SET assigned_to = $2 WHERE id = $1",
                           holding["id"], now)  # fmt: skip
    await _revoke_credentials(conn, old_id, now)
    await conn.execute("UPDATE devices SET status = 'retired' WHERE id = $1", old_id)
    held = await conn.fetchval(
        "SELECT member_id FROM device_assignments WHERE device_id = $1 "
        "AND (assigned_to IS NULL OR assigned_to > $2) LIMIT 1",
        new_id,
        now,
    )
    if held is not None:
        raise DeviceLifecycleError("assignment_conflict", new_id, f"is held by {held}",
                                   hint="a replacement meter must be unassigned")  # fmt: skip
    issued = await provision(conn, new_id, old["kind"], now=now,
                             gateway_username=gateway_username)  # fmt: skip
    await _insert_holding(conn, new_id, holding["member_id"], now)
    return Replacement(old_id, holding["member_id"], now, issued)


async def revoke(conn: Connection, device_id: str, *, now: datetime) -> bool:
    """Mark the device revoked and revoke its credentials; False if it already was.
    Call inside `lifecycle_transaction`."""
    status = await conn.fetchval("SELECT status FROM devices WHERE id = $1 FOR UPDATE", device_id)
    if status is None:
        raise DeviceLifecycleError("unknown_device", device_id, "no such device")
    live = await conn.fetchval(
        "SELECT count(*) FROM device_credentials WHERE device_id = $1 AND revoked_at IS NULL",
        device_id,
    )
    await conn.execute("UPDATE devices SET status = 'revoked' WHERE id = $1", device_id)
    await _revoke_credentials(conn, device_id, now)
    return bool(status != "revoked" or live)


async def broker_users(conn: Connection) -> list[PasswordEntry]:
    """Every device that may connect: active, with live credentials (hashes only)."""
    rows = await conn.fetch(
        "SELECT c.device_id, c.password_hash FROM device_credentials c "
        "JOIN devices d ON d.id = c.device_id "
        "WHERE c.revoked_at IS NULL AND d.status = 'active' ORDER BY c.device_id"
    )
    return [PasswordEntry(r["device_id"], r["password_hash"]) for r in rows]
