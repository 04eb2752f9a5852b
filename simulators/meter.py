"""A virtual cellular meter: publishes readings over MQTT exactly as a real one would.

It keeps a store-and-forward buffer of every reading until Vigil acks its seq (accepted,
duplicate or rejected: all three end the device's responsibility), resends what stays unacked
after a timeout, and can misbehave the way field devices do:

- `go_offline()` / `go_online()`: lose connectivity (a carrier outage, a dead zone) and, when
  back, flush the backlog as `{"readings": [...]}` chunks of `burst_batch`;
- `duplicate_rate`: the network delivers a message twice (QoS 1 gives at-least-once);
- its own `clock`: `drift_clock(ppm)` and `reset_clock(at)` (back to 2000-01-01, as after a
  battery change) change the `measured_at` it stamps in `measure()`;
- per-device credentials (`username`, `password`) for a broker that authenticates devices.

It reaches Vigil only over the wire (MQTT); it imports nothing of Vigil. The topics are those of
the v1 device protocol (`{prefix}/devices/{id}/readings|acks|status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import aiomqtt

from simulators.devices import DeviceClock

log = logging.getLogger(__name__)

#: Reconnect backoff: jittered, doubling from the first delay up to the cap (seconds).
_BACKOFF_FIRST = 0.2
_BACKOFF_CAP = 10.0
_POLL = 0.05  # seconds between checks while offline
_IDLE = 0.25  # longest wait for new readings while connected (how soon `stop` is noticed)
#: A reading still unacked is resent after resend_after, then 2x, 4x that (no retry storm when
#: the gateway is slow: every resend is more load on it).
_RESEND_BACKOFF_CAP = 4


@dataclass
class MeterStats:
    published: int = 0  # readings sent for the first time
    resent: int = 0  # readings sent again after `resend_after` without an ack
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    duplicated: int = 0  # readings the network delivered twice (duplicate_rate)
    messages: int = 0  # MQTT publishes on the readings topic
    bursts: int = 0  # {"readings": [...]} chunks sent while flushing after an outage
    connects: int = 0


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
    burst_batch: int = 100  # readings per chunk when flushing a backlog after an outage
    duplicate_rate: float = 0.0
    seed: int | str = 0  # for the duplicate draws and the backoff jitter
    clock: DeviceClock = field(default_factory=DeviceClock)
    stats: MeterStats = field(default_factory=MeterStats)
    # seq -> (reading, when next due for a resend, times sent); it leaves when Vigil acks it.
    _unacked: dict[int, tuple[dict[str, Any], float, int]] = field(default_factory=dict)
    _queue: list[dict[str, Any]] = field(default_factory=list)
    acked: dict[int, str] = field(default_factory=dict)
    online: bool = True
    next_seq: int = 1
    _flushing: bool = field(default=False, repr=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"meter:{self.seed}:{self.device_id}")

    @property
    def topic(self) -> str:
        return f"{self.prefix}/devices/{self.device_id}"

    def record(self, readings: Iterable[dict[str, Any]]) -> None:
        """New measurements, in the order the meter took them (already stamped)."""
        self._queue.extend(readings)
        self._wake.set()

    def measure(
        self, true_time: datetime, zone: tzinfo, kind: str, **fields: Any
    ) -> dict[str, Any]:
        """Take a measurement at `true_time`: the next seq, this meter's clock; recorded."""
        reading = {
            "device_id": self.device_id,
            "seq": self.next_seq,
            "kind": kind,
            "measured_at": self.clock.read(true_time, zone).isoformat(timespec="seconds"),
            **fields,
        }
        self.next_seq += 1
        self.record([reading])
        return reading

    def drift_clock(self, ppm: float) -> None:
        self.clock = self.clock.drifted(ppm)

    def reset_clock(self, at: datetime) -> None:
        """From `at` (true time) on, the clock counts from 2000-01-01 00:00 UTC."""
        self.clock = self.clock.reset(at)

    def go_offline(self) -> None:
        """Lose connectivity: readings pile up until `go_online()`, then leave in chunks."""
        self.online = False
        self._flushing = True
        self._wake.set()  # a connected session notices at once and disconnects

    def go_online(self) -> None:
        self.online = True

    @property
    def backlog(self) -> int:
        return len(self._queue) + len(self._unacked)

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
        except ValueError:
            return
        if not isinstance(ack, dict):
            return
        for key in ("accepted", "duplicate"):
            for seq in ack.get(key, []):
                if self._unacked.pop(seq, None) is not None or seq not in self.acked:
                    setattr(self.stats, key, getattr(self.stats, key) + 1)
                self.acked.setdefault(seq, key)  # the first verdict stands (a resend's is later)
        for entry in ack.get("rejected", []):
            seq = entry.get("seq") if isinstance(entry, dict) else None
            if seq is not None:
                self._unacked.pop(seq, None)
                self.acked.setdefault(seq, "rejected:" + str(entry.get("reason")))
                self.stats.rejected += 1

    async def run(self, stop: asyncio.Event, *, connect_timeout: float = 10) -> None:
        """Connect, publish the queue, resend what is unacked, until `stop` (reconnecting)."""
        delay = _BACKOFF_FIRST
        while not stop.is_set():
            if not self.online:
                self._flushing = True
                await asyncio.sleep(_POLL)
                continue
            try:
                await self._session(stop, connect_timeout)
                delay = _BACKOFF_FIRST
            except aiomqtt.MqttError as exc:
                log.debug("%s: connection lost: %s", self.device_id, exc)
                await asyncio.sleep(delay * self._rng.uniform(0.5, 1.5))
                delay = min(delay * 2, _BACKOFF_CAP)

    async def _session(self, stop: asyncio.Event, connect_timeout: float) -> None:
        will = aiomqtt.Will(f"{self.topic}/status", b'{"online": false}', qos=1)
        async with aiomqtt.Client(
            self.host, self.port, username=self.username, password=self.password,
            identifier=f"dev-{self.device_id}", protocol=aiomqtt.ProtocolVersion.V5,
            timeout=connect_timeout, will=will, keepalive=30,
        ) as client:  # fmt: skip
            self.stats.connects += 1
            await client.subscribe(f"{self.topic}/acks", qos=1)
            await client.publish(f"{self.topic}/status", b'{"online": true, "battery": 87}', qos=1)
            listener = asyncio.create_task(self._listen(client))
            try:
                while not stop.is_set() and self.online:
                    await self._send_due(client)
                    await self._idle()
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if isinstance(message.payload, bytes):
                self._on_ack(message.payload)

    async def _idle(self) -> None:
        """Sleep until a new reading, the next resend, or `_IDLE` (no busy polling: a fleet of
        thousands of meters shares one event loop)."""
        if self._queue or not self.online:
            return
        wait = _IDLE
        if self._unacked:
            due = min(due for _, due, _ in self._unacked.values())
            wait = min(wait, max(0.0, due - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    async def _send_due(self, client: aiomqtt.Client) -> None:
        self._wake.clear()  # before taking the queue: a reading recorded later sets it again
        now = time.monotonic()
        due = [r for r, at, _ in self._unacked.values() if at <= now]
        fresh, self._queue = self._queue, []
        self.stats.resent += len(due)
        self.stats.published += len(fresh)
        outgoing = due + fresh
        size = self.batch
        flushing, self._flushing = self._flushing, False
        if flushing:  # back from an outage: the backlog goes in chunks
            size = max(self.batch, self.burst_batch)
        for i in range(0, len(outgoing), size):
            chunk = outgoing[i : i + size]
            payload = json.dumps(chunk[0] if size == 1 else {"readings": chunk})
            sent_at = time.monotonic()
            for r in chunk:
                previous = self._unacked.get(r["seq"])
                sends = 1 if previous is None else previous[2] + 1
                backoff = min(2 ** (sends - 1), _RESEND_BACKOFF_CAP)
                self._unacked[r["seq"]] = (r, sent_at + self.resend_after * backoff, sends)
            copies = 2 if self.duplicate_rate and self._rng.random() < self.duplicate_rate else 1
            for _ in range(copies):
                await client.publish(f"{self.topic}/readings", payload, qos=1)
            self.stats.messages += copies
            self.stats.duplicated += len(chunk) * (copies - 1)
            if flushing and size > 1:
                self.stats.bursts += 1

    async def wait_acked(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while self.backlog and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a count
            await asyncio.sleep(_POLL)
        return not self.backlog
