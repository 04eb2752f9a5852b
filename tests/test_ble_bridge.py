"""The BLE bridge end to end: simulated meters -> bridge -> MQTT gateway -> PostgreSQL.

The radio is the only fake (simulators/ble_peripheral.py plays the meters over the bridge's
transport interface); the broker is a private Mosquitto, the gateway a real `vigil gateway`
process and the database the test database. Each test asserts what ends up stored, quarantined
or asked of the meter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from device_gateway.ble.bridge import Bridge, BridgeConfig, BridgeDevice, BridgeTiming
from device_gateway.ble.forward import BrokerEndpoint, MqttUplink, parse_ack
from device_gateway.ble.store import Ack, BridgeStore
from device_gateway.ble.transport import (
    GLUCOSE_SERVICE,
    PAIRING_HINT,
    BleakAdvertised,
    BleakTransport,
    BluetoothUnavailable,
    GattTransport,
    PairingRequired,
    translate_bleak_error,
)
from services.cli_ble import ble_app, sync_command
from services.embedded import private_mosquitto
from services.settings import Settings
from simulators.ble_frames import RACP_NO_RECORDS_FOUND, RACP_SUCCESS
from simulators.ble_peripheral import (
    BloodPressureCuff,
    Faults,
    GlucoseMeter,
    Scale,
    SimulatedRadio,
    StoredBloodPressure,
    StoredGlucoseRecord,
    StoredWeight,
    glucose_history,
    glucose_value,
)
from tests.gateway_harness import GatewayProcess, gateway_env, seed_fleet
from tests.seed import seed_member

REPO = Path(__file__).resolve().parent.parent
METER = "C4:7C:8D:6A:11:02"
CUFF = "C4:7C:8D:6A:22:03"
SCALE = "C4:7C:8D:6A:33:04"
#: Seconds instead of the field defaults (a real meter is slower; the logic is the same).
FAST = BridgeTiming(
    scan_timeout=0.1, idle_timeout=3.0, settle=0.5, backoff_base=0.05, backoff_cap=0.2
)


def _start(n: int, every: timedelta = timedelta(hours=4)) -> datetime:
    """A start such that n records every `every` end yesterday (all plausible, none future)."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=1) - n * every


def _config(broker: str | None, *devices: tuple[str, str]) -> BridgeConfig:
    return BridgeConfig(
        timezone="UTC",
        broker=broker,
        devices=tuple(
            BridgeDevice(
                address=address, device_id=device_id, password=SecretStr(f"pw-{device_id}")
            )
            for address, device_id in devices
        ),
    )


def _uplink(broker: str) -> MqttUplink:
    return MqttUplink(BrokerEndpoint.parse(broker), resend_after=2.0, poll=0.05)


async def _deliver(bridge: Bridge, within: float = 30) -> None:
    async with asyncio.timeout(within):
        await bridge.deliver()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[str]:
    async with private_mosquitto(tmp_path) as url:
        yield url


@pytest.fixture
async def gateway(
    db: asyncpg.Pool, database_url: str, broker: str
) -> AsyncIterator[GatewayProcess]:
    g = GatewayProcess("ble", gateway_env(database_url, broker, f"g-{uuid.uuid4().hex[:6]}"))
    await g.start()
    yield g
    assert await g.stop() == 0


async def _seqs(db: asyncpg.Pool, device_id: str) -> list[int]:
    return [r["seq"] for r in await db.fetch(
        "SELECT seq FROM readings WHERE device_id = $1 ORDER BY seq", device_id
    )]  # fmt: skip


# --- end to end --------------------------------------------------------------------------------


