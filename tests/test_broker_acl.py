"""Device identity at the broker, against a real Mosquitto running the generated files.

Each broker test provisions two devices with the same coroutines as `vigil devices provision`,
writes the files with `vigil broker config`'s coroutine (so the mosquitto.conf under test is the
one operators get, from services.embedded.mosquitto_config) and starts its own Mosquitto on a free
port under tmp_path; the shared broker on 1883 is never used.

What Mosquitto 2.0.11 does, as these tests pin down:
- a denied PUBLISH at QoS 1 gets PUBACK 0x87 (Not authorized) and reaches nobody;
- SUBSCRIBE is never refused by the acl_file plugin; `read` is enforced per delivered message,
  so a device subscribed to another device's acks never receives one;
- a refused CONNECT (wrong password, unknown user, anonymous) gets CONNACK 0x87;
- on SIGHUP it re-reads the password file and disconnects clients no longer in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest
import typer
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr
from typer.testing import CliRunner

from device_gateway.broker import (
    BrokerConfigError,
    BrokerFiles,
    BrokerSettings,
    GatewayIdentity,
    PasswordEntry,
    check_username,
    hash_password,
    parse_hash,
    password_entries,
    render_acl_file,
    render_password_file,
    verify_password,
)
from device_gateway.mqtt.topics import Topics
from services import devices
from services.cli_devices import (
    broker_app,
    broker_config_command,
    devices_app,
    provision_command,
    replace_command,
    revoke_command,
)
from services.devices import DeviceLifecycleError
from services.embedded import MOSQUITTO_BINARY, free_port, port_open
from services.errors import ConfigurationError
from services.settings import Settings
from simulators.meter import VirtualMeter
from tests.gateway_harness import (
    GatewayProcess,
    gateway_env,
    readings_for,
    running,
    wait_all_acked,
)
from tests.seed import seed_member

PREFIX = "vigil/v1"
TOPICS = Topics(PREFIX)
GATEWAY_USER = "vigil-gateway"
NOT_AUTHORIZED = 0x87
#: PUBACK of an accepted message: 0x00 Success, or 0x10 No matching subscribers.
ACCEPTED = {0x00, 0x10}
#: CONNACK for bad credentials: 0x86 Bad User Name or Password, or 0x87 Not authorized
#: (Mosquitto 2.0.11 answers 0x87 for a wrong password, an unknown user and anonymous alike).
REFUSED = {0x86, NOT_AUTHORIZED}
WAIT = 5.0  # seconds for anything a local broker should do at once


def code(rc: Any) -> int:
    return int(rc.value if isinstance(rc, ReasonCode) else rc)


class RecordingClient(aiomqtt.Client):
    """aiomqtt 2.x drops the PUBACK reason code (MQTT 5 §3.4.2.1); keep it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.puback_codes: list[int] = []

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:  # fmt: skip
        self.puback_codes.append(code(reason_code))
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_code(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        await self.publish(topic, payload, qos=1, timeout=WAIT)
        return self.puback_codes[-1]


# --- a broker of our own, running the generated files ------------------------------------------


@dataclass
class Fleet:
    settings: Settings
    broker: BrokerSettings
    files: BrokerFiles
    port: int
    passwords: dict[str, str]
    gateway_password: str
    pid: int = 0

    @property
    def gateway_url(self) -> str:
        return self.settings.mqtt_url.get_secret_value()

    def client(self, username: str | None, password: str | None, **kw: Any) -> RecordingClient:
        kw.setdefault("identifier", f"t-{username}-{uuid.uuid4().hex[:6]}")
        return RecordingClient("127.0.0.1", self.port, username=username, password=password,
                               protocol=aiomqtt.ProtocolVersion.V5, timeout=WAIT, **kw)  # fmt: skip

    def device(self, device_id: str, **kw: Any) -> RecordingClient:
        return self.client(device_id, self.passwords[device_id], **kw)

    def gateway(self, **kw: Any) -> RecordingClient:
        return self.client(GATEWAY_USER, self.gateway_password, **kw)


def fleet_settings(settings: Settings, tmp_path: Path, port: int) -> tuple[Settings, str]:
    password = secrets.token_urlsafe(16)
    url = f"mqtt://{GATEWAY_USER}:{password}@127.0.0.1:{port}"
    return settings.model_copy(update={"mqtt_url": SecretStr(url),
                                       "state_dir": str(tmp_path / "state")}), password  # fmt: skip


@contextlib.asynccontextmanager
async def mosquitto(files: BrokerFiles, port: int, pidfile: Path) -> AsyncIterator[int]:
    """Run Mosquitto with `files` (the generated mosquitto.conf); yields its pid."""
    if not MOSQUITTO_BINARY.is_file():
        pytest.skip("mosquitto is not installed (scripts/bootstrap.sh)")
    with (files.directory / "stderr.log").open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(MOSQUITTO_BINARY), "-c", str(files.config), stdin=subprocess.DEVNULL,
            stdout=out, stderr=out,
        )  # fmt: skip
    await asyncio.to_thread(pidfile.write_text, f"{proc.pid}\n")
    try:
        async with asyncio.timeout(10):
            while not await port_open("127.0.0.1", port, limit=0.5):
                assert proc.returncode is None, (files.directory / "stderr.log").read_text()
                await asyncio.sleep(0.05)
        yield proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(10):
                await proc.wait()


