"""The queue as one person sees it, and an alert's working page.

Order is `alerting.lifecycle.QUEUE_ORDER` (live before retrospective, tier, SLA deadline), over
the alerts in the person's scope (access.ALERT_VISIBLE). Rechecks that came due are listed above
the queue for the coach who holds them: a follow-up timer brings its alert back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from alerting.lifecycle import QUEUE_ORDER
from coach_console.access import ALERT_VISIBLE, MEMBER_JOIN, MEMBER_VISIBLE, scope_args
from coach_console.accounts import Staff
from services.storage.db import Connection

RULE_LABELS = {
    "hypoglycemia": "Low glucose", "hyperglycemia": "High glucose",
    "recurring_hypoglycemia": "Recurring lows", "bp_severe": "Severe blood pressure",
    "hypotension": "Low blood pressure", "bp_uncontrolled": "Uncontrolled blood pressure",
    "irregular_pulse": "Irregular pulse", "weight_gain_rapid": "Rapid weight gain",
    "weight_data_quality": "Weight data quality", "no_recent_readings": "No recent readings",
    "glucose_trend_rising": "Glucose trend rising",
}  # fmt: skip


def rule_label(rule: str) -> str:
    return RULE_LABELS.get(rule, rule.replace("_", " ").capitalize())


@dataclass(frozen=True, slots=True)
class QueueItem:
    id: int
    member_id: str
    member_name: str | None  # None: visible through coverage only (name after claiming)
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
    holder_name: str | None
    escalated: bool
    followup_due_at: datetime | None
    #: A claimed critical alert's first call is due by then (until one is recorded).
    outreach_due_at: datetime | None

    @property
    def label(self) -> str:
        return rule_label(self.rule)


_ITEM_COLS = f"""a.id, a.member_id, CASE WHEN {MEMBER_VISIBLE} THEN m.name END AS member_name,
    a.rule, a.tier, a.status, a.retrospective, a.opened_at, a.sla_due_at, a.count,
    a.latest_value, a.worst_value, a.unit, a.acknowledged_by, hc.name AS holder_name,
    a.escalated_at IS NOT NULL AS escalated,
    (SELECT min(f.due_at) FROM alert_followups f
     WHERE f.alert_id = a.id AND f.done_at IS NULL) AS followup_due_at,
    CASE WHEN a.status = 'acknowledged' AND NOT EXISTS (
        SELECT 1 FROM outreach o WHERE o.alert_id = a.id) THEN a.first_outreach_due_at
    END AS outreach_due_at"""


async def visible_queue(conn: Connection, staff: Staff, limit: int) -> list[QueueItem]:
    rows = await conn.fetch(
        f"""SELECT * FROM (
                SELECT {_ITEM_COLS}
                FROM alerts a JOIN {MEMBER_JOIN} ON m.id = a.member_id
                LEFT JOIN coaches hc ON hc.id = a.acknowledged_by
                WHERE a.status IN ('open', 'acknowledged') AND {ALERT_VISIBLE}) q
            ORDER BY {QUEUE_ORDER} LIMIT $4""",
        *scope_args(staff), limit,
    )  # fmt: skip
    return [QueueItem(**dict(r)) for r in rows]


async def rechecks_due(conn: Connection, staff: Staff, now: datetime) -> list[QueueItem]:
    rows = await conn.fetch(
        f"""SELECT {_ITEM_COLS}
            FROM alert_followups f JOIN alerts a ON a.id = f.alert_id
            JOIN {MEMBER_JOIN} ON m.id = a.member_id
            LEFT JOIN coaches hc ON hc.id = a.acknowledged_by
            WHERE f.coach_id = $1 AND f.done_at IS NULL AND f.due_at <= $4
              AND a.status = 'acknowledged'
            ORDER BY f.due_at""",
        *scope_args(staff), now,
    )  # fmt: skip
    return [QueueItem(**dict(r)) for r in rows]


async def alert_item(conn: Connection, staff: Staff, alert_id: int) -> QueueItem | None:
    row = await conn.fetchrow(
        f"""SELECT {_ITEM_COLS}
            FROM alerts a JOIN {MEMBER_JOIN} ON m.id = a.member_id
            LEFT JOIN coaches hc ON hc.id = a.acknowledged_by
            WHERE a.id = $4 AND {ALERT_VISIBLE}""",
        *scope_args(staff), alert_id,
    )  # fmt: skip
    return None if row is None else QueueItem(**dict(row))


async def alert_history(conn: Connection, alert_id: int) -> dict[str, list[dict[str, Any]]]:
    """Notes, outreach and lifecycle events of one alert, oldest first."""
    notes = await conn.fetch(
        "SELECT n.at, n.body, c.name AS coach FROM alert_notes n JOIN coaches c "
        "ON c.id = n.coach_id WHERE n.alert_id = $1 ORDER BY n.at, n.id",
        alert_id,
    )
    outreach = await conn.fetch(
        "SELECT o.started_at, o.mode, o.outcome, o.duration_minutes, o.note, c.name AS coach "
        "FROM outreach o JOIN coaches c ON c.id = o.coach_id WHERE o.alert_id = $1 "
        "ORDER BY o.started_at, o.id",
        alert_id,
    )
    events = await conn.fetch(
        "SELECT e.at, e.kind, coalesce(c.name, e.actor) AS actor FROM alert_events e "
        "LEFT JOIN coaches c ON c.id = e.actor WHERE e.alert_id = $1 ORDER BY e.at, e.id",
        alert_id,
    )
    followups = await conn.fetch(
        "SELECT due_at, done_at FROM alert_followups WHERE alert_id = $1 ORDER BY created_at",
        alert_id,
    )
    return {
        "notes": [dict(r) for r in notes], "outreach": [dict(r) for r in outreach],
        "events": [dict(r) for r in events], "followups": [dict(r) for r in followups],
    }  # fmt: skip
