"""The benchmarks never rot: each one's `--quick` mode runs end to end and records its figures.

Each bench runs as `vigil bench NAME --quick` (a real process, as an operator runs it) against
the test server; the benches create and drop their own databases there. Records go to a
temporary folder (VIGIL_BENCH_DOCS), never to docs/. Whether a target is met depends on the
machine, so only the record's presence and shape are checked, not `met`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

VIGIL = str(Path(sys.executable).with_name("vigil"))


@pytest.mark.parametrize("name", ["ingest_file", "ingest_mqtt", "ingest_backlog"])
def test_quick_bench_runs_and_records(name: str, database_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "VIGIL_DATABASE_URL": database_url,
        "VIGIL_BENCH_DOCS": str(tmp_path),
        "VIGIL_LOG_LEVEL": "WARNING",
    }
    for knob in [k for k in env if k.startswith("VIGIL_BENCH_GATEWAY_")]:
        del env[knob]  # the recorded settings, not someone's experiment
    proc = subprocess.run(
        [VIGIL, "bench", name, "--quick"], env=env, capture_output=True, text=True,
        timeout=600, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    records = [
        json.loads(line)
        for line in (tmp_path / "benchmarks.jsonl").read_text().splitlines()
        if line.strip()
    ]
    mine = [r for r in records if r["name"] == name]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["mode"] == "quick"
    assert isinstance(entry["met"], bool)
    assert entry["vigil_readings_per_s"] > 0
    assert entry["baseline_readings_per_s"] > 0
    assert entry["ratio"] > 0
    if name != "ingest_file":
        assert entry["workers"] >= 1
        assert entry["generator_readings_per_s"] > 0
    assert (tmp_path / "benchmarks.md").is_file()
