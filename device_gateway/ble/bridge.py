"""The BLE bridge: a hub that downloads readings from Bluetooth meters and relays them to Vigil.

Per sync of one device (`Bridge.sync`):
- Glucose meter (0x1808): subscribe to Glucose Measurement 0x2A18, Context 0x2A34 and the RACP
  0x2A52 BEFORE writing the RACP (GLS v1.0.1: a meter answers into the void otherwise), then
  write "report stored records, seq >= last acknowledged + 1" (all records the first time) with
  response, and read notifications until the RACP's response indication, each awaited with an
  idle timeout (a transfer of hundreds of records takes as long as it takes, silence does not).
  Measurements and contexts are paired by seq (GlucoseRecordMatcher).
- Blood pressure monitor (0x1810) and scale (0x181D): subscribe to the measurement (0x2A35,
  0x2A9D) and take the indications the device sends (its stored measurements, then the live one)
  until it goes quiet for `settle` seconds or hangs up, as cuffs and scales do when done.
- A link that drops mid-download is reconnected (jittered, capped exponential backoff); the
  next RACP asks again from the last acknowledged seq + 1. Records already queued are not
  queued twice (the queue's key is the device and seq), so a drop never duplicates a reading.
- Every reading is committed to the local queue (store.py) as soon as it is whole, in batches;
  the uplink (forward.py) delivers the queue as the device and clears it on Vigil's acks.

Never invent a value:
- A frame that does not decode is logged (characteristic, error class and field: no reading
  content) and skipped. So is a measurement that cannot become a reading (unknown device time).
- An IEEE 11073 special value (NaN, NRes, +/-INF, reserved) is sent as its name and Vigil
  quarantines it as `special_value` (to_reading.py).
- Device times are sent as the device gave them, in the configured zone: Vigil's clock rule
  (docs/architecture.md) corrects an implausible one (a meter reset to 2000) and flags the
  reading `clock_corrected`; the bridge never does.
- Repeated indications (the same bytes twice in one session) are dropped.

Sequence numbers of blood pressure and weight readings (their frames carry none): the device's
time stamp, as the wall-clock digits YYYYMMDDhhmmss, times 1000, plus the user id (255 when the
frame has none): 2026-11-21 07:30:00 for user 1 is seq 20261121073000001. A stored measurement
that a cuff sends again at the next connection therefore maps to the same seq and Vigil records
a duplicate, not a second reading; two users of a shared cuff never collide; and seq order is
time order, which Vigil's clock rule relies on. A frame without a time stamp is a live
measurement (a cuff that stores measurements must stamp them): it gets the hub's receive time as
its measured_at and the same formula over that time, bumped past the last such seq issued
(persisted), so two within one second still differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from services.errors import ConfigurationError

from .blood_pressure import BloodPressureMeasurement, parse_blood_pressure_measurement
from .errors import GattDecodeError, ReadingMappingError
from .forward import DeviceIdentity, Uplink
from .glucose import (
    GlucoseRecord,
    GlucoseRecordMatcher,
    parse_glucose_context,
    parse_glucose_measurement,
)
from .racp import (
    RacpOpcode,
    RacpRecordCount,
    RacpResponseCode,
    decode_racp_response,
    encode_racp_abort,
    encode_racp_report_all,
    encode_racp_report_from,
)
from .store import BridgeStore
from .to_reading import blood_pressure_to_payload, glucose_to_payload, weight_to_payload
from .transport import (
    BLOOD_PRESSURE_MEASUREMENT_CHAR,
    BLOOD_PRESSURE_SERVICE,
    GLUCOSE_CONTEXT_CHAR,
    GLUCOSE_MEASUREMENT_CHAR,
    GLUCOSE_SERVICE,
    RACP_CHAR,
    VIGIL_SERVICES,
    WEIGHT_MEASUREMENT_CHAR,
    WEIGHT_SCALE_SERVICE,
    BleTransportError,
    BluetoothUnavailable,
    ConnectFailed,
    DeviceNotFound,
    DiscoveredDevice,
    GattOperationFailed,
    GattSession,
    GattTimeout,
    GattTransport,
    LinkLost,
    NotificationCallback,
    backoff_delays,
    connected,
    from_builtin,
)
from .weight import WeightMeasurement, parse_weight_measurement

log = logging.getLogger(__name__)

T = TypeVar("T")

DeviceKind = Literal["glucose_meter", "bp_monitor", "scale"]
#: Advertised service -> the Vigil device kind it serves.
SERVICE_KINDS: Final[dict[str, DeviceKind]] = {
    GLUCOSE_SERVICE: "glucose_meter",
    BLOOD_PRESSURE_SERVICE: "bp_monitor",
    WEIGHT_SCALE_SERVICE: "scale",
}
#: Glucose Measurement sequence numbers are u16 (GLS v1.0.1).
MAX_GLUCOSE_SEQ: Final = 0xFFFF
#: A BP / weight frame without a user id (or with 0xFF, "unknown user").
UNKNOWN_USER: Final = 255

# --- configuration ------------------------------------------------------------------------------


class BridgeDevice(BaseModel):
    """One meter the hub serves: its Bluetooth address and who it is in Vigil."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: As the scanner reports it: a MAC address on Linux and Windows, a UUID on macOS.
    address: str = Field(min_length=1, max_length=64)
    #: The Vigil device id, which is also its MQTT username (docs/devices.md).
    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    #: The device's MQTT password from `vigil devices provision`.
    password: SecretStr
    #: Taken from the advertised service when omitted.
    kind: DeviceKind | None = None
    #: On a cuff or scale shared by a household: only this user's measurements are the member's.
    user_id: int | None = Field(default=None, ge=0, le=254)

    @field_validator("address")
    @classmethod
    def _normalize_address(cls, value: str) -> str:
        return value.strip().upper()

    @property
    def identity(self) -> DeviceIdentity:
        return DeviceIdentity(self.device_id, self.password)


