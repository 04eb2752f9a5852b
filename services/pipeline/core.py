"""The pipeline core: validate -> normalize -> dedupe -> store -> hand-off, one batch at a time.

Exactly-once storage rests on the `reading_keys` ledger's unique constraints, not on locks in
memory: two processes storing the same batch both insert with ON CONFLICT DO NOTHING, the loser
waits for the winner's commit, finds its rows already there and reports them as duplicates.

Per batch, in one transaction:
1. look up the devices (assignments, in-service date, current sequence epoch) and the stored
   sequence numbers around the batch's, for the clock rule;
2. classify each reading in arrival order: clock rule (implausible device time -> effective_at =
   receive time, clock_corrected), attribution to the member holding the device at effective_at
   (else unknown_device / unassigned_device), duplicates within the batch;
3. COPY the accepted rows into a temporary staging table, then insert into the ledger and
   `readings` with ON CONFLICT DO NOTHING. Storing is optimistic: most readings are new, so the
   ledger is only read for the rows whose (device, seq) slot turned out to be taken. Those are
   classified again knowing the stored slot: same content is a duplicate, a later time opens a
   new sequence epoch (wrap-around, reset meter), an earlier one is seq_conflict;
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
from services.storage.db import Connection

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

_LEDGER_SQL: Final = """
INSERT INTO reading_keys
    (device_id, seq_epoch, seq, content_hash, measured_at, effective_at, clock_corrected)
SELECT device_id, seq_epoch, seq, content_hash, measured_at, effective_at, clock_corrected
FROM _vigil_stage
ON CONFLICT DO NOTHING
"""
_READINGS_SQL: Final = f"""
INSERT INTO readings ({_COLS}) SELECT {_COLS} FROM _vigil_stage ON CONFLICT DO NOTHING
"""
# When some slots were taken: insert the rest and learn which were ours.
_INSERT_RETURNING_SQL: Final = f"""
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
)
SELECT device_id, seq_epoch, seq FROM k
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
    outbox_id: int | None = None

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


_MIN_TIME: Final = datetime.min.replace(tzinfo=UTC)


