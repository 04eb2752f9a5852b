"""Paging: a live critical alert reaches a person by SMS or voice, whatever the consoles show.

A console left open on a desk is not an alert at 3 a.m., so every open, live, critical alert is
paged through the provider (alerting/notifier.py) whether or not anyone is watching:

- who: inside the client's coverage hours the member's own coach; outside them (or when the
  member has no coach) the on-call coach of the coach's team from the `on_call` roster; when the
  team has nobody on call, whoever is on call, then the member's coach (paging someone beats
  paging no one). Coverage is the client's `alert_policy.coverage`:
  {"timezone": "America/Chicago", "days": ["mon", ..., "fri"], "from": "08:00", "to": "20:00"}
  (timezone defaults to the client's, days to every day; "from" after "to" is an overnight shift;
  no coverage at all means the roster always applies).
- when: at once (the scheduler wakes on the engine's NOTIFY), then every `repage_minutes`
  (client policy, default 5) until someone claims it; a claimed or resolved alert is never
  paged. First pages are SMS, re-pages voice calls: a ringing phone wakes people, a text may not.
- escalation: when the alert misses its SLA (alerting/escalation.py) its team's supervisor is
  paged, and from then on every re-page goes to the supervisor too.
- retrospective alerts (late data) never page (alerting/rules.py).

Every page is a `pages` row written before the provider is called (status 'sending') and updated
with the provider's answer, plus a 'paged' or 'page_failed' event. The provider is called
outside the alert row's lock, so a coach claiming the alert never waits on the provider. A
transient failure (timeout, 5xx) is retried after a minute rather than at the next re-page.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from alerting.content import Content
from alerting.events import add_event, jsonb, notify
from alerting.notifier import Channel, Delivery, Notice, Notifier
from alerting.policy import AlertPolicy
from services.storage.db import Connection

log = logging.getLogger(__name__)

PageReason = Literal["page", "repage", "escalation"]
_CHANNEL: Final[dict[str, Channel]] = {"page": "sms", "repage": "voice", "escalation": "voice"}
#: After a transient provider failure the round is retried this soon, not a whole re-page later.
RETRY_AFTER: Final = timedelta(minutes=1)
_TRANSIENT: Final = ("timeout", "unreachable", "http_5", "http_429")
_DAYS: Final = {name: i for i, name in enumerate(
    ("mon", "tue", "wed", "thu", "fri", "sat", "sun"), start=1)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Coverage:
    """When a client's own coaches answer their members' critical alerts."""

    zone: ZoneInfo
    days: frozenset[int]  # ISO weekdays, Monday = 1
    start: time
    end: time

    @classmethod
    def from_policy(cls, policy: dict[str, Any], client_zone: str) -> Coverage | None:
        """The client's coverage, or None (no coverage, or an invalid one: logged; the roster
        then applies, which pages someone rather than nobody)."""
        doc = policy.get("coverage")
        if not doc:
            return None
        if not isinstance(doc, dict):
            log.warning("ignoring a coverage policy that is not an object; the roster applies")
            return None
        try:
            zone = ZoneInfo(str(doc.get("timezone") or client_zone))
            days = frozenset(_day(d) for d in doc.get("days", list(_DAYS)))
            return cls(zone, days, time.fromisoformat(str(doc.get("from", "00:00"))),
                       time.fromisoformat(str(doc.get("to", "00:00"))))  # fmt: skip
        except (TypeError, ValueError, KeyError, ZoneInfoNotFoundError) as exc:
            log.warning("ignoring an invalid coverage policy (%s); the on-call roster applies",
                        exc)  # fmt: skip
            return None

    def covers(self, at: datetime) -> bool:
        local = at.astimezone(self.zone)
        t = local.time()
        if self.start == self.end:  # whole days
            return local.isoweekday() in self.days
        if self.start < self.end:
            return local.isoweekday() in self.days and self.start <= t < self.end
        # An overnight shift: the hours after midnight belong to the day the shift started.
        if t >= self.start:
            return local.isoweekday() in self.days
        return t < self.end and (local - timedelta(days=1)).isoweekday() in self.days


def _day(value: object) -> int:
    if isinstance(value, int) and 1 <= value <= 7:
        return value
    return _DAYS[str(value).strip().lower()[:3]]


@dataclass(frozen=True, slots=True)
class Target:
    coach_id: str
    phone: str | None
    role: Literal["coach", "on_call", "supervisor"]


@dataclass(frozen=True, slots=True)
class AlertRef:
    id: int
    member_id: str
    rule: str
    tier: str
    opened_at: datetime


@dataclass(frozen=True, slots=True)
class PageOrder:
    page_id: int
    alert: AlertRef
    target: Target
    reason: PageReason
    channel: Channel
    body: str


async def primary_target(
    conn: Connection, member_id: str, coverage: Coverage | None, now: datetime
) -> Target | None:
    """The member's coach inside coverage hours; the on-call coach outside them."""
    member = await conn.fetchrow(
        "SELECT c.id, c.phone, c.team FROM members m LEFT JOIN coaches c ON c.id = m.coach_id "
        "WHERE m.id = $1",
        member_id,
    )
    coach_id: str | None = member["id"] if member else None
    coach_phone: str | None = member["phone"] if member else None
    team: str | None = member["team"] if member else None
    if coach_id is not None and coverage is not None and coverage.covers(now):
        return Target(coach_id, coach_phone, "coach")
    on_call = await conn.fetchrow(
        """SELECT o.coach_id, c.phone, o.team = $2 AS own_team FROM on_call o
           JOIN coaches c ON c.id = o.coach_id
           WHERE o.starts_at <= $1 AND $1 < o.ends_at
           ORDER BY o.team = $2 DESC NULLS LAST, o.starts_at, o.id LIMIT 1""",
        now, team,
    )  # fmt: skip
    if on_call is not None:
        if not on_call["own_team"]:
            log.warning("nobody on call for team %s; paging the on-call coach of another team",
                        team)  # fmt: skip
        return Target(on_call["coach_id"], on_call["phone"], "on_call")
    if coach_id is not None:
        log.warning("nobody on call at %s; paging the member's own coach", now.isoformat())
        return Target(coach_id, coach_phone, "coach")
    return None