class BridgeConfig(BaseModel):
    """The hub's configuration file (YAML or JSON), see docs/ble.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: IANA zone the meters' clocks are set to (normally the member's): GATT times carry none.
    timezone: str
    #: mqtt://host:port or mqtts://host:port; default VIGIL_MQTT_URL's host and port.
    broker: str | None = None
    devices: tuple[BridgeDevice, ...] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @field_validator("devices")
    @classmethod
    def _unique(cls, value: tuple[BridgeDevice, ...]) -> tuple[BridgeDevice, ...]:
        for attr in ("address", "device_id"):
            seen = [getattr(d, attr) for d in value]
            dupes = sorted({v for v in seen if seen.count(v) > 1})
            if dupes:
                raise ValueError(f"{attr} listed twice: {', '.join(dupes)}")
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def device_at(self, address: str) -> BridgeDevice | None:
        wanted = address.strip().upper()
        return next((d for d in self.devices if d.address == wanted), None)

    @classmethod
    def load(cls, path: Path) -> BridgeConfig:
        """Read and validate; problems are a ConfigurationError naming the field (never echoing
        a password)."""
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"{path}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{path}: not YAML or JSON: {exc}") from None
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigurationError(f"{path}: {problems}") from None


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BridgeTiming:
    scan_timeout: float = 10.0
    #: The `bridge` command scans this often.
    scan_interval: float = 30.0
    #: A device synced successfully less than this long ago is not synced again when seen.
    resync_after: float = 300.0
    #: Longest silence between two notifications of an RACP transfer.
    idle_timeout: float = 10.0
    #: A cuff or scale silent this long has sent everything it had.
    settle: float = 5.0
    #: Connections per sync: a link dropped mid-download is reconnected and resumed.
    attempts: int = 4
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    #: Readings per queue transaction during a download.
    flush_every: int = 50


@dataclass(slots=True)
class SyncReport:
    """What one sync of one device did; nothing in it is reading content."""

    device_id: str
    address: str
    kind: DeviceKind
    attempts: int = 0
    #: The RACP ">= n" of the last attempt; None: "all records" (or not a glucose meter).
    requested_from: int | None = None
    #: How the last RACP procedure ended: "success", "no_records_found" or None.
    racp: str | None = None
    #: Whole readings received (before the queue's de-duplication).
    received: int = 0
    #: New in the local queue.
    queued: int = 0
    #: Received again while still queued (a resumed download, a resent stored measurement).
    already_queued: int = 0
    #: Repeated indications dropped.
    duplicates: int = 0
    #: Frames or measurements that could not become a reading (logged).
    skipped: int = 0
    #: Measurements of another user of a shared cuff or scale.
    other_users: int = 0
    unmatched_contexts: int = 0
    error: BleTransportError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        asked = ""
        if self.kind == "glucose_meter":
            asked = (
                " (all records)"
                if self.requested_from is None
                else f" (seq >= {self.requested_from})"
            )
        text = (
            f"{self.device_id} {self.kind} {self.address}: {self.queued} new readings{asked}, "
            f"{self.already_queued} already queued, {self.duplicates} repeated indications, "
            f"{self.skipped} skipped, {self.attempts} connection(s)"
        )
        if self.other_users:
            text += f", {self.other_users} of other users"
        if self.error is not None:
            text += f"; FAILED: {self.error}"
        return text


# --- one connection ----------------------------------------------------------------------------


class _Inbox:
    """Notifications in arrival order, and the link going down, for the coroutine awaiting them.
    Transports call the callbacks on the event loop."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()

    def callback(self, characteristic: str) -> NotificationCallback:
        def receive(data: bytes) -> None:
            self._queue.put_nowait((characteristic, bytes(data)))

        return receive

    def link_down(self) -> None:
        self._queue.put_nowait(None)

    async def next(self, within: float) -> tuple[str, bytes]:
        try:
            async with asyncio.timeout(within):
                item = await self._queue.get()
        except TimeoutError:
            raise GattTimeout(self._address, f"nothing received for {within:g} s") from None
        if item is None:
            raise LinkLost(self._address, "during the transfer")
        return item


