"""Shared pieces of the scheduler, paging and nudge tests.

- `Provider`: the SMS/voice provider's HTTP edge, faked by a real local HTTP server that records
  every request (the notifier's HTTP client, JSON and bearer token are the real ones).
- `Ward`: a member, a coaching team and the readings pipeline with the rule engine, on a fake
  clock, and a `Scheduler` on the same clock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import orjson
from pydantic import SecretStr

from alerting.content import Content, load_content
from alerting.engine import RuleEngine
from alerting.inbox import MessageTransport
from alerting.notifier import HttpsNotifier
from alerting.scheduler import Scheduler, SchedulerSettings
from device_gateway.mqtt.topics import Topics
from services.pipeline import Incoming, ReadingPipeline
from tests.seed import seed_member

T0 = datetime(2026, 11, 3, 14, 0, tzinfo=UTC)  # a Tuesday, 08:00 in Chicago (CST)
TOKEN = "provider-test-token-0123456789"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Provider:
    """A local stand-in for the SMS/voice provider: records requests, answers `status`."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r["json"] for r in self.requests]

    def to(self, phone: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies() if b["to"] == phone]


@contextmanager
def provider_server() -> Iterator[Provider]:
    provider = Provider()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if provider.delay:
                time.sleep(provider.delay)
            with provider.lock:
                provider.requests.append({
                    "path": self.path, "headers": dict(self.headers), "json": json.loads(body),
                })  # fmt: skip
                n = len(provider.requests)
            answer = orjson.dumps({"id": f"msg-{n}"})
            self.send_response(provider.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    provider.url = f"http://127.0.0.1:{server.server_address[1]}/v1/notices"
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Ward:
    """Member m-1 (Chicago) of client acme, coached by c-ana (team north, with a phone); the
    team's supervisor c-sue; c-oli of team north on call; readings through the real pipeline."""

    def __init__(self, db: asyncpg.Pool, provider: Provider) -> None:
        self.db = db
        self.provider = provider
        self.clock = Clock(T0)
        self.pipeline = ReadingPipeline(db, sink=RuleEngine(db, clock=self.clock))
        self.content: Content = load_content()
        self.seq = 0

    async def setup(self, *, devices: dict[str, str] | None = None,
                    enrolled_from: str = "2026-01-01") -> None:  # fmt: skip
        await self.db.execute("TRUNCATE scheduler_jobs")
        await seed_member(self.db, devices=devices or {"gm-1": "glucose_meter"})
        await self.db.execute(
            """INSERT INTO coaches (id, name, role, team, phone) VALUES
               ('c-ana', 'Ana', 'coach', 'north', '+13125550101'),
               ('c-oli', 'Oli', 'coach', 'north', '+13125550102'),
               ('c-sue', 'Sue', 'supervisor', 'north', '+13125550103'),
               ('c-zed', 'Zed', 'supervisor', 'south', '+13125550104')"""
        )
        await self.db.execute(
            "UPDATE members SET coach_id = 'c-ana', emergency_contact = $1",
            json.dumps({"name": "Kim Poe", "phone": "+12125550199", "relationship": "spouse"}),
        )
        await self.db.execute(
            "INSERT INTO enrollments (member_id, program, start_date) "
            "VALUES ('m-1', 'diabetes', $1::text::date)",
            enrolled_from,
        )
        await self.db.execute("INSERT INTO care_plans (member_id) VALUES ('m-1')")

    async def policy(self, doc: dict[str, Any]) -> None:
        await self.db.execute("UPDATE clients SET alert_policy = $1", json.dumps(doc))

    async def on_call(self, coach: str, team: str, starts: datetime, ends: datetime) -> None:
        await self.db.execute(
            "INSERT INTO on_call (coach_id, team, starts_at, ends_at) VALUES ($1, $2, $3, $4)",
            coach, team, starts, ends,
        )  # fmt: skip

    async def glucose(self, value: float | None, *, at: datetime | None = None,
                      device: str = "gm-1", **fields: Any) -> None:  # fmt: skip
        self.seq += 1
        doc: dict[str, Any] = {"device_id": device, "seq": self.seq, "kind": "glucose",
                               "unit": "mg/dL", "measured_at": (at or self.clock.now).isoformat(),
                               **fields}  # fmt: skip
        if value is not None:
            doc["value"] = value
        result = await self.pipeline.process([Incoming(orjson.dumps(doc), self.clock.now, "file")])
        assert result.outcomes[0].status == "accepted", result.outcomes

    def scheduler(self, *, pool: asyncpg.Pool | None = None, instance: str = "s1",
                  transport: MessageTransport | None = None,
                  settings: SchedulerSettings | None = None) -> Scheduler:  # fmt: skip
        return Scheduler(
            pool or self.db,
            notifier=HttpsNotifier(self.provider.url, SecretStr(TOKEN), timeout=5),
            content=self.content, transport=transport, topics=Topics(), clock=self.clock,
            settings=settings or SchedulerSettings(), instance=instance,
        )  # fmt: skip

    def later(self, **delta: float) -> None:
        self.clock.now += timedelta(**delta)

    async def events(self, kind: str | None = None) -> list[asyncpg.Record]:
        if kind is None:
            return list(await self.db.fetch("SELECT * FROM alert_events ORDER BY id"))
        return list(await self.db.fetch(
            "SELECT * FROM alert_events WHERE kind = $1 ORDER BY id", kind
        ))  # fmt: skip

    async def alert_id(self, rule: str = "hypoglycemia") -> int:
        found: int = await self.db.fetchval("SELECT id FROM alerts WHERE rule = $1", rule)
        return found