@pytest.fixture
async def fleet(db: asyncpg.Pool, settings: Settings, tmp_path: Path) -> AsyncIterator[Fleet]:
    """Devices gm-a (member m-a) and gm-b (m-b), provisioned; a broker running their files."""
    port = free_port()
    s, gateway_password = fleet_settings(settings, tmp_path, port)
    broker_dir = tmp_path / "broker"
    pidfile = tmp_path / "mosquitto.pid"
    passwords = {}
    for device_id, member_id in (("gm-a", "m-a"), ("gm-b", "m-b")):
        await seed_member(db, member_id, devices={}, timezone="UTC")
        outcome = await provision_command(s, BrokerSettings(dir=str(broker_dir)), device_id,
                                          "glucose_meter", member_id=member_id,
                                          from_day=date(2026, 1, 1))  # fmt: skip
        passwords[device_id] = outcome.result.password
    files = await broker_config_command(
        s, broker_dir, port=port, log_file=tmp_path / "mosquitto.log",
        run_as=pwd.getpwuid(os.geteuid()).pw_name,
    )  # fmt: skip
    f = Fleet(s, BrokerSettings(dir=str(broker_dir), pidfile=str(pidfile)), files, port,
              passwords, gateway_password)  # fmt: skip
    async with mosquitto(files, port, pidfile) as pid:
        f.pid = pid
        yield f


async def receive_until(
    client: aiomqtt.Client, done: Callable[[aiomqtt.Message], bool], timeout: float = WAIT
) -> list[aiomqtt.Message]:
    """Every message until (and including) the first for which `done` is true."""
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            got.append(message)
            if done(message):
                return got
    raise AssertionError("unreachable: the message iterator ended")  # pragma: no cover


async def drain(client: aiomqtt.Client) -> None:
    """Read until the connection ends (MqttError); TimeoutError if it does not within WAIT."""
    async with asyncio.timeout(WAIT):
        async for _ in client.messages:
            pass


def is_payload(payload: bytes) -> Callable[[aiomqtt.Message], bool]:
    return lambda m: m.payload == payload


async def connect_code(client: aiomqtt.Client) -> int:
    with pytest.raises(MqttConnectError) as refused:
        async with client:
            pass
    return code(refused.value.rc)


# --- the $7$ format and the generated text (no broker) -----------------------------------------


