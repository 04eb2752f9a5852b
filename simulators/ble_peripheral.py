"""A simulated Bluetooth LE radio with glucose meters, blood pressure cuffs and scales on it.

Tests hand `SimulatedRadio` to Vigil's BLE bridge in place of its bleak transport. It has the
shape of device_gateway/ble/transport.py's `GattTransport` (scan by service UUID; connect ->
a session with start_notify, write, disconnect, is_connected; an on_disconnect callback) without
importing it: a simulator is a device and imports nothing of Vigil, so the bridge and these
devices meet only at that interface, structurally, as a real meter and bleak meet on the air.
Frames come from simulators/ble_frames.py's encoders.

What the devices do (Bluetooth SIG Glucose Service v1.0.1, Blood Pressure and Weight Scale
profiles):
- `GlucoseMeter` keeps N stored records and serves the Record Access Control Point (0x2A52,
  write with response + indications): report stored records, all or seq >= n (filter type 1);
  report the number of stored records (all or >= n); abort. Per record it notifies a Glucose
  Measurement (0x2A18) and, when the record has one, its Context (0x2A34), then indicates the
  RACP response: success, or "no records found". As the specification has it, writing the RACP
  without indications enabled on it is refused (ATT 0xFD, CCCD improperly configured), so is a
  second procedure while one runs (ATT 0xFE), and notifications reach only characteristics the
  central subscribed to. A write without response is ignored (RACP needs one with response).
- `BloodPressureCuff` and `Scale` keep stored measurements; when the central enables indications
  on 0x2A35 / 0x2A9D they indicate every one of them and hang up, as home cuffs and scales do.
  They keep what they sent and send it again next time: the bridge must not double it.

Faults (`Faults`): the link drops after K records of a download (once), every notification and
indication is sent twice, bonding is required (subscribing is refused with "insufficient
authentication"). A meter whose clock was reset (battery change) is data, not a fault:
`glucose_history(..., clock_reset_at=k)` stamps records from the k-th on from 2000-01-01.

Errors follow the transport contract: an absent or dropped link raises a ConnectionError, a
bonding refusal a PermissionError, any other GATT protocol error an `AttError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final, Protocol

from simulators.ble_frames import (
    RACP_ABORT,
    RACP_INVALID_OPERAND,
    RACP_INVALID_OPERATOR,
    RACP_NO_RECORDS_FOUND,
    RACP_OPCODE_NOT_SUPPORTED,
    RACP_OPERAND_NOT_SUPPORTED,
    RACP_OPERATOR_NOT_SUPPORTED,
    RACP_REPORT_NUMBER,
    RACP_REPORT_STORED_RECORDS,
    RACP_SUCCESS,
    WEIGHT_UNSUCCESSFUL,
    DateTimeValue,
    FrameEncodingError,
    RacpRequest,
    SFloat,
    blood_pressure_frame,
    glucose_context_frame,
    glucose_measurement_frame,
    parse_racp_request,
    racp_count_frame,
    racp_response_frame,
    weight_frame,
    weight_raw,
)

_BASE_UUID_TAIL: Final = "-0000-1000-8000-00805f9b34fb"


def uuid16(short: int) -> str:
    """A Bluetooth SIG 16-bit UUID in its 128-bit form (as bleak names characteristics)."""
    return f"0000{short:04x}{_BASE_UUID_TAIL}"


GLUCOSE_SERVICE: Final = uuid16(0x1808)
BLOOD_PRESSURE_SERVICE: Final = uuid16(0x1810)
WEIGHT_SCALE_SERVICE: Final = uuid16(0x181D)
GLUCOSE_MEASUREMENT: Final = uuid16(0x2A18)
GLUCOSE_CONTEXT: Final = uuid16(0x2A34)
RACP: Final = uuid16(0x2A52)
BLOOD_PRESSURE_MEASUREMENT: Final = uuid16(0x2A35)
WEIGHT_MEASUREMENT: Final = uuid16(0x2A9D)

#: Where a meter's clock starts after a battery change (its epoch, no time zone).
CLOCK_RESET_EPOCH: Final = datetime(2000, 1, 1)  # noqa: DTZ001 - a device wall clock has no zone

# ATT error codes (Core Specification Vol 3 Part F 3.4.1.1; 0xFD-0xFF: CSS Part B 1.2).
ATT_WRITE_NOT_PERMITTED: Final = 0x03
ATT_ATTRIBUTE_NOT_FOUND: Final = 0x0A
ATT_CCCD_IMPROPERLY_CONFIGURED: Final = 0xFD
ATT_PROCEDURE_ALREADY_IN_PROGRESS: Final = 0xFE


class AttError(Exception):
    """A GATT operation the peripheral answered with an ATT error response."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, what)
        self.code = code

    def __str__(self) -> str:
        return f"ATT error 0x{self.code:02X}: {self.args[1]}"


