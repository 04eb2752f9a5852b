"""Recording benchmark figures: docs/benchmarks.jsonl (one JSON object per run) and
docs/benchmarks.md (a readable table, regenerated from the JSONL so the two never disagree).

`met` is computed here from the figures and the target, never typed in by hand.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
#: Where the records go: docs/, or VIGIL_BENCH_DOCS (the tests point it at a temporary folder).
DOCS = Path(os.environ.get("VIGIL_BENCH_DOCS") or REPO / "docs")


@dataclass(frozen=True, slots=True)
class Target:
    """A goal on one figure: `figure >= value` (at_least) or `figure <= value` (at_most)."""

    figure: str
    value: float
    direction: Literal["at_least", "at_most"]

    def met(self, figures: dict[str, Any]) -> bool:
        got = figures.get(self.figure)
        if not isinstance(got, int | float):
            return False
        return got >= self.value if self.direction == "at_least" else got <= self.value

    def describe(self) -> str:
        return f"{self.figure} {'>=' if self.direction == 'at_least' else '<='} {self.value:g}"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
            text=True, check=True, timeout=10,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty else "")


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    cores = os.cpu_count()
    python = platform.python_version()
    return f"{platform.node()} ({cores} cores, {cpu}, {mem_gib:.0f} GiB, Python {python})"


def record(
    name: str,
    mode: Literal["quick", "full"],
    figures: dict[str, Any],
    target: Target,
    notes: str = "",
    docs: Path = DOCS,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": machine(),
        "mode": mode,
        **figures,
        "target": target.describe(),
        "met": target.met(figures),
    }
    if notes:
        entry["notes"] = notes
    docs.mkdir(parents=True, exist_ok=True)
    with (docs / "benchmarks.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=False) + "\n")
    render_markdown(docs)
    print(json.dumps(entry, indent=2))
    return entry


_FIXED = ("name", "date", "commit", "machine", "mode", "target", "met", "notes")


def render_markdown(docs: Path = DOCS) -> None:
    entries = []
    path = docs / "benchmarks.jsonl"
    if path.exists():
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "# Benchmarks",
        "",
        "Generated from `docs/benchmarks.jsonl` by `bench/record.py` (do not edit by hand).",
        "Each benchmark compares Vigil with a baseline measured in the same run; ratios matter,",
        "absolute times are noise on shared 2-core machines.",
        "`vigil bench NAME [--quick]` reruns one.",
        "",
        "## Latest full run of each benchmark",
        "",
    ]
    latest: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.get("mode") == "full":
            latest[e["name"]] = e
    lines += _table(list(latest.values())) or ["(none yet)"]
    lines += ["", "## All runs (newest first)", ""]
    lines += _table(list(reversed(entries))) or ["(none yet)"]
    lines.append("")
    (docs / "benchmarks.md").write_text("\n".join(lines), encoding="utf-8")


def _table(entries: list[dict[str, Any]]) -> list[str]:
    if not entries:
        return []
    out = [
        "| name | mode | figures | target | met | date | commit | machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        figs = ", ".join(f"{k}={_fmt(v)}" for k, v in e.items() if k not in _FIXED)
        out.append(
            f"| {e['name']} | {e['mode']} | {figs} | {e['target']} | "
            f"{'yes' if e['met'] else 'NO'} | {e['date']} | {e['commit']} | {e['machine']} |"
        )
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