def test_hash_format_is_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto)")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-b", "-c", str(path), "meter-1", "s3cret pass"], check=True,
                   timeout=10)  # fmt: skip
    user, encoded = path.read_text().strip().split(":", 1)
    iterations, salt, digest = parse_hash(encoded)
    assert (user, encoded[:7], iterations, len(salt), len(digest)) == (
        "meter-1", "$7$101$", 101, 12, 64
    )  # fmt: skip
    # Same password and salt: byte-for-byte the line the real tool wrote.
    assert hash_password("s3cret pass", salt=salt) == encoded
    assert verify_password("s3cret pass", encoded)
    assert not verify_password("s3cret pasS", encoded)
    ours = hash_password("x")
    assert [len(p) for p in ours.split("$")] == [0, 1, 3, 16, 88]  # same layout as the tool's


@pytest.mark.parametrize(
    "encoded",
    [
        "$6$c2FsdA==$aGFzaA==",  # sha512 without PBKDF2 (mosquitto_passwd -H sha512)
        "$7$101$c2FsdA==",
        "$7$0$c2FsdA==$" + "A" * 88,
        "$7$101$c2FsdA==$aGFzaA==",  # digest not 64 bytes
        "$7$101$c2F*dA==$" + "A" * 88,
        "plain",
    ],
)
def test_malformed_hashes_are_refused(encoded: str) -> None:
    with pytest.raises(BrokerConfigError) as err:
        parse_hash(encoded)
    assert err.value.reason == "invalid_hash"


def test_acl_file_grants_devices_their_own_topics_and_the_gateway_the_rest() -> None:
    text = render_acl_file("vigil/v1", "vigil-gateway")
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == [
        "pattern write vigil/v1/devices/%u/readings",
        "pattern write vigil/v1/devices/%u/status",
        "pattern read vigil/v1/devices/%u/acks",
        "pattern read vigil/v1/devices/%u/messages",
        "user vigil-gateway",
        "topic read vigil/v1/devices/+/readings",
        "topic read vigil/v1/devices/+/status",
        "topic write vigil/v1/devices/+/acks",
        "topic write vigil/v1/devices/+/messages",
    ]
    for prefix in ("vigil/+", "a//b", "%u/x", "has space", ""):
        with pytest.raises(BrokerConfigError):
            render_acl_file(prefix, "vigil-gateway")


@pytest.mark.parametrize(
    "username",
    ["", "gm:1", "gm/1", "gm+1", "#", "gm 1", "-gm", ".gm", "g" * 65, "gm\n1", "gmé"],
)
def test_names_that_cannot_be_broker_users_are_refused(username: str) -> None:
    with pytest.raises(BrokerConfigError) as err:
        check_username(username)
    assert err.value.reason == "invalid_username"


def test_password_file_lists_hashes_sorted_and_refuses_a_device_named_like_the_gateway() -> None:
    gateway = GatewayIdentity("vigil-gateway", "gw-secret")
    a, b = hash_password("pa"), hash_password("pb")
    text = render_password_file(password_entries([PasswordEntry("gm-b", b),
                                                  PasswordEntry("gm-a", a)], gateway))  # fmt: skip
    lines = text.splitlines()
    assert lines[:2] == [f"gm-a:{a}", f"gm-b:{b}"]
    assert lines[2].startswith("vigil-gateway:$7$101$")
    assert verify_password("gw-secret", lines[2].split(":", 1)[1])
    assert "gw-secret" not in text
    with pytest.raises(BrokerConfigError) as err:
        password_entries([PasswordEntry("vigil-gateway", a)], gateway)
    assert err.value.reason == "duplicate_username"
    with pytest.raises(BrokerConfigError) as err:
        GatewayIdentity.from_url("mqtt://127.0.0.1:1883")
    assert err.value.reason == "no_gateway_credentials"


# --- the ACL, enforced by a real Mosquitto ------------------------------------------------------


