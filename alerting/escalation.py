"""Escalation: alerts nobody acts on in time, and members nobody can reach.

- SLA: an open (unclaimed) alert past `sla_due_at` is escalated once: `escalated_at`, an
  'escalated' event and a NOTIFY for the consoles. A critical one goes to the supervisor of the
  member's coach's team (recorded in the event) and, when live, the supervisor is paged. The SLA
  is met at its deadline exactly: escalation happens only once `now` is past it.
- First outreach: a claimed critical alert with no outreach recorded by `first_outreach_due_at`
  (claim time + `first_outreach_minutes`) gets a 'first_outreach_overdue' event and is escalated
  the same way. The console should record an outreach when the call starts, not when it ends.
- Unreachable: after a critical low, `unreachable_attempts` outreach attempts without an answer
  within `unreachable_window_minutes` (client policy, default 2 within 15 minutes), with no
  answered contact since, notify the member's emergency contact: one `notifications` row per
  alert (a unique key), sent through the notifier and retried while the provider fails.

Every change is guarded by the row it changes (`escalated_at IS NULL`, a re-check after the
row lock, the unique notification key), so several scheduler processes never double it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from alerting.content import Content
from alerting.events import add_event, jsonb, notify
from alerting.notifier import Notice, Notifier
from alerting.paging import AlertRef, PageOrder, order_pages, page_text, send_pages
from alerting.paging import supervisor_target as find_supervisor
from alerting.policy import AlertPolicy
from services.storage.db import Connection

log = logging.getLogger(__name__)

#: An emergency-contact notice is tried this many times, a minute apart, before it is 'failed'.
NOTIFY_ATTEMPTS: Final = 5
RETRY_AFTER: Final = timedelta(minutes=1)
#: Outreach older than this no longer makes a member "unreachable now".
UNREACHABLE_LOOKBACK: Final = timedelta(days=1)
_BATCH: Final = 500


async def escalate(
    conn: Connection, alert: AlertRef, *, reason: str, live: bool, now: datetime,
    content: Content, situation: str, detail: dict[str, Any], **values: object,
) -> list[PageOrder]:  # fmt: skip
    """Mark `alert` escalated (in the caller's transaction); the supervisor's page to send."""
    critical = alert.tier == "critical"
    supervisor = await find_supervisor(conn, alert.member_id) if critical else None
    await conn.execute(
        "UPDATE alerts SET escalated_at = coalesce(escalated_at, $2), updated_at = $2 "
        "WHERE id = $1",
        alert.id, now,
    )  # fmt: skip
    await add_event(conn, alert.id, alert.member_id, alert.rule, "escalated",
                    {"reason": reason, "to": "supervisor" if critical else "queue",
                     "supervisor": supervisor.coach_id if supervisor else None, **detail},
                    at=now)  # fmt: skip
    await notify(conn, alert.id, alert.member_id, alert.rule, alert.tier, "escalated")
    if critical and supervisor is None:
        log.error("critical alert %d escalated but its team has no supervisor", alert.id)
    if not (critical and live and supervisor):
        return []
    body = page_text(content, situation, alert, **values)
    return await order_pages(conn, alert, [supervisor], "escalation", now, body)


async def escalate_missed_sla(
    conn: Connection, notifier: Notifier, content: Content, now: datetime
) -> int:
    orders: list[PageOrder] = []
    async with conn.transaction():
        rows = await conn.fetch(
            """SELECT id, member_id, rule, tier, retrospective, opened_at, sla_due_at
               FROM alerts WHERE status = 'open' AND escalated_at IS NULL AND sla_due_at < $1
               ORDER BY sla_due_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
            now, _BATCH,
        )  # fmt: skip
        for row in rows:
            orders += await escalate(
                conn, _ref(row), reason="sla_missed", live=not row["retrospective"], now=now,
                content=content, situation="escalation_sla",
                detail={"sla_due_at": row["sla_due_at"].isoformat()},
            )  # fmt: skip
    await send_pages(conn, notifier, orders, now)
    return len(rows)


