"""The coach console in real headless Chromium, end to end.

A virtual meter publishes a critical low over MQTT to a private Mosquitto; a `vigil gateway`
worker process stores it and the rule engine raises the alert; the console (`vigil console` as
its own process) hears the NOTIFY and tells both browsers over Server-Sent Events. Coach A sees
it within 2 seconds, claims it, records a call, opens the member page and resolves the alert;
supervisor B (signed in with a TOTP code) sees it leave the queue. Screenshots of the queue and
the member page go to test-artifacts/console/.

Chromium and chromedriver are Debian's (`chromium`, `chromium-driver`, installed by
scripts/bootstrap.sh); Selenium drives /usr/bin/chromedriver and downloads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pyotp
import pytest

from services.embedded import free_port, private_mosquitto
from simulators.meter import VirtualMeter
from tests.gateway_harness import GatewayProcess, gateway_env
from tests.test_console_support import (  # noqa: F401 - fixtures
    PASSWORD,
    SECRETS,
    Staffing,
    staffing_fixture,
)
from tests.test_console_work import seed_history

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
)  # fmt: skip
LIVE_WITHIN = 2.0  # seconds from publishing the reading to the row in the browser

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (scripts/bootstrap.sh)"),
]  # fmt: skip


# --- the browser (Selenium is blocking: every step runs in a worker thread) ------------------


@dataclass
class Browser:
    name: str
    base: str
    driver: Any

    @classmethod
    def open(cls, name: str, base: str, profile: Path) -> Browser:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        service = Service(executable_path=str(CHROMEDRIVER), log_output=os.devnull)
        return cls(name, base, webdriver.Chrome(service=service, options=options))

    def quit(self) -> None:
        self.driver.quit()

    def get(self, path: str) -> None:
        self.driver.get(self.base + path)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def wait(self, what: Callable[[Any], Any], timeout: float = 10, poll: float = 0.05) -> Any:
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        # The live queue swaps its rows while we look: a stale element means "look again".
        ignored = (NoSuchElementException, StaleElementReferenceException)
        return WebDriverWait(self.driver, timeout, poll_frequency=poll,
                             ignored_exceptions=ignored).until(lambda _d: what(self))

    def click(self, selector: str) -> None:
        def attempt(b: Browser) -> bool:
            b.css(selector).click()
            return True

        self.wait(attempt)

    def select(self, selector: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.css(selector)).select_by_value(value)

    def type(self, selector: str, text: str) -> None:
        el = self.css(selector)
        el.clear()
        el.send_keys(text)

    def sign_in(self, login: str, totp_secret: str | None = None) -> None:
        self.get("/queue")  # anonymous: sent to the sign-in form
        self.wait(lambda b: "/login" in b.driver.current_url)
        self.type("#login", login)
        self.type("#password", PASSWORD)
        self.css("#sign-in").click()
        if totp_secret is not None:
            self.wait(lambda b: b.all("#code"))
            self.type("#code", pyotp.TOTP(totp_secret).now())
            self.css("#verify").click()
        self.wait(lambda b: b.driver.current_url.endswith("/queue"))
        # Live updates connected (the EventSource opened) before anything is published.
        self.wait(lambda b: b.css("body").get_attribute("data-live-connected") == "1")

    def screenshot(self, name: str, full_page: bool = False) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        if full_page:
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(1400, min(int(height) + 40, 6000))
        self.driver.save_screenshot(str(path))
        if full_page:
            self.driver.set_window_size(1400, 1000)
        return path


async def step(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


# --- the processes ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def console_process(database_url: str, log: Path) -> AsyncIterator[str]:
    """`vigil console` as its own process (the command function the CLI registers)."""
    port = free_port()
    env = {**os.environ, "VIGIL_DATABASE_URL": database_url, "VIGIL_ENV": "test",
           "VIGIL_LOG_LEVEL": "WARNING"}  # fmt: skip
    code = f"from services.cli_console import console; console('127.0.0.1', {port})"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=out, stderr=out,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2) as http:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                if proc.returncode is not None or time.monotonic() > deadline:
                    tail = await asyncio.to_thread(log.read_text)
                    raise AssertionError(f"console did not start:\n{tail[-3000:]}")
                await asyncio.sleep(0.1)
        yield base
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.contextmanager
def browsers_closed(browsers: list[Browser]) -> Iterator[None]:
    try:
        yield
    finally:
        for b in browsers:
            with contextlib.suppress(Exception):
                b.quit()


def _critical_row(b: Browser) -> str | None:
    for row in b.all("#queue-table tbody tr.tier-critical"):
        if "Low glucose" in row.text:
            return str(row.get_attribute("data-alert-id"))
    return None


def _wait_for_critical_row(b: Browser) -> tuple[str, float]:
    alert_id = b.wait(_critical_row, timeout=15, poll=0.02)
    return alert_id, time.monotonic()


def _wait_row_gone(b: Browser, alert_id: str) -> float:
    b.wait(lambda br: not br.all(f"#alert-{alert_id}"), timeout=15, poll=0.02)
    return time.monotonic()


def _claim_and_call(b: Browser, alert_id: str) -> None:
    b.click(f'button[data-claim="{alert_id}"]')
    b.wait(lambda br: br.all("#outreach-form"))
    assert "Claimed by you" in b.css("#alert-status").text
    b.select("#outreach-mode", "phone_call")
    b.select("#outreach-outcome", "reached")
    b.type("#outreach-minutes", "4")
    b.css("#outreach-form textarea[name=note]").send_keys("treated with 15 g glucose tablets")
    b.css("#record-outreach").click()
    b.wait(lambda br: "Outreach recorded." in br.css("main").text)
    assert "Phone call" in b.css("#outreach-history").text
    b.screenshot("alert.png", full_page=True)


def _member_page(b: Browser) -> str:
    alert_url = b.driver.current_url.split("?")[0]
    b.css("#member-link").click()
    b.wait(lambda br: br.all("#member-name"))
    b.wait(lambda br: br.driver.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))
    text = str(b.css("main").text)
    b.screenshot("member.png", full_page=True)
    b.driver.get(alert_url)
    b.wait(lambda br: br.all("#resolve-form"))
    return text


def _resolve(b: Browser) -> float:
    b.select("#resolve-outcome", "treated_per_protocol")
    b.css("#resolve").click()
    started = time.monotonic()
    b.wait(lambda br: "Alert resolved." in br.css("main").text)
    return started


async def test_live_queue_claim_call_resolve_in_two_browsers(
    staffing: Staffing, database_url: str, tmp_path: Path
) -> None:
    db: asyncpg.Pool = staffing.db
    await seed_history(staffing, "m-north", datetime.now(UTC))
    async with (
        private_mosquitto(tmp_path / "broker") as mqtt_url,
        console_process(database_url, tmp_path / "console.log") as base,
    ):
        gateway = GatewayProcess("console-e2e",
                                 gateway_env(database_url, mqtt_url, f"g-{uuid.uuid4().hex[:6]}"))
        await gateway.start()
        host, port = mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
        meter = VirtualMeter("gm-m-north", host=host, port=int(port))
        stop = asyncio.Event()
        meter_task = asyncio.create_task(meter.run(stop), name="meter gm-m-north")
        a = b = None
        try:
            a, b = await asyncio.gather(
                step(Browser.open, "coach", base, tmp_path / "profile-a"),
                step(Browser.open, "supervisor", base, tmp_path / "profile-b"),
            )
            with browsers_closed([a, b]):
                await asyncio.gather(step(a.sign_in, "c-north"),
                                     step(b.sign_in, "s-north", SECRETS["s-north"]))
                seen_a = asyncio.create_task(step(_wait_for_critical_row, a))
                seen_b = asyncio.create_task(step(_wait_for_critical_row, b))
                await asyncio.sleep(0.2)  # both are watching
                published = time.monotonic()
                meter.record([{"seq": 50_000, "kind": "glucose", "unit": "mg/dL", "value": 45,
                               "measured_at": datetime.now(UTC).isoformat()}])  # fmt: skip
                (alert_id, at_a), (alert_b, at_b) = await asyncio.gather(seen_a, seen_b)
                assert alert_id == alert_b
                assert at_a - published < LIVE_WITHIN, f"coach saw it after {at_a - published:.2f}s"
                assert at_b - published < LIVE_WITHIN
                await step(a.screenshot, "queue.png")
                await step(_claim_and_call, a, alert_id)
                member_text = await step(_member_page, a)
                for text in ("Kin (sibling)", "America/Chicago", "Sensor wear", "87%"):
                    assert text in member_text, text
                gone_b = asyncio.create_task(step(_wait_row_gone, b, alert_id))
                resolved_at = await step(_resolve, a)
                left_at = await gone_b
                assert left_at - resolved_at < LIVE_WITHIN
                await step(b.screenshot, "queue-supervisor-after.png")
                await step(b.get, "/supervisor")
                await step(b.screenshot, "supervisor.png", True)
                timings = {"appeared_for_coach_s": round(at_a - published, 3),
                           "appeared_for_supervisor_s": round(at_b - published, 3),
                           "left_supervisor_queue_s": round(left_at - resolved_at, 3)}
                await asyncio.to_thread((ARTIFACTS / "timings.json").write_text,
                                        json.dumps(timings, indent=1) + "\n")
        finally:
            stop.set()
            await meter_task
            assert await gateway.stop() == 0
    row = await db.fetchrow("SELECT status, outcome, acknowledged_by, resolved_by FROM alerts "
                            "WHERE id = $1", int(alert_id))  # fmt: skip
    assert tuple(row) == ("resolved", "treated_per_protocol", "c-north", "c-north")
    call = await db.fetchrow("SELECT mode, outcome, duration_minutes FROM outreach")
    assert (call["mode"], call["outcome"], int(call["duration_minutes"])) == (
        "phone_call", "reached", 4)
    actions = [r["action"] for r in await db.fetch(
        "SELECT action FROM audit_log WHERE actor = 'c-north' AND member_id = 'm-north' "
        "ORDER BY id")]  # fmt: skip
    assert actions[:4] == ["alert.claim", "alert.view", "alert.outreach", "alert.view"]
    assert "member.view" in actions and actions[-1] == "alert.resolve"
    assert (ARTIFACTS / "queue.png").stat().st_size > 10_000
    assert (ARTIFACTS / "member.png").stat().st_size > 10_000
