"""Console accounts: who may sign in, their password hash and their second factor.

Passwords are hashed with argon2id (argon2-cffi's defaults: the RFC 9106 "second recommended"
profile, 64 MiB, 3 passes), always off the event loop (each hash takes tens of milliseconds).
TOTP is RFC 6238 (30-second steps, 6 digits, SHA-1: what authenticator apps support), required
for supervisors and admins, optional for coaches. A code is accepted once: the step of the last
accepted code is stored and only later steps pass (RFC 6238 section 5.2).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import asyncpg
import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.settings import Settings
from services.storage.db import Connection

Role = Literal["coach", "supervisor", "admin"]
ROLES: Final[tuple[Role, ...]] = ("coach", "supervisor", "admin")
#: Roles that must pass a second factor (the issue: supervisors and admins see many caseloads).
TOTP_REQUIRED: Final = frozenset({"supervisor", "admin"})
#: Credentials that may change clinical thresholds (alerting.thresholds.validate_override).
CLINICAL_CREDENTIALS: Final = frozenset({"RN", "CDCES", "RD"})
#: NIST SP 800-63B-4 asks for at least 15 characters for a password used alone and 8 with a
#: second factor; coaches may sign in without one, so 12 is the floor here (and 15 is advised).
MIN_PASSWORD_LENGTH: Final = 12
MAX_PASSWORD_LENGTH: Final = 256
TOTP_ISSUER: Final = "Vigil"

_hasher = PasswordHasher()  # parameters only; nothing is read or connected here


class AccountError(Exception):
    """A refused account change; the message says why (shown to the operator)."""


@dataclass(frozen=True, slots=True)
class Staff:
    """A signed-in person as the console sees them (a `coaches` row with a console account)."""

    id: str
    name: str
    role: Role
    team: str | None
    credential: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_supervisor(self) -> bool:
        return self.role == "supervisor"

    @property
    def clinically_credentialed(self) -> bool:
        return self.credential in CLINICAL_CREDENTIALS


@dataclass(frozen=True, slots=True)
class Account:
    staff: Staff
    password_hash: str
    totp_secret: str | None
    totp_last_step: int | None
    disabled: bool

    @property
    def needs_totp(self) -> bool:
        return self.staff.role in TOTP_REQUIRED or self.totp_secret is not None


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"the password may have at most {MAX_PASSWORD_LENGTH} characters")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    """Checks a password; with no stored hash (unknown login) it spends the same time on a
    dummy hash, so response times do not tell which login names exist."""
    if stored is None:
        await asyncio.to_thread(_verify, await _dummy_hash(), password)
        return False
    return await asyncio.to_thread(_verify, stored, password)


_DUMMY: list[str] = []


async def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(await hash_password("not a password of anyone"))
    return _DUMMY[0]


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def new_totp_secret() -> str:
    return pyotp.random_base32()  # 32 base32 characters: 160 bits (RFC 4226 recommends >= 128)


def otpauth_uri(secret: str, coach_id: str) -> str:
    """The provisioning URI authenticator apps read (as a QR code or typed)."""
    return pyotp.TOTP(secret).provisioning_uri(name=coach_id, issuer_name=TOTP_ISSUER)


def accepted_totp_step(
    secret: str, code: str, now: datetime, last_step: int | None
) -> int | None:
    """The 30-second step `code` belongs to (one step of clock drift either way, RFC 6238
    section 6), or None. Steps at or before `last_step` are refused: no replay."""
    code = code.strip().replace(" ", "")
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


_ACCOUNT_SQL: Final = """
    SELECT c.id, c.name, c.role, c.team, c.credential, a.password_hash, a.totp_secret,
           a.totp_last_step, a.disabled
    FROM console_accounts a JOIN coaches c ON c.id = a.coach_id
    WHERE a.coach_id = $1"""


def _account(r: asyncpg.Record) -> Account:
    staff = Staff(r["id"], r["name"], r["role"], r["team"], r["credential"])
    return Account(staff, r["password_hash"], r["totp_secret"], r["totp_last_step"], r["disabled"])


async def load_account(conn: Connection, login: str) -> Account | None:
    row = await conn.fetchrow(_ACCOUNT_SQL, login)
    return None if row is None else _account(row)


async def create_account(
    conn: Connection, *, coach_id: str, name: str, role: Role | None, email: str | None,
    password: str, team: str | None = None, credential: str | None = None,
) -> Role:  # fmt: skip
    """Create (or update) the `coaches` row and add a console account for it; returns the
    coach's role. For a coach already on file (an onboarding import), what is not given is
    kept: a role, team or credential is never reset by omission."""
    if role is not None and role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if credential is not None and credential not in (*CLINICAL_CREDENTIALS, "none"):
        raise AccountError("credential must be RN, CDCES, RD or none")
    check_password_policy(password)
    hashed = await hash_password(password)
    async with conn.transaction():
        effective: Role = await conn.fetchval(
            """INSERT INTO coaches (id, name, role, email, team, credential)
               VALUES ($1, $2, coalesce($3, 'coach'), $4, $5, coalesce($6, 'none'))
               ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                   role = coalesce($3, coaches.role),
                   email = coalesce(excluded.email, coaches.email),
                   team = coalesce($5, coaches.team),
                   credential = coalesce($6, coaches.credential)
               RETURNING role""",
            coach_id, name, role, email, team, credential,
        )  # fmt: skip
        try:
            await conn.execute(
                "INSERT INTO console_accounts (coach_id, password_hash) VALUES ($1, $2)",
                coach_id, hashed,
            )  # fmt: skip
        except asyncpg.UniqueViolationError:
            raise AccountError(f"{coach_id} already has a console account") from None
    return effective


async def set_password(conn: Connection, coach_id: str, password: str, now: datetime) -> None:
    check_password_policy(password)
    hashed = await hash_password(password)
    done = await conn.execute(
        "UPDATE console_accounts SET password_hash = $2, password_changed_at = $3 "
        "WHERE coach_id = $1",
        coach_id, hashed, now,
    )  # fmt: skip
    if done.endswith(" 0"):
        raise AccountError(f"{coach_id} has no console account")


async def enroll_totp(conn: Connection, coach_id: str) -> str:
    """A new TOTP secret for the account (replacing any old one); returns the otpauth URI."""
    secret = new_totp_secret()
    done = await conn.execute(
        "UPDATE console_accounts SET totp_secret = $2, totp_last_step = NULL WHERE coach_id = $1",
        coach_id, secret,
    )  # fmt: skip
    if done.endswith(" 0"):
        raise AccountError(f"{coach_id} has no console account")
    return otpauth_uri(secret, coach_id)


async def set_disabled(conn: Connection, coach_id: str, disabled: bool, now: datetime) -> None:
    async with conn.transaction():
        done = await conn.execute(
            "UPDATE console_accounts SET disabled = $2 WHERE coach_id = $1", coach_id, disabled
        )
        if done.endswith(" 0"):
            raise AccountError(f"{coach_id} has no console account")
        if disabled:
            await conn.execute(
                "UPDATE console_sessions SET ended_at = $2, end_reason = 'disabled' "
                "WHERE coach_id = $1 AND ended_at IS NULL",
                coach_id, now,
            )  # fmt: skip


async def ensure_demo_login(
    pool: asyncpg.Pool, settings: Settings, coach_ids: Sequence[str] | None = None
) -> tuple[str, str]:
    """`vigil demo`'s console login: the coach with the largest caseload (among `coach_ids`,
    the demo population's coaches, when given; a new `demo-coach` when there is none) gets an
    account and a fresh random password each run, returned so the demo can print it.
    Development only: refused when VIGIL_ENV is not development."""
    if settings.env != "development":
        raise AccountError("demo logins exist only with VIGIL_ENV=development")
    password = secrets.token_urlsafe(12)
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        coach_id: str | None = await conn.fetchval(
            """SELECT c.id FROM coaches c LEFT JOIN members m ON m.coach_id = c.id
               WHERE c.role = 'coach' AND ($1::text[] IS NULL OR c.id = ANY($1::text[]))
               GROUP BY c.id ORDER BY count(m.id) DESC, c.id LIMIT 1""",
            None if coach_ids is None else list(coach_ids),
        )
        if coach_id is None:
            coach_id = "demo-coach"
            await conn.execute(
                "INSERT INTO coaches (id, name, role) VALUES ($1, 'Demo Coach', 'coach') "
                "ON CONFLICT (id) DO NOTHING",
                coach_id,
            )
        hashed = await hash_password(password)
        await conn.execute(
            """INSERT INTO console_accounts (coach_id, password_hash) VALUES ($1, $2)
               ON CONFLICT (coach_id) DO UPDATE SET password_hash = excluded.password_hash,
                   password_changed_at = $3, disabled = false""",
            coach_id, hashed, now,
        )  # fmt: skip
    return coach_id, password
