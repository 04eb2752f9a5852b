"""Readings from the member's app: `POST /v1/readings`, through the same pipeline as every
other transport (transport "http").

The body is `{"readings": [...]}`, each element a reading-file object (docs/readings.md). The
reply lists every reading's outcome in request order: accepted, duplicate, or rejected with its
reason code. Nothing is lost: every rejected reading is in quarantine with its reason, and so is
a body that is not JSON (400 malformed_json / invalid_encoding) or not the envelope (400 with the
reading reason code). Only a body over the size limit (413) is refused unread: the app still has
it and splits it.

A member's app may relay several devices, so the device is not fixed per request. Each reading's
device must be the member's at the reading's time, otherwise it is rejected as `device_mismatch`
before it reaches storage. Unknown devices get the same code, so the reply does not reveal which
device ids exist. "At the reading's time" is checked at every instant the pipeline's clock rule
may pick as effective_at (the device time, or the receive time when the device clock turns out
implausible), so the pipeline can only attribute the reading to this member: an app cannot write
into another member's record, e.g. with old readings still in a reused meter's memory. The price
is that a reading of a device the member has since returned is rejected (and kept in quarantine).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import asyncpg
import orjson
from fastapi import APIRouter, Header, Request, Response

from services.api import idempotency
from services.api.deps import ApiConfig, AppSettings, CurrentMember, Pipeline, Pool
from services.api.errors import ErrorCode, PayloadTooLargeError, error_body
from services.api.idempotency import Reply, canonical_json
from services.api.schemas import ReadingOutcomePublic, ReadingsBatchCreate, ReadingsResultPublic
from services.api.tokens import AuthedMember
from services.domain.readings import ReadingRejected
from services.domain.reasons import ReasonCode
from services.pipeline import BatchResult, Incoming, ReadingPipeline
from services.pipeline.core import EARLIEST_PLAUSIBLE, PreparedBatch
from services.pipeline.payload import decode_json

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["readings"])

TRANSPORT: Final = "http"
#: Route path, also used by the body-size middleware to give it the larger limit.
READINGS_PATH: Final = "/v1/readings"

_OPENAPI_BODY: Final = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ReadingsBatchCreate.model_json_schema()}},
    }
}

Interval = tuple[datetime | None, datetime | None]  # [from, to), None open


@router.post(
    "/readings",
    response_model=ReadingsResultPublic,
    openapi_extra=_OPENAPI_BODY,
    responses={400: {}, 401: {}, 409: {}, 413: {}},
)
async def post_readings(
    request: Request,
    member: CurrentMember,
    pool: Pool,
    pipeline: Pipeline,
    settings: AppSettings,
    config: ApiConfig,
    idempotency_key: Annotated[
        str | None,
        Header(description="Makes a resend safe: the same key and body get the same reply"),
    ] = None,
) -> Response:
    """Store a batch of the member's readings; reply with each reading's outcome."""
    key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
    body = await request.body()  # size-limited by BodyLimitMiddleware
    batch = _Batch(member, pool, pipeline, config.max_batch_readings,
                   settings.clock_future_tolerance)  # fmt: skip
    if key is None:
        return _response(await batch.process(body))
    stored = await idempotency.reserve(
        pool, member.member_id, key, idempotency.request_digest(body),
        config.idempotency_stale_after,
    )  # fmt: skip
    if stored is not None:
        log.info("idempotent replay for member %s", member.member_id)
        return _response(stored, replayed=True)
    try:
        reply = await batch.process(body)
    except BaseException:
        await idempotency.release(pool, member.member_id, key)
        raise
    await idempotency.complete(pool, member.member_id, key, reply)
    return _response(reply)


def _response(reply: Reply, *, replayed: bool = False) -> Response:
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(reply.body, reply.status, headers, media_type="application/json")


class _Batch:
    """One request's readings on their way through the pipeline."""

    def __init__(
        self,
        member: AuthedMember,
        pool: asyncpg.Pool,
        pipeline: ReadingPipeline,
        max_readings: int,
        future_tolerance: timedelta,
    ) -> None:
        self.member = member
        self.pool = pool
        self.pipeline = pipeline
        self.max_readings = max_readings
        self.future_tolerance = future_tolerance
        self.received_at = datetime.now(UTC)

    async def process(self, body: bytes) -> Reply:
        try:
            readings = _envelope(decode_json(body, len(body)))
        except ReadingRejected as rej:
            # The whole body is one quarantine entry: nothing the app sent is lost.
            item = Incoming(body, self.received_at, TRANSPORT)
            await self.pipeline.store(PreparedBatch([item], {}, {0: rej}))
            log.info("readings body from member %s quarantined: %s", self.member.member_id,
                     rej.reason.value)  # fmt: skip
            return Reply(400, canonical_json(error_body(ErrorCode(rej.reason.value), rej.detail)))
        if len(readings) > self.max_readings:
            raise PayloadTooLargeError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"{len(readings)} readings in one request; send at most {self.max_readings}",
            )
        # Each reading keeps its own bytes for quarantine, as the MQTT gateway does for batches.
        items = [Incoming(orjson.dumps(obj), self.received_at, TRANSPORT) for obj in readings]
        prepared = self.pipeline.prepare(items)
        _storable_rejections(prepared)
        await self._reject_foreign_devices(prepared)
        result = await self.pipeline.store(prepared)
        self._check_attribution(result)
        counts = result.counts()
        log.info(
            "readings from member %s: %d accepted, %d duplicate, %d rejected",
            self.member.member_id, counts["accepted"], counts["duplicate"], counts["rejected"],
        )  # fmt: skip
        return Reply(200, canonical_json(_result_payload(result, len(items))))

    async def _reject_foreign_devices(self, prepared: PreparedBatch) -> None:
        """Move readings whose device is not this member's at the reading's time to `rejected`
        (device_mismatch): the pipeline quarantines them and stores nothing of them."""
        if not prepared.normalized:
            return
        device_ids = {n.device_id for n in prepared.normalized.values()}
        rows = await self.pool.fetch(
            "SELECT device_id, assigned_from, assigned_to FROM device_assignments "
            "WHERE member_id = $1 AND device_id = ANY($2::text[])",
            self.member.member_id,
            list(device_ids),
        )
        held: dict[str, list[Interval]] = defaultdict(list)
        for r in rows:
            held[r["device_id"]].append((r["assigned_from"], r["assigned_to"]))
        for i, n in list(prepared.normalized.items()):
            times = self._attribution_times(n.measured_at)
            intervals = held.get(n.device_id, [])
            if not all(_covered(intervals, t) for t in times):
                del prepared.normalized[i]
                prepared.rejected[i] = ReadingRejected(
                    ReasonCode.DEVICE_MISMATCH,
                    "the device is not assigned to this member at the reading's time",
                    n.device_id,
                    n.seq,
                )

    def _attribution_times(self, measured_at: datetime) -> tuple[datetime, ...]:
        """The instants the pipeline may attribute the reading at (services/pipeline/core.py,
        clock rule): only the receive time when the device time is certainly implausible, else
        both, since stored neighbours may still make the pipeline correct the clock."""
        if (
            measured_at > self.received_at + self.future_tolerance
            or measured_at < EARLIEST_PLAUSIBLE
        ):
            return (self.received_at,)
        return (measured_at, self.received_at)

    def _check_attribution(self, result: BatchResult) -> None:
        # Cannot happen after _reject_foreign_devices unless an assignment changed meanwhile;
        # loud, because it means the member's app wrote into someone else's record.
        foreign = sum(1 for s in result.stored if s.member_id != self.member.member_id)
        if foreign:
            log.error(
                "%d readings from member %s's app were attributed to another member "
                "(a device assignment changed during the request)",
                foreign, self.member.member_id,
            )  # fmt: skip