async def escalate_first_outreach(
    conn: Connection, notifier: Notifier, content: Content, now: datetime
) -> int:
    orders: list[PageOrder] = []
    done = 0
    async with conn.transaction():
        rows = await conn.fetch(
            """SELECT a.id, a.member_id, a.rule, a.tier, a.retrospective, a.opened_at,
                      a.acknowledged_by, a.first_outreach_due_at
               FROM alerts a
               WHERE a.status = 'acknowledged' AND a.tier = 'critical'
                 AND a.first_outreach_due_at < $1
                 AND NOT EXISTS (SELECT 1 FROM outreach o WHERE o.alert_id = a.id)
                 AND NOT EXISTS (SELECT 1 FROM alert_events e WHERE e.alert_id = a.id
                                 AND e.kind = 'first_outreach_overdue')
               ORDER BY a.first_outreach_due_at LIMIT $2 FOR UPDATE OF a SKIP LOCKED""",
            now, _BATCH,
        )  # fmt: skip
        for row in rows:
            # Re-checked after the row lock, in a statement of its own (a fresh snapshot): an
            # outreach or another process's verdict committed meanwhile counts.
            if await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM outreach WHERE alert_id = $1) OR EXISTS (SELECT 1 "
                "FROM alert_events WHERE alert_id = $1 AND kind = 'first_outreach_overdue')",
                row["id"],
            ):
                continue
            alert = _ref(row)
            coach = row["acknowledged_by"]
            due = row["first_outreach_due_at"].isoformat()
            await add_event(conn, alert.id, alert.member_id, alert.rule, "first_outreach_overdue",
                            {"coach": coach, "due_at": due}, at=now)  # fmt: skip
            orders += await escalate(
                conn, alert, reason="first_outreach_overdue", live=not row["retrospective"],
                now=now, content=content, situation="escalation_first_outreach",
                detail={"coach": coach, "due_at": due}, coach=coach,
            )  # fmt: skip
            done += 1
    await send_pages(conn, notifier, orders, now)
    return done


def unreachable(
    attempts: Sequence[tuple[datetime, str]], needed: int, window: timedelta
) -> datetime | None:
    """When the member became unreachable: `needed` consecutive 'no_answer' attempts whose
    starts lie within `window`, with no other outcome (an answer, a 911 call) after them.
    None if they are not unreachable now."""
    run: list[datetime] = []
    since: datetime | None = None
    for at, outcome in sorted(attempts):
        if outcome != "no_answer":
            run, since = [], None  # reached (or handed to a clinician / 911): not unreachable
            continue
        run.append(at)
        if since is None and len(run) >= needed and run[-1] - run[-needed] <= window:
            since = at
    return since