async def test_300_records_through_a_dropped_link_are_stored_once_and_a_resync_asks_for_none(
    db: asyncpg.Pool, gateway: GatewayProcess, broker: str, tmp_path: Path
) -> None:
    [device_id] = await seed_fleet(db, 1, prefix="ble")
    meter = GlucoseMeter(METER, glucose_history(300, start=_start(300)),
                         faults=Faults(drop_link_after=120))  # fmt: skip
    radio = SimulatedRadio.with_devices(meter)
    config = _config(broker, (METER, device_id))
    with BridgeStore(tmp_path / "queue.sqlite3") as store:
        one_try = Bridge(radio, store, config, uplink=_uplink(broker),
                         timing=dataclasses.replace(FAST, attempts=1))  # fmt: skip
        [first], _ = await one_try.sync_in_range()
        # The link dropped after 120 records: what arrived whole is queued, nothing invented.
        assert first.error is not None and first.error.reason == "link_lost"
        assert (meter.racp_log[0].records_sent, meter.racp_log[0].dropped) == (120, True)
        assert (first.requested_from, first.queued) == (None, 120)
        await _deliver(one_try)
        assert await _seqs(db, device_id) == list(range(1, 121))
        assert store.last_acked_seq(device_id) == 120

        bridge = Bridge(radio, store, config, uplink=_uplink(broker), timing=FAST)
        [second], _ = await bridge.sync_in_range()  # reconnect: resume after the last ack
        assert second.ok and (second.requested_from, second.racp) == (121, "success")
        assert second.queued == 180
        await _deliver(bridge)
        assert store.pending() == 0 and store.last_acked_seq(device_id) == 300

        [third], _ = await bridge.sync_in_range()
        assert third.ok and (third.requested_from, third.racp, third.received) == (
            301,
            "no_records_found",
            0,
        )
    assert meter.errors == [] and meter.connections == 3
    last = meter.racp_log[-1]
    assert last.request is not None and last.request.min_sequence_number == 301
    assert last.response_code == RACP_NO_RECORDS_FOUND
    rows = await db.fetch(
        "SELECT seq, value, meal, clock_corrected FROM readings WHERE device_id = $1", device_id
    )
    assert len(rows) == 300 and len({r["seq"] for r in rows}) == 300
    assert all(r["value"] == glucose_value(r["seq"]) for r in rows)
    assert {r["seq"] for r in rows if r["meal"] is not None} == set(range(2, 301, 2))
    assert not any(r["clock_corrected"] for r in rows)
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 0


