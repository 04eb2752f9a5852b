"""Request limits: body size (an ASGI middleware) and the signup attempt rate (a token bucket).

Both are per process, in memory. The body limit needs nothing shared. The signup limiter is a
speed bump against guessing birth dates, not a global quota: with N API processes behind a load
balancer an address gets up to N times the budget, and a restart forgets it. When that matters,
limit at the proxy or move the buckets into PostgreSQL.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import ErrorCode, error_response


class BodyLimitMiddleware:
    """Refuses request bodies over a per-path limit with 413 payload_too_large.

    A declared Content-Length over the limit is refused before the app runs; a body without one
    (chunked) is counted as it is read, and the read that crosses the limit raises. The raised
    exception is FastAPI's HTTPException, which FastAPI's own body parsing lets through unchanged
    (anything else would become a 400 "error parsing the body").
    """

    def __init__(
        self, app: ASGIApp, *, default_limit: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.default_limit)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = error_response(
                413, ErrorCode.PAYLOAD_TOO_LARGE,
                f"request body of {declared} bytes exceeds {limit}",
            )  # fmt: skip
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body exceeds {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


#: Buckets kept at most; the least recently used go first (a flood of addresses cannot grow
#: memory without bound, at the price of forgetting some addresses' history).
MAX_BUCKETS: Final = 50_000


class SignupRateLimiter:
    """A token bucket per key (client id, IP address): `burst` attempts, then one per `refill`."""

    def __init__(
        self,
        burst: int,
        refill_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self._burst = float(burst)
        self._rate = 1.0 / refill_seconds
        self._clock = clock
        self._max = max_buckets
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def acquire(self, key: tuple[str, str]) -> float:
        """Take one attempt for `key`. Returns 0 when allowed, else seconds until one is."""
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        self._buckets[key] = bucket  # most recently used last
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate
