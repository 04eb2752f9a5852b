"""The member page's data: contact, programs, devices, care plan, history and readings.

Reads only; the caller has checked the scope (access.require_member) and audits the view. The
care-plan edit is here too: only a clinically credentialed supervisor changes thresholds, with a
reason, each change kept in `care_plan_history` (append-only) and checked by
`alerting.thresholds.validate_override`, the rule engine's own gate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from alerting.thresholds import (
    DEFAULTS,
    OVERRIDABLE,
    OverrideRefused,
    Thresholds,
    apply_overrides,
    validate_override,
)
from coach_console.access import MEMBER_JOIN, OWN_SCOPE, scope_args
from coach_console.accounts import Staff
from coach_console.audit import audit
from coach_console.errors import Forbidden, InvalidInput, NotFound, Reason
from coach_console.glucose_stats import Flag, GlucosePoint
from coach_console.trends import BpPoint, WeightPoint
from services.domain.organisation import Condition
from services.domain.units import KG_PER_LB
from services.storage.db import Connection

FINGERSTICK_WINDOW: Final = timedelta(days=30)
BP_WINDOW: Final = timedelta(days=30)
WEIGHT_WINDOW: Final = timedelta(days=90)
CGM_LOOKBACK: Final = timedelta(days=14)
HISTORY_ROWS: Final = 50


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


@dataclass(frozen=True, slots=True)
class MemberListItem:
    id: str
    name: str
    coach: str | None
    programs: list[str]
    active_alerts: int


async def list_members(conn: Connection, staff: Staff, limit: int = 500) -> list[MemberListItem]:
    """The person's own scope (caseload, team, everyone), without coverage."""
    rows = await conn.fetch(
        f"""SELECT m.id, m.name, mc.name AS coach,
                   coalesce((SELECT array_agg(e.program ORDER BY e.program) FROM enrollments e
                             WHERE e.member_id = m.id AND (e.end_date IS NULL
                                   OR e.end_date >= current_date)), '{{}}') AS programs,
                   (SELECT count(*) FROM alerts a WHERE a.member_id = m.id
                    AND a.status IN ('open', 'acknowledged')) AS active_alerts
            FROM {MEMBER_JOIN} WHERE {OWN_SCOPE} ORDER BY m.name, m.id LIMIT $4""",
        *scope_args(staff), limit,
    )  # fmt: skip
    return [MemberListItem(r["id"], r["name"], r["coach"], list(r["programs"]),
                           r["active_alerts"]) for r in rows]  # fmt: skip


async def member_profile(conn: Connection, member_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        """SELECT m.id, m.name, m.birth_date, m.phone, m.emergency_contact, m.language,
                  m.timezone, m.consent_to_monitoring, m.client_id, cl.name AS client,
                  mc.name AS coach, mc.id AS coach_id
           FROM members m JOIN clients cl ON cl.id = m.client_id
           LEFT JOIN coaches mc ON mc.id = m.coach_id WHERE m.id = $1""",
        member_id,
    )
    if row is None:
        raise NotFound("member")
    out = dict(row)
    out["emergency_contact"] = _json(row["emergency_contact"]) or None
    return out


async def programs(conn: Connection, member_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT program, start_date, end_date FROM enrollments WHERE member_id = $1 "
        "ORDER BY start_date DESC, program",
        member_id,
    )
    return [dict(r) for r in rows]


