"""Authorization, generated from the console's own route table.

Every route must be classified in ROUTES: a new route fails `test_every_route_is_classified`
until someone decides who may use it. Then, for every classified route: anonymous requests are
sent to the login page; a coach asking for another caseload's member, alert or chart (outside
the coverage rule) gets 403/404, as does a supervisor of another team; a POST without its CSRF
token is refused and changes nothing.
"""

from __future__ import annotations

from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount

from tests.test_console_support import (  # noqa: F401 - fixtures
    Console,
    Staffing,
    console_fixture,
    csrf,
    staffing_fixture,
)

# (method, path) -> who may use it:
#   public      no session needed (sign-in, health, static files)
#   signed_in   any signed-in person; shows only their own scope
#   member      a member's data: the member must be in the person's scope
#   alert       an alert: in scope, or an unclaimed critical one (coverage)
#   supervisor  supervisors and admins
#   admin       admins only
ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/login"): "public",
    ("POST", "/login"): "public",
    ("GET", "/login/totp"): "public",
    ("POST", "/login/totp"): "public",
    ("GET", "/healthz"): "public",
    ("MOUNT", "/static"): "public",
    ("POST", "/logout"): "signed_in",
    ("GET", "/session/ping"): "signed_in",
    ("GET", "/"): "signed_in",
    ("GET", "/queue"): "signed_in",
    ("GET", "/queue/rows"): "signed_in",
    ("GET", "/events"): "signed_in",
    ("GET", "/shift"): "signed_in",
    ("POST", "/shift/handoff"): "signed_in",
    ("GET", "/members"): "signed_in",
    ("GET", "/members/{member_id}"): "member",
    ("GET", "/members/{member_id}/charts/{chart}.svg"): "member",
    ("GET", "/members/{member_id}/care-plan"): "member",
    ("POST", "/members/{member_id}/care-plan"): "member",
    ("GET", "/alerts/{alert_id}"): "alert",
    ("POST", "/alerts/{alert_id}/claim"): "alert",
    ("POST", "/alerts/{alert_id}/notes"): "alert",
    ("POST", "/alerts/{alert_id}/outreach"): "alert",
    ("POST", "/alerts/{alert_id}/followup"): "alert",
    ("POST", "/alerts/{alert_id}/resolve"): "alert",
    ("GET", "/supervisor"): "supervisor",
    ("GET", "/admin/audit"): "admin",
}

# A valid form for each POST, so a refusal can only come from the rule under test.
FORMS: dict[str, dict[str, Any]] = {
    "/logout": {},
    "/shift/handoff": {"to_coach": "c-north2"},
    "/members/{member_id}/care-plan": {
        "conditions": ["type_2_diabetes"], "add": "hypoglycemia.level1_mgdl", "value": "75",
        "reason": "frequent near-lows on the new insulin dose",
    },
    "/alerts/{alert_id}/claim": {},
    "/alerts/{alert_id}/notes": {"body": "called, no answer"},
    "/alerts/{alert_id}/outreach": {"mode": "phone_call", "outcome": "reached",
                                    "started_at": "", "duration_minutes": "4"},
    "/alerts/{alert_id}/followup": {"minutes": "15"},
    "/alerts/{alert_id}/resolve": {"outcome": "treated_per_protocol", "note": ""},
}  # fmt: skip


def _table(console: Console) -> set[tuple[str, str]]:
    # FastAPI >= 0.16x keeps included routers as lazy entries of app.routes and walks them with
    # iter_route_contexts; older releases list the routes themselves.
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: list[Any] = list(walk(console.app.routes)) if walk else list(console.app.routes)
    out = set()
    for route in routes:
        original = getattr(route, "original_route", route)
        if isinstance(original, APIRoute):
            out |= {(m, route.path) for m in route.methods}
        elif isinstance(original, Mount):
            out.add(("MOUNT", route.path))
        else:  # a plain Starlette route would escape this table's classification
            out.add(("UNKNOWN", str(getattr(route, "path", route))))
    return out


def _routes(kind: str | None = None, method: str | None = None) -> list[tuple[str, str]]:
    return sorted(k for k, v in ROUTES.items()
                  if (kind is None or v == kind) and (method is None or k[0] == method))


def _url(path: str, member_id: str, alert_id: int) -> str:
    return (path.replace("{member_id}", member_id).replace("{alert_id}", str(alert_id))
            .replace("{chart}", "glucose"))  # fmt: skip


async def _send(c: httpx.AsyncClient, method: str, path: str, url: str,
                token: str | None) -> httpx.Response:  # fmt: skip
    if method == "GET":
        return await c.get(url)
    data = dict(FORMS[path])
    if token is not None:
        data["csrf_token"] = token
    return await c.post(url, data=data)