async def test_a_device_cannot_publish_as_another_device(fleet: Fleet) -> None:
    async with fleet.gateway() as gateway, fleet.device("gm-a") as device:
        await gateway.subscribe("#", qos=1)  # everything the gateway user may read
        denied = [
            TOPICS.device("gm-b", "readings"), TOPICS.device("gm-b", "status"),
            TOPICS.device("gm-a", "acks"), TOPICS.device("gm-a", "messages"),
            TOPICS.device("gm-b", "acks"), f"{PREFIX}/devices", "elsewhere/topic",
        ]  # fmt: skip
        codes = [await device.publish_code(topic, b"spoof") for topic in denied]
        assert codes == [NOT_AUTHORIZED] * len(denied)
        # Its own readings go through. One publisher's messages arrive in order, so once this
        # one is in, any spoof the broker had let through would have arrived before it.
        assert await device.publish_code(TOPICS.device("gm-a", "readings"), b"mine") == 0
        got = await receive_until(gateway, is_payload(b"mine"))
    assert [(m.topic.value, m.payload) for m in got] == [
        (TOPICS.device("gm-a", "readings"), b"mine")
    ]


async def test_a_device_cannot_read_another_devices_acks_or_messages(fleet: Fleet) -> None:
    async with (
        fleet.gateway() as gateway,
        fleet.device("gm-a") as a,
        fleet.device("gm-b") as b,
    ):
        filters = [TOPICS.device("gm-b", "acks"), TOPICS.device("gm-b", "messages"),
                   TOPICS.all_devices("acks"), "#"]  # fmt: skip
        for topic in filters:
            granted = await a.subscribe(topic, qos=1, timeout=WAIT)
            # Mosquitto 2.0's acl_file grants every SUBSCRIBE and checks `read` per message;
            # a refusal (0x87) would be as good.
            assert code(granted[0]) in {0, 1, NOT_AUTHORIZED}
        await b.subscribe(TOPICS.device("gm-b", "acks"), qos=1, timeout=WAIT)
        await gateway.publish(TOPICS.device("gm-b", "acks"), b"for-b", qos=1, timeout=WAIT)
        await gateway.publish(TOPICS.device("gm-b", "messages"), b"note-b", qos=1, timeout=WAIT)
        await gateway.publish(TOPICS.device("gm-a", "acks"), b"for-a", qos=1, timeout=WAIT)
        got_a = await receive_until(a, is_payload(b"for-a"))
        got_b = await receive_until(b, is_payload(b"for-b"))  # the owner does get its ack
    assert {(m.topic.value, m.payload) for m in got_a} == {(TOPICS.device("gm-a", "acks"),
                                                            b"for-a")}  # fmt: skip
    assert [m.payload for m in got_b] == [b"for-b"]


async def test_wrong_password_unknown_user_and_anonymous_are_refused(fleet: Fleet) -> None:
    assert await connect_code(fleet.client("gm-a", fleet.passwords["gm-b"])) in REFUSED
    assert await connect_code(fleet.client("gm-zz", fleet.passwords["gm-a"])) in REFUSED
    assert await connect_code(fleet.client(None, None)) in REFUSED
    assert await connect_code(fleet.client(GATEWAY_USER, fleet.passwords["gm-a"])) in REFUSED
    async with fleet.device("gm-a"):  # and the right password is accepted
        pass


async def test_the_gateway_reads_through_its_shared_subscription_and_acks(fleet: Fleet) -> None:
    async with fleet.gateway() as gateway, fleet.device("gm-a") as device:
        for channel in ("readings", "status"):  # exactly what the worker subscribes
            granted = await gateway.subscribe(TOPICS.shared("g1", channel), qos=1, timeout=WAIT)
            assert code(granted[0]) == 1
        await device.subscribe(TOPICS.device("gm-a", "acks"), qos=1, timeout=WAIT)
        assert await device.publish_code(TOPICS.device("gm-a", "status"), b"up") == 0
        assert await device.publish_code(TOPICS.device("gm-a", "readings"), b"r1") == 0
        got = await receive_until(gateway, is_payload(b"r1"))
        assert [(m.topic.value, m.payload) for m in got] == [
            (TOPICS.device("gm-a", "status"), b"up"), (TOPICS.device("gm-a", "readings"), b"r1"),
        ]  # fmt: skip
        assert await gateway.publish_code(TOPICS.device("gm-a", "acks"), b"ack-r1") == 0
        assert await gateway.publish_code(TOPICS.device("gm-b", "messages"), b"hi") in ACCEPTED
        assert [m.payload for m in await receive_until(device, is_payload(b"ack-r1"))] == [
            b"ack-r1"
        ]
        # Nothing else: the gateway cannot speak for a device.
        for topic in (TOPICS.device("gm-a", "readings"), TOPICS.device("gm-a", "status"), "x/y"):
            assert await gateway.publish_code(topic, b"forged") == NOT_AUTHORIZED


