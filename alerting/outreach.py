"""Outreach: a coach's attempt to reach a member (a call, a video visit, an SMS, a voicemail).

The coach console records them with `record_outreach`; the scheduler reads them:
- a claimed critical alert needs a first outreach by `first_outreach_due_at`
  (alerting/escalation.py, `first_outreach_overdue`);
- `unreachable_attempts` attempts without an answer within `unreachable_window_minutes` after a
  critical low notify the member's emergency contact.
Recording one announces it on `vigil_alerts` (event `outreach_recorded`), which also wakes the
scheduler, so an unreachable member's contact is notified within seconds, not at the next tick.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Final, Literal

from alerting.errors import OutreachRejected
from alerting.events import add_event, notify
from services.storage.db import Connection

Mode = Literal["phone_call", "video", "sms", "voicemail"]
Outcome = Literal["reached", "no_answer", "escalated_to_clinician", "emergency_services"]
MODES: Final[frozenset[str]] = frozenset({"phone_call", "video", "sms", "voicemail"})
OUTCOMES: Final[frozenset[str]] = frozenset(
    {"reached", "no_answer", "escalated_to_clinician", "emergency_services"}
)


async def record_outreach(
    conn: Connection, *, member_id: str, coach_id: str, mode: str, outcome: str,
    started_at: datetime, duration_minutes: Decimal = Decimal(0), note: str = "",
    alert_id: int | None = None,
) -> int:  # fmt: skip
    """Store one outreach attempt and return its id; OutreachRejected names what is wrong."""
    if mode not in MODES:
        raise OutreachRejected("unknown_mode", "mode", f"one of {sorted(MODES)}")
    if outcome not in OUTCOMES:
        raise OutreachRejected("unknown_outcome", "outcome", f"one of {sorted(OUTCOMES)}")
    if duration_minutes < 0:
        raise OutreachRejected("negative_duration", "duration_minutes", "must be >= 0")
    async with conn.transaction():
        alert = None
        if alert_id is not None:
            alert = await conn.fetchrow(
                "SELECT member_id, rule, tier FROM alerts WHERE id = $1", alert_id
            )
            if alert is None:
                raise OutreachRejected("unknown_alert", "alert_id", f"no alert {alert_id}")
            if alert["member_id"] != member_id:
                raise OutreachRejected("wrong_member", "alert_id",
                                       f"alert {alert_id} is another member's")  # fmt: skip
        outreach_id: int = await conn.fetchval(
            """INSERT INTO outreach (alert_id, member_id, coach_id, mode, outcome, started_at,
                   duration_minutes, note)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
            alert_id, member_id, coach_id, mode, outcome, started_at, duration_minutes, note,
        )  # fmt: skip
        if alert is not None and alert_id is not None:
            await add_event(conn, alert_id, member_id, alert["rule"], "outreach",
                            {"outreach_id": outreach_id, "mode": mode, "outcome": outcome},
                            at=started_at, actor=coach_id)  # fmt: skip
            await notify(conn, alert_id, member_id, alert["rule"], alert["tier"],
                         "outreach_recorded")  # fmt: skip
    return outreach_id