@dataclass(slots=True)
class _DeviceState:
    in_service_from: datetime | None
    assignments: list[tuple[str, datetime | None, datetime | None]]  # member, [from, to)
    epoch: int
    stored_epoch: int
    revoked: bool = False
    # (seq, device time) of readings with a trustworthy clock in the current epoch, sorted.
    clock_marks: list[tuple[int, datetime]] = field(default_factory=list)

    def member_at(self, t: datetime) -> str | None:
        for member, start, end in self.assignments:
            if (start is None or start <= t) and (end is None or t < end):
                return member
        return None

    def previous_time(self, seq: int) -> datetime | None:
        marks = self.clock_marks
        if not marks:
            return None
        if marks[-1][0] < seq:  # the usual case: readings arrive in sequence order
            return marks[-1][1]
        i = bisect.bisect_left(marks, (seq, _MIN_TIME))
        return marks[i - 1][1] if i > 0 else None

    def mark(self, seq: int, t: datetime) -> None:
        marks = self.clock_marks
        if not marks or marks[-1][0] < seq:
            marks.append((seq, t))
        else:
            bisect.insort(marks, (seq, t))


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
        self._optimistic = True

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
            await self._hand_off(result)
        return result

    async def _hand_off(self, result: BatchResult) -> None:
        """Give the committed readings to the sink. The readings are stored whatever happens
        here; a durable sink's outbox row stays behind on failure, for its sweeper."""
        try:
            await self._sink.readings_committed(result.stored)
        except Exception:
            if result.outbox_id is None:
                raise
            log.exception(
                "the rule engine failed on a committed batch of %d readings; outbox row %d "
                "stays for the sweeper", len(result.stored), result.outbox_id,
            )  # fmt: skip
            return
        if result.outbox_id is not None:
            async with self._pool.acquire() as conn:
                await conn.execute("DELETE FROM rule_outbox WHERE id = $1", result.outbox_id)

    async def _store(self, conn: Connection, batch: PreparedBatch) -> BatchResult:
        outcomes: list[Outcome | None] = [None] * len(batch.items)
        rejected = dict(batch.rejected)
        stored: list[StoredReading] = []
        pending = sorted(batch.normalized)  # arrival order
        optimistic = self._optimistic
        rounds = 0
        while pending and rounds < 3:
            rounds += 1
            result = await self._classify_and_insert(
                conn, batch, pending, outcomes, rejected, optimistic=optimistic
            )
            if result is None:  # a slot was taken: nothing was inserted, classify knowing them
                optimistic = False
                self._reset(batch, pending, outcomes, rejected)
                continue
            accepted, pending = result
            stored.extend(accepted)
        # Stay pessimistic while batches carry resends (a device replaying its backlog).
        self._optimistic = optimistic
        for i in pending:  # still racing another writer after three rounds: keep it, never drop
            n = batch.normalized[i]
            rejected[i] = ReadingRejected(
                ReasonCode.SEQ_CONFLICT, "sequence slot contended by concurrent writers",
                n.device_id, n.seq,
            )  # fmt: skip
        await self._quarantine(conn, batch.items, rejected, outcomes)
        await self._resolve_replayed(conn, batch.items, outcomes)
        outbox_id = None
        if stored and getattr(self._sink, "durable", False):
            outbox_id = await conn.fetchval(
                "INSERT INTO rule_outbox (device_ids, seq_epochs, seqs) VALUES ($1, $2, $3) "
                "RETURNING id",
                [s.device_id for s in stored], [s.seq_epoch for s in stored],
                [s.seq for s in stored],
            )  # fmt: skip
        return BatchResult([o for o in outcomes if o is not None], stored, outbox_id)

    async def _classify_and_insert(  # noqa: PLR0915 - one pass over the batch, kept in one place
        self,
        conn: Connection,
        batch: PreparedBatch,
        indices: list[int],
        outcomes: list[Outcome | None],
        rejected: dict[int, ReadingRejected],
        *,
        optimistic: bool,
    ) -> tuple[list[StoredReading], list[int]] | None:
        """Classify and insert. Returns the stored readings and the indices to classify again
        (slots taken meanwhile by another writer), or None when `optimistic` and a slot was
        already taken (then nothing was inserted)."""
        norm = batch.normalized
        items = batch.items
        readings = [norm[i] for i in indices]
        devices = await self._load_devices(conn, {n.device_id for n in readings})
        # Stored (device, seq) slots. An optimistic round does not read them (the ledger's
        # primary key reports a taken slot), except for devices that ever reused a sequence
        # number: a resend of a reading stored under an earlier epoch must be recognised first.
        slots, stored = await self._load_slots(
            conn,
            readings if not optimistic else [
                n for n in readings
                if (st := devices.get(n.device_id)) is not None and st.stored_epoch > 0
            ],
        )  # fmt: skip
        await self._load_clock_marks(conn, devices, readings)

        rows: list[tuple[object, ...]] = []
        accepted: list[tuple[int, tuple[str, int, int], StoredReading]] = []
        for i, n in zip(indices, readings, strict=True):
            device_id, seq = n.device_id, n.seq
            state = devices.get(device_id)
            if state is None:
                rejected[i] = ReadingRejected(
                    ReasonCode.UNKNOWN_DEVICE, "no such device in Vigil", device_id, seq
                )
                continue
            if state.revoked:
                rejected[i] = ReadingRejected(
                    ReasonCode.DEVICE_REVOKED, "the device was revoked", device_id, seq
                )
                continue
            received_at = items[i].received_at
            if (device_id, seq, n.content_hash) in stored:
                outcomes[i] = Outcome("duplicate", device_id, seq)
                continue
            eff, corrected = self._effective_time(n, received_at, state)
            epoch = state.epoch
            occupant = slots.get((device_id, epoch, seq))
            if occupant is not None:
                if eff <= occupant[1]:
                    rejected[i] = ReadingRejected(
                        ReasonCode.SEQ_CONFLICT,
                        "same sequence number as a stored reading with different content "
                        "and no later time",
                        device_id, seq,
                    )  # fmt: skip
                    continue
                # A reused seq with a later time: wrap-around or a reset meter. New epoch.
                state.epoch = epoch = epoch + 1
                state.clock_marks = []
            member = state.member_at(eff)
            if member is None:
                rejected[i] = ReadingRejected(
                    ReasonCode.UNASSIGNED_DEVICE,
                    "the device was not assigned to a member at the reading's time",
                    device_id, seq,
                )  # fmt: skip
                continue
            slot = (device_id, epoch, seq)
            slots[slot] = (n.content_hash, eff)
            stored.add((device_id, seq, n.content_hash))
            if not corrected:
                state.mark(seq, n.measured_at)
            rows.append(_row(n, items[i], eff, corrected, member, epoch))
            accepted.append((i, slot, StoredReading(n, member, epoch, eff, received_at, corrected)))

        raised = [(d, st.epoch) for d, st in devices.items() if st.epoch > st.stored_epoch]
        if raised:
            await conn.executemany(
                "UPDATE devices SET seq_epoch = greatest(seq_epoch, $2) WHERE id = $1", raised
            )
        if not rows:
            return [], []
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _vigil_stage "
            "(LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        # Ledger order = primary-key order, so concurrent writers lock keys in the same order.
        rows.sort(key=_slot_order)
        await conn.copy_records_to_table("_vigil_stage", records=rows, columns=_READING_COLUMNS)
        try:
            inserted = await self._insert_staged(conn, len(rows), optimistic=optimistic)
        except _SlotsTaken:
            return None

        new: list[StoredReading] = []
        lost: list[int] = []
        for i, slot, stored_reading in accepted:
            if inserted is None or slot in inserted:
                outcomes[i] = Outcome("accepted", slot[0], slot[2])
                new.append(stored_reading)
            else:
                lost.append(i)
        # The slots of `lost` were taken (by an earlier batch, or by another writer that just
        # committed): classify them again, reading the stored slots.
        return new, lost

    async def _insert_staged(
        self, conn: Connection, n_rows: int, *, optimistic: bool
    ) -> set[tuple[str, int, int]] | None:
        """Insert the staged rows into the ledger and `readings`. Returns None when every row
        was new (the common case, with no join); when some slot was taken, raises `_SlotsTaken`
        if `optimistic` (nothing inserted), else returns the slots that were inserted."""
        try:
            async with conn.transaction():  # a savepoint: undone if any slot was taken
                status = await conn.execute(_LEDGER_SQL)
                if int(status.rsplit(" ", 1)[1]) != n_rows:
                    raise _SlotsTaken  # noqa: TRY301 - leaves the savepoint, undoing the insert
                await conn.execute(_READINGS_SQL)
        except _SlotsTaken:
            if optimistic:
                await conn.execute("TRUNCATE _vigil_stage")
                raise
            rows = await conn.fetch(_INSERT_RETURNING_SQL)
            return {(r[0], r[1], r[2]) for r in rows}
        return None

    @staticmethod
    def _reset(
        batch: PreparedBatch,
        pending: list[int],
        outcomes: list[Outcome | None],
        rejected: dict[int, ReadingRejected],
    ) -> None:
        """Forget an abandoned round's verdicts on `pending` before classifying them again."""
        for i in pending:
            outcomes[i] = None
            if i not in batch.rejected:
                rejected.pop(i, None)

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
        previous = state.previous_time(n.seq)
        if previous is not None and t < previous:  # the clock went backwards
            return received_at, True
        return t, False

    async def _load_devices(
        self, conn: Connection, device_ids: set[str]
    ) -> dict[str, _DeviceState]:
        rows = await conn.fetch(
            """SELECT d.id, d.in_service_from, d.seq_epoch, a.member_id,
                      a.assigned_from, a.assigned_to, d.status
               FROM devices d LEFT JOIN device_assignments a ON a.device_id = d.id
               WHERE d.id = ANY($1::text[])""",
            list(device_ids),
        )
        out: dict[str, _DeviceState] = {}
        for r in rows:
            state = out.get(r[0])
            if state is None:
                isf: date | None = r[1]
                state = out[r[0]] = _DeviceState(
                    in_service_from=(
                        None
                        if isf is None
                        else datetime.combine(isf, time(), UTC) - _EARLIEST_ZONE_OFFSET
                    ),
                    assignments=[],
                    epoch=r[2],
                    stored_epoch=r[2],
                    revoked=r[6] == "revoked",
                )
            if r[3] is not None:
                state.assignments.append((r[3], r[4], r[5]))
        return out

    async def _load_slots(
        self, conn: Connection, readings: list[NormalizedReading]
    ) -> tuple[dict[tuple[str, int, int], tuple[bytes, datetime]], set[tuple[str, int, bytes]]]:
        """Stored keys sharing (device, seq) with these readings, in every epoch: the slots by
        (device, epoch, seq), and the (device, seq, content) identities."""
        if not readings:
            return {}, set()
        rows = await conn.fetch(
            "SELECT k.device_id, k.seq_epoch, k.seq, k.content_hash, k.effective_at "
            "FROM (SELECT DISTINCT * FROM unnest($1::text[], $2::bigint[]) AS u(device_id, seq)) u "
            "JOIN reading_keys k USING (device_id, seq)",
            [n.device_id for n in readings],
            [n.seq for n in readings],
        )
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}, {(r[0], r[2], r[3]) for r in rows}

    async def _load_clock_marks(
        self,
        conn: Connection,
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
            devices[r[0]].clock_marks.append((r[1], r[2]))
        for state in devices.values():
            state.clock_marks.sort()

    async def _quarantine(
        self,
        conn: Connection,
        items: Sequence[Incoming],
        rejected: dict[int, ReadingRejected],
        outcomes: list[Outcome | None],
    ) -> None:
        fresh: list[tuple[object, ...]] = []
        for i, rej in sorted(rejected.items()):
            item = items[i]
            # Text columns cannot hold NUL; a hostile payload's text is kept escaped (the raw
            # bytes are stored untouched in `raw`).
            device_id = _text(rej.device_id or item.topic_device_id)
            detail = _text(rej.detail) or ""
            outcomes[i] = Outcome("rejected", device_id, rej.seq, rej.reason, detail)
            if item.quarantine_id is not None:
                await conn.execute(
                    "UPDATE quarantine SET attempts = attempts + 1, last_attempt = now(), "
                    "reason = $2, detail = $3 WHERE id = $1",
                    item.quarantine_id, rej.reason.value, detail,
                )  # fmt: skip
            else:
                fresh.append(
                    (item.received_at, item.transport, device_id, rej.seq, rej.reason.value,
                     detail, item.raw, item.received_at)
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
        self, conn: Connection, items: Sequence[Incoming], outcomes: list[Outcome | None]
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


def _text(s: str | None) -> str | None:
    return None if s is None else s.replace("\x00", "\\x00")


class _SlotsTaken(Exception):  # noqa: N818 - control flow inside _insert_staged only
    pass


def _slot_order(row: tuple[object, ...]) -> tuple[str, int, int]:
    return row[0], row[2], row[1]  # type: ignore[return-value]  # device_id, seq, seq_epoch


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
