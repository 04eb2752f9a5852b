"""Settings of the member app API, from `VIGIL_API_`-prefixed environment variables.

Kept beside the API rather than in `services.settings` because only `vigil api` reads them; the
database, payload limit and clock tolerance still come from the shared `Settings`. Built by
`create_app` (called from the CLI or a test), never at import time.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_API_", extra="ignore", frozen=True)

    #: Lifetime of a token issued at signup (VIGIL_API_TOKEN_TTL: seconds or ISO 8601, "P30D").
    token_ttl: timedelta = timedelta(days=30)
    #: Signup attempts per (client, IP address): a bucket of this many, refilled one per interval.
    signup_burst: int = Field(default=5, ge=1)
    signup_refill: timedelta = timedelta(minutes=1)
    #: A readings request may be this many times VIGIL_MAX_PAYLOAD_BYTES (one reading's limit):
    #: 16 x 256 KiB = 4 MiB carries 14 days of 5-minute CGM values (about 4,000 readings).
    body_factor: int = Field(default=16, ge=1, le=256)
    #: Most readings one request may carry; above it the app splits the batch (413).
    max_batch_readings: int = Field(default=5_000, ge=1, le=100_000)
    #: Any other request body (signup) is small.
    max_small_body_bytes: int = Field(default=16 * 1024, ge=1024)
    #: A reserved Idempotency-Key whose request never finished (a crashed process) is released
    #: after this long.
    idempotency_stale_after: timedelta = timedelta(minutes=5)
    pool_max_size: int = Field(default=10, ge=2)
