"""The MQTT load generator of the gateway benchmarks, and the acks counter.

A fleet of glucose meters publishing QoS 1 readings, fast enough that it never limits what it
measures:
- P OS processes (`python -m bench.loadgen`), each with C TCP connections to the broker; each
  connection publishes for its own share of the devices, on each device's own topic, every
  device's readings in sequence order, devices interleaved.
- A minimal MQTT 3.1.1 publisher over plain non-blocking sockets (no paho): every PUBLISH packet
  is encoded before the start signal, so publishing is writing pre-built bytes. QoS 1 for real:
  at most `window` unacknowledged packets per connection, and a process is done only when the
  broker has PUBACKed every packet. (Not `mosquitto_pub -l`, which loses QoS 1 messages when its
  stdin closes.)
- Each process prints `ready` once connected and encoded, publishes on a `go` line on stdin and
  prints one JSON line: messages, readings, and when its first packet went out and its last
  PUBACK came back (time.monotonic(), CLOCK_MONOTONIC: comparable across processes).

`AckCounter` is one asyncio MQTT subscriber on `{prefix}/devices/+/acks` that counts the distinct
(device, seq) pairs the gateway acked.

This module imports nothing of Vigil: it reaches it only over the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import selectors
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, cast

import orjson

#: Device times start here: far enough in the past for the clock rule (no "future" readings).
START: Final = datetime(2025, 1, 1, tzinfo=UTC)
PREFIX: Final = "vigil/v1"
Mode = Literal["single", "batch"]


# --- the fleet's readings (deterministic: the benches rebuild them for their baselines) ---------


def device_id(d: int) -> str:
    return f"gm-{d:05d}"


def member_id(d: int) -> str:
    return f"m-{d:05d}"


def reading(d: int, seq: int) -> dict[str, Any]:
    """Reading `seq` (1-based) of device number `d`, as the meter sends it (no device_id: the
    topic names the device)."""
    t = START + timedelta(minutes=37 * seq, seconds=d % 3600)
    return {
        "seq": seq,
        "kind": "glucose",
        "unit": "mg/dL",
        "value": 80 + (seq * 13 + d) % 150,  # in range: no alert fires (an alert storm is
        # the rule engine's benchmark, not the gateway's)
        "meal": "fasting" if seq % 3 == 0 else "after_meal",
        "measured_at": t.isoformat(),
    }


def messages_for(d: int, per_device: int, mode: Mode, batch: int) -> Iterator[bytes]:
    """Device `d`'s payloads, in order: one reading each, or {"readings": [batch readings]}."""
    if mode == "single":
        for s in range(1, per_device + 1):
            yield orjson.dumps(reading(d, s))
    else:
        for lo in range(1, per_device + 1, batch):
            hi = min(lo + batch, per_device + 1)
            yield orjson.dumps({"readings": [reading(d, s) for s in range(lo, hi)]})


# --- MQTT 3.1.1 wire format (just what a QoS 1 publisher and a QoS 0 subscriber need) -----------


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


def connect_packet(client_id: str, keepalive: int = 0) -> bytes:
    body = _string(b"MQTT") + bytes([4, 0x02]) + keepalive.to_bytes(2, "big")
    body += _string(client_id.encode())
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    """PUBLISH, QoS 1, not retained."""
    body = _string(topic) + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + _remaining_length(len(body)) + body


def subscribe_packet(topic: str, qos: int, packet_id: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + _string(topic.encode()) + bytes([qos])
    return b"\x82" + _remaining_length(len(body)) + body


def _read_packet(buf: bytes | bytearray, pos: int) -> tuple[int, int, int] | None:
    """(first byte, start of the body, end of the packet) of the packet at `pos`, or None if
    `buf` does not hold all of it yet."""
    if len(buf) < pos + 2:
        return None
    first = buf[pos]
    length = shift = 0
    i = pos + 1
    while True:
        if i >= len(buf):
            return None
        b = buf[i]
        length |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            break
        shift += 7
    if len(buf) < i + length:
        return None
    return first, i, i + length


def _connect_socket(host: str, port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id))
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        if not chunk:
            raise ConnectionError(f"{client_id}: the broker closed the connection")
        connack += chunk
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"{client_id}: CONNACK refused ({connack.hex()})")
    sock.setblocking(False)
    return sock


