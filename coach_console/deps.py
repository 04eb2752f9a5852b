"""The console's dependencies as `Annotated` aliases: a route names what it needs by type.

App-scoped objects come from the lifespan state (coach_console.app), copied by Starlette into
each request's `request.state`. The three ways a route meets its user:

- `CurrentStaff`: a page the person opened; counts as activity (resets the idle timer).
- `PassiveStaff`: live updates and background refreshes; checks the session, does not extend it.
- `ActingStaff`: every POST. As CurrentStaff, plus the session's CSRF token (form field
  `csrf_token` or header `X-CSRF-Token`, compared in constant time) and a same-origin check.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Final, cast
from urllib.parse import urlsplit

import asyncpg
from fastapi import Depends, Request

from coach_console.accounts import Staff
from coach_console.errors import Forbidden, LoginRequired, Reason
from coach_console.live import AlertHub
from coach_console.pages import Pages
from coach_console.sessions import Session, load_session
from coach_console.settings import ConsoleSettings
from services.settings import Settings

CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "x-csrf-token"
Clock = Callable[[], datetime]


def cookie_secure(request: Request) -> bool:
    return cast(bool, request.state.cookie_secure)


def session_cookie_name(secure: bool) -> str:
    # __Host- cookies must be Secure, Path=/ and host-only: no subdomain can set or shadow them.
    return "__Host-vigil_session" if secure else "vigil_session"


def login_cookie_name(secure: bool) -> str:
    return "__Host-vigil_login" if secure else "vigil_login"


def _pool(request: Request) -> asyncpg.Pool:
    return cast(asyncpg.Pool, request.state.pool)


def _console_settings(request: Request) -> ConsoleSettings:
    return cast(ConsoleSettings, request.state.console_settings)


def _settings(request: Request) -> Settings:
    return cast(Settings, request.state.settings)


def _hub(request: Request) -> AlertHub:
    return cast(AlertHub, request.state.hub)


def _pages(request: Request) -> Pages:
    return cast(Pages, request.state.pages)


def _clock(request: Request) -> Clock:
    return cast(Clock, request.state.clock)


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
Config = Annotated[ConsoleSettings, Depends(_console_settings)]
AppSettings = Annotated[Settings, Depends(_settings)]
Hub = Annotated[AlertHub, Depends(_hub)]
Templates = Annotated[Pages, Depends(_pages)]
Now = Annotated[Clock, Depends(_clock)]


def _next_path(request: Request) -> str:
    path = request.url.path
    return path + (f"?{request.url.query}" if request.url.query else "")


async def session_of(request: Request, *, touch: bool) -> Session | None:
    token = request.cookies.get(session_cookie_name(cookie_secure(request)))
    async with _pool(request).acquire() as conn:
        session = await load_session(
            conn, token, _clock(request)(), _console_settings(request), touch=touch
        )
    request.state.session = session
    return session


async def _current(request: Request) -> Staff:
    session = await session_of(request, touch=True)
    if session is None or session.mfa_pending:
        raise LoginRequired(_next_path(request) if request.method == "GET" else "/queue")
    return session.staff


async def _passive(request: Request) -> Staff:
    session = await session_of(request, touch=False)
    if session is None or session.mfa_pending:
        raise LoginRequired("/queue")
    return session.staff


def check_same_origin(request: Request) -> None:
    """Browsers send Origin on every POST and Sec-Fetch-Site on modern ones: refuse another
    site's request before anything else (defence in depth beside the token and SameSite)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(Reason.CROSS_ORIGIN, "requests from other sites are refused")
    origin = request.headers.get("origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc != request.url.netloc):
        raise Forbidden(Reason.CROSS_ORIGIN, "requests from other sites are refused")


async def check_csrf(request: Request, expected: str) -> None:
    check_same_origin(request)
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden(Reason.CSRF_FAILED, "the form expired or did not come from this console; "
                        "reload the page and try again")  # fmt: skip


async def _acting(request: Request) -> Staff:
    staff = await _current(request)
    session = cast(Session, request.state.session)
    await check_csrf(request, session.csrf_token)
    return staff


CurrentStaff = Annotated[Staff, Depends(_current)]
PassiveStaff = Annotated[Staff, Depends(_passive)]
ActingStaff = Annotated[Staff, Depends(_acting)]


def require_role(staff: Staff, *roles: str) -> None:
    if staff.role not in roles:
        raise Forbidden(Reason.ROLE_REQUIRED, f"this page is for the {' or '.join(roles)} role")
