"""Child processes of a benchmark: start, wait until ready, stop by their own pid.

Targets, servers and load generators each run in their own process so that no two of
them share an event loop (or the GIL) with what they measure. Each child's stderr goes to
a log file in the run's work directory, kept for a post-mortem.
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


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Child:
    """A running child process."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.proc.returncode is None

    def failure(self, what: str) -> ChildFailed:
        """An error naming the child, what went wrong and its log's tail."""
        return ChildFailed(f"{self.name} {what}; log {self.log}:\n{log_tail(self.log)}")

    async def stop(self, grace: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL if it will not go; returns the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.feed_eof()
        assert self.proc.returncode is not None
        return self.proc.returncode


async def spawn(name: str, argv: list[str], log: Path, *, stdin: bool = False) -> Child:
    """Start argv with stdout piped and stderr appended to log."""
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            limit=64 * 1024 * 1024,
        )
    return Child(name, proc, log)


async def read_json_line(child: Child, within: float) -> dict[str, Any]:
    """The next JSON object the child prints on stdout (other lines are skipped)."""
    assert child.proc.stdout is not None
    async with asyncio.timeout(within):
        while True:
            line = await child.proc.stdout.readline()
            if not line:
                await child.proc.wait()
                raise child.failure(f"exited with status {child.proc.returncode}")
            text = line.decode("utf-8", "replace").strip()
            if text.startswith("{"):
                value: dict[str, Any] = json.loads(text)
                return value


async def start_ready(name: str, argv: list[str], log: Path, within: float = 60.0) -> Child:
    """Start a child that prints one JSON line when it is ready; keep that line."""
    child = await spawn(name, argv, log)
    try:
        child.ready = await read_json_line(child, within)
    except TimeoutError:
        await child.stop()
        raise child.failure(f"not ready after {within:.0f}s") from None
    except BaseException:
        await child.stop()
        raise
    return child


def print_ready(**info: Any) -> None:
    """In a child: announce readiness to the parent as one JSON line."""
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
