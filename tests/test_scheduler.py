"""The scheduler's jobs on a fake clock: SLA escalation, first outreach, unreachable members,
time-driven rules, the outbox sweeper, the rollup refresh and the `vigil scheduler` command."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest

from alerting.errors import OutreachRejected
from alerting.escalation import unreachable
from alerting.lifecycle import claim, resolve
from alerting.outreach import record_outreach
from alerting.scheduler import Job
from alerting.trends import daily_trend
from services.pipeline import Incoming, ReadingPipeline
from tests.scheduler_support import T0, Provider, Ward, provider_server

CONTACT = "+12125550199"
# Fixed noise (random.Random(seed)): the rising series is +1.5 mg/dL a day; the flat one drifts
# +4.5 mg/dL a week by chance, p = 0.39: neither steep nor significant.
RISING_SEED, FLAT_SEED = 3, 5


@pytest.fixture
def provider() -> Iterator[Provider]:
    with provider_server() as p:
        yield p


@pytest.fixture
async def ward(db: asyncpg.Pool, provider: Provider) -> Ward:
    w = Ward(db, provider)
    await w.setup()
    return w


async def one(ward: Ward, sql: str) -> asyncpg.Record:
    row = await ward.db.fetchrow(sql)
    assert row is not None, sql
    return row


async def outreach(ward: Ward, outcome: str, at: datetime, alert_id: int | None = None) -> int:
    async with ward.db.acquire() as conn:
        return await record_outreach(
            conn, member_id="m-1", coach_id="c-ana", mode="phone_call", outcome=outcome,
            started_at=at, duration_minutes=Decimal("1.5"),
            alert_id=alert_id if alert_id is not None else await ward.alert_id(),
        )  # fmt: skip


# --- SLA escalation ------------------------------------------------------------------------


async def test_an_unclaimed_alert_is_escalated_just_after_its_sla(ward: Ward) -> None:
    s = ward.scheduler()
    await ward.glucose(62)  # high: acknowledge within 30 minutes
    ward.later(minutes=30)
    await s.tick()
    assert await ward.db.fetchval("SELECT escalated_at FROM alerts") is None
    ward.later(seconds=1)
    await s.tick()
    row = await one(ward, "SELECT escalated_at, tier FROM alerts")
    assert row["escalated_at"] == ward.clock.now
    (event,) = await ward.events("escalated")
    detail = json.loads(event["detail"])
    assert (detail["reason"], detail["to"], detail["supervisor"]) == ("sla_missed", "queue", None)
    assert event["actor"] == "scheduler"
    ward.later(hours=1)
    await s.tick()
    assert len(await ward.events("escalated")) == 1  # once
    assert ward.provider.requests == []  # only critical alerts page


async def test_a_claimed_alert_is_not_escalated(ward: Ward) -> None:
    await ward.glucose(62)
    async with ward.db.acquire() as conn:
        await claim(conn, await ward.alert_id(), "c-ana", now=ward.clock.now)
    ward.later(hours=2)
    await ward.scheduler().tick()
    assert await ward.events("escalated") == []


# --- first outreach ------------------------------------------------------------------------


async def test_a_claimed_critical_alert_without_outreach_is_escalated(ward: Ward) -> None:
    s = ward.scheduler()
    await ward.glucose(48)
    await s.tick()  # paged (on-call roster empty: the member's coach)
    ward.later(minutes=1)
    async with ward.db.acquire() as conn:
        await claim(conn, await ward.alert_id(), "c-ana", now=ward.clock.now)
    ward.later(minutes=5)  # the first-outreach deadline exactly: not overdue yet
    await s.tick()
    assert await ward.events("first_outreach_overdue") == []
    ward.later(seconds=1)
    await s.tick()
    (overdue,) = await ward.events("first_outreach_overdue")
    assert json.loads(overdue["detail"])["coach"] == "c-ana"
    (escalated,) = await ward.events("escalated")
    assert json.loads(escalated["detail"])["supervisor"] == "c-sue"
    assert "claimed by c-ana but nobody has contacted" in ward.provider.to("+13125550103")[0][
        "message"]  # fmt: skip
    ward.later(minutes=10)
    await s.tick()
    assert len(await ward.events("first_outreach_overdue")) == 1


async def test_an_outreach_in_time_prevents_the_escalation(ward: Ward) -> None:
    await ward.glucose(48)
    async with ward.db.acquire() as conn:
        await claim(conn, await ward.alert_id(), "c-ana", now=ward.clock.now)
    await outreach(ward, "reached", ward.clock.now + timedelta(minutes=2))
    ward.later(minutes=20)
    await ward.scheduler().tick()
    assert await ward.events("first_outreach_overdue") == []


async def test_outreach_records_are_validated(ward: Ward) -> None:
    await ward.glucose(48)
    async with ward.db.acquire() as conn:
        with pytest.raises(OutreachRejected) as bad_mode:
            await record_outreach(conn, member_id="m-1", coach_id="c-ana", mode="fax",
                                  outcome="reached", started_at=T0)  # fmt: skip
        assert bad_mode.value.reason == "unknown_mode"
        with pytest.raises(OutreachRejected) as wrong:
            await record_outreach(conn, member_id="m-2", coach_id="c-ana", mode="sms",
                                  outcome="reached", started_at=T0,
                                  alert_id=await ward.alert_id())  # fmt: skip
        assert wrong.value.reason == "wrong_member"
    assert await ward.db.fetchval("SELECT count(*) FROM outreach") == 0


# --- unreachable after a critical low -------------------------------------------------------


async def test_two_unanswered_calls_notify_the_emergency_contact(ward: Ward) -> None:
    s = ward.scheduler()
    await ward.glucose(45)
    alert_id = await ward.alert_id()
    async with ward.db.acquire() as conn:
        await claim(conn, alert_id, "c-ana", now=ward.clock.now)
    await outreach(ward, "no_answer", T0 + timedelta(minutes=1))
    ward.later(minutes=2)
    await s.tick()
    assert ward.provider.to(CONTACT) == []  # one unanswered call is not "unreachable"
    await outreach(ward, "no_answer", T0 + timedelta(minutes=12))
    ward.later(minutes=11)
    await s.tick()
    (notice,) = ward.provider.to(CONTACT)
    assert notice["channel"] == "sms" and "Test Member" in notice["message"]
    row = await one(ward, "SELECT kind, status, sent_at, provider_id FROM notifications")
    assert tuple(row) == ("emergency_contact", "sent", ward.clock.now, "msg-1")
    kinds = [e["kind"] for e in await ward.events()]
    assert "member_unreachable" in kinds and "emergency_contact_notified" in kinds
    await outreach(ward, "no_answer", T0 + timedelta(minutes=14))
    ward.later(minutes=5)
    await s.tick()
    assert len(ward.provider.to(CONTACT)) == 1  # once per alert


@pytest.mark.parametrize(
    ("attempts", "notified"),
    [
        ([(0, "no_answer"), (16, "no_answer")], False),  # further apart than 15 minutes
        ([(0, "no_answer"), (15, "no_answer")], True),
        ([(0, "no_answer"), (5, "reached"), (8, "no_answer")], False),
        ([(0, "no_answer"), (5, "no_answer"), (8, "reached")], False),  # reached since
    ],
)
async def test_unreachable_needs_two_unanswered_calls_within_the_window(
    ward: Ward, attempts: list[tuple[int, str]], notified: bool
) -> None:
    await ward.glucose(45)
    for minutes, outcome in attempts:
        await outreach(ward, outcome, T0 + timedelta(minutes=minutes))
    ward.later(minutes=20)
    await ward.scheduler().tick()
    assert bool(ward.provider.to(CONTACT)) is notified


async def test_a_provider_outage_retries_the_emergency_contact(ward: Ward) -> None:
    s = ward.scheduler()
    ward.provider.status = 500
    await ward.glucose(45)
    await outreach(ward, "no_answer", T0)
    await outreach(ward, "no_answer", T0 + timedelta(minutes=3))
    ward.later(minutes=4)
    await s.tick()
    assert await ward.db.fetchval("SELECT status FROM notifications") == "pending"
    ward.provider.status = 200
    ward.later(minutes=1)
    await s.tick()
    row = await one(ward, "SELECT status, attempts FROM notifications")
    assert tuple(row) == ("sent", 2)


def test_unreachable_is_a_pure_function_of_attempts() -> None:
    w = timedelta(minutes=15)
    assert unreachable([], 2, w) is None
    assert unreachable([(T0, "no_answer"), (T0 + w, "no_answer")], 2, w) == T0 + w
    assert unreachable([(T0, "no_answer")], 1, w) == T0


# --- no_recent_readings ----------------------------------------------------------------------


async def test_no_recent_readings_is_raised_at_seven_days_not_six(ward: Ward) -> None:
    s = ward.scheduler()
    await ward.glucose(120)
    ward.later(days=6, hours=23)
    await s.tick()
    assert await ward.db.fetch("SELECT 1 FROM alerts WHERE rule = 'no_recent_readings'") == []
    ward.clock.now = T0 + timedelta(days=7)
    await s.tick()
    row = await one(
        ward,
        "SELECT tier, count, latest_value, unit, last_reading_at, detail FROM alerts "
        "WHERE rule = 'no_recent_readings'",
    )
    assert (row["tier"], row["count"], row["latest_value"], row["unit"]) == ("low", 1, 7, "days")
    assert row["last_reading_at"] == T0
    assert json.loads(row["detail"])["last_reading_at"] == T0.isoformat()
    ward.later(hours=1)
    await s.tick()
    assert (
        await ward.db.fetchval("SELECT count FROM alerts WHERE rule = 'no_recent_readings'") == 1
    )  # the same silence is one alert, counted once
    async with ward.db.acquire() as conn:
        await claim(conn, await ward.alert_id("no_recent_readings"), "c-ana", now=ward.clock.now)
        await resolve(conn, await ward.alert_id("no_recent_readings"), "c-ana", "reached_member",
                      now=ward.clock.now)  # fmt: skip
    ward.later(hours=2)  # well past the cool-down: the same silence is not raised again
    await s.tick()
    assert (
        await ward.db.fetchval("SELECT count(*) FROM alerts WHERE rule = 'no_recent_readings'") == 1
    )
    assert await ward.events("suppressed_cooldown") == []


async def test_no_recent_readings_needs_an_enrollment_and_counts_from_its_start(
    ward: Ward,
) -> None:
    s = ward.scheduler()
    await ward.db.execute("UPDATE enrollments SET end_date = '2026-10-31'")
    ward.later(days=30)
    await s.tick()
    assert await ward.db.fetchval("SELECT count(*) FROM alerts") == 0
    # enrolled again today (member-local): seven days from that midnight
    start = (ward.clock.now - timedelta(hours=6)).date()
    await ward.db.execute("INSERT INTO enrollments (member_id, program, start_date) "
                          "VALUES ('m-1', 'hypertension', $1)", start)  # fmt: skip
    await s.tick()
    assert await ward.db.fetchval("SELECT count(*) FROM alerts") == 0
    ward.later(days=7)
    await s.tick()
    assert await ward.db.fetchval("SELECT rule FROM alerts") == "no_recent_readings"


# --- glucose_trend_rising --------------------------------------------------------------------


async def store_days(ward: Ward, means: list[float]) -> None:
    """Two readings a member-local day (07:00 and 19:00 Chicago) around each mean, from 14 days
    before the clock's day, stored without evaluation and received on time."""
    pipeline = ReadingPipeline(ward.db)
    first = datetime(2026, 11, 3, 13, 0, tzinfo=UTC) - timedelta(days=len(means))
    for d, mean in enumerate(means):
        for hours, delta in ((0, -4.0), (12, 4.0)):
            at = first + timedelta(days=d, hours=hours)
            ward.seq += 1
            doc = {"device_id": "gm-1", "seq": ward.seq, "kind": "glucose", "unit": "mg/dL",
                   "value": round(mean + delta, 1), "measured_at": at.isoformat()}  # fmt: skip
            result = await pipeline.process([Incoming(orjson.dumps(doc), at, "file")])
            assert result.outcomes[0].status == "accepted"


