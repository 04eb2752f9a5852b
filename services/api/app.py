"""The member app API (FastAPI): `create_app(settings)`, served by `vigil api`.

The lifespan opens the asyncpg pool and builds the reading pipeline (the same one every transport
uses, services.commands.build_pipeline) and yields them as the lifespan state; routes get them
through the aliases in services/api/deps.py. Nothing connects or reads the environment at import.

Logs carry counts and internal ids only: never a reading's values, a birth date, an external id
or a token (PHI and secrets stay out of log pipelines).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import asyncpg
from fastapi import FastAPI

from services.api import routes_me, routes_readings, routes_signup
from services.api.errors import install_error_handlers
from services.api.limits import BodyLimitMiddleware, SignupRateLimiter
from services.api.settings import ApiSettings
from services.commands import build_pipeline
from services.pipeline import ReadingPipeline
from services.settings import Settings
from services.storage.db import open_pool


class ApiState(TypedDict):
    """What the lifespan yields; Starlette copies it into every request's `request.state`."""

    pool: asyncpg.Pool
    pipeline: ReadingPipeline
    settings: Settings
    api_settings: ApiSettings
    signup_limiter: SignupRateLimiter


def create_app(settings: Settings, api_settings: ApiSettings | None = None) -> FastAPI:
    config = api_settings if api_settings is not None else ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[ApiState]:
        async with open_pool(settings.dsn(), min_size=1, max_size=config.pool_max_size) as pool:
            yield ApiState(
                pool=pool,
                pipeline=build_pipeline(pool, settings),
                settings=settings,
                api_settings=config,
                signup_limiter=SignupRateLimiter(
                    config.signup_burst, config.signup_refill.total_seconds()
                ),
            )

    app = FastAPI(
        title="Vigil member app API",
        version="1",
        summary="Sign up, send readings, read your own readings and summaries.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=config.max_small_body_bytes,
        path_limits={
            routes_readings.READINGS_PATH: settings.max_payload_bytes * config.body_factor
        },
    )
    app.include_router(routes_signup.router)
    app.include_router(routes_readings.router)
    app.include_router(routes_me.router)
    return app