def test_every_route_is_classified(console: Console) -> None:
    table = _table(console)
    unclassified = table - set(ROUTES)
    assert not unclassified, f"classify these routes in ROUTES: {sorted(unclassified)}"
    assert not set(ROUTES) - table, f"stale entries: {sorted(set(ROUTES) - table)}"
    assert set(FORMS) == {p for m, p in ROUTES if m == "POST" and ROUTES[(m, p)] != "public"}


async def test_anonymous_requests_go_to_login(console: Console, staffing: Staffing) -> None:
    alert_id = await staffing.alert("m-north", 65)
    c = console.client()
    for method, path in [r for r in _routes() if ROUTES[r] != "public"]:
        r = await _send(c, method, path, _url(path, "m-north", alert_id), token="forged")
        assert r.status_code == 303, (method, path, r.status_code)
        assert r.headers["location"].startswith("/login"), (method, path)
    status = await staffing.db.fetchval("SELECT status FROM alerts WHERE id = $1", alert_id)
    assert status == "open"


OUTSIDERS = [
    ("c-south", "a coach of another caseload and team"),
    ("c-north2", "a coach of another caseload in the same team"),
    ("s-south", "a supervisor of another team"),
]


@pytest.mark.parametrize(("who", "why"), OUTSIDERS, ids=[o[0] for o in OUTSIDERS])
async def test_outside_scope_is_refused_on_every_member_and_alert_route(
    console: Console, staffing: Staffing, who: str, why: str
) -> None:
    # m-north's alert: a high (not critical) low, unclaimed; m-north2's: a critical low already
    # claimed by its coach. Neither falls under the coverage rule.
    high = await staffing.alert("m-north", 65)
    critical = await staffing.alert("m-north2", 45)
    owner = await console.signed_in("c-north2")
    await owner.post(f"/alerts/{critical}/claim", data={"csrf_token": await csrf(owner)})
    c = await console.signed_in(who)
    token = await csrf(c)
    for method, path in _routes("member") + _routes("alert"):
        r = await _send(c, method, path, _url(path, "m-north", high), token)
        assert r.status_code in (403, 404), (why, method, path, r.status_code)
        if who != "c-north2":
            r = await _send(c, method, path, _url(path, "m-north2", critical), token)
            assert r.status_code in (403, 404), (why, method, path, "claimed", r.status_code)
    rows = await staffing.db.fetch("SELECT status, acknowledged_by FROM alerts ORDER BY id")
    assert [tuple(r) for r in rows] == [("open", None), ("acknowledged", "c-north2")]
    assert await staffing.db.fetchval("SELECT count(*) FROM outreach") == 0
    assert await staffing.db.fetchval("SELECT count(*) FROM alert_notes") == 0
    assert await staffing.db.fetchval("SELECT count(*) FROM care_plan_history") == 0


async def test_role_pages_need_their_role(console: Console, staffing: Staffing) -> None:
    for who in ("c-north", "s-north", "a-1"):
        c = await console.signed_in(who)
        for method, path in _routes("supervisor") + _routes("admin"):
            r = await c.get(path)
            allowed = who == "a-1" or (ROUTES[(method, path)] == "supervisor" and who == "s-north")
            assert r.status_code == (200 if allowed else 403), (who, path, r.status_code)


# In an order in which each, sent with its token, succeeds.
CSRF_ORDER = [
    "/alerts/{alert_id}/claim", "/alerts/{alert_id}/notes", "/alerts/{alert_id}/outreach",
    "/alerts/{alert_id}/followup", "/alerts/{alert_id}/resolve", "/members/{member_id}/care-plan",
    "/shift/handoff", "/logout",
]  # fmt: skip


async def test_post_without_its_csrf_token_fails(console: Console, staffing: Staffing) -> None:
    assert set(CSRF_ORDER) == {p for m, p in _routes(method="POST") if ROUTES[(m, p)] != "public"}
    alert_id = await staffing.alert("m-north", 65)
    # s-north: a credentialed supervisor of m-north's team may do every one of these.
    c = await console.signed_in("s-north")
    db = staffing.db
    for path in CSRF_ORDER:
        url = _url(path, "m-north", alert_id)
        state = await db.fetch(
            "SELECT (SELECT count(*) FROM alert_events) AS events, "
            "(SELECT count(*) FROM outreach) AS outreach, "
            "(SELECT count(*) FROM alert_notes) AS notes, "
            "(SELECT count(*) FROM care_plan_history) AS plans, "
            "(SELECT count(*) FROM console_sessions WHERE ended_at IS NULL) AS sessions"
        )
        for token in (None, "not-the-token"):
            r = await _send(c, "POST", path, url, token)
            assert r.status_code == 403, (path, token, r.status_code)
            assert "reload the page" in r.text
        assert await db.fetch(
            "SELECT (SELECT count(*) FROM alert_events) AS events, "
            "(SELECT count(*) FROM outreach) AS outreach, "
            "(SELECT count(*) FROM alert_notes) AS notes, "
            "(SELECT count(*) FROM care_plan_history) AS plans, "
            "(SELECT count(*) FROM console_sessions WHERE ended_at IS NULL) AS sessions"
        ) == state, path
        # ... and with the token the same request goes through.
        ok = await _send(c, "POST", path, url, await csrf(c))
        assert ok.status_code == 303, (path, ok.status_code, ok.text[:300])
    assert await db.fetchval("SELECT status FROM alerts WHERE id = $1", alert_id) == "resolved"
    assert (await c.get("/queue")).status_code == 303  # signed out by the last one


