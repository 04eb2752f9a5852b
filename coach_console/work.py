"""What coaches do with alerts: claim, notes, outreach, follow-up timers, resolve, hand-off.

The console acts through the alerting services, not around them: claiming and resolving go
through `alerting.lifecycle` (a conditional UPDATE, so two coaches can never claim one alert),
outreach through `alerting.outreach.record_outreach` (which the scheduler reads for first-call
deadlines and unreachable members), history rows and notifications through `alerting.events`.
Each action is one transaction with its audit entry; every change NOTIFYs `vigil_alerts` on
commit with the usual payload (ids and an event name).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from alerting import events, lifecycle, outreach
from alerting.errors import OutreachRejected
from coach_console.access import AlertScope, require_holder
from coach_console.accounts import Staff
from coach_console.audit import audit
from coach_console.errors import Conflict, InvalidInput, Reason
from services.storage.db import Connection, Pool

# Labels for the codes `alerting.outreach` accepts (checked below: the same sets).
OUTREACH_MODES: Final = {
    "phone_call": "Phone call", "video": "Video", "sms": "SMS", "voicemail": "Voicemail",
}  # fmt: skip
OUTREACH_OUTCOMES: Final = {
    "reached": "Reached", "no_answer": "No answer",
    "escalated_to_clinician": "Escalated to clinician", "emergency_services": "Emergency services",
}  # fmt: skip
RESOLVE_OUTCOMES: Final = {
    "reached_member": "Reached member", "treated_per_protocol": "Treated per protocol",
    "escalated_to_clinician": "Escalated to clinician", "emergency_services": "Emergency services",
    "false_reading": "False reading", "no_action_needed": "No action needed",
    "unreachable": "Unreachable",
}  # fmt: skip
# The alerting services own the codes; the console only labels them.
assert set(RESOLVE_OUTCOMES) == lifecycle.OUTCOMES  # noqa: S101
assert set(OUTREACH_MODES) == outreach.MODES  # noqa: S101
assert set(OUTREACH_OUTCOMES) == outreach.OUTCOMES  # noqa: S101
#: Recheck choices in minutes: ADA 2025 asks for a recheck 15 minutes after treating a low.
FOLLOWUP_MINUTES: Final = (5, 10, 15, 30, 60, 120, 240)
MAX_OUTREACH_MINUTES: Final = 600
MAX_NOTE: Final = 4000


async def _event(
    conn: Connection, scope: AlertScope, kind: str, actor: str, detail: dict[str, Any],
    now: datetime, *, announce: bool = True,
) -> None:  # fmt: skip
    await events.add_event(conn, scope.id, scope.member_id, scope.rule, kind, detail, at=now,
                           actor=actor)  # fmt: skip
    if announce:
        await events.notify(conn, scope.id, scope.member_id, scope.rule, scope.tier, kind)


async def claim(conn: Connection, staff: Staff, scope: AlertScope, now: datetime) -> None:
    if scope.status != "open":
        holder = "you" if scope.acknowledged_by == staff.id else "another coach"
        raise Conflict(Reason.ALERT_TAKEN, f"alert {scope.id} is already claimed by {holder}")
    try:
        async with conn.transaction():
            await lifecycle.claim(conn, scope.id, staff.id, now)
            await audit(conn, staff.id, "alert.claim", scope.member_id, {"alert_id": scope.id})
    except lifecycle.AlertConflict:
        raise Conflict(
            Reason.ALERT_TAKEN, f"alert {scope.id} was claimed by another coach a moment ago"
        ) from None


async def add_note(
    conn: Connection, staff: Staff, scope: AlertScope, body: str, now: datetime
) -> None:
    require_holder(staff, scope)
    body = body.strip()
    if not body or len(body) > MAX_NOTE:
        raise InvalidInput(f"a note has 1 to {MAX_NOTE} characters")
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO alert_notes (alert_id, member_id, coach_id, at, body) "
            "VALUES ($1, $2, $3, $4, $5)",
            scope.id, scope.member_id, staff.id, now, body,
        )  # fmt: skip
        await audit(conn, staff.id, "alert.note", scope.member_id, {"alert_id": scope.id})


@dataclass(frozen=True, slots=True)
class OutreachForm:
    mode: str
    outcome: str
    started_at: datetime
    duration_minutes: int
    note: str

    def check(self, now: datetime) -> None:
        if self.mode not in OUTREACH_MODES:
            raise InvalidInput("mode: choose phone call, video, SMS or voicemail")
        if self.outcome not in OUTREACH_OUTCOMES:
            raise InvalidInput("outcome: choose one of the listed outcomes")
        if self.started_at.tzinfo is None:
            raise InvalidInput("start: a time with its offset is needed")
        if self.started_at > now + timedelta(minutes=5):
            raise InvalidInput("start: the outreach cannot start in the future")
        if self.started_at < now - timedelta(days=7):
            raise InvalidInput("start: record outreach within 7 days")
        if not 0 <= self.duration_minutes <= MAX_OUTREACH_MINUTES:
            raise InvalidInput(f"duration: 0 to {MAX_OUTREACH_MINUTES} minutes")
        if len(self.note) > MAX_NOTE:
            raise InvalidInput(f"note: at most {MAX_NOTE} characters")


async def record_outreach(
    conn: Connection, staff: Staff, scope: AlertScope, form: OutreachForm, now: datetime
) -> int:
    require_holder(staff, scope)
    form.check(now)
    async with conn.transaction():
        try:
            outreach_id = await outreach.record_outreach(
                conn, member_id=scope.member_id, coach_id=staff.id, mode=form.mode,
                outcome=form.outcome, started_at=form.started_at,
                duration_minutes=Decimal(form.duration_minutes), note=form.note.strip(),
                alert_id=scope.id,
            )  # fmt: skip
        except OutreachRejected as exc:
            raise InvalidInput(str(exc)) from None
        # A recheck that was due is done once someone reached out after it came due.
        await conn.execute(
            "UPDATE alert_followups SET done_at = $2 WHERE alert_id = $1 AND done_at IS NULL "
            "AND due_at <= $2",
            scope.id, now,
        )  # fmt: skip
        await audit(conn, staff.id, "alert.outreach", scope.member_id,
                    {"alert_id": scope.id, "outreach_id": outreach_id, "mode": form.mode,
                     "outcome": form.outcome})  # fmt: skip
    return outreach_id


async def set_followup(
    conn: Connection, staff: Staff, scope: AlertScope, minutes: int, now: datetime
) -> datetime:
    require_holder(staff, scope)
    if minutes not in FOLLOWUP_MINUTES:
        raise InvalidInput(f"recheck: one of {', '.join(map(str, FOLLOWUP_MINUTES))} minutes")
    due = now + timedelta(minutes=minutes)
    holder = scope.acknowledged_by or staff.id
    async with conn.transaction():
        await conn.execute(
            "UPDATE alert_followups SET done_at = $2 WHERE alert_id = $1 AND done_at IS NULL",
            scope.id, now,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO alert_followups (alert_id, coach_id, created_by, created_at, due_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            scope.id, holder, staff.id, now, due,
        )  # fmt: skip
        await _event(conn, scope, "followup_set", staff.id, {"minutes": minutes}, now,
                     announce=False)
        await audit(conn, staff.id, "alert.followup", scope.member_id,
                    {"alert_id": scope.id, "minutes": minutes})  # fmt: skip
    return due


async def resolve(
    conn: Connection, staff: Staff, scope: AlertScope, outcome: str, note: str, now: datetime
) -> None:
    require_holder(staff, scope)
    if outcome not in RESOLVE_OUTCOMES:
        raise InvalidInput("outcome: choose one of the listed outcomes")
    if len(note) > MAX_NOTE:
        raise InvalidInput(f"note: at most {MAX_NOTE} characters")
    try:
        async with conn.transaction():
            await lifecycle.resolve(conn, scope.id, staff.id, outcome, note.strip(), now)
            await conn.execute(
                "UPDATE alert_followups SET done_at = $2 WHERE alert_id = $1 AND done_at IS NULL",
                scope.id, now,
            )  # fmt: skip
            await audit(conn, staff.id, "alert.resolve", scope.member_id,
                        {"alert_id": scope.id, "outcome": outcome})  # fmt: skip
    except lifecycle.AlertConflict:
        raise Conflict(Reason.ALERT_NOT_ACTIVE, f"alert {scope.id} is already resolved") from None


async def handoff_targets(conn: Connection, staff: Staff) -> list[tuple[str, str, bool]]:
    """Colleagues who can take over: (id, name, signed in now), same team when there is one."""
    rows = await conn.fetch(
        """SELECT c.id, c.name, EXISTS (SELECT 1 FROM console_sessions s WHERE s.coach_id = c.id
                  AND s.ended_at IS NULL AND NOT s.mfa_pending AND s.expires_at > now()) AS live
           FROM coaches c JOIN console_accounts a ON a.coach_id = c.id
           WHERE NOT a.disabled AND c.id <> $1 AND c.role IN ('coach', 'supervisor')
             AND ($2::text IS NULL OR c.team = $2)
           ORDER BY live DESC, c.name""",
        staff.id, staff.team,
    )  # fmt: skip
    return [(r["id"], r["name"], r["live"]) for r in rows]


async def hand_off(conn: Connection, staff: Staff, to_coach: str, now: datetime) -> int:
    """End of shift: every alert `staff` holds, and its pending rechecks, go to `to_coach`."""
    if to_coach not in {cid for cid, _, _ in await handoff_targets(conn, staff)}:
        raise InvalidInput("hand over to a colleague of your team with a console account")
    async with conn.transaction():
        rows = await conn.fetch(
            """UPDATE alerts SET acknowledged_by = $2, updated_at = $3
               WHERE status = 'acknowledged' AND acknowledged_by = $1
               RETURNING id, member_id, rule, tier""",
            staff.id, to_coach, now,
        )  # fmt: skip
        for r in rows:
            scope = AlertScope(r["id"], r["member_id"], r["rule"], r["tier"], "acknowledged",
                               to_coach, True)  # fmt: skip
            await conn.execute(
                "UPDATE alert_followups SET coach_id = $2 WHERE alert_id = $1 AND done_at IS NULL",
                r["id"], to_coach,
            )  # fmt: skip
            await _event(conn, scope, "handed_off", staff.id, {"from": staff.id, "to": to_coach},
                         now)
            await audit(conn, staff.id, "alert.handoff", r["member_id"],
                        {"alert_id": r["id"], "to": to_coach})  # fmt: skip
        await audit(conn, staff.id, "shift.handoff", None, {"to": to_coach, "alerts": len(rows)})
    return len(rows)


async def announce_due_followups(pool: Pool, now: datetime, limit: int = 100) -> int:
    """Bring alerts whose recheck is due back to their coach: one `followup_due` event and
    NOTIFY each. Any number of console processes may run this (SKIP LOCKED, announced once)."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """UPDATE alert_followups f SET announced_at = $1 FROM alerts a
               WHERE f.id IN (SELECT id FROM alert_followups WHERE done_at IS NULL
                              AND announced_at IS NULL AND due_at <= $1
                              ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                 AND a.id = f.alert_id
               RETURNING f.alert_id, f.coach_id, a.member_id, a.rule, a.tier, a.status""",
            now, limit,
        )  # fmt: skip
        for r in rows:
            if r["status"] == "resolved":
                continue
            scope = AlertScope(r["alert_id"], r["member_id"], r["rule"], r["tier"], r["status"],
                               r["coach_id"], True)  # fmt: skip
            await _event(conn, scope, "followup_due", "console", {"coach": r["coach_id"]}, now)
    return len(rows)
