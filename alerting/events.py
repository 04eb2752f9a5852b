"""Alert history rows and console notifications for the time-driven modules.

The same `alert_events` rows and `vigil_alerts` NOTIFY payloads as the engine and the lifecycle
write (alerting/engine.py keeps its own private copies; this is the public one for new code), so a
console sees a page or an escalation exactly as it sees a claim. Payloads carry ids, never PHI.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final

from alerting.engine import NOTIFY_CHANNEL
from services.storage.db import Connection

#: The actor recorded on events the scheduler causes (coaches are recorded by their id).
SCHEDULER: Final = "scheduler"


async def add_event(
    conn: Connection, alert_id: int | None, member_id: str, rule: str, kind: str,
    detail: dict[str, Any], *, at: datetime, actor: str | None = SCHEDULER,
) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO alert_events (alert_id, member_id, rule, at, kind, actor, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        alert_id, member_id, rule, at, kind, actor, json.dumps(detail, default=str),
    )  # fmt: skip


def jsonb(value: Any) -> dict[str, Any]:
    """A jsonb column as asyncpg returns it (text without a codec) -> a dict ({} otherwise)."""
    doc = json.loads(value) if isinstance(value, str) else value
    return doc if isinstance(doc, dict) else {}


async def notify(
    conn: Connection, alert_id: int, member_id: str, rule: str, tier: str, event: str
) -> None:
    """Delivered to every LISTENing process when the caller's transaction commits."""
    payload = {"id": alert_id, "member_id": member_id, "rule": rule, "tier": tier, "event": event}
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, json.dumps(payload))
