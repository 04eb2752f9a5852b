"""The API's dependencies as `Annotated` aliases: a route names what it needs by type.

App-scoped objects come from the lifespan state (`services.api.app.lifespan`), copied into each
request's `request.state` by Starlette; nothing here connects or reads settings at import.
"""

from __future__ import annotations

from typing import Annotated, cast

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.limits import SignupRateLimiter
from services.api.settings import ApiSettings
from services.api.tokens import AuthedMember, authenticate
from services.pipeline import ReadingPipeline
from services.settings import Settings


def _pool(request: Request) -> asyncpg.Pool:
    return cast(asyncpg.Pool, request.state.pool)


def _pipeline(request: Request) -> ReadingPipeline:
    return cast(ReadingPipeline, request.state.pipeline)


def _settings(request: Request) -> Settings:
    return cast(Settings, request.state.settings)


def _api_settings(request: Request) -> ApiSettings:
    return cast(ApiSettings, request.state.api_settings)


def _signup_limiter(request: Request) -> SignupRateLimiter:
    return cast(SignupRateLimiter, request.state.signup_limiter)


Pool = Annotated[asyncpg.Pool, Depends(_pool)]
Pipeline = Annotated[ReadingPipeline, Depends(_pipeline)]
AppSettings = Annotated[Settings, Depends(_settings)]
ApiConfig = Annotated[ApiSettings, Depends(_api_settings)]
SignupLimiter = Annotated[SignupRateLimiter, Depends(_signup_limiter)]

# auto_error=False: a missing or non-Bearer header is our 401 with our error shape, not FastAPI's.
_bearer = HTTPBearer(auto_error=False, description="The token returned by POST /v1/signup")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def _current_member(pool: Pool, credentials: Credentials) -> AuthedMember:
    return await authenticate(pool, credentials.credentials if credentials else None)


#: The member the request's bearer token is bound to; 401 when there is none.
CurrentMember = Annotated[AuthedMember, Depends(_current_member)]
