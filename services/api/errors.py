"""The member app API's typed errors and the JSON shape every error takes.

Every error response is `{"error": {"code": ..., "message": ...}}` with a code from the closed set
`ErrorCode`: apps branch on the code, people read the message. Adding a code is an API change.

ApiError                   (the status and code travel with the exception)
 ├── BadRequestError       400 malformed_json, invalid_encoding, the envelope's reading reason
 │                             codes, invalid_idempotency_key, invalid_cursor
 ├── UnauthorizedError     401 unauthorized, token_expired, token_revoked
 ├── ForbiddenError        403 member_not_matched, not_eligible
 ├── ConflictError         409 idempotency_key_reused, idempotency_in_progress
 ├── PayloadTooLargeError  413 payload_too_large
 └── RateLimitedError      429 rate_limited

Lower-layer errors are translated at the boundary (`install_error_handlers`): request validation
-> 422 invalid_request, an unreachable database -> 503 service_unavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import StrEnum
from typing import Final

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.errors import StorageUnavailable

log = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    # 400: the body could not be read as a request. The reading reason codes (malformed_json,
    # invalid_encoding, not_an_object, missing_field, unknown_field, invalid_type) are reused for
    # the readings envelope, so one vocabulary covers the body and the readings in it.
    MALFORMED_JSON = "malformed_json"
    INVALID_ENCODING = "invalid_encoding"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_TYPE = "invalid_type"
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    INVALID_CURSOR = "invalid_cursor"
    BAD_REQUEST = "bad_request"
    # 401: no usable token. Expired and revoked are told apart so the app knows to sign up again.
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - an error code, not a secret
    TOKEN_REVOKED = "token_revoked"  # noqa: S105
    # 403: signup refused. Unknown member and wrong birth date share one code (no member oracle).
    MEMBER_NOT_MATCHED = "member_not_matched"
    NOT_ELIGIBLE = "not_eligible"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_IN_PROGRESS = "idempotency_in_progress"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_REQUEST = "invalid_request"
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"
    SERVICE_UNAVAILABLE = "service_unavailable"


class ApiError(Exception):
    status: int = 400

    def __init__(
        self, code: ErrorCode, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.headers = headers


class BadRequestError(ApiError):
    status = 400


class UnauthorizedError(ApiError):
    status = 401

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(code, message, headers={"WWW-Authenticate": "Bearer"})


class ForbiddenError(ApiError):
    status = 403


class ConflictError(ApiError):
    status = 409


class PayloadTooLargeError(ApiError):
    status = 413


class RateLimitedError(ApiError):
    status = 429


def error_body(code: ErrorCode, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code.value, "message": message}}


def error_response(
    status: int, code: ErrorCode, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


_HTTP_CODES: Final = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
}


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)  # noqa: S101 - registered for ApiError only
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    code = _HTTP_CODES.get(exc.status_code)
    if code is None:
        code = ErrorCode.BAD_REQUEST if exc.status_code < 500 else ErrorCode.INTERNAL_ERROR
    message = exc.detail if isinstance(exc.detail, str) else code.value
    return error_response(exc.status_code, code, message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, ErrorCode.MALFORMED_JSON, "the request body is not JSON")
    # Name the field and the rule, never echo the input (it may be a birth date).
    first = errors[0] if errors else {}
    loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
    msg = str(first.get("msg", "invalid request"))
    return error_response(422, ErrorCode.INVALID_REQUEST, f"{loc}: {msg}" if loc else msg)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this response, so the server logs the traceback.
    return error_response(500, ErrorCode.INTERNAL_ERROR, "internal error")


async def _storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", type(exc).__name__)
    return error_response(
        503, ErrorCode.SERVICE_UNAVAILABLE, "the service is unavailable, retry later",
        {"Retry-After": "5"},
    )  # fmt: skip


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    for exc_type in (
        StorageUnavailable,
        OSError,  # connection refused or reset while acquiring or using a connection
        asyncpg.CannotConnectNowError,
        asyncpg.ConnectionDoesNotExistError,
        asyncpg.TooManyConnectionsError,
    ):
        app.add_exception_handler(exc_type, _storage_unavailable)
