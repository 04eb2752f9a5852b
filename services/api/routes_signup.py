"""Tokens: `POST /v1/signup` issues one, `POST /v1/tokens/revoke` ends the presented one.

Signup proves who the member is with what the client's records and the member both know: the
client, the member's id (the client's `external_id`, or Vigil's member id) and the birth date.
An unknown member and a wrong birth date get the same answer (`member_not_matched`), so the
endpoint does not tell which ids exist; attempts are rate limited per client and IP address
(services/api/limits.py). For a client that sends an eligibility file, the member must also have
a current row in `member_eligibility` (matched by external id and birth date); for the others
every imported member is eligible (docs/onboarding.md, `has_eligibility_file`).
"""

from __future__ import annotations

import logging
import math
from typing import Final

from fastapi import APIRouter, Request, Response

from services.api.deps import ApiConfig, CurrentMember, Pool, SignupLimiter
from services.api.errors import ErrorCode, ForbiddenError, RateLimitedError
from services.api.schemas import SignupCreate, TokenPublic
from services.api.tokens import issue_token, revoke_token

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["tokens"])

# Today is the member's local day: eligibility dates are days in the member's time zone.
_MATCH_SQL: Final = """
SELECT m.id, m.birth_date = $3 AS birth_date_matches, c.has_eligibility_file,
       EXISTS (
           SELECT 1 FROM member_eligibility e
           WHERE e.client_id = m.client_id AND e.external_id = m.external_id
             AND e.birth_date = m.birth_date
             AND e.eligible_from <= (now() AT TIME ZONE m.timezone)::date
             AND (e.eligible_to IS NULL OR e.eligible_to >= (now() AT TIME ZONE m.timezone)::date)
       ) AS eligible_now
FROM members m JOIN clients c ON c.id = m.client_id
WHERE m.client_id = $1 AND {column} = $2
"""
_BY_EXTERNAL_ID: Final = _MATCH_SQL.format(column="m.external_id")
_BY_MEMBER_ID: Final = _MATCH_SQL.format(column="m.id")


def _client_address(request: Request) -> str:
    # Behind a proxy, uvicorn's --proxy-headers (on by default for trusted local proxies) has
    # already put the forwarded address here.
    return request.client.host if request.client else "unknown"


@router.post(
    "/signup",
    status_code=201,
    responses={403: {"description": "member_not_matched or not_eligible"}, 429: {}},
)
async def signup(
    body: SignupCreate,
    request: Request,
    pool: Pool,
    config: ApiConfig,
    limiter: SignupLimiter,
) -> TokenPublic:
    """Sign a member's app up and return a bearer token bound to that member."""
    wait = limiter.acquire((body.client_id, _client_address(request)))
    if wait > 0:
        raise RateLimitedError(
            ErrorCode.RATE_LIMITED,
            "too many signup attempts, retry later",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    async with pool.acquire() as conn, conn.transaction():
        if body.external_id is not None:
            row = await conn.fetchrow(_BY_EXTERNAL_ID, body.client_id, body.external_id,
                                      body.birth_date)  # fmt: skip
        else:
            row = await conn.fetchrow(_BY_MEMBER_ID, body.client_id, body.member_id,
                                      body.birth_date)  # fmt: skip
        if row is None or not row["birth_date_matches"]:
            log.info("signup not matched for client %s", body.client_id)
            raise ForbiddenError(
                ErrorCode.MEMBER_NOT_MATCHED,
                "no member of this client matches these details",
            )
        if row["has_eligibility_file"] and not row["eligible_now"]:
            log.info("signup refused: member %s not eligible today", row["id"])
            raise ForbiddenError(
                ErrorCode.NOT_ELIGIBLE, "the member is not currently eligible with this client"
            )
        issued = await issue_token(conn, row["id"], config.token_ttl)
    log.info("token issued for member %s", row["id"])
    return TokenPublic(token=issued.token, expires_at=issued.expires_at)


@router.post("/tokens/revoke", status_code=204, response_class=Response)
async def revoke(member: CurrentMember, pool: Pool) -> Response:
    """Revoke the token this request presents (sign-out). Any later use of it gets 401."""
    await revoke_token(pool, member.token_hash)
    log.info("token revoked by member %s", member.member_id)
    return Response(status_code=204)
