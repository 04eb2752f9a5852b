"""The audit log: who saw or did what, when (HIPAA 45 CFR 164.312(b) audit controls).

Every view of a member's data and every action in the console is one `audit_log` row, written in
the same transaction as the action where there is one. CLI commands that read member data record
their reads with the same `audit` function. The table is append-only in the database itself:
UPDATE, DELETE and TRUNCATE raise (migration 0013_console.sql).

`detail` says what was seen or done (sections, fields, ids, outcome codes), never the values: the
log must not become a second copy of the record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from services.storage.db import Connection

_ACTION: Final = re.compile(r"^[a-z][a-z0-9_.]{1,63}$")


async def audit(
    conn: Connection | asyncpg.Pool, actor: str, action: str, member_id: str | None,
    detail: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Record one audit entry. `actor` is a coach id (or `cli:<user>` for commands), `action`
    a dotted lower-case name such as `member.view` or `alert.claim`."""
    if not _ACTION.match(action):
        raise ValueError(f"audit action {action!r} must be a dotted lower-case name")
    await conn.execute(
        "INSERT INTO audit_log (actor, action, member_id, detail) VALUES ($1, $2, $3, $4)",
        actor[:200], action, member_id, json.dumps(detail or {}, default=str, sort_keys=True),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    member_id: str | None
    detail: dict[str, Any]


async def entries(
    conn: Connection | asyncpg.Pool, *, actor: str | None = None, member_id: str | None = None,
    action: str | None = None, before_id: int | None = None, limit: int = 100,
) -> list[AuditEntry]:  # fmt: skip
    """Newest first, filtered; `before_id` pages back."""
    rows = await conn.fetch(
        """SELECT id, at, actor, action, member_id, detail FROM audit_log
           WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR member_id = $2)
             AND ($3::text IS NULL OR left(action, length($3)) = $3)
             AND ($4::bigint IS NULL OR id < $4)
           ORDER BY id DESC LIMIT $5""",
        actor, member_id, action, before_id, limit,
    )  # fmt: skip
    return [
        AuditEntry(r["id"], r["at"], r["actor"], r["action"], r["member_id"],
                   json.loads(r["detail"]))
        for r in rows
    ]
