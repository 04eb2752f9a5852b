"""Time-driven rules: `no_recent_readings` and `glucose_trend_rising`.

They fire on the passing of time rather than on a reading, so the scheduler runs them. Their
findings go through `RuleEngine.record`, the engine's own recording path, so the partial unique
index, coalescing, SLAs, events and NOTIFY hold exactly as for reading-driven rules. The reading
of such a finding is synthetic: device `vigil:<rule>`, seq_epoch 0, and a seq naming the episode
(the start of the silence in epoch seconds; the last day of the trend window as a day ordinal),
so re-running the rule every few minutes attaches nothing twice. An episode raises one alert:
once a coach resolved it, the same silence is not raised again (a new silence is), and a
resolved trend is not raised again for a window's length (14 days).

- no_recent_readings (low): a member who consents, is enrolled today (member-local date) and
  holds an active device has sent nothing for `Thresholds.no_recent_readings_days` (7) days,
  counted from the latest of: their last reading, the start of their current device
  assignment, the start of their enrollment. Control-solution tests are not readings.
- glucose_trend_rising (low): see alerting/trends.py; daily means of the 14 completed
  member-local days before today (control solution and meter HI/LO, which carry no value,
  excluded).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

from alerting.engine import RuleEngine
from alerting.events import jsonb
from alerting.policy import AlertPolicy
from alerting.rules import Finding, RuleReading
from alerting.thresholds import DEFAULTS, apply_overrides
from alerting.trends import WINDOW_DAYS, daily_trend
from services.storage.db import Connection

log = logging.getLogger(__name__)

NO_RECENT: Final = "no_recent_readings"
TREND: Final = "glucose_trend_rising"


@dataclass(frozen=True, slots=True)
class Silence:
    member_id: str
    zone: ZoneInfo
    language: str
    alert_policy: dict[str, Any]
    #: The silence began here: the last reading, or a later assignment or enrollment start.
    since: datetime
    last_reading_at: datetime | None


async def silent_members(conn: Connection, now: datetime, at_least: timedelta) -> list[Silence]:
    """Monitored members who have sent nothing for `at_least` (see the module docstring)."""
    rows = await conn.fetch(
        """SELECT m.id, m.timezone, m.language, c.alert_policy, last.at AS last_reading_at,
                  greatest(last.at, asg.since,
                           (enr.start_date::timestamp AT TIME ZONE m.timezone)) AS since
           FROM members m JOIN clients c ON c.id = m.client_id
           JOIN LATERAL (
               SELECT min(e.start_date) AS start_date FROM enrollments e
               WHERE e.member_id = m.id
                 AND e.start_date <= ($1::timestamptz AT TIME ZONE m.timezone)::date
                 AND (e.end_date IS NULL
                      OR e.end_date >= ($1::timestamptz AT TIME ZONE m.timezone)::date)
           ) enr ON enr.start_date IS NOT NULL
           JOIN LATERAL (
               SELECT min(coalesce(da.assigned_from, '-infinity')) AS since
               FROM device_assignments da JOIN devices d ON d.id = da.device_id
               WHERE da.member_id = m.id AND d.status = 'active'
                 AND tstzrange(da.assigned_from, da.assigned_to) @> $1::timestamptz
           ) asg ON asg.since IS NOT NULL
           LEFT JOIN LATERAL (
               SELECT max(r.effective_at) AS at FROM readings r
               WHERE r.member_id = m.id AND r.effective_at <= $1
                 AND NOT ('control_solution' = ANY (r.flags))
           ) last ON true
           WHERE m.consent_to_monitoring
             AND greatest(last.at, asg.since,
                          (enr.start_date::timestamp AT TIME ZONE m.timezone)) <= $2
           ORDER BY m.id""",
        now, now - at_least,
    )  # fmt: skip
    return [
        Silence(r["id"], ZoneInfo(r["timezone"]), r["language"], jsonb(r["alert_policy"]),
                r["since"], r["last_reading_at"])
        for r in rows
    ]  # fmt: skip


def _synthetic(rule: str, episode: int, at: datetime, now: datetime) -> RuleReading:
    return RuleReading(device_id=f"vigil:{rule}", seq_epoch=0, seq=episode, kind="none",
                       source="device", effective_at=at, received_at=now, flags=(),
                       unit="")  # fmt: skip


async def _episode_raised(conn: Connection, member_id: str, reading: RuleReading) -> bool:
    """Whether this episode (its synthetic reading) is behind any alert, active or resolved."""
    return bool(await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM alerts a JOIN alert_readings ar ON ar.alert_id = a.id
               WHERE a.member_id = $1 AND a.rule = $2 AND ar.device_id = $3
               AND ar.seq_epoch = 0 AND ar.seq = $4)""",
        member_id, reading.device_id.removeprefix("vigil:"), reading.device_id, reading.seq,
    ))  # fmt: skip