def series(slope_per_day: float, noise: float, seed: int, days: int = 14) -> list[float]:
    rng = random.Random(seed)
    return [150 + slope_per_day * d + rng.gauss(0, noise) for d in range(days)]


async def test_a_rising_daily_mean_raises_glucose_trend_rising(ward: Ward) -> None:
    await store_days(ward, series(1.5, 4.0, RISING_SEED))  # +10.5 mg/dL a week, with noise
    await ward.scheduler().tick()
    row = await one(
        ward,
        "SELECT tier, latest_value, unit, detail FROM alerts WHERE rule = 'glucose_trend_rising'",
    )
    assert row is not None and row["tier"] == "low" and row["unit"] == "mg/dL/week"
    assert Decimal(7) < row["latest_value"] < Decimal(14)
    detail = json.loads(row["detail"])
    assert float(detail["p_value"]) < 0.05 and detail["days"] == "14"
    assert detail["window"] == "2026-10-20..2026-11-02"


async def test_flat_noise_raises_no_trend(ward: Ward) -> None:
    await store_days(ward, series(0.0, 8.0, FLAT_SEED))
    await ward.scheduler().tick()
    assert await ward.db.fetchval("SELECT count(*) FROM alerts") == 0


def test_trend_statistics() -> None:
    days = [date(2026, 10, 20) + timedelta(days=d) for d in range(14)]
    rising = daily_trend(list(zip(days, series(1.5, 4.0, RISING_SEED), strict=True)))
    assert rising is not None and rising.rising(5.0)
    assert 8 < rising.slope_per_week < 13
    slow = daily_trend(list(zip(days, series(0.5, 0.5, RISING_SEED), strict=True)))
    assert slow is not None and slow.p_value < 0.05 and not slow.rising(5.0)  # 3.5 a week
    assert daily_trend(list(zip(days[:6], series(3, 1, RISING_SEED), strict=False))) is None
    sparse = daily_trend(list(zip(days[::2], series(3, 1, RISING_SEED, 7), strict=True)))
    assert sparse is not None and sparse.days == 7 and sparse.rising(5.0)  # gaps: day numbers
    constant = daily_trend([(d, 140.0) for d in days])
    assert constant is not None and not constant.rising(5.0)
    # false alarms on flat noise stay near the test's 2.5% one-sided rate
    flagged = sum(
        bool((t := daily_trend(list(zip(days, series(0, 10, seed), strict=True))))
             and t.rising(5.0))
        for seed in range(400)
    )  # fmt: skip
    assert flagged < 24, flagged


