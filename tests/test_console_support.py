"""Shared harness of the coach console tests (no tests here; the test_console_* modules import it).

- `Staffing`: two teams, their coaches, supervisors and an admin, with console accounts; members
  in each caseload, each with a glucose meter; alerts raised by sending readings through the real
  pipeline and rule engine (as tests/test_alerting.py does).
Test modules import the fixtures `console_fixture` and `staffing_fixture` (registered under the
names `console` and `staffing`).

- `Console`: the app with its lifespan running (pool, LISTEN hub, timers), spoken to over httpx's
  ASGI transport at https://console.test (so Secure cookies round-trip) with a fake clock.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import asyncpg
import httpx
import orjson
import pyotp
import pytest
from starlette.types import Receive, Scope, Send

from alerting.engine import RuleEngine
from coach_console.accounts import hash_password
from coach_console.app import create_app
from coach_console.settings import ConsoleSettings
from services.pipeline import Incoming, ReadingPipeline
from services.settings import Settings

PASSWORD = "correct horse battery staple"
BASE = "https://console.test"
_HASH: list[str] = []

# id, name, role, team, credential, totp secret (supervisors and admins must have one)
STAFF: tuple[tuple[str, str, str, str | None, str, str | None], ...] = (
    ("c-north", "Nora North", "coach", "north", "none", None),
    ("c-north2", "Nils North", "coach", "north", "none", None),
    ("s-north", "Sara Supervisor", "supervisor", "north", "RN", "TJXRCAFDAJ4OHDVSOKAFUNYU6LBE2VE5"),
    ("c-south", "Sol South", "coach", "south", "none", None),
    ("s-south", "Sid Supervisor", "supervisor", "south", "CDCES",
     "ER5FGOTW7EWQL2AD7KJ7R4E5HKUYDA22"),
    ("s-lay", "Lee Lay", "supervisor", "north", "none", "5JR53HPLLLKJASN5S4BYOAYEVIC6YI2N"),
    ("a-1", "Ada Admin", "admin", None, "none", "PP3WLHX46AI434CVOBOLNR3O3UQYO2VL"),
)  # fmt: skip
SECRETS = {s[0]: s[5] for s in STAFF if s[5]}
# member id -> coach id
MEMBERS = {"m-north": "c-north", "m-north2": "c-north2", "m-south": "c-south", "m-none": None}


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


async def password_hash() -> str:
    if not _HASH:
        _HASH.append(await hash_password(PASSWORD))
    return _HASH[0]


@dataclass
class Staffing:
    db: asyncpg.Pool
    seq: int = 0
    pipeline: ReadingPipeline | None = None

    async def seed(self) -> Staffing:
        hashed = await password_hash()
        await self.db.execute(
            "INSERT INTO clients (id, name, timezone, currency) "
            "VALUES ('acme', 'Acme', 'America/Chicago', 'USD')"
        )
        for cid, name, role, team, credential, secret in STAFF:
            await self.db.execute(
                "INSERT INTO coaches (id, name, role, team, credential) "
                "VALUES ($1, $2, $3, $4, $5)",
                cid, name, role, team, credential,
            )  # fmt: skip
            await self.db.execute(
                "INSERT INTO console_accounts (coach_id, password_hash, totp_secret) "
                "VALUES ($1, $2, $3)",
                cid, hashed, secret,
            )  # fmt: skip
        for mid, coach in MEMBERS.items():
            await self.db.execute(
                "INSERT INTO members (id, client_id, name, birth_date, phone, emergency_contact, "
                "timezone, coach_id) VALUES ($1, 'acme', $2, '1961-02-03', '+1-312-555-0100', "
                "$3, 'America/Chicago', $4)",
                mid, f"Member {mid}",
                '{"name": "Kin", "phone": "+1-312-555-0199", "relationship": "sibling"}', coach,
            )  # fmt: skip
            await self.db.execute("INSERT INTO care_plans (member_id) VALUES ($1)", mid)
            await self.db.execute(
                "INSERT INTO devices (id, kind) VALUES ($1, 'glucose_meter')", f"gm-{mid}"
            )
            await self.db.execute(
                "INSERT INTO device_assignments (device_id, member_id) VALUES ($1, $2)",
                f"gm-{mid}", mid,
            )  # fmt: skip
        self.pipeline = ReadingPipeline(self.db, sink=RuleEngine(self.db))
        return self

    async def glucose(self, member_id: str, value: float, at: datetime | None = None) -> None:
        """One meter reading through the pipeline and the rule engine (alerts as in production)."""
        assert self.pipeline is not None
        self.seq += 1
        now = datetime.now(UTC)
        doc = {"device_id": f"gm-{member_id}", "seq": self.seq, "kind": "glucose",
               "unit": "mg/dL", "value": value, "measured_at": (at or now).isoformat()}  # fmt: skip
        result = await self.pipeline.process([Incoming(orjson.dumps(doc), now, "file")])
        assert result.outcomes[0].status == "accepted", result.outcomes

    async def alert(self, member_id: str, value: float) -> int:
        """Raise (or add to) the member's low-glucose alert; returns its id."""
        await self.glucose(member_id, value)
        alert_id: int = await self.db.fetchval(
            "SELECT id FROM alerts WHERE member_id = $1 AND rule = 'hypoglycemia' "
            "AND status <> 'resolved'",
            member_id,
        )
        return alert_id


