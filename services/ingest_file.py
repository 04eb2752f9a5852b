"""The reading-file adapter behind `vigil ingest`: JSONL lines -> the pipeline, with counts.

Parsing the next batch (CPU) overlaps with storing the current one (database), so the pipeline's
two halves use both cores of a small machine.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.errors import ConfigurationError
from services.pipeline import Incoming, ReadingPipeline
from services.pipeline.core import PreparedBatch


@dataclass(slots=True)
class IngestCounts:
    accepted: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.accepted + self.duplicate + sum(self.rejected.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
        }

    def render(self, fmt: str) -> str:
        if fmt == "json":
            return json.dumps(self.as_dict())
        lines = [f"accepted   {self.accepted}", f"duplicate  {self.duplicate}"]
        lines.append(f"rejected   {sum(self.rejected.values())}")
        lines += [f"  {reason:<28} {n}" for reason, n in sorted(self.rejected.items())]
        return "\n".join(lines)


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        for line in fh:
            stripped = line.strip()
            if stripped:
                yield stripped


async def _batches(
    pipeline: ReadingPipeline, path: Path, batch_size: int
) -> AsyncIterator[PreparedBatch]:
    batch: list[Incoming] = []
    for raw in _lines(path):
        batch.append(Incoming(raw=raw, received_at=datetime.now(UTC), transport="file"))
        if len(batch) >= batch_size:
            yield pipeline.prepare(batch)
            batch = []
            await asyncio.sleep(0)
    if batch:
        yield pipeline.prepare(batch)


async def ingest_file(pipeline: ReadingPipeline, path: Path, batch_size: int) -> IngestCounts:
    if not path.is_file():
        raise ConfigurationError(f"{path}: no such file")
    counts = IngestCounts()
    queue: asyncio.Queue[PreparedBatch | None] = asyncio.Queue(maxsize=2)

    async def produce() -> None:
        async for prepared in _batches(pipeline, path, batch_size):
            await queue.put(prepared)
        await queue.put(None)

    async def consume() -> None:
        while (prepared := await queue.get()) is not None:
            result = await pipeline.store(prepared)
            for o in result.outcomes:
                if o.status == "accepted":
                    counts.accepted += 1
                elif o.status == "duplicate":
                    counts.duplicate += 1
                elif o.reason is not None:
                    counts.rejected[o.reason.value] += 1

    async with asyncio.TaskGroup() as tg:
        tg.create_task(produce(), name="ingest-parse")
        tg.create_task(consume(), name="ingest-store")
    return counts