async def supervisor_target(conn: Connection, member_id: str) -> Target | None:
    """The supervisor of the member's coach's team (else a supervisor without a team)."""
    row = await conn.fetchrow(
        """SELECT s.id, s.phone FROM members m
           LEFT JOIN coaches c ON c.id = m.coach_id
           JOIN coaches s ON s.role = 'supervisor' AND (s.team = c.team OR s.team IS NULL)
           WHERE m.id = $1
           ORDER BY s.team IS NULL, s.id LIMIT 1""",
        member_id,
    )
    return Target(row["id"], row["phone"], "supervisor") if row else None


def page_text(content: Content, situation: str, alert: AlertRef, **values: object) -> str:
    """A page's text from paging.yaml. Pages go to staff, in English; ids only, no PHI."""
    fields = {"tier": alert.tier, "rule": alert.rule, "alert_id": alert.id, **values}
    return content[situation].render("en", fields)[1]


async def order_pages(
    conn: Connection, alert: AlertRef, targets: Sequence[Target], reason: PageReason,
    now: datetime, body: str,
) -> list[PageOrder]:  # fmt: skip
    """Write one 'sending' page row per target (in the caller's transaction)."""
    channel = _CHANNEL[reason]
    orders = []
    for target in targets:
        page_id: int = await conn.fetchval(
            "INSERT INTO pages (alert_id, coach_id, reason, channel, sent_at) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            alert.id, target.coach_id, reason, channel, now,
        )  # fmt: skip
        orders.append(PageOrder(page_id, alert, target, reason, channel, body))
    return orders


