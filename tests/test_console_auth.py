"""Signing in: argon2 passwords, TOTP for supervisors and admins, lockout, idle logoff, cookies,
server-side sessions, and the `vigil users` commands."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from http.cookies import SimpleCookie

import httpx
import pyotp
import pytest

from coach_console.accounts import accepted_totp_step
from services.settings import Settings
from tests.test_console_support import (  # noqa: F401 - fixtures
    PASSWORD,
    SECRETS,
    Console,
    Staffing,
    console_fixture,
    csrf,
    csrf_of,
    login,
    staffing_fixture,
)


def _set_cookies(r: httpx.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in r.headers.get_list("set-cookie"):
        jar.load(header)
    return jar


async def _password_step(c: httpx.AsyncClient, who: str, password: str = PASSWORD,
                         next_path: str = "/queue") -> httpx.Response:  # fmt: skip
    page = await c.get("/login")
    return await c.post("/login", data={"login": who, "password": password, "next": next_path,
                                        "csrf_token": csrf_of(page.text)})  # fmt: skip


async def test_coach_signs_in_with_a_secure_server_side_session(
    console: Console, staffing: Staffing
) -> None:
    c = console.client()
    r = await _password_step(c, "c-north")
    assert r.status_code == 303 and r.headers["location"] == "/queue"
    morsel = _set_cookies(r)["__Host-vigil_session"]
    assert morsel["httponly"] and morsel["secure"] and morsel["path"] == "/"
    assert morsel["samesite"].lower() == "strict"
    token = morsel.value
    # Only the token's SHA-256 is stored; the cookie value itself is nowhere in the database.
    stored = await staffing.db.fetch("SELECT token_hash FROM console_sessions")
    assert [bytes(s["token_hash"]) for s in stored] == [hashlib.sha256(token.encode()).digest()]
    page = await c.get("/queue")
    assert page.status_code == 200 and "Nora North" in page.text
    assert "no-store" in page.headers["cache-control"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    hashes = await staffing.db.fetchval("SELECT password_hash FROM console_accounts LIMIT 1")
    assert hashes.startswith("$argon2id$")
    audit = await staffing.db.fetch(
        "SELECT actor, action FROM audit_log WHERE actor = 'c-north' ORDER BY id DESC LIMIT 2"
    )
    assert [tuple(a) for a in audit] == [("c-north", "queue.view"), ("c-north", "auth.login")]


async def test_wrong_password_and_unknown_login_look_the_same(
    console: Console, staffing: Staffing
) -> None:
    c = console.client()
    wrong = await _password_step(c, "c-north", "not the password at all")
    unknown = await _password_step(c, "nobody-here", "not the password at all")
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong login or password." in wrong.text and "Wrong login or password." in unknown.text
    assert "__Host-vigil_session" not in wrong.headers.get("set-cookie", "")
    assert (await c.get("/queue")).status_code == 303


async def test_five_failures_lock_the_login_for_15_minutes(
    console: Console, staffing: Staffing
) -> None:
    c = console.client()
    for _ in range(5):
        assert (await _password_step(c, "c-north", "wrong password!!")).status_code == 401
    locked = await _password_step(c, "c-north")  # the right password, too late
    assert locked.status_code == 429 and "Too many failed sign-ins" in locked.text
    other = await _password_step(console.client(), "c-south")  # others are not affected
    assert other.status_code == 303
    console.clock.advance(minutes=14)
    assert (await _password_step(c, "c-north")).status_code == 429
    console.clock.advance(minutes=1, seconds=1)
    ok = await _password_step(c, "c-north")
    assert ok.status_code == 303 and ok.headers["location"] == "/queue"
    # Unknown names lock the same way: the form is no oracle for which logins exist.
    anon = console.client()
    for _ in range(5):
        await _password_step(anon, "ghost", "whatever password")
    assert (await _password_step(anon, "ghost", "whatever password")).status_code == 429


async def test_supervisor_needs_the_second_factor(console: Console, staffing: Staffing) -> None:
    c = console.client()
    r = await _password_step(c, "s-north", next_path="/supervisor")
    assert r.status_code == 303 and r.headers["location"].startswith("/login/totp")
    # The password alone opens nothing.
    assert (await c.get("/supervisor")).status_code == 303
    assert (await c.get("/members/m-north")).status_code == 303
    form = await c.get(r.headers["location"])
    token = csrf_of(form.text)
    bad = await c.post("/login/totp", data={"code": "000000", "csrf_token": token})
    assert bad.status_code == 401
    code = pyotp.TOTP(SECRETS["s-north"]).now()
    ok = await c.post("/login/totp", data={"code": code, "csrf_token": token,
                                           "next": "/supervisor"})  # fmt: skip
    assert ok.status_code == 303 and ok.headers["location"] == "/supervisor"
    assert (await c.get("/supervisor")).status_code == 200
    # A new session after the second factor (new token); the pending one is over.
    reasons = await staffing.db.fetch(
        "SELECT end_reason FROM console_sessions WHERE coach_id = 's-north' ORDER BY created_at"
    )
    assert [r["end_reason"] for r in reasons] == ["mfa_completed", None]
    # The same code cannot be used again (RFC 6238 section 5.2).
    again = console.client()
    r = await _password_step(again, "s-north")
    form = await again.get(r.headers["location"])
    replay = await again.post("/login/totp", data={"code": code, "csrf_token": csrf_of(form.text)})
    assert replay.status_code == 401


async def test_totp_failures_count_towards_the_lockout(
    console: Console, staffing: Staffing
) -> None:
    c = console.client()
    for attempt in range(5):
        r = await _password_step(c, "s-south")
        form = await c.get(r.headers["location"])
        bad = await c.post("/login/totp", data={"code": "123456", "csrf_token": csrf_of(form.text)})
        assert bad.status_code == 401, attempt
    # Locked at the password step now, right password or not; the pending session opens
    # nothing either.
    locked = await _password_step(c, "s-south")
    assert locked.status_code == 429
    assert (await c.get("/queue")).status_code == 303


async def test_supervisor_without_an_enrolled_factor_is_refused(
    console: Console, staffing: Staffing
) -> None:
    await staffing.db.execute("UPDATE console_accounts SET totp_secret = NULL "
                              "WHERE coach_id = 's-north'")  # fmt: skip
    r = await _password_step(console.client(), "s-north")
    assert r.status_code == 403 and "enroll-totp" in r.text


def test_totp_steps_allow_one_step_of_drift_and_no_replay() -> None:
    secret = SECRETS["a-1"]
    totp = pyotp.TOTP(secret)
    from datetime import UTC, datetime

    now = datetime(2026, 11, 3, 14, 0, 10, tzinfo=UTC)
    step = totp.timecode(now)
    assert accepted_totp_step(secret, totp.at(now), now, None) == step
    assert accepted_totp_step(secret, totp.at(now.timestamp() - 30), now, None) == step - 1
    assert accepted_totp_step(secret, totp.at(now.timestamp() - 60), now, None) is None
    assert accepted_totp_step(secret, totp.at(now), now, step) is None  # already used
    assert accepted_totp_step(secret, "12 34", now, None) is None


async def test_idle_sessions_end_after_15_minutes(console: Console, staffing: Staffing) -> None:
    c = await console.signed_in("c-north")
    console.clock.advance(minutes=14)
    assert (await c.get("/queue")).status_code == 200  # activity: the timer starts again
    console.clock.advance(minutes=10)
    # Live refreshes are not activity: they check the session without extending it.
    assert (await c.get("/queue/rows")).status_code == 200
    console.clock.advance(minutes=5, seconds=1)
    assert (await c.get("/queue/rows")).status_code == 303
    r = await c.get("/queue")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    ended = await staffing.db.fetchval(
        "SELECT end_reason FROM console_sessions WHERE coach_id = 'c-north'"
    )
    assert ended == "idle"


async def test_sessions_end_after_a_shift_whatever_the_activity(
    console: Console, staffing: Staffing
) -> None:
    c = await console.signed_in("c-north")
    for _ in range(12 * 6):
        console.clock.advance(minutes=10)
        if (await c.get("/session/ping")).status_code != 204:
            break
    assert (await c.get("/queue")).status_code == 303
    ended = await staffing.db.fetchval(
        "SELECT end_reason FROM console_sessions WHERE coach_id = 'c-north'"
    )
    assert ended == "expired"


async def test_sign_out_ends_the_session_on_the_server(
    console: Console, staffing: Staffing
) -> None:
    c = await console.signed_in("c-north")
    cookie = c.cookies.get("__Host-vigil_session")
    r = await c.post("/logout", data={"csrf_token": await csrf(c)})
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    replay = console.client()
    replay.cookies.set("__Host-vigil_session", cookie or "", domain="console.test")
    assert (await replay.get("/queue")).status_code == 303


async def test_disabling_an_account_ends_its_sessions(
    console: Console, staffing: Staffing
) -> None:
    c = await console.signed_in("c-north")
    await staffing.db.execute("UPDATE console_accounts SET disabled = true "
                              "WHERE coach_id = 'c-north'")  # fmt: skip
    assert (await c.get("/queue")).status_code == 303
    assert (await _password_step(console.client(), "c-north")).status_code == 401


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example", "/\\evil"])
async def test_no_open_redirect_after_sign_in(
    console: Console, staffing: Staffing, target: str
) -> None:
    r = await _password_step(console.client(), "c-north", next_path=target)
    assert r.headers["location"] == "/queue"


async def test_development_cookies_work_over_plain_http(
    settings: Settings, staffing: Staffing
) -> None:
    async with Console(settings, cookie_secure=False) as app:
        c = app.client()
        r = await _password_step(c, "c-north")
        morsel = _set_cookies(r)["vigil_session"]
        assert not morsel["secure"] and morsel["httponly"]


async def _vigil_users(database_url: str, *args: str, stdin: str = "") -> tuple[int, str, str]:
    code = ("import typer; from services.cli_console import users_app; "
            "app = typer.Typer(); app.add_typer(users_app, name='users'); app()")  # fmt: skip
    env = {**os.environ, "VIGIL_DATABASE_URL": database_url, "VIGIL_LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "users", *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(stdin.encode())
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_users_create_and_totp_enrolment(
    console: Console, staffing: Staffing, database_url: str
) -> None:
    rc, out, err = await _vigil_users(
        database_url, "create", "--id", "s-new", "--name", "New Supervisor", "--role",
        "supervisor", "--email", "new@example.org", "--team", "north", "--credential", "RN",
        "--password-stdin", stdin="a long enough password\n",
    )  # fmt: skip
    assert rc == 0, err
    uri = out.strip()
    assert uri.startswith("otpauth://totp/Vigil:s-new?secret=") and "issuer=Vigil" in uri
    assert "a long enough password" not in out + err
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    c = console.client()
    r = await _password_step(c, "s-new", "a long enough password")
    form = await c.get(r.headers["location"])
    ok = await c.post("/login/totp", data={"code": totp.now(), "csrf_token": csrf_of(form.text)})
    assert ok.status_code == 303 and ok.headers["location"] == "/queue"
    # A coach gets no factor unless asked; a short password and a taken id are refused.
    rc, out, _ = await _vigil_users(database_url, "create", "--id", "c-new", "--name", "New",
                                    "--password-stdin", stdin="another long password\n")
    assert rc == 0 and out == ""
    rc, _, err = await _vigil_users(database_url, "create", "--id", "c-short", "--name", "S",
                                    "--password-stdin", stdin="short\n")
    assert rc == 2 and "12 characters" in err
    rc, _, err = await _vigil_users(database_url, "create", "--id", "c-new", "--name", "Again",
                                    "--password-stdin", stdin="another long password\n")
    assert rc == 2 and "already has a console account" in err
    rc, _, err = await _vigil_users(database_url, "create", "--id", "c-x", "--name", "X")
    assert rc == 2 and "--password-stdin" in err
    rc, out, _ = await _vigil_users(database_url, "enroll-totp", "--id", "c-new")
    assert rc == 0 and out.startswith("otpauth://totp/Vigil:c-new?")
    # A supervisor imported from an onboarding file keeps role and team when given a login.
    await staffing.db.execute("INSERT INTO coaches (id, name, role, team, credential) "
                              "VALUES ('s-imp', 'Imported', 'supervisor', 'south', 'RD')")
    rc, out, err = await _vigil_users(database_url, "create", "--id", "s-imp", "--name",
                                      "Imported Sup", "--password-stdin",
                                      stdin="yet another long password\n")  # fmt: skip
    assert rc == 0 and out.startswith("otpauth://") and "(supervisor)" in err
    row = await staffing.db.fetchrow("SELECT role, team, credential FROM coaches "
                                     "WHERE id = 's-imp'")  # fmt: skip
    assert tuple(row) == ("supervisor", "south", "RD")
    actions = await staffing.db.fetch(
        "SELECT action, detail->>'coach_id' AS who FROM audit_log WHERE actor LIKE 'cli:%' "
        "AND detail->>'coach_id' IN ('s-new', 'c-new') ORDER BY id"
    )
    assert [(a["action"], a["who"]) for a in actions] == [
        ("users.create", "s-new"), ("users.create", "c-new"), ("users.enroll_totp", "c-new"),
    ]


async def test_old_sessions_and_attempts_are_forgotten(
    console: Console, staffing: Staffing
) -> None:
    from coach_console.sessions import housekeeping

    c = await console.signed_in("c-north")
    await _password_step(console.client(), "c-north", "a wrong password!")
    async with console.state["pool"].acquire() as conn:
        assert await housekeeping(conn, console.clock()) == 0
        console.clock.advance(days=31)
        assert await housekeeping(conn, console.clock()) == 3  # two sessions, one attempt
    assert (await c.get("/queue")).status_code == 303


async def test_demo_login_is_for_development_only(
    console: Console, staffing: Staffing, settings: Settings
) -> None:
    from coach_console.accounts import AccountError, ensure_demo_login

    with pytest.raises(AccountError, match="development"):
        await ensure_demo_login(staffing.db, settings)
    dev = settings.model_copy(update={"env": "development"})
    coach, password = await ensure_demo_login(staffing.db, dev)
    assert coach == "c-north"  # a coach with a caseload (the largest; ties by id)
    r = await _password_step(console.client(), coach, password)
    assert r.status_code == 303 and r.headers["location"] == "/queue"
    _, again = await ensure_demo_login(staffing.db, dev)
    assert again != password  # a fresh password each run
