"""The Python client's files: upload from every kind of source, download (iterated, to a
file, resumed), upload_many, the errors, and SyncClient's versions, against real sshd."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client import AlreadyExists, Client, DataLoss, HostRejected, InvalidRequest, SyncClient
from client.files import Source

from .filerig import leftovers
from .scoutd import Scout


async def test_upload_sources_and_download_forms(
    openssh_scout: Scout,
    remote_dir: Path,
    tmp_path: Path,
) -> None:
    data = os.urandom(700 * 1024)
    local = tmp_path / "local.bin"
    local.write_bytes(data)

    async def pieces() -> AsyncIterator[bytes]:
        for at in range(0, len(data), 100_000):
            yield data[at : at + 100_000]

    moved: list[int] = []
    async with Client(openssh_scout.target) as client:
        sources: list[Source] = [
            data,
            local,
            str(local),
            io.BytesIO(data),
            pieces(),
            [data[:10], data[10:]],
        ]
        for i, source in enumerate(sources):
            path = str(remote_dir / f"f{i}")
            answer = await client.upload("o", path, source, mode=0o600, progress=moved.append)
            assert (answer.bytes_written, answer.sha256) == (
                len(data),
                hashlib.sha256(data).hexdigest(),
            )
            assert (remote_dir / f"f{i}").read_bytes() == data
        assert moved[-1] == len(data)
        async with client.download("o", str(remote_dir / "f0")) as call:
            got = b"".join([chunk async for chunk in call])
        assert got == data and call.info is not None
        assert (call.info.size, call.info.mode) == (len(data), 0o600)
        info = await client.download("o", str(remote_dir / "f1")).to_file(tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == data
        assert (tmp_path / "back").stat().st_mode & 0o777 == 0o600 == info.mode
        tail = b"".join([c async for c in client.download("o", str(remote_dir / "f2"), offset=5)])
        assert tail == data[5:]
        with pytest.raises(AlreadyExists) as exists:
            await client.upload("o", str(remote_dir / "f0"), b"x", create_only=True)
        assert not exists.value.may_have_run
        with pytest.raises(DataLoss):
            await client.upload("o", str(remote_dir / "f0"), b"x", sha256="0" * 64)
        with pytest.raises(HostRejected):  # FAILED_PRECONDITION: no such directory
            await client.upload("o", str(remote_dir / "none" / "f"), b"x")
        with pytest.raises(InvalidRequest):
            await client.upload("o", "relative", b"x")
        outcomes = [
            h async for h in client.upload_many(["o", "ghost"], str(remote_dir / "m"), data)
        ]
        assert {h.host: h.ok for h in outcomes} == {"o": True, "ghost": False}
        assert (remote_dir / "m").read_bytes() == data
    assert leftovers(remote_dir) == []


async def test_sync_client_files(
    openssh_scout: Scout,
    remote_dir: Path,
    tmp_path: Path,
) -> None:
    def work() -> None:
        with SyncClient(openssh_scout.target) as client:
            client.upload("o", str(remote_dir / "s"), b"sync bytes")
            data, info = client.download("o", str(remote_dir / "s"))
            assert data == b"sync bytes" and info.size == 10
            client.download_to_file("o", str(remote_dir / "s"), tmp_path / "s")
            assert (tmp_path / "s").read_bytes() == b"sync bytes"
            outcomes = client.upload_many(["o"], str(remote_dir / "s2"), b"many")
            assert [h.ok for h in outcomes] == [True]

    await asyncio.to_thread(work)
