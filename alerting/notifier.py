"""Sending SMS and voice notices through a provider: pages to coaches, emergency contacts.

`Notifier` is the seam: `HttpsNotifier` posts one JSON document per notice to the provider's URL
with a bearer token (VIGIL_NOTIFIER_URL, VIGIL_NOTIFIER_TOKEN); tests run a small local HTTP
server at that edge. The request body is

    {"to": "+13125550101", "channel": "sms" | "voice", "message": "...", "reference": "page-17"}

with an `Idempotency-Key: <reference>` header, so a notice retried after a timeout is not sent
twice by a provider that honours it. A 2xx answer is "accepted" (its JSON `id`, if any, is kept);
anything else is a failed `Delivery` with the reason, recorded by the caller: a provider outage
must never stop the scheduler, and a failed page is retried by the paging schedule.

Phone numbers and message texts are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.errors import ConfigurationError
from services.settings import Settings

log = logging.getLogger(__name__)

Channel = Literal["sms", "voice"]
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
_MAX_ANSWER: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Notice:
    to: str  # E.164 or the provider's accepted phone format
    channel: Channel
    body: str
    reference: str  # ours, unique per notice: "page-17", "notification-3"


@dataclass(frozen=True, slots=True)
class Delivery:
    ok: bool
    status: str  # "accepted", "http_503", "timeout", "unreachable", "logged"
    provider_id: str | None = None


class Notifier(ABC):
    @abstractmethod
    async def send(self, notice: Notice) -> Delivery:
        """Hand one notice to the provider. Never raises for a provider or network failure."""


class NotifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_NOTIFIER_", extra="ignore", frozen=True)

    #: The SMS/voice provider's endpoint; https (plain http only on the loopback interface).
    url: str | None = None
    token: SecretStr | None = None
    timeout: float = Field(default=10.0, gt=0, le=60)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST would silently become a GET without the notice: refuse it instead.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class HttpsNotifier(Notifier):
    def __init__(self, url: str, token: SecretStr, *, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        loopback = parts.hostname in _LOOPBACK
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ConfigurationError(
                "VIGIL_NOTIFIER_URL must be an https:// URL (http:// only on the loopback "
                "interface, for tests and local provider simulators)"
            )
        self._url = url
        self._token = token
        self._timeout = timeout
        handlers: list[urllib.request.BaseHandler] = [
            _NoRedirect(), urllib.request.HTTPSHandler(context=ssl.create_default_context())
        ]  # fmt: skip
        if loopback:
            handlers.append(urllib.request.ProxyHandler({}))  # never proxy a local simulator
        self._opener = urllib.request.build_opener(*handlers)

    async def send(self, notice: Notice) -> Delivery:
        body = json.dumps({"to": notice.to, "channel": notice.channel, "message": notice.body,
                           "reference": notice.reference}).encode()  # fmt: skip
        try:
            # urllib in a worker thread: the standard library's HTTPS client, with its own
            # socket timeout; the outer timeout bounds the await even if a thread lingers.
            async with asyncio.timeout(self._timeout + 5):
                code, answer = await asyncio.to_thread(self._post, body, notice.reference)
        except TimeoutError:
            return Delivery(ok=False, status="timeout")
        except OSError as exc:  # refused, reset, DNS, TLS (ssl.SSLError is an OSError)
            log.warning("notifier: provider unreachable (%s)", type(exc).__name__)
            return Delivery(ok=False, status="unreachable")
        if not 200 <= code < 300:
            log.warning("notifier: provider answered HTTP %d for %s", code, notice.reference)
            return Delivery(ok=False, status=f"http_{code}")
        return Delivery(ok=True, status="accepted", provider_id=_provider_id(answer))

    def _post(self, body: bytes, reference: str) -> tuple[int, bytes]:
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self._url, data=body, method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": reference,
                     "Authorization": f"Bearer {self._token.get_secret_value()}",
                     "User-Agent": "vigil-notifier/1"},
        )  # fmt: skip
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return int(response.status), response.read(_MAX_ANSWER)
        except urllib.error.HTTPError as exc:  # a non-2xx answer is an answer, not an error
            exc.close()
            return exc.code, b""
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise exc.reason from exc
            raise OSError(str(exc.reason)) from exc


class LogNotifier(Notifier):
    """Development only (refused in production): logs that a notice would have been sent."""

    async def send(self, notice: Notice) -> Delivery:
        log.warning("notifier: no VIGIL_NOTIFIER_URL; %s %s not sent (development)",
                    notice.channel, notice.reference)  # fmt: skip
        return Delivery(ok=True, status="logged")


def build_notifier(settings: Settings, notifier: NotifierSettings) -> Notifier:
    if notifier.url is None:
        if settings.env == "production":
            raise ConfigurationError(
                "VIGIL_NOTIFIER_URL and VIGIL_NOTIFIER_TOKEN must be set in production: without "
                "them critical alerts would page nobody"
            )
        return LogNotifier()
    token = notifier.token.get_secret_value() if notifier.token else ""
    if settings.env == "production" and (len(token) < 16 or token.lower() in ("changeme", "dev")):
        raise ConfigurationError("VIGIL_NOTIFIER_TOKEN must be the provider's real token")
    return HttpsNotifier(notifier.url, SecretStr(token), timeout=notifier.timeout)


def _provider_id(answer: bytes) -> str | None:
    try:
        doc = json.loads(answer) if answer else None
    except ValueError:
        return None
    if isinstance(doc, dict):
        found = doc.get("id") or doc.get("sid")
        return str(found)[:200] if found is not None else None
    return None
