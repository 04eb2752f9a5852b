"""The hand-off from the pipeline to the rule engine, called right after each batch commits.

The pipeline awaits the sink, so a caller (a gateway worker acking a device, `vigil ingest`
exiting) knows every reading-driven rule has run on what it stored. The rule engine
(alerting/) provides the real sink; until it is plugged in, `NullSink` is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

from services.pipeline.normalize import NormalizedReading


class StoredReading(NamedTuple):
    """A reading as stored: what the device reported (normalized) plus what Vigil decided."""

    reading: NormalizedReading
    member_id: str
    seq_epoch: int
    effective_at: datetime
    received_at: datetime
    clock_corrected: bool

    @property
    def device_id(self) -> str:
        return self.reading.device_id

    @property
    def seq(self) -> int:
        return self.reading.seq

    @property
    def kind(self) -> str:
        return self.reading.kind

    @property
    def flags(self) -> tuple[str, ...]:
        return self.reading.flags


class ReadingSink(Protocol):
    #: True when every committed batch must reach the sink even if this process dies right
    #: after the commit: the pipeline then writes an outbox row in the batch's transaction.
    durable: bool

    async def readings_committed(self, readings: Sequence[StoredReading]) -> None:
        """Called once per committed batch with the readings it newly stored (never duplicates)."""


class NullSink:
    #: The pipeline keeps an outbox row per batch for sinks that must see every reading.
    durable = False

    async def readings_committed(self, readings: Sequence[StoredReading]) -> None:
        return None
