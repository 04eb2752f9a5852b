"""The supervisor view and the admin's audit log viewer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from coach_console import reports
from coach_console.audit import audit, entries
from coach_console.deps import CurrentStaff, Now, Pool, Templates, require_role

router = APIRouter()


@router.get("/supervisor")
async def supervisor(
    request: Request, staff: CurrentStaff, pool: Pool, pages: Templates, clock: Now
) -> HTMLResponse:
    require_role(staff, "supervisor", "admin")
    now = clock()
    async with pool.acquire() as conn:
        watch = await reports.sla_watch(conn, staff, now)
        ctx: dict[str, Any] = {
            "watch": watch,
            "tiers": await reports.tier_times(conn, staff, now),
            "load": await reports.coach_load(conn, staff, now),
            "unassigned": await reports.unassigned_members(conn),
            "roster": await reports.on_call_roster(conn, staff, now),
        }
        await audit(conn, staff.id, "report.supervisor", None, {"breaches": len(watch)})
    return pages.render(request, "supervisor.html", now=now, period_days=reports.PERIOD.days,
                        **ctx)  # fmt: skip


@router.get("/admin/audit")
async def audit_log(
    request: Request, staff: CurrentStaff, pool: Pool, pages: Templates,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    member: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> HTMLResponse:  # fmt: skip
    require_role(staff, "admin")
    async with pool.acquire() as conn:
        rows = await entries(conn, actor=actor or None, member_id=member or None,
                             action=action or None, before_id=before, limit=100)  # fmt: skip
        await audit(conn, staff.id, "audit.view", member or None,
                    {"actor": actor, "action": action})  # fmt: skip
    return pages.render(request, "audit.html", rows=rows, actor=actor or "", member=member or "",
                        action=action or "")  # fmt: skip