@dataclass(frozen=True, slots=True)
class Advertisement:
    """What a scan hears from a device."""

    address: str
    name: str | None
    service_uuids: tuple[str, ...]


class _Addressed(Protocol):
    @property
    def address(self) -> str: ...


@dataclass
class Faults:
    #: Drop the link after this many records of a download; once, then the meter behaves.
    drop_link_after: int | None = None
    #: Send every notification and indication twice.
    duplicate_indications: bool = False
    #: Refuse subscriptions with "insufficient authentication" until bonded (never, here).
    requires_bonding: bool = False


# --- stored data -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredGlucoseRecord:
    seq: int
    base_time: DateTimeValue
    #: kg/L as (mantissa, exponent): 120 mg/dL is (120, -5); or a special value's name.
    concentration: SFloat
    #: GLS meal code (1 preprandial ... 5 bedtime); the record has a context when set.
    meal: int | None = None
    sample_type: int = 2  # capillary plasma
    sample_location: int = 1  # finger
    sensor_status: int | None = None
    #: Fault: the 0x2A18 frame loses its last three bytes on the air.
    truncated: bool = False

    def notifications(self) -> list[tuple[str, bytes]]:
        frame = glucose_measurement_frame(
            sequence_number=self.seq,
            base_time=self.base_time,
            concentration=self.concentration,
            sample_type=self.sample_type,
            sample_location=self.sample_location,
            sensor_status=self.sensor_status,
            context_follows=self.meal is not None,
        )
        out = [(GLUCOSE_MEASUREMENT, frame[:-3] if self.truncated else frame)]
        if self.meal is not None:
            out.append((GLUCOSE_CONTEXT, glucose_context_frame(sequence_number=self.seq,
                                                               meal=self.meal)))  # fmt: skip
        return out


def glucose_value(seq: int) -> int:
    """The mg/dL the simulated meter stores for `seq` (70-249, deterministic)."""
    return 70 + (seq * 37) % 180


def glucose_history(
    n: int,
    *,
    start: datetime,
    every: timedelta = timedelta(hours=4),
    first_seq: int = 1,
    clock_reset_at: int | None = None,
) -> list[StoredGlucoseRecord]:
    """`n` records, seq first_seq.., one every `every` from `start` (the meter's wall clock: a
    zone, if any, is dropped); every other record has a meal context. From record index
    `clock_reset_at` on, the clock counts again from 2000-01-01 00:00 (a battery change)."""
    records = []
    for i in range(n):
        seq = first_seq + i
        if clock_reset_at is not None and i >= clock_reset_at:
            t = CLOCK_RESET_EPOCH + (i - clock_reset_at) * every
        else:
            t = (start + i * every).replace(tzinfo=None)
        meal = 1 + seq % 5 if seq % 2 == 0 else None
        records.append(StoredGlucoseRecord(seq, t, (glucose_value(seq), -5), meal))
    return records


@dataclass(frozen=True, slots=True)
class StoredBloodPressure:
    systolic: SFloat
    diastolic: SFloat
    mean_arterial: SFloat
    timestamp: DateTimeValue | None
    pulse_rate: SFloat | None = None
    user_id: int | None = None
    status: int | None = None

    def frame(self) -> bytes:
        return blood_pressure_frame(
            systolic=self.systolic,
            diastolic=self.diastolic,
            mean_arterial=self.mean_arterial,
            timestamp=self.timestamp,
            pulse_rate=self.pulse_rate,
            user_id=self.user_id,
            status=self.status,
        )


