"""The queue, an alert's working page and its actions, the live stream and the shift hand-off.

Every action is a POST with the session's CSRF token (deps.ActingStaff) and answers with a
redirect (post/redirect/get), so reloading a page never repeats an action.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse

from coach_console import work
from coach_console.access import concerns, require_alert
from coach_console.audit import audit
from coach_console.deps import (
    ActingStaff,
    Config,
    CurrentStaff,
    Hub,
    Now,
    PassiveStaff,
    Pool,
    Templates,
    cookie_secure,
    session_cookie_name,
)
from coach_console.errors import InvalidInput
from coach_console.queue import alert_history, alert_item, rechecks_due, visible_queue
from coach_console.sessions import end_session, load_session

router = APIRouter()
MAX_TZ_OFFSET: Final = 14 * 60  # minutes: UTC-12 to UTC+14


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


@router.get("/")
async def home(staff: CurrentStaff) -> RedirectResponse:
    return _redirect("/queue")


@router.get("/queue")
async def queue_page(
    request: Request, staff: CurrentStaff, pool: Pool, pages: Templates, config: Config,
    clock: Now,
) -> HTMLResponse:  # fmt: skip
    now = clock()
    async with pool.acquire() as conn:
        items = await visible_queue(conn, staff, config.queue_limit)
        due = await rechecks_due(conn, staff, now)
        # The page is audited; the live refreshes of the same rows (/queue/rows) are not, or
        # every alert anywhere would write an entry per open console.
        await audit(conn, staff.id, "queue.view", None, {"alerts": len(items)})
    return pages.render(request, "queue.html", items=items, due=due, now=now)


@router.get("/queue/rows")
async def queue_rows(
    request: Request, staff: PassiveStaff, pool: Pool, pages: Templates, config: Config,
    clock: Now,
) -> HTMLResponse:  # fmt: skip
    """The live part of the queue page, re-fetched by console.js on each event."""
    now = clock()
    async with pool.acquire() as conn:
        items = await visible_queue(conn, staff, config.queue_limit)
        due = await rechecks_due(conn, staff, now)
    html = pages.fragment("queue_live.html", items=items, due=due, staff=staff,
                          csrf=request.state.session.csrf_token)  # fmt: skip
    return HTMLResponse(html)


@router.get("/events")
async def events(
    request: Request, staff: PassiveStaff, hub: Hub, pool: Pool, config: Config, clock: Now
) -> StreamingResponse:
    """Server-Sent Events: `alert` events that concern this person, `logout` when the session
    ended (idle, expired, signed out elsewhere). Carries ids and event names only."""
    token = request.cookies.get(session_cookie_name(cookie_secure(request)))
    heartbeat = config.sse_heartbeat.total_seconds()

    async def stream() -> AsyncIterator[str]:
        yield "retry: 3000\n\n"
        async with hub.subscribe() as signals:
            while True:
                try:
                    signal = await asyncio.wait_for(signals.get(), heartbeat)
                except TimeoutError:
                    async with pool.acquire() as conn:
                        live = await load_session(conn, token, clock(), config, touch=False)
                    if live is None:
                        yield "event: logout\ndata: {}\n\n"
                        return
                    yield ": keep-alive\n\n"
                    continue
                if signal.facts is None or concerns(staff, signal.facts):
                    yield f"event: alert\ndata: {signal.as_json()}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )  # fmt: skip


@router.get("/alerts/{alert_id}")
async def alert_page(
    request: Request, alert_id: int, staff: CurrentStaff, pool: Pool, pages: Templates,
    clock: Now,
) -> HTMLResponse:  # fmt: skip
    async with pool.acquire() as conn:
        scope = await require_alert(conn, staff, alert_id)
        item = await alert_item(conn, staff, alert_id)
        history = await alert_history(conn, alert_id)
        await audit(conn, staff.id, "alert.view", scope.member_id, {"alert_id": alert_id})
    holder = scope.acknowledged_by == staff.id
    can_act = scope.active and (holder or (staff.role != "coach" and scope.member_visible))
    return pages.render(request, "alert.html", item=item, scope=scope, history=history,
                        can_act=can_act, now=clock())  # fmt: skip


@router.post("/alerts/{alert_id}/claim")
async def claim(alert_id: int, staff: ActingStaff, pool: Pool, clock: Now) -> RedirectResponse:
    async with pool.acquire() as conn:
        scope = await require_alert(conn, staff, alert_id)
        await work.claim(conn, staff, scope, clock())
    return _redirect(f"/alerts/{alert_id}?msg=claimed")


@router.post("/alerts/{alert_id}/notes")
async def add_note(
    alert_id: int, staff: ActingStaff, pool: Pool, clock: Now,
    body: Annotated[str, Form(max_length=work.MAX_NOTE)] = "",
) -> RedirectResponse:  # fmt: skip
    async with pool.acquire() as conn:
        scope = await require_alert(conn, staff, alert_id)
        await work.add_note(conn, staff, scope, body, clock())
    return _redirect(f"/alerts/{alert_id}?msg=note")


def parse_local_time(value: str, tz_offset: int, now: datetime) -> datetime:
    """A `datetime-local` field plus the browser's getTimezoneOffset() (minutes behind UTC),
    which console.js fills in; without it the time is read as UTC. Empty means now."""
    if not value.strip():
        return now
    if not -MAX_TZ_OFFSET <= tz_offset <= MAX_TZ_OFFSET:
        raise InvalidInput("start: implausible time zone offset")
    try:
        naive = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput("start: a date and time such as 2026-11-03T14:05") from None
    if naive.tzinfo is not None:
        return naive
    return naive.replace(tzinfo=UTC) + timedelta(minutes=tz_offset)


@router.post("/alerts/{alert_id}/outreach")
async def record_outreach(
    alert_id: int, staff: ActingStaff, pool: Pool, clock: Now,
    mode: Annotated[str, Form(max_length=32)] = "",
    outcome: Annotated[str, Form(max_length=32)] = "",
    started_at: Annotated[str, Form(max_length=40)] = "",
    tz_offset: Annotated[int, Form()] = 0,
    duration_minutes: Annotated[int, Form(ge=0, le=work.MAX_OUTREACH_MINUTES)] = 0,
    note: Annotated[str, Form(max_length=work.MAX_NOTE)] = "",
) -> RedirectResponse:  # fmt: skip
    now = clock()
    form = work.OutreachForm(mode, outcome, parse_local_time(started_at, tz_offset, now),
                             duration_minutes, note)  # fmt: skip
    async with pool.acquire() as conn:
        scope = await require_alert(conn, staff, alert_id)
        await work.record_outreach(conn, staff, scope, form, now)
    return _redirect(f"/alerts/{alert_id}?msg=outreach")


@router.post("/alerts/{alert_id}/followup")
async def set_followup(
    alert_id: int, staff: ActingStaff, pool: Pool, clock: Now,
    minutes: Annotated[int, Form()] = 15,
) -> RedirectResponse:  # fmt: skip
    async with pool.acquire() as conn:
        scope = await require_alert(conn, staff, alert_id)
        await work.set_followup(conn, staff, scope, minutes, clock())
    return _redirect(f"/alerts/{alert_id}?msg=followup")


@router.post("/alerts/{alert_id}/resolve")
async def resolve(
    alert_id: int, staff: ActingStaff, pool: Pool, clock: Now,
    outcome: Annotated[str, Form(max_length=32)] = "",
    note: Annotated[str, Form(max_length=work.MAX_NOTE)] = "",
) -> RedirectResponse:  # fmt: skip
    async with pool.acquire() as conn:
        scope = await require_alert(conn, staff, alert_id)
        await work.resolve(conn, staff, scope, outcome, note, clock())
    return _redirect("/queue?msg=resolved")


@router.get("/shift")
async def shift_page(
    request: Request, staff: CurrentStaff, pool: Pool, pages: Templates, config: Config
) -> HTMLResponse:
    async with pool.acquire() as conn:
        held = [i for i in await visible_queue(conn, staff, config.queue_limit)
                if i.status == "acknowledged" and i.acknowledged_by == staff.id]  # fmt: skip
        targets = await work.handoff_targets(conn, staff)
    return pages.render(request, "shift.html", held=held, targets=targets)


@router.post("/shift/handoff")
async def hand_off(
    request: Request, staff: ActingStaff, pool: Pool, clock: Now,
    to_coach: Annotated[str, Form(max_length=64)] = "",
    sign_out: Annotated[bool, Form()] = False,
) -> Response:  # fmt: skip
    now = clock()
    async with pool.acquire() as conn:
        await work.hand_off(conn, staff, to_coach, now)
        if sign_out:
            await end_session(conn, request.state.session.token_hash, "logout", now)
            await audit(conn, staff.id, "auth.logout", None, {"after": "handoff"})
    if sign_out:
        response = _redirect("/login?msg=signed_out")
        secure = cookie_secure(request)
        response.delete_cookie(session_cookie_name(secure), path="/", secure=secure,
                               httponly=True, samesite="strict")  # fmt: skip
        return response
    return _redirect("/queue?msg=handoff")