@pytest.fixture(name="staffing")
async def staffing_fixture(db: asyncpg.Pool) -> Staffing:
    await db.execute("DELETE FROM console_login_attempts")
    return await Staffing(db).seed()


class Console:
    """The console app with its lifespan running, reached over httpx's ASGI transport."""

    def __init__(self, settings: Settings, **config: Any) -> None:
        self.clock = Clock()
        self.config = ConsoleSettings(**{"cookie_secure": True, **config})
        self.app = create_app(settings, self.config, clock=self.clock)
        self._lifespan: contextlib.AbstractAsyncContextManager[Any] | None = None
        self.state: dict[str, Any] = {}
        self._clients: list[httpx.AsyncClient] = []

    async def __aenter__(self) -> Console:
        self._lifespan = self.app.router.lifespan_context(self.app)
        self.state = dict(await self._lifespan.__aenter__())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for c in self._clients:
            await c.aclose()
        assert self._lifespan is not None
        await self._lifespan.__aexit__(et, e, tb)

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        # What a server does with the lifespan state: a shallow copy into every request.
        if scope["type"] == "http":
            scope = {**scope, "state": dict(self.state)}
        await self.app(scope, receive, send)

    def client(self) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=self._asgi), base_url=BASE,
                              follow_redirects=False)  # fmt: skip
        self._clients.append(c)
        return c

    async def signed_in(self, coach_id: str) -> httpx.AsyncClient:
        # Several sign-ins of one person within a 30-second step would replay a TOTP code,
        # which the console refuses (tested on its own): forget the last step first.
        await self.state["pool"].execute(
            "UPDATE console_accounts SET totp_last_step = NULL WHERE coach_id = $1", coach_id
        )
        c = self.client()
        r = await login(c, coach_id)
        assert r.status_code == 303 and r.headers["location"] == "/queue", r.text
        return c


@pytest.fixture(name="console")
async def console_fixture(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[Console]:
    # After `db` (which empties the tables): the app's follow-up timer must not run while the
    # fixture TRUNCATEs, or the two deadlock.
    async with Console(settings) as app:
        yield app


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    m = _CSRF.search(html)
    assert m, "no CSRF token on the page"
    return m.group(1)


async def login(c: httpx.AsyncClient, coach_id: str, password: str = PASSWORD) -> httpx.Response:
    """Sign in through the forms (password, then TOTP where the account has one)."""
    page = await c.get("/login")
    r = await c.post("/login", data={"login": coach_id, "password": password,
                                     "csrf_token": csrf_of(page.text), "next": "/queue"})
    if r.status_code == 303 and r.headers["location"].startswith("/login/totp"):
        form = await c.get(r.headers["location"])
        code = pyotp.TOTP(SECRETS[coach_id]).now()
        r = await c.post("/login/totp", data={"code": code, "csrf_token": csrf_of(form.text),
                                              "next": "/queue"})  # fmt: skip
    return r


async def csrf(c: httpx.AsyncClient) -> str:
    """The session's CSRF token, from any signed-in page."""
    return csrf_of((await c.get("/shift")).text)
