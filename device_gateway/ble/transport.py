"""The radio edge of the BLE bridge: a small GATT transport interface, its errors, and the bleak
implementation of it.

The bridge (bridge.py) reaches meters only through `GattTransport` and the `GattSession` its
`connect` returns. Two implementations exist: `BleakTransport` below (BlueZ, CoreBluetooth, WinRT
through bleak) and the simulated radio of simulators/ble_peripheral.py, which satisfies these
Protocols structurally without importing Vigil (a simulator is a device, see CONVENTIONS.md).

Contract of an implementation (what the simulated radio also follows):
- `scan` returns the devices advertising any of the service UUIDs; `connect` takes one of them.
- Characteristics are named by their 128-bit UUID string (`uuid16(0x2A18)`).
- Notification and indication callbacks run on the event loop, in arrival order, with `bytes`.
- `on_disconnect` is called once when the link drops (not after our own `disconnect`).
- Errors: a lost or refused link raises a `ConnectionError`, a peripheral that refuses for lack
  of bonding or encryption a `PermissionError`, an operation that does not answer a
  `TimeoutError`. Builtins, so a simulator can raise them without importing Vigil; the bleak
  transport raises the typed subclasses below, which are also those builtins.

Error tree (every error carries `reason`, from a closed set, `address` and a `hint`):

BleError (errors.py)
 └── BleTransportError
      ├── BluetoothUnavailable   no adapter, adapter off, no BlueZ / D-Bus
      ├── DeviceNotFound         the adapter no longer sees the device (LookupError)
      ├── ConnectFailed          the connection could not be established (ConnectionError)
      ├── LinkLost               the link dropped during a session (ConnectionError)
      ├── PairingRequired        the meter wants a bond the hub does not have (PermissionError)
      ├── GattTimeout            an operation or an awaited indication did not come (TimeoutError)
      └── GattOperationFailed    a GATT operation or RACP procedure refused by the peripheral
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from .errors import BleError

if TYPE_CHECKING:  # bleak is imported when a BleakTransport is used, not by the bridge's tests
    from bleak import BleakClient
    from bleak.backends.characteristic import BleakGATTCharacteristic
    from bleak.backends.device import BLEDevice

log = logging.getLogger(__name__)

_BASE_UUID_TAIL: Final = "-0000-1000-8000-00805f9b34fb"


def uuid16(short: int) -> str:
    """A Bluetooth SIG 16-bit UUID in its 128-bit form, as bleak names characteristics."""
    return f"0000{short:04x}{_BASE_UUID_TAIL}"


GLUCOSE_SERVICE: Final = uuid16(0x1808)
BLOOD_PRESSURE_SERVICE: Final = uuid16(0x1810)
WEIGHT_SCALE_SERVICE: Final = uuid16(0x181D)
#: The services a Vigil hub scans for.
VIGIL_SERVICES: Final = (GLUCOSE_SERVICE, BLOOD_PRESSURE_SERVICE, WEIGHT_SCALE_SERVICE)

GLUCOSE_MEASUREMENT_CHAR: Final = uuid16(0x2A18)
GLUCOSE_CONTEXT_CHAR: Final = uuid16(0x2A34)
RACP_CHAR: Final = uuid16(0x2A52)
BLOOD_PRESSURE_MEASUREMENT_CHAR: Final = uuid16(0x2A35)
WEIGHT_MEASUREMENT_CHAR: Final = uuid16(0x2A9D)

NotificationCallback = Callable[[bytes], None]
DisconnectCallback = Callable[[], None]


class DiscoveredDevice(Protocol):
    """A device a scan found. Implementations may carry more (bleak's BLEDevice)."""

    @property
    def address(self) -> str: ...

    @property
    def name(self) -> str | None: ...

    @property
    def service_uuids(self) -> Sequence[str]: ...


class GattSession(Protocol):
    """A connection to one peripheral."""

    @property
    def is_connected(self) -> bool: ...

    async def start_notify(self, characteristic: str, callback: NotificationCallback) -> None: ...

    async def write(self, characteristic: str, data: bytes, *, response: bool = True) -> None: ...

    async def disconnect(self) -> None: ...


class GattTransport(Protocol):
    """The radio: scan by service UUID, connect to what the scan found."""

    async def scan(
        self, service_uuids: Sequence[str], duration: float
    ) -> Sequence[DiscoveredDevice]:
        """Listen to advertisements for `duration` seconds."""
        ...

    async def connect(
        self, device: DiscoveredDevice, *, on_disconnect: DisconnectCallback | None = None
    ) -> GattSession: ...


@asynccontextmanager
async def connected(
    transport: GattTransport,
    device: DiscoveredDevice,
    on_disconnect: DisconnectCallback | None = None,
) -> AsyncIterator[GattSession]:
    """A session as an async context manager: disconnected on exit, whatever happened."""
    session = await transport.connect(device, on_disconnect=on_disconnect)
    try:
        yield session
    finally:
        try:
            await session.disconnect()
        except (ConnectionError, TimeoutError, BleTransportError) as exc:
            log.debug("%s: disconnect: %s", device.address, exc)


# --- errors ------------------------------------------------------------------------------------

TransportReason = Literal[
    "bluetooth_unavailable", "device_not_found", "connect_failed", "link_lost",
    "pairing_required", "gatt_timeout", "gatt_error",
]  # fmt: skip

#: What the user must do when a meter requires bonding (BlueZ has no pairing agent by default).
PAIRING_HINT: Final = (
    "this meter requires bonding: pair it once with `bluetoothctl` or a pairing agent"
)


class BleTransportError(BleError):
    reason: TransportReason = "gatt_error"
    hint: str = ""

    def __init__(self, address: str | None, detail: str = "") -> None:
        # One argument: the OSError-based subclasses would read two as (errno, strerror).
        super().__init__(f"{address}: {detail}" if detail else address)
        self.address = address
        self.detail = detail

    def __str__(self) -> str:
        parts = [self.address or "bluetooth", self.hint or self.reason]
        if self.detail:
            parts.append(self.detail)
        return ": ".join(parts)


class BluetoothUnavailable(BleTransportError):  # noqa: N818 - a state, as users say it
    reason = "bluetooth_unavailable"
    hint = (
        "Bluetooth is not available: no adapter, the adapter is off, or BlueZ (bluetoothd and "
        "the D-Bus system bus) is not running"
    )


class DeviceNotFound(BleTransportError, LookupError):  # noqa: N818
    reason = "device_not_found"
    hint = "the device is no longer seen: bring it closer, wake it (press its button) and retry"


class ConnectFailed(BleTransportError, ConnectionError):  # noqa: N818
    reason = "connect_failed"
    hint = "could not connect"


class LinkLost(BleTransportError, ConnectionError):  # noqa: N818
    reason = "link_lost"
    hint = "the link dropped"


class PairingRequired(BleTransportError, PermissionError):  # noqa: N818
    reason = "pairing_required"
    hint = PAIRING_HINT


class GattTimeout(BleTransportError, TimeoutError):  # noqa: N818
    reason = "gatt_timeout"
    hint = "the device did not answer in time"


class GattOperationFailed(BleTransportError):  # noqa: N818
    reason = "gatt_error"
    hint = "the device refused the operation"


def from_builtin(exc: BaseException, address: str) -> BleTransportError | None:
    """The typed error for a builtin one a transport raised (see the module's contract)."""
    if isinstance(exc, BleTransportError):
        return exc
    if isinstance(exc, PermissionError):
        return PairingRequired(address)
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailed(address, type(exc).__name__)
    if isinstance(exc, ConnectionError):
        return LinkLost(address, type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return GattTimeout(address)
    return None


# --- backoff -----------------------------------------------------------------------------------


def backoff_delays(base: float, cap: float) -> Iterator[float]:
    """Jittered, capped exponential backoff: uniform(base / 2, min(cap, base * 2^n)).

    The jitter keeps a hub's devices (and a fleet of hubs after a broker restart) from retrying in
    lockstep."""
    n = 0
    while True:
        yield random.uniform(base / 2, min(cap, base * 2**n))
        n = min(n + 1, 30)


# --- bleak -------------------------------------------------------------------------------------

#: BlueZ D-Bus errors that mean "bond first" (BlueZ src/error.h; the agent-less hub cannot pair).
_AUTH_DBUS_ERRORS: Final = frozenset({
    "org.bluez.Error.AuthenticationFailed",
    "org.bluez.Error.AuthenticationRejected",
    "org.bluez.Error.AuthenticationCanceled",
    "org.bluez.Error.AuthenticationTimeout",
    "org.bluez.Error.NotAuthorized",
})  # fmt: skip
#: BlueZ's create_gatt_dbus_error() maps ATT "insufficient authentication / encryption / key
#: size" to NotPermitted with the text "Not paired", which bleak 3 leaves as a BleakDBusError (its
#: bluezdbus/utils.py says so): the text is the only discriminator BlueZ offers.
_NOT_PAIRED: Final = ("org.bluez.Error.NotPermitted", "Not paired")
#: D-Bus errors that mean there is no Bluetooth stack to talk to.
_NO_STACK_DBUS_ERRORS: Final = frozenset({
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NoServer",
    "org.bluez.Error.NotReady",
})  # fmt: skip


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes (bleak-retry-connector wraps bleak's errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_pairing_error(exc: BaseException) -> bool:
    """True when the peripheral refused because the hub holds no bond (or the wrong one)."""
    from bleak.exc import BleakDBusError, BleakGATTProtocolError, BleakGATTProtocolErrorCode

    auth_codes = {
        BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHENTICATION,
        BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHORIZATION,
        BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION,
        BleakGATTProtocolErrorCode.INSUFFICIENT_ENCRYPTION_KEY_SIZE,
    }
    for e in _chain(exc):
        if isinstance(e, BleakGATTProtocolError) and e.code in auth_codes:
            return True
        if isinstance(e, BleakDBusError) and (
            e.dbus_error in _AUTH_DBUS_ERRORS or (e.dbus_error, e.dbus_error_details) == _NOT_PAIRED
        ):
            return True
    return False


def translate_bleak_error(
    exc: BaseException, address: str, *, connecting: bool, still_connected: bool = True
) -> BleTransportError:
    """bleak's (and bleak-retry-connector's) errors -> the typed errors above."""
    from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError, BleakDeviceNotFoundError
    from bleak_retry_connector import BleakNotFoundError

    if isinstance(exc, BleTransportError):
        return exc
    if is_pairing_error(exc):
        return PairingRequired(address)
    for e in _chain(exc):
        # FileNotFoundError: no D-Bus system bus socket (a container, a machine without BlueZ).
        if isinstance(e, BleakBluetoothNotAvailableError | FileNotFoundError):
            return BluetoothUnavailable(address)
        if isinstance(e, BleakDBusError) and e.dbus_error in _NO_STACK_DBUS_ERRORS:
            return BluetoothUnavailable(address, e.dbus_error)
        if isinstance(e, BleakDeviceNotFoundError | BleakNotFoundError):
            return DeviceNotFound(address)
    detail = type(exc).__name__
    if connecting:
        return ConnectFailed(address, detail)
    if not still_connected:
        return LinkLost(address, detail)
    if isinstance(exc, TimeoutError):
        return GattTimeout(address)
    return GattOperationFailed(address, detail)


@dataclass(frozen=True, slots=True)
class BleakAdvertised:
    """A device bleak's scanner saw, with the BLEDevice to connect with (not an address string:
    on BlueZ the object carries the D-Bus path, and connecting by address would scan again)."""

    address: str
    name: str | None
    service_uuids: tuple[str, ...]
    rssi: int | None
    ble_device: BLEDevice


class BleakSession:
    """A GattSession over a connected BleakClient; every operation is bounded by a timeout."""

    def __init__(self, client: BleakClient, address: str, op_timeout: float) -> None:
        self._client = client
        self._address = address
        self._op_timeout = op_timeout

    @property
    def is_connected(self) -> bool:
        return bool(self._client.is_connected)

    async def _call(self, operation: Awaitable[None]) -> None:
        from bleak.exc import BleakError

        try:
            async with asyncio.timeout(self._op_timeout):
                await operation
        except (BleakError, OSError, TimeoutError, EOFError) as exc:
            raise translate_bleak_error(
                exc, self._address, connecting=False, still_connected=self.is_connected
            ) from exc

    async def start_notify(self, characteristic: str, callback: NotificationCallback) -> None:
        def deliver(_sender: BleakGATTCharacteristic, data: bytearray) -> None:
            callback(bytes(data))

        await self._call(self._client.start_notify(characteristic, deliver))

    async def write(self, characteristic: str, data: bytes, *, response: bool = True) -> None:
        await self._call(self._client.write_gatt_char(characteristic, data, response=response))

    async def disconnect(self) -> None:
        await self._call(self._client.disconnect())


class BleakTransport:
    """GattTransport over bleak, connecting with bleak-retry-connector's `establish_connection`
    (retries with backoff on BlueZ's transient errors, reuses the service cache, waits for a
    stale connection to go). `client_class` is for tests (a fake BleakClient)."""

    def __init__(
        self,
        *,
        adapter: str | None = None,
        connect_attempts: int = 3,
        op_timeout: float = 15.0,
        client_class: type[BleakClient] | None = None,
    ) -> None:
        self._adapter = adapter
        self._connect_attempts = connect_attempts
        self._op_timeout = op_timeout
        self._client_class = client_class

    async def scan(self, service_uuids: Sequence[str], duration: float) -> list[BleakAdvertised]:
        from bleak import BleakScanner
        from bleak.exc import BleakError

        kwargs: dict[str, Any] = {}
        if self._adapter:
            kwargs["bluez"] = {"adapter": self._adapter}
        try:
            found = await BleakScanner.discover(
                timeout=duration, service_uuids=list(service_uuids), return_adv=True, **kwargs
            )
        except (BleakError, OSError, EOFError) as exc:
            raise translate_bleak_error(exc, self._adapter or "adapter", connecting=True) from exc
        return [
            BleakAdvertised(
                address=device.address,
                name=adv.local_name or device.name,
                service_uuids=tuple(u.lower() for u in adv.service_uuids),
                rssi=adv.rssi,
                ble_device=device,
            )
            for device, adv in found.values()
        ]

    async def connect(
        self, device: DiscoveredDevice, *, on_disconnect: DisconnectCallback | None = None
    ) -> BleakSession:
        if not isinstance(device, BleakAdvertised):
            raise TypeError("BleakTransport connects only to devices its own scan returned")
        from bleak.exc import BleakError
        from bleak_retry_connector import BleakClientWithServiceCache, establish_connection

        def disconnected(_client: BleakClient) -> None:
            if on_disconnect is not None:
                on_disconnect()

        try:
            client = await establish_connection(
                self._client_class or BleakClientWithServiceCache,
                device.ble_device,
                device.name or device.address,
                disconnected_callback=disconnected,
                max_attempts=self._connect_attempts,
            )
        except (BleakError, OSError, TimeoutError, EOFError) as exc:
            raise translate_bleak_error(exc, device.address, connecting=True) from exc
        return BleakSession(client, device.address, self._op_timeout)
