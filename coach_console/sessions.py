"""Server-side sessions, idle logoff and login lockout.

The session cookie holds 32 random bytes (URL-safe base64); the table holds their SHA-256, the
coach, a per-session CSRF token and the times that end it: `idle_timeout` after the last request
the person made, `session_lifetime` after sign-in, or sign-out. A session whose password step
passed but whose TOTP step is still due is `mfa_pending` and opens only the code form; passing
the code ends it and starts a new one (a new token after a privilege change, OWASP session
management).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import asyncpg

from coach_console.accounts import Staff
from coach_console.settings import ConsoleSettings
from services.storage.db import Connection

TOKEN_BYTES: Final = 32


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: bytes
    staff: Staff
    csrf_token: str
    mfa_pending: bool
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_COLS: Final = (
    "s.token_hash, s.csrf_token, s.mfa_pending, s.created_at, s.last_seen_at, s.expires_at, "
    "c.id, c.name, c.role, c.team, c.credential"
)


def _session(r: asyncpg.Record) -> Session:
    staff = Staff(r["id"], r["name"], r["role"], r["team"], r["credential"])
    return Session(
        bytes(r["token_hash"]), staff, r["csrf_token"], r["mfa_pending"], r["created_at"],
        r["last_seen_at"], r["expires_at"],
    )  # fmt: skip


async def start_session(
    conn: Connection, coach_id: str, now: datetime, settings: ConsoleSettings, *,
    mfa_pending: bool,
) -> tuple[str, Session]:  # fmt: skip
    """A new session; returns the cookie value (the only copy of the token) and the session."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    row = await conn.fetchrow(
        f"""WITH s AS (
                INSERT INTO console_sessions (token_hash, coach_id, csrf_token, mfa_pending,
                    created_at, last_seen_at, expires_at)
                VALUES ($1, $2, $3, $4, $5, $5, $6) RETURNING *)
            SELECT {_COLS} FROM s JOIN coaches c ON c.id = s.coach_id""",
        token_hash(token), coach_id, secrets.token_urlsafe(32), mfa_pending, now,
        now + (settings.idle_timeout if mfa_pending else settings.session_lifetime),
    )  # fmt: skip
    assert row is not None  # noqa: S101 - INSERT ... RETURNING returns the row
    return token, _session(row)


async def load_session(
    conn: Connection, token: str | None, now: datetime, settings: ConsoleSettings, *,
    touch: bool,
) -> Session | None:  # fmt: skip
    """The live session of a cookie, or None. `touch` counts the request as activity (pages
    and actions do; live-update streams and background refreshes do not, or a screen left open
    would never log off). A session found idle or expired is ended here, with its reason."""
    if not token or len(token) > 128:
        return None
    key = token_hash(token)
    live = (
        "s.token_hash = $1 AND s.ended_at IS NULL AND s.expires_at > $2 "
        "AND s.last_seen_at > $2::timestamptz - $3::interval AND NOT a.disabled"
    )
    if touch:
        row = await conn.fetchrow(
            f"""UPDATE console_sessions s SET last_seen_at = $2
                FROM coaches c, console_accounts a
                WHERE {live} AND c.id = s.coach_id AND a.coach_id = s.coach_id
                RETURNING {_COLS}""",
            key, now, settings.idle_timeout,
        )  # fmt: skip
    else:
        row = await conn.fetchrow(
            f"""SELECT {_COLS} FROM console_sessions s JOIN coaches c ON c.id = s.coach_id
                JOIN console_accounts a ON a.coach_id = s.coach_id WHERE {live}""",
            key, now, settings.idle_timeout,
        )  # fmt: skip
    if row is not None:
        return _session(row)
    await conn.execute(
        """UPDATE console_sessions SET ended_at = $2,
               end_reason = CASE WHEN expires_at <= $2 THEN 'expired'
                                 WHEN last_seen_at <= $2::timestamptz - $3::interval THEN 'idle'
                                 ELSE 'disabled' END
           WHERE token_hash = $1 AND ended_at IS NULL""",
        key, now, settings.idle_timeout,
    )  # fmt: skip
    return None


async def end_session(conn: Connection, key: bytes, reason: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE console_sessions SET ended_at = $2, end_reason = $3 "
        "WHERE token_hash = $1 AND ended_at IS NULL",
        key, now, reason,
    )  # fmt: skip


async def housekeeping(
    conn: Connection, now: datetime, keep: timedelta = timedelta(days=30)
) -> int:
    """Forget sessions and login attempts older than `keep` (the audit log keeps who signed in
    when; these tables only serve live sessions and the lockout)."""
    sessions = await conn.execute(
        "DELETE FROM console_sessions "
        "WHERE coalesce(ended_at, expires_at) < $1::timestamptz - $2::interval",
        now, keep,
    )  # fmt: skip
    attempts = await conn.execute(
        "DELETE FROM console_login_attempts WHERE at < $1::timestamptz - $2::interval", now, keep
    )
    return int(sessions.split()[-1]) + int(attempts.split()[-1])


# --- lockout ---------------------------------------------------------------------------------


def locked_until(
    failures_newest_first: Sequence[datetime], limit: int, window: timedelta
) -> datetime | None:
    """Lockout rule: `limit` failures within `window` (counted since the last successful
    sign-in) lock the login until `window` after the last of them."""
    if len(failures_newest_first) < limit:
        return None
    newest, oldest = failures_newest_first[0], failures_newest_first[limit - 1]
    if newest - oldest > window:
        return None
    return newest + window


async def lockout(
    conn: Connection, login: str, now: datetime, settings: ConsoleSettings
) -> datetime | None:
    """When `login` is locked, the time it unlocks; else None."""
    rows = await conn.fetch(
        """SELECT at FROM console_login_attempts
           WHERE login = $1 AND NOT success AND at > $2::timestamptz - $3::interval
             AND at > coalesce((SELECT max(at) FROM console_login_attempts
                                WHERE login = $1 AND success), '-infinity')
           ORDER BY at DESC LIMIT $4""",
        login, now, settings.lockout_window, settings.lockout_failures,
    )  # fmt: skip
    until = locked_until([r["at"] for r in rows], settings.lockout_failures,
                         settings.lockout_window)  # fmt: skip
    return until if until is not None and until > now else None


async def record_attempt(
    conn: Connection, login: str, stage: str, success: bool, now: datetime
) -> None:
    await conn.execute(
        "INSERT INTO console_login_attempts (login, at, stage, success) VALUES ($1, $2, $3, $4)",
        login[:128], now, stage, success,
    )  # fmt: skip
