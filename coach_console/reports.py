"""The supervisor view: SLA breaches, response times by tier, workload, gaps and the roster.

Service standards the figures are read against (shared/reference/clinical.md "Service
standards"): Livongo aimed to call a member within 90 seconds of a dangerous reading; Quartet
reports 75 % of its specialists' replies within 36 hours. The report shows the share of alerts
whose first outreach met each, and the median and 75th percentile behind them.

Scope: a supervisor's team (members whose coach has their team) and their own caseload; an admin
everything. Unassigned members (no coach) belong to no team and are listed for both, by id only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from coach_console.access import MEMBER_JOIN, OWN_SCOPE, scope_args
from coach_console.accounts import Staff
from services.storage.db import Connection

PERIOD: Final = timedelta(days=30)
LIVONGO_CALL: Final = timedelta(seconds=90)  # Livongo: a call within 90 s of a dangerous reading
QUARTET_REPLY: Final = timedelta(hours=36)  # Quartet: 75 % of replies within 36 hours
NEAR_BREACH_SHARE: Final = 0.2  # "near": within the last 20 % of the SLA window (or 1 minute)


@dataclass(frozen=True, slots=True)
class TierTimes:
    tier: str
    alerts: int
    breached: int
    ack_median_s: float | None
    outreach_median_s: float | None
    outreach_p75_s: float | None
    within_90s: float | None  # share of alerts with outreach whose first was within 90 s
    within_36h: float | None


async def sla_watch(conn: Connection, staff: Staff, now: datetime) -> list[dict[str, Any]]:
    """Open alerts past their deadline (breached) or in its last stretch (near), and claimed
    critical alerts whose first outreach is overdue."""
    rows = await conn.fetch(
        f"""SELECT a.id, a.member_id, a.rule, a.tier, a.status, a.opened_at, a.sla_due_at,
                   a.first_outreach_due_at, hc.name AS holder,
                   CASE WHEN a.status = 'open' AND a.sla_due_at <= $4 THEN 'breached'
                        WHEN a.status = 'open' THEN 'near'
                        ELSE 'outreach_overdue' END AS state
            FROM alerts a JOIN {MEMBER_JOIN} ON m.id = a.member_id
            LEFT JOIN coaches hc ON hc.id = a.acknowledged_by
            WHERE {OWN_SCOPE} AND (
                (a.status = 'open' AND (a.sla_due_at <= $4 OR a.sla_due_at - $4 <=
                    greatest(interval '1 minute', (a.sla_due_at - a.opened_at) * $5)))
                OR (a.status = 'acknowledged' AND a.first_outreach_due_at <= $4
                    AND NOT EXISTS (SELECT 1 FROM outreach o WHERE o.alert_id = a.id)))
            ORDER BY a.sla_due_at""",
        *scope_args(staff), now, NEAR_BREACH_SHARE,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def tier_times(conn: Connection, staff: Staff, now: datetime) -> list[TierTimes]:
    rows = await conn.fetch(
        f"""WITH scoped AS (
                SELECT a.id, a.tier, a.opened_at, a.sla_due_at, a.acknowledged_at, a.resolved_at,
                       -- A call begun the same minute the alert opened (the form takes
                       -- minutes) counts as immediate, never as negative time.
                       -- (greatest() skips NULLs: no outreach must stay NULL.)
                       (SELECT CASE WHEN count(*) > 0
                                    THEN greatest(min(o.started_at), a.opened_at) END
                        FROM outreach o WHERE o.alert_id = a.id) AS first_outreach
                FROM alerts a JOIN {MEMBER_JOIN} ON m.id = a.member_id
                WHERE {OWN_SCOPE} AND a.opened_at >= $4::timestamptz - $5::interval
                  AND NOT a.retrospective)
            SELECT tier, count(*) AS alerts,
                   count(*) FILTER (WHERE coalesce(acknowledged_at, resolved_at, $4)
                                          > sla_due_at) AS breached,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM
                       acknowledged_at - opened_at)) AS ack_median,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM
                       first_outreach - opened_at)) AS outreach_median,
                   percentile_cont(0.75) WITHIN GROUP (ORDER BY extract(epoch FROM
                       first_outreach - opened_at)) AS outreach_p75,
                   avg((first_outreach - opened_at <= $6::interval)::int)
                       FILTER (WHERE first_outreach IS NOT NULL) AS within_90s,
                   avg((first_outreach - opened_at <= $7::interval)::int)
                       FILTER (WHERE first_outreach IS NOT NULL) AS within_36h
            FROM scoped GROUP BY tier
            ORDER BY CASE tier WHEN 'critical' THEN 0 WHEN 'high' THEN 1
                               WHEN 'medium' THEN 2 ELSE 3 END""",
        *scope_args(staff), now, PERIOD, LIVONGO_CALL, QUARTET_REPLY,
    )  # fmt: skip

    def f(v: Any) -> float | None:
        return None if v is None else float(v)

    return [
        TierTimes(r["tier"], r["alerts"], r["breached"], f(r["ack_median"]),
                  f(r["outreach_median"]), f(r["outreach_p75"]), f(r["within_90s"]),
                  f(r["within_36h"]))
        for r in rows
    ]


async def coach_load(conn: Connection, staff: Staff, now: datetime) -> list[dict[str, Any]]:
    """Alerts per coach of the scope: held now, resolved and outreach in the period."""
    rows = await conn.fetch(
        """SELECT c.id, c.name, c.role,
                  (SELECT count(*) FROM alerts a WHERE a.acknowledged_by = c.id
                   AND a.status = 'acknowledged') AS held,
                  (SELECT count(*) FROM alerts a WHERE a.resolved_by = c.id
                   AND a.resolved_at >= $4::timestamptz - $5::interval) AS resolved,
                  (SELECT count(*) FROM outreach o WHERE o.coach_id = c.id
                   AND o.started_at >= $4::timestamptz - $5::interval) AS outreach,
                  (SELECT coalesce(sum(o.duration_minutes), 0) FROM outreach o
                   WHERE o.coach_id = c.id AND o.started_at >= $4::timestamptz - $5::interval)
                      AS outreach_minutes,
                  (SELECT count(*) FROM members m WHERE m.coach_id = c.id) AS caseload
           FROM coaches c
           WHERE $2 = 'admin' OR c.id = $1 OR ($3::text IS NOT NULL AND c.team = $3)
           ORDER BY c.name""",
        *scope_args(staff), now, PERIOD,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def unassigned_members(conn: Connection, limit: int = 200) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT m.id, m.client_id, m.created_at,
                  (SELECT count(*) FROM alerts a WHERE a.member_id = m.id
                   AND a.status IN ('open', 'acknowledged')) AS active_alerts
           FROM members m WHERE m.coach_id IS NULL ORDER BY m.created_at, m.id LIMIT $1""",
        limit,
    )
    return [dict(r) for r in rows]


async def on_call_roster(
    conn: Connection, staff: Staff, now: datetime
) -> list[dict[str, Any]] | None:
    """The scheduler's on-call roster (table `on_call`), or None where it does not exist."""
    if await conn.fetchval("SELECT to_regclass('on_call') IS NULL"):
        return None
    rows = await conn.fetch(
        """SELECT o.team, o.starts_at, o.ends_at, c.name AS coach,
                  (o.starts_at <= $4 AND o.ends_at > $4) AS now_on_call
           FROM on_call o JOIN coaches c ON c.id = o.coach_id
           WHERE o.ends_at > $4::timestamptz - interval '1 day'
             AND ($2 = 'admin' OR ($3::text IS NOT NULL AND o.team = $3) OR o.coach_id = $1)
           ORDER BY o.team, o.starts_at LIMIT 100""",
        *scope_args(staff), now,
    )  # fmt: skip
    return [dict(r) for r in rows]
