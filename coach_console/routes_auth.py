"""Signing in and out: password, then TOTP where required; lockout; session cookies.

The login form is protected against cross-site posting by a double-submit token: a random value
in an HttpOnly, SameSite=Strict cookie (a __Host- cookie outside development) that the form
repeats. Wrong login and wrong password get the same answer, unknown logins cost the same time,
and the lockout counts attempts by the name typed, so the form tells nobody which names exist.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC
from typing import Annotated, Final
from urllib.parse import quote

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from coach_console import accounts
from coach_console.audit import audit
from coach_console.deps import (
    ActingStaff,
    Config,
    CurrentStaff,
    Now,
    Pool,
    Templates,
    check_csrf,
    check_same_origin,
    cookie_secure,
    login_cookie_name,
    session_cookie_name,
    session_of,
)
from coach_console.errors import Forbidden, Reason
from coach_console.sessions import (
    end_session,
    lockout,
    record_attempt,
    start_session,
    token_hash,
)

router = APIRouter()
MAX_LOGIN: Final = 128


def safe_next(value: str | None) -> str:
    """Only a path on this site (no scheme, no //host): no open redirect after sign-in."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/queue"
    return value


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _set_session_cookie(request: Request, response: Response, token: str) -> None:
    secure = cookie_secure(request)
    response.set_cookie(
        session_cookie_name(secure), token, httponly=True, secure=secure, samesite="strict",
        path="/",
    )  # fmt: skip


def _clear_session_cookie(request: Request, response: Response) -> None:
    secure = cookie_secure(request)
    response.delete_cookie(session_cookie_name(secure), path="/", secure=secure, httponly=True,
                           samesite="strict")  # fmt: skip


def _login_page(
    request: Request, pages: Templates, *, next_path: str, error: str | None = None,
    status: int = 200,
) -> Response:  # fmt: skip
    token = secrets.token_urlsafe(32)
    response = pages.render(request, "login.html", status, login_token=token, next=next_path,
                            error=error)  # fmt: skip
    secure = cookie_secure(request)
    response.set_cookie(login_cookie_name(secure), token, httponly=True, secure=secure,
                        samesite="strict", path="/", max_age=3600)  # fmt: skip
    return response


@router.get("/login")
async def login_form(request: Request, pages: Templates, next: str | None = None) -> Response:
    session = await session_of(request, touch=False)
    if session is not None and not session.mfa_pending:
        return _redirect(safe_next(next))
    return _login_page(request, pages, next_path=safe_next(next))


@router.post("/login")
async def login(
    request: Request, pool: Pool, config: Config, pages: Templates, clock: Now,
    login: Annotated[str, Form(max_length=MAX_LOGIN)] = "",
    password: Annotated[str, Form(max_length=accounts.MAX_PASSWORD_LENGTH)] = "",
    csrf_token: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/queue",
) -> Response:  # fmt: skip
    check_same_origin(request)
    cookie = request.cookies.get(login_cookie_name(cookie_secure(request)), "")
    if not cookie or not csrf_token or not hmac.compare_digest(cookie.encode(),
                                                               csrf_token.encode()):
        raise Forbidden(Reason.CSRF_FAILED, "the sign-in form expired; reload it and try again")
    login = login.strip()
    now = clock()
    next_path = safe_next(next)
    async with pool.acquire() as conn:
        until = await lockout(conn, login, now, config)
        if until is not None:
            await audit(conn, login or "-", "auth.locked_out", None, {"stage": "password"})
            msg = f"Too many failed sign-ins. Try again after {until.astimezone(UTC):%H:%M} UTC."
            return _login_page(request, pages, next_path=next_path, error=msg, status=429)
        account = await accounts.load_account(conn, login) if login else None
        usable = account is not None and not account.disabled
        ok = await accounts.verify_password(account.password_hash if usable and account else None,
                                            password)  # fmt: skip
        if not ok or account is None:
            await record_attempt(conn, login, "password", False, now)
            await audit(conn, login or "-", "auth.login_failed", None, {"stage": "password"})
            return _login_page(request, pages, next_path=next_path, status=401,
                               error="Wrong login or password.")  # fmt: skip
        if accounts.needs_rehash(account.password_hash):
            await accounts.set_password(conn, account.staff.id, password, now)
        old = request.cookies.get(session_cookie_name(cookie_secure(request)))
        if old:
            await end_session(conn, token_hash(old), "logout", now)
        if account.needs_totp:
            if account.totp_secret is None:
                await audit(conn, account.staff.id, "auth.totp_not_enrolled", None, {})
                return _login_page(
                    request, pages, next_path=next_path, status=403,
                    error="Your role signs in with a one-time code, and none is set up yet. "
                          "Ask an admin to run `vigil users enroll-totp`.",
                )  # fmt: skip
            token, _ = await start_session(conn, account.staff.id, now, config, mfa_pending=True)
            response = _redirect(f"/login/totp?next={quote(next_path)}")
        else:
            token, _ = await start_session(conn, account.staff.id, now, config, mfa_pending=False)
            await record_attempt(conn, login, "password", True, now)
            await audit(conn, account.staff.id, "auth.login", None, {"mfa": False})
            response = _redirect(next_path)
    _set_session_cookie(request, response, token)
    secure = cookie_secure(request)
    response.delete_cookie(login_cookie_name(secure), path="/", secure=secure, httponly=True,
                           samesite="strict")  # fmt: skip
    return response


@router.get("/login/totp")
async def totp_form(request: Request, pages: Templates, next: str | None = None) -> Response:
    session = await session_of(request, touch=False)
    if session is None or not session.mfa_pending:
        return _redirect("/login")
    return pages.render(request, "totp.html", next=safe_next(next), error=None)


@router.post("/login/totp")
async def totp(
    request: Request, pool: Pool, config: Config, pages: Templates, clock: Now,
    code: Annotated[str, Form(max_length=16)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/queue",
) -> Response:  # fmt: skip
    session = await session_of(request, touch=False)
    if session is None or not session.mfa_pending:
        return _redirect("/login")
    await check_csrf(request, session.csrf_token)
    now = clock()
    staff = session.staff
    next_path = safe_next(next)
    async with pool.acquire() as conn:
        until = await lockout(conn, staff.id, now, config)
        account = await accounts.load_account(conn, staff.id)
        if until is not None or account is None or account.disabled or not account.totp_secret:
            await end_session(conn, session.token_hash, "logout", now)
            await audit(conn, staff.id, "auth.locked_out", None, {"stage": "totp"})
            response = _login_page(request, pages, next_path=next_path, status=429,
                                   error="Too many failed sign-ins. Try again later.")  # fmt: skip
            _clear_session_cookie(request, response)
            return response
        step = accounts.accepted_totp_step(account.totp_secret, code, now,
                                           account.totp_last_step)  # fmt: skip
        if step is not None:
            # Conditional: of two requests racing with one code, one wins (no replay).
            taken = await conn.execute(
                "UPDATE console_accounts SET totp_last_step = $2 WHERE coach_id = $1 "
                "AND (totp_last_step IS NULL OR totp_last_step < $2)",
                staff.id, step,
            )  # fmt: skip
            if taken.endswith(" 0"):
                step = None
        if step is None:
            await record_attempt(conn, staff.id, "totp", False, now)
            await audit(conn, staff.id, "auth.login_failed", None, {"stage": "totp"})
            return pages.render(request, "totp.html", 401, next=next_path,
                                error="That code is not right (or was already used).")
        await end_session(conn, session.token_hash, "mfa_completed", now)
        token, _ = await start_session(conn, staff.id, now, config, mfa_pending=False)
        await record_attempt(conn, staff.id, "totp", True, now)
        await audit(conn, staff.id, "auth.login", None, {"mfa": True})
    response = _redirect(next_path)
    _set_session_cookie(request, response, token)
    return response


@router.post("/logout")
async def logout(request: Request, staff: ActingStaff, pool: Pool, clock: Now) -> Response:
    session = request.state.session
    async with pool.acquire() as conn:
        await end_session(conn, session.token_hash, "logout", clock())
        await audit(conn, staff.id, "auth.logout", None, {})
    response = _redirect("/login?msg=signed_out")
    _clear_session_cookie(request, response)
    return response


@router.get("/session/ping", status_code=204)
async def ping(staff: CurrentStaff) -> Response:
    """'Stay signed in': a request the person made, which resets the idle timer."""
    return Response(status_code=204)