@dataclass(slots=True)
class _Collector:
    """Readings of a download, committed to the queue every `every` readings and at the end
    (also when the link drops: what arrived whole is kept)."""

    store: BridgeStore
    device_id: str
    report: SyncReport
    every: int
    _buffer: list[tuple[int, bytes]] = field(default_factory=list)

    def add(self, seq: int, payload: dict[str, Any]) -> None:
        self.report.received += 1
        self._buffer.append((seq, orjson.dumps(payload)))
        if len(self._buffer) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        result = self.store.enqueue(self.device_id, self._buffer)
        self._buffer.clear()
        self.report.queued += result.added
        self.report.already_queued += result.already_queued
        for seq in result.conflicts:
            log.warning(
                "%s: seq %d came again with other content; the copy queued first is kept",
                self.device_id, seq,
            )  # fmt: skip


def _time_seq(t: datetime) -> int:
    """Wall-clock digits YYYYMMDDhhmmss as an integer (see the module's docstring)."""
    return (
        t.year * 10**10 + t.month * 10**8 + t.day * 10**6 + t.hour * 10**4 + t.minute * 100
        + t.second
    )  # fmt: skip


def kind_of(device: DiscoveredDevice) -> DeviceKind | None:
    """The device kind its advertised services say, when they name exactly one."""
    kinds = {SERVICE_KINDS[u] for u in (s.lower() for s in device.service_uuids)
             if u in SERVICE_KINDS}  # fmt: skip
    return kinds.pop() if len(kinds) == 1 else None


def _retryable(error: BleTransportError) -> bool:
    return isinstance(error, LinkLost | ConnectFailed | GattTimeout | DeviceNotFound)


def _as_transport_error(exc: BaseException, address: str) -> BleTransportError:
    return from_builtin(exc, address) or GattOperationFailed(address, type(exc).__name__)


