"""Child processes of a benchmark: start, read their JSON lines, stop by their own pid.

Targets, servers and load generators each run in their own process so that no two of
them share an event loop (or the GIL) with what they measure. Each child's stderr goes to
a log file in the run's work directory, kept for a post-mortem. A child talks to the
parent in JSON lines on stdout (print_json): its endpoints once it is ready, or its result.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYTHON = sys.executable
BIN = Path(sys.executable).parent


class ChildFailed(RuntimeError):
    """A child process died or never became ready; the message quotes its log."""


@dataclass
class Child:
    """A running child process, and the endpoints its ready line announced."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    endpoints: list[tuple[str, int]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def failure(self, what: str) -> ChildFailed:
        """An error naming the child, what went wrong and the tail of its log."""
        try:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            tail = "(no log)"
        return ChildFailed(f"{self.name} {what}; log {self.log}:\n{tail}")

    async def read_json(self, within: float) -> dict[str, Any]:
        """The next JSON object the child prints on stdout (other lines are skipped)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(within):
            while line := await self.proc.stdout.readline():
                if line.startswith(b"{"):
                    value: dict[str, Any] = json.loads(line)
                    return value
            await self.proc.wait()
        raise self.failure(f"exited with status {self.proc.returncode}")

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, wait, SIGKILL if it will not go."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def spawn(name: str, argv: list[str], log: Path, stdin: bytes | None = None) -> Child:
    """Start argv with stdout piped, stderr appended to log, and stdin fed (then closed)."""
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err
        )
    assert proc.stdin is not None
    proc.stdin.write(stdin or b"")
    proc.stdin.close()
    return Child(name, proc, log)


async def start_ready(name: str, argv: list[str], log: Path, within: float = 60.0) -> Child:
    """Start a child that prints one JSON line when ready: {"endpoints": [[address, port]]}."""
    child = await spawn(name, argv, log)
    try:
        ready = await child.read_json(within)
    except TimeoutError:
        await child.stop()
        raise child.failure(f"not ready after {within:.0f}s") from None
    except BaseException:
        await child.stop()
        raise
    child.endpoints = [(str(a), int(p)) for a, p in ready["endpoints"]]
    return child


def print_json(value: dict[str, Any]) -> None:
    """In a child: one JSON line on stdout."""
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()
