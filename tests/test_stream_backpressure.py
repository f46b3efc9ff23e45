"""Stream backpressure and throughput, with scout in its own process so its memory is its own.

The command runs on the real OpenSSH sshd. A slow reader must slow the command down (the
SSH window closes) instead of growing scout's memory; a fast reader gets every byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from testkit.sshd import OpenSSHServer

from .serverproc import host_toml, start_server

SIZE = 256 * 1024 * 1024


@pytest.fixture
def scout_process(openssh: OpenSSHServer, tmp_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    """scout-server as a child process, host "o" on sshd; yields its target and process."""
    config = tmp_path / "scout.toml"
    config.write_text(host_toml("o", openssh.host_config("o")))
    proc, target = start_server(["--config", str(config)], tmp_path / "scout.log")
    try:
        yield target, psutil.Process(proc.pid)
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
        while time.monotonic() < ends:  # a slow reader: 20 ms a message of up to 256 KiB,
            msg = await call.read()  # so at most 12.5 MiB/s whatever the message size
            received += len(msg.stdout)
            peak = max(peak, proc.memory_info().rss)
            await asyncio.sleep(0.02 * max(1.0, len(msg.stdout) / (256 * 1024)))
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
