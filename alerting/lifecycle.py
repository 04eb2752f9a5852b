"""Alert lifecycle: open -> acknowledged (claimed by one coach) -> resolved; the queue order.

"Active" means open or acknowledged. Claiming is a conditional UPDATE, so two coaches can never
claim the same alert. Every change is an `alert_events` row and a NOTIFY for the consoles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg

from alerting.engine import NOTIFY_CHANNEL
from alerting.policy import AlertPolicy
from services.storage.db import Connection

OUTCOMES: Final = frozenset({
    "reached_member", "treated_per_protocol", "escalated_to_clinician", "emergency_services",
    "false_reading", "no_action_needed", "unreachable",
})  # fmt: skip

#: Queue order: live before retrospective, then tier, then the SLA deadline.
QUEUE_ORDER: Final = (
    "retrospective, CASE tier WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 "
    "ELSE 3 END, sla_due_at, id"
)


class AlertConflict(Exception):  # noqa: N818 - the user-facing verdict "already claimed"
    pass


@dataclass(frozen=True, slots=True)
class AlertRow:
    id: int
    member_id: str
    rule: str
    tier: str
    status: str
    retrospective: bool
    opened_at: datetime
    sla_due_at: datetime
    count: int
    latest_value: Decimal | None
    worst_value: Decimal | None
    unit: str | None
    acknowledged_by: str | None
    escalated: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "member_id": self.member_id, "rule": self.rule, "tier": self.tier,
            "status": self.status, "retrospective": self.retrospective,
            "opened_at": self.opened_at.isoformat(), "sla_due_at": self.sla_due_at.isoformat(),
            "count": self.count,
            "latest_value": None if self.latest_value is None else str(self.latest_value),
            "worst_value": None if self.worst_value is None else str(self.worst_value),
            "unit": self.unit, "acknowledged_by": self.acknowledged_by,
            "escalated": self.escalated,
        }  # fmt: skip


_COLS: Final = (
    "id, member_id, rule, tier, status, retrospective, opened_at, sla_due_at, count, "
    "latest_value, worst_value, unit, acknowledged_by, escalated_at IS NOT NULL AS escalated"
)


async def queue(
    conn: Connection | asyncpg.Pool, *, status: str = "active", limit: int = 500
) -> list[AlertRow]:
    where = {
        "active": "status IN ('open', 'acknowledged')",
        "open": "status = 'open'",
        "acknowledged": "status = 'acknowledged'",
        "resolved": "status = 'resolved'",
        "all": "true",
    }[status]
    rows = await conn.fetch(
        f"SELECT {_COLS} FROM alerts WHERE {where} ORDER BY {QUEUE_ORDER} LIMIT $1", limit
    )
    return [AlertRow(**dict(r)) for r in rows]


async def claim(
    conn: Connection, alert_id: int, coach_id: str, now: datetime | None = None
) -> None:
    """Acknowledge an open alert for `coach_id`; AlertConflict if someone else has it."""
    now = now or datetime.now(UTC)
    async with conn.transaction():
        row = await conn.fetchrow(
            """UPDATE alerts a SET status = 'acknowledged', acknowledged_at = $3,
                   acknowledged_by = $2, updated_at = $3,
                   first_outreach_due_at = CASE WHEN tier = 'critical'
                       THEN $3::timestamptz + make_interval(mins => $4) END
               WHERE id = $1 AND status = 'open'
               RETURNING member_id, rule, tier""",
            alert_id, coach_id, now, await _first_outreach_minutes(conn, alert_id),
        )  # fmt: skip
        if row is None:
            holder = await conn.fetchrow(
                "SELECT status, acknowledged_by FROM alerts WHERE id = $1", alert_id
            )
            if holder is None:
                raise AlertConflict(f"no alert {alert_id}")
            status, holder_id = holder["status"], holder["acknowledged_by"]
            raise AlertConflict(f"alert {alert_id} is {status} ({holder_id})")
        await _change(conn, alert_id, row, "acknowledged", coach_id)


async def resolve(
    conn: Connection, alert_id: int, coach_id: str, outcome: str, note: str = "",
    now: datetime | None = None,
) -> None:  # fmt: skip
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; one of {sorted(OUTCOMES)}")
    now = now or datetime.now(UTC)
    async with conn.transaction():
        row = await conn.fetchrow(
            """UPDATE alerts SET status = 'resolved', resolved_at = $3, resolved_by = $2,
                   outcome = $4, note = $5, updated_at = $3
               WHERE id = $1 AND status IN ('open', 'acknowledged')
               RETURNING member_id, rule, tier""",
            alert_id, coach_id, now, outcome, note,
        )  # fmt: skip
        if row is None:
            raise AlertConflict(f"alert {alert_id} is not active")
        await _change(conn, alert_id, row, "resolved", coach_id, {"outcome": outcome})


async def _first_outreach_minutes(conn: Connection, alert_id: int) -> int:
    doc = await conn.fetchval(
        "SELECT c.alert_policy FROM alerts a JOIN members m ON m.id = a.member_id "
        "JOIN clients c ON c.id = m.client_id WHERE a.id = $1",
        alert_id,
    )
    policy = AlertPolicy.from_json(json.loads(doc) if isinstance(doc, str) else doc)
    return policy.first_outreach_minutes


async def _change(
    conn: Connection, alert_id: int, row: asyncpg.Record, kind: str, actor: str,
    detail: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO alert_events (alert_id, member_id, rule, kind, actor, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        alert_id, row["member_id"], row["rule"], kind, actor, json.dumps(detail or {}),
    )  # fmt: skip
    payload = {"id": alert_id, "member_id": row["member_id"], "rule": row["rule"],
               "tier": row["tier"], "event": kind}  # fmt: skip
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, json.dumps(payload))
