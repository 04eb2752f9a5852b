"""Forwarding the bridge's queue to Vigil, as each device, and applying Vigil's acks.

A Bluetooth meter has no network of its own: the hub speaks the v1 device protocol on its
behalf (device_gateway/mqtt/topics.py), connecting to the broker with THAT device's credentials
(`vigil devices provision`), so the broker's ACL and the gateway see the meter itself and a
reading stays attributed to the device that took it.

- Readings go out as `{"readings": [...]}` on `{prefix}/devices/{id}/readings` at QoS 1, up to
  `batch` at a time, straight from the queue (store.py).
- Vigil answers on `{prefix}/devices/{id}/acks` after its database commit:
  `{"accepted": [seq...], "duplicate": [seq...], "rejected": [{"seq", "reason"}]}`. All three end
  the bridge's responsibility: the reading leaves the queue and the device's last acknowledged
  seq advances. A rejected reading is logged with its reason code (it is in Vigil's quarantine).
- Whatever stays unacked is sent again after `resend_after`, and everything queued is due again
  on each new broker session; the gateway turns resends into duplicates.
- The broker is reconnected with jittered, capped exponential backoff.

`Uplink` is the interface the bridge needs; the member app API (HTTPS) could implement it too.
Nothing here logs reading contents: device ids, seqs, counts and reason codes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import aiomqtt
import orjson
from pydantic import SecretStr

from device_gateway.mqtt.topics import DEFAULT_PREFIX, Topics
from services.errors import ConfigurationError

from .store import Ack, BridgeStore
from .transport import backoff_delays

log = logging.getLogger(__name__)

#: Readings per MQTT message: well under the gateway's 500 (device_gateway/mqtt/messages.py) and
#: its 256 KiB payload limit (a glucose reading is about 200 bytes).
DEFAULT_BATCH: Final = 100


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who the bridge speaks as: the Vigil device id (its MQTT username) and its password."""

    device_id: str
    password: SecretStr


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerEndpoint:
        """`mqtt://host[:1883]` or `mqtts://host[:8883]`. Credentials in the URL are ignored:
        the bridge connects as each device."""
        parts = urlsplit(url)
        schemes = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True),
                   "ssl": (8883, True)}  # fmt: skip
        if parts.scheme not in schemes or not parts.hostname:
            raise ConfigurationError(f"broker URL {url!r}: use mqtt://host:port or mqtts://")
        default_port, tls = schemes[parts.scheme]
        try:
            port = parts.port or default_port
        except ValueError:
            raise ConfigurationError(f"broker URL {url!r}: bad port") from None
        return cls(parts.hostname, port, tls)


def parse_ack(payload: bytes) -> Ack | None:
    """An ack message -> `Ack`, or None when it is not one (sans-IO)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None

    def seqs(key: str) -> tuple[int, ...] | None:
        value = doc.get(key, [])
        if not isinstance(value, list):
            return None
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
            return None
        return tuple(value)

    accepted, duplicate = seqs("accepted"), seqs("duplicate")
    raw_rejected = doc.get("rejected", [])
    if accepted is None or duplicate is None or not isinstance(raw_rejected, list):
        return None
    rejected: list[tuple[int | None, str]] = []
    for entry in raw_rejected:
        if not isinstance(entry, dict) or not isinstance(entry.get("reason"), str):
            return None
        seq = entry.get("seq")
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
            return None
        rejected.append((seq, entry["reason"]))
    return Ack(accepted, duplicate, tuple(rejected))


def readings_message(payloads: list[bytes]) -> bytes:
    """`{"readings": [...]}` from queued JSON payloads, without decoding them again."""
    return b'{"readings":[' + b",".join(payloads) + b"]}"


@dataclass(slots=True)
class DeliveryStats:
    published: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)


class Uplink(Protocol):
    """Delivers one device's queued readings to Vigil and applies its acks to the store."""

    async def run(
        self,
        device: DeviceIdentity,
        store: BridgeStore,
        stop: asyncio.Event,
        *,
        until_empty: bool = False,
    ) -> None:
        """Until `stop` is set or, with `until_empty`, until the device's queue is empty."""
        ...