@dataclass(frozen=True, slots=True)
class StoredWeight:
    #: kg as a decimal string in 0.005 kg steps; None: "measurement unsuccessful" (0xFFFF).
    weight_kg: str | None
    timestamp: DateTimeValue | None
    user_id: int | None = None

    def frame(self) -> bytes:
        raw = WEIGHT_UNSUCCESSFUL if self.weight_kg is None else weight_raw(self.weight_kg, "kg")
        return weight_frame(weight=raw, timestamp=self.timestamp, user_id=self.user_id)


# --- the link ----------------------------------------------------------------------------------


class SimulatedLink:
    """A central's connection to one simulated peripheral (the session the bridge uses)."""

    def __init__(
        self, peripheral: SimulatedPeripheral, on_disconnect: Callable[[], None] | None
    ) -> None:
        self._peripheral = peripheral
        self._on_disconnect = on_disconnect
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}
        self._connected = True
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def is_connected(self) -> bool:
        return self._connected

    def subscribed(self, characteristic: str) -> bool:
        return characteristic in self._subscriptions

    def _require_link(self) -> None:
        if not self._connected:
            raise ConnectionResetError(f"{self._peripheral.address}: not connected")

    async def start_notify(self, characteristic: str, callback: Callable[[bytes], None]) -> None:
        self._require_link()
        await asyncio.sleep(0)  # the CCCD write goes over the air
        if characteristic not in self._peripheral.characteristics:
            raise AttError(ATT_ATTRIBUTE_NOT_FOUND, f"no characteristic {characteristic}")
        if self._peripheral.faults.requires_bonding:
            raise PermissionError("ATT error 0x05: insufficient authentication")
        self._subscriptions[characteristic] = callback
        self._peripheral.on_subscribed(self, characteristic)

    async def write(self, characteristic: str, data: bytes, *, response: bool = True) -> None:
        self._require_link()
        await asyncio.sleep(0)
        self._peripheral.on_write(self, characteristic, bytes(data), response=response)

    async def disconnect(self) -> None:
        if self._connected:
            self._close(by_peripheral=False)

    # The peripheral's side.

    def notify(self, characteristic: str, data: bytes) -> None:
        """Send a notification or indication (to nobody, if the central did not subscribe)."""
        self._require_link()
        callback = self._subscriptions.get(characteristic)
        if callback is None:
            return
        callback(data)
        if self._peripheral.faults.duplicate_indications:
            callback(data)

    def drop(self) -> None:
        """The link goes down from the peripheral's end (out of range, or it hung up)."""
        if self._connected:
            self._close(by_peripheral=True)

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run the peripheral's side of a procedure; it ends with the link."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._peripheral.errors.append(exc)

    def _close(self, *, by_peripheral: bool) -> None:
        self._connected = False
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self._peripheral.on_link_closed(self)
        if by_peripheral and self._on_disconnect is not None:
            self._on_disconnect()


# --- peripherals -------------------------------------------------------------------------------


class SimulatedPeripheral:
    characteristics: ClassVar[frozenset[str]] = frozenset()
    service: ClassVar[str] = ""

    def __init__(self, address: str, name: str | None, faults: Faults | None) -> None:
        self.address = address.upper()
        self.name = name
        self.faults = faults or Faults()
        self.connections = 0
        self.link: SimulatedLink | None = None
        #: What the device's own side raised while serving a procedure (a simulator bug): tests
        #: assert it stays empty.
        self.errors: list[BaseException] = []

    def advertisement(self) -> Advertisement:
        return Advertisement(self.address, self.name, (self.service,))

    def on_subscribed(self, link: SimulatedLink, characteristic: str) -> None:
        """The central enabled notifications or indications on `characteristic`."""

    def on_write(self, link: SimulatedLink, characteristic: str, data: bytes, *,
                 response: bool) -> None:  # fmt: skip
        raise AttError(ATT_WRITE_NOT_PERMITTED, f"{characteristic} is not writable")

    def on_link_closed(self, link: SimulatedLink) -> None:
        if self.link is link:
            self.link = None


@dataclass
class RacpExchange:
    """One RACP procedure as the meter saw it: for tests to assert what the bridge asked."""

    request: RacpRequest | None
    raw: bytes
    records_sent: int = 0
    #: The response code indicated (None: none, e.g. the link dropped or it was ignored).
    response_code: int | None = None
    count: int | None = None
    dropped: bool = False
    ignored: bool = False


