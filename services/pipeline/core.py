"""The pipeline core: validate -> normalize -> dedupe -> store -> hand-off, one batch at a time.

Exactly-once storage rests on the `reading_keys` ledger's unique constraints, not on locks in
memory: two processes storing the same batch both insert with ON CONFLICT DO NOTHING, the loser
waits for the winner's commit, finds its rows already there and reports them as duplicates.

Per batch, in one transaction:
1. look up the devices (assignments, in-service date), the stored keys with the same (device, seq),
   each device's current sequence epoch and each reading's nearest lower sequence number;
2. classify each reading in arrival order: duplicate (same device, seq and content), clock rule
   (implausible device time -> effective_at = receive time, clock_corrected), attribution to the
   member holding the device at effective_at (else unknown_device / unassigned_device), sequence
   slot (a reused seq with a later effective_at opens a new epoch; an earlier one is seq_conflict);
3. COPY the accepted rows into a temporary staging table, then insert into the ledger and
   `readings` (and the hourly rollup on plain PostgreSQL) with ON CONFLICT DO NOTHING;
4. store every rejection in `quarantine` with its raw payload and reason code.
After the commit, the newly stored readings go to the rule engine's sink.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Literal

import asyncpg

from services.domain.readings import ReadingRejected
from services.domain.reasons import ReasonCode
from services.pipeline.normalize import AnyReading, NormalizedReading, normalize
from services.pipeline.payload import reading_from_bytes
from services.pipeline.sink import NullSink, ReadingSink, StoredReading
from services.storage.timescale import StorageMode, storage_mode

log = logging.getLogger(__name__)

#: Device clocks reset to 2000-01-01 (or to a firmware build date) land before this.
EARLIEST_PLAUSIBLE: Final = datetime(2015, 1, 1, tzinfo=UTC)
#: A date in the onboarding file starts at midnight somewhere between UTC-12 and UTC+14.
_EARLIEST_ZONE_OFFSET: Final = timedelta(hours=14)
_RETRYABLE: Final = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

Status = Literal["accepted", "duplicate", "rejected"]

_READING_COLUMNS: Final = (
    "device_id", "seq_epoch", "seq", "effective_at", "member_id", "kind", "source",
    "measured_at", "measured_offset", "received_at", "clock_corrected", "flags", "unit", "value",
    "systolic", "diastolic", "mean_arterial", "pulse", "meal", "glucose_mgdl", "systolic_mmhg",
    "diastolic_mmhg", "mean_arterial_mmhg", "weight_kg", "transport", "content_hash",
)  # fmt: skip
_COLS: Final = ", ".join(_READING_COLUMNS)

_INSERT_SQL: Final = f"""
WITH k AS (
    INSERT INTO reading_keys
        (device_id, seq_epoch, seq, content_hash, measured_at, effective_at, clock_corrected)
    SELECT device_id, seq_epoch, seq, content_hash, measured_at, effective_at, clock_corrected
    FROM _vigil_stage ORDER BY device_id, seq, seq_epoch
    ON CONFLICT DO NOTHING
    RETURNING device_id, seq_epoch, seq
), r AS (
    INSERT INTO readings ({_COLS})
    SELECT {", ".join("s." + c for c in _READING_COLUMNS)}
    FROM _vigil_stage s JOIN k USING (device_id, seq_epoch, seq)
    ON CONFLICT DO NOTHING
    RETURNING member_id, kind, effective_at, flags, glucose_mgdl, systolic_mmhg, diastolic_mmhg,
              weight_kg
)
{{rollup}}
SELECT device_id, seq_epoch, seq FROM k
"""

# Plain PostgreSQL only: keep the hourly rollup in step with readings, in the same transaction.
# (With TimescaleDB it is a continuous aggregate and must not be written to.)
_ROLLUP_CTE: Final = """
, rollup AS (
    INSERT INTO reading_rollup_hourly AS h
        (member_id, kind, bucket, n, n_values, primary_sum, primary_min, primary_max,
         diastolic_sum)
    SELECT member_id, kind, date_trunc('hour', effective_at, 'UTC'), count(*),
           count(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)),
           sum(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)),
           min(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)),
           max(coalesce(glucose_mgdl, systolic_mmhg, weight_kg)),
           sum(diastolic_mmhg)
    FROM r WHERE NOT ('control_solution' = ANY (flags))
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (member_id, kind, bucket) DO UPDATE SET
        n = h.n + excluded.n,
        n_values = h.n_values + excluded.n_values,
        primary_sum = CASE WHEN h.primary_sum IS NULL THEN excluded.primary_sum
                           WHEN excluded.primary_sum IS NULL THEN h.primary_sum
                           ELSE h.primary_sum + excluded.primary_sum END,
        primary_min = least(h.primary_min, excluded.primary_min),
        primary_max = greatest(h.primary_max, excluded.primary_max),
        diastolic_sum = CASE WHEN h.diastolic_sum IS NULL THEN excluded.diastolic_sum
                             WHEN excluded.diastolic_sum IS NULL THEN h.diastolic_sum
                             ELSE h.diastolic_sum + excluded.diastolic_sum END
)
"""


@dataclass(slots=True)
class Incoming:
    """One payload as a transport received it."""

    raw: bytes
    received_at: datetime
    transport: str  # file | mqtt | http | ble | replay
    topic_device_id: str | None = None  # MQTT/HTTP: the authenticated device or app's device
    reading: AnyReading | None = None  # already decoded by the transport (e.g. an MQTT batch)
    quarantine_id: int | None = None  # replay of this quarantine entry


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    device_id: str | None
    seq: int | None
    reason: ReasonCode | None = None
    detail: str | None = None


@dataclass(slots=True)
class BatchResult:
    outcomes: list[Outcome]
    stored: list[StoredReading] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for o in self.outcomes:
            c[o.status] += 1
            if o.reason is not None:
                c[f"rejected:{o.reason.value}"] += 1
        return c


@dataclass(slots=True)
class PreparedBatch:
    """The CPU half of a batch (validation and normalization), done before any I/O."""

    items: Sequence[Incoming]
    normalized: dict[int, NormalizedReading]
    rejected: dict[int, ReadingRejected]


@dataclass(slots=True)
class _Assignment:
    member_id: str
    start: datetime | None
    end: datetime | None


@dataclass(slots=True)
class _DeviceState:
    in_service_from: datetime | None
    assignments: list[_Assignment]
    epoch: int
    stored_epoch: int
    # (seq, measured_at) of stored or just-classified readings with a trustworthy clock, by epoch.
    clock_marks: dict[int, list[tuple[int, datetime]]] = field(default_factory=dict)

    def member_at(self, t: datetime) -> str | None:
        for a in self.assignments:
            if (a.start is None or a.start <= t) and (a.end is None or t < a.end):
                return a.member_id
        return None

    def previous_time(self, epoch: int, seq: int) -> datetime | None:
        marks = self.clock_marks.get(epoch)
        if not marks:
            return None
        i = bisect.bisect_left(marks, (seq, datetime.min.replace(tzinfo=UTC)))
        return marks[i - 1][1] if i > 0 else None

    def mark(self, epoch: int, seq: int, t: datetime) -> None:
        bisect.insort(self.clock_marks.setdefault(epoch, []), (seq, t))


@dataclass(slots=True)
class _Slot:
    content_hash: bytes
    effective_at: datetime


def prepare(items: Sequence[Incoming], max_payload_bytes: int) -> PreparedBatch:
    normalized: dict[int, NormalizedReading] = {}
    rejected: dict[int, ReadingRejected] = {}
    for i, item in enumerate(items):
        try:
            reading = item.reading or reading_from_bytes(
                item.raw, max_payload_bytes, item.topic_device_id
            )
            normalized[i] = normalize(reading)
        except ReadingRejected as rej:
            rejected[i] = rej
    return PreparedBatch(items, normalized, rejected)


class ReadingPipeline:
    """Stores batches of readings exactly once and hands what it stored to the rule engine."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        sink: ReadingSink | None = None,
        max_payload_bytes: int = 256 * 1024,
        clock_future_tolerance: timedelta = timedelta(minutes=5),
    ) -> None:
        self._pool = pool
        self._sink: ReadingSink = sink or NullSink()
        self._max_payload_bytes = max_payload_bytes
        self._future_tolerance = clock_future_tolerance
        self._mode: StorageMode | None = None

    @property
    def sink(self) -> ReadingSink:
        return self._sink

    def prepare(self, items: Sequence[Incoming]) -> PreparedBatch:
        return prepare(items, self._max_payload_bytes)

    async def process(self, items: Sequence[Incoming]) -> BatchResult:
        return await self.store(self.prepare(items))

    async def store(self, batch: PreparedBatch) -> BatchResult:
        """Store a prepared batch in one transaction, then hand the new readings to the sink."""
        async with self._pool.acquire() as conn:
            if self._mode is None:
                self._mode = await storage_mode(conn)
            for attempt in range(1, 6):
                try:
                    async with conn.transaction():
                        result = await self._store(conn, batch)
                    break
                except _RETRYABLE:
                    if attempt == 5:
                        raise
                    log.info("batch of %d retried after a lock conflict", len(batch.items))
                    await asyncio.sleep(0.05 * attempt)
        if result.stored:
            await self._sink.readings_committed(result.stored)
        return result

    async def _store(self, conn: asyncpg.Connection, batch: PreparedBatch) -> BatchResult:
        outcomes: list[Outcome | None] = [None] * len(batch.items)
        rejected = dict(batch.rejected)
        stored: list[StoredReading] = []
        pending = sorted(batch.normalized)  # arrival order
        for _ in range(3):
            if not pending:
                break
            accepted, pending = await self._classify_and_insert(
                conn, batch, pending, outcomes, rejected
            )
            stored.extend(accepted)
        for i in pending:  # still racing another writer after three rounds: keep it, never drop
            n = batch.normalized[i]
            rejected[i] = ReadingRejected(
                ReasonCode.SEQ_CONFLICT, "sequence slot contended by concurrent writers",
                n.device_id, n.seq,
            )  # fmt: skip
        await self._quarantine(conn, batch.items, rejected, outcomes)
        await self._resolve_replayed(conn, batch.items, outcomes)
        return BatchResult([o for o in outcomes if o is not None], stored)

    async def _classify_and_insert(
        self,
        conn: asyncpg.Connection,
        batch: PreparedBatch,
        indices: list[int],
        outcomes: list[Outcome | None],
        rejected: dict[int, ReadingRejected],
    ) -> tuple[list[StoredReading], list[int]]:
        norm = batch.normalized
        devices = await self._load_devices(conn, {norm[i].device_id for i in indices})
        slots, hashes = await self._load_slots(conn, [norm[i] for i in indices])
        await self._load_clock_marks(conn, devices, [norm[i] for i in indices])

        rows: list[tuple[object, ...]] = []
        row_index: dict[tuple[str, int, int], int] = {}
        effective: dict[int, tuple[datetime, bool, str, int]] = {}
        for i in indices:
            n = norm[i]
            item = batch.items[i]
            key = (n.device_id, n.seq, n.content_hash)
            if key in hashes:
                outcomes[i] = Outcome("duplicate", n.device_id, n.seq)
                continue
            state = devices.get(n.device_id)
            if state is None:
                rejected[i] = ReadingRejected(
                    ReasonCode.UNKNOWN_DEVICE, "no such device in Vigil", n.device_id, n.seq
                )
                continue
            eff, corrected = self._effective_time(n, item.received_at, state)
            member = state.member_at(eff)
            if member is None:
                rejected[i] = ReadingRejected(
                    ReasonCode.UNASSIGNED_DEVICE,
                    "the device was not assigned to a member at the reading's time",
                    n.device_id, n.seq,
                )  # fmt: skip
                continue
            epoch = state.epoch
            occupant = slots.get((n.device_id, epoch, n.seq))
            if occupant is not None:
                if eff <= occupant.effective_at:
                    rejected[i] = ReadingRejected(
                        ReasonCode.SEQ_CONFLICT,
                        "same sequence number as a stored reading with different content "
                        "and no later time",
                        n.device_id, n.seq,
                    )  # fmt: skip
                    continue
                # Sequence reuse with a later time: wrap-around or a reset meter. New epoch.
                state.epoch = epoch = epoch + 1
            slots[(n.device_id, epoch, n.seq)] = _Slot(n.content_hash, eff)
            hashes.add(key)
            if not corrected:
                state.mark(epoch, n.seq, n.measured_at)
            effective[i] = (eff, corrected, member, epoch)
            row_index[(n.device_id, epoch, n.seq)] = i
            rows.append(_row(n, item, eff, corrected, member, epoch))

        raised = [(d, st.epoch) for d, st in devices.items() if st.epoch > st.stored_epoch]
        if raised:
            await conn.executemany(
                "UPDATE devices SET seq_epoch = greatest(seq_epoch, $2) WHERE id = $1", raised
            )
        if not rows:
            return [], []
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS _vigil_stage "
            f"(LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table("_vigil_stage", records=rows, columns=_READING_COLUMNS)
        sql = _INSERT_SQL.format(rollup=_ROLLUP_CTE if self._mode == "postgres" else "")
        inserted = {(r[0], r[1], r[2]) for r in await conn.fetch(sql)}

        stored: list[StoredReading] = []
        lost: list[int] = []
        for slot_key, i in row_index.items():
            n = norm[i]
            if slot_key in inserted:
                eff, corrected, member, epoch = effective[i]
                outcomes[i] = Outcome("accepted", n.device_id, n.seq)
                stored.append(_stored(n, batch.items[i], eff, corrected, member, epoch))
            else:
                lost.append(i)
        if not lost:
            return stored, []
        # Another writer committed these keys first. Same content: a duplicate. Else classify again.
        again = await conn.fetch(
            "SELECT u.i FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::int[]) "
            "AS u(device_id, seq, content_hash, i) "
            "JOIN reading_keys k USING (device_id, seq, content_hash)",
            [norm[i].device_id for i in lost], [norm[i].seq for i in lost],
            [norm[i].content_hash for i in lost], lost,
        )  # fmt: skip
        dup = {r["i"] for r in again}
        for i in dup:
            outcomes[i] = Outcome("duplicate", norm[i].device_id, norm[i].seq)
        return stored, sorted(i for i in lost if i not in dup)

    def _effective_time(
        self, n: NormalizedReading, received_at: datetime, state: _DeviceState
    ) -> tuple[datetime, bool]:
        """The clock rule: an implausible device time is replaced by the receive time."""
        t = n.measured_at
        if (
            t > received_at + self._future_tolerance
            or t < EARLIEST_PLAUSIBLE
            or (state.in_service_from is not None and t < state.in_service_from)
        ):
            return received_at, True
        previous = state.previous_time(state.epoch, n.seq)
        if previous is not None and t < previous:  # the clock went backwards
            return received_at, True
        return t, False

    async def _load_devices(
        self, conn: asyncpg.Connection, device_ids: set[str]
    ) -> dict[str, _DeviceState]:
        rows = await conn.fetch(
            """SELECT d.id, d.in_service_from, d.seq_epoch AS epoch, a.member_id,
                      a.assigned_from, a.assigned_to
               FROM devices d LEFT JOIN device_assignments a ON a.device_id = d.id
               WHERE d.id = ANY($1::text[])""",
            list(device_ids),
        )
        out: dict[str, _DeviceState] = {}
        for r in rows:
            state = out.get(r["id"])
            if state is None:
                isf: date | None = r["in_service_from"]
                state = out[r["id"]] = _DeviceState(
                    in_service_from=(
                        None
                        if isf is None
                        else datetime.combine(isf, time(), UTC) - _EARLIEST_ZONE_OFFSET
                    ),
                    assignments=[],
                    epoch=r["epoch"],
                    stored_epoch=r["epoch"],
                )
            if r["member_id"] is not None:
                state.assignments.append(
                    _Assignment(r["member_id"], r["assigned_from"], r["assigned_to"])
                )
        return out

    async def _load_slots(
        self, conn: asyncpg.Connection, readings: list[NormalizedReading]
    ) -> tuple[dict[tuple[str, int, int], _Slot], set[tuple[str, int, bytes]]]:
        """Stored keys sharing (device, seq) with the batch, in every epoch."""
        rows = await conn.fetch(
            "SELECT k.device_id, k.seq_epoch, k.seq, k.content_hash, k.effective_at "
            "FROM (SELECT DISTINCT * FROM unnest($1::text[], $2::bigint[]) AS u(device_id, seq)) u "
            "JOIN reading_keys k USING (device_id, seq)",
            [n.device_id for n in readings],
            [n.seq for n in readings],
        )
        slots = {
            (r["device_id"], r["seq_epoch"], r["seq"]): _Slot(r["content_hash"], r["effective_at"])
            for r in rows
        }
        hashes = {(r["device_id"], r["seq"], r["content_hash"]) for r in rows}
        return slots, hashes

    async def _load_clock_marks(
        self,
        conn: asyncpg.Connection,
        devices: dict[str, _DeviceState],
        readings: list[NormalizedReading],
    ) -> None:
        """For the clock rule: per device, the stored seqs (with a trustworthy clock, in the
        current epoch) from the nearest one below the batch's lowest seq up to its highest."""
        bounds: dict[str, tuple[int, int]] = {}
        for n in readings:
            if n.device_id in devices:
                lo, hi = bounds.get(n.device_id, (n.seq, n.seq))
                bounds[n.device_id] = (min(lo, n.seq), max(hi, n.seq))
        if not bounds:
            return
        ids = list(bounds)
        rows = await conn.fetch(
            """SELECT u.device_id, p.seq, p.measured_at
               FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[])
                    AS u(device_id, lo, hi, epoch)
               CROSS JOIN LATERAL (
                   (SELECT k.seq, k.measured_at FROM reading_keys k
                    WHERE k.device_id = u.device_id AND k.seq < u.lo AND k.seq_epoch = u.epoch
                      AND NOT k.clock_corrected
                    ORDER BY k.seq DESC LIMIT 1)
                   UNION ALL
                   SELECT k.seq, k.measured_at FROM reading_keys k
                   WHERE k.device_id = u.device_id AND k.seq BETWEEN u.lo AND u.hi
                     AND k.seq_epoch = u.epoch AND NOT k.clock_corrected) p""",
            ids,
            [bounds[d][0] for d in ids],
            [bounds[d][1] for d in ids],
            [devices[d].epoch for d in ids],
        )
        for r in rows:
            state = devices[r["device_id"]]
            state.clock_marks.setdefault(state.epoch, []).append((r["seq"], r["measured_at"]))
        for state in devices.values():
            for marks in state.clock_marks.values():
                marks.sort()

    async def _quarantine(
        self,
        conn: asyncpg.Connection,
        items: Sequence[Incoming],
        rejected: dict[int, ReadingRejected],
        outcomes: list[Outcome | None],
    ) -> None:
        fresh: list[tuple[object, ...]] = []
        for i, rej in sorted(rejected.items()):
            item = items[i]
            device_id = rej.device_id or item.topic_device_id
            outcomes[i] = Outcome("rejected", device_id, rej.seq, rej.reason, rej.detail)
            if item.quarantine_id is not None:
                await conn.execute(
                    "UPDATE quarantine SET attempts = attempts + 1, last_attempt = now(), "
                    "reason = $2, detail = $3 WHERE id = $1",
                    item.quarantine_id, rej.reason.value, rej.detail,
                )  # fmt: skip
            else:
                fresh.append(
                    (item.received_at, item.transport, device_id, rej.seq, rej.reason.value,
                     rej.detail, item.raw, item.received_at)
                )  # fmt: skip
        if fresh:
            await conn.copy_records_to_table(
                "quarantine",
                records=fresh,
                columns=(
                    "received_at", "transport", "device_id", "seq", "reason", "detail", "raw",
                    "last_attempt",
                ),
            )  # fmt: skip

    async def _resolve_replayed(
        self, conn: asyncpg.Connection, items: Sequence[Incoming], outcomes: list[Outcome | None]
    ) -> None:
        done = [
            (item.quarantine_id, o.status)
            for item, o in zip(items, outcomes, strict=True)
            if item.quarantine_id is not None and o is not None and o.status != "rejected"
        ]
        if done:
            await conn.executemany(
                "UPDATE quarantine SET status = 'resolved', resolution = $2, resolved_at = now(), "
                "attempts = attempts + 1, last_attempt = now() WHERE id = $1",
                done,
            )


def _row(
    n: NormalizedReading,
    item: Incoming,
    eff: datetime,
    corrected: bool,
    member: str,
    epoch: int,
) -> tuple[object, ...]:
    return (
        n.device_id, epoch, n.seq, eff, member, n.kind, n.source, n.measured_at,
        n.measured_offset, item.received_at, corrected, list(n.flags), n.unit, n.value,
        n.systolic, n.diastolic, n.mean_arterial, n.pulse, n.meal, n.glucose_mgdl,
        n.systolic_mmhg, n.diastolic_mmhg, n.mean_arterial_mmhg, n.weight_kg, item.transport,
        n.content_hash,
    )  # fmt: skip


def _stored(
    n: NormalizedReading,
    item: Incoming,
    eff: datetime,
    corrected: bool,
    member: str,
    epoch: int,
) -> StoredReading:
    return StoredReading(n, member, epoch, eff, item.received_at, corrected)
