"""The member's messages: delivery to their devices over MQTT, and the app's inbox.

Delivery: every message whose `deliver_after` has come is published, QoS 1, on the `messages`
topic of each device the member holds (device_gateway/mqtt/topics.py), as JSON

    {"id": 12, "kind": "low_treatment", "body": "...", "language": "en",
     "created_at": "2026-11-03T14:00:00+00:00"}

and marked `delivered_mqtt_at` once the broker acknowledged every copy. Delivery is at least
once: a process that dies between the broker's PUBACK and the commit publishes again, so devices
and the app deduplicate by `id`. A member without a device keeps the message in the app inbox.
A broker outage leaves messages pending; the transport backs off (jittered, capped) and the next
tick retries. The publisher uses the gateway's broker identity (VIGIL_MQTT_URL), whose ACL
already writes every device's `messages` topic (device_gateway/broker.py).

Inbox: `inbox(pool, member_id, limit)` lists the member's messages newest first, only those
whose time has come (a message held back by quiet hours appears when it is delivered).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt
import asyncpg
import orjson

from alerting.errors import DeliveryUnavailable
from device_gateway.mqtt.topics import Topics
from services.errors import ConfigurationError
from services.storage.db import Connection

log = logging.getLogger(__name__)

_BATCH: Final = 500
_MAX_BACKOFF: Final = 300.0  # seconds


@dataclass(frozen=True, slots=True)
class MemberMessage:
    id: int
    kind: str
    template: str
    body: str
    language: str
    created_at: datetime
    deliver_after: datetime
    delivered_mqtt_at: datetime | None
    read_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        """The app's view (GET /v1/me/messages): `sent_at` is when it became visible."""
        return {
            "id": self.id, "kind": self.kind, "body": self.body, "language": self.language,
            "sent_at": self.deliver_after.isoformat(),
            "read_at": self.read_at.isoformat() if self.read_at else None,
        }  # fmt: skip


_COLS: Final = (
    "id, kind, template, body, language, created_at, deliver_after, delivered_mqtt_at, read_at"
)


async def inbox(
    pool: asyncpg.Pool | Connection, member_id: str, limit: int = 50,
    *, now: datetime | None = None,
) -> list[MemberMessage]:  # fmt: skip
    """The member's messages, newest first; held-back ones appear once their time has come."""
    rows = await pool.fetch(
        f"SELECT {_COLS} FROM member_messages WHERE member_id = $1 "
        "AND deliver_after <= coalesce($2, now()) "
        "ORDER BY deliver_after DESC, id DESC LIMIT $3",
        member_id, now, max(1, min(limit, 500)),
    )  # fmt: skip
    return [MemberMessage(**dict(r)) for r in rows]


async def mark_read(
    pool: asyncpg.Pool | Connection, member_id: str, message_id: int,
    *, now: datetime | None = None,
) -> bool:  # fmt: skip
    """Mark one of the member's own messages read (idempotent); False if it is not theirs."""
    found = await pool.fetchval(
        "UPDATE member_messages SET read_at = coalesce(read_at, coalesce($3, now())) "
        "WHERE id = $1 AND member_id = $2 AND deliver_after <= coalesce($3, now()) "
        "RETURNING id",
        message_id, member_id, now,
    )  # fmt: skip
    return found is not None


class MessageTransport(Protocol):
    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish every (topic, payload) with QoS 1; DeliveryUnavailable if it cannot."""


class MqttTransport:
    """One short MQTT v5 connection per delivery run (nudges are a few per member per day), with
    a jittered, capped exponential backoff after a failure so an absent broker costs nothing."""

    def __init__(self, url: str, *, client_id: str | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp"):
            raise ConfigurationError(f"unsupported broker URL scheme {parts.scheme!r}")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._tls = ssl.create_default_context() if parts.scheme == "mqtts" else None
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._client_id = client_id or f"vigil-scheduler-{uuid.uuid4().hex[:12]}"
        self._timeout = timeout
        self._failures = 0
        self._retry_at = 0.0

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if not messages:
            return
        if time.monotonic() < self._retry_at:
            raise DeliveryUnavailable("the broker was unreachable; waiting before a retry")
        client = aiomqtt.Client(
            self._host, self._port, username=self._username, password=self._password,
            identifier=self._client_id, protocol=aiomqtt.ProtocolVersion.V5,
            timeout=self._timeout, tls_context=self._tls,
        )  # fmt: skip
        try:
            async with asyncio.timeout(self._timeout * 2 + 0.05 * len(messages)):
                async with client:
                    for topic, payload in messages:
                        await client.publish(topic, payload, qos=1)  # returns after PUBACK
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            self._failures += 1
            delay = min(_MAX_BACKOFF, 2.0**self._failures) * random.uniform(0.5, 1.5)
            self._retry_at = time.monotonic() + delay
            raise DeliveryUnavailable(f"cannot publish member messages: {exc}") from exc
        self._failures = 0


async def deliver_due(
    conn: Connection, transport: MessageTransport, topics: Topics, now: datetime
) -> int:
    """Publish every due, undelivered message to its member's devices; returns how many."""
    async with conn.transaction():
        rows = await conn.fetch(
            """SELECT mm.id, mm.member_id, mm.kind, mm.body, mm.language, mm.created_at
               FROM member_messages mm
               WHERE mm.delivered_mqtt_at IS NULL AND mm.deliver_after <= $1
                 AND EXISTS (SELECT 1 FROM device_assignments da
                             JOIN devices d ON d.id = da.device_id AND d.status = 'active'
                             WHERE da.member_id = mm.member_id
                               AND tstzrange(da.assigned_from, da.assigned_to)
                                   @> $1::timestamptz)
               ORDER BY mm.id LIMIT $2 FOR UPDATE OF mm SKIP LOCKED""",
            now, _BATCH,
        )  # fmt: skip
        if not rows:
            return 0
        held = await conn.fetch(
            """SELECT da.member_id, da.device_id FROM device_assignments da
               JOIN devices d ON d.id = da.device_id AND d.status = 'active'
               WHERE da.member_id = ANY($1::text[])
                 AND tstzrange(da.assigned_from, da.assigned_to) @> $2::timestamptz
               ORDER BY da.device_id""",
            list({r["member_id"] for r in rows}), now,
        )  # fmt: skip
        devices: dict[str, list[str]] = {}
        for h in held:
            devices.setdefault(h["member_id"], []).append(h["device_id"])
        out = []
        for r in rows:
            payload = orjson.dumps({"id": r["id"], "kind": r["kind"], "body": r["body"],
                                    "language": r["language"],
                                    "created_at": r["created_at"].isoformat()})  # fmt: skip
            out += [(topics.device(d, "messages"), payload) for d in devices[r["member_id"]]]
        await transport.publish(out)
        await conn.execute(
            "UPDATE member_messages SET delivered_mqtt_at = $2 WHERE id = ANY($1::bigint[])",
            [r["id"] for r in rows], now,
        )  # fmt: skip
    return len(rows)
