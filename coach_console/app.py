"""The coach console (FastAPI): `create_app(settings)`, served by `vigil console`.

The lifespan opens the asyncpg pool, the alert hub (one LISTEN on `vigil_alerts`) and the
follow-up timer task, and yields them as the lifespan state; routes get them through the aliases
in coach_console/deps.py. Nothing connects or reads the environment at import.

Every response carries a strict Content-Security-Policy (scripts, styles and images from this
origin only: no inline script, no CDN), no-store caching for pages (they hold PHI), and the usual
anti-framing and no-sniff headers. Logs carry ids and counts, never names, contact data or
reading values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypedDict
from urllib.parse import quote

import asyncpg
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coach_console import routes_auth, routes_members, routes_queue, routes_reports
from coach_console.errors import ConsoleError, LoginRequired
from coach_console.live import AlertHub
from coach_console.pages import Pages
from coach_console.sessions import housekeeping
from coach_console.settings import ConsoleSettings
from coach_console.work import announce_due_followups
from services.errors import ConfigurationError
from services.settings import Settings
from services.storage.db import Pool, open_pool

log = logging.getLogger(__name__)
#: Templates and static files sit beside the code (package data, see pyproject.toml).
PACKAGE_DIR: Final = Path(__file__).resolve().parent
Clock = Callable[[], datetime]

HOUSEKEEPING_EVERY: Final = 3600.0  # seconds
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ConsoleState(TypedDict):
    """What the lifespan yields; Starlette copies it into every request's `request.state`."""

    pool: asyncpg.Pool
    hub: AlertHub
    pages: Pages
    settings: Settings
    console_settings: ConsoleSettings
    cookie_secure: bool
    clock: Clock


class SecurityHeaders:
    """Pure ASGI middleware (streams pass through untouched, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                extra = {
                    b"content-security-policy": CSP.encode(),
                    b"x-content-type-options": b"nosniff",
                    b"x-frame-options": b"DENY",
                    b"referrer-policy": b"same-origin",  # no-referrer would make Origin "null"
                    b"cross-origin-opener-policy": b"same-origin",
                    b"cross-origin-resource-policy": b"same-origin",
                    b"permissions-policy": b"camera=(), microphone=(), geolocation=()",
                    b"cache-control": b"public, max-age=3600" if static else b"no-store",
                }
                if self.hsts:
                    extra[b"strict-transport-security"] = b"max-age=31536000"
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in extra.items() if k not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _timers(pool: Pool, interval: float, clock: Clock, stop: asyncio.Event) -> None:
    """Recheck timers every `interval`; old sessions and login attempts about hourly."""
    last_housekeeping = 0.0
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            announced = await announce_due_followups(pool, clock())
            if announced:
                log.info("console: %d recheck timers came due", announced)
            if loop.time() - last_housekeeping > HOUSEKEEPING_EVERY:
                last_housekeeping = loop.time()
                async with pool.acquire() as conn:
                    await housekeeping(conn, clock())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("console: timers: %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def _back_link(path: str) -> str:
    parts = path.strip("/").split("/")
    if len(parts) >= 2 and parts[0] in ("alerts", "members"):
        return f"/{parts[0]}/{parts[1]}"
    return "/queue"


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    pages: Pages | None = getattr(request.state, "pages", None)
    if pages is None:  # pragma: no cover - only before the lifespan ran
        return PlainTextResponse(message, status_code=status)
    return pages.render(request, "error.html", status, title=title, error=message,
                        back=_back_link(request.url.path))  # fmt: skip


def install_error_handlers(app: FastAPI) -> None:
    async def console_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConsoleError)  # noqa: S101 - registered for ConsoleError only
        if isinstance(exc, LoginRequired):
            return RedirectResponse(f"/login?next={quote(exc.next_path)}", status_code=303)
        titles = {400: "Please check the form", 403: "Not allowed", 404: "Not found",
                  409: "Already taken care of"}  # fmt: skip
        return _error_page(request, exc.status, titles.get(exc.status, "Error"), exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101
        message = "No such page." if exc.status_code == 404 else str(exc.detail)
        return _error_page(request, exc.status_code, "Not found" if exc.status_code == 404
                           else "Request refused", message)  # fmt: skip

    async def invalid_request(request: Request, exc: Exception) -> Response:
        return _error_page(request, 400, "Please check the form",
                           "Some fields were missing or not valid.")  # fmt: skip

    async def storage_error(request: Request, exc: Exception) -> Response:
        log.warning("console: database error on %s: %s", request.url.path, type(exc).__name__)
        return _error_page(request, 503, "Try again shortly",
                           "The database did not answer. Nothing was changed.")  # fmt: skip

    app.add_exception_handler(ConsoleError, console_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(asyncpg.PostgresConnectionError, storage_error)
    app.add_exception_handler(asyncpg.InterfaceError, storage_error)
    app.add_exception_handler(OSError, storage_error)


def create_app(
    settings: Settings, console_settings: ConsoleSettings | None = None, *,
    clock: Clock = _utcnow,
) -> FastAPI:  # fmt: skip
    config = console_settings if console_settings is not None else ConsoleSettings()
    secure = config.cookie_secure if config.cookie_secure is not None else (
        settings.env != "development"
    )  # fmt: skip
    pages = Pages()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[ConsoleState]:
        async with open_pool(settings.dsn(), min_size=1, max_size=config.pool_max_size) as pool:
            missing = await pool.fetchval("SELECT to_regclass('console_sessions') IS NULL")
            if missing:
                raise ConfigurationError("the console's tables are missing: run `vigil db migrate`")
            async with AlertHub(settings.dsn(), pool) as hub:
                stop = asyncio.Event()
                timers = asyncio.create_task(
                    _timers(pool, config.followup_poll.total_seconds(), clock, stop),
                    name="console-timers",
                )
                try:
                    yield ConsoleState(
                        pool=pool, hub=hub, pages=pages, settings=settings,
                        console_settings=config, cookie_secure=secure, clock=clock,
                    )  # fmt: skip
                finally:
                    stop.set()
                    await timers

    app = FastAPI(
        title="Vigil coach console", lifespan=lifespan, docs_url=None, redoc_url=None,
        openapi_url=None,
    )  # fmt: skip
    install_error_handlers(app)
    app.add_middleware(SecurityHeaders, hsts=secure and settings.env == "production")
    app.include_router(routes_auth.router)
    app.include_router(routes_queue.router)
    app.include_router(routes_members.router)
    app.include_router(routes_reports.router)
    app.mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static")

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> PlainTextResponse:
        hub: AlertHub = request.state.hub
        listening = hub.listening.is_set()
        return PlainTextResponse("ok" if listening else "not listening",
                                 status_code=200 if listening else 503)  # fmt: skip

    return app