# --- the publisher process ----------------------------------------------------------------------


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    packets: list[bytes]
    window: int
    sent: int = 0  # packets handed to the socket
    acked: int = 0
    out: bytes = b""
    inbuf: bytes = b""

    def fill(self) -> None:
        if self.out or self.sent >= len(self.packets):
            return
        room = self.window - (self.sent - self.acked)
        if room > 0:
            end = min(self.sent + room, len(self.packets))
            self.out = b"".join(self.packets[self.sent : end])
            self.sent = end

    def write(self) -> None:
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            return
        self.out = self.out[n:]

    def read(self) -> None:
        try:
            data = self.sock.recv(1 << 18)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError("the broker closed a publisher connection")
        buf = self.inbuf + data
        usable = len(buf) - len(buf) % 4
        # A publisher that only publishes hears only PUBACKs: 0x40 0x02 id id.
        if buf[0:usable:4] != b"\x40" * (usable // 4):
            raise ConnectionError(f"unexpected packet from the broker: {buf[:8].hex()}")
        self.acked += usable // 4
        self.inbuf = buf[usable:]

    @property
    def done(self) -> bool:
        return self.acked >= len(self.packets)


def publish_all(conns: list[_Conn]) -> tuple[float, float]:
    """Publish every connection's packets, QoS 1; returns (first send, last PUBACK) times."""
    sel = selectors.DefaultSelector()
    events: dict[int, int] = {}
    conns = [c for c in conns if c.packets]
    for c in conns:
        c.fill()
        events[c.sock.fileno()] = selectors.EVENT_READ | selectors.EVENT_WRITE
        sel.register(c.sock, events[c.sock.fileno()], c)
    start = time.monotonic()
    active = len(conns)
    while active:
        for key, mask in sel.select(timeout=30):
            c = key.data
            if mask & selectors.EVENT_READ:
                c.read()
                if c.done:
                    sel.unregister(c.sock)
                    active -= 1
                    continue
            c.fill()
            if c.out:
                c.write()
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
            if events[c.sock.fileno()] != want:
                events[c.sock.fileno()] = want
                sel.modify(c.sock, want, c)
    end = time.monotonic()
    sel.close()
    return start, end


def _plan(process: int, processes: int, devices: int, connections: int) -> list[list[int]]:
    """This process's devices (every `processes`-th), dealt out to its connections."""
    mine = list(range(process, devices, processes))
    n = max(1, min(connections, len(mine)))
    return [mine[c::n] for c in range(n)]


def _packets(devs: list[int], per_device: int, mode: Mode, batch: int, prefix: str) -> list[bytes]:
    streams = [
        (f"{prefix}/devices/{device_id(d)}/readings".encode(), messages_for(d, per_device, mode,
                                                                             batch))
        for d in devs
    ]  # fmt: skip
    packets: list[bytes] = []
    while streams:
        alive = []
        for topic, it in streams:  # devices interleave, each in sequence order
            payload = next(it, None)
            if payload is not None:
                packets.append(publish_packet(topic, payload, len(packets) % 65535 + 1))
                alive.append((topic, it))
        streams = alive
    return packets


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--process", type=int, default=0, help="this process's number, from 0")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--per-device", type=int, required=True, help="readings per device")
    p.add_argument("--mode", choices=("single", "batch"), default="single")
    p.add_argument("--batch", type=int, default=50, help="readings per message (batch mode)")
    p.add_argument("--connections", type=int, default=50, help="connections in this process")
    p.add_argument("--window", type=int, default=500, help="unacked packets per connection")
    p.add_argument("--prefix", default=PREFIX)
    p.add_argument("--client-prefix", default="loadgen")
    a = p.parse_args(argv)
    if not 0 < a.window < 65535:
        p.error("--window must be between 1 and 65534 (MQTT packet ids)")
    plan = _plan(a.process, a.processes, a.devices, a.connections)
    mode: Mode = a.mode
    conns = []
    for k, devs in enumerate(plan):
        packets = _packets(devs, a.per_device, mode, a.batch, a.prefix)
        sock = _connect_socket(a.host, a.port, f"{a.client_prefix}-{a.process}-{k}")
        conns.append(_Conn(sock, packets, a.window))
    messages = sum(len(c.packets) for c in conns)
    readings = sum(len(devs) for devs in plan) * a.per_device
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    start, end = publish_all(conns)
    for c in conns:
        with contextlib.suppress(OSError):
            c.sock.sendall(b"\xe0\x00")  # DISCONNECT
        c.sock.close()
    print(orjson.dumps({"messages": messages, "readings": readings, "start": start, "end": end})
          .decode(), flush=True)  # fmt: skip


# --- driving the publisher processes from a bench -----------------------------------------------

_REPO: Final = str(Path(__file__).resolve().parent.parent)


def _stdout(proc: asyncio.subprocess.Process) -> asyncio.StreamReader:
    if proc.stdout is None:
        raise RuntimeError("load generator without stdout")
    return proc.stdout


@dataclass(slots=True)
class LoadResult:
    messages: int
    readings: int
    start: float  # time.monotonic() of the first publish, over all processes
    end: float  # time.monotonic() of the last PUBACK, over all processes

    @property
    def rate(self) -> float:
        return self.readings / (self.end - self.start)


@dataclass(slots=True)
class LoadGenerator:
    """P publisher processes over one fleet: `await start()`, then `go()`, then `await wait()`."""

    port: int
    devices: int
    per_device: int
    mode: Mode = "single"
    batch: int = 50
    processes: int = 2
    connections: int = 50  # per process
    window: int = 500
    host: str = "127.0.0.1"
    prefix: str = PREFIX
    client_prefix: str = "loadgen"
    _procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(self) -> None:
        for k in range(self.processes):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.loadgen", "--host", self.host,
                "--port", str(self.port), "--process", str(k),
                "--processes", str(self.processes), "--devices", str(self.devices),
                "--per-device", str(self.per_device), "--mode", self.mode,
                "--batch", str(self.batch), "--connections", str(self.connections),
                "--window", str(self.window), "--prefix", self.prefix,
                "--client-prefix", self.client_prefix, cwd=_REPO,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            self._procs.append(proc)
        for proc in self._procs:
            line = await asyncio.wait_for(_stdout(proc).readline(), 300)
            if line.strip() != b"ready":
                await self.kill()
                raise RuntimeError(f"load generator did not start: {line!r}")

    def go(self) -> float:
        t0 = time.monotonic()
        for proc in self._procs:
            if proc.stdin is None:
                raise RuntimeError("load generator without stdin")
            proc.stdin.write(b"go\n")
        return t0

    async def wait(self, limit: float = 600) -> LoadResult:
        """Every process's result (waits at most `limit` seconds for each)."""
        results = []
        for proc in self._procs:
            line = await asyncio.wait_for(_stdout(proc).readline(), limit)
            if await proc.wait() != 0 or not line.strip():
                raise RuntimeError(f"load generator failed (exit {proc.returncode})")
            results.append(orjson.loads(line))
        self._procs.clear()
        return LoadResult(
            messages=sum(r["messages"] for r in results),
            readings=sum(r["readings"] for r in results),
            start=min(r["start"] for r in results),
            end=max(r["end"] for r in results),
        )

    async def kill(self) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        self._procs.clear()


# --- counting the gateway's acks ----------------------------------------------------------------


class AckCounter(asyncio.Protocol):
    """Subscribes to every device's acks (QoS 0, as the gateway publishes them) and counts the
    distinct (device, seq) pairs acked as accepted or duplicate, and the rejected ones."""

    def __init__(self, expected: int, prefix: str = PREFIX) -> None:
        self.expected = expected
        self.topic = f"{prefix}/devices/+/acks"
        self.acked: set[tuple[bytes, int]] = set()
        self.rejected = 0
        self.last_ack_at = 0.0
        self.all_acked = asyncio.Event()
        self.lost = False
        self._finished = asyncio.Event()  # all acked, or the connection lost
        self._subscribed = asyncio.Event()
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def open(cls, host: str, port: int, expected: int, prefix: str = PREFIX) -> AckCounter:
        loop = asyncio.get_running_loop()
        counter = cls(expected, prefix)
        transport, _ = await loop.create_connection(lambda: counter, host, port)
        counter._transport = transport  # uvloop may call connection_made only later
        transport.write(connect_packet(f"bench-acks-{id(counter):x}"))
        transport.write(subscribe_packet(counter.topic, 0))
        await asyncio.wait_for(counter._subscribed.wait(), 30)
        return counter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._finished.set()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while (packet := _read_packet(buf, pos)) is not None:
            first, body, end = packet
            kind = first >> 4
            if kind == 3:  # PUBLISH, QoS 0
                tlen = int.from_bytes(buf[body : body + 2], "big")
                topic = bytes(buf[body + 2 : body + 2 + tlen])
                self._count(topic.split(b"/")[-2], bytes(buf[body + 2 + tlen : end]))
            elif kind == 9:  # SUBACK
                self._subscribed.set()
            pos = end
        del buf[:pos]

    def _count(self, device: bytes, payload: bytes) -> None:
        ack = orjson.loads(payload)
        self.acked.update((device, s) for s in ack["accepted"])
        self.acked.update((device, s) for s in ack["duplicate"])
        self.rejected += len(ack["rejected"])
        self.last_ack_at = time.monotonic()
        if len(self.acked) + self.rejected >= self.expected:
            self.all_acked.set()
            self._finished.set()

    async def wait(self, limit: float) -> float:
        """Until every expected reading was acked (at most `limit` seconds); returns when the
        last ack arrived."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._finished.wait(), limit)
        if not self.all_acked.is_set():
            raise RuntimeError(
                f"{len(self.acked)} accepted/duplicate and {self.rejected} rejected acks of "
                f"{self.expected} readings after {limit:g} s"
                + (" (the acks connection was lost)" if self.lost else "")
            )
        return self.last_ack_at

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


if __name__ == "__main__":
    main()