def _envelope(doc: Any) -> list[Any]:
    """`{"readings": [...]}` -> the list, or a ReadingRejected naming what is wrong."""
    if not isinstance(doc, dict):
        raise ReadingRejected(ReasonCode.NOT_AN_OBJECT, 'the body must be {"readings": [...]}')
    if "readings" not in doc:
        raise ReadingRejected(ReasonCode.MISSING_FIELD, "readings: field required")
    if len(doc) != 1:
        extra = sorted(k for k in doc if k != "readings")[0]
        raise ReadingRejected(
            ReasonCode.UNKNOWN_FIELD, f"{extra[:64]!r}: not part of the readings envelope"
        )
    readings = doc["readings"]
    if not isinstance(readings, list):
        raise ReadingRejected(ReasonCode.INVALID_TYPE, "readings: must be a list")
    return readings


def _storable_rejections(prepared: PreparedBatch) -> None:
    """Escape NUL characters in rejections. A rejection's detail names the offending field and
    its device_id is copied from the payload; PostgreSQL text cannot hold NUL, so an unknown
    field whose name holds a NUL would otherwise fail the quarantine insert and the whole batch.
    (Belongs in the pipeline core, which has the same failure for every transport.)"""
    for i, rej in list(prepared.rejected.items()):
        if "\x00" in rej.detail or (rej.device_id is not None and "\x00" in rej.device_id):
            prepared.rejected[i] = ReadingRejected(
                rej.reason,
                rej.detail.replace("\x00", "\\u0000"),
                None if rej.device_id is None else rej.device_id.replace("\x00", "\\u0000"),
                rej.seq,
            )


def _covered(intervals: Sequence[Interval], t: datetime) -> bool:
    return any(
        (start is None or start <= t) and (end is None or t < end) for start, end in intervals
    )


def _result_payload(result: BatchResult, n_items: int) -> dict[str, Any]:
    outcomes = result.outcomes
    if len(outcomes) != n_items:  # the pipeline answers every item, in order
        raise RuntimeError(f"pipeline returned {len(outcomes)} outcomes for {n_items} readings")
    counts = result.counts()
    payload = ReadingsResultPublic(
        accepted=counts["accepted"],
        duplicate=counts["duplicate"],
        rejected=counts["rejected"],
        results=[
            ReadingOutcomePublic(
                index=i,
                status=o.status,
                device_id=o.device_id,
                seq=o.seq,
                reason=o.reason.value if o.reason is not None else None,
                detail=o.detail,
            )
            for i, o in enumerate(outcomes)
        ],
    )
    return payload.model_dump(mode="json")
