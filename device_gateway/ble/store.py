"""The bridge's local store-and-forward queue: SQLite (stdlib sqlite3), one file under
VIGIL_STATE_DIR.

A reading downloaded from a meter is committed here before anything else happens to it, and
leaves only when Vigil acks its seq (accepted, duplicate or rejected: all three end the bridge's
responsibility). So a hub that loses power, or a broker that is away for days, loses nothing:
the next run sends what is still queued.

Per device the store also keeps `last_acked_seq`, the highest seq Vigil has acked for it. It
advances only on an ack, never on a download: a glucose download asks the meter for records
with seq >= last_acked_seq + 1, so a record downloaded but never acked is asked for again (and
the queue's primary key makes the second copy a no-op). Readings acked out of order below the
highest acked seq are safe: they are in the queue, which is durable.

The file holds readings (health data) until they are acked: it is created 0600 in a 0700
folder. Calls are short local transactions run on the event loop's thread (one connection,
single-threaded: transactions never interleave); WAL with synchronous=FULL, so a committed
reading survives a power cut.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    device_id  TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    payload    BLOB    NOT NULL,  -- the reading as sent (JSON, docs/readings.md)
    queued_at  REAL    NOT NULL,  -- unix time
    sent_at    REAL,              -- last publish; NULL: due now
    attempts   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_state (
    device_id       TEXT PRIMARY KEY,
    last_acked_seq  INTEGER,  -- highest seq Vigil acked; advances only on an ack
    last_issued_seq INTEGER,  -- highest seq the bridge derived for a frame without a time stamp
    last_sync_at    REAL
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    added: int
    already_queued: int
    #: seqs already queued with a different payload: kept as first queued, logged by the caller.
    conflicts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """One ack message from Vigil (device protocol, docs/readings.md's reason codes)."""

    accepted: tuple[int, ...] = ()
    duplicate: tuple[int, ...] = ()
    #: (seq or None when Vigil could not read one, reason code)
    rejected: tuple[tuple[int | None, str], ...] = ()


@dataclass(frozen=True, slots=True)
class AckResult:
    #: seqs that were waiting in the queue and are now done with.
    cleared: tuple[int, ...]
    #: (seq, reason) of cleared readings that Vigil rejected (it keeps them in quarantine).
    rejected: tuple[tuple[int, str], ...]
    last_acked_seq: int | None


@dataclass(slots=True)
class BridgeStore:
    """The queue and per-device state in one SQLite file. Use as a context manager."""

    path: Path
    _db: sqlite3.Connection = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            # Created private before SQLite opens it: it holds health data until acked.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see _tx).
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise RuntimeError(f"{self.path} was written by a newer bridge (schema {version})")
        self._db.executescript(_SCHEMA)  # idempotent DDL; executescript runs it as one script
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- queue ----------------------------------------------------------------------------------

    def enqueue(self, device_id: str, readings: Iterable[tuple[int, bytes]]) -> EnqueueResult:
        """Queue (seq, payload) pairs in one transaction. A seq already queued is left as is."""
        added = already = 0
        conflicts: list[int] = []
        now = time.time()
        with self._tx() as db:
            for seq, payload in readings:
                cur = db.execute(
                    "INSERT INTO outbox (device_id, seq, payload, queued_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (device_id, seq) DO NOTHING",
                    (device_id, seq, payload, now),
                )
                if cur.rowcount == 1:
                    added += 1
                    continue
                already += 1
                row = db.execute(
                    "SELECT payload FROM outbox WHERE device_id = ? AND seq = ?", (device_id, seq)
                ).fetchone()
                if row is not None and bytes(row[0]) != payload:
                    conflicts.append(seq)
        return EnqueueResult(added, already, tuple(conflicts))

    def due(
        self, device_id: str, *, resend_after: float, limit: int, now: float | None = None
    ) -> list[tuple[int, bytes]]:
        """Queued readings never sent, or sent more than `resend_after` seconds ago, by seq."""
        cutoff = (time.time() if now is None else now) - resend_after
        rows = self._db.execute(
            "SELECT seq, payload FROM outbox WHERE device_id = ? "
            "AND (sent_at IS NULL OR sent_at <= ?) ORDER BY seq LIMIT ?",
            (device_id, cutoff, limit),
        ).fetchall()
        return [(int(seq), bytes(payload)) for seq, payload in rows]

    def mark_sent(self, device_id: str, seqs: Sequence[int], now: float | None = None) -> None:
        at = time.time() if now is None else now
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET sent_at = ?, attempts = attempts + 1 "
                "WHERE device_id = ? AND seq = ?",
                [(at, device_id, s) for s in seqs],
            )

    def mark_all_unsent(self, device_id: str) -> None:
        """Make every queued reading due now (a new broker session: earlier sends may be lost)."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET sent_at = NULL WHERE device_id = ?", (device_id,))

    def pending(self, device_id: str | None = None) -> int:
        if device_id is None:
            row = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        else:
            row = self._db.execute(
                "SELECT count(*) FROM outbox WHERE device_id = ?", (device_id,)
            ).fetchone()
        return int(row[0])

    def acknowledge(self, device_id: str, ack: Ack) -> AckResult:
        """Apply an ack: the acked readings leave the queue and `last_acked_seq` advances to the
        highest of them. Seqs not waiting in the queue (a second ack for a resend) change
        nothing."""
        reasons = {seq: reason for seq, reason in ack.rejected if seq is not None}
        cleared: list[int] = []
        with self._tx() as db:
            for seq in (*ack.accepted, *ack.duplicate, *reasons):
                cur = db.execute(
                    "DELETE FROM outbox WHERE device_id = ? AND seq = ?", (device_id, seq)
                )
                if cur.rowcount:
                    cleared.append(seq)
            if cleared:
                db.execute(
                    "INSERT INTO device_state (device_id, last_acked_seq) VALUES (?, ?) "
                    "ON CONFLICT (device_id) DO UPDATE SET last_acked_seq = "
                    "max(coalesce(last_acked_seq, excluded.last_acked_seq), "
                    "excluded.last_acked_seq)",
                    (device_id, max(cleared)),
                )
        return AckResult(
            cleared=tuple(cleared),
            rejected=tuple((s, reasons[s]) for s in cleared if s in reasons),
            last_acked_seq=self.last_acked_seq(device_id),
        )

    # --- per-device state -----------------------------------------------------------------------

    def last_acked_seq(self, device_id: str) -> int | None:
        row = self._db.execute(
            "SELECT last_acked_seq FROM device_state WHERE device_id = ?", (device_id,)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def issue_seq(self, device_id: str, candidate: int) -> int:
        """A seq for a frame without a time stamp: `candidate`, or one past the last issued if
        that is not higher (two measurements within one second). Persisted before it is used."""
        with self._tx() as db:
            row = db.execute(
                "SELECT last_issued_seq FROM device_state WHERE device_id = ?", (device_id,)
            ).fetchone()
            last = None if row is None or row[0] is None else int(row[0])
            seq = candidate if last is None or candidate > last else last + 1
            db.execute(
                "INSERT INTO device_state (device_id, last_issued_seq) VALUES (?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET last_issued_seq = excluded.last_issued_seq",
                (device_id, seq),
            )
        return seq

    def record_sync(self, device_id: str, at: float | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO device_state (device_id, last_sync_at) VALUES (?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET last_sync_at = excluded.last_sync_at",
                (device_id, time.time() if at is None else at),
            )

    def last_sync_at(self, device_id: str) -> float | None:
        row = self._db.execute(
            "SELECT last_sync_at FROM device_state WHERE device_id = ?", (device_id,)
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])
