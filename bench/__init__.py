"""Vigil's benchmark suite: `vigil bench [NAME] [--quick]`.

Each benchmark measures Vigil and its baseline side by side in the same run, prints its figures
and records them (bench/record.py) in docs/benchmarks.md and docs/benchmarks.jsonl. `--quick`
runs in seconds and is exercised by the test suite so the benchmarks never rot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from services.errors import ConfigurationError
from services.settings import Settings

Benchmark = Callable[[Settings, bool], Awaitable[dict[str, Any]]]


def _registry() -> dict[str, Benchmark]:
    from bench import ingest_backlog, ingest_file, ingest_mqtt

    return {
        "ingest_file": ingest_file.run,
        "ingest_mqtt": ingest_mqtt.run,
        "ingest_backlog": ingest_backlog.run,
    }


async def run_benchmarks(settings: Settings, name: str | None, *, quick: bool) -> None:
    registry = _registry()
    if name is not None and name not in registry:
        raise ConfigurationError(f"no benchmark {name!r}; known: {', '.join(sorted(registry))}")
    for bench_name, bench in registry.items():
        if name is None or name == bench_name:
            await bench(settings, quick)
