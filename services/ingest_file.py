"""The reading-file adapter behind `vigil ingest`: JSONL lines -> the pipeline, with counts.

A file is split by device across worker processes (each device's lines stay in one worker, in
file order, so its sequence and clock checks see them in order), so parsing and validation use
every core. Within a worker, parsing the next batch overlaps with storing the current ones.
Correctness never depends on the split: the ledger's constraints make concurrent writers safe.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Final

from services.errors import ConfigurationError
from services.pipeline import Incoming, ReadingPipeline
from services.pipeline.core import PreparedBatch
from services.runtime import run_loop
from services.settings import Settings

#: Batches stored concurrently per worker, each on its own connection: while one waits for the
#: database, the next is classified.
STORERS: Final = 2
_DEVICE_ID: Final = re.compile(rb'"device_id"\s*:\s*"([^"\\]*)"')


@dataclass(slots=True)
class IngestCounts:
    accepted: int = 0
    duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.accepted + self.duplicate + sum(self.rejected.values())

    def add(self, other: IngestCounts) -> None:
        self.accepted += other.accepted
        self.duplicate += other.duplicate
        self.rejected.update(other.rejected)

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


def partition_of(line: bytes, partitions: int) -> int:
    """The worker for a line: by device, so a device's readings stay in order in one worker.
    Lines whose device cannot be read cheaply go to worker 0 (the pipeline judges them)."""
    if partitions == 1:
        return 0
    m = _DEVICE_ID.search(line)
    return zlib.crc32(m.group(1)) % partitions if m else 0


def _lines(path: Path, partition: int, partitions: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        for line in fh:
            stripped = line.strip()
            if stripped and partition_of(stripped, partitions) == partition:
                yield stripped


async def _batches(
    pipeline: ReadingPipeline, lines: Iterator[bytes], batch_size: int
) -> AsyncIterator[PreparedBatch]:
    batch: list[Incoming] = []
    for raw in lines:
        batch.append(Incoming(raw=raw, received_at=datetime.now(UTC), transport="file"))
        if len(batch) >= batch_size:
            yield pipeline.prepare(batch)
            batch = []
            await asyncio.sleep(0)
    if batch:
        yield pipeline.prepare(batch)


async def ingest_lines(
    pipeline: ReadingPipeline, lines: Iterator[bytes], batch_size: int
) -> IngestCounts:
    counts = IngestCounts()
    queue: asyncio.Queue[PreparedBatch | None] = asyncio.Queue(maxsize=2)

    async def produce() -> None:
        async for prepared in _batches(pipeline, lines, batch_size):
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
        await queue.put(None)  # let the sibling consumers finish too

    async with asyncio.TaskGroup() as tg:
        tg.create_task(produce(), name="ingest-parse")
        for k in range(STORERS):
            tg.create_task(consume(), name=f"ingest-store-{k}")
    return counts


async def _ingest_partition(
    settings: Settings, path: Path, batch_size: int, partition: int, partitions: int
) -> IngestCounts:
    from services.commands import build_pipeline
    from services.storage.db import open_pool

    async with open_pool(settings.dsn(), max_size=STORERS + 1) as pool:
        pipeline = build_pipeline(pool, settings)
        return await ingest_lines(pipeline, _lines(path, partition, partitions), batch_size)


def _worker(
    settings: Settings, path: Path, batch_size: int, partition: int, partitions: int
) -> IngestCounts:
    return run_loop(_ingest_partition(settings, path, batch_size, partition, partitions))


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


async def ingest_file(
    settings: Settings, path: Path, batch_size: int, workers: int | None = None
) -> IngestCounts:
    if not path.is_file():  # noqa: ASYNC240 - one stat before the work starts
        raise ConfigurationError(f"{path}: no such file")
    workers = workers or default_workers()
    if workers == 1:
        return await _ingest_partition(settings, path, batch_size, 0, 1)
    loop = asyncio.get_running_loop()
    # spawn, not fork: a forked child would inherit this process's event loop and connections.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
        parts = await asyncio.gather(*(
            loop.run_in_executor(ex, _worker, settings, path, batch_size, k, workers)
            for k in range(workers)
        ))  # fmt: skip
    total = IngestCounts()
    for part in parts:
        total.add(part)
    return total