async def test_repeated_indications_and_resent_stored_measurements_are_stored_once(
    db: asyncpg.Pool, gateway: GatewayProcess, broker: str, tmp_path: Path
) -> None:
    [meter_id] = await seed_fleet(db, 1, prefix="ble")
    await seed_member(db, "m-bp", {"bp-1": "bp_monitor", "sc-1": "scale"}, timezone="UTC")
    day = datetime.now(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    pressures = [
        StoredBloodPressure(
            (128 + i, 0),
            (82, 0),
            (97, 0),
            day - timedelta(days=3 - i),
            pulse_rate=(64, 0),
            user_id=1,
        )
        for i in range(3)
    ]
    weights = [StoredWeight("81.25", day - timedelta(days=2)),
               StoredWeight("81.1", day - timedelta(days=1))]  # fmt: skip
    twice = Faults(duplicate_indications=True)
    meter = GlucoseMeter(METER, glucose_history(40, start=_start(40)), faults=twice)
    cuff = BloodPressureCuff(CUFF, pressures, faults=Faults(duplicate_indications=True))
    scale = Scale(SCALE, weights, faults=Faults(duplicate_indications=True))
    radio = SimulatedRadio.with_devices(meter, cuff, scale)
    config = _config(broker, (METER, meter_id), (CUFF, "bp-1"), (SCALE, "sc-1"))
    with BridgeStore(tmp_path / "queue.sqlite3") as store:
        uplink = _uplink(broker)
        bridge = Bridge(radio, store, config, uplink=uplink, timing=FAST)
        reports, missing = await bridge.sync_in_range()
        assert not missing and all(r.ok for r in reports)
        by_id = {r.device_id: r for r in reports}
        assert by_id[meter_id].duplicates == 40 + 20  # measurements and contexts sent twice
        assert (by_id["bp-1"].duplicates, by_id["bp-1"].queued) == (3, 3)
        assert (by_id["sc-1"].duplicates, by_id["sc-1"].queued) == (2, 2)
        await _deliver(bridge)
        # Cuffs and scales send their stored measurements again at the next connection.
        again, _ = await bridge.sync_in_range(addresses=[CUFF, SCALE])
        assert [r.queued for r in again] == [3, 2]
        await _deliver(bridge)
        assert store.pending() == 0
    assert uplink.stats["bp-1"].duplicate == 3 and uplink.stats["sc-1"].duplicate == 2
    glucose = await db.fetch("SELECT seq, meal FROM readings WHERE device_id = $1", meter_id)
    assert sorted(r["seq"] for r in glucose) == list(range(1, 41))
    # A repeated measurement must not release its twin without the context that follows it.
    assert {r["seq"] for r in glucose if r["meal"] is not None} == set(range(2, 41, 2))
    expected_bp = [int(p.timestamp.strftime("%Y%m%d%H%M%S")) * 1000 + 1 for p in pressures]  # type: ignore[union-attr]
    assert await _seqs(db, "bp-1") == expected_bp
    bp = await db.fetch("SELECT systolic, diastolic, pulse FROM readings WHERE device_id = 'bp-1' "
                        "ORDER BY seq")  # fmt: skip
    assert [(r["systolic"], r["diastolic"], r["pulse"]) for r in bp] == [
        (128, 82, 64), (129, 82, 64), (130, 82, 64)
    ]  # fmt: skip
    kg = await db.fetch("SELECT value FROM readings WHERE device_id = 'sc-1' ORDER BY seq")
    assert [r["value"] for r in kg] == [Decimal("81.25"), Decimal("81.1")]
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 0


async def test_a_reset_clock_meter_is_stored_clock_corrected_not_lost(
    db: asyncpg.Pool, gateway: GatewayProcess, broker: str, tmp_path: Path
) -> None:
    [device_id] = await seed_fleet(db, 1, prefix="ble")
    # Records 1-10 before a battery change, 11-20 after it: the clock restarted at 2000-01-01.
    records = glucose_history(20, start=_start(10), clock_reset_at=10)
    meter = GlucoseMeter(METER, records)
    with BridgeStore(tmp_path / "queue.sqlite3") as store:
        bridge = Bridge(SimulatedRadio.with_devices(meter), store,
                        _config(broker, (METER, device_id)), uplink=_uplink(broker),
                        timing=dataclasses.replace(FAST, scan_interval=0.2))  # fmt: skip
        stop = asyncio.Event()
        hub = asyncio.create_task(bridge.run(stop))  # `vigil ble bridge`: scan, sync, forward
        async with asyncio.timeout(30):
            while store.last_acked_seq(device_id) != 20:
                await asyncio.sleep(0.05)
        stop.set()
        await hub
        # Synced once: seen again within resync_after, the meter was left alone.
        assert len(meter.racp_log) == 1 and store.pending() == 0
    rows = await db.fetch(
        "SELECT seq, measured_at, effective_at, received_at, clock_corrected FROM readings "
        "WHERE device_id = $1 ORDER BY seq", device_id,
    )  # fmt: skip
    assert [r["seq"] for r in rows] == list(range(1, 21))
    assert [r["clock_corrected"] for r in rows] == [False] * 10 + [True] * 10
    for r in rows[10:]:
        assert r["measured_at"].year == 2000  # the device's own time is kept...
        assert r["effective_at"] == r["received_at"]  # ... and the receive time used
    assert all(r["effective_at"] == r["measured_at"] for r in rows[:10])


async def test_special_values_are_quarantined_and_undecodable_frames_skipped(
    db: asyncpg.Pool,
    gateway: GatewayProcess,
    broker: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    [device_id] = await seed_fleet(db, 1, prefix="ble")
    t0 = _start(6).replace(tzinfo=None)
    records = [
        StoredGlucoseRecord(1, t0, (112, -5)),
        StoredGlucoseRecord(2, t0 + timedelta(hours=1), (98, -5), meal=1),
        StoredGlucoseRecord(3, t0 + timedelta(hours=2), "reserved"),
        StoredGlucoseRecord(4, t0 + timedelta(hours=3), "NaN", meal=2),
        StoredGlucoseRecord(5, t0 + timedelta(hours=4), (187, -5), truncated=True),
        StoredGlucoseRecord(6, t0 + timedelta(hours=5), (143, -5)),
    ]
    radio = SimulatedRadio.with_devices(GlucoseMeter(METER, records))
    caplog.set_level(logging.WARNING, logger="device_gateway.ble")
    with BridgeStore(tmp_path / "queue.sqlite3") as store:
        uplink = _uplink(broker)
        bridge = Bridge(radio, store, _config(broker, (METER, device_id)), uplink=uplink,
                        timing=FAST)  # fmt: skip
        [report], _ = await bridge.sync_in_range()
        assert (report.queued, report.skipped) == (5, 1)
        await _deliver(bridge)
        assert store.pending() == 0 and store.last_acked_seq(device_id) == 6
    assert uplink.stats[device_id].rejected_reasons == {"special_value": 2}
    assert await _seqs(db, device_id) == [1, 2, 6]
    quarantined = await db.fetch(
        "SELECT seq, reason, raw FROM quarantine WHERE device_id = $1 ORDER BY seq", device_id
    )
    assert [(q["seq"], q["reason"]) for q in quarantined] == [(3, "special_value"),
                                                              (4, "special_value")]  # fmt: skip
    assert b'"value":"reserved"' in quarantined[0]["raw"]
    assert b'"value":"NaN"' in quarantined[1]["raw"]
    skipped = [r.getMessage() for r in caplog.records if "does not decode" in r.getMessage()]
    assert skipped == [
        f"{device_id}: skipped a Glucose Measurement (0x2A18) frame that does not decode "
        "(TruncatedFrame at concentration)"
    ]
    assert any("rejected seq 3: special_value" in r.getMessage() for r in caplog.records)
    # No reading content in the logs: no value, no time of the skipped or any other record.
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "187" not in text and str(t0.year) not in text


def _bridge_child() -> None:
    """The bridge as a process of its own (`vigil ble sync`'s coroutine over a simulated radio),
    for the restart test to SIGKILL. argv: config file, records, history start (ISO)."""
    config_path, n, start = sys.argv[1], int(sys.argv[2]), datetime.fromisoformat(sys.argv[3])
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    radio = SimulatedRadio.with_devices(GlucoseMeter(METER, glucose_history(n, start=start)))
    config = BridgeConfig.load(Path(config_path))
    asyncio.run(sync_command(Settings(), config, radio, ack_timeout=600, timing=FAST))


def _queued(path: Path) -> int:
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        db.close()


async def test_a_bridge_killed_before_its_acks_delivers_everything_once_after_restart(
    db: asyncpg.Pool, database_url: str, broker: str, tmp_path: Path
) -> None:
    [device_id] = await seed_fleet(db, 1, prefix="ble")
    state = tmp_path / "state"
    config_file = tmp_path / "ble.yaml"
    config_file.write_text(
        f"timezone: UTC\nbroker: {broker}\ndevices:\n"
        f"  - address: '{METER.lower()}'\n    device_id: {device_id}\n    password: s3cret-pw\n"
    )
    start = _start(300)
    env = {**os.environ, "VIGIL_STATE_DIR": str(state), "VIGIL_MQTT_URL": broker}
    queue = state / "ble" / "queue.sqlite3"
    with (tmp_path / "child.log").open("wb") as log:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from tests.test_ble_bridge import _bridge_child as c; c()",
            str(config_file), "300", start.isoformat(), env=env, cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            async with asyncio.timeout(30):  # downloaded and committed, no gateway: no ack
                while _queued(queue) < 300:
                    await asyncio.sleep(0.05)
        finally:
            child.kill()
            await child.wait()
    assert _queued(queue) == 300
    assert stat.S_IMODE(queue.stat().st_mode) == 0o600  # health data at rest: owner only

    gateway = GatewayProcess("ble-restart", gateway_env(database_url, broker, "g-ble-restart"))
    await gateway.start()
    try:
        settings = Settings(state_dir=str(state), mqtt_url=SecretStr(broker))
        config = BridgeConfig.load(config_file)
        # Restarted with the meter out of range: the queue alone delivers everything.
        restarted = await sync_command(settings, config, SimulatedRadio(), ack_timeout=30,
                                       timing=FAST, resend_after=2)  # fmt: skip
        assert (restarted.pending, restarted.not_in_range, restarted.exit_code) == (
            0, [device_id], 0
        )  # fmt: skip
        assert await _seqs(db, device_id) == list(range(1, 301))
        # The meter back in range: the RACP asks for what follows the last ack; nothing does.
        meter = GlucoseMeter(METER, glucose_history(300, start=start))
        later = await sync_command(settings, config, SimulatedRadio.with_devices(meter),
                                   ack_timeout=5, timing=FAST)  # fmt: skip
        [report] = later.reports
        assert (report.requested_from, report.racp, report.queued) == (301, "no_records_found", 0)
    finally:
        assert await gateway.stop() == 0
    assert await db.fetchval(
        "SELECT count(DISTINCT seq) FROM readings WHERE device_id = $1", device_id
    ) == 300  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 0


# --- without a broker: the queue, the radio edge, the command line -------------------------------


async def test_a_link_dropped_mid_download_is_resumed_within_one_sync(tmp_path: Path) -> None:
    meter = GlucoseMeter(METER, glucose_history(300, start=_start(300)),
                         faults=Faults(drop_link_after=120))  # fmt: skip
    with BridgeStore(tmp_path / "queue.sqlite3") as store:
        bridge = Bridge(SimulatedRadio.with_devices(meter), store,
                        _config(None, (METER, "gm-1")), timing=FAST)  # fmt: skip
        [report] = (await bridge.sync_in_range())[0]
        assert report.ok and report.attempts == 2
        # Nothing was acked between the two connections: the second asks for all again, and
        # the queue keeps the first 120 once.
        assert [e.records_sent for e in meter.racp_log] == [120, 300]
        assert meter.racp_log[1].response_code == RACP_SUCCESS
        assert (report.queued, report.already_queued, store.pending("gm-1")) == (300, 120, 300)


def test_the_queue_advances_only_on_acks_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "queue.sqlite3"
    with BridgeStore(path) as store:
        added = store.enqueue("gm-1", [(s, b'{"seq":%d}' % s) for s in (1, 2, 3, 4)])
        assert (added.added, added.already_queued) == (4, 0)
        again = store.enqueue("gm-1", [(2, b'{"seq":2}'), (3, b'{"other":3}')])
        assert (again.added, again.already_queued, again.conflicts) == (0, 2, (3,))
        assert store.last_acked_seq("gm-1") is None  # downloaded is not acknowledged
        result = store.acknowledge("gm-1", Ack(accepted=(3,), rejected=((4, "out_of_range"),)))
        assert (result.cleared, result.rejected, result.last_acked_seq) == (
            (3, 4), ((4, "out_of_range"),), 4
        )  # fmt: skip
        assert store.acknowledge("gm-1", Ack(duplicate=(4, 99))).cleared == ()
        assert store.due("gm-1", resend_after=30, limit=10) == [(1, b'{"seq":1}'),
                                                                (2, b'{"seq":2}')]  # fmt: skip
        store.mark_sent("gm-1", [1, 2])
        assert store.due("gm-1", resend_after=30, limit=10) == []
    with BridgeStore(path) as reopened:
        assert (reopened.pending("gm-1"), reopened.last_acked_seq("gm-1")) == (2, 4)
        reopened.acknowledge("gm-1", Ack(accepted=(1,)))
        assert reopened.last_acked_seq("gm-1") == 4  # never goes back
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_acks_parse_strictly() -> None:
    ack = b'{"accepted":[1,2],"duplicate":[],"rejected":[{"seq":null,"reason":"malformed_json"}]}'
    assert parse_ack(ack) == Ack((1, 2), (), ((None, "malformed_json"),))
    bad = [b"junk", b"[]", b'{"accepted":[true]}', b'{"rejected":[{"seq":1}]}', b'{"accepted":"1"}']
    assert [parse_ack(b) for b in bad] == [None] * len(bad)


class _BondingMeterClient:
    """Stands in for bleak's BleakClient (bleak-retry-connector builds and connects it): the
    connection succeeds, then enabling notifications fails as BlueZ fails it for a meter that
    requires a bond the hub does not have."""

    error: BaseException = RuntimeError("set by the test")

    def __init__(self, device: object, disconnected_callback: Any = None, **kwargs: Any) -> None:
        self.connected = False

    async def connect(self, **kwargs: Any) -> None:
        self.connected = True

    @property
    def is_connected(self) -> bool:
        return self.connected

    async def start_notify(self, characteristic: str, callback: Any, **kwargs: Any) -> None:
        raise self.error

    async def write_gatt_char(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("the RACP must not be written before the subscriptions succeed")

    async def disconnect(self) -> None:
        self.connected = False


def _auth_errors() -> list[BaseException]:
    from bleak.exc import BleakDBusError, BleakGATTProtocolError

    return [
        BleakDBusError("org.bluez.Error.AuthenticationFailed", []),
        BleakDBusError("org.bluez.Error.NotPermitted", ["Not paired"]),
        BleakGATTProtocolError(0x05),  # insufficient authentication
        BleakGATTProtocolError(0x0F),  # insufficient encryption
    ]


@pytest.mark.parametrize("error", _auth_errors(), ids=lambda e: type(e).__name__ + str(e.args[0]))
async def test_a_meter_that_requires_bonding_gets_the_pairing_message(
    error: BaseException, tmp_path: Path
) -> None:
    from bleak.backends.device import BLEDevice

    client = type("Client", (_BondingMeterClient,), {"error": error})
    transport = BleakTransport(client_class=client)
    ble_device = BLEDevice(METER, "Meter", {"path": "/org/bluez/hci0/dev_C4_7C_8D_6A_11_02"})
    found = BleakAdvertised(METER, "Meter", (GLUCOSE_SERVICE,), -60, ble_device)
    config = _config(None, (METER, "gm-1"))
    with BridgeStore(tmp_path / "queue.sqlite3") as store:
        report = await Bridge(transport, store, config, timing=FAST).sync(config.devices[0], found)
    assert isinstance(report.error, PairingRequired)
    assert report.attempts == 1  # retrying cannot help: the user must pair
    assert str(report.error) == f"{METER}: {PAIRING_HINT}"
    assert PAIRING_HINT == (
        "this meter requires bonding: pair it once with `bluetoothctl` or a pairing agent"
    )


def test_bleak_errors_translate_to_reasons() -> None:
    from bleak.exc import BleakDBusError, BleakError

    cases = {
        "bluetooth_unavailable": FileNotFoundError(2, "No such file or directory"),
        "pairing_required": BleakDBusError("org.bluez.Error.AuthenticationRejected", []),
        "connect_failed": BleakDBusError(
            "org.bluez.Error.Failed", ["le-connection-abort-by-local"]
        ),
    }
    for reason, exc in cases.items():
        assert translate_bleak_error(exc, METER, connecting=True).reason == reason
    dropped = translate_bleak_error(BleakError("x"), METER, connecting=False, still_connected=False)
    assert dropped.reason == "link_lost" and isinstance(dropped, ConnectionError)
    no_stack = BleakDBusError("org.freedesktop.DBus.Error.ServiceUnknown", ["no bluez"])
    assert (
        translate_bleak_error(no_stack, METER, connecting=False).reason == "bluetooth_unavailable"
    )


def _radio(monkeypatch: pytest.MonkeyPatch, radio: GattTransport) -> None:
    import services.cli_ble

    monkeypatch.setattr(services.cli_ble, "make_transport", lambda adapter: radio)


class _NoBluetooth:
    """A hub whose adapter is gone (BleakTransport raises this without BlueZ or D-Bus)."""

    async def scan(self, service_uuids: object, duration: float) -> list[Any]:
        raise BluetoothUnavailable("hci0")

    async def connect(self, device: object, *, on_disconnect: object = None) -> Any:
        raise AssertionError("nothing was found to connect to")


async def test_cli_sync_says_how_to_pair_and_scan_lists_meters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meter = GlucoseMeter(METER, glucose_history(3, start=_start(3)),
                         faults=Faults(requires_bonding=True))  # fmt: skip
    radio = SimulatedRadio.with_devices(meter, Scale(SCALE, []))
    config = tmp_path / "ble.yaml"
    config.write_text(f'{{"timezone": "UTC", "devices": [{{"address": "{METER}", '
                      f'"device_id": "gm-1", "password": "p"}}]}}')  # fmt: skip
    env = {"VIGIL_STATE_DIR": str(tmp_path / "state"), "VIGIL_LOG_LEVEL": "WARNING",
           "VIGIL_MQTT_URL": "mqtt://127.0.0.1:9"}  # fmt: skip
    runner = CliRunner()
    _radio(monkeypatch, radio)
    synced = await asyncio.to_thread(runner.invoke, ble_app, ["sync", "--config", str(config)],
                                     env=env)  # fmt: skip
    scanned = await asyncio.to_thread(runner.invoke, ble_app, ["scan", "--format", "json"],
                                      env=env)  # fmt: skip
    assert synced.exit_code == 2, synced.output
    assert f"vigil: gm-1: {METER}: {PAIRING_HINT}" in synced.stderr
    assert scanned.exit_code == 0, scanned.output
    assert scanned.stdout.strip() == (
        f'[{{"address": "{METER}", "name": "Sim Glucose", "kind": "glucose_meter"}}, '
        f'{{"address": "{SCALE}", "name": "Sim Scale", "kind": "scale"}}]'
    )
    _radio(monkeypatch, _NoBluetooth())
    no_radio = await asyncio.to_thread(runner.invoke, ble_app, ["sync", "--config", str(config)],
                                       env=env)  # fmt: skip
    assert no_radio.exit_code == 3 and "vigil: Bluetooth is not available" in no_radio.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("timezone: Mars/Olympus\ndevices: []\n")
    refused = CliRunner().invoke(ble_app, ["sync", "--config", str(broken)], env=env)
    assert refused.exit_code == 2 and "unknown time zone" in refused.stderr


def test_ble_scan_help() -> None:
    result = CliRunner().invoke(ble_app, ["scan", "--help"])
    assert result.exit_code == 0
    assert "0x1808" in result.stdout and "--timeout" in result.stdout