class GlucoseMeter(SimulatedPeripheral):
    characteristics = frozenset({GLUCOSE_MEASUREMENT, GLUCOSE_CONTEXT, RACP})
    service = GLUCOSE_SERVICE

    def __init__(
        self,
        address: str,
        records: Iterable[StoredGlucoseRecord],
        *,
        name: str | None = "Sim Glucose",
        faults: Faults | None = None,
    ) -> None:
        super().__init__(address, name, faults)
        self.records = list(records)
        self.racp_log: list[RacpExchange] = []
        self._procedure: asyncio.Task[None] | None = None

    def on_write(self, link: SimulatedLink, characteristic: str, data: bytes, *,
                 response: bool) -> None:  # fmt: skip
        if characteristic != RACP:
            super().on_write(link, characteristic, data, response=response)
        exchange = RacpExchange(None, data)
        self.racp_log.append(exchange)
        if not response:  # a write command: the RACP procedure is only started by a request
            exchange.ignored = True
            return
        if not link.subscribed(RACP):
            raise AttError(ATT_CCCD_IMPROPERLY_CONFIGURED, "RACP indications are not enabled")
        running = self._procedure is not None and not self._procedure.done()
        if data[:1] == bytes((RACP_ABORT,)):
            if self._procedure is not None and running:
                self._procedure.cancel()
            link.spawn(self._respond(link, exchange, RACP_ABORT, RACP_SUCCESS))
            return
        if running:
            raise AttError(ATT_PROCEDURE_ALREADY_IN_PROGRESS, "an RACP procedure is running")
        try:
            exchange.request = parse_racp_request(data)
        except FrameEncodingError:
            link.spawn(self._respond(link, exchange, data[0] if data else 0,
                                     RACP_INVALID_OPERATOR))  # fmt: skip
            return
        self._procedure = link.spawn(self._run(link, exchange, exchange.request))

    async def _respond(
        self, link: SimulatedLink, exchange: RacpExchange, opcode: int, code: int
    ) -> None:
        await asyncio.sleep(0)
        exchange.response_code = code
        link.notify(RACP, racp_response_frame(opcode, code))

    def _select(self, request: RacpRequest) -> tuple[list[StoredGlucoseRecord], int | None]:
        """The records a request selects, or an RACP response code refusing it."""
        if request.operator == 1:  # all records
            return list(self.records), None
        if request.operator == 3:  # greater than or equal to
            n = request.min_sequence_number
            if n is None:
                filter_type = request.operand[:1]
                code = (
                    RACP_OPERAND_NOT_SUPPORTED if filter_type == b"\x02" else RACP_INVALID_OPERAND
                )
                return [], code
            return [r for r in self.records if r.seq >= n], None
        if request.operator in (2, 4, 5, 6):  # <=, within range, first, last: not here
            return [], RACP_OPERATOR_NOT_SUPPORTED
        return [], RACP_INVALID_OPERATOR

    async def _run(self, link: SimulatedLink, exchange: RacpExchange, request: RacpRequest) -> None:
        await asyncio.sleep(0)
        opcode = request.opcode
        if opcode == RACP_REPORT_NUMBER:
            selected, code = self._select(request)
            if code is not None:
                await self._respond(link, exchange, opcode, code)
                return
            exchange.count = len(selected)
            link.notify(RACP, racp_count_frame(len(selected)))
            return
        if opcode != RACP_REPORT_STORED_RECORDS:  # delete, or not an RACP request opcode
            await self._respond(link, exchange, opcode, RACP_OPCODE_NOT_SUPPORTED)
            return
        selected, code = self._select(request)
        if code is None and not selected:
            code = RACP_NO_RECORDS_FOUND
        if code is not None:
            await self._respond(link, exchange, opcode, code)
            return
        for index, record in enumerate(selected):
            if self.faults.drop_link_after is not None and index == self.faults.drop_link_after:
                self.faults.drop_link_after = None  # once: the next connection completes
                exchange.dropped = True
                link.drop()
                return
            for characteristic, frame in record.notifications():
                link.notify(characteristic, frame)
                await asyncio.sleep(0)
            exchange.records_sent += 1
        await self._respond(link, exchange, opcode, RACP_SUCCESS)


