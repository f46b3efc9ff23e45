"""scout-server as a child process, as people run it: started, or run to its exit."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from server.config import HostConfig

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on \S+ \(port (\d+)\)")
P = TypeVar("P")  # the process: subprocess.Popen or asyncio's


@dataclass
class Replica(Generic[P]):
    """One scout-server process of several: the address to call it on directly, its log."""

    proc: P
    target: str
    log: Path

    @property
    def port(self) -> int:
        """The port it listens on (a proxy's upstream)."""
        return int(self.target.rsplit(":", 1)[1])


def start_server(
    args: list[str], log: Path, *, nofile: tuple[int, int] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m server ARGS --listen 127.0.0.1:0`; return it and its target.

    `nofile` (soft, hard) limits its open files. util-linux's prlimit sets them and then
    executes the server: a preexec_fn would make Popen fork this process, whose gRPC
    threads (of earlier tests) then crash the child before it executes anything (SIGSEGV
    or SIGABRT in 1 of 5 forks while those threads are busy; prlimit: none in 3,000).
    """
    limit = ["prlimit", f"--nofile={nofile[0]}:{nofile[1]}", "--"] if nofile else []
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [*limit, sys.executable, "-m", "server", *args, "--listen", "127.0.0.1:0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    for _ in range(300):  # up to 15 s
        if m := LISTENING.search(log.read_text()):
            return proc, f"127.0.0.1:{m.group(1)}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"scout-server did not start:\n{log.read_text()}")


def server_exits(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run `python -m server ARGS` to its end (a refusal, a subcommand): 30 s at most."""
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
        cwd=ROOT,
    )


def host_toml(name: str, host: HostConfig) -> str:
    """A [hosts.NAME] table for a child server's config file."""
    return (
        f"[hosts.{name}]\naddress = {host.address!r}\nport = {host.port}\n"
        f"user = {host.user!r}\nidentity_file = '{host.identity_file}'\n"
        f"known_hosts = '{host.known_hosts}'\n"
    )
