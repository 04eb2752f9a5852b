"""Configuration from `VIGIL_`-prefixed environment variables (pydantic-settings).

Built in `main()` or an app's lifespan, never at import time. Secrets are `SecretStr`; outside
development a placeholder or generated development secret is refused.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/vigil"
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
_PLACEHOLDERS = frozenset({"", "changeme", "change-me", "secret", "password", "dev", "development"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="ignore", frozen=True)

    env: Literal["development", "test", "production"] = "development"
    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    mqtt_url: SecretStr = SecretStr(DEFAULT_MQTT_URL)
    #: Where embedded servers, generated broker files and demo state live.
    state_dir: str = ".vigil"
    #: "auto": use TimescaleDB when the extension can be created; "off": plain PostgreSQL;
    #: "require": fail unless TimescaleDB is there (production).
    timescale: Literal["auto", "off", "require"] = "auto"
    readings_retention: timedelta = timedelta(days=7 * 366)  # >= 7 years (medical records)
    compress_after: timedelta = timedelta(days=30)
    #: Readings per database transaction in the pipeline.
    batch_size: int = Field(default=10_000, ge=1, le=100_000)
    #: Largest accepted payload (one reading file line, MQTT message or HTTP body), in bytes.
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024)
    #: Clock rule: a device time further in the future than this is implausible.
    clock_future_tolerance: timedelta = timedelta(minutes=5)
    #: MQTT topic prefix of the device protocol (device_gateway/mqtt/topics.py).
    mqtt_prefix: str = "vigil/v1"
    #: Shared-subscription group of the gateway workers: N workers split the devices' messages.
    gateway_group: str = "vigil-gateway"
    #: How long the broker keeps a disconnected worker's session (and its queued messages).
    gateway_session_expiry: timedelta = timedelta(hours=24)
    #: A gateway batch is stored when it has this many readings or is this old.
    gateway_batch_size: int = Field(default=2_000, ge=1, le=100_000)
    gateway_batch_wait: timedelta = timedelta(milliseconds=50)
    #: Received-but-unstored messages above which a worker stops reading its socket.
    gateway_max_pending: int = Field(default=20_000, ge=100)
    #: The gateway's /metrics and /healthz listener (port 0: any free port).
    gateway_metrics_host: str = "127.0.0.1"
    gateway_metrics_port: int = Field(default=9464, ge=0, le=65535)
    #: Fleet alarm: no device heard from for this long means an outage, not quiet members.
    fleet_silence_alarm: timedelta = timedelta(minutes=30)
    #: Secret used to key pseudonyms and sign sessions; generated per run in development.
    secret_key: SecretStr | None = None
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _no_placeholders_in_production(self) -> Settings:
        if self.env == "production":
            key = self.secret_key.get_secret_value() if self.secret_key else ""
            if key.lower() in _PLACEHOLDERS or key.startswith("dev-") or len(key) < 32:
                raise ValueError(
                    "VIGIL_SECRET_KEY must be set to a real secret of at least 32 characters "
                    "in production (development secrets are refused)"
                )
            if self.timescale == "off":
                raise ValueError("production deployments use TimescaleDB (VIGIL_TIMESCALE)")
        return self

    def dsn(self) -> str:
        return self.database_url.get_secret_value()
