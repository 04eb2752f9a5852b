"""Nudges: short messages to the member from the education-content library (alerting/content).

Three situations, texts in alerting/content/nudges.yaml:
- `low_level1`: after a LIVE level-1 low (a hypoglycemia alert opened, or made live, at tier
  high), the ADA "15-15" treatment advice. Retrospective alerts (late data) send nothing: advice
  about a low hours ago is noise. Stale advice is worse than none, so a low whose reading is more
  than `LOW_ADVICE_FRESH` old is skipped. The engine may call `nudge_for_alert` right after an
  alert commits; the scheduler also scans recent alerts each tick, so nothing depends on it.
- `encouragement_fasting`: once per member-local ISO week, after at least
  `ENCOURAGEMENT_MIN_FASTING` fasting readings in the past 7 days, all within the ADA 2025
  preprandial goal of 80-130 mg/dL (section 6).
- `missed_testing`: a member who has not tested for `missed_testing_days` (default 3) gets a
  reminder, and another every `missed_testing_days` while the gap lasts (the coach's
  no_recent_readings alert follows at 7 days).

Every message is a `member_messages` row, one per trigger (`dedupe_key`), in the member's
language (English when the library has no text in it). Two guards, per member, under a per-member
advisory lock so concurrent writers cannot both slip past them:
- quiet hours (member's time zone; default 22:00-07:00): the message is kept until they end
  (`deliver_after`), with the situation's "deferred" wording where it has one;
- at most `max_per_day` (default 3) messages are delivered on one member-local day; more are
  dropped (logged), not queued for later.
Per client, in `alert_policy`: {"nudges": {"quiet_hours": {"from": "22:00", "to": "07:00"},
"max_per_day": 3, "missed_testing_days": 3}}. Delivery to the member's devices and the app
inbox are alerting/inbox.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from alerting.content import Content
from alerting.events import jsonb
from alerting.timed_rules import silent_members
from services.storage.db import Connection

log = logging.getLogger(__name__)

#: NOTIFY channel announcing a queued member message (payload: ids only).
MESSAGES_CHANNEL: Final = "vigil_member_messages"
LOW_ADVICE_FRESH: Final = timedelta(minutes=30)
#: ADA Standards of Care 2025, section 6: preprandial capillary glucose goal 80-130 mg/dL.
FASTING_TARGET_MGDL: Final = (Decimal(80), Decimal(130))
ENCOURAGEMENT_MIN_FASTING: Final = 5
_LOCK_SPACE: Final = 0x4E554447  # "NUDG": pg_advisory_xact_lock(space, hashtext(member))

Status = Literal["queued", "deferred", "duplicate", "rate_limited"]


@dataclass(frozen=True, slots=True)
class NudgePolicy:
    quiet_from: time = time(22, 0)
    quiet_to: time = time(7, 0)
    max_per_day: int = 3
    missed_testing_days: int = 3

    @classmethod
    def from_alert_policy(cls, doc: dict[str, Any]) -> NudgePolicy:
        base = cls()
        nudges = doc.get("nudges")
        if not isinstance(nudges, dict):
            return base
        try:
            quiet = nudges.get("quiet_hours") or {}
            return cls(
                quiet_from=time.fromisoformat(str(quiet.get("from", "22:00"))),
                quiet_to=time.fromisoformat(str(quiet.get("to", "07:00"))),
                max_per_day=int(nudges.get("max_per_day", base.max_per_day)),
                missed_testing_days=max(1, int(nudges.get("missed_testing_days",
                                                          base.missed_testing_days))),
            )  # fmt: skip
        except (TypeError, ValueError, AttributeError):
            log.warning("ignoring an invalid nudges policy; the defaults apply")
            return base

    def quiet(self, local: time) -> bool:
        if self.quiet_from == self.quiet_to:
            return False
        if self.quiet_from < self.quiet_to:
            return self.quiet_from <= local < self.quiet_to
        return local >= self.quiet_from or local < self.quiet_to  # across midnight

    def deliver_after(self, now: datetime, zone: ZoneInfo) -> tuple[datetime, bool]:
        """(when the member may get it, whether it was held back by quiet hours)."""
        local = now.astimezone(zone)
        if not self.quiet(local.time()):
            return now, False
        day = local.date() if local.time() < self.quiet_to else local.date() + timedelta(days=1)
        return datetime.combine(day, self.quiet_to, tzinfo=zone), True


@dataclass(frozen=True, slots=True)
class Nudge:
    status: Status
    message_id: int | None = None
    deliver_after: datetime | None = None


async def queue_message(
    conn: Connection, content: Content, *, member_id: str, situation: str,
    values: dict[str, object], dedupe_key: str, now: datetime, alert_id: int | None = None,
) -> Nudge:  # fmt: skip
    """Store one nudge for `member_id`, honouring quiet hours and the daily limit."""
    s = content[situation]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                           _LOCK_SPACE, member_id)  # fmt: skip
        member = await conn.fetchrow(
            "SELECT m.timezone, m.language, c.alert_policy FROM members m "
            "JOIN clients c ON c.id = m.client_id WHERE m.id = $1",
            member_id,
        )
        if member is None:
            raise LookupError(f"no member {member_id}")  # a caller's bug, not member data
        if await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM member_messages WHERE member_id = $1 "
            "AND dedupe_key = $2)",
            member_id, dedupe_key,
        ):  # fmt: skip
            return Nudge("duplicate")
        zone = ZoneInfo(member["timezone"])
        policy = NudgePolicy.from_alert_policy(jsonb(member["alert_policy"]))
        deliver_after, deferred = policy.deliver_after(now, zone)
        day = deliver_after.astimezone(zone).date()
        start = datetime.combine(day, time(0), tzinfo=zone)
        end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
        sent_that_day = await conn.fetchval(
            "SELECT count(*) FROM member_messages WHERE member_id = $1 AND kind <> 'coach' "
            "AND deliver_after >= $2 AND deliver_after < $3",
            member_id, start, end,
        )  # fmt: skip
        if sent_that_day >= policy.max_per_day:
            log.info("nudge %s for a member dropped: %d already on %s", situation,
                     sent_that_day, day.isoformat())  # fmt: skip
            return Nudge("rate_limited")
        language, body = s.render(member["language"], values, deferred=deferred)
        message_id: int = await conn.fetchval(
            """INSERT INTO member_messages (member_id, kind, template, body, language,
                   created_at, deliver_after, alert_id, dedupe_key)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id""",
            member_id, s.kind, situation, body, language, now, deliver_after, alert_id,
            dedupe_key,
        )  # fmt: skip
        await conn.execute("SELECT pg_notify($1, $2)", MESSAGES_CHANNEL,
                           json.dumps({"id": message_id, "member_id": member_id}))  # fmt: skip
    return Nudge("deferred" if deferred else "queued", message_id, deliver_after)


_LIVE_LEVEL1 = """EXISTS (SELECT 1 FROM alert_events e WHERE e.alert_id = a.id
    AND e.kind IN ('opened', 'made_live') AND e.detail->>'tier' = 'high'
    AND coalesce((e.detail->>'retrospective')::boolean, false) = false)"""


async def nudge_for_alert(
    conn: Connection, alert_id: int, *, content: Content, now: datetime
) -> Nudge | None:
    """The treatment nudge for a live level-1 low alert; None when the alert needs none.
    Safe to call any number of times, from any process (one message per alert)."""
    row = await conn.fetchrow(
        f"""SELECT a.id, a.member_id, a.latest_value, a.unit, a.last_reading_at,
                   a.retrospective, {_LIVE_LEVEL1} AS live_level1
            FROM alerts a WHERE a.id = $1 AND a.rule = 'hypoglycemia'""",
        alert_id,
    )
    if row is None or row["retrospective"] or not row["live_level1"]:
        return None
    if row["last_reading_at"] is None or now - row["last_reading_at"] > LOW_ADVICE_FRESH:
        return None
    values = {"value": _format(row["latest_value"], row["unit"]), "unit": row["unit"] or ""}
    return await queue_message(conn, content, member_id=row["member_id"], situation="low_level1",
                               values=values, dedupe_key=f"alert:{alert_id}", now=now,
                               alert_id=alert_id)  # fmt: skip


async def nudge_recent_lows(conn: Connection, content: Content, now: datetime) -> int:
    """The scheduler's scan: every fresh live level-1 low without its nudge yet."""
    rows = await conn.fetch(
        f"""SELECT a.id FROM alerts a
            WHERE a.rule = 'hypoglycemia' AND NOT a.retrospective
              AND a.last_reading_at > $1 AND a.last_reading_at <= $2 AND {_LIVE_LEVEL1}
              AND NOT EXISTS (SELECT 1 FROM member_messages mm
                              WHERE mm.member_id = a.member_id
                                AND mm.dedupe_key = 'alert:' || a.id)
            ORDER BY a.id""",
        now - LOW_ADVICE_FRESH, now,
    )  # fmt: skip
    done = 0
    for row in rows:
        nudge = await nudge_for_alert(conn, row["id"], content=content, now=now)
        done += nudge is not None and nudge.message_id is not None
    return done


