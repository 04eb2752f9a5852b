"""Bearer tokens of the member app: issue, authenticate, revoke.

A token is `vgl_` + the URL-safe base64 of 32 random bytes from `secrets` (256 bits: guessing is
hopeless, so no lookup rate limit is needed). Only the SHA-256 of those bytes is stored
(`app_tokens.token_hash`); a plain hash suffices because the input is random, not a password.
The prefix lets secret scanners recognise a leaked token. A token is bound to one member, which
is how every `/v1/me/...` route knows whose data to read: no URL names a member.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import asyncpg

from services.api.errors import ErrorCode, UnauthorizedError
from services.storage.db import Connection

PREFIX: Final = "vgl_"
_TOKEN_BYTES: Final = 32
_ENCODED_LENGTH: Final = 43  # base64 of 32 bytes, unpadded


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AuthedMember:
    """The member a request's token is bound to."""

    member_id: str
    timezone: str
    token_hash: bytes


def new_token() -> tuple[str, bytes]:
    """A fresh token and the hash to store."""
    raw = secrets.token_bytes(_TOKEN_BYTES)
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii"), _digest(raw)


def token_hash(token: str) -> bytes | None:
    """The stored hash of a token as presented, or None when it cannot be one of ours."""
    if not token.startswith(PREFIX) or len(token) != len(PREFIX) + _ENCODED_LENGTH:
        return None
    try:
        raw = base64.b64decode(token[len(PREFIX) :] + "=", altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
    return _digest(raw) if len(raw) == _TOKEN_BYTES else None


def _digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


async def issue_token(conn: Connection, member_id: str, ttl: timedelta) -> IssuedToken:
    token, digest = new_token()
    expires_at = await conn.fetchval(
        "INSERT INTO app_tokens (token_hash, member_id, expires_at) VALUES ($1, $2, now() + $3) "
        "RETURNING expires_at",
        digest,
        member_id,
        ttl,
    )
    return IssuedToken(token, expires_at)


async def authenticate(pool: asyncpg.Pool, token: str | None) -> AuthedMember:
    """The member bound to a live token, or `Unauthorized` (missing, unknown, expired, revoked)."""
    if not token:
        raise UnauthorizedError(ErrorCode.UNAUTHORIZED, "a bearer token is required")
    digest = token_hash(token)
    row = None
    if digest is not None:
        row = await pool.fetchrow(
            "SELECT t.member_id, m.timezone, t.revoked_at IS NOT NULL AS revoked, "
            "       t.expires_at <= now() AS expired "
            "FROM app_tokens t JOIN members m ON m.id = t.member_id WHERE t.token_hash = $1",
            digest,
        )
    if row is None or digest is None:
        raise UnauthorizedError(ErrorCode.UNAUTHORIZED, "the bearer token is not valid")
    if row["revoked"]:
        raise UnauthorizedError(ErrorCode.TOKEN_REVOKED, "the bearer token was revoked")
    if row["expired"]:
        raise UnauthorizedError(ErrorCode.TOKEN_EXPIRED, "the bearer token has expired")
    return AuthedMember(row["member_id"], row["timezone"], digest)


async def revoke_token(pool: asyncpg.Pool, digest: bytes) -> bool:
    """Revoke one token. Returns False when it was already revoked."""
    status = await pool.execute(
        "UPDATE app_tokens SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
        digest,
    )
    return status != "UPDATE 0"


async def revoke_member_tokens(pool: asyncpg.Pool, member_id: str) -> int:
    """Operator action: revoke every live token of a member (lost phone, member left the
    program). Returns how many live (unexpired) tokens were revoked; the member's app must sign
    up again."""
    status = await pool.execute(
        "UPDATE app_tokens SET revoked_at = now() "
        "WHERE member_id = $1 AND revoked_at IS NULL AND expires_at > now()",
        member_id,
    )
    return int(status.rsplit(" ", 1)[1])