async def test_a_last_will_is_delivered_only_on_the_devices_own_status(fleet: Fleet) -> None:
    async with fleet.gateway() as gateway:
        await gateway.subscribe(TOPICS.all_devices("status"), qos=1, timeout=WAIT)
        for target in ("gm-b", "gm-a"):  # the foreign will first: order makes the check sound
            will = aiomqtt.Will(TOPICS.device(target, "status"), f"will-{target}".encode(), qos=1)
            device = fleet.device("gm-a", will=will)
            await device.__aenter__()
            # DISCONNECT with reason 0x04 "Disconnect with Will Message": the broker sends it.
            device._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
            with contextlib.suppress(aiomqtt.MqttError):
                await drain(device)
            await device.__aexit__(None, None, None)
        got = await receive_until(gateway, is_payload(b"will-gm-a"))
    assert [(m.topic.value, m.payload) for m in got] == [
        (TOPICS.device("gm-a", "status"), b"will-gm-a")
    ]


async def test_a_device_taking_over_a_gateway_session_receives_nothing(fleet: Fleet) -> None:
    """A stolen client id resumes the session (Mosquitto does not tie client ids to users) but
    `read` is checked again on delivery: the queued readings never reach the device."""
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    session = {"identifier": "vigil-gw-takeover", "clean_start": False, "properties": props}
    async with fleet.gateway(**session) as gateway:
        await gateway.subscribe(TOPICS.shared("g2", "readings"), qos=1, timeout=WAIT)
    async with fleet.device("gm-b") as b:
        assert await b.publish_code(TOPICS.device("gm-b", "readings"), b"queued") == 0
    async with fleet.device("gm-a", **session) as thief:
        await thief.publish(TOPICS.device("gm-a", "readings"), b"marker", qos=1, timeout=WAIT)
        with pytest.raises(TimeoutError):
            await receive_until(thief, lambda _: True, timeout=1.0)


# --- revocation and rotation --------------------------------------------------------------------


async def test_revoke_disconnects_the_device_and_it_cannot_reconnect(
    fleet: Fleet, db: asyncpg.Pool
) -> None:
    device = fleet.device("gm-a")
    await device.__aenter__()
    await device.subscribe(TOPICS.device("gm-a", "acks"), qos=1, timeout=WAIT)
    outcome = await revoke_command(fleet.settings, fleet.broker, "gm-a")
    assert outcome.result is True
    assert (outcome.broker.reloaded_pid, outcome.broker.reload_error) == (fleet.pid, None)
    # The reload drops the connection of a user no longer in the password file.
    with pytest.raises(aiomqtt.MqttError):
        await drain(device)
    await device.__aexit__(None, None, None)
    assert await connect_code(fleet.device("gm-a")) in REFUSED
    async with fleet.device("gm-b"):  # the others are untouched
        pass
    assert await db.fetchval("SELECT status FROM devices WHERE id = 'gm-a'") == "revoked"
    assert await db.fetchval("SELECT count(*) FROM device_credentials "
                             "WHERE device_id = 'gm-a' AND revoked_at IS NULL") == 0  # fmt: skip
    users = [line.split(":")[0] for line in fleet.files.password_file.read_text().splitlines()]
    assert users == ["gm-b", GATEWAY_USER]
    again = await revoke_command(fleet.settings, fleet.broker, "gm-a")
    assert again.result is False


