"""Remote commands are processes of this machine (every test SSH server is on loopback).

So "the remote command is gone" is a look at the process list. Each test runs a command
with a unique argument (`marker()`), so it never sees another test's processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import psutil


def marker() -> str:
    """A `sleep` length no other process has: `sleep 30.<random>` (30 s if it leaks)."""
    return f"30.{uuid.uuid4().int % 10**9:09d}"


def process_list(pattern: str) -> list[psutil.Process]:
    """Live processes (zombies excluded) whose command line contains pattern."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        if pattern in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def sleeps(m: str) -> list[psutil.Process]:
    """The `sleep M` processes themselves (not the shells that started them)."""
    return [p for p in process_list(m) if p.info["cmdline"][0] == "sleep"]


async def sleeping(m: str, within: float = 2.0) -> bool:
    """Whether `sleep M` itself runs within the time: its shell has exec'd or forked it,
    so a signal now reaches the command (one sent while a shell starts up may be lost)."""
    return await eventually(lambda: bool(sleeps(m)), within)


async def running(pattern: str, within: float = 2.0) -> bool:
    """Whether a process with pattern in its command line shows up within the time."""
    end = time.monotonic() + within
    while not process_list(pattern):
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.02)
    return True


async def gone(pattern: str, within: float = 2.0) -> bool:
    """Whether every process with pattern in its command line ends within the time."""
    end = time.monotonic() + within
    while process_list(pattern):
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.02)
    return True


async def eventually(check: Callable[[], bool], within: float = 5.0) -> bool:
    """Whether check() becomes true within the time (polled every 20 ms)."""
    end = time.monotonic() + within
    while not check():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.02)
    return True


def stop(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM a child process and reap it; SIGKILL it if it is still there after timeout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def read_until_closed(fd: int) -> bytes:
    """Read a pty's far side until every writer closed it (EIO on Linux): a CLI's terminal."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)
