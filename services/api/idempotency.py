"""`Idempotency-Key` for POST requests: a resend with the same key gets the first reply again.

Per member and key, `api_idempotency` holds the SHA-256 of the request body and the reply. The
first request reserves the key (a row with no reply), processes, then stores its reply; a resend
with the same body gets that reply byte for byte and writes nothing; a different body under the
same key is a client bug and gets 409 `idempotency_key_reused`; a resend while the first request
is still running gets 409 `idempotency_in_progress` (retry shortly).

Replies are stored as jsonb and always rendered canonically (orjson, keys sorted), so the bytes
of a replay equal the bytes of the first reply. The body hash is over the exact bytes: the same
readings re-serialized differently count as a different body.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

import asyncpg
import orjson

from services.api.errors import BadRequestError, ConflictError, ErrorCode

log = logging.getLogger(__name__)

MAX_KEY_LENGTH: Final = 255

_RESERVE_SQL: Final = """
INSERT INTO api_idempotency (member_id, key, request_sha256) VALUES ($1, $2, $3)
ON CONFLICT (member_id, key) DO UPDATE
    SET request_sha256 = excluded.request_sha256, created_at = now()
    WHERE api_idempotency.response IS NULL AND api_idempotency.created_at < now() - $4::interval
RETURNING true
"""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes


def canonical_json(payload: object) -> bytes:
    """The one rendering of a reply: the first response and every replay use it."""
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


def request_digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def check_key(key: str) -> str:
    """An Idempotency-Key is 1-255 visible ASCII characters (a UUID is the usual choice)."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all("!" <= ch <= "~" for ch in key):
        raise BadRequestError(
            ErrorCode.INVALID_IDEMPOTENCY_KEY,
            "Idempotency-Key must be 1-255 visible ASCII characters",
        )
    return key


async def reserve(
    pool: asyncpg.Pool, member_id: str, key: str, digest: bytes, stale_after: timedelta
) -> Reply | None:
    """Reserve `key` for this request. Returns None when this request owns it (process, then
    `complete` or `release`), or the stored reply of an earlier identical request."""
    for _ in range(3):  # a reservation released between our two statements: look again
        if await pool.fetchval(_RESERVE_SQL, member_id, key, digest, stale_after):
            return None
        row = await pool.fetchrow(
            "SELECT request_sha256, status, response FROM api_idempotency "
            "WHERE member_id = $1 AND key = $2",
            member_id,
            key,
        )
        if row is None:
            continue
        if bytes(row["request_sha256"]) != digest:
            raise ConflictError(
                ErrorCode.IDEMPOTENCY_KEY_REUSED,
                "this Idempotency-Key was used with a different request body; "
                "use a new key for a new request",
            )
        if row["response"] is None:
            break
        return Reply(row["status"], canonical_json(orjson.loads(row["response"])))
    raise ConflictError(
        ErrorCode.IDEMPOTENCY_IN_PROGRESS,
        "a request with this Idempotency-Key is still being processed; retry shortly",
        headers={"Retry-After": "1"},
    )


async def complete(pool: asyncpg.Pool, member_id: str, key: str, reply: Reply) -> None:
    await pool.execute(
        "UPDATE api_idempotency SET status = $3, response = $4::jsonb "
        "WHERE member_id = $1 AND key = $2",
        member_id,
        key,
        reply.status,
        reply.body.decode("utf-8"),
    )


async def release(pool: asyncpg.Pool, member_id: str, key: str) -> None:
    """Give a reservation up after a failure, so that a retry is processed afresh."""
    try:
        await pool.execute(
            "DELETE FROM api_idempotency WHERE member_id = $1 AND key = $2 AND response IS NULL",
            member_id,
            key,
        )
    except (OSError, asyncpg.PostgresError) as exc:  # it goes stale and is taken over later
        log.warning("could not release an idempotency reservation: %s", type(exc).__name__)