class MqttUplink:
    """The device protocol over MQTT 5, one broker connection per device."""

    def __init__(
        self,
        broker: BrokerEndpoint,
        *,
        prefix: str = DEFAULT_PREFIX,
        resend_after: float = 30.0,
        batch: int = DEFAULT_BATCH,
        poll: float = 0.2,
        connect_timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
    ) -> None:
        if resend_after <= 0 or batch < 1:
            raise ValueError("resend_after must be positive and batch at least 1")
        self._broker = broker
        self._topics = Topics(prefix)
        self._resend_after = resend_after
        self._batch = batch
        self._poll = poll
        self._connect_timeout = connect_timeout
        self._backoff = (backoff_base, backoff_cap)
        self.stats: dict[str, DeliveryStats] = {}

    def _client(self, device: DeviceIdentity) -> aiomqtt.Client:
        return aiomqtt.Client(
            self._broker.host,
            self._broker.port,
            username=device.device_id,
            password=device.password.get_secret_value(),
            identifier=f"vigil-ble-{device.device_id}",
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=self._connect_timeout,
            keepalive=30,
            tls_context=ssl.create_default_context() if self._broker.tls else None,
        )

    async def run(
        self,
        device: DeviceIdentity,
        store: BridgeStore,
        stop: asyncio.Event,
        *,
        until_empty: bool = False,
    ) -> None:
        stats = self.stats.setdefault(device.device_id, DeliveryStats())
        delays = backoff_delays(*self._backoff)
        while not stop.is_set():
            if until_empty and store.pending(device.device_id) == 0:
                return
            try:
                await self._session(device, store, stop, stats, until_empty=until_empty)
                delays = backoff_delays(*self._backoff)
            except aiomqtt.MqttError as exc:
                delay = next(delays)
                log.warning(
                    "%s: broker %s:%d: %s; %d readings kept in the queue, retrying in %.1f s",
                    device.device_id, self._broker.host, self._broker.port, exc,
                    store.pending(device.device_id), delay,
                )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()

    async def _session(
        self,
        device: DeviceIdentity,
        store: BridgeStore,
        stop: asyncio.Event,
        stats: DeliveryStats,
        *,
        until_empty: bool,
    ) -> None:
        device_id = device.device_id
        readings_topic = self._topics.device(device_id, "readings")
        async with self._client(device) as client:
            await client.subscribe(self._topics.device(device_id, "acks"), qos=1)
            store.mark_all_unsent(device_id)
            wake = asyncio.Event()
            reader = asyncio.create_task(
                self._read_acks(client, device_id, store, stats, wake), name=f"acks-{device_id}"
            )
            try:
                while not stop.is_set():
                    if reader.done():
                        reader.result()  # re-raises the broker error that ended it
                        raise aiomqtt.MqttError("the ack subscription ended")
                    due = store.due(device_id, resend_after=self._resend_after, limit=self._batch)
                    if due:
                        await client.publish(
                            readings_topic, readings_message([p for _, p in due]), qos=1,
                            timeout=self._connect_timeout,
                        )  # fmt: skip
                        store.mark_sent(device_id, [s for s, _ in due])
                        stats.published += len(due)
                        continue
                    if until_empty and store.pending(device_id) == 0:
                        return
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._poll):
                            await wake.wait()
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await reader

    async def _read_acks(
        self,
        client: aiomqtt.Client,
        device_id: str,
        store: BridgeStore,
        stats: DeliveryStats,
        wake: asyncio.Event,
    ) -> None:
        async for message in client.messages:
            payload: Any = message.payload
            ack = parse_ack(payload) if isinstance(payload, bytes) else None
            if ack is None:
                log.warning("%s: ignored an ack message that does not parse", device_id)
                continue
            result = store.acknowledge(device_id, ack)
            cleared = set(result.cleared)
            stats.accepted += sum(1 for s in ack.accepted if s in cleared)
            stats.duplicate += sum(1 for s in ack.duplicate if s in cleared)
            for seq, reason in result.rejected:
                stats.rejected += 1
                stats.rejected_reasons[reason] = stats.rejected_reasons.get(reason, 0) + 1
                log.warning(
                    "%s: Vigil rejected seq %d: %s (kept in Vigil's quarantine)",
                    device_id, seq, reason,
                )  # fmt: skip
            for seq_or_none, reason in ack.rejected:
                if seq_or_none is None:
                    log.warning("%s: Vigil rejected a message without a seq: %s", device_id, reason)
            wake.set()