async def test_provisioning_again_rotates_the_password(fleet: Fleet, db: asyncpg.Pool) -> None:
    outcome = await provision_command(fleet.settings, fleet.broker, "gm-a", "glucose_meter")
    new = outcome.result.password
    assert outcome.broker.reloaded_pid == fleet.pid
    assert new != fleet.passwords["gm-a"]
    async with asyncio.timeout(WAIT):  # the reload is asynchronous: wait until it took effect
        while True:
            with contextlib.suppress(aiomqtt.MqttError):
                async with fleet.client("gm-a", new):
                    break
            await asyncio.sleep(0.05)
    assert await connect_code(fleet.device("gm-a")) in REFUSED
    rows = await db.fetch("SELECT password_hash, revoked_at FROM device_credentials "
                          "WHERE device_id = 'gm-a' ORDER BY id")  # fmt: skip
    assert [r["revoked_at"] is None for r in rows] == [False, True]
    assert verify_password(new, rows[1]["password_hash"])
    # No plaintext anywhere we write: not in the database, not in the broker's files.
    for path in fleet.files.directory.iterdir():
        if path.is_file():
            text = path.read_text(errors="replace")
            assert new not in text and fleet.gateway_password not in text, path
            assert fleet.passwords["gm-b"] not in text, path
    assert oct(fleet.files.password_file.stat().st_mode & 0o777) == "0o640"


# --- the lifecycle in the database --------------------------------------------------------------


@pytest.fixture
async def lifecycle(db: asyncpg.Pool, settings: Settings, tmp_path: Path) -> Settings:
    await seed_member(db, "m-chi", devices={}, timezone="America/Chicago")
    await seed_member(db, "m-ny", devices={}, timezone="America/New_York")
    return fleet_settings(settings, tmp_path, 1883)[0]


async def test_assignments_start_at_the_members_midnight_and_hand_over(
    lifecycle: Settings, db: asyncpg.Pool
) -> None:
    broker = BrokerSettings()
    await provision_command(lifecycle, broker, "bp-1", "bp_monitor", member_id="m-chi",
                            from_day=date(2026, 10, 1))  # fmt: skip
    async with db.acquire() as conn, devices.lifecycle_transaction(conn):
        same = await devices.assign(conn, "bp-1", "m-chi", now=datetime.now(UTC),
                                    from_day=date(2026, 11, 1))  # fmt: skip
        moved = await devices.assign(conn, "bp-1", "m-ny", now=datetime.now(UTC),
                                     from_day=date(2026, 12, 1))  # fmt: skip
    assert not same.changed
    assert moved.ended == ("m-chi", datetime(2026, 12, 1, 5, tzinfo=UTC))  # midnight EST
    rows = await db.fetch("SELECT member_id, assigned_from, assigned_to FROM device_assignments "
                          "ORDER BY assigned_from")  # fmt: skip
    assert [tuple(r) for r in rows] == [
        ("m-chi", datetime(2026, 10, 1, 5, tzinfo=UTC), datetime(2026, 12, 1, 5, tzinfo=UTC)),
        ("m-ny", datetime(2026, 12, 1, 5, tzinfo=UTC), None),
    ]
    with pytest.raises(DeviceLifecycleError) as err:  # before the current holding began
        async with db.acquire() as conn, devices.lifecycle_transaction(conn):
            await devices.assign(conn, "bp-1", "m-chi", now=datetime.now(UTC),
                                 from_day=date(2026, 11, 15))  # fmt: skip
    assert err.value.reason == "assignment_conflict"