# --- housekeeping: outbox, rollups ---------------------------------------------------------


async def test_the_tick_sweeps_the_outbox_and_refreshes_rollups(ward: Ward) -> None:
    ward.clock.now = datetime.now(UTC)  # the outbox and rollups use the database's clock
    raw = orjson.dumps({"device_id": "gm-1", "seq": 1, "kind": "glucose", "value": 41,
                        "unit": "mg/dL", "measured_at": ward.clock.now.isoformat()})  # fmt: skip
    await ReadingPipeline(ward.db).process([Incoming(raw, ward.clock.now, "file")])  # no engine
    await ward.db.execute(
        "INSERT INTO rule_outbox (created_at, device_ids, seq_epochs, seqs) "
        "VALUES (now() - interval '1 minute', '{gm-1}', '{0}', '{1}')"
    )
    results = {r.name: r for r in await ward.scheduler().tick()}
    assert results["outbox"].count == 1
    assert await ward.db.fetchval("SELECT rule FROM alerts") == "hypoglycemia"
    assert await ward.db.fetchval("SELECT count(*) FROM rule_outbox") == 0
    assert results["rollups"].status == "ran"
    watermark = await ward.db.fetchval(
        "SELECT value::timestamptz FROM vigil_meta WHERE key = 'rollup_watermark'"
    )
    assert watermark > ward.clock.now - timedelta(hours=2)
    again = {r.name: r.status for r in await ward.scheduler(instance="s2").tick()}
    assert again["rollups"] == "not_due"  # every 30 minutes across all processes


