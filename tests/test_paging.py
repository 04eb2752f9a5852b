"""Paging critical alerts through the provider (faked at its HTTP edge by a local server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from pydantic import SecretStr

from alerting.lifecycle import claim
from alerting.notifier import HttpsNotifier, Notice
from alerting.outreach import record_outreach
from alerting.paging import Coverage
from alerting.scheduler import SchedulerSettings
from services.errors import ConfigurationError
from services.settings import Settings
from services.storage.db import open_pool
from tests.scheduler_support import T0, TOKEN, Provider, Ward, provider_server

ANA, OLI, SUE, ZED = "+13125550101", "+13125550102", "+13125550103", "+13125550104"
WEEKDAYS = {"coverage": {"timezone": "America/Chicago", "days": ["mon", "tue", "wed", "thu", "fri"],
                         "from": "08:00", "to": "20:00"}}  # fmt: skip


@pytest.fixture
def provider() -> Iterator[Provider]:
    with provider_server() as p:
        yield p


@pytest.fixture
async def ward(db: asyncpg.Pool, provider: Provider) -> Ward:
    w = Ward(db, provider)
    await w.setup()
    await w.on_call("c-oli", "north", T0 - timedelta(days=1), T0 + timedelta(days=2))
    return w


async def pages(ward: Ward) -> list[tuple[str, str, str, str]]:
    rows = await ward.db.fetch(
        "SELECT coach_id, reason, channel, provider_status FROM pages ORDER BY id"
    )
    return [tuple(r) for r in rows]


async def test_a_critical_alert_pages_repages_and_escalates_until_claimed(ward: Ward) -> None:
    await ward.policy(WEEKDAYS)  # Tuesday 08:00 in Chicago: inside coverage, the coach is paged
    s = ward.scheduler()
    await ward.glucose(45)
    await s.tick()
    assert await pages(ward) == [("c-ana", "page", "sms", "accepted")]
    (request,) = ward.provider.requests
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Idempotency-Key"] == "page-1"
    body = request["json"]
    assert (body["to"], body["channel"], body["reference"]) == (ANA, "sms", "page-1")
    assert "critical alert 1 (hypoglycemia)" in body["message"]
    assert "45" not in body["message"]  # ids only: an SMS is not a secure channel
    assert await ward.db.fetchval("SELECT provider_id FROM pages") == "msg-1"

    ward.later(minutes=3)  # exactly at the SLA deadline: met, not missed
    await s.tick()
    assert len(ward.provider.requests) == 1
    assert await ward.events("escalated") == []

    ward.later(seconds=1)  # past it: escalated to the team's supervisor, who is paged
    await s.tick()
    (escalated,) = await ward.events("escalated")
    assert '"supervisor": "c-sue"' in escalated["detail"] and '"sla_missed"' in escalated["detail"]
    assert await pages(ward) == [("c-ana", "page", "sms", "accepted"),
                                 ("c-sue", "escalation", "voice", "accepted")]  # fmt: skip

    ward.later(minutes=1, seconds=58)  # 4:59 after the first page: not yet
    await s.tick()
    assert len(ward.provider.requests) == 2
    ward.later(seconds=1)  # 5 minutes: the coach and, now, the supervisor are called again
    await s.tick()
    assert [(p[0], p[1], p[2]) for p in (await pages(ward))[2:]] == [
        ("c-ana", "repage", "voice"), ("c-sue", "repage", "voice")]  # fmt: skip
    assert "unclaimed for 5 minutes" in ward.provider.to(ANA)[-1]["message"]

    async with ward.db.acquire() as conn:
        await claim(conn, await ward.alert_id(), "c-ana", now=ward.clock.now)
        await record_outreach(conn, member_id="m-1", coach_id="c-ana", mode="phone_call",
                              outcome="reached", started_at=ward.clock.now,
                              alert_id=await ward.alert_id())  # fmt: skip
    for _ in range(3):  # claimed (and the member called): nobody is paged any more
        ward.later(minutes=5)
        await s.tick()
    assert len(ward.provider.requests) == 4
    kinds = [e["kind"] for e in await ward.events()]
    assert kinds.count("paged") == 4 and "page_failed" not in kinds


async def test_outside_coverage_the_on_call_coach_is_paged(ward: Ward) -> None:
    await ward.policy(WEEKDAYS)
    ward.clock.now = T0 + timedelta(hours=14)  # 22:00 in Chicago
    await ward.glucose(50)
    await ward.scheduler().tick()
    assert await pages(ward) == [("c-oli", "page", "sms", "accepted")]
    assert [b["to"] for b in ward.provider.bodies()] == [OLI]


async def test_weekend_is_outside_coverage_and_no_coverage_means_the_roster(ward: Ward) -> None:
    await ward.policy(WEEKDAYS)
    ward.clock.now = T0 + timedelta(days=4, hours=4)  # Saturday noon in Chicago
    await ward.on_call("c-ana", "north", ward.clock.now - timedelta(hours=1),
                       ward.clock.now + timedelta(hours=1))  # fmt: skip
    await ward.db.execute("DELETE FROM on_call WHERE coach_id = 'c-oli'")
    await ward.glucose(50)
    await ward.scheduler().tick()
    assert [b["to"] for b in ward.provider.bodies()] == [ANA]  # Ana is on call this weekend


async def test_without_coverage_and_nobody_on_call_the_coach_is_paged(ward: Ward) -> None:
    await ward.db.execute("DELETE FROM on_call")
    await ward.glucose(50)
    await ward.scheduler().tick()
    assert [b["to"] for b in ward.provider.bodies()] == [ANA]


async def test_no_coverage_policy_pages_the_roster_and_falls_back_to_another_team(
    ward: Ward,
) -> None:
    await ward.db.execute("DELETE FROM on_call")
    await ward.on_call("c-zed", "south", T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    await ward.glucose(50)
    await ward.scheduler().tick()
    assert [b["to"] for b in ward.provider.bodies()] == [ZED]  # someone rather than no one


async def test_a_high_alert_is_not_paged(ward: Ward) -> None:
    await ward.glucose(65)  # level 1: the console's queue, no page
    await ward.scheduler().tick()
    assert ward.provider.requests == []


async def test_a_retrospective_critical_alert_is_escalated_but_never_paged(ward: Ward) -> None:
    s = ward.scheduler()
    await ward.glucose(45, at=T0 - timedelta(hours=3))  # received 3 hours late
    await s.tick()
    ward.later(hours=8, seconds=1)  # past the retrospective SLA (8 hours)
    await s.tick()
    (escalated,) = await ward.events("escalated")
    assert '"supervisor": "c-sue"' in escalated["detail"]
    assert ward.provider.requests == []
    assert await pages(ward) == []


async def test_a_claim_before_the_first_tick_pages_nobody(ward: Ward) -> None:
    await ward.glucose(45)
    async with ward.db.acquire() as conn:
        await claim(conn, await ward.alert_id(), "c-ana", now=ward.clock.now)
    await ward.scheduler().tick()
    assert ward.provider.requests == []


async def test_a_failed_page_is_recorded_and_retried_a_minute_later(ward: Ward) -> None:
    s = ward.scheduler()
    ward.provider.status = 503
    await ward.glucose(45)
    await s.tick()
    assert await pages(ward) == [("c-oli", "page", "sms", "http_503")]
    (failed,) = await ward.events("page_failed")
    assert '"status": "http_503"' in failed["detail"]
    ward.provider.status = 200
    ward.later(seconds=30)
    await s.tick()
    assert len(ward.provider.requests) == 1
    ward.later(seconds=30)
    await s.tick()
    assert await pages(ward) == [("c-oli", "page", "sms", "http_503"),
                                 ("c-oli", "repage", "voice", "accepted")]  # fmt: skip


async def test_two_schedulers_on_the_same_tick_page_and_escalate_once(
    ward: Ward, settings: Settings
) -> None:
    ward.provider.delay = 0.3  # the first process is still talking to the provider
    await ward.glucose(45)
    async with (
        open_pool(settings.dsn(), min_size=3, max_size=4) as p1,
        open_pool(settings.dsn(), min_size=3, max_size=4) as p2,
    ):
        s1, s2 = ward.scheduler(pool=p1, instance="a"), ward.scheduler(pool=p2, instance="b")
        await asyncio.gather(s1.tick(), s2.tick())
        assert len(ward.provider.requests) == 1
        await asyncio.gather(s1.tick(), s2.tick())  # one after the other: nothing due
        assert len(ward.provider.requests) == 1
        ward.later(minutes=3, seconds=1)
        await asyncio.gather(s1.tick(), s2.tick())
    assert len(await ward.events("escalated")) == 1
    assert [p[:2] for p in await pages(ward)] == [("c-oli", "page"), ("c-sue", "escalation")]
    assert len(ward.provider.requests) == 2


async def test_a_job_another_process_is_running_is_skipped(ward: Ward) -> None:
    s = ward.scheduler()
    await s.tick()  # creates the job rows
    await ward.glucose(45)
    async with ward.db.acquire() as other, other.transaction():
        await other.execute("SELECT 1 FROM scheduler_jobs WHERE name = 'page' FOR UPDATE")
        results = {r.name: r.status for r in await s.tick()}
        assert results["page"] == "locked" and ward.provider.requests == []
    assert {r.name: r.status for r in await s.tick()}["page"] == "ran"
    assert len(ward.provider.requests) == 1


async def test_notify_reaches_listening_consoles(ward: Ward) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()

    def heard(*args: object) -> None:
        got.put_nowait(str(args[3]))

    async with ward.db.acquire() as listener:
        await listener.add_listener("vigil_alerts", heard)
        try:
            await ward.glucose(45)
            ward.later(minutes=4)
            await ward.scheduler().tick()
            await asyncio.sleep(0.2)
        finally:
            await listener.remove_listener("vigil_alerts", heard)
        payloads = [got.get_nowait() for _ in range(got.qsize())]
    assert any('"event": "escalated"' in p for p in payloads)
    assert any('"event": "paged"' in p for p in payloads)


async def test_a_running_scheduler_pages_within_seconds_not_at_the_next_tick(ward: Ward) -> None:
    s = ward.scheduler(settings=SchedulerSettings(tick=timedelta(minutes=10)))
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop), name="scheduler")
    try:
        async with asyncio.timeout(10):
            while not await ward.db.fetchval(
                "SELECT last_run_at IS NOT NULL FROM scheduler_jobs WHERE name = 'rollups'"
            ):
                await asyncio.sleep(0.05)  # the first tick is done; the next is 10 minutes away
            await ward.glucose(45)  # the engine's NOTIFY wakes the scheduler
            while not ward.provider.requests:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert [b["to"] for b in ward.provider.bodies()] == [OLI]  # no coverage: the roster


COVERAGE_CASES = [
    # (coverage, local time in Chicago, covered)
    (WEEKDAYS["coverage"], datetime(2026, 11, 3, 7, 59), False),
    (WEEKDAYS["coverage"], datetime(2026, 11, 3, 8, 0), True),
    (WEEKDAYS["coverage"], datetime(2026, 11, 3, 19, 59), True),
    (WEEKDAYS["coverage"], datetime(2026, 11, 3, 20, 0), False),
    (WEEKDAYS["coverage"], datetime(2026, 11, 7, 12, 0), False),  # Saturday
    ({"from": "20:00", "to": "08:00", "days": ["fri"]}, datetime(2026, 11, 6, 23, 0), True),
    ({"from": "20:00", "to": "08:00", "days": ["fri"]}, datetime(2026, 11, 7, 3, 0), True),
    ({"from": "20:00", "to": "08:00", "days": ["fri"]}, datetime(2026, 11, 6, 3, 0), False),
    ({"days": [6, 7]}, datetime(2026, 11, 8, 3, 0), True),  # whole days
]


@pytest.mark.parametrize(("coverage", "local", "covered"), COVERAGE_CASES)
def test_coverage_hours(coverage: dict[str, object], local: datetime, covered: bool) -> None:
    parsed = Coverage.from_policy({"coverage": coverage}, "America/Chicago")
    assert parsed is not None
    assert parsed.covers(local.replace(tzinfo=ZoneInfo("America/Chicago")).astimezone(UTC)) \
        is covered  # fmt: skip


def test_invalid_coverage_means_the_roster() -> None:
    assert Coverage.from_policy({"coverage": {"days": ["someday"]}}, "UTC") is None
    assert Coverage.from_policy({"coverage": {"timezone": "Mars/Base"}}, "UTC") is None
    assert Coverage.from_policy({}, "UTC") is None


def test_the_notifier_refuses_plain_http_beyond_loopback() -> None:
    with pytest.raises(ConfigurationError):
        HttpsNotifier("http://sms.example.com/v1", SecretStr("x"))
    HttpsNotifier("https://sms.example.com/v1", SecretStr("x"))


async def test_an_unreachable_provider_is_a_failed_delivery_not_an_error() -> None:
    from services.embedded import free_port

    notifier = HttpsNotifier(f"http://127.0.0.1:{free_port()}/", SecretStr("x"), timeout=2)
    delivery = await notifier.send(Notice("+1555", "sms", "hello", "page-1"))
    assert (delivery.ok, delivery.status) == (False, "unreachable")
