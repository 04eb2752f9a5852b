"""`vigil up`: every role of Vigil in one process group, for a small site or the demo.

Each role runs as its own child process, exactly as an operator would run it alone
(`vigil gateway`, `vigil scheduler`, `vigil console`, `vigil api`), so what runs here is what
scales out elsewhere. A child that dies is restarted with backoff; SIGTERM/SIGINT stops them all
gracefully (SIGTERM, then SIGKILL after a grace period). Child logs are prefixed by role on
stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

GRACE_SECONDS = 20.0


@dataclass
class Role:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    proc: asyncio.subprocess.Process | None = None


def vigil_argv(*args: str) -> list[str]:
    """The `vigil` executable next to this interpreter (the venv's), else `python -m`."""
    exe = Path(sys.executable).with_name("vigil")
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-m", "services.cli", *args]


async def _pump(role: Role, stream: asyncio.StreamReader) -> None:
    async for line in stream:
        sys.stderr.write(f"[{role.name}] {line.decode(errors='replace')}")


async def _start(role: Role) -> None:
    role.proc = await asyncio.create_subprocess_exec(
        *role.argv,
        env={**os.environ, **role.env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert role.proc.stdout is not None  # noqa: S101 - PIPE was requested
    asyncio.get_running_loop().create_task(_pump(role, role.proc.stdout))
    log.info("started %s (pid %d)", role.name, role.proc.pid)


async def _supervise(role: Role, stop: asyncio.Event) -> None:
    delay = 1.0
    while not stop.is_set():
        await _start(role)
        assert role.proc is not None  # noqa: S101
        waiter = asyncio.ensure_future(role.proc.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if stop.is_set():
            waiter.cancel()
            return
        role.restarts += 1
        log.error("%s exited with %s; restarting in %.0fs", role.name, role.proc.returncode, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 60.0)


async def _terminate(roles: Sequence[Role]) -> None:
    running = [r for r in roles if r.proc is not None and r.proc.returncode is None]
    for r in running:
        assert r.proc is not None  # noqa: S101
        r.proc.send_signal(signal.SIGTERM)
    for r in running:
        assert r.proc is not None  # noqa: S101
        try:
            await asyncio.wait_for(r.proc.wait(), GRACE_SECONDS)
        except TimeoutError:
            log.warning("%s did not stop within %.0fs; killing it", r.name, GRACE_SECONDS)
            r.proc.kill()
            await r.proc.wait()


async def run_roles(roles: Sequence[Role], stop: asyncio.Event) -> None:
    """Run and supervise `roles` until `stop` is set, then stop them all gracefully."""
    try:
        async with asyncio.TaskGroup() as tg:
            for role in roles:
                tg.create_task(_supervise(role, stop), name=f"supervise-{role.name}")
    finally:
        await _terminate(roles)