async def devices(conn: Connection, member_id: str, now: datetime) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT d.id, d.kind, d.status, d.last_seen_at, d.battery_pct, d.online, d.firmware,
                  da.assigned_from, da.assigned_to
           FROM device_assignments da JOIN devices d ON d.id = da.device_id
           WHERE da.member_id = $1 AND (da.assigned_to IS NULL OR da.assigned_to > $2)
           ORDER BY d.kind, d.id""",
        member_id, now,
    )  # fmt: skip
    return [dict(r) for r in rows]


@dataclass(frozen=True, slots=True)
class ThresholdLine:
    label: str
    value: str
    overridden: bool


def threshold_lines(overrides: list[dict[str, Any]]) -> list[ThresholdLine]:
    t: Thresholds = apply_overrides(overrides)

    def line(label: str, attr: str, unit: str) -> ThresholdLine:
        v, d = getattr(t, attr), getattr(DEFAULTS, attr)
        value = v.in_unit(unit) if hasattr(v, "in_unit") else v
        default = d.in_unit(unit) if hasattr(d, "in_unit") else d
        # Weight limits are stored exactly (converted from lb); shown as people say them.
        kg = f"{value:.2f} kg ({value / KG_PER_LB:.1f} lb)" if unit == "kg" else None
        text = kg or f"{value} {unit}"
        return ThresholdLine(label, text, value != default)

    return [
        line("Low glucose, level 1 (below)", "hypo_level1", "mg/dL"),
        line("Low glucose, level 2 (below, floor)", "hypo_level2", "mg/dL"),
        line("High glucose (at or above)", "hyper_medium", "mg/dL"),
        line("Very high glucose (at or above)", "hyper_critical", "mg/dL"),
        line("Severe BP systolic (above)", "bp_severe_systolic", "mmHg"),
        line("Severe BP diastolic (above)", "bp_severe_diastolic", "mmHg"),
        line("Low BP systolic (below)", "hypotension_systolic", "mmHg"),
        line("7-day mean systolic (at or above)", "bp_uncontrolled_systolic", "mmHg"),
        line("7-day mean diastolic (at or above)", "bp_uncontrolled_diastolic", "mmHg"),
        line("Weight gain in a day (heart failure)", "weight_gain_day_kg", "kg"),
        line("Weight gain in a week (heart failure)", "weight_gain_week_kg", "kg"),
    ]


async def care_plan(conn: Connection, member_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT conditions, overrides, updated_at FROM care_plans WHERE member_id = $1",
        member_id,
    )
    overrides = (_json(row["overrides"]) if row else None) or []
    history = await conn.fetch(
        """SELECT h.changed_at, c.name AS changed_by, h.reason, h.conditions_before,
                  h.conditions_after, h.overrides_before, h.overrides_after
           FROM care_plan_history h JOIN coaches c ON c.id = h.changed_by
           WHERE h.member_id = $1 ORDER BY h.changed_at DESC, h.id DESC LIMIT $2""",
        member_id, HISTORY_ROWS,
    )  # fmt: skip
    return {
        "conditions": list(row["conditions"]) if row else [],
        "overrides": overrides if isinstance(overrides, list) else [],
        "updated_at": row["updated_at"] if row else None,
        "thresholds": threshold_lines(overrides if isinstance(overrides, list) else []),
        "history": [
            {**dict(h), "overrides_before": _json(h["overrides_before"]) or [],
             "overrides_after": _json(h["overrides_after"]) or []}
            for h in history
        ],
    }


async def alert_history(conn: Connection, member_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT a.id, a.rule, a.tier, a.status, a.opened_at, a.resolved_at, a.outcome,
                  a.worst_value, a.unit, c.name AS resolved_by
           FROM alerts a LEFT JOIN coaches c ON c.id = a.resolved_by
           WHERE a.member_id = $1 ORDER BY a.opened_at DESC, a.id DESC LIMIT $2""",
        member_id, HISTORY_ROWS,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def outreach_history(conn: Connection, member_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT o.alert_id, o.started_at, o.mode, o.outcome, o.duration_minutes, o.note,
                  c.name AS coach
           FROM outreach o JOIN coaches c ON c.id = o.coach_id
           WHERE o.member_id = $1 ORDER BY o.started_at DESC, o.id DESC LIMIT $2""",
        member_id, HISTORY_ROWS,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def glucose_points(
    conn: Connection, member_id: str, source: str, since: datetime, until: datetime
) -> list[GlucosePoint]:
    rows = await conn.fetch(
        """SELECT effective_at, glucose_mgdl, meal, flags FROM readings
           WHERE member_id = $1 AND kind = 'glucose' AND source = $2
             AND effective_at >= $3 AND effective_at < $4
             AND NOT ('control_solution' = ANY (flags))
           ORDER BY effective_at""",
        member_id, source, since, until,
    )  # fmt: skip
    out = []
    for r in rows:
        flags = set(r["flags"])
        flag: Flag | None = "LO" if "LO" in flags else "HI" if "HI" in flags else None
        value = None if flag else r["glucose_mgdl"]
        if value is None and flag is None:
            continue
        out.append(GlucosePoint(r["effective_at"], None if value is None else float(value),
                                r["meal"], flag))  # fmt: skip
    return out


async def bp_points(
    conn: Connection, member_id: str, since: datetime, until: datetime
) -> list[BpPoint]:
    rows = await conn.fetch(
        """SELECT effective_at, systolic_mmhg, diastolic_mmhg FROM readings
           WHERE member_id = $1 AND kind = 'blood_pressure' AND effective_at >= $2
             AND effective_at < $3 AND systolic_mmhg IS NOT NULL
             AND diastolic_mmhg IS NOT NULL
           ORDER BY effective_at""",
        member_id, since, until,
    )  # fmt: skip
    return [BpPoint(r["effective_at"], float(r["systolic_mmhg"]), float(r["diastolic_mmhg"]))
            for r in rows]  # fmt: skip


async def weight_points(
    conn: Connection, member_id: str, since: datetime, until: datetime
) -> list[WeightPoint]:
    rows = await conn.fetch(
        """SELECT effective_at, weight_kg FROM readings
           WHERE member_id = $1 AND kind = 'weight' AND effective_at >= $2
             AND effective_at < $3 AND weight_kg IS NOT NULL
           ORDER BY effective_at""",
        member_id, since, until,
    )  # fmt: skip
    return [WeightPoint(r["effective_at"], float(r["weight_kg"])) for r in rows]


# --- the care-plan edit ----------------------------------------------------------------------

OVERRIDE_CHOICES: Final = sorted(f"{rule}.{param}" for rule, param in OVERRIDABLE)
_UNITS: Final = {"_mgdl": "mg/dL", "_mmhg": "mmHg", "_kg": "kg"}


def _unit(parameter: str) -> str | None:
    return next((u for suffix, u in _UNITS.items() if parameter.endswith(suffix)), None)


def may_edit_care_plan(staff: Staff) -> bool:
    return staff.is_supervisor and staff.clinically_credentialed


@dataclass(frozen=True, slots=True)
class CarePlanEdit:
    conditions: list[str]
    remove: set[str]  # "rule.parameter" of overrides to drop
    add: str | None  # "rule.parameter" of an override to add or replace
    value: str | None
    reason: str


async def update_care_plan(
    conn: Connection, staff: Staff, member_id: str, edit: CarePlanEdit, now: datetime
) -> None:
    if not may_edit_care_plan(staff):
        raise Forbidden(Reason.CREDENTIAL_REQUIRED,
                        "care plans are changed by a clinically credentialed supervisor")
    reason = edit.reason.strip()
    if not 5 <= len(reason) <= 1000:
        raise InvalidInput("reason: say why, in 5 to 1000 characters")
    known = {c.value for c in Condition}
    if not set(edit.conditions) <= known:
        raise InvalidInput("conditions: unknown condition")
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT conditions, overrides FROM care_plans WHERE member_id = $1 FOR UPDATE",
            member_id,
        )
        before_conditions = list(row["conditions"]) if row else None
        before = (_json(row["overrides"]) if row else None) or []
        after = [o for o in before if f"{o.get('rule')}.{o.get('parameter')}" not in edit.remove]
        if edit.add:
            rule, _, parameter = edit.add.partition(".")
            try:
                value = Decimal((edit.value or "").strip())
            except InvalidOperation:
                raise InvalidInput("value: a decimal number") from None
            if not value.is_finite():
                raise InvalidInput("value: a decimal number")
            try:
                validate_override(rule, parameter, value, staff.credential)
            except OverrideRefused as exc:
                raise InvalidInput(str(exc)) from None
            after = [o for o in after if (o.get("rule"), o.get("parameter")) != (rule, parameter)]
            after.append({"rule": rule, "parameter": parameter, "value": str(value),
                          "unit": _unit(parameter), "reason": reason, "set_by": staff.id})
        conditions = sorted(set(edit.conditions))
        if row is None:
            await conn.execute(
                "INSERT INTO care_plans (member_id, conditions, overrides, updated_at) "
                "VALUES ($1, $2, $3, $4)",
                member_id, conditions, json.dumps(after), now,
            )  # fmt: skip
        else:
            await conn.execute(
                "UPDATE care_plans SET conditions = $2, overrides = $3, updated_at = $4 "
                "WHERE member_id = $1",
                member_id, conditions, json.dumps(after), now,
            )  # fmt: skip
        await conn.execute(
            """INSERT INTO care_plan_history (member_id, changed_by, changed_at, reason,
                   conditions_before, conditions_after, overrides_before, overrides_after)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            member_id, staff.id, now, reason, before_conditions, conditions,
            None if row is None else json.dumps(before), json.dumps(after),
        )  # fmt: skip
        await audit(conn, staff.id, "care_plan.update", member_id,
                    {"conditions_changed": conditions != (before_conditions or []),
                     "removed": sorted(edit.remove), "added": edit.add})  # fmt: skip
