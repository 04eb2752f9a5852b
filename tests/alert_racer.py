"""One contender in the concurrency test: evaluates one stored reading when told "go"."""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from alerting.engine import RuleEngine, _from_row, _READING_COLS


async def main(dsn: str, device_id: str, seq: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    try:
        row = await pool.fetchrow(
            f"SELECT {_READING_COLS} FROM readings WHERE device_id = $1 AND seq = $2",
            device_id, seq,
        )  # fmt: skip
        assert row is not None
        reading = _from_row(row)
        engine = RuleEngine(pool)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the barrier
        touched = await engine.evaluate([reading], {reading.key: row["member_id"]})
        print(f"touched {touched}", flush=True)
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