async def test_a_failing_job_does_not_stop_the_others(ward: Ward) -> None:
    s = ward.scheduler()

    async def broken(*_: object) -> int:
        raise RuntimeError("boom")

    s.jobs[0] = Job("escalate_sla", timedelta(0), broken)
    await ward.glucose(45)
    results = {r.name: r.status for r in await s.tick()}
    assert results["escalate_sla"] == "failed" and results["page"] == "ran"
    assert len(ward.provider.requests) == 1
    error = await ward.db.fetchval("SELECT last_error FROM scheduler_jobs "
                                   "WHERE name = 'escalate_sla'")  # fmt: skip
    assert error == "RuntimeError: boom"


# --- the command -------------------------------------------------------------------------------


async def test_vigil_scheduler_once_pages_through_the_configured_provider(
    ward: Ward, database_url: str
) -> None:
    ward.clock.now = datetime.now(UTC)
    await ward.glucose(44)
    code = "import typer; from services.cli_scheduler import scheduler; typer.run(scheduler)"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "--once", "--instance", "cli-test",
        env={**os.environ, "VIGIL_DATABASE_URL": database_url, "VIGIL_ENV": "test",
             "VIGIL_NOTIFIER_URL": ward.provider.url, "VIGIL_NOTIFIER_TOKEN": "t0k3n",
             "VIGIL_MQTT_URL": "mqtt://127.0.0.1:9"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "page\tran\t1" in out.decode()
    (request,) = ward.provider.requests
    assert request["headers"]["Authorization"] == "Bearer t0k3n"
    assert await ward.db.fetchval("SELECT run_by FROM scheduler_jobs WHERE name = 'page'") == (
        "cli-test"
    )