async def test_replace_hands_the_member_a_new_meter_from_now(
    lifecycle: Settings, db: asyncpg.Pool
) -> None:
    broker = BrokerSettings()
    await provision_command(lifecycle, broker, "gm-old", "glucose_meter", member_id="m-chi",
                            from_day=date(2026, 1, 1))  # fmt: skip
    now = datetime(2026, 6, 15, 12, 30, tzinfo=UTC)
    outcome = await replace_command(lifecycle, broker, "gm-old", "gm-new", now=now)
    assert (outcome.result.member_id, outcome.result.at) == ("m-chi", now)
    rows = await db.fetch("SELECT device_id, member_id, assigned_from, assigned_to "
                          "FROM device_assignments ORDER BY device_id")  # fmt: skip
    assert [tuple(r) for r in rows] == [
        ("gm-new", "m-chi", now, None),
        ("gm-old", "m-chi", datetime(2026, 1, 1, 6, tzinfo=UTC), now),
    ]
    status = {r["id"]: r["status"] for r in await db.fetch("SELECT id, status FROM devices")}
    assert status == {"gm-old": "retired", "gm-new": "active"}
    live = await db.fetch("SELECT device_id FROM device_credentials WHERE revoked_at IS NULL")
    assert [r["device_id"] for r in live] == ["gm-new"]
    users = outcome.broker.files.password_file.read_text()
    assert users.startswith("gm-new:$7$") and "gm-old" not in users
    assert verify_password(outcome.result.issued.password, users.split(":", 1)[1].split()[0])


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda s, b: provision_command(s, b, "gm:1", "glucose_meter"), "invalid_device_id"),
        (lambda s, b: provision_command(s, b, GATEWAY_USER, "scale"), "invalid_device_id"),
        (lambda s, b: provision_command(s, b, "gm-1", "toaster"), "invalid_kind"),
        (lambda s, b: provision_command(s, b, "gm-1", "scale", member_id="m"), "unknown_member"),
        (lambda s, b: provision_command(s, b, "gm-held", "scale"), "kind_mismatch"),
        (lambda s, b: provision_command(s, b, "gm-gone", "glucose_meter"), "device_not_active"),
        (lambda s, b: replace_command(s, b, "gm-held", "gm-held"), "same_device"),
        (lambda s, b: replace_command(s, b, "gm-nope", "gm-1"), "unknown_device"),
        (lambda s, b: replace_command(s, b, "gm-free", "gm-1"), "not_assigned"),
        (lambda s, b: replace_command(s, b, "gm-held", "gm-held2"), "assignment_conflict"),
        (lambda s, b: revoke_command(s, b, "gm-nope"), "unknown_device"),
    ],
)
async def test_lifecycle_errors_name_their_reason_and_change_nothing(
    lifecycle: Settings, db: asyncpg.Pool, call: Any, reason: str
) -> None:
    broker = BrokerSettings()
    for device_id, member in (("gm-held", "m-chi"), ("gm-held2", "m-ny"), ("gm-free", None),
                              ("gm-gone", None)):  # fmt: skip
        await provision_command(lifecycle, broker, device_id, "glucose_meter", member_id=member)
    await revoke_command(lifecycle, broker, "gm-gone")
    state = "SELECT (SELECT array_agg(c ORDER BY id)::text FROM device_credentials c), "\
            "(SELECT array_agg(d ORDER BY id)::text FROM devices d), "\
            "(SELECT array_agg(a ORDER BY id)::text FROM device_assignments a)"  # fmt: skip
    before = tuple(await db.fetchrow(state))  # type: ignore[arg-type]
    with pytest.raises(DeviceLifecycleError) as err:
        await call(lifecycle, broker)
    assert err.value.reason == reason
    assert tuple(await db.fetchrow(state)) == before  # type: ignore[arg-type]


async def test_a_change_whose_broker_files_cannot_be_written_is_rolled_back(
    lifecycle: Settings, db: asyncpg.Pool, tmp_path: Path
) -> None:
    good = BrokerSettings(dir=str(tmp_path / "ok"))
    await provision_command(lifecycle, good, "gm-1", "glucose_meter")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with pytest.raises(ConfigurationError, match="cannot write the broker files"):
        await revoke_command(lifecycle, BrokerSettings(dir=str(blocked)), "gm-1")
    assert await db.fetchval("SELECT status FROM devices WHERE id = 'gm-1'") == "active"
    assert await db.fetchval("SELECT count(*) FROM device_credentials "
                             "WHERE revoked_at IS NULL") == 1  # fmt: skip


# --- the CLI ------------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(devices_app, name="devices")
    app.add_typer(broker_app, name="broker")
    return app


