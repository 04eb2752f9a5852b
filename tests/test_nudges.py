"""Member nudges: generated after live lows, weekly, for missed testing; quiet hours, the daily
limit, languages; delivered on the device's MQTT `messages` topic (a private Mosquitto)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import asyncpg
import orjson
import pytest

from alerting.content import load_content, parse_content
from alerting.errors import ContentError
from alerting.inbox import MqttTransport, inbox, mark_read
from alerting.nudges import nudge_for_alert, queue_message
from services.embedded import private_mosquitto
from tests.scheduler_support import T0, Provider, Ward, provider_server

NIGHT = T0 + timedelta(hours=15, minutes=30)  # 23:30 in Chicago
MORNING = datetime(2026, 11, 4, 13, 0, tzinfo=UTC)  # 07:00 in Chicago, the end of quiet hours


@pytest.fixture
def provider() -> Iterator[Provider]:
    with provider_server() as p:
        yield p


@pytest.fixture
async def ward(db: asyncpg.Pool, provider: Provider) -> Ward:
    w = Ward(db, provider)
    await w.setup()
    return w


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with private_mosquitto(Path(tmp_path_factory.mktemp("mqtt"))) as url:
        yield url


async def messages(ward: Ward) -> list[asyncpg.Record]:
    return list(await ward.db.fetch("SELECT * FROM member_messages ORDER BY id"))


# --- after a low ------------------------------------------------------------------------------


async def test_a_live_level1_low_gets_the_treatment_advice(ward: Ward) -> None:
    s = ward.scheduler()
    await ward.glucose(65)
    await s.tick()
    (m,) = await messages(ward)
    assert (m["kind"], m["template"], m["language"]) == ("low_treatment", "low_level1", "en")
    assert m["body"].startswith("Your reading of 65 mg/dL is low.")
    assert "15 g of fast-acting carbohydrate" in m["body"] and "retest in 15 minutes" in m["body"]
    assert m["deliver_after"] == T0 and m["alert_id"] == await ward.alert_id()
    ward.later(minutes=1)
    await s.tick()
    assert len(await messages(ward)) == 1  # one per alert
    (seen,) = await inbox(ward.db, "m-1", 10, now=ward.clock.now)
    assert seen.as_json()["body"] == m["body"] and seen.read_at is None
    assert await mark_read(ward.db, "m-1", seen.id, now=ward.clock.now)
    assert not await mark_read(ward.db, "m-2", seen.id, now=ward.clock.now)  # not theirs
    assert (await inbox(ward.db, "m-1", 10, now=ward.clock.now))[0].read_at == ward.clock.now


async def test_a_retrospective_low_gets_none_until_a_live_one(ward: Ward) -> None:
    s = ward.scheduler()
    await ward.glucose(64, at=T0 - timedelta(hours=3))  # received 3 hours late
    await s.tick()
    assert await messages(ward) == []
    ward.later(minutes=5)
    await ward.glucose(66)  # a live low now: the alert is made live, and advice is due
    await s.tick()
    (m,) = await messages(ward)
    assert m["body"].startswith("Your reading of 66 mg/dL")


async def test_level2_and_stale_lows_get_no_self_treatment_nudge(ward: Ward) -> None:
    s = ward.scheduler()
    await ward.glucose(50)  # level 2: a coach calls; no text telling them what to do alone
    await s.tick()
    assert await messages(ward) == []
    async with ward.db.acquire() as conn:
        assert await nudge_for_alert(conn, await ward.alert_id(), content=ward.content,
                                     now=ward.clock.now) is None  # fmt: skip
    await ward.db.execute("TRUNCATE alerts, alert_readings, alert_events CASCADE")
    await ward.glucose(65)
    ward.later(minutes=31)  # the scheduler was away: advice on a 31-minute-old low is stale
    await s.tick()
    assert await messages(ward) == []


async def test_the_engine_hook_is_idempotent(ward: Ward) -> None:
    await ward.glucose(65)
    alert_id = await ward.alert_id()
    async with ward.db.acquire() as conn:
        first = await nudge_for_alert(conn, alert_id, content=ward.content, now=ward.clock.now)
        again = await nudge_for_alert(conn, alert_id, content=ward.content, now=ward.clock.now)
    assert first is not None and first.status == "queued"
    assert again is not None and again.status == "duplicate"
    assert len(await messages(ward)) == 1


async def test_in_quiet_hours_the_nudge_waits_for_the_morning(ward: Ward) -> None:
    ward.clock.now = NIGHT
    await ward.glucose(65)
    await ward.scheduler().tick()
    (m,) = await messages(ward)
    assert m["deliver_after"] == MORNING
    assert m["body"].startswith("Overnight you had a low reading (65 mg/dL)")
    assert await inbox(ward.db, "m-1", 10, now=NIGHT + timedelta(hours=1)) == []
    assert len(await inbox(ward.db, "m-1", 10, now=MORNING)) == 1


async def test_the_member_language_and_the_english_fallback(ward: Ward) -> None:
    await ward.db.execute("UPDATE members SET language = 'es'")
    await ward.glucose(65)
    await ward.scheduler().tick()
    (m,) = await messages(ward)
    assert m["language"] == "es" and m["body"].startswith("Su lectura de 65 mg/dL está baja.")
    await ward.db.execute("UPDATE members SET language = 'fr'")
    async with ward.db.acquire() as conn:
        await queue_message(conn, ward.content, member_id="m-1", situation="missed_testing",
                            values={"days": 3}, dedupe_key="x", now=T0)  # fmt: skip
    assert (await messages(ward))[1]["language"] == "en"


# --- the daily limit -------------------------------------------------------------------------


async def test_at_most_three_nudges_reach_a_member_per_local_day(ward: Ward) -> None:
    async def nudge(key: str, now: datetime) -> str:
        async with ward.db.acquire() as conn:
            result = await queue_message(conn, ward.content, member_id="m-1",
                                         situation="missed_testing", values={"days": 3},
                                         dedupe_key=key, now=now)  # fmt: skip
        return result.status

    assert await nudge("night", NIGHT) == "deferred"  # counts on the day it is delivered
    statuses = [await nudge(f"k{i}", MORNING + timedelta(hours=i)) for i in range(4)]
    assert statuses == ["queued", "queued", "rate_limited", "rate_limited"]
    assert await nudge("k0", MORNING) == "duplicate"
    assert await nudge("next-day", MORNING + timedelta(days=1)) == "queued"
    assert len(await messages(ward)) == 4


# --- weekly encouragement, missed testing ------------------------------------------------------


async def test_a_week_of_good_fasting_values_is_encouraged_once(ward: Ward) -> None:
    s = ward.scheduler()
    for day, value in enumerate([96, 104, 118, 88, 125]):
        ward.clock.now = T0 - timedelta(days=5 - day)
        await ward.glucose(value, meal="fasting")
    ward.clock.now = T0
    await s.tick()
    (m,) = [m for m in await messages(ward) if m["kind"] == "encouragement"]
    assert "All 5 of your fasting readings" in m["body"]
    ward.later(hours=2)
    await s.tick()
    assert len([m for m in await messages(ward) if m["kind"] == "encouragement"]) == 1


async def test_one_fasting_value_out_of_range_means_no_encouragement(ward: Ward) -> None:
    for day, value in enumerate([96, 104, 142, 88, 125, 110]):
        ward.clock.now = T0 - timedelta(days=6 - day)
        await ward.glucose(value, meal="fasting")
    ward.clock.now = T0
    await ward.scheduler().tick()
    assert [m for m in await messages(ward) if m["kind"] == "encouragement"] == []


async def test_a_member_who_stops_testing_is_reminded_every_three_days(ward: Ward) -> None:
    s = ward.scheduler()
    await ward.glucose(120)
    reminders = []
    for days in (2, 3, 4, 6):
        ward.clock.now = T0 + timedelta(days=days)
        await s.tick()
        reminders.append(len([m for m in await messages(ward) if m["kind"] == "missed_testing"]))
    assert reminders == [0, 1, 1, 2]
    first = next(m for m in await messages(ward) if m["kind"] == "missed_testing")
    assert "in 3 days" in first["body"]


# --- delivery over MQTT ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def device_inbox(url: str, device: str) -> AsyncIterator[asyncio.Queue[Any]]:
    parts = urlsplit(url)
    got: asyncio.Queue[Any] = asyncio.Queue()
    async with aiomqtt.Client(parts.hostname or "127.0.0.1", parts.port or 1883,
                              identifier=f"test-{device}") as client:  # fmt: skip
        await client.subscribe(f"vigil/v1/devices/{device}/messages", qos=1)

        async def read() -> None:
            async for message in client.messages:
                got.put_nowait((message.topic.value, message.qos, message.payload))

        reader = asyncio.create_task(read())
        try:
            yield got
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def test_nudges_are_delivered_on_the_device_messages_topic(ward: Ward, broker: str) -> None:
    s = ward.scheduler(transport=MqttTransport(broker))
    async with device_inbox(broker, "gm-1") as got:
        await ward.glucose(65)
        await s.tick()
        topic, qos, payload = await asyncio.wait_for(got.get(), 10)
        assert (topic, qos) == ("vigil/v1/devices/gm-1/messages", 1)
        doc = orjson.loads(payload)
        (m,) = await messages(ward)
        assert doc == {"id": m["id"], "kind": "low_treatment", "body": m["body"],
                       "language": "en", "created_at": T0.isoformat()}  # fmt: skip
        assert m["delivered_mqtt_at"] == T0
        ward.later(minutes=1)
        await s.tick()  # delivered once
        await asyncio.sleep(0.3)
        assert got.empty()


async def test_a_deferred_nudge_is_published_only_after_quiet_hours(
    ward: Ward, broker: str
) -> None:
    s = ward.scheduler(transport=MqttTransport(broker))
    async with device_inbox(broker, "gm-1") as got:
        ward.clock.now = NIGHT
        await ward.glucose(65)
        await s.tick()
        ward.clock.now = MORNING - timedelta(minutes=1)
        await s.tick()
        await asyncio.sleep(0.3)
        assert got.empty()
        ward.clock.now = MORNING
        await s.tick()
        _, _, payload = await asyncio.wait_for(got.get(), 10)
        assert orjson.loads(payload)["body"].startswith("Overnight")


async def test_an_absent_broker_leaves_messages_pending(ward: Ward) -> None:
    from services.embedded import free_port

    s = ward.scheduler(transport=MqttTransport(f"mqtt://127.0.0.1:{free_port()}", timeout=2))
    await ward.glucose(65)
    results = {r.name: r.status for r in await s.tick()}
    assert results["deliver_messages"] == "failed" and results["nudge_lows"] == "ran"
    (m,) = await messages(ward)
    assert m["delivered_mqtt_at"] is None


# --- the content library --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"x": {"kind": "k", "texts": {"es": {"now": "hola"}}}}, "x.texts"),
        ({"x": {"kind": "k", "texts": {"en": {"now": "$who"}}}}, "x.texts.en.now"),
        ({"x": {"kind": "k", "variables": ["a"], "texts": {"en": {"later": "a"}}}}, "x.texts.en"),
        ({"x": {"texts": {"en": {"now": "a"}}}}, "x.kind"),
        ({"x": {"kind": "k", "texts": {"en": {"now": "cost: $"}}}}, "x.texts.en.now"),
    ],
)
def test_a_broken_content_file_is_refused(doc: dict[str, Any], path: str) -> None:
    with pytest.raises(ContentError) as err:
        parse_content("test.yaml", doc)
    assert err.value.path == path


def test_the_shipped_library_has_every_situation_the_code_uses() -> None:
    content = load_content()
    names = set(content.situations)
    used = {"low_level1", "encouragement_fasting", "missed_testing", "page", "repage",
            "escalation_sla", "escalation_first_outreach", "emergency_contact"}  # fmt: skip
    assert used <= names
    assert "deferred" in content["low_level1"].texts["en"]