class _MeasurementDevice(SimulatedPeripheral):
    """A cuff or scale: indicates its stored measurements when subscribed, then hangs up."""

    measurement: ClassVar[str] = ""

    def __init__(
        self,
        address: str,
        stored: Sequence[StoredBloodPressure | StoredWeight],
        *,
        name: str | None,
        faults: Faults | None,
        hang_up: bool = True,
    ) -> None:
        super().__init__(address, name, faults)
        self.stored = list(stored)
        self.hang_up = hang_up
        self.indications_sent = 0

    def on_subscribed(self, link: SimulatedLink, characteristic: str) -> None:
        if characteristic == self.measurement:
            link.spawn(self._send_stored(link))

    async def _send_stored(self, link: SimulatedLink) -> None:
        await asyncio.sleep(0)
        for item in self.stored:
            link.notify(self.measurement, item.frame())
            self.indications_sent += 1
            await asyncio.sleep(0)
        if self.hang_up:
            link.drop()


class BloodPressureCuff(_MeasurementDevice):
    characteristics = frozenset({BLOOD_PRESSURE_MEASUREMENT})
    service = BLOOD_PRESSURE_SERVICE
    measurement = BLOOD_PRESSURE_MEASUREMENT

    def __init__(
        self,
        address: str,
        stored: Sequence[StoredBloodPressure],
        *,
        name: str | None = "Sim BP",
        faults: Faults | None = None,
        hang_up: bool = True,
    ) -> None:
        super().__init__(address, stored, name=name, faults=faults, hang_up=hang_up)


class Scale(_MeasurementDevice):
    characteristics = frozenset({WEIGHT_MEASUREMENT})
    service = WEIGHT_SCALE_SERVICE
    measurement = WEIGHT_MEASUREMENT

    def __init__(
        self,
        address: str,
        stored: Sequence[StoredWeight],
        *,
        name: str | None = "Sim Scale",
        faults: Faults | None = None,
        hang_up: bool = True,
    ) -> None:
        super().__init__(address, stored, name=name, faults=faults, hang_up=hang_up)


# --- the radio ---------------------------------------------------------------------------------


@dataclass
class SimulatedRadio:
    """The air between the hub and the devices: what a scan hears, who accepts a connection."""

    peripherals: dict[str, SimulatedPeripheral] = field(default_factory=dict)
    in_range: set[str] = field(default_factory=set)
    scans: int = 0

    @classmethod
    def with_devices(cls, *devices: SimulatedPeripheral) -> SimulatedRadio:
        radio = cls()
        for d in devices:
            radio.add(d)
        return radio

    def add(self, device: SimulatedPeripheral) -> None:
        self.peripherals[device.address] = device
        self.in_range.add(device.address)

    def out_of_range(self, address: str) -> None:
        self.in_range.discard(address.upper())
        device = self.peripherals.get(address.upper())
        if device is not None and device.link is not None:
            device.link.drop()

    async def scan(self, service_uuids: Sequence[str], duration: float) -> list[Advertisement]:
        """Advertisements of the devices in range offering any of `service_uuids` (at once:
        simulated devices advertise continuously, so `duration` is not waited for)."""
        self.scans += 1
        await asyncio.sleep(0)
        wanted = {u.lower() for u in service_uuids}
        return [
            p.advertisement()
            for address, p in self.peripherals.items()
            if address in self.in_range and (not wanted or p.service in wanted)
        ]

    async def connect(
        self, device: _Addressed, *, on_disconnect: Callable[[], None] | None = None
    ) -> SimulatedLink:
        address = device.address.upper()
        await asyncio.sleep(0)
        peripheral = self.peripherals.get(address)
        if peripheral is None or address not in self.in_range:
            raise ConnectionRefusedError(f"{address}: no such device in range")
        if peripheral.link is not None and peripheral.link.is_connected:
            raise ConnectionRefusedError(f"{address}: already connected to a central")
        peripheral.connections += 1
        peripheral.link = SimulatedLink(peripheral, on_disconnect)
        return peripheral.link
