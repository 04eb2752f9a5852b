"""Console settings from `VIGIL_CONSOLE_`-prefixed environment variables (pydantic-settings).

Built by `vigil console` (or a test) and handed to `create_app`; never read at import time.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIGIL_CONSOLE_", extra="ignore", frozen=True)

    #: Automatic logoff after this long without a request the person made (HIPAA 45 CFR
    #: 164.312(a)(2)(iii) automatic logoff). Live updates and countdowns do not count as activity.
    idle_timeout: timedelta = timedelta(minutes=15)
    #: A session ends after this long whatever the activity: one shift.
    session_lifetime: timedelta = timedelta(hours=12)
    #: This many failed logins (password or TOTP) for one login name within `lockout_window`
    #: lock it until the window has passed (NIST SP 800-63B 5.2.2 rate limiting).
    lockout_failures: int = Field(default=5, ge=1)
    lockout_window: timedelta = timedelta(minutes=15)
    #: Secure cookies: None means "outside development" (VIGIL_ENV). Chromium and Firefox accept
    #: Secure cookies from http://localhost and 127.0.0.1, so tests run with them on.
    cookie_secure: bool | None = None
    pool_max_size: int = Field(default=8, ge=2, le=100)
    #: How often a console process looks for due follow-up timers.
    followup_poll: timedelta = timedelta(seconds=5)
    #: A comment line on idle event streams, so proxies keep them open.
    sse_heartbeat: timedelta = timedelta(seconds=15)
    #: Alerts listed in the queue at most.
    queue_limit: int = Field(default=300, ge=10, le=5000)