async def raise_no_recent_readings(conn: Connection, engine: RuleEngine, now: datetime) -> int:
    """Record a no_recent_readings finding for every newly silent member; returns how many."""
    days = DEFAULTS.no_recent_readings_days  # not overridable per care plan (thresholds.py)
    raised = 0
    for s in await silent_members(conn, now, timedelta(days=days)):
        reading = _synthetic(NO_RECENT, int(s.since.timestamp()), s.since, now)
        if await _episode_raised(conn, s.member_id, reading):
            continue
        silent_days = (now - s.since).days
        finding = Finding(
            NO_RECENT, "low", reading, retrospective=False, value=Decimal(silent_days),
            unit="days", detail={
                "since": s.since.isoformat(),
                "last_reading_at": s.last_reading_at.isoformat() if s.last_reading_at else "",
            },
        )  # fmt: skip
        policy = AlertPolicy.from_json(s.alert_policy)
        raised += len(await engine.record(conn, [(s.member_id, finding)], {s.member_id: policy}))
    return raised


async def raise_glucose_trends(conn: Connection, engine: RuleEngine, now: datetime) -> int:
    """Record a glucose_trend_rising finding for every member whose daily means rise."""
    # Two extra days on either side cover every UTC offset; exact local days are cut below.
    rows = await conn.fetch(
        """SELECT r.member_id, m.timezone, c.alert_policy, p.overrides,
                  (r.effective_at AT TIME ZONE m.timezone)::date AS day,
                  avg(r.glucose_mgdl) AS mean
           FROM readings r JOIN members m ON m.id = r.member_id
           JOIN clients c ON c.id = m.client_id
           LEFT JOIN care_plans p ON p.member_id = m.id
           WHERE r.kind = 'glucose' AND r.glucose_mgdl IS NOT NULL
             AND NOT ('control_solution' = ANY (r.flags)) AND m.consent_to_monitoring
             AND r.effective_at >= $1 AND r.effective_at < $2
           GROUP BY 1, 2, 3, 4, 5""",
        now - timedelta(days=WINDOW_DAYS + 2), now,
    )  # fmt: skip
    members: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        members[row["member_id"]].append(row)
    raised = 0
    for member_id, days in members.items():
        zone = ZoneInfo(days[0]["timezone"])
        today = now.astimezone(zone).date()
        first = today - timedelta(days=WINDOW_DAYS)
        means = [(d["day"], float(d["mean"])) for d in days if first <= d["day"] < today]
        trend = daily_trend(means)
        thresholds = apply_overrides(_overrides(days[0]["overrides"]))
        if trend is None or not trend.rising(float(thresholds.glucose_trend_mgdl_per_week)):
            continue
        last_day = today - timedelta(days=1)
        window_end = datetime.combine(today, time(0), tzinfo=zone)  # local midnight
        reading = _synthetic(TREND, last_day.toordinal(), window_end, now)
        if await _recently_resolved(conn, member_id, now) or await _episode_raised(
            conn, member_id, reading
        ):
            continue
        finding = Finding(
            TREND, "low", reading, retrospective=False,
            value=Decimal(f"{trend.slope_per_week:.1f}"), unit="mg/dL/week", detail={
                "p_value": f"{trend.p_value:.4f}", "days": str(trend.days),
                "window": f"{first.isoformat()}..{last_day.isoformat()}",
            },
        )  # fmt: skip
        policy = AlertPolicy.from_json(jsonb(days[0]["alert_policy"]))
        raised += len(await engine.record(conn, [(member_id, finding)], {member_id: policy}))
    return raised


async def _recently_resolved(conn: Connection, member_id: str, now: datetime) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM alerts WHERE member_id = $1 AND rule = $2 "
        "AND status = 'resolved' AND resolved_at > $3)",
        member_id, TREND, now - timedelta(days=WINDOW_DAYS),
    ))  # fmt: skip


def _overrides(value: Any) -> list[dict[str, object]]:
    """care_plans.overrides (a jsonb list, as text) -> its entries."""
    doc = json.loads(value) if isinstance(value, str) else value
    return [o for o in doc if isinstance(o, dict)] if isinstance(doc, list) else []