async def test_cross_site_post_is_refused_even_with_the_token(
    console: Console, staffing: Staffing
) -> None:
    alert_id = await staffing.alert("m-north", 65)
    c = await console.signed_in("c-north")
    token = await csrf(c)
    r = await c.post(f"/alerts/{alert_id}/claim", data={"csrf_token": token},
                     headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert await staffing.db.fetchval("SELECT status FROM alerts") == "open"


async def test_login_form_needs_its_double_submit_token(
    console: Console, staffing: Staffing
) -> None:
    c = console.client()
    await c.get("/login")
    r = await c.post("/login", data={"login": "c-north", "password": "correct horse battery "
                                     "staple", "csrf_token": "guessed"})  # fmt: skip
    assert r.status_code == 403
    fresh = console.client()  # no cookie at all: a form posted from another site
    r = await fresh.post("/login", data={"login": "c-north", "password": "x", "csrf_token": "x"})
    assert r.status_code == 403


async def test_totp_form_needs_the_pending_sessions_token(
    console: Console, staffing: Staffing
) -> None:
    from tests.test_console_support import csrf_of

    c = console.client()
    page = await c.get("/login")
    r = await c.post("/login", data={"login": "s-north", "password": "correct horse battery "
                                     "staple", "csrf_token": csrf_of(page.text)})  # fmt: skip
    assert r.headers["location"].startswith("/login/totp")
    import pyotp

    code = pyotp.TOTP("TJXRCAFDAJ4OHDVSOKAFUNYU6LBE2VE5").now()
    r = await c.post("/login/totp", data={"code": code})
    assert r.status_code == 403


async def test_coverage_any_coach_may_claim_an_unclaimed_critical_alert(
    console: Console, staffing: Staffing
) -> None:
    critical = await staffing.alert("m-north", 45)
    high = await staffing.alert("m-north2", 65)
    south = await console.signed_in("c-south")
    rows = (await south.get("/queue/rows")).text
    assert f'id="alert-{critical}"' in rows and f'id="alert-{high}"' not in rows
    assert "Member m-north" not in rows  # the name only once the alert is theirs
    assert (await south.get("/members/m-north")).status_code == 404
    r = await south.post(f"/alerts/{critical}/claim", data={"csrf_token": await csrf(south)})
    assert r.status_code == 303
    page = await south.get("/members/m-north")
    assert page.status_code == 200 and "Member m-north" in page.text
    assert (await south.get("/members/m-north/charts/bp.svg")).status_code == 200
    # A second coach can no longer claim it, nor see it once claimed.
    other = await console.signed_in("c-north2")
    r = await other.post(f"/alerts/{critical}/claim", data={"csrf_token": await csrf(other)})
    assert r.status_code == 404
    token = await csrf(south)
    r = await south.post(f"/alerts/{critical}/resolve",
                         data={"csrf_token": token, "outcome": "treated_per_protocol"})
    assert r.status_code == 303
    assert (await south.get("/members/m-north")).status_code == 404  # no longer theirs
    assert (await south.get(f"/alerts/{critical}")).status_code == 404


async def test_supervisor_sees_the_team_and_admin_everything(
    console: Console, staffing: Staffing
) -> None:
    for m in ("m-north", "m-north2", "m-south"):
        await staffing.alert(m, 65)
    sup = await console.signed_in("s-north")
    rows = (await sup.get("/queue/rows")).text
    assert rows.count("data-alert-id") == 2 and "Member m-south" not in rows
    assert (await sup.get("/members/m-north2")).status_code == 200
    assert (await sup.get("/members/m-south")).status_code == 404
    members = (await sup.get("/members")).text
    assert "m-north2" in members and "m-south" not in members
    admin = await console.signed_in("a-1")
    assert (await admin.get("/queue/rows")).text.count("data-alert-id") == 3
    assert (await admin.get("/members/m-none")).status_code == 200
