"""A virtual cellular meter: publishes readings over MQTT exactly as a real one would.

It keeps a store-and-forward buffer of every reading until Vigil acks its seq (accepted,
duplicate or rejected: all three end the device's responsibility), resends what stays unacked
after a timeout, and can go offline and burst its backlog later. It reaches Vigil only over the
wire (MQTT); it imports nothing of Vigil.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

log = logging.getLogger(__name__)


@dataclass
class MeterStats:
    published: int = 0
    resent: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0


@dataclass
class VirtualMeter:
    device_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    prefix: str = "vigil/v1"
    resend_after: float = 5.0
    batch: int = 1  # readings per message: 1, or a {"readings": [...]} backlog chunk
    stats: MeterStats = field(default_factory=MeterStats)
    # seq -> (reading, last sent at); a reading leaves only when Vigil acks it.
    _unacked: dict[int, tuple[dict[str, Any], float]] = field(default_factory=dict)
    _queue: list[dict[str, Any]] = field(default_factory=list)
    acked: dict[int, str] = field(default_factory=dict)
    online: bool = True

    @property
    def topic(self) -> str:
        return f"{self.prefix}/devices/{self.device_id}"

    def record(self, readings: Iterable[dict[str, Any]]) -> None:
        """New measurements, in the order the meter took them."""
        self._queue.extend(readings)

    @property
    def backlog(self) -> int:
        return len(self._queue) + len(self._unacked)

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
        except ValueError:
            return
        for key in ("accepted", "duplicate"):
            for seq in ack.get(key, []):
                if self._unacked.pop(seq, None) is not None or seq not in self.acked:
                    setattr(self.stats, key, getattr(self.stats, key) + 1)
                self.acked[seq] = key
        for entry in ack.get("rejected", []):
            seq = entry.get("seq")
            if seq is not None:
                self._unacked.pop(seq, None)
                self.acked[seq] = "rejected:" + str(entry.get("reason"))
                self.stats.rejected += 1

    async def run(self, stop: asyncio.Event, *, connect_timeout: float = 10) -> None:
        """Connect, publish the queue, resend what is unacked, until `stop` (reconnecting)."""
        while not stop.is_set():
            if not self.online:
                await asyncio.sleep(0.05)
                continue
            try:
                await self._session(stop, connect_timeout)
            except aiomqtt.MqttError as exc:
                log.debug("%s: connection lost: %s", self.device_id, exc)
                await asyncio.sleep(0.2)

    async def _session(self, stop: asyncio.Event, connect_timeout: float) -> None:
        will = aiomqtt.Will(f"{self.topic}/status", b'{"online": false}', qos=1)
        async with aiomqtt.Client(
            self.host, self.port, username=self.username, password=self.password,
            identifier=f"dev-{self.device_id}", protocol=aiomqtt.ProtocolVersion.V5,
            timeout=connect_timeout, will=will, keepalive=30,
        ) as client:  # fmt: skip
            await client.subscribe(f"{self.topic}/acks", qos=1)
            await client.publish(f"{self.topic}/status", b'{"online": true, "battery": 87}', qos=1)
            listener = asyncio.create_task(self._listen(client))
            try:
                while not stop.is_set() and self.online:
                    await self._send_due(client)
                    await asyncio.sleep(0.05)
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if isinstance(message.payload, bytes):
                self._on_ack(message.payload)

    async def _send_due(self, client: aiomqtt.Client) -> None:
        now = time.monotonic()
        due = [r for r, sent in self._unacked.values() if now - sent >= self.resend_after]
        fresh, self._queue = self._queue, []
        self.stats.resent += len(due)
        self.stats.published += len(fresh)
        outgoing = due + fresh
        for i in range(0, len(outgoing), self.batch):
            chunk = outgoing[i : i + self.batch]
            payload = chunk[0] if self.batch == 1 else {"readings": chunk}
            for r in chunk:
                self._unacked[r["seq"]] = (r, time.monotonic())
            await client.publish(f"{self.topic}/readings", json.dumps(payload), qos=1)

    async def wait_acked(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while self.backlog and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a count
            await asyncio.sleep(0.05)
        return not self.backlog
