"""The member app API (`vigil api`) against the real PostgreSQL, through its ASGI interface.

httpx is not installed in this project (and Starlette's TestClient needs it), so `AsgiClient`
below plays httpx's ASGITransport: it runs the app's lifespan (the real pool and pipeline) and
sends each request as ASGI messages, the way uvicorn does.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import orjson
import pytest
from fastapi import FastAPI

from services.api import ApiSettings, create_app, revoke_member_tokens
from services.api.tokens import token_hash
from services.settings import Settings
from tests.seed import seed_member

BIRTH_DATE = "1960-01-01"  # tests/seed.py's members


# --- an ASGI client ----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return orjson.loads(self.content)


class AsgiClient:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._state: dict[str, Any] = {}
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiClient:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self._state}
        self._task = asyncio.create_task(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._from_app.get()
        assert message["type"] == "lifespan.startup.complete", message
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        message = await self._from_app.get()
        assert message["type"] == "lifespan.shutdown.complete", message
        assert self._task is not None
        await self._task

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        client_ip: str = "203.0.113.7",
        chunked: bool = False,
    ) -> Reply:
        body = orjson.dumps(json) if json is not None else (content or b"")
        raw_headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
        if not chunked:
            raw_headers.append((b"content-length", str(len(body)).encode()))
        if token is not None:
            raw_headers.append((b"authorization", f"Bearer {token}".encode()))
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": urlencode(params or {}).encode(),
            "headers": raw_headers, "client": (client_ip, 50000), "server": ("testserver", 80),
            "state": dict(self._state),
        }  # fmt: skip
        chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
        incoming = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        done = asyncio.Event()
        start: dict[str, Any] = {}
        parts: list[bytes] = []

        async def receive() -> dict[str, Any]:
            if incoming:
                return incoming.pop(0)
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        await self.app(scope, receive, send)
        hdrs = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
        return Reply(start["status"], hdrs, b"".join(parts))


# --- fixtures and helpers ----------------------------------------------------------------------


def _config(**kw: Any) -> ApiSettings:
    values: dict[str, Any] = {"signup_burst": 100, "body_factor": 1, "max_batch_readings": 50}
    return ApiSettings(**{**values, **kw})


@pytest.fixture
async def api(db: asyncpg.Pool, settings: Settings) -> AsyncIterator[AsgiClient]:
    async with AsgiClient(create_app(settings, _config())) as client:
        yield client


async def _member(
    db: asyncpg.Pool,
    member_id: str,
    devices: dict[str, str] | None = None,
    *,
    client_id: str = "acme",
    external_id: str | None = None,
) -> None:
    await seed_member(db, member_id, devices if devices is not None else {}, client_id=client_id)
    if external_id is not None:
        await db.execute("UPDATE members SET external_id = $2 WHERE id = $1", member_id,
                         external_id)  # fmt: skip


async def _signup(api: AsgiClient, member_id: str, client_id: str = "acme") -> str:
    r = await api.request("POST", "/v1/signup", json={
        "client_id": client_id, "member_id": member_id, "birth_date": BIRTH_DATE})  # fmt: skip
    assert r.status == 201, r.content
    token: str = r.json()["token"]
    return token


def ago(**kw: float) -> str:
    return (datetime.now(UTC) - timedelta(**kw)).isoformat()


def glucose(device: str, seq: int, value: float | None, at: str, **kw: Any) -> dict[str, Any]:
    reading = {"device_id": device, "seq": seq, "kind": "glucose", "measured_at": at,
               "value": value, "unit": "mg/dL", **kw}  # fmt: skip
    return {k: v for k, v in reading.items() if v is not None}


def pressure(device: str, seq: int, systolic: int, diastolic: int, at: str) -> dict[str, Any]:
    return {"device_id": device, "seq": seq, "kind": "blood_pressure", "measured_at": at,
            "systolic": systolic, "diastolic": diastolic, "unit": "mmHg"}  # fmt: skip


def weight(device: str, seq: int, kg: float, at: str) -> dict[str, Any]:
    return {"device_id": device, "seq": seq, "kind": "weight", "measured_at": at,
            "value": kg, "unit": "kg"}  # fmt: skip


async def _post(api: AsgiClient, token: str, readings: list[Any], **kw: Any) -> Reply:
    return await api.request("POST", "/v1/readings", json={"readings": readings}, token=token,
                             **kw)  # fmt: skip


def _verdicts(reply: Reply) -> list[tuple[str, str | None, int | None, str | None]]:
    return [(o["status"], o["device_id"], o["seq"], o["reason"]) for o in reply.json()["results"]]


async def _quarantine(db: asyncpg.Pool) -> list[tuple[str, str, str | None, int | None, bytes]]:
    rows = await db.fetch(
        "SELECT reason, transport, device_id, seq, raw FROM quarantine ORDER BY id"
    )
    return [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]


def _error(reply: Reply) -> str:
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    code: str = body["error"]["code"]
    return code


# --- signup and tokens -------------------------------------------------------------------------


async def test_signup_by_external_id_issues_a_working_token(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    await _member(db, "m-1", external_id="ACME-1")
    r = await api.request("POST", "/v1/signup", json={
        "client_id": "acme", "external_id": "ACME-1", "birth_date": BIRTH_DATE})  # fmt: skip
    assert r.status == 201, r.content
    body = r.json()
    assert set(body) == {"token", "token_type", "expires_at"}  # no internal member id
    token = body["token"]
    assert token.startswith("vgl_") and body["token_type"] == "bearer"
    row = await db.fetchrow("SELECT * FROM app_tokens")
    assert row["member_id"] == "m-1"
    # Only the SHA-256 of the token's random bytes is stored, and the token is not.
    assert bytes(row["token_hash"]) == token_hash(token)
    assert bytes(row["token_hash"]) != hashlib.sha256(token.encode()).digest()
    assert row["expires_at"] - row["created_at"] == timedelta(days=30)
    assert datetime.fromisoformat(body["expires_at"]) == row["expires_at"]
    me = await api.request("GET", "/v1/me/readings", token=token)
    assert me.status == 200 and me.json() == {"readings": [], "next_cursor": None}


async def test_signup_by_member_id(api: AsgiClient, db: asyncpg.Pool) -> None:
    await _member(db, "m-1")
    token = await _signup(api, "m-1")
    assert (await api.request("GET", "/v1/me/summary", token=token)).status == 200


async def test_signup_refuses_a_wrong_birth_date_like_an_unknown_member(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    await _member(db, "m-1", external_id="ACME-1")
    attempts = [
        {"client_id": "acme", "external_id": "ACME-1", "birth_date": "1960-01-02"},
        {"client_id": "acme", "member_id": "m-1", "birth_date": "1961-01-01"},
        {"client_id": "acme", "external_id": "ACME-404", "birth_date": BIRTH_DATE},
        {"client_id": "other", "external_id": "ACME-1", "birth_date": BIRTH_DATE},
    ]
    replies = [await api.request("POST", "/v1/signup", json=a) for a in attempts]
    assert [(r.status, _error(r)) for r in replies] == [(403, "member_not_matched")] * 4
    assert len({r.content for r in replies}) == 1  # the same answer: no oracle for member ids
    assert await db.fetchval("SELECT count(*) FROM app_tokens") == 0


async def test_signup_needs_a_current_eligibility_row_when_the_client_sends_a_file(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    await _member(db, "m-e", client_id="globex", external_id="G-1")
    await db.execute("UPDATE clients SET has_eligibility_file = true WHERE id = 'globex'")
    today = datetime.now(UTC).date()
    body = {"client_id": "globex", "external_id": "G-1", "birth_date": BIRTH_DATE}

    async def attempt() -> tuple[int, str | None]:
        r = await api.request("POST", "/v1/signup", json=body)
        return r.status, (_error(r) if r.status != 201 else None)

    async def eligibility(start: date, end: date | None, birth: str = BIRTH_DATE) -> None:
        await db.execute("DELETE FROM member_eligibility")
        await db.execute(
            "INSERT INTO member_eligibility "
            "(client_id, external_id, birth_date, eligible_from, eligible_to) "
            "VALUES ('globex', 'G-1', $1, $2, $3)",
            date.fromisoformat(birth), start, end,
        )  # fmt: skip

    assert await attempt() == (403, "not_eligible")  # no row at all
    await eligibility(today - timedelta(days=30), today - timedelta(days=2))  # ended
    assert await attempt() == (403, "not_eligible")
    await eligibility(today + timedelta(days=2), None)  # not yet
    assert await attempt() == (403, "not_eligible")
    await eligibility(today - timedelta(days=30), None, birth="1970-05-05")  # someone else
    assert await attempt() == (403, "not_eligible")
    assert await db.fetchval("SELECT count(*) FROM app_tokens") == 0
    await eligibility(today - timedelta(days=30), today + timedelta(days=30))
    assert await attempt() == (201, None)


async def test_signup_attempts_are_rate_limited_per_client_and_address(
    db: asyncpg.Pool, settings: Settings
) -> None:
    await _member(db, "m-1")
    await _member(db, "m-2", client_id="globex")
    wrong = {"client_id": "acme", "member_id": "m-1", "birth_date": "1999-09-09"}
    right = {"client_id": "acme", "member_id": "m-1", "birth_date": BIRTH_DATE}
    async with AsgiClient(create_app(settings, _config(signup_burst=2))) as api:
        for _ in range(2):
            assert (await api.request("POST", "/v1/signup", json=wrong)).status == 403
        limited = await api.request("POST", "/v1/signup", json=right)
        assert (limited.status, _error(limited)) == (429, "rate_limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        # Another address, or another client from the same address, has its own bucket.
        other_ip = await api.request("POST", "/v1/signup", json=right, client_ip="198.51.100.1")
        assert other_ip.status == 201
        other_client = await api.request("POST", "/v1/signup", json={
            "client_id": "globex", "member_id": "m-2", "birth_date": BIRTH_DATE})  # fmt: skip
        assert other_client.status == 201


async def test_missing_invalid_expired_and_revoked_tokens_get_401(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    await _member(db, "m-1")
    await _member(db, "m-2")

    async def verdict(token: str | None) -> tuple[int, str]:
        r = await api.request("GET", "/v1/me/readings", token=token)
        assert r.status != 401 or r.headers["www-authenticate"] == "Bearer"
        return r.status, (_error(r) if r.status != 200 else "ok")

    assert await verdict(None) == (401, "unauthorized")
    assert await verdict("not-a-token") == (401, "unauthorized")
    assert await verdict("vgl_" + "A" * 43) == (401, "unauthorized")  # well formed, unknown
    wrong_scheme = await api.request("GET", "/v1/me/readings", headers={"authorization": "Basic x"})
    assert (wrong_scheme.status, _error(wrong_scheme)) == (401, "unauthorized")

    expiring = await _signup(api, "m-1")
    assert await verdict(expiring) == (200, "ok")
    await db.execute(
        "UPDATE app_tokens SET created_at = now() - interval '31 days', "
        "expires_at = now() - interval '1 day' WHERE token_hash = $1",
        token_hash(expiring),
    )
    assert await verdict(expiring) == (401, "token_expired")

    signing_out = await _signup(api, "m-1")
    r = await api.request("POST", "/v1/tokens/revoke", token=signing_out)
    assert (r.status, r.content) == (204, b"")
    assert await verdict(signing_out) == (401, "token_revoked")

    # The operator revokes every live token of m-1; m-2's token is untouched.
    phone, tablet, others = [await _signup(api, m) for m in ("m-1", "m-1", "m-2")]
    assert await revoke_member_tokens(db, "m-1") == 2
    assert await verdict(phone) == (401, "token_revoked")
    assert await verdict(tablet) == (401, "token_revoked")
    assert await verdict(others) == (200, "ok")
    post = await _post(api, phone, [])
    assert (post.status, _error(post)) == (401, "token_revoked")


# --- POST /v1/readings -------------------------------------------------------------------------


async def test_each_reading_gets_its_outcome_and_rejections_are_quarantined(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    await _member(db, "m-1", {"gm-1": "glucose_meter", "bp-1": "bp_monitor"})
    token = await _signup(api, "m-1")
    batch: list[Any] = [
        glucose("gm-1", 1, 104, ago(hours=5)),
        pressure("bp-1", 1, 128, 82, ago(hours=4)),
        glucose("gm-1", 2, 5000, ago(hours=3)),  # impossible
        glucose("gm-1", 3, 99, ago(hours=2), colour="red"),  # not part of the format
        "just a string",
        glucose("gm-1", 4, 140, ago(hours=1), source="manual"),  # typed in by the member
    ]
    first = await _post(api, token, batch)
    assert first.status == 200, first.content
    assert _verdicts(first) == [
        ("accepted", "gm-1", 1, None),
        ("accepted", "bp-1", 1, None),
        ("rejected", "gm-1", 2, "out_of_range"),
        ("rejected", "gm-1", 3, "unknown_field"),
        ("rejected", None, None, "not_an_object"),
        ("accepted", "gm-1", 4, None),
    ]
    assert [o["index"] for o in first.json()["results"]] == list(range(6))
    assert {k: first.json()[k] for k in ("accepted", "duplicate", "rejected")} == {
        "accepted": 3, "duplicate": 0, "rejected": 3}  # fmt: skip
    stored = await db.fetch(
        "SELECT device_id, seq, member_id, source, transport FROM readings ORDER BY device_id, seq"
    )
    assert [tuple(r) for r in stored] == [
        ("bp-1", 1, "m-1", "device", "http"),
        ("gm-1", 1, "m-1", "device", "http"),
        ("gm-1", 4, "m-1", "manual", "http"),
    ]
    quarantined = await _quarantine(db)
    assert [q[:4] for q in quarantined] == [
        ("out_of_range", "http", "gm-1", 2),
        ("unknown_field", "http", "gm-1", 3),
        ("not_an_object", "http", None, None),
    ]
    assert [orjson.loads(q[4]) for q in quarantined] == [batch[2], batch[3], batch[4]]

    # A resend: the stored ones are duplicates, nothing is stored twice.
    again = await _post(api, token, batch)
    assert [v[0] for v in _verdicts(again)] == [
        "duplicate", "duplicate", "rejected", "rejected", "rejected", "duplicate"]  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM readings") == 3


async def test_a_nul_character_in_a_reading_does_not_fail_the_batch(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    # PostgreSQL text cannot hold NUL; rejection details name the offending field.
    await _member(db, "m-1", {"gm-1": "glucose_meter"})
    token = await _signup(api, "m-1")
    batch = [
        glucose("gm-1", 1, 100, ago(hours=2), **{"a\u0000b": 1}),
        glucose("gm\u00001", 2, 100, ago(hours=1)),
        glucose("gm-1", 3, 100, ago(hours=1)),
    ]
    r = await _post(api, token, batch)
    assert r.status == 200, r.content
    assert [(v[0], v[3]) for v in _verdicts(r)] == [
        ("rejected", "unknown_field"),
        ("rejected", "invalid_value"),
        ("accepted", None),
    ]
    quarantined = await _quarantine(db)
    assert [orjson.loads(q[4]) for q in quarantined] == batch[:2]  # raw bytes kept as sent


async def test_a_reading_from_another_members_device_is_rejected_and_kept(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    await _member(db, "m-1", {"gm-1": "glucose_meter"})
    await _member(db, "m-2", {"gm-2": "glucose_meter"})
    token = await _signup(api, "m-1")
    batch = [
        glucose("gm-2", 1, 101, ago(hours=2)),  # m-2's meter
        glucose("gm-999", 1, 102, ago(hours=2)),  # nobody's: the same answer, no device oracle
        glucose("gm-1", 1, 103, ago(hours=2)),
    ]
    r = await _post(api, token, batch)
    assert _verdicts(r) == [
        ("rejected", "gm-2", 1, "device_mismatch"),
        ("rejected", "gm-999", 1, "device_mismatch"),
        ("accepted", "gm-1", 1, None),
    ]
    assert r.json()["results"][0]["detail"] == r.json()["results"][1]["detail"]
    assert [tuple(x) for x in await db.fetch("SELECT device_id, member_id FROM readings")] == [
        ("gm-1", "m-1")
    ]
    quarantined = await _quarantine(db)
    assert [q[:4] for q in quarantined] == [
        ("device_mismatch", "http", "gm-2", 1),
        ("device_mismatch", "http", "gm-999", 1),
    ]
    assert orjson.loads(quarantined[0][4]) == batch[0]
    other = await _signup(api, "m-2")
    assert (await api.request("GET", "/v1/me/readings", token=other)).json()["readings"] == []


async def test_the_device_must_be_the_members_when_the_reading_was_taken(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    # A reused meter: m-2 held gm-3 until two days ago, m-1 holds it since. Old readings in its
    # memory are m-2's, and m-1's app must not write them into m-2's record.
    await _member(db, "m-1")
    await _member(db, "m-2")
    handover = datetime.now(UTC) - timedelta(days=2)
    await db.execute("INSERT INTO devices (id, kind) VALUES ('gm-3', 'glucose_meter')")
    await db.execute(
        "INSERT INTO device_assignments (device_id, member_id, assigned_from, assigned_to) "
        "VALUES ('gm-3', 'm-2', NULL, $1), ('gm-3', 'm-1', $1, NULL)",
        handover,
    )
    token = await _signup(api, "m-1")
    r = await _post(api, token, [
        glucose("gm-3", 1, 110, ago(days=3)),  # m-2's time
        glucose("gm-3", 2, 120, ago(hours=1)),  # m-1's
        glucose("gm-3", 3, 130, "2041-01-01T08:00:00+00:00"),  # clock wrong: receive time, m-1's
    ])  # fmt: skip
    assert _verdicts(r) == [
        ("rejected", "gm-3", 1, "device_mismatch"),
        ("accepted", "gm-3", 2, None),
        ("accepted", "gm-3", 3, None),
    ]
    rows = await db.fetch("SELECT seq, member_id, clock_corrected FROM readings ORDER BY seq")
    assert [tuple(x) for x in rows] == [(2, "m-1", False), (3, "m-1", True)]

    # The other way round: m-1 returned gm-4 yesterday, m-2 holds it now. A reading m-1 took
    # with it two days ago is refused too: should its clock prove wrong, the pipeline stamps it
    # with the receive time, which is m-2's, so the reading cannot be guaranteed to stay m-1's.
    returned = datetime.now(UTC) - timedelta(days=1)
    await db.execute("INSERT INTO devices (id, kind) VALUES ('gm-4', 'glucose_meter')")
    await db.execute(
        "INSERT INTO device_assignments (device_id, member_id, assigned_from, assigned_to) "
        "VALUES ('gm-4', 'm-1', NULL, $1), ('gm-4', 'm-2', $1, NULL)",
        returned,
    )
    r = await _post(api, token, [glucose("gm-4", 1, 140, ago(days=2))])
    assert _verdicts(r) == [("rejected", "gm-4", 1, "device_mismatch")]
    assert await db.fetchval("SELECT count(*) FROM readings WHERE device_id = 'gm-4'") == 0


async def test_idempotency_key_replays_the_same_bytes_and_stores_nothing_twice(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    await _member(db, "m-1", {"gm-1": "glucose_meter"})
    await _member(db, "m-2", {"gm-2": "glucose_meter"})
    token = await _signup(api, "m-1")
    body = orjson.dumps({"readings": [
        glucose("gm-1", 1, 100, ago(hours=2)),
        glucose("gm-1", 2, 9999, ago(hours=1)),  # rejected: quarantined once only
    ]})  # fmt: skip
    key = {"idempotency-key": "3f1c7a52-6a8e-4d55-9b3e-0c9f1f0e7d21"}
    first = await api.request("POST", "/v1/readings", content=body, token=token, headers=key)
    assert first.status == 200 and "idempotent-replayed" not in first.headers
    second = await api.request("POST", "/v1/readings", content=body, token=token, headers=key)
    assert second.status == 200
    assert second.content == first.content  # byte for byte
    assert second.headers["idempotent-replayed"] == "true"
    # Without a key the same resend is processed again: "duplicate", so the replay was not that.
    unkeyed = await api.request("POST", "/v1/readings", content=body, token=token)
    assert _verdicts(unkeyed)[0] == ("duplicate", "gm-1", 1, None)
    assert await db.fetchval("SELECT count(*) FROM readings") == 1
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 2  # first request + unkeyed
    assert await db.fetchval("SELECT count(*) FROM api_idempotency") == 1

    other_body = orjson.dumps({"readings": [glucose("gm-1", 3, 100, ago(minutes=30))]})
    reused = await api.request("POST", "/v1/readings", content=other_body, token=token,
                               headers=key)  # fmt: skip
    assert (reused.status, _error(reused)) == (409, "idempotency_key_reused")
    assert await db.fetchval("SELECT count(*) FROM readings WHERE seq = 3") == 0

    # Keys are per member: m-2 may use the same key for its own request.
    other_member = await _signup(api, "m-2")
    theirs = orjson.dumps({"readings": [glucose("gm-2", 1, 100, ago(hours=1))]})
    r = await api.request("POST", "/v1/readings", content=theirs, token=other_member,
                          headers=key)  # fmt: skip
    assert _verdicts(r) == [("accepted", "gm-2", 1, None)]

    # A malformed body under a key is quarantined once; its 400 is replayed too.
    bad_key = {"idempotency-key": "bad-body-1"}
    bad = [await api.request("POST", "/v1/readings", content=b'{"readings": [', token=token,
                             headers=bad_key) for _ in range(2)]  # fmt: skip
    assert [r.status for r in bad] == [400, 400] and bad[0].content == bad[1].content
    assert await db.fetchval("SELECT count(*) FROM quarantine WHERE reason = 'malformed_json'") == 1

    invalid = await api.request("POST", "/v1/readings", content=body, token=token,
                                headers={"idempotency-key": "has space"})  # fmt: skip
    assert (invalid.status, _error(invalid)) == (400, "invalid_idempotency_key")


async def test_a_key_still_in_progress_is_a_409_until_its_reservation_goes_stale(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    await _member(db, "m-1", {"gm-1": "glucose_meter"})
    token = await _signup(api, "m-1")
    body = orjson.dumps({"readings": [glucose("gm-1", 1, 100, ago(hours=1))]})
    # Another process reserved the key for this very body and has not answered (yet).
    await db.execute(
        "INSERT INTO api_idempotency (member_id, key, request_sha256) VALUES ('m-1', 'k-1', $1)",
        hashlib.sha256(body).digest(),
    )
    key = {"idempotency-key": "k-1"}
    busy = await api.request("POST", "/v1/readings", content=body, token=token, headers=key)
    assert (busy.status, _error(busy)) == (409, "idempotency_in_progress")
    assert busy.headers["retry-after"] == "1"
    assert await db.fetchval("SELECT count(*) FROM readings") == 0
    # That process died: after idempotency_stale_after (5 minutes) the key is taken over.
    await db.execute("UPDATE api_idempotency SET created_at = now() - interval '6 minutes'")
    r = await api.request("POST", "/v1/readings", content=body, token=token, headers=key)
    assert _verdicts(r) == [("accepted", "gm-1", 1, None)]
    replay = await api.request("POST", "/v1/readings", content=body, token=token, headers=key)
    assert replay.content == r.content and replay.headers["idempotent-replayed"] == "true"


async def test_an_oversized_body_is_refused_with_413(api: AsgiClient, db: asyncpg.Pool) -> None:
    await _member(db, "m-1", {"gm-1": "glucose_meter"})
    token = await _signup(api, "m-1")
    # The fixture's limit is 1 x VIGIL_MAX_PAYLOAD_BYTES (256 KiB) and 50 readings.
    padding = {"readings": [glucose("gm-1", 1, 100, ago(hours=1), note="x" * 300_000)]}
    for chunked in (False, True):  # declared length, and counted while reading
        r = await api.request("POST", "/v1/readings", json=padding, token=token, chunked=chunked)
        assert (r.status, _error(r)) == (413, "payload_too_large")
    many = [glucose("gm-1", s, 100, ago(hours=60 - s)) for s in range(51)]
    r = await _post(api, token, many)
    assert (r.status, _error(r)) == (413, "payload_too_large")
    signup = await api.request("POST", "/v1/signup", content=b"{" + b" " * 20_000 + b"}")
    assert (signup.status, _error(signup)) == (413, "payload_too_large")
    assert await db.fetchval("SELECT count(*) FROM readings") == 0
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 0  # refused unread


async def test_a_body_that_is_not_a_readings_batch_is_a_400_and_quarantined(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    await _member(db, "m-1", {"gm-1": "glucose_meter"})
    token = await _signup(api, "m-1")
    bodies = [
        (b'{"readings": [{"device_id": "gm-1", "seq": 1', "malformed_json"),
        (b'{"readings": []}\xff', "invalid_encoding"),
        (b'[{"device_id": "gm-1"}]', "not_an_object"),
        (b'{"reading": []}', "missing_field"),
        (b'{"readings": [], "member_id": "m-2"}', "unknown_field"),
        (b'{"readings": {"0": {}}}', "invalid_type"),
    ]
    for body, code in bodies:
        r = await api.request("POST", "/v1/readings", content=body, token=token)
        assert (r.status, _error(r)) == (400, code)
    assert [(q[0], q[1], q[4]) for q in await _quarantine(db)] == [
        (code, "http", body) for body, code in bodies
    ]
    empty = await _post(api, token, [])
    assert empty.status == 200 and empty.json()["results"] == []


# --- GET /v1/me/... ----------------------------------------------------------------------------


async def test_own_readings_only_with_filters_and_pages(api: AsgiClient, db: asyncpg.Pool) -> None:
    await _member(db, "m-1", {"gm-1": "glucose_meter", "sc-1": "scale"})
    await _member(db, "m-2", {"gm-2": "glucose_meter"})
    t1, t2 = await _signup(api, "m-1"), await _signup(api, "m-2")
    mine = [
        glucose("gm-1", 1, 5.5, ago(hours=5), unit="mmol/L", meal="fasting"),
        weight("sc-1", 1, 81.2, ago(hours=4)),
        {**glucose("gm-1", 2, None, "2026-01-01T00:00:00+02:00"), "flags": ["HI"]},
        glucose("gm-1", 3, 150, ago(hours=1)),
    ]
    # gm-1 seq 2's device time is before seq 1's: the clock rule stamps it with the receive time.
    assert [v[0] for v in _verdicts(await _post(api, t1, mine))] == ["accepted"] * 4
    theirs = [glucose("gm-2", s, 90 + s, ago(hours=6 - s)) for s in (1, 2)]
    assert [v[0] for v in _verdicts(await _post(api, t2, theirs))] == ["accepted"] * 2

    async def keys(token: str, **params: Any) -> list[tuple[str, int]]:
        r = await api.request("GET", "/v1/me/readings", token=token, params=params)
        assert r.status == 200, r.content
        return [(x["device_id"], x["seq"]) for x in r.json()["readings"]]

    assert await keys(t1) == [("gm-1", 2), ("gm-1", 3), ("sc-1", 1), ("gm-1", 1)]  # newest first
    assert await keys(t2) == [("gm-2", 2), ("gm-2", 1)]
    assert await keys(t1, kind="weight") == [("sc-1", 1)]
    assert await keys(t2, kind="weight") == []
    window = {"from": ago(hours=4, minutes=30), "to": ago(hours=2)}
    assert await keys(t1, **window) == [("sc-1", 1)]
    assert await keys(t1, kind="glucose", **{"from": ago(hours=2)}) == [("gm-1", 2), ("gm-1", 3)]

    # Pages of two: every reading once, then no cursor.
    seen: list[tuple[str, int]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.request("GET", "/v1/me/readings", token=t1, params=params)).json()
        seen += [(x["device_id"], x["seq"]) for x in page["readings"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == await keys(t1)

    by_key = {
        (x["device_id"], x["seq"]): x
        for x in (await api.request("GET", "/v1/me/readings", token=t1)).json()["readings"]
    }
    fasting = by_key["gm-1", 1]
    assert fasting["original"] == {
        "unit": "mmol/L", "value": 5.5, "systolic": None, "diastolic": None,
        "mean_arterial": None, "pulse": None,
    }  # fmt: skip
    assert fasting["normalized"]["glucose_mgdl"] == 99.088  # 5.5 x 18.016
    assert fasting["meal"] == "fasting" and fasting["flags"] == []
    assert fasting["clock_corrected"] is False
    assert datetime.fromisoformat(fasting["measured_at"]) == datetime.fromisoformat(mine[0][
        "measured_at"])  # fmt: skip
    high = by_key["gm-1", 2]
    assert high["flags"] == ["HI"] and high["original"]["value"] is None
    assert high["clock_corrected"] is True
    assert high["measured_at"] == "2026-01-01T00:00:00+02:00"  # the device's own offset, kept
    assert by_key["sc-1", 1]["normalized"]["weight_kg"] == 81.2
    assert set(fasting) == {
        "kind", "device_id", "seq", "source", "effective_at", "measured_at", "clock_corrected",
        "flags", "meal", "original", "normalized",
    }  # fmt: skip

    bad = await api.request("GET", "/v1/me/readings", token=t1, params={"cursor": "!!"})
    assert (bad.status, _error(bad)) == (400, "invalid_cursor")
    naive = await api.request(
        "GET", "/v1/me/readings", token=t1, params={"from": "2026-01-01T00:00"}
    )
    assert (naive.status, _error(naive)) == (422, "invalid_request")


async def test_summary_numbers_by_hand(api: AsgiClient, db: asyncpg.Pool) -> None:
    await _member(db, "m-1", {"gm-1": "glucose_meter", "bp-1": "bp_monitor", "sc-1": "scale"})
    await _member(db, "m-2", {"gm-2": "glucose_meter"})
    token = await _signup(api, "m-1")
    readings = [
        glucose("gm-1", 1, 300, ago(days=10)),  # outside 7 days, inside 14
        glucose("gm-1", 2, 60, ago(hours=5)),
        glucose("gm-1", 3, 100, ago(hours=4)),
        glucose("gm-1", 4, 200, ago(hours=3)),
        glucose("gm-1", 5, 400, ago(hours=2), flags=["control_solution"]),  # not the member's
        pressure("bp-1", 1, 120, 70, ago(hours=5)),
        pressure("bp-1", 2, 135, 85, ago(hours=4)),
        weight("sc-1", 1, 80.0, ago(days=3)),
        weight("sc-1", 2, 81.5, ago(hours=1)),
    ]
    assert [v[0] for v in _verdicts(await _post(api, token, readings))] == ["accepted"] * 9
    other = await _signup(api, "m-2")
    await _post(api, other, [glucose("gm-2", 1, 250, ago(hours=1))])  # never in m-1's numbers

    r = await api.request("GET", "/v1/me/summary", token=token, params={"days": 7})
    assert r.status == 200, r.content
    s = r.json()
    assert s["days"] == 7 and s["timezone"] == "America/Chicago"
    start = datetime.fromisoformat(s["start"])
    assert (start.hour, start.minute) == (0, 0) and start.utcoffset() in (
        timedelta(hours=-5), timedelta(hours=-6))  # fmt: skip
    assert (datetime.fromisoformat(s["end"]).date() - start.date()).days == 6
    # 60, 100, 200 mg/dL: mean 120, one of three in 70-180.
    assert s["glucose"] == {"count": 3, "mean_mgdl": 120.0, "in_range": 1, "below_range": 1,
                            "above_range": 1, "in_range_share": 0.3333}  # fmt: skip
    assert s["blood_pressure"] == {"count": 2, "mean_systolic_mmhg": 127.5,
                                   "mean_diastolic_mmhg": 77.5, "below_target": 1,
                                   "below_target_share": 0.5}  # fmt: skip
    assert s["weight"] == {"count": 2, "first_kg": 80.0, "last_kg": 81.5, "change_kg": 1.5}

    wider = (await api.request("GET", "/v1/me/summary", token=token, params={"days": 14})).json()
    assert wider["glucose"]["count"] == 4 and wider["glucose"]["mean_mgdl"] == 165.0
    bad = await api.request("GET", "/v1/me/summary", token=token, params={"days": 10})
    assert (bad.status, _error(bad)) == (422, "invalid_request")
    empty = (await api.request("GET", "/v1/me/summary", token=other)).json()
    assert empty["weight"] == {"count": 0, "first_kg": None, "last_kg": None, "change_kg": None}


async def test_summary_compares_glucose_in_the_meters_unit(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    # 3.9 and 10.0 mmol/L are the consensus range's ends (in range), though 10.0 mmol/L converts
    # to 180.16 mg/dL; HI and LO readings are out of range and have no value for the mean.
    await _member(db, "m-1", {"gm-1": "glucose_meter"})
    token = await _signup(api, "m-1")
    await _post(api, token, [
        glucose("gm-1", 1, 3.9, ago(hours=4), unit="mmol/L"),
        glucose("gm-1", 2, 10.0, ago(hours=3), unit="mmol/L"),
        glucose("gm-1", 3, None, ago(hours=2), flags=["HI"]),
        glucose("gm-1", 4, None, ago(hours=1), flags=["LO"]),
    ])  # fmt: skip
    g = (await api.request("GET", "/v1/me/summary", token=token)).json()["glucose"]
    assert g == {"count": 4, "mean_mgdl": 125.2, "in_range": 2, "below_range": 1,
                 "above_range": 1, "in_range_share": 0.5}  # fmt: skip  # (70.26 + 180.16) / 2


async def test_errors_are_json_with_closed_codes(api: AsgiClient, db: asyncpg.Pool) -> None:
    r = await api.request("GET", "/v1/nowhere")
    assert (r.status, _error(r)) == (404, "not_found")
    r = await api.request("GET", "/v1/signup")
    assert (r.status, _error(r)) == (405, "method_not_allowed")
    r = await api.request("POST", "/v1/signup", content=b"{nope")
    assert (r.status, _error(r)) == (400, "malformed_json")
    r = await api.request(
        "POST", "/v1/signup", json={"client_id": "acme", "birth_date": "1960-01-01"}
    )
    assert (r.status, _error(r)) == (422, "invalid_request")
    r = await api.request("POST", "/v1/signup", json={
        "client_id": "acme", "member_id": "m-1", "birth_date": "31/12/1960"})  # fmt: skip
    assert (r.status, _error(r)) == (422, "invalid_request")
    assert b"31/12/1960" not in r.content  # the input is not echoed


async def test_inbox_shows_only_the_members_own_messages(
    api: AsgiClient, db: asyncpg.Pool
) -> None:
    await _member(db, "m-1", {"gm-1": "glucose_meter"})
    await _member(db, "m-2", {"gm-2": "glucose_meter"})
    t1 = await _signup(api, "m-1")
    await db.execute(
        "INSERT INTO member_messages (member_id, kind, template, body, language, created_at, "
        "deliver_after, dedupe_key) VALUES ('m-1', 'low_treatment', 't', 'Retest in 15 minutes', 'en', "
        "now() - interval '1 minute', now() - interval '1 minute', 'k1'), "
        "('m-2', 'coach', 't', 'Not yours', 'en', now(), now(), 'k2')"
    )
    r = await api.request("GET", "/v1/me/messages", token=t1)
    assert r.status == 200, r.content
    assert [m["body"] for m in r.json()["messages"]] == ["Retest in 15 minutes"]
    assert (await api.request("GET", "/v1/me/messages")).status == 401
