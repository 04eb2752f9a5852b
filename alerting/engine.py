"""The rule engine around the pure rules: reads context and history, records alerts.

It is the pipeline's sink: after each batch commits, `readings_committed` evaluates every
reading-driven rule on every new reading and records the findings. Alert uniqueness rests on the
database (a partial unique index on active alerts; a reading attaches to an alert once), so any
number of processes may evaluate, even the same reading, and a retry never double-counts.
New and changed alerts are announced with NOTIFY on `vigil_alerts` when they commit.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

import asyncpg
import orjson

from alerting.policy import AlertPolicy
from alerting.rules import (
    HISTORY,
    TIER_RANK,
    Finding,
    MemberContext,
    RuleReading,
    evaluate,
    is_low,
)
from alerting.thresholds import DEFAULTS, apply_overrides
from services.pipeline.sink import StoredReading
from services.storage.db import Connection

log = logging.getLogger(__name__)

NOTIFY_CHANNEL: Final = "vigil_alerts"
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def rule_reading(s: StoredReading) -> RuleReading:
    n = s.reading
    return RuleReading(
        device_id=n.device_id, seq_epoch=s.seq_epoch, seq=n.seq, kind=n.kind, source=n.source,
        effective_at=s.effective_at, received_at=s.received_at, flags=n.flags, unit=n.unit,
        value=n.value if n.kind != "blood_pressure" else n.systolic, systolic=n.systolic,
        diastolic=n.diastolic, glucose_mgdl=n.glucose_mgdl, systolic_mmhg=n.systolic_mmhg,
        diastolic_mmhg=n.diastolic_mmhg, weight_kg=n.weight_kg,
    )  # fmt: skip


def _from_row(r: asyncpg.Record) -> RuleReading:
    kind = r["kind"]
    return RuleReading(
        device_id=r["device_id"], seq_epoch=r["seq_epoch"], seq=r["seq"], kind=kind,
        source=r["source"], effective_at=r["effective_at"], received_at=r["received_at"],
        flags=tuple(r["flags"]), unit=r["unit"],
        value=r["value"] if kind != "blood_pressure" else r["systolic"],
        systolic=r["systolic"], diastolic=r["diastolic"], glucose_mgdl=r["glucose_mgdl"],
        systolic_mmhg=r["systolic_mmhg"], diastolic_mmhg=r["diastolic_mmhg"],
        weight_kg=r["weight_kg"],
    )  # fmt: skip


_READING_COLS: Final = (
    "member_id, device_id, seq_epoch, seq, kind, source, effective_at, received_at, flags, unit, "
    "value, systolic, diastolic, glucose_mgdl, systolic_mmhg, diastolic_mmhg, weight_kg"
)


class RuleEngine:
    """Evaluates committed readings and records alerts (a `ReadingSink`)."""

    durable = True

    def __init__(self, pool: asyncpg.Pool, *, clock: Clock = _utcnow) -> None:
        self._pool = pool
        self._clock = clock

    async def readings_committed(self, readings: Sequence[StoredReading]) -> None:
        async with self._pool.acquire() as conn:
            contexts = await self._contexts(conn, list({s.member_id for s in readings}))
        # Most readings are unremarkable glucose values: within the member's band no glucose
        # rule can fire and none needs history, so they are not evaluated further.
        worth = [
            s for s in readings
            if s.member_id in contexts and not _quiet_glucose(contexts[s.member_id][0], s)
        ]  # fmt: skip
        members = {(s.device_id, s.seq_epoch, s.seq): s.member_id for s in worth}
        await self.evaluate([rule_reading(s) for s in worth], members, contexts)

    async def evaluate(
        self,
        readings: Sequence[RuleReading],
        members: dict[tuple[str, int, int], str],
        contexts: dict[str, tuple[MemberContext, AlertPolicy]] | None = None,
    ) -> list[int]:
        """Run every reading-driven rule on `readings`; returns the ids of alerts touched."""
        if not readings:
            return []
        by_member: dict[str, list[RuleReading]] = defaultdict(list)
        for r in readings:
            by_member[members[r.key]].append(r)
        async with self._pool.acquire() as conn:
            if contexts is None:
                contexts = await self._contexts(conn, list(by_member))
            history = await self._history(conn, by_member, contexts)
            findings: list[tuple[str, Finding]] = []
            for member_id, rs in by_member.items():
                if member_id not in contexts:
                    continue
                ctx, _ = contexts[member_id]
                # The rules bound their windows by each reading's effective_at themselves.
                past = history.get(member_id) or rs
                for r in rs:
                    findings += [(member_id, f) for f in evaluate(ctx, r, past)]
            if not findings:
                return []
            return await self.record(conn, findings, {m: p for m, (_, p) in contexts.items()})

    async def sweep_outbox(self, older_than: float = 30.0, limit: int = 20) -> int:
        """Evaluate batches whose process died between commit and evaluation. Safe to run in
        every process at once (SKIP LOCKED) and to repeat (a reading attaches to an alert once).
        Returns the number of batches evaluated."""
        done = 0
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, device_ids, seq_epochs, seqs FROM rule_outbox "
                "WHERE created_at < now() - make_interval(secs => $1) "
                "ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                older_than, limit,
            )  # fmt: skip
            for row in rows:
                stored = await conn.fetch(
                    f"SELECT {_READING_COLS} FROM readings r JOIN unnest($1::text[], "
                    "$2::int[], $3::bigint[]) AS u(device_id, seq_epoch, seq) "
                    "USING (device_id, seq_epoch, seq)",
                    row["device_ids"], row["seq_epochs"], row["seqs"],
                )  # fmt: skip
                readings = [_from_row(s) for s in stored]
                members = {
                    (s["device_id"], s["seq_epoch"], s["seq"]): s["member_id"] for s in stored
                }
                await self.evaluate(readings, members)
                await conn.execute("DELETE FROM rule_outbox WHERE id = $1", row["id"])
                done += 1
        if done:
            log.warning("evaluated %d batches left behind by a process that stopped", done)
        return done

    async def _contexts(
        self, conn: Connection, member_ids: list[str]
    ) -> dict[str, tuple[MemberContext, AlertPolicy]]:
        rows = await conn.fetch(
            """SELECT m.id, m.timezone, c.alert_policy, p.conditions, p.overrides
               FROM members m JOIN clients c ON c.id = m.client_id
               LEFT JOIN care_plans p ON p.member_id = m.id
               WHERE m.id = ANY($1::text[])""",
            member_ids,
        )
        out = {}
        policies: dict[str, AlertPolicy] = {}  # most members of a batch share a few clients
        for r in rows:
            raw_policy = r["alert_policy"]
            policy = policies.get(raw_policy)
            if policy is None:
                policy = policies[raw_policy] = AlertPolicy.from_json(_json(raw_policy))
            raw_overrides = r["overrides"]
            overrides = _json(raw_overrides) if raw_overrides not in (None, "[]") else []
            ctx = MemberContext(
                member_id=r["id"],
                zone=_zone(r["timezone"]),
                conditions=frozenset(r["conditions"] or ()),
                thresholds=apply_overrides(overrides) if overrides else DEFAULTS,
                late_after=policy.late_after,
            )
            out[r["id"]] = (ctx, policy)
        return out

    async def _history(
        self,
        conn: Connection,
        by_member: dict[str, list[RuleReading]],
        contexts: dict[str, tuple[MemberContext, AlertPolicy]],
    ) -> dict[str, list[RuleReading]]:
        """Stored readings the windowed rules need (the batch's own included: committed)."""
        wanted: dict[str, set[str]] = defaultdict(set)
        earliest: dict[str, datetime] = {}
        latest: dict[str, datetime] = {}
        for member_id, rs in by_member.items():
            if member_id not in contexts:
                continue
            thresholds = contexts[member_id][0].thresholds
            for r in rs:
                if r.kind == "glucose" and not is_low(thresholds, r):
                    continue  # only lows look back (recurring hypoglycaemia)
                wanted[r.kind].add(member_id)
                since = r.effective_at - HISTORY[r.kind]
                earliest[r.kind] = min(earliest.get(r.kind, since), since)
                latest[r.kind] = max(latest.get(r.kind, r.effective_at), r.effective_at)
        out: dict[str, list[RuleReading]] = defaultdict(list)
        for kind, members in wanted.items():
            rows = await conn.fetch(
                f"SELECT {_READING_COLS} FROM readings WHERE member_id = ANY($1::text[]) "
                "AND kind = $2 AND effective_at >= $3 AND effective_at <= $4 "
                "ORDER BY effective_at",
                list(members), kind, earliest[kind], latest[kind],
            )  # fmt: skip
            for row in rows:
                out[row["member_id"]].append(_from_row(row))
        return out

    async def record(
        self,
        conn: Connection,
        findings: list[tuple[str, Finding]],
        policies: dict[str, AlertPolicy],
    ) -> list[int]:
        touched: list[int] = []
        async with conn.transaction():
            for member_id, f in findings:
                alert_id = await self._record_one(conn, member_id, f, policies[member_id])
                if alert_id is not None:
                    touched.append(alert_id)
        return touched

    async def _record_one(
        self, conn: Connection, member_id: str, f: Finding, policy: AlertPolicy
    ) -> int | None:
        now = self._clock()
        r = f.reading
        for _ in range(3):
            active = await conn.fetchrow(
                "SELECT id, tier, status, retrospective, worst_value, last_reading_at, "
                "acknowledged_by FROM alerts WHERE member_id = $1 AND rule = $2 "
                "AND status IN ('open', 'acknowledged') FOR UPDATE",
                member_id, f.rule,
            )  # fmt: skip
            if active is not None:
                return await self._attach(conn, active, member_id, f, policy, now)
            if f.tier != "critical" and await self._cooling_down(conn, member_id, f, policy, now):
                await _event(conn, None, member_id, f.rule, "suppressed_cooldown",
                             {"tier": f.tier, "reading": _key(r)})  # fmt: skip
                return None
            alert_id = await conn.fetchval(
                """INSERT INTO alerts (member_id, rule, tier, retrospective, opened_at,
                       first_reading_at, last_reading_at, latest_value, worst_value, unit, worse,
                       detail, sla_due_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $7, $8, $9, $10, $11)
                   ON CONFLICT (member_id, rule) WHERE status IN ('open', 'acknowledged')
                   DO NOTHING RETURNING id""",
                member_id, f.rule, f.tier, f.retrospective, now, r.effective_at, f.value,
                f.unit, f.worse, json.dumps(f.detail), now + policy.sla(f.tier, f.retrospective),
            )  # fmt: skip
            if alert_id is None:
                continue  # another process opened it a moment ago: attach to theirs
            await conn.execute(
                "INSERT INTO alert_readings VALUES ($1, $2, $3, $4, $5, $6)",
                alert_id, r.device_id, r.seq_epoch, r.seq, r.effective_at, f.value,
            )  # fmt: skip
            await _event(conn, alert_id, member_id, f.rule, "opened",
                         {"tier": f.tier, "retrospective": f.retrospective})  # fmt: skip
            await _notify(conn, alert_id, member_id, f.rule, f.tier, "opened")
            return int(alert_id)
        raise RuntimeError(f"could not record {f.rule} for {member_id}")  # pragma: no cover

    async def _attach(
        self,
        conn: Connection,
        active: asyncpg.Record,
        member_id: str,
        f: Finding,
        policy: AlertPolicy,
        now: datetime,
    ) -> int | None:
        r = f.reading
        alert_id: int = active["id"]
        attached = await conn.execute(
            "INSERT INTO alert_readings VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            alert_id, r.device_id, r.seq_epoch, r.seq, r.effective_at, f.value,
        )  # fmt: skip
        if attached.endswith(" 0"):
            return None  # this reading was already counted (a retry or another process)
        raised = TIER_RANK[f.tier] > TIER_RANK[active["tier"]]
        made_live = active["retrospective"] and not f.retrospective
        worst = active["worst_value"]
        worse = f.value is not None and (
            worst is None or (f.value < worst if f.worse == "low" else f.value > worst)
        )
        newest = active["last_reading_at"] is None or r.effective_at >= active["last_reading_at"]
        tier = f.tier if raised else active["tier"]
        sla_reset = made_live or raised
        await conn.execute(
            """UPDATE alerts SET count = count + 1,
                   last_reading_at = greatest(last_reading_at, $2),
                   latest_value = CASE WHEN $3 THEN $4 ELSE latest_value END,
                   worst_value = CASE WHEN $5 THEN $4 ELSE worst_value END,
                   tier = $6,
                   retrospective = retrospective AND $7,
                   sla_due_at = CASE WHEN $8 AND status = 'open' THEN least(sla_due_at, $9)
                                     ELSE sla_due_at END,
                   updated_at = $10
               WHERE id = $1""",
            alert_id, r.effective_at, newest, f.value, worse, tier, f.retrospective,
            sla_reset, now + policy.sla(tier, False if made_live else f.retrospective), now,
        )  # fmt: skip
        kind = "reading_attached"
        if raised:
            kind = "tier_raised"
        elif made_live:
            kind = "made_live"
        await _event(conn, alert_id, member_id, f.rule, kind,
                     {"tier": tier, "reading": _key(r), "worse": worse})  # fmt: skip
        if raised or made_live or (worse and active["status"] == "acknowledged"):
            # A worse reading on a claimed alert re-notifies the coach who holds it.
            what = "renotify" if active["status"] == "acknowledged" else kind
            if active["status"] == "acknowledged":
                await _event(conn, alert_id, member_id, f.rule, "renotified",
                             {"coach": active["acknowledged_by"]})  # fmt: skip
            await _notify(conn, alert_id, member_id, f.rule, tier, what)
        return alert_id

    async def _cooling_down(
        self, conn: Connection, member_id: str, f: Finding, policy: AlertPolicy, now: datetime
    ) -> bool:
        resolved_at: datetime | None = await conn.fetchval(
            "SELECT max(resolved_at) FROM alerts WHERE member_id = $1 AND rule = $2 "
            "AND status = 'resolved'",
            member_id, f.rule,
        )  # fmt: skip
        return resolved_at is not None and now - resolved_at < policy.cooldown


def _quiet_glucose(ctx: MemberContext, s: StoredReading) -> bool:
    n = s.reading
    if n.kind != "glucose" or n.flags or n.value is None:
        return False
    t = ctx.thresholds
    return t.hypo_level1.in_unit(n.unit) <= n.value < t.hyper_medium.in_unit(n.unit)


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _key(r: RuleReading) -> str:
    return f"{r.device_id}/{r.seq_epoch}/{r.seq}"


def _json(v: Any) -> Any:
    return orjson.loads(v) if isinstance(v, str) else v


async def _event(
    conn: Connection, alert_id: int | None, member_id: str, rule: str, kind: str,
    detail: dict[str, Any], actor: str | None = None,
) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO alert_events (alert_id, member_id, rule, kind, actor, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        alert_id, member_id, rule, kind, actor, json.dumps(detail, default=str),
    )  # fmt: skip


async def _notify(
    conn: Connection, alert_id: int, member_id: str, rule: str, tier: str, what: str
) -> None:
    # Delivered to every LISTENing console process when this transaction commits. No PHI: ids.
    payload = json.dumps({"id": alert_id, "member_id": member_id, "rule": rule, "tier": tier,
                          "event": what})  # fmt: skip
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, payload)


