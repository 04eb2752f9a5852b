"""Working the queue: claim races, outreach, recheck timers, hand-off, resolve, the care plan,
the member page and its charts, the supervisor view, live signals and the audit log."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest

from coach_console import reports
from coach_console.access import AlertFacts, concerns
from coach_console.accounts import Staff
from coach_console.audit import audit
from coach_console.live import AlertHub
from coach_console.work import announce_due_followups
from services.pipeline import Incoming
from services.settings import Settings
from tests.test_console_support import (  # noqa: F401 - fixtures
    Console,
    Staffing,
    console_fixture,
    csrf,
    staffing_fixture,
)


async def test_two_coaches_cannot_claim_the_same_alert(
    console: Console, staffing: Staffing
) -> None:
    alert_id = await staffing.alert("m-north", 45)  # critical: coverage lets c-south claim too
    a = await console.signed_in("c-north")
    b = await console.signed_in("c-south")
    ta, tb = await csrf(a), await csrf(b)
    ra, rb = await asyncio.gather(
        a.post(f"/alerts/{alert_id}/claim", data={"csrf_token": ta}),
        b.post(f"/alerts/{alert_id}/claim", data={"csrf_token": tb}),
    )
    codes = sorted([ra.status_code, rb.status_code])
    # The loser gets 409 (claimed a moment ago) or 404 (no longer visible: it is claimed).
    assert codes[0] == 303 and codes[1] in (404, 409)
    holder = await staffing.db.fetchval("SELECT acknowledged_by FROM alerts")
    assert holder == ("c-north" if ra.status_code == 303 else "c-south")
    claims = await staffing.db.fetchval(
        "SELECT count(*) FROM alert_events WHERE kind = 'acknowledged'"
    )
    assert claims == 1


async def test_outreach_is_recorded_and_checked(console: Console, staffing: Staffing) -> None:
    alert_id = await staffing.alert("m-north", 65)
    c = await console.signed_in("c-north")
    token = await csrf(c)
    r = await c.post(f"/alerts/{alert_id}/outreach", data={"csrf_token": token,
                     "mode": "phone_call", "outcome": "reached"})  # fmt: skip
    assert r.status_code == 409 and "claim" in r.text  # claim first
    await c.post(f"/alerts/{alert_id}/claim", data={"csrf_token": token})
    start = (console.clock() - timedelta(minutes=10)).astimezone(UTC)
    # The browser sends its local time and getTimezoneOffset(): Chicago is UTC-6 (360).
    local = (start - timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M")
    r = await c.post(f"/alerts/{alert_id}/outreach", data={
        "csrf_token": token, "mode": "sms", "outcome": "no_answer", "started_at": local,
        "tz_offset": "360", "duration_minutes": "3", "note": "left a message"})  # fmt: skip
    assert r.status_code == 303
    row = await staffing.db.fetchrow("SELECT * FROM outreach")
    assert (row["mode"], row["outcome"], row["duration_minutes"], row["coach_id"]) == (
        "sms", "no_answer", Decimal(3), "c-north")
    assert row["started_at"] == start.replace(second=0, microsecond=0)
    assert row["member_id"] == "m-north" and row["alert_id"] == alert_id
    for bad in ({"mode": "fax", "outcome": "reached"},
                {"mode": "video", "outcome": "maybe"},
                {"mode": "video", "outcome": "reached",
                 "started_at": (console.clock() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")},
                {"mode": "video", "outcome": "reached", "duration_minutes": "-1"}):  # fmt: skip
        r = await c.post(f"/alerts/{alert_id}/outreach", data={"csrf_token": token, **bad})
        assert r.status_code == 400, bad
    assert await staffing.db.fetchval("SELECT count(*) FROM outreach") == 1
    page = await c.get(f"/alerts/{alert_id}")
    assert "left a message" in page.text and "No answer" in page.text


async def test_a_recheck_timer_brings_the_alert_back(console: Console, staffing: Staffing) -> None:
    alert_id = await staffing.alert("m-north", 65)
    c = await console.signed_in("c-north")
    token = await csrf(c)
    await c.post(f"/alerts/{alert_id}/claim", data={"csrf_token": token})
    r = await c.post(f"/alerts/{alert_id}/followup", data={"csrf_token": token, "minutes": "15"})
    assert r.status_code == 303
    pool = console.state["pool"]
    assert await announce_due_followups(pool, console.clock()) == 0
    assert "Rechecks due" not in (await c.get("/queue/rows")).text
    console.clock.advance(minutes=10)
    assert (await c.get("/queue")).status_code == 200  # still at work
    console.clock.advance(minutes=5, seconds=1)
    assert await announce_due_followups(pool, console.clock()) == 1
    assert await announce_due_followups(pool, console.clock()) == 0  # announced once
    kinds = [r["kind"] for r in await staffing.db.fetch(
        "SELECT kind FROM alert_events WHERE alert_id = $1 ORDER BY id", alert_id)]
    assert kinds[-2:] == ["followup_set", "followup_due"]
    rows = (await c.get("/queue/rows")).text
    assert "Rechecks due" in rows and f'id="recheck-{alert_id}"' in rows
    # Another coach's queue does not show it.
    assert "Rechecks due" not in (await (await console.signed_in("c-north2")).get(
        "/queue/rows")).text
    # Reaching out after it came due completes the recheck.
    await c.post(f"/alerts/{alert_id}/outreach", data={
        "csrf_token": token, "mode": "phone_call", "outcome": "reached"})  # fmt: skip
    assert "Rechecks due" not in (await c.get("/queue/rows")).text
    r = await c.post(f"/alerts/{alert_id}/followup", data={"csrf_token": token, "minutes": "7"})
    assert r.status_code == 400  # only the offered choices


async def test_end_of_shift_hands_claimed_alerts_over(
    console: Console, staffing: Staffing
) -> None:
    first = await staffing.alert("m-north", 65)
    second = await staffing.alert("m-north2", 45)
    c = await console.signed_in("c-north")
    token = await csrf(c)
    for a in (first, second):
        assert (await c.post(f"/alerts/{a}/claim", data={"csrf_token": token})).status_code == 303
    await c.post(f"/alerts/{first}/followup", data={"csrf_token": token, "minutes": "30"})
    page = await c.get("/shift")
    assert "Nils North" in page.text and "Sol South" not in page.text  # same team only
    r = await c.post("/shift/handoff", data={"csrf_token": token, "to_coach": "c-south"})
    assert r.status_code == 400
    r = await c.post("/shift/handoff", data={"csrf_token": token, "to_coach": "c-north2",
                                             "sign_out": "true"})  # fmt: skip
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    rows = await staffing.db.fetch("SELECT acknowledged_by FROM alerts ORDER BY id")
    assert [r["acknowledged_by"] for r in rows] == ["c-north2", "c-north2"]
    assert await staffing.db.fetchval(
        "SELECT coach_id FROM alert_followups WHERE done_at IS NULL") == "c-north2"
    assert (await c.get("/queue")).status_code == 303  # signed out
    # The new holder sees m-north's page while the alert is theirs.
    n2 = await console.signed_in("c-north2")
    assert (await n2.get("/members/m-north")).status_code == 200
    events = await staffing.db.fetchval(
        "SELECT count(*) FROM alert_events WHERE kind = 'handed_off'")
    assert events == 2


async def test_resolve_with_an_outcome_code(console: Console, staffing: Staffing) -> None:
    alert_id = await staffing.alert("m-north", 65)
    c = await console.signed_in("c-north")
    token = await csrf(c)
    await c.post(f"/alerts/{alert_id}/claim", data={"csrf_token": token})
    r = await c.post(f"/alerts/{alert_id}/resolve", data={"csrf_token": token,
                                                           "outcome": "fixed it"})
    assert r.status_code == 400
    r = await c.post(f"/alerts/{alert_id}/resolve", data={
        "csrf_token": token, "outcome": "false_reading", "note": "meter not cleaned"})
    assert r.status_code == 303 and r.headers["location"] == "/queue?msg=resolved"
    row = await staffing.db.fetchrow("SELECT status, outcome, note, resolved_by FROM alerts")
    assert tuple(row) == ("resolved", "false_reading", "meter not cleaned", "c-north")
    assert f'id="alert-{alert_id}"' not in (await c.get("/queue/rows")).text
    again = await c.post(f"/alerts/{alert_id}/resolve", data={"csrf_token": token,
                                                               "outcome": "false_reading"})
    assert again.status_code == 409


async def test_care_plan_is_changed_by_a_credentialed_supervisor_with_a_reason(
    console: Console, staffing: Staffing
) -> None:
    form = {"conditions": ["type_2_diabetes"], "add": "hypoglycemia.level1_mgdl",
            "value": "75", "reason": "near-lows after the new basal dose"}  # fmt: skip
    for who in ("c-north", "s-lay"):  # a coach; a supervisor without clinical credential
        c = await console.signed_in(who)
        assert (await c.get("/members/m-north/care-plan")).status_code == 403
        r = await c.post("/members/m-north/care-plan", data={**form, "csrf_token": await csrf(c)})
        assert r.status_code == 403
    sup = await console.signed_in("s-north")
    token = await csrf(sup)
    assert (await sup.get("/members/m-north/care-plan")).status_code == 200
    floor = await sup.post("/members/m-north/care-plan",
                           data={**form, "value": "50", "csrf_token": token})
    assert floor.status_code == 400 and "level-2 floor" in floor.text
    no_reason = await sup.post("/members/m-north/care-plan",
                               data={**form, "reason": " ", "csrf_token": token})
    assert no_reason.status_code == 400
    ok = await sup.post("/members/m-north/care-plan", data={**form, "csrf_token": token})
    assert ok.status_code == 303
    plan = await staffing.db.fetchrow(
        "SELECT conditions, overrides FROM care_plans WHERE member_id = 'm-north'")
    assert list(plan["conditions"]) == ["type_2_diabetes"]
    assert json.loads(plan["overrides"]) == [{
        "rule": "hypoglycemia", "parameter": "level1_mgdl", "value": "75", "unit": "mg/dL",
        "reason": "near-lows after the new basal dose", "set_by": "s-north"}]  # fmt: skip
    history = await staffing.db.fetch("SELECT * FROM care_plan_history")
    assert len(history) == 1 and history[0]["changed_by"] == "s-north"
    assert json.loads(history[0]["overrides_before"]) == []
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await staffing.db.execute("UPDATE care_plan_history SET reason = 'rewritten'")
    # The rule engine now uses the new threshold: 72 mg/dL is a low for this member.
    await staffing.glucose("m-north", 72)
    assert await staffing.db.fetchval(
        "SELECT tier FROM alerts WHERE member_id = 'm-north'") == "high"
    page = (await sup.get("/members/m-north")).text
    assert "75 mg/dL" in page and "near-lows after the new basal dose" in page


async def _readings(staffing: Staffing, member: str, docs: list[dict[str, object]]) -> None:
    assert staffing.pipeline is not None
    now = datetime.now(UTC)
    items = [Incoming(orjson.dumps(d), now, "file") for d in docs]
    result = await staffing.pipeline.process(items)
    assert {o.status for o in result.outcomes} == {"accepted"}, result.outcomes[:3]


async def seed_history(staffing: Staffing, member: str, now: datetime) -> None:
    """A month of fingersticks, 14 days of CGM, cuff and scale readings (no alerts raised:
    all values within the default thresholds)."""
    db = staffing.db
    for device, kind in ((f"cgm-{member}", "cgm"), (f"bp-{member}", "bp_monitor"),
                         (f"sc-{member}", "scale")):  # fmt: skip
        await db.execute("INSERT INTO devices (id, kind, battery_pct, last_seen_at, online) "
                         "VALUES ($1, $2, 64, $3, true)", device, kind, now)  # fmt: skip
        await db.execute("INSERT INTO device_assignments (device_id, member_id) VALUES ($1, $2)",
                         device, member)  # fmt: skip
    # Sequence numbers rise with time, as a meter's do (the pipeline's clock rule checks).
    docs: list[dict[str, object]] = []
    meals = ["fasting", "after_meal", "before_meal", "bedtime"]
    for day in range(28):
        for k, hour in enumerate((7, 10, 17, 22)):
            at = now - timedelta(days=27 - day, hours=24 - hour)
            docs.append({"device_id": f"gm-{member}", "seq": 10_000 + day * 4 + k,
                         "kind": "glucose", "unit": "mg/dL", "meal": meals[k],
                         "value": 95 + (day * 7 + k * 23) % 120, "measured_at": at.isoformat()})
    start = now - timedelta(days=14)
    for i in range(14 * 288 - 100):
        at = start + timedelta(minutes=5 * i)
        value = 140 + 50 * ((i % 288) / 288 - 0.5) + (i * 37) % 30
        docs.append({"device_id": f"cgm-{member}", "seq": i + 1, "kind": "glucose",
                     "source": "cgm", "unit": "mg/dL", "value": round(value),
                     "measured_at": at.isoformat()})
    for day in range(30):
        at = now - timedelta(days=29 - day, hours=3)
        docs.append({"device_id": f"bp-{member}", "seq": day + 1, "kind": "blood_pressure",
                     "unit": "mmHg", "systolic": 128 + day % 9, "diastolic": 78 + day % 6,
                     "measured_at": at.isoformat()})
        docs.append({"device_id": f"sc-{member}", "seq": day + 1, "kind": "weight",
                     "unit": "lb", "value": 195 + day * 0.2, "measured_at": at.isoformat()})
    await _readings(staffing, member, docs)


async def test_member_page_shows_everything_and_is_audited(
    console: Console, staffing: Staffing
) -> None:
    await seed_history(staffing, "m-north", console.clock())
    await staffing.db.execute(
        "INSERT INTO enrollments (member_id, program, start_date) VALUES "
        "('m-north', 'diabetes', '2026-01-01'), ('m-north', 'hypertension', '2026-01-01')")
    c = await console.signed_in("c-north")
    before = await staffing.db.fetchval("SELECT coalesce(max(id), 0) FROM audit_log")
    page = await c.get("/members/m-north")
    assert page.status_code == 200
    html = page.text
    for text in ("+1-312-555-0100", "Kin (sibling), +1-312-555-0199", "America/Chicago",
                 "diabetes", "hypertension", "64%", "cgm-m-north", "Sensor wear", "GMI",
                 "Time in range 70–180", "7-day mean", "7-day change", "Mean fasting"):
        assert text in html, text
    for chart in ("glucose", "agp", "tir", "bp", "weight"):
        r = await c.get(f"/members/m-north/charts/{chart}.svg")
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
        svg = ET.fromstring(r.text)  # noqa: S314 - our own server's output, well-formed
        assert svg.tag == "{http://www.w3.org/2000/svg}svg"
        assert len(list(svg.iter())) > 15, chart  # drew something, not the "no data" note
    rows = await staffing.db.fetch(
        "SELECT actor, action, member_id, detail FROM audit_log WHERE id > $1 ORDER BY id", before)
    assert [(r["action"], r["member_id"]) for r in rows] == [("member.view", "m-north")] + [
        ("member.chart", "m-north")] * 5
    assert "emergency_contact" in json.loads(rows[0]["detail"])["sections"]
    # No values in the audit detail, only what was seen.
    assert "555" not in " ".join(r["detail"] for r in rows)


async def test_audit_log_is_append_only(console: Console, staffing: Staffing) -> None:
    await audit(staffing.db, "cli:tester", "member.export", "m-north", {"format": "csv"})
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log",
                      "TRUNCATE audit_log"):  # fmt: skip
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await staffing.db.execute(statement)
    with pytest.raises(ValueError, match="dotted lower-case"):
        await audit(staffing.db, "cli:tester", "Member View!", None)
    admin = await console.signed_in("a-1")
    page = await admin.get("/admin/audit", params={"actor": "cli:tester"})
    assert page.status_code == 200 and "member.export" in page.text


async def test_supervisor_view_figures(console: Console, staffing: Staffing) -> None:
    db = staffing.db
    now = console.clock()
    crit = await staffing.alert("m-north", 45)
    high = await staffing.alert("m-north2", 65)
    south = await staffing.alert("m-south", 65)  # another team: not in s-north's figures
    # crit: opened 10 min ago, claimed after 60 s, first call after 80 s (within 90 s)
    ago = {m: now - timedelta(minutes=m) for m in (1, 7, 9, 10, 40)}
    await db.execute(
        "UPDATE alerts SET opened_at = $2, status = 'acknowledged', acknowledged_by = 'c-north', "
        "acknowledged_at = $3, sla_due_at = $4 WHERE id = $1",
        crit, ago[10], ago[9], ago[7],
    )  # fmt: skip
    await db.execute(
        "INSERT INTO outreach (alert_id, member_id, coach_id, mode, outcome, started_at, "
        "duration_minutes) VALUES ($1, 'm-north', 'c-north', 'phone_call', 'reached', $2, 6)",
        crit, ago[10] + timedelta(seconds=80),
    )  # fmt: skip
    # high: opened 40 minutes ago, unclaimed, SLA 30 minutes: breached.
    await db.execute("UPDATE alerts SET opened_at = $2, sla_due_at = $3 WHERE id = $1",
                     high, ago[40], ago[10])  # fmt: skip
    await db.execute("UPDATE alerts SET sla_due_at = $2 WHERE id = $1", south, ago[1])
    await db.execute("INSERT INTO on_call (coach_id, team, starts_at, ends_at) "
                     "VALUES ('c-north2', 'north', $1, $2)",
                     now - timedelta(hours=1), now + timedelta(hours=7))  # fmt: skip
    sup = Staff("s-north", "Sara Supervisor", "supervisor", "north", "RN")
    async with console.state["pool"].acquire() as conn:
        watch = await reports.sla_watch(conn, sup, now)
        tiers = {t.tier: t for t in await reports.tier_times(conn, sup, now)}
        load = {r["id"]: r for r in await reports.coach_load(conn, sup, now)}
        roster = await reports.on_call_roster(conn, sup, now)
    assert [(w["id"], w["state"]) for w in watch] == [(high, "breached")]
    assert tiers["critical"].alerts == 1 and tiers["critical"].breached == 0
    assert tiers["critical"].ack_median_s == pytest.approx(60)
    assert tiers["critical"].outreach_median_s == pytest.approx(80)
    assert tiers["critical"].within_90s == 1.0
    assert tiers["high"].breached == 1 and tiers["high"].ack_median_s is None
    assert tiers["high"].outreach_median_s is None and tiers["high"].within_90s is None
    assert "c-south" not in load and load["c-north"]["held"] == 1
    assert load["c-north"]["outreach_minutes"] == 6
    assert roster is not None and [r["coach"] for r in roster] == ["Nils North"]
    page = await (await console.signed_in("s-north")).get("/supervisor")
    assert page.status_code == 200
    for text in ("breached", "80 s", "Nils North", "m-none", "100%"):
        assert text in page.text, text


async def test_live_signals_reach_whom_they_concern(
    console: Console, staffing: Staffing, settings: Settings
) -> None:
    hub: AlertHub = console.state["hub"]
    await asyncio.wait_for(hub.listening.wait(), 5)
    async with hub.subscribe() as signals:
        while not signals.empty():
            signals.get_nowait()
        alert_id = await staffing.alert("m-north", 45)
        signal = await asyncio.wait_for(signals.get(), 5)
    assert (signal.event, signal.alert_id, signal.tier) == ("opened", alert_id, "critical")
    assert signal.facts is not None and signal.facts.member_coach == "c-north"
    assert "m-north" not in signal.as_json()  # ids and event names only
    c_south = Staff("c-south", "Sol South", "coach", "south", "none")
    assert concerns(c_south, signal.facts)  # critical: everyone (coverage)
    high = AlertFacts("high", "open", None, "c-north", "north")
    assert not concerns(c_south, high)
    assert concerns(Staff("s-north", "S", "supervisor", "north", "RN"), high)
    assert not concerns(Staff("s-south", "S", "supervisor", "south", "RN"), high)
    assert concerns(Staff("a-1", "A", "admin", None, "none"), high)
    assert concerns(c_south, AlertFacts("high", "acknowledged", "c-south", "c-north", "north"))


async def test_the_hub_listens_again_after_losing_its_connection(
    console: Console, staffing: Staffing
) -> None:
    hub: AlertHub = console.state["hub"]
    await asyncio.wait_for(hub.listening.wait(), 5)
    async with hub.subscribe() as signals:
        killed = await staffing.db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'vigil-console-listen' AND datname = current_database()"
        )
        assert killed >= 1
        # Notifications sent while nobody listened are gone: every browser is told to re-fetch.
        resync = await asyncio.wait_for(signals.get(), 10)
        assert resync.event == "resync"
        alert_id = await staffing.alert("m-north", 45)
        signal = await asyncio.wait_for(signals.get(), 5)
    assert (signal.event, signal.alert_id) == ("opened", alert_id)
