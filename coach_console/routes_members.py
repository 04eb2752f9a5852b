"""Members: the list of one's own scope, the member page, its SVG charts and the care plan.

Every view of a member's data is audited (`member.view` with the sections shown, `member.chart`
per chart); a member outside the person's scope answers 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from coach_console import charts, members
from coach_console.access import require_member
from coach_console.accounts import Staff
from coach_console.audit import audit
from coach_console.deps import ActingStaff, CurrentStaff, Now, Pool, Templates
from coach_console.errors import Forbidden, Reason
from coach_console.glucose_stats import (
    CgmSummary,
    FingerstickSummary,
    GlucosePoint,
    agp_bands,
    cgm_summary,
    fingerstick_summary,
    modal_day_bands,
)
from coach_console.trends import BpMean, WeightChange, bp_mean, rolling_bp_means, weight_change
from services.domain.organisation import Condition
from services.storage.db import Connection

router = APIRouter()
MEMBER_SECTIONS = (
    "contact", "emergency_contact", "language", "timezone", "programs", "devices", "care_plan",
    "alerts", "outreach", "glucose", "blood_pressure", "weight",
)  # fmt: skip


class Chart(StrEnum):
    GLUCOSE = "glucose"
    AGP = "agp"
    TIR = "tir"
    BP = "bp"
    WEIGHT = "weight"


@dataclass(frozen=True, slots=True)
class Readings:
    zone: ZoneInfo
    now: datetime
    fingersticks: list[GlucosePoint]
    cgm: list[GlucosePoint]

    @property
    def fingerstick(self) -> FingerstickSummary:
        return fingerstick_summary(self.fingersticks)

    @property
    def cgm_summary(self) -> CgmSummary | None:
        return cgm_summary(self.cgm, self.now) if self.cgm else None


async def _glucose(conn: Connection, member_id: str, zone: ZoneInfo, now: datetime) -> Readings:
    fingersticks = await members.glucose_points(
        conn, member_id, "device", now - members.FINGERSTICK_WINDOW, now
    )
    cgm = await members.glucose_points(conn, member_id, "cgm", now - members.CGM_LOOKBACK, now)
    return Readings(zone, now, fingersticks, cgm)


async def _zone(conn: Connection, member_id: str) -> ZoneInfo:
    name = await conn.fetchval("SELECT timezone FROM members WHERE id = $1", member_id)
    return ZoneInfo(name or "UTC")


@router.get("/members")
async def member_list(
    request: Request, staff: CurrentStaff, pool: Pool, pages: Templates
) -> HTMLResponse:
    async with pool.acquire() as conn:
        items = await members.list_members(conn, staff)
        await audit(conn, staff.id, "members.list", None, {"members": len(items)})
    return pages.render(request, "members.html", items=items)


@router.get("/members/{member_id}")
async def member_page(
    request: Request, member_id: str, staff: CurrentStaff, pool: Pool, pages: Templates,
    clock: Now,
) -> HTMLResponse:  # fmt: skip
    now = clock()
    async with pool.acquire() as conn:
        await require_member(conn, staff, member_id)
        profile = await members.member_profile(conn, member_id)
        zone = ZoneInfo(profile["timezone"])
        ctx: dict[str, Any] = {
            "member": profile,
            "programs": await members.programs(conn, member_id),
            "devices": await members.devices(conn, member_id, now),
            "care_plan": await members.care_plan(conn, member_id),
            "alerts": await members.alert_history(conn, member_id),
            "outreach": await members.outreach_history(conn, member_id),
        }
        glucose = await _glucose(conn, member_id, zone, now)
        bp = await members.bp_points(conn, member_id, now - members.BP_WINDOW, now)
        weights = await members.weight_points(conn, member_id, now - members.WEIGHT_WINDOW, now)
        await audit(conn, staff.id, "member.view", member_id, {"sections": list(MEMBER_SECTIONS)})
    bp7: BpMean | None = bp_mean(bp, now)
    change: WeightChange | None = weight_change(weights)
    return pages.render(
        request, "member.html", **ctx, now=now, fingerstick=glucose.fingerstick,
        has_fingersticks=bool(glucose.fingersticks), cgm=glucose.cgm_summary, bp7=bp7,
        bp_count=len(bp), weight=change, weight_count=len(weights),
        may_edit=members.may_edit_care_plan(staff),
    )  # fmt: skip


def _svg(body: str) -> Response:
    return Response(body, media_type="image/svg+xml")


@router.get("/members/{member_id}/charts/{chart}.svg")
async def member_chart(
    member_id: str, chart: Chart, staff: CurrentStaff, pool: Pool, clock: Now
) -> Response:
    now = clock()
    async with pool.acquire() as conn:
        await require_member(conn, staff, member_id)
        zone = await _zone(conn, member_id)
        await audit(conn, staff.id, "member.chart", member_id, {"chart": chart.value})
        if chart in (Chart.GLUCOSE, Chart.AGP, Chart.TIR):
            g = await _glucose(conn, member_id, zone, now)
            if chart is Chart.GLUCOSE:
                return _svg(charts.modal_day_chart(g.fingersticks,
                                                   modal_day_bands(g.fingersticks, zone), zone))
            summary = g.cgm_summary
            sufficient = summary is not None and summary.sufficient
            if chart is Chart.AGP:
                return _svg(charts.agp_chart(agp_bands(g.cgm, zone) if sufficient else ()))
            if summary is None or summary.ranges is None or not sufficient:
                return _svg(charts.agp_chart(()))
            return _svg(charts.time_in_ranges_chart(summary.ranges))
        if chart is Chart.BP:
            start = now - members.BP_WINDOW
            points = await members.bp_points(conn, member_id, start, now)
            return _svg(charts.bp_chart(points, rolling_bp_means(points), start, now, zone))
        start = now - members.WEIGHT_WINDOW
        weights = await members.weight_points(conn, member_id, start, now)
        return _svg(charts.weight_chart(weights, start, now, zone))


def _require_editor(staff: Staff) -> None:
    if not members.may_edit_care_plan(staff):
        raise Forbidden(Reason.CREDENTIAL_REQUIRED,
                        "care plans are changed by a clinically credentialed supervisor")


@router.get("/members/{member_id}/care-plan")
async def care_plan_form(
    request: Request, member_id: str, staff: CurrentStaff, pool: Pool, pages: Templates
) -> HTMLResponse:
    async with pool.acquire() as conn:
        await require_member(conn, staff, member_id)
        _require_editor(staff)
        plan = await members.care_plan(conn, member_id)
        await audit(conn, staff.id, "care_plan.view", member_id, {})
    return pages.render(request, "care_plan.html", member_id=member_id, plan=plan,
                        conditions=[c.value for c in Condition],
                        choices=members.OVERRIDE_CHOICES)  # fmt: skip


@router.post("/members/{member_id}/care-plan")
async def care_plan_update(
    member_id: str, staff: ActingStaff, pool: Pool, clock: Now,
    conditions: Annotated[list[str], Form()] = [],  # noqa: B006 - FastAPI copies defaults
    remove: Annotated[list[str], Form()] = [],  # noqa: B006
    add: Annotated[str, Form(max_length=80)] = "",
    value: Annotated[str, Form(max_length=20)] = "",
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> RedirectResponse:  # fmt: skip
    async with pool.acquire() as conn:
        await require_member(conn, staff, member_id)
        _require_editor(staff)
        edit = members.CarePlanEdit(conditions, set(remove), add or None, value, reason)
        await members.update_care_plan(conn, staff, member_id, edit, clock())
    return RedirectResponse(f"/members/{member_id}?msg=care_plan", status_code=303)