class Bridge:
    """Syncs configured meters in range over `transport` into `store`; `uplink` delivers."""

    def __init__(
        self,
        transport: GattTransport,
        store: BridgeStore,
        config: BridgeConfig,
        *,
        uplink: Uplink | None = None,
        timing: BridgeTiming | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.transport = transport
        self.store = store
        self.config = config
        self.uplink = uplink
        self.timing = timing or BridgeTiming()
        self._tz = config.tz
        self._clock = clock

    # --- scanning -------------------------------------------------------------------------------

    async def scan(self, duration: float | None = None) -> list[DiscoveredDevice]:
        found = await self.transport.scan(VIGIL_SERVICES, duration or self.timing.scan_timeout)
        return list(found)

    async def sync_in_range(
        self, *, addresses: Iterable[str] | None = None, due_only: bool = False
    ) -> tuple[list[SyncReport], list[BridgeDevice]]:
        """Scan, then sync each configured device seen (one at a time: kinder to the adapter).
        Returns the reports and the configured devices that were not seen."""
        wanted = {a.strip().upper() for a in addresses} if addresses is not None else None
        seen: dict[str, DiscoveredDevice] = {d.address.upper(): d for d in await self.scan()}
        reports: list[SyncReport] = []
        missing: list[BridgeDevice] = []
        now = self._clock().timestamp()
        for device in self.config.devices:
            if wanted is not None and device.address not in wanted:
                continue
            found = seen.get(device.address)
            if found is None:
                missing.append(device)
                continue
            last = self.store.last_sync_at(device.device_id)
            if due_only and last is not None and now - last < self.timing.resync_after:
                continue
            reports.append(await self.sync(device, found))
        return reports, missing

    # --- one device -----------------------------------------------------------------------------

    async def sync(self, device: BridgeDevice, found: DiscoveredDevice) -> SyncReport:
        """Download what is new on `device` (found by a scan) into the queue."""
        kind = device.kind or kind_of(found)
        if kind is None:
            raise ConfigurationError(
                f"{device.device_id}: set its kind (glucose_meter, bp_monitor or scale): "
                "its advertisement does not tell"
            )
        report = SyncReport(device.device_id, found.address, kind)
        delays = backoff_delays(self.timing.backoff_base, self.timing.backoff_cap)
        for attempt in range(1, self.timing.attempts + 1):
            report.attempts = attempt
            try:
                if kind == "glucose_meter":
                    await self._sync_glucose(device, found, report)
                else:
                    await self._sync_measurements(device, found, kind, report)
            except (BleTransportError, ConnectionError, TimeoutError, PermissionError) as exc:
                report.error = _as_transport_error(exc, found.address)
            else:
                report.error = None
                break
            if not _retryable(report.error) or attempt == self.timing.attempts:
                break
            delay = next(delays)
            log.info("%s: %s; reconnecting in %.1f s", device.device_id, report.error, delay)
            await asyncio.sleep(delay)
        if report.error is None:
            self.store.record_sync(device.device_id, self._clock().timestamp())
            log.info("%s", report.summary())
        else:
            log.warning("%s", report.summary())
        return report

    def _decode(
        self, parse: Callable[[bytes], T], data: bytes, device_id: str, report: SyncReport
    ) -> T | None:
        try:
            return parse(data)
        except GattDecodeError as exc:
            # No PHI: which characteristic and field, never the bytes or a value.
            report.skipped += 1
            log.warning(
                "%s: skipped a %s frame that does not decode (%s at %s)",
                device_id, exc.characteristic, type(exc).__name__, exc.field,
            )  # fmt: skip
            return None

    def _racp_from(self, device_id: str) -> int | None:
        """The first seq to ask for: last acknowledged + 1; None (all records) the first time,
        and after seq 65535 (the meter's u16 counter wraps; Vigil's seq epochs sort it out)."""
        last = self.store.last_acked_seq(device_id)
        if last is None or last >= MAX_GLUCOSE_SEQ:
            return None
        return last + 1

    async def _sync_glucose(
        self, device: BridgeDevice, found: DiscoveredDevice, report: SyncReport
    ) -> None:
        inbox = _Inbox(found.address)
        from_seq = self._racp_from(device.device_id)
        report.requested_from, report.racp = from_seq, None
        collector = _Collector(self.store, device.device_id, report, self.timing.flush_every)
        async with connected(self.transport, found, inbox.link_down) as session:
            # Subscribe before writing the RACP: the meter starts notifying at once.
            for char in (GLUCOSE_MEASUREMENT_CHAR, GLUCOSE_CONTEXT_CHAR, RACP_CHAR):
                await session.start_notify(char, inbox.callback(char))
            request = (
                encode_racp_report_all() if from_seq is None else encode_racp_report_from(from_seq)
            )
            await session.write(RACP_CHAR, request, response=True)
            try:
                await self._glucose_transfer(inbox, device, report, collector)
            except GattTimeout:
                await self._abort(session, device.device_id)
                raise
            finally:
                collector.flush()

    async def _abort(self, session: GattSession, device_id: str) -> None:
        with contextlib.suppress(BleTransportError, ConnectionError, TimeoutError):
            await session.write(RACP_CHAR, encode_racp_abort(), response=True)
            log.info("%s: RACP procedure aborted", device_id)

    async def _glucose_transfer(
        self, inbox: _Inbox, device: BridgeDevice, report: SyncReport, collector: _Collector
    ) -> None:
        matcher = GlucoseRecordMatcher()
        seen: set[tuple[str, bytes]] = set()
        device_id = device.device_id
        while True:
            char, data = await inbox.next(self.timing.idle_timeout)
            if (char, data) in seen:
                report.duplicates += 1
                continue
            seen.add((char, data))
            if char == GLUCOSE_MEASUREMENT_CHAR:
                m = self._decode(parse_glucose_measurement, data, device_id, report)
                if m is not None:
                    self._glucose_readings(matcher.measurement(m), device_id, report, collector)
            elif char == GLUCOSE_CONTEXT_CHAR:
                c = self._decode(parse_glucose_context, data, device_id, report)
                if c is not None:
                    self._glucose_readings(matcher.context(c), device_id, report, collector)
            elif char == RACP_CHAR:
                response = self._decode(decode_racp_response, data, device_id, report)
                if response is None or isinstance(response, RacpRecordCount):
                    continue
                if response.request_opcode != RacpOpcode.REPORT_STORED_RECORDS:
                    continue
                self._glucose_readings(matcher.flush(), device_id, report, collector)
                if matcher.unmatched:
                    report.unmatched_contexts += len(matcher.unmatched)
                    log.warning(
                        "%s: %d contexts matched no measurement", device_id, len(matcher.unmatched)
                    )
                if response.succeeded:
                    report.racp = "success"
                    return
                if response.no_records:
                    report.racp = "no_records_found"
                    return
                try:
                    name = RacpResponseCode(response.response_code).name.lower()
                except ValueError:
                    name = f"code {response.response_code}"
                raise GattOperationFailed(report.address, f"RACP answered {name}")

    def _glucose_readings(
        self,
        records: Sequence[GlucoseRecord],
        device_id: str,
        report: SyncReport,
        collector: _Collector,
    ) -> None:
        for record in records:
            seq = record.measurement.sequence_number
            try:
                payload = glucose_to_payload(record.measurement, record.context, device_id,
                                             self._tz)  # fmt: skip
            except ReadingMappingError as exc:
                report.skipped += 1
                log.warning("%s: seq %d not forwarded: %s", device_id, seq, exc.reason)
                continue
            collector.add(seq, payload)

    async def _sync_measurements(
        self, device: BridgeDevice, found: DiscoveredDevice, kind: DeviceKind, report: SyncReport
    ) -> None:
        char = BLOOD_PRESSURE_MEASUREMENT_CHAR if kind == "bp_monitor" else WEIGHT_MEASUREMENT_CHAR
        inbox = _Inbox(found.address)
        collector = _Collector(self.store, device.device_id, report, self.timing.flush_every)
        seen: set[bytes] = set()
        async with connected(self.transport, found, inbox.link_down) as session:
            await session.start_notify(char, inbox.callback(char))
            try:
                while True:
                    try:
                        _, data = await inbox.next(self.timing.settle)
                    except (GattTimeout, LinkLost):
                        break  # quiet, or hung up: cuffs and scales do when they are done
                    if data in seen:
                        report.duplicates += 1
                        continue
                    seen.add(data)
                    self._measurement(data, device, kind, report, collector)
            finally:
                collector.flush()

    def _measurement(
        self,
        data: bytes,
        device: BridgeDevice,
        kind: DeviceKind,
        report: SyncReport,
        collector: _Collector,
    ) -> None:
        device_id = device.device_id
        m: BloodPressureMeasurement | WeightMeasurement | None
        if kind == "bp_monitor":
            m = self._decode(parse_blood_pressure_measurement, data, device_id, report)
        else:
            m = self._decode(parse_weight_measurement, data, device_id, report)
        if m is None:
            return
        if device.user_id is not None and m.user_id not in (None, UNKNOWN_USER, device.user_id):
            report.other_users += 1
            return
        user = UNKNOWN_USER if m.user_id is None else m.user_id
        received_at: datetime | None = None
        if m.timestamp is not None:
            seq = _time_seq(m.timestamp) * 1000 + user
        else:
            received_at = self._clock()
            local = received_at.astimezone(self._tz).replace(tzinfo=None)
            seq = self.store.issue_seq(device_id, _time_seq(local) * 1000 + user)
        try:
            if isinstance(m, BloodPressureMeasurement):
                payload = blood_pressure_to_payload(m, device_id, self._tz, seq=seq,
                                                    received_at=received_at)  # fmt: skip
            else:
                payload = weight_to_payload(m, device_id, self._tz, seq=seq,
                                            received_at=received_at)  # fmt: skip
        except ReadingMappingError as exc:
            report.skipped += 1
            log.warning("%s: a measurement not forwarded: %s", device_id, exc.reason)
            return
        collector.add(seq, payload)

    # --- delivery and the long-running hub ------------------------------------------------------

    def _require_uplink(self) -> Uplink:
        if self.uplink is None:
            raise ConfigurationError("the bridge has no uplink to Vigil configured")
        return self.uplink

    async def deliver(self, devices: Iterable[BridgeDevice] | None = None) -> None:
        """Send the queue of `devices` (default: all) until Vigil has acked all of it. Bound it
        with `asyncio.timeout`: what is not acked stays queued for the next run."""
        uplink = self._require_uplink()
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for d in devices if devices is not None else self.config.devices:
                if self.store.pending(d.device_id):
                    tg.create_task(uplink.run(d.identity, self.store, stop, until_empty=True),
                                   name=f"uplink-{d.device_id}")  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """The hub: one uplink per device, and a scan loop that syncs devices in range."""
        uplink = self._require_uplink()
        async with asyncio.TaskGroup() as tg:
            for d in self.config.devices:
                tg.create_task(uplink.run(d.identity, self.store, stop),
                               name=f"uplink-{d.device_id}")  # fmt: skip
            tg.create_task(self._scan_loop(stop), name="ble-scan")

    async def _scan_loop(self, stop: asyncio.Event) -> None:
        delays = backoff_delays(self.timing.backoff_base, self.timing.backoff_cap * 4)
        while not stop.is_set():
            wait = self.timing.scan_interval
            try:
                await self.sync_in_range(due_only=True)
                delays = backoff_delays(self.timing.backoff_base, self.timing.backoff_cap * 4)
            except BluetoothUnavailable as exc:
                wait = next(delays)
                log.warning("%s; scanning again in %.0f s", exc, wait)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