async def send_pages(
    conn: Connection, notifier: Notifier, orders: Sequence[PageOrder], now: datetime
) -> list[Delivery]:
    """Call the provider for every order (concurrently), then record the answers."""

    async def one(o: PageOrder) -> Delivery:
        if not o.target.phone:
            return Delivery(ok=False, status="no_phone")
        return await notifier.send(Notice(o.target.phone, o.channel, o.body, f"page-{o.page_id}"))

    deliveries = list(await asyncio.gather(*(one(o) for o in orders)))
    if not orders:
        return deliveries
    async with conn.transaction():
        for o, d in zip(orders, deliveries, strict=True):
            await conn.execute(
                "UPDATE pages SET provider_status = $2, provider_id = $3 WHERE id = $1",
                o.page_id, d.status, d.provider_id,
            )  # fmt: skip
            await add_event(conn, o.alert.id, o.alert.member_id, o.alert.rule,
                            "paged" if d.ok else "page_failed",
                            {"coach": o.target.coach_id, "as": o.target.role, "page": o.page_id,
                             "reason": o.reason, "channel": o.channel, "status": d.status},
                            at=now)  # fmt: skip
        for alert in {o.alert.id: o.alert for o in orders}.values():
            await notify(conn, alert.id, alert.member_id, alert.rule, alert.tier, "paged")
    return deliveries


async def page_due(conn: Connection, notifier: Notifier, content: Content, now: datetime) -> int:
    """Page every open live critical alert whose first page or next re-page is due."""
    orders: list[PageOrder] = []
    repage_after: dict[int, timedelta] = {}
    async with conn.transaction():
        rows = await conn.fetch(
            """SELECT a.id, a.member_id, a.rule, a.tier, a.opened_at, a.last_paged_at,
                      a.escalated_at, c.alert_policy, c.timezone AS client_zone
               FROM alerts a JOIN members m ON m.id = a.member_id
               JOIN clients c ON c.id = m.client_id
               WHERE a.status = 'open' AND a.tier = 'critical' AND NOT a.retrospective
                 AND (a.last_paged_at IS NULL OR a.last_paged_at < $1)
               ORDER BY a.opened_at FOR UPDATE OF a SKIP LOCKED""",
            now,
        )
        for row in rows:
            doc = jsonb(row["alert_policy"])
            repage = timedelta(minutes=AlertPolicy.from_json(doc).repage_minutes)
            last: datetime | None = row["last_paged_at"]
            if last is not None and now - last < repage:
                continue
            alert = AlertRef(row["id"], row["member_id"], row["rule"], row["tier"],
                             row["opened_at"])  # fmt: skip
            coverage = Coverage.from_policy(doc, row["client_zone"])
            targets = [t for t in [await primary_target(conn, alert.member_id, coverage, now)]
                       if t is not None]  # fmt: skip
            if last is not None and row["escalated_at"] is not None:
                supervisor = await supervisor_target(conn, alert.member_id)
                if supervisor and all(t.coach_id != supervisor.coach_id for t in targets):
                    targets.append(supervisor)
            await conn.execute("UPDATE alerts SET last_paged_at = $2 WHERE id = $1",
                               alert.id, now)  # fmt: skip
            repage_after[alert.id] = repage
            if not targets:
                log.error("critical alert %d: nobody to page (no coach, nobody on call)",
                          alert.id)  # fmt: skip
                await add_event(conn, alert.id, alert.member_id, alert.rule, "page_failed",
                                {"status": "no_target"}, at=now)  # fmt: skip
                continue
            if last is None:
                body = page_text(content, "page", alert)
                orders += await order_pages(conn, alert, targets, "page", now, body)
            else:
                minutes = int((now - alert.opened_at).total_seconds() // 60)
                body = page_text(content, "repage", alert, minutes=minutes)
                orders += await order_pages(conn, alert, targets, "repage", now, body)
    deliveries = await send_pages(conn, notifier, orders, now)
    await _retry_soon(conn, orders, deliveries, repage_after, now)
    return sum(d.ok for d in deliveries)


async def _retry_soon(
    conn: Connection, orders: Sequence[PageOrder], deliveries: Sequence[Delivery],
    repage_after: dict[int, timedelta], now: datetime,
) -> None:  # fmt: skip
    """A round in which no page got through for a transient reason is retried in a minute."""
    by_alert: dict[int, list[Delivery]] = {}
    for o, d in zip(orders, deliveries, strict=True):
        by_alert.setdefault(o.alert.id, []).append(d)
    for alert_id, ds in by_alert.items():
        if not any(d.ok for d in ds) and any(d.status.startswith(_TRANSIENT) for d in ds):
            await conn.execute(
                "UPDATE alerts SET last_paged_at = $2 WHERE id = $1 AND last_paged_at = $3",
                alert_id, now - repage_after[alert_id] + RETRY_AFTER, now,
            )  # fmt: skip