async def notify_unreachable(
    conn: Connection, notifier: Notifier, content: Content, now: datetime
) -> int:
    """Open an emergency-contact notification for each newly unreachable member, then send
    every pending one. Returns the notices the provider accepted."""
    rows = await conn.fetch(
        """SELECT a.id, a.member_id, a.rule, a.tier, a.opened_at, c.alert_policy,
                  m.emergency_contact
           FROM alerts a JOIN members m ON m.id = a.member_id JOIN clients c ON c.id = m.client_id
           WHERE a.rule = 'hypoglycemia' AND a.tier = 'critical'
             AND EXISTS (SELECT 1 FROM outreach o WHERE o.alert_id = a.id
                         AND o.outcome = 'no_answer' AND o.started_at > $1)
             AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.alert_id = a.id
                             AND n.kind = 'emergency_contact')""",
        now - UNREACHABLE_LOOKBACK,
    )
    for row in rows:
        policy = AlertPolicy.from_json(jsonb(row["alert_policy"]))
        attempts = await conn.fetch(
            "SELECT started_at, outcome FROM outreach WHERE alert_id = $1 AND started_at <= $2",
            row["id"], now,
        )  # fmt: skip
        since = unreachable([(a["started_at"], a["outcome"]) for a in attempts],
                            policy.unreachable_attempts,
                            timedelta(minutes=policy.unreachable_window_minutes))  # fmt: skip
        if since is None:
            continue
        phone = jsonb(row["emergency_contact"]).get("phone")
        status = "pending" if phone else "no_contact"
        alert = _ref(row)
        async with conn.transaction():
            notification_id = await conn.fetchval(
                """INSERT INTO notifications (alert_id, member_id, kind, channel, status,
                       created_at)
                   VALUES ($1, $2, 'emergency_contact', 'sms', $3, $4)
                   ON CONFLICT (alert_id, kind) DO NOTHING RETURNING id""",
                alert.id, alert.member_id, status, now,
            )  # fmt: skip
            if notification_id is None:
                continue  # another process got there first
            await add_event(conn, alert.id, alert.member_id, alert.rule, "member_unreachable",
                            {"notification": notification_id, "since": since.isoformat(),
                             "emergency_contact": status}, at=now)  # fmt: skip
            await notify(conn, alert.id, alert.member_id, alert.rule, alert.tier,
                         "member_unreachable")  # fmt: skip
        if not phone:
            log.error("member of alert %d is unreachable and has no emergency contact", alert.id)
    return await send_notifications(conn, notifier, content, now)


async def send_notifications(
    conn: Connection, notifier: Notifier, content: Content, now: datetime
) -> int:
    sent = 0
    pending = await conn.fetch(
        "SELECT id FROM notifications WHERE status = 'pending' AND (last_attempt_at IS NULL "
        "OR last_attempt_at <= $1) ORDER BY id LIMIT $2",
        now - RETRY_AFTER, _BATCH,
    )  # fmt: skip
    for p in pending:
        async with conn.transaction():
            row = await conn.fetchrow(
                """SELECT n.id, n.alert_id, n.member_id, n.channel, n.attempts, a.rule, a.tier,
                          m.name, m.language, m.emergency_contact
                   FROM notifications n JOIN alerts a ON a.id = n.alert_id
                   JOIN members m ON m.id = n.member_id
                   WHERE n.id = $1 AND n.status = 'pending'
                     AND (n.last_attempt_at IS NULL OR n.last_attempt_at <= $2)
                   FOR UPDATE OF n SKIP LOCKED""",
                p["id"], now - RETRY_AFTER,
            )  # fmt: skip
            if row is None:
                continue
            _, body = content["emergency_contact"].render(
                row["language"], {"member_name": row["name"]}
            )
            phone = str(jsonb(row["emergency_contact"]).get("phone", ""))
            delivery = await notifier.send(
                Notice(phone, row["channel"], body, f"notification-{row['id']}")
            )
            attempts = row["attempts"] + 1
            status = "sent" if delivery.ok else "pending"
            if not delivery.ok and attempts >= NOTIFY_ATTEMPTS:
                status = "failed"
            await conn.execute(
                """UPDATE notifications SET status = $2, attempts = $3,
                       last_attempt_at = $4::timestamptz, provider_status = $6,
                       sent_at = CASE WHEN $5 THEN $4::timestamptz END,
                       provider_id = $7
                   WHERE id = $1""",
                row["id"], status, attempts, now, delivery.ok, delivery.status,
                delivery.provider_id,
            )  # fmt: skip
            if status == "pending":
                continue  # retried in a minute; the event comes with the verdict
            kind = "emergency_contact_notified" if delivery.ok else "emergency_contact_failed"
            await add_event(conn, row["alert_id"], row["member_id"], row["rule"], kind,
                            {"notification": row["id"], "status": delivery.status,
                             "attempts": attempts}, at=now)  # fmt: skip
            await notify(conn, row["alert_id"], row["member_id"], row["rule"], row["tier"], kind)
            sent += delivery.ok
    return sent


def _ref(row: Any) -> AlertRef:
    return AlertRef(row["id"], row["member_id"], row["rule"], row["tier"], row["opened_at"])
