"""The member's own data: `GET /v1/me/readings` and `GET /v1/me/summary`.

The bearer token decides the member; no URL names one, so no parameter can reach another
member's data. Every query below filters on `member_id = $1` bound from the token.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from enum import IntEnum
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo

import asyncpg
import orjson
from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from services.api.deps import CurrentMember, Pool
from services.api.errors import BadRequestError, ErrorCode
from services.api.schemas import (
    GlucoseSummaryPublic,
    NormalizedValuesPublic,
    OriginalValuesPublic,
    PressureSummaryPublic,
    ReadingPagePublic,
    ReadingPublic,
    SummaryPublic,
    WeightSummaryPublic,
)
from services.domain.readings import ReadingKind

router = APIRouter(prefix="/v1/me", tags=["me"])

# Glucose time in range 70-180 mg/dL, 3.9-10.0 mmol/L, both ends in range: International Consensus
# on Time in Range (Battelino et al., Diabetes Care 2019;42(8):1593). Compared in the unit the
# meter used, as the consensus states both: 10.0 mmol/L is in range though it converts to 180.16
# mg/dL. The consensus defines time, for CGM data; here it is the share of readings, which for
# regularly spaced CGM values is the same and for fingersticks is only indicative.
GLUCOSE_RANGE_MGDL: Final = (Decimal(70), Decimal(180))
GLUCOSE_RANGE_MMOLL: Final = (Decimal("3.9"), Decimal("10.0"))
# Home blood pressure target: below 130/80 mmHg (2017 ACC/AHA guideline; its table of home
# equivalents maps office 130/80 to home 130/80). Compared in mmHg, the unit the guideline uses.
BP_TARGET_MMHG: Final = (Decimal(130), Decimal(80))


class SummaryDays(IntEnum):
    """Summary windows the app offers (a query string "7" validates to an IntEnum, not to a
    Literal[7])."""

    WEEK = 7
    TWO_WEEKS = 14
    MONTH = 30


_MEAN: Final = Decimal("0.1")
_SHARE: Final = Decimal("0.0001")

_READING_COLUMNS: Final = """
device_id, seq_epoch, seq, kind, source, effective_at, measured_at, measured_offset,
clock_corrected, flags, meal, unit, value, systolic, diastolic, mean_arterial, pulse,
glucose_mgdl, systolic_mmhg, diastolic_mmhg, mean_arterial_mmhg, weight_kg
"""
# Newest first; the key (effective_at, device_id, seq_epoch, seq) is unique per member, so the
# cursor (the last row's key) pages without gaps or repeats while readings arrive.
_READINGS_SQL: Final = f"""
SELECT {_READING_COLUMNS}
FROM readings
WHERE member_id = $1
  AND ($2::timestamptz IS NULL OR effective_at >= $2)
  AND ($3::timestamptz IS NULL OR effective_at < $3)
  AND ($4::text IS NULL OR kind = $4)
  AND ($5::timestamptz IS NULL
       OR (effective_at, device_id, seq_epoch, seq) < ($5, $6::text, $7::integer, $8::bigint))
ORDER BY effective_at DESC, device_id DESC, seq_epoch DESC, seq DESC
LIMIT $9
"""

# Control-solution readings test the meter, not the member: excluded (as in the hourly rollup).
# HI/LO glucose readings have no usable value: counted above/below range, left out of the mean.
_SUMMARY_SQL: Final = """
SELECT
    count(*) FILTER (WHERE kind = 'glucose') AS g_n,
    avg(glucose_mgdl) FILTER (WHERE kind = 'glucose' AND NOT off_scale) AS g_mean,
    count(*) FILTER (WHERE kind = 'glucose' AND band = 0) AS g_in,
    count(*) FILTER (WHERE kind = 'glucose' AND (band < 0 OR 'LO' = ANY (flags))) AS g_below,
    count(*) FILTER (WHERE kind = 'glucose' AND (band > 0 OR 'HI' = ANY (flags))) AS g_above,
    count(*) FILTER (WHERE kind = 'blood_pressure') AS b_n,
    avg(systolic_mmhg) FILTER (WHERE kind = 'blood_pressure') AS b_systolic,
    avg(diastolic_mmhg) FILTER (WHERE kind = 'blood_pressure') AS b_diastolic,
    count(*) FILTER (WHERE kind = 'blood_pressure' AND systolic_mmhg < $8
                     AND diastolic_mmhg < $9) AS b_below,
    count(*) FILTER (WHERE kind = 'weight') AS w_n,
    (array_agg(weight_kg ORDER BY effective_at, seq) FILTER (WHERE kind = 'weight'))[1]
        AS w_first,
    (array_agg(weight_kg ORDER BY effective_at DESC, seq DESC) FILTER (WHERE kind = 'weight'))[1]
        AS w_last