async def weekly_encouragement(conn: Connection, content: Content, now: datetime) -> int:
    low, high = FASTING_TARGET_MGDL
    rows = await conn.fetch(
        """SELECT r.member_id, m.timezone, count(*) AS n FROM readings r
           JOIN members m ON m.id = r.member_id
           WHERE r.kind = 'glucose' AND r.meal = 'fasting' AND m.consent_to_monitoring
             AND NOT ('control_solution' = ANY (r.flags))
             AND r.effective_at > $1 AND r.effective_at <= $2
           GROUP BY r.member_id, m.timezone
           HAVING count(*) >= $3
              AND bool_and(coalesce(r.glucose_mgdl BETWEEN $4 AND $5, false))""",
        now - timedelta(days=7), now, ENCOURAGEMENT_MIN_FASTING, low, high,
    )  # fmt: skip
    done = 0
    for row in rows:
        year, week, _ = now.astimezone(ZoneInfo(row["timezone"])).isocalendar()
        nudge = await queue_message(
            conn, content, member_id=row["member_id"], situation="encouragement_fasting",
            values={"count": row["n"]}, dedupe_key=f"encouragement:{year}-W{week:02d}", now=now,
        )  # fmt: skip
        done += nudge.message_id is not None
    return done


async def missed_testing_reminders(conn: Connection, content: Content, now: datetime) -> int:
    done = 0
    for s in await silent_members(conn, now, timedelta(days=1)):
        every = NudgePolicy.from_alert_policy(s.alert_policy).missed_testing_days
        days = (now - s.since).days
        if days < every:
            continue
        key = f"missed_testing:{int(s.since.timestamp())}:{days // every}"
        nudge = await queue_message(conn, content, member_id=s.member_id,
                                    situation="missed_testing", values={"days": days},
                                    dedupe_key=key, now=now)  # fmt: skip
        done += nudge.message_id is not None
    return done


def _format(value: Decimal | None, unit: str | None) -> str:
    if value is None:
        return "LO"  # a meter LO reading has no value
    places = Decimal(1) if unit == "mg/dL" else Decimal("0.1")
    return str(value.quantize(places))
