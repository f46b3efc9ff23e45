"""Stream backpressure and throughput, with scout in its own process so its memory is its own.

The command runs on the real OpenSSH sshd. A slow reader must slow the command down (the
SSH window closes) instead of growing scout's memory; a fast reader gets every byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from testkit.sshd import OpenSSHServer

SIZE = 256 * 1024 * 1024
_LISTENING = re.compile(r"listening on \S+ \(port (\d+)\)")


@pytest.fixture
def scout_process(openssh: OpenSSHServer, tmp_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    """scout-server as a child process, host "o" on sshd; yields its target and process."""
    config = tmp_path / "scout.toml"
    host = openssh.host_config("o")
    config.write_text(
        f"""
[hosts.o]
address = "{host.address}"
port = {host.port}
user = "{host.user}"
identity_file = "{host.identity_file}"
known_hosts = "{host.known_hosts}"
"""
    )
    log = tmp_path / "scout.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--config", str(config), "--listen", "127.0.0.1:0"],
            stderr=sink,
        )
    try:
        port = None
        for _ in range(200):  # up to 10 s
            if m := _LISTENING.search(log.read_text()):
                port = int(m.group(1))
                break
            time.sleep(0.05)
        assert port, f"scout-server did not start:\n{log.read_text()}"
        yield f"127.0.0.1:{port}", psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def start(command: str) -> exec_pb2.StreamRequest:
    return exec_pb2.StreamRequest(start=exec_pb2.ExecuteRequest(host="o", command=command))


def expected_digest() -> str:
    block = b"y\n" * (1 << 19)  # 1 MiB
    digest = hashlib.sha256()
    for _ in range(SIZE // len(block)):
        digest.update(block)
    return digest.hexdigest()


async def test_slow_reader_keeps_scout_memory_bounded(
    scout_process: tuple[str, psutil.Process],
) -> None:
    target, proc = scout_process
    async with grpc.aio.insecure_channel(target) as channel:
        stub = exec_pb2_grpc.ExecServiceStub(channel)
        warm = stub.Stream(iter([start("echo warm")]))
        responses = [r async for r in warm]
        assert responses[0].stdout == b"warm\n"
        before = proc.memory_info().rss
        call = stub.Stream(iter([start(f"yes | head -c {SIZE}")]), timeout=60)
        received = 0
        peak = before
        ends = time.monotonic() + 4.0
        while time.monotonic() < ends:  # a slow reader: one message every 20 ms
            msg = await call.read()
            received += len(msg.stdout)
            peak = max(peak, proc.memory_info().rss)
            await asyncio.sleep(0.02)
        call.cancel()
    growth = (peak - before) / 2**20
    print(f"\nslow reader: received {received / 2**20:.1f} MiB in 4 s, RSS growth {growth:.1f} MiB")
    assert received < SIZE / 4  # the command was slowed down, not run to the end
    assert growth < 30


async def test_fast_reader_gets_every_byte(scout_process: tuple[str, psutil.Process]) -> None:
    target, proc = scout_process
    async with grpc.aio.insecure_channel(target) as channel:
        stub = exec_pb2_grpc.ExecServiceStub(channel)
        before = proc.memory_info().rss
        digest = hashlib.sha256()
        received = 0
        started = time.monotonic()
        call = stub.Stream(iter([start(f"yes | head -c {SIZE}")]), timeout=120)
        last = None
        async for msg in call:
            if msg.WhichOneof("event") == "stdout":
                digest.update(msg.stdout)
                received += len(msg.stdout)
            last = msg
        elapsed = time.monotonic() - started
        peak = proc.memory_info().rss
    assert last is not None and last.exit.exit_code == 0
    assert received == SIZE and last.exit.stdout_bytes == SIZE
    assert digest.hexdigest() == expected_digest()
    print(
        f"\nfast reader: {SIZE / 2**20:.0f} MiB in {elapsed:.2f}s = "
        f"{SIZE / 2**20 / elapsed:.0f} MiB/s; scout RSS {peak / 2**20:.0f} MiB "
        f"(+{(peak - before) / 2**20:.0f})"
    )