FROM (
    SELECT kind, flags, glucose_mgdl, systolic_mmhg, diastolic_mmhg, weight_kg, effective_at, seq,
           flags && ARRAY['HI', 'LO'] AS off_scale,
           CASE
               WHEN kind <> 'glucose' OR flags && ARRAY['HI', 'LO'] THEN NULL
               WHEN unit = 'mmol/L' THEN
                   CASE WHEN value < $6 THEN -1 WHEN value > $7 THEN 1 ELSE 0 END
               ELSE CASE WHEN glucose_mgdl < $4 THEN -1 WHEN glucose_mgdl > $5 THEN 1 ELSE 0 END
           END AS band
    FROM readings
    WHERE member_id = $1 AND effective_at >= $2 AND effective_at <= $3
      AND NOT ('control_solution' = ANY (flags))
) r
"""


@router.get("/readings", responses={400: {}, 401: {}})
async def my_readings(
    member: CurrentMember,
    pool: Pool,
    start: Annotated[
        AwareDatetime | None, Query(alias="from", description="From this time (inclusive)")
    ] = None,
    end: Annotated[
        AwareDatetime | None, Query(alias="to", description="Until this time (exclusive)")
    ] = None,
    kind: ReadingKind | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ReadingPagePublic:
    """The member's readings, newest first, with original and normalized values."""
    after = _decode_cursor(cursor) if cursor is not None else (None, None, None, None)
    rows = await pool.fetch(_READINGS_SQL, member.member_id, start, end, kind, *after, limit + 1)
    page = rows[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(rows) > limit else None
    return ReadingPagePublic(readings=[_reading(r) for r in page], next_cursor=next_cursor)


@router.get("/summary", responses={401: {}})
async def my_summary(
    member: CurrentMember,
    pool: Pool,
    days: Annotated[
        SummaryDays, Query(description="Local days, today included")
    ] = SummaryDays.WEEK,
) -> SummaryPublic:
    """Per kind: counts, averages and the share in target range over the member's last days."""
    zone = ZoneInfo(member.timezone)
    now = datetime.now(UTC).astimezone(zone)
    # The window starts at local midnight, `days - 1` local days before today, in the member's
    # zone (zoneinfo resolves a midnight skipped by DST to the instant after the gap).
    first_day: date = now.date() - timedelta(days=days - 1)
    start = datetime.combine(first_day, time(), tzinfo=zone)
    row = await pool.fetchrow(
        _SUMMARY_SQL, member.member_id, start, now,
        *GLUCOSE_RANGE_MGDL, *GLUCOSE_RANGE_MMOLL, *BP_TARGET_MMHG,
    )  # fmt: skip
    assert row is not None  # noqa: S101 - an aggregate without GROUP BY returns one row
    first, last = row["w_first"], row["w_last"]
    return SummaryPublic(
        days=int(days),
        timezone=member.timezone,
        start=start,
        end=now,
        glucose=GlucoseSummaryPublic(
            count=row["g_n"],
            mean_mgdl=_round(row["g_mean"], _MEAN),
            in_range=row["g_in"],
            below_range=row["g_below"],
            above_range=row["g_above"],
            in_range_share=_share(row["g_in"], row["g_n"]),
        ),
        blood_pressure=PressureSummaryPublic(
            count=row["b_n"],
            mean_systolic_mmhg=_round(row["b_systolic"], _MEAN),
            mean_diastolic_mmhg=_round(row["b_diastolic"], _MEAN),
            below_target=row["b_below"],
            below_target_share=_share(row["b_below"], row["b_n"]),
        ),
        weight=WeightSummaryPublic(
            count=row["w_n"],
            first_kg=first,
            last_kg=last,
            change_kg=None if first is None or last is None else last - first,
        ),
    )


def _round(value: Decimal | None, step: Decimal) -> Decimal | None:
    return None if value is None else value.quantize(step, ROUND_HALF_EVEN)


def _share(part: int, whole: int) -> Decimal | None:
    return None if whole == 0 else (Decimal(part) / Decimal(whole)).quantize(_SHARE)


def _reading(r: asyncpg.Record) -> ReadingPublic:
    offset = timezone(timedelta(minutes=r["measured_offset"]))
    return ReadingPublic(
        kind=r["kind"],
        device_id=r["device_id"],
        seq=r["seq"],
        source=r["source"],
        effective_at=r["effective_at"],
        measured_at=r["measured_at"].astimezone(offset),
        clock_corrected=r["clock_corrected"],
        flags=list(r["flags"]),
        meal=r["meal"],
        original=OriginalValuesPublic(
            unit=r["unit"],
            value=r["value"],
            systolic=r["systolic"],
            diastolic=r["diastolic"],
            mean_arterial=r["mean_arterial"],
            pulse=r["pulse"],
        ),
        normalized=NormalizedValuesPublic(
            glucose_mgdl=r["glucose_mgdl"],
            systolic_mmhg=r["systolic_mmhg"],
            diastolic_mmhg=r["diastolic_mmhg"],
            mean_arterial_mmhg=r["mean_arterial_mmhg"],
            weight_kg=r["weight_kg"],
        ),
    )


# The cursor is opaque to the app: URL-safe base64 of the last row's key. A forged cursor only
# moves the page within the member's own readings (the member filter comes from the token).
def _encode_cursor(r: asyncpg.Record) -> str:
    key = [r["effective_at"].isoformat(), r["device_id"], r["seq_epoch"], r["seq"]]
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode("ascii")


def _decode_cursor(cursor: str) -> tuple[datetime, str, int, int]:
    try:
        key: Any = orjson.loads(base64.b64decode(cursor, altchars=b"-_", validate=True))
        eff, device_id, epoch, seq = key
        after = (datetime.fromisoformat(eff), device_id, epoch, seq)
        if not (
            after[0].tzinfo is not None
            and isinstance(device_id, str)
            and isinstance(epoch, int)
            and 0 <= epoch < 2**31
            and isinstance(seq, int)
            and 0 <= seq < 2**63
        ):
            raise ValueError(cursor)  # noqa: TRY301 - one refusal for every malformed cursor
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadRequestError(
            ErrorCode.INVALID_CURSOR, "cursor is not one this API returned"
        ) from None
    return after


@router.get("/messages", responses={401: {}})
async def my_messages(
    member: CurrentMember,
    pool: Pool,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """The member's inbox: nudges and coach messages, newest first (quiet-hour messages appear
    when they are due)."""
    from alerting.inbox import inbox

    messages = await inbox(pool, member.member_id, limit)
    return {"messages": [m.as_json() for m in messages]}
