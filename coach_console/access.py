"""Who sees what: the console's scope rules, as SQL predicates and checks.

- An admin sees everything.
- A supervisor sees the members of their team (members whose coach has the same, non-empty
  `coaches.team`) and their own caseload.
- A coach sees their caseload (`members.coach_id`).
- Coverage, for everyone: an unclaimed (open) critical alert of any other caseload is visible and
  may be claimed; whoever holds an alert (by claiming it or by a hand-off) sees that member's page,
  charts and history while the alert is theirs (acknowledged by them).

Anything outside the scope answers 404, like something that does not exist, so ids cannot be
probed. The predicates expect the aliases `m` (members), `mc` (the member's coach, LEFT JOIN) and
`a` (alerts), and the parameters $1 staff id, $2 role, $3 team.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from coach_console.accounts import Staff
from coach_console.errors import Conflict, NotFound, Reason
from services.storage.db import Connection

HOLDS_ALERT_ON_MEMBER: Final = (
    "EXISTS (SELECT 1 FROM alerts h WHERE h.member_id = m.id AND h.status = 'acknowledged' "
    "AND h.acknowledged_by = $1)"
)
MEMBER_VISIBLE: Final = (
    "($2 = 'admin' OR m.coach_id = $1 "
    "OR ($2 = 'supervisor' AND $3::text IS NOT NULL AND mc.team = $3) "
    f"OR {HOLDS_ALERT_ON_MEMBER})"
)
ALERT_VISIBLE: Final = (
    "($2 = 'admin' OR m.coach_id = $1 "
    "OR ($2 = 'supervisor' AND $3::text IS NOT NULL AND mc.team = $3) "
    "OR (a.status = 'acknowledged' AND a.acknowledged_by = $1) "
    "OR (a.status = 'open' AND a.tier = 'critical'))"
)
#: Members of the person's own scope, without coverage (lists and reports).
OWN_SCOPE: Final = (
    "($2 = 'admin' OR m.coach_id = $1 "
    "OR ($2 = 'supervisor' AND $3::text IS NOT NULL AND mc.team = $3))"
)
MEMBER_JOIN: Final = "members m LEFT JOIN coaches mc ON mc.id = m.coach_id"


def scope_args(staff: Staff) -> tuple[str, str, str | None]:
    return staff.id, staff.role, staff.team


async def member_visible(conn: Connection, staff: Staff, member_id: str) -> bool:
    return bool(
        await conn.fetchval(
            f"SELECT {MEMBER_VISIBLE} FROM {MEMBER_JOIN} WHERE m.id = $4",
            *scope_args(staff), member_id,
        )
    )


async def require_member(conn: Connection, staff: Staff, member_id: str) -> None:
    if not await member_visible(conn, staff, member_id):
        raise NotFound("member")


@dataclass(frozen=True, slots=True)
class AlertScope:
    id: int
    member_id: str
    rule: str
    tier: str
    status: str
    acknowledged_by: str | None
    member_visible: bool  # the member's page is open to this person

    @property
    def active(self) -> bool:
        return self.status in ("open", "acknowledged")


async def require_alert(conn: Connection, staff: Staff, alert_id: int) -> AlertScope:
    row = await conn.fetchrow(
        f"""SELECT a.id, a.member_id, a.rule, a.tier, a.status, a.acknowledged_by,
                   {MEMBER_VISIBLE} AS member_visible
            FROM alerts a JOIN {MEMBER_JOIN} ON m.id = a.member_id
            WHERE a.id = $4 AND {ALERT_VISIBLE}""",
        *scope_args(staff), alert_id,
    )  # fmt: skip
    if row is None:
        raise NotFound("alert")
    return AlertScope(**dict(row))


def require_holder(staff: Staff, scope: AlertScope) -> None:
    """Notes, outreach, follow-ups and resolution are for the coach holding the alert; a
    supervisor or admin may also act on an alert of a member in their scope."""
    if not scope.active:
        raise Conflict(Reason.ALERT_NOT_ACTIVE, f"alert {scope.id} is already resolved")
    if scope.acknowledged_by == staff.id:
        return
    if staff.role in ("supervisor", "admin") and scope.member_visible:
        return
    if scope.status == "open":
        raise Conflict(Reason.NOT_CLAIMED, f"claim alert {scope.id} first")
    raise Conflict(Reason.ALERT_TAKEN, f"alert {scope.id} is held by another coach")


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """What the live stream needs to decide whom an alert event concerns."""

    tier: str
    status: str
    acknowledged_by: str | None
    member_coach: str | None
    coach_team: str | None


def concerns(staff: Staff, f: AlertFacts) -> bool:
    """Whether an alert event goes to this person's browser. Events carry only ids and an event
    name (the browser then fetches its own, scoped queue), so the rule errs on the side of
    telling: every critical alert concerns everyone, since any coach may have seen it unclaimed
    (coverage) and must see it leave their queue when someone claims it."""
    if staff.is_admin or f.tier == "critical":
        return True
    if staff.id in (f.member_coach, f.acknowledged_by):
        return True
    return staff.is_supervisor and staff.team is not None and f.coach_team == staff.team
