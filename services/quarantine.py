"""Quarantine: listing rejected readings and replaying them after their cause was fixed."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass

import asyncpg

from services.pipeline import Incoming, ReadingPipeline

REPLAY_BATCH = 1000


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    id: int
    received_at: str
    transport: str
    device_id: str | None
    seq: int | None
    reason: str
    detail: str
    status: str
    attempts: int
    raw: str


async def list_entries(
    pool: asyncpg.Pool,
    *,
    reason: str | None = None,
    device: str | None = None,
    status: str = "open",
    limit: int = 100,
) -> list[QuarantineEntry]:
    rows = await pool.fetch(
        """SELECT id, received_at, transport, device_id, seq, reason, detail, status, attempts, raw
           FROM quarantine
           WHERE ($1::text IS NULL OR reason = $1) AND ($2::text IS NULL OR device_id = $2)
             AND ($3 = 'all' OR status = $3)
           ORDER BY id DESC LIMIT $4""",
        reason,
        device,
        status,
        limit,
    )
    return [
        QuarantineEntry(
            id=r["id"],
            received_at=r["received_at"].isoformat(),
            transport=r["transport"],
            device_id=r["device_id"],
            seq=r["seq"],
            reason=r["reason"],
            detail=r["detail"],
            status=r["status"],
            attempts=r["attempts"],
            raw=bytes(r["raw"]).decode("utf-8", errors="backslashreplace"),
        )
        for r in rows
    ]


def render_entries(entries: list[QuarantineEntry], fmt: str) -> str:
    if fmt == "jsonl":
        return "\n".join(json.dumps(asdict(e)) for e in entries)
    header = f"{'id':>8}  {'received_at':<25} {'device':<16} {'seq':>8}  {'reason':<26} detail"
    rows = [
        f"{e.id:>8}  {e.received_at[:25]:<25} {(e.device_id or '-')[:16]:<16} "
        f"{e.seq if e.seq is not None else '-':>8}  {e.reason:<26} {e.detail[:80]}"
        for e in entries
    ]
    return "\n".join([header, *rows])


async def replay(
    pipeline: ReadingPipeline,
    pool: asyncpg.Pool,
    *,
    reason: str | None = None,
    device: str | None = None,
    ids: list[int] | None = None,
) -> dict[str, object]:
    """Re-run open entries through the pipeline, oldest first; returns counts by outcome."""
    counts: Counter[str] = Counter()
    last_id = 0
    while True:
        rows = await pool.fetch(
            """SELECT id, raw, transport, device_id, received_at FROM quarantine
               WHERE status = 'open' AND id > $1
                 AND ($2::text IS NULL OR reason = $2) AND ($3::text IS NULL OR device_id = $3)
                 AND (cardinality($4::bigint[]) = 0 OR id = ANY($4::bigint[]))
                 -- The app API rejected these because the member did not hold the device; a
                 -- replay without that check could file them under someone else. Only by --id.
                 AND (cardinality($4::bigint[]) > 0
                      OR NOT (transport = 'http' AND reason = 'device_mismatch'))
               ORDER BY id LIMIT $5""",
            last_id,
            reason,
            device,
            ids or [],
            REPLAY_BATCH,
        )
        if not rows:
            break
        last_id = rows[-1]["id"]
        # MQTT entries keep the device they arrived from (the topic), so a payload that omitted
        # its device_id is attributed the same way on replay.
        items = [
            Incoming(
                raw=bytes(r["raw"]),
                # The original receive time: the clock rule and lateness are about when the
                # device's message reached Vigil, not when an operator replayed it.
                received_at=r["received_at"],
                transport=r["transport"],
                topic_device_id=r["device_id"] if r["transport"] in ("mqtt", "ble") else None,
                quarantine_id=r["id"],
            )
            for r in rows
        ]
        result = await pipeline.process(items)
        for o in result.outcomes:
            counts[o.status if o.reason is None else f"still_rejected:{o.reason.value}"] += 1
    return {"replayed": sum(counts.values()), **dict(sorted(counts.items()))}