@pytest.fixture
def cli_env(lifecycle: Settings, tmp_path: Path) -> dict[str, str]:
    return {
        "VIGIL_DATABASE_URL": lifecycle.dsn(),
        "VIGIL_MQTT_URL": lifecycle.mqtt_url.get_secret_value(),
        "VIGIL_BROKER_DIR": str(tmp_path / "cli-broker"),
        "VIGIL_ENV": "test",
        "VIGIL_LOG_LEVEL": "WARNING",
    }


async def test_cli_shows_the_password_once_and_stores_only_its_hash(
    cli_env: dict[str, str], db: asyncpg.Pool, tmp_path: Path
) -> None:
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(_cli(), list(args), env=cli_env, catch_exceptions=False)

    done = await asyncio.to_thread(
        invoke, "devices", "provision", "sc-1", "--kind", "scale", "--member", "m-ny",
        "--from", "2026-03-01", "--format", "json",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    shown = json.loads(done.stdout)
    assert (shown["username"], shown["kind"]) == ("sc-1", "scale")
    stored = await db.fetchval("SELECT password_hash FROM device_credentials")
    assert verify_password(shown["password"], stored) and shown["password"] not in stored
    assert (tmp_path / "cli-broker" / "passwd").read_text().startswith(f"sc-1:{stored}\n")
    revoked = await asyncio.to_thread(invoke, "devices", "revoke", "sc-1")
    assert (revoked.exit_code, revoked.stdout) == (0, "sc-1 revoked\n")
    assert shown["password"] not in revoked.output
    unknown = await asyncio.to_thread(invoke, "devices", "revoke", "sc-404")
    assert (unknown.exit_code, unknown.stdout) == (2, "")
    assert "sc-404: no such device" in unknown.stderr
    bad_day = await asyncio.to_thread(invoke, "devices", "assign", "sc-1", "m-ny", "--from", "1/3")
    assert bad_day.exit_code == 2
    stale = dict(cli_env, VIGIL_BROKER_PIDFILE=str(tmp_path / "none.pid"))
    rotated = await asyncio.to_thread(
        runner.invoke, _cli(), ["devices", "provision", "sc-2", "--kind", "scale"], env=stale
    )
    assert rotated.exit_code == 3  # committed and written, but no broker to reload
    assert "password: " in rotated.stdout  # ... and the password was still shown


# --- end to end: provisioned meters through a gateway worker ------------------------------------


async def test_provisioned_meters_are_served_and_a_revoked_one_is_shut_out(
    fleet: Fleet, db: asyncpg.Pool, database_url: str
) -> None:
    env = gateway_env(database_url, fleet.gateway_url, f"g-{uuid.uuid4().hex[:6]}")
    worker = GatewayProcess("acl-e2e", env)
    await worker.start()
    meters = {
        d: VirtualMeter(d, port=fleet.port, username=d, password=fleet.passwords[d],
                        resend_after=3.0)
        for d in ("gm-a", "gm-b")
    }  # fmt: skip
    for d, meter in meters.items():
        meter.record(readings_for(d, 20))
    try:
        async with running(list(meters.values())):
            await wait_all_acked(list(meters.values()), timeout=30)
        rows = await db.fetch("SELECT device_id, count(*) FROM readings GROUP BY 1")
        counts = {r["device_id"]: r["count"] for r in rows}
        assert counts == {"gm-a": 20, "gm-b": 20}
        assert all(sorted(m.acked) == list(range(1, 21)) for m in meters.values())

        outcome = await revoke_command(fleet.settings, fleet.broker, "gm-b")
        assert outcome.broker.reloaded_pid == fleet.pid
        assert await connect_code(fleet.device("gm-b")) in REFUSED
        # The gateway and the other meter carry on.
        meters["gm-a"].record(readings_for("gm-a", 25)[20:])
        async with running([meters["gm-a"]]):
            await wait_all_acked([meters["gm-a"]], timeout=30)
        assert await db.fetchval("SELECT count(*) FROM readings WHERE device_id = 'gm-a'") == 25
    finally:
        assert await worker.stop() == 0
