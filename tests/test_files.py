"""Files: Upload, Download and UploadMany over SFTP on the pool, against the real sshd.

Remote files live in a directory owned by the login user (testkit/sshd.py's
`login_user`: scout-test when the tests run as root), so what the remote user may or
may not do is what sshd's sftp lets it do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import pwd
import re
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.callers import hash_token
from server.config import CallerConfig, ConfigError
from server.configfile import parse
from server.files import _read_ahead
from server.keyfiles import ShellKeys
from server.localshell import ServerStats
from server.metrics import exposition
from server.pathpolicy import PathError, allowed, normalise
from testkit.cutproxy import CutProxy
from testkit.scripted import ScriptedServer, close_all, inventory, start_fleet
from testkit.sshd import OpenSSHServer, login_user

from .filerig import bidi_stream, client_stream, leftovers, owned
from .scoutd import Scout, config, running_scout
from .serverproc import host_toml, start_server

TOKEN = "files-caller-5e4d3c2b1a09"


M = TypeVar("M", exec_pb2.UploadRequest, exec_pb2.UploadManyRequest)


async def _messages(
    first: M, wrap: Callable[[bytes], M], data: bytes, chunk: int
) -> AsyncIterator[M]:
    """first, then data cut in chunks, each wrapped."""
    yield first
    for i in range(0, len(data), chunk):
        yield wrap(data[i : i + chunk])


def requests(
    start: exec_pb2.UploadStart, data: bytes, chunk: int = 256 * 1024
) -> AsyncIterator[exec_pb2.UploadRequest]:
    """An Upload's messages: start, then the chunks."""
    first = exec_pb2.UploadRequest(start=start)
    return _messages(first, lambda piece: exec_pb2.UploadRequest(chunk=piece), data, chunk)


async def upload(scout: Scout, data: bytes, **start: Any) -> exec_pb2.UploadResponse:
    """Call Upload with these UploadStart fields and data."""
    start.setdefault("host", "o")
    response: exec_pb2.UploadResponse = await client_stream(
        scout.stub.Upload, requests(exec_pb2.UploadStart(**start), data), timeout=30
    )
    return response


async def download(scout: Scout, **fields: Any) -> tuple[bytes, exec_pb2.DownloadEnd]:
    """Call Download; the bytes and the end message."""
    fields.setdefault("host", "o")
    data = bytearray()
    end = None
    async for message in scout.stub.Download(exec_pb2.DownloadRequest(**fields), timeout=30):
        if message.WhichOneof("event") == "chunk":
            assert end is None
            data += message.chunk
        else:
            end = message.end
    assert end is not None
    return bytes(data), end


async def fails(call: Any, code: grpc.StatusCode, says: str = "") -> str:
    """Await call; it must fail with code (and says in its details)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    assert says in details, details
    return details


def trust_at(known_hosts: Path, port: int, out: Path) -> None:
    """A known_hosts file with the same host key for 127.0.0.1:port (a proxy's address)."""
    key = known_hosts.read_text().split(" ", 1)[1]
    out.write_text(f"[127.0.0.1]:{port} {key}")


def growing(directory: Path) -> bool:
    """A temporary file of an upload is there and has bytes."""
    return any(p.stat().st_size for p in directory.glob("*.scout-*"))


def caller(files: str, paths: tuple[str, ...]) -> CallerConfig:
    """A caller with the files policy, on every host."""
    return CallerConfig(
        name="filer", token_sha256=hash_token(TOKEN), hosts=("*",), files=files, paths=paths
    )


META = (("authorization", f"Bearer {TOKEN}"),)
CODES = {code.value[0]: code.name for code in grpc.StatusCode}


async def test_round_trip_keeps_bytes_mode_and_replaces_atomically(
    openssh_scout: Scout, remote_dir: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    target = remote_dir / "blob.bin"
    owned(target, b"old content", 0o640)
    answer = await upload(openssh_scout, data, path=str(target))
    assert answer.bytes_written == len(data)
    assert answer.sha256 == hashlib.sha256(data).hexdigest()
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o640  # mode 0 keeps the replaced file's
    assert leftovers(remote_dir) == []
    got, end = await download(openssh_scout, path=str(target))
    assert got == data
    assert (end.size, end.sha256, end.mode) == (len(data), answer.sha256, 0o640)
    assert end.mtime.seconds == int(target.stat().st_mtime)
    await upload(openssh_scout, b"x", path=str(remote_dir / "new"), mode=0o600)
    assert (remote_dir / "new").stat().st_mode & 0o777 == 0o600


async def test_download_range_resumes_a_cut_download(
    openssh_scout: Scout, remote_dir: Path
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    target = owned(remote_dir / "resume.bin", data)
    first = bytearray()
    call = openssh_scout.stub.Download(exec_pb2.DownloadRequest(host="o", path=str(target)))
    async for message in call:
        first += message.chunk
        if len(first) >= 700_000:
            call.cancel()  # the caller gives up in the middle
            break
    for _ in range(100):  # the cancelled call's SFTP channel is closed, its place back
        if not openssh_scout.app.pool.reserved:
            break
        await asyncio.sleep(0.02)
    assert openssh_scout.app.pool.reserved == 0
    rest, end = await download(openssh_scout, path=str(target), offset=len(first))
    assert bytes(first) + rest == data
    assert end.sha256 == hashlib.sha256(rest).hexdigest()
    middle, _ = await download(openssh_scout, path=str(target), offset=10, length=100)
    assert middle == data[10:110]


async def test_statuses_and_nothing_written(openssh_scout: Scout, remote_dir: Path) -> None:
    stub = openssh_scout.stub
    existing = owned(remote_dir / "exists.txt", b"keep me")
    await fails(
        upload(openssh_scout, b"new", path=str(existing), create_only=True),
        grpc.StatusCode.ALREADY_EXISTS,
        "create_only",
    )
    assert existing.read_bytes() == b"keep me"
    await upload(openssh_scout, b"fresh", path=str(remote_dir / "fresh.txt"), create_only=True)
    assert (remote_dir / "fresh.txt").read_bytes() == b"fresh"
    await fails(
        upload(openssh_scout, b"x", path=str(remote_dir / "no" / "such" / "dir.txt")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "does not exist",
    )
    await fails(download(openssh_scout, path=str(remote_dir / "absent")), grpc.StatusCode.NOT_FOUND)
    if os.geteuid() == 0:  # as root, the login user is another user than the file's owner
        secret = remote_dir / "secret"
        secret.write_bytes(b"s")
        secret.chmod(0o600)
        os.chown(secret, 0, 0)
        await fails(download(openssh_scout, path=str(secret)), grpc.StatusCode.FAILED_PRECONDITION)
        locked = remote_dir / "locked"
        locked.mkdir(mode=0o755)
        await fails(
            upload(openssh_scout, b"x", path=str(locked / "f")),
            grpc.StatusCode.FAILED_PRECONDITION,
            "refused",
        )
        assert list(locked.iterdir()) == []
    data = b"0123456789"
    await fails(
        upload(openssh_scout, data, path=str(existing), sha256="0" * 64),
        grpc.StatusCode.DATA_LOSS,
    )
    await fails(upload(openssh_scout, data, path=str(existing), size=11), grpc.StatusCode.DATA_LOSS)
    assert existing.read_bytes() == b"keep me"
    assert leftovers(remote_dir) == []
    for bad in ("relative/path", "/tmp/a\x00b", "/tmp/a\nb", "", f"{remote_dir}/"):
        await fails(upload(openssh_scout, b"x", path=bad), grpc.StatusCode.INVALID_ARGUMENT)
    del stub


async def test_max_file_bytes_is_refused_before_anything_is_written(
    openssh: OpenSSHServer, remote_dir: Path
) -> None:
    cfg = config({"o": openssh.host_config("o")}, files={"max_file_bytes": 1000})
    async with running_scout(cfg) as scout:
        target = remote_dir / "big"
        await fails(
            upload(scout, b"x", path=str(target), size=1001),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_file_bytes",
        )
        await fails(upload(scout, b"x" * 1001, path=str(target)), grpc.StatusCode.INVALID_ARGUMENT)
        assert not target.exists()
        assert leftovers(remote_dir) == []


async def test_policy_paths_hold_against_dotdot_and_symlinks(
    openssh: OpenSSHServer, remote_dir: Path
) -> None:
    app = remote_dir / "srv" / "app"
    app.mkdir(parents=True)
    outside = remote_dir / "outside"
    outside.mkdir()
    user = pwd.getpwnam(login_user())
    for d in (remote_dir / "srv", app, outside):
        os.chown(d, user.pw_uid, user.pw_gid)
    owned(outside / "passwd", b"root:x:0:0")
    (app / "link").symlink_to(outside / "passwd")
    (app / "dirlink").symlink_to(outside)
    owned(app / "ok.txt", b"fine")
    cfg = config({"o": openssh.host_config("o")})
    cfg = dataclasses.replace(cfg, callers=(caller("read-write", (f"{app}/**",)),))
    async with running_scout(cfg) as scout:
        stub = scout.stub

        def up(path: str) -> Any:
            start = exec_pb2.UploadStart(host="o", path=path)
            return client_stream(stub.Upload, requests(start, b"evil"), metadata=META, timeout=30)

        def down(path: str) -> Any:
            async def run() -> None:
                request = exec_pb2.DownloadRequest(host="o", path=path)
                async for _ in stub.Download(request, metadata=META, timeout=30):
                    pass

            return run()

        denied = grpc.StatusCode.PERMISSION_DENIED
        escape = f"{app}/../../outside/passwd"
        for path in (escape, str(outside / "passwd"), f"{app}/link", f"{app}/dirlink/passwd"):
            details = await fails(down(path), denied)
            assert str(outside) not in details.replace(path, "")  # never where it leads
        for path in (escape, f"{app}/dirlink/new"):
            await fails(up(path), denied)
        # a big refused upload: the caller still hears PERMISSION_DENIED, not a write error
        start = exec_pb2.UploadStart(host="o", path=escape)
        big = requests(start, os.urandom(16 * 1024 * 1024))
        await fails(client_stream(stub.Upload, big, metadata=META, timeout=30), denied)
        assert (outside / "passwd").read_bytes() == b"root:x:0:0"
        assert sorted(p.name for p in outside.iterdir()) == ["passwd"]
        # through the symlink itself: the rename replaces the link, not what it points to
        await stub.Upload(requests(exec_pb2.UploadStart(host="o", path=f"{app}/link"), b"new"),
                          metadata=META, timeout=30)  # fmt: skip
        assert (outside / "passwd").read_bytes() == b"root:x:0:0"
        assert (app / "link").read_bytes() == b"new" and not (app / "link").is_symlink()
        await down(f"{app}/ok.txt")
        # a caller that may only read, and one with no files at all
        read_only = dataclasses.replace(cfg, callers=(caller("read", (f"{app}/**",)),))
        async with running_scout(read_only) as ro:
            start = exec_pb2.UploadStart(host="o", path=f"{app}/ok.txt")
            await fails(
                client_stream(ro.stub.Upload, requests(start, b"x"), metadata=META, timeout=30),
                denied,
                "may not write files",
            )
        assert (app / "ok.txt").read_bytes() == b"fine"
        no_files = dataclasses.replace(caller("read", (f"{app}/**",)), files="none")
        async with running_scout(dataclasses.replace(cfg, callers=(no_files,))) as none:
            request = exec_pb2.DownloadRequest(host="o", path=f"{app}/ok.txt")
            await fails(
                none.stub.Download(request, metadata=META, timeout=30).read(),
                denied,
                "files = 'none'",
            )


async def test_audit_and_metrics_count_each_transfer(
    openssh: OpenSSHServer, remote_dir: Path, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.log"
    cfg = config({"o": openssh.host_config("o")}, audit={"file": str(audit)})
    async with running_scout(cfg) as scout:
        answer = await upload(scout, b"hello", path=str(remote_dir / "a.txt"))
        await download(scout, path=str(remote_dir / "a.txt"))
        await fails(download(scout, path=str(remote_dir / "nope")), grpc.StatusCode.NOT_FOUND)
        rpcs = scout.app.service.rpcs
        assert rpcs.file_bytes == {"upload": 5, "download": 5}
        assert rpcs.file_transfers == {
            ("upload", "OK"): 1,
            ("download", "OK"): 1,
            ("download", "NOT_FOUND"): 1,
        }
        start = exec_pb2.UploadManyStart(
            hosts=["o"], upload=exec_pb2.UploadStart(path=str(remote_dir / "b.txt"))
        )
        await bidi_stream(scout.stub.UploadMany, many(start, b"hi"), timeout=30)
        assert rpcs.file_transfers[("upload", "OK")] == 2  # the host's, not the call's
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(x["method"], x["host"], x["direction"], x["bytes"], x["code"]) for x in lines] == [
        ("Upload", "o", "upload", 5, "OK"),
        ("Download", "o", "download", 5, "OK"),
        ("Download", "o", "download", 0, "NOT_FOUND"),
        ("UploadMany", "o", "upload", 2, "OK"),
        ("UploadMany", "", "upload", 2, "OK"),
    ]
    assert lines[3]["sha256"] == lines[4]["sha256"] == hashlib.sha256(b"hi").hexdigest()
    assert lines[0]["sha256"] == answer.sha256 and lines[0]["host"] == "o"
    assert lines[0]["path"] == str(remote_dir / "a.txt")


async def test_uploads_and_commands_share_the_session_budget(
    openssh: OpenSSHServer, remote_dir: Path
) -> None:
    """sshd's MaxSessions 10; scout's one connection to it carries at most its default 8
    sessions: uploads, downloads and commands all at once. Were an SFTP session not
    counted as a channel, more than 10 would be opened and sshd would refuse some.
    (A place handed to a waiter waits for sshd to free the session: test_pool_ssh.py.)"""
    data = os.urandom(512 * 1024)
    owned(remote_dir / "src", data)
    pool = {"max_connections_per_host": 1}
    async with running_scout(config({"o": openssh.host_config("o")}, pool=pool)) as scout:

        async def one(i: int) -> None:
            if i % 3 == 0:
                await upload(scout, data, path=str(remote_dir / f"u{i}"))
            elif i % 3 == 1:
                got, _ = await download(scout, path=str(remote_dir / "src"))
                assert got == data
            else:
                response = await scout.execute(host="o", command="sleep 0.05; echo ok")
                assert response.stdout == b"ok\n"

        await asyncio.gather(*(one(i) for i in range(36)))
        stats = scout.app.pool.stats
        assert (stats.refusals, stats.retries) == (0, 0)  # not one channel error
        assert stats.waits > 0  # the budget was full: callers waited for a place
    assert leftovers(remote_dir) == []


async def test_caller_cut_mid_upload_leaves_target_and_no_temporary_file(
    openssh_scout: Scout, remote_dir: Path
) -> None:
    """A real TCP cut between the caller and scout once half the bytes are sent and the
    temporary file is being written: the target keeps its old content, and the
    temporary file is gone once scout has noticed."""
    target = owned(remote_dir / "config.txt", b"old and whole")
    await openssh_scout.execute(host="o", command="true")  # a warm connection
    size, chunk = 16 * 1024 * 1024, 64 * 1024
    port = int(openssh_scout.target.rsplit(":", 1)[1])
    proxy = await CutProxy(("127.0.0.1", port), cut_after=1 << 40).start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}")

    async def messages() -> AsyncIterator[exec_pb2.UploadRequest]:
        yield exec_pb2.UploadRequest(start=exec_pb2.UploadStart(host="o", path=str(target)))
        for i in range(size // chunk):
            if i == size // chunk // 2:
                for _ in range(1000):  # the temporary file is there and growing: cut now
                    if growing(remote_dir):
                        break
                    await asyncio.sleep(0.01)
                assert leftovers(remote_dir), "the upload never reached the host"
                proxy.abort()
            yield exec_pb2.UploadRequest(chunk=os.urandom(chunk))

    try:
        stub = exec_pb2_grpc.ExecServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):  # UNAVAILABLE, or INTERNAL from grpc core
            await stub.Upload(messages(), timeout=30)
        assert proxy.cut.is_set()
    finally:
        await channel.close()
        await proxy.close()
    for _ in range(200):
        if not leftovers(remote_dir) and not openssh_scout.app.pool.reserved:
            break
        await asyncio.sleep(0.05)
    assert target.read_bytes() == b"old and whole"
    assert leftovers(remote_dir) == []
    assert openssh_scout.app.pool.reserved == 0  # the SFTP channel's place is back
    transfers = openssh_scout.app.service.rpcs.file_transfers
    assert list(transfers) in ([("upload", "CANCELLED")], [("upload", "UNAVAILABLE")]), transfers


async def test_upload_many_to_twenty_hosts_five_at_a_time(
    openssh: OpenSSHServer, ssh_keys: ShellKeys, remote_dir: Path, tmp_path: Path
) -> None:
    """19 in-process hosts (each with its own files, seen under one path) and the real
    sshd; max_parallel 5; one host without SFTP gets its own status."""
    shared = tmp_path / "shared"  # the path every host is written at
    shared.mkdir()
    servers = await start_fleet(ssh_keys, 19)
    counted = ServerStats()
    try:
        for i, server in enumerate(servers):
            own = tmp_path / f"host{i}"
            own.mkdir()
            server.sftp_view = (own, shared)
            server.stats = counted  # one count over every in-process host
        servers[7].sftp = False
        cfg = inventory(servers)
        hosts = dict(cfg.hosts)
        hosts["sshd"] = openssh.host_config("sshd")
        cfg = dataclasses.replace(cfg, hosts=hosts)
        data = os.urandom(600 * 1024)
        async with running_scout(cfg) as scout:
            start = exec_pb2.UploadManyStart(
                hosts=["host*"],
                upload=exec_pb2.UploadStart(path=str(shared / "app.conf")),
                max_parallel=5,
            )
            # the real sshd writes where its own login user may
            sshd_start = exec_pb2.UploadManyStart(
                hosts=["sshd"], upload=exec_pb2.UploadStart(path=str(remote_dir / "app.conf"))
            )
            results = {}
            for first in (start, sshd_start):
                call = scout.stub.UploadMany(many(first, data), timeout=60)
                async for message in call:
                    results[message.host] = message
        assert len(results) == 20
        failed = {h for h, m in results.items() if m.WhichOneof("event") == "error"}
        assert failed == {"host7"}
        error = results["host7"].error
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert "sftp" in error.message
        digest = hashlib.sha256(data).hexdigest()
        for i in range(19):
            written = tmp_path / f"host{i}" / "app.conf"
            if i == 7:
                assert not written.exists()
            else:
                assert written.read_bytes() == data
                assert results[f"host{i}"].result.sha256 == digest
        assert (remote_dir / "app.conf").read_bytes() == data
        assert not (shared / "app.conf").exists()  # each host wrote its own
        assert 1 <= counted.peak_sftp_open <= 5
        assert counted.sftp_sessions == 18
    finally:
        await close_all(servers)


def many(
    start: exec_pb2.UploadManyStart, data: bytes, chunk: int = 128 * 1024
) -> AsyncIterator[exec_pb2.UploadManyRequest]:
    """An UploadMany's messages."""
    first = exec_pb2.UploadManyRequest(start=start)
    return _messages(first, lambda piece: exec_pb2.UploadManyRequest(chunk=piece), data, chunk)


async def test_upload_many_never_names_hidden_hosts(
    openssh: OpenSSHServer, remote_dir: Path
) -> None:
    """A glob or selector picks only hosts the caller may use; a hidden host named plainly
    is PERMISSION_DENIED, exactly as a name that does not exist would be."""
    hosts = {name: openssh.host_config(name) for name in ("web1", "web2", "secret-db")}
    cfg = config(hosts)
    filer = dataclasses.replace(caller("write", (f"{remote_dir}/**",)), hosts=("web*",))
    cfg = dataclasses.replace(cfg, callers=(filer,))
    async with running_scout(cfg) as scout:
        upload_to = exec_pb2.UploadStart(path=str(remote_dir / "f"))

        async def outcome(*patterns: str) -> dict[str, str]:
            start = exec_pb2.UploadManyStart(hosts=list(patterns), upload=upload_to)
            found = {}
            replies = await bidi_stream(
                scout.stub.UploadMany, many(start, b"data"), metadata=META, timeout=30
            )
            for message in replies:
                kind = message.WhichOneof("event")
                found[message.host] = "OK" if kind == "result" else CODES[message.error.code]
            return found

        assert await outcome("*") == {"web1": "OK", "web2": "OK"}
        named = await outcome("secret-db", "no-such-host", "web1")
        assert named == {
            "secret-db": "PERMISSION_DENIED",
            "no-such-host": "PERMISSION_DENIED",
            "web1": "OK",
        }
        start = exec_pb2.UploadManyStart(hosts=["secret*"], upload=upload_to)
        details = await fails(
            bidi_stream(scout.stub.UploadMany, many(start, b"x"), metadata=META, timeout=30),
            grpc.StatusCode.NOT_FOUND,
        )
        assert "secret-db" not in details


@pytest.mark.slow
async def test_hundred_mib_round_trip_in_bounded_server_memory(
    openssh: OpenSSHServer, remote_dir: Path, tmp_path: Path
) -> None:
    """100 MiB up and down through a scout-server process: the digests agree, and the
    server's resident memory grows by less than 32 MiB meanwhile (read from /proc)."""
    config_file = tmp_path / "scout.toml"
    config_file.write_text(host_toml("o", openssh.host_config("o")))
    proc, target = start_server(["--config", str(config_file)], tmp_path / "server.log")
    channel = grpc.aio.insecure_channel(target)
    try:
        stub = exec_pb2_grpc.ExecServiceStub(channel)
        path = str(remote_dir / "big.bin")

        async def up(size: int) -> str:
            sent = hashlib.sha256()

            async def messages() -> AsyncIterator[exec_pb2.UploadRequest]:
                yield exec_pb2.UploadRequest(start=exec_pb2.UploadStart(host="o", path=path))
                for _ in range(size // (1 << 20)):
                    chunk = os.urandom(1 << 20)
                    sent.update(chunk)
                    yield exec_pb2.UploadRequest(chunk=chunk)

            answer = await stub.Upload(messages(), timeout=120)
            assert answer.sha256 == sent.hexdigest()
            return sent.hexdigest()

        async def down() -> str:
            got = hashlib.sha256()
            end = None
            request = exec_pb2.DownloadRequest(host="o", path=path)
            async for message in stub.Download(request, timeout=120):
                if message.WhichOneof("event") == "chunk":
                    got.update(message.chunk)
                else:
                    end = message.end
            assert end is not None and end.sha256 == got.hexdigest()
            return got.hexdigest()

        await up(4 << 20)  # warm: every code path loaded, the connection open
        await down()
        baseline = rss(proc.pid)
        peak = baseline
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss(proc.pid))
                await asyncio.sleep(0.02)

        watcher = asyncio.ensure_future(watch())
        try:
            sent = await up(100 << 20)
            received = await down()
        finally:
            done.set()
            await watcher
        assert sent == received == hashlib.sha256((remote_dir / "big.bin").read_bytes()).hexdigest()
        assert peak - baseline < 32 << 20, f"RSS grew {(peak - baseline) >> 20} MiB"
    finally:
        await channel.close()
        proc.terminate()
        proc.wait(timeout=20)


def rss(pid: int) -> int:
    """A process's resident set size in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_download_of_a_file_that_changes_is_aborted(
    openssh_scout: Scout, remote_dir: Path
) -> None:
    target = owned(remote_dir / "growing.log", os.urandom(8 * 1024 * 1024))
    call = openssh_scout.stub.Download(exec_pb2.DownloadRequest(host="o", path=str(target)))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for message in call:
            assert message.WhichOneof("event") == "chunk", "the end came: nothing noticed"
            if target.stat().st_size == 8 * 1024 * 1024:
                with target.open("ab") as log:  # a writer appends while scout reads
                    log.write(b"one more line\n")
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "changed while it was read" in (info.value.details() or "")


async def test_idempotency_key_answers_a_retry_without_writing_again(
    openssh_scout: Scout, remote_dir: Path
) -> None:
    path = str(remote_dir / "once.txt")
    first = await upload(openssh_scout, b"v1", path=path, idempotency_key="deploy-42")
    owned(Path(path), b"changed by someone else")
    again = await upload(openssh_scout, b"v1", path=path, idempotency_key="deploy-42")
    assert again == first
    assert Path(path).read_bytes() == b"changed by someone else"  # noqa: ASYNC240 - not again
    await upload(openssh_scout, b"v2", path=path, idempotency_key="deploy-43")
    assert Path(path).read_bytes() == b"v2"  # noqa: ASYNC240


async def test_in_process_host_serves_sftp_and_counts_its_sessions(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    """The demo's host (server.localshell) serves files too, through OpenSSH's sftp-server."""
    async with running_scout(config({"local": shell_server.host_config("local")})) as scout:
        target = tmp_path / "demo.txt"
        await upload(scout, b"from the demo", host="local", path=str(target))
        got, end = await download(scout, host="local", path=str(target))
    assert got == target.read_bytes() == b"from the demo"
    assert end.size == 13
    assert shell_server.stats.sftp_sessions == 2
    assert shell_server.stats.sftp_open == 0


async def test_metrics_name_file_bytes_and_transfers(
    openssh_scout: Scout, remote_dir: Path
) -> None:
    await upload(openssh_scout, b"12345", path=str(remote_dir / "m.txt"))
    text = exposition(openssh_scout.app.counted())().decode()
    assert 'scout_file_bytes_total{direction="upload"} 5.0' in text
    assert 'scout_file_transfers_total{code="OK",direction="upload"} 1.0' in text


FILES_CONFIG = """
[files]
max_file_bytes = 1048576
spool_dir = "spool"

[[callers]]
name = "deployer"
token_sha256 = "{token}"
hosts = ["web*"]
files = "write"
paths = ["/srv/app/**"]

[[callers]]
name = "runner"
token_sha256 = "{other}"
hosts = ["*"]
"""


def test_files_config_and_its_mistakes(tmp_path: Path) -> None:
    text = FILES_CONFIG.replace("{token}", "a" * 64).replace("{other}", "b" * 64)
    cfg = parse(tomllib.loads(text), tmp_path)
    assert cfg.files.max_file_bytes == 1048576
    assert cfg.files.spool_dir == tmp_path / "spool"
    deployer, runner = cfg.callers
    assert (deployer.files, deployer.paths) == ("write", ("/srv/app/**",))
    assert (runner.files, runner.paths) == ("none", ())  # files default to none
    assert deployer.may_files("write") and not deployer.may_files("read")
    assert not runner.may_files("read")
    for wrong, says in (
        ('files = "all"', "callers[deployer].files"),
        ('paths = ["srv/*"]', "must be absolute"),
        ('paths = ["/srv/../etc/**"]', "must not contain"),
    ):
        bad = (
            text.replace('files = "write"', wrong)
            if "files" in wrong
            else text.replace('paths = ["/srv/app/**"]', wrong)
        )
        with pytest.raises(ConfigError, match=re.escape(says)):
            parse(tomllib.loads(bad), tmp_path)
    with pytest.raises(ConfigError, match="paths: required"):
        parse(tomllib.loads(text.replace('paths = ["/srv/app/**"]', "")), tmp_path)


def test_path_normalising_and_globs() -> None:
    assert normalise("/srv/app/../../etc/passwd") == "/etc/passwd"
    assert normalise("//srv//app/./x/") == "/srv/app/x"
    for bad in ("srv/app", "/srv/\x00", "/srv/\x1b[31m", "/srv/\x7f", "", "/" + "a" * 5000):
        with pytest.raises(PathError):
            normalise(bad)
    patterns = ("/srv/app/**", "/etc/app/*.conf")
    assert allowed("/srv/app", patterns) and allowed("/srv/app/a/b/c", patterns)
    assert allowed("/etc/app/x.conf", patterns)
    for outside in ("/srv/apple", "/srv", "/etc/app/sub/x.conf", "/etc/app/x.confx", "/"):
        assert not allowed(outside, patterns), outside


class _Answering:
    """An SFTP file whose server answers a read with at most `most` bytes (a server may;
    OpenSSH's sftp-server never does on a regular file, so no real one shows this)."""

    def __init__(self, data: bytes, most: int) -> None:
        self.data, self.most, self.reads = data, most, 0

    async def read(self, n: int, at: int) -> bytes:
        self.reads += 1
        await asyncio.sleep(0)
        return self.data[at : at + min(n, self.most)]


async def test_download_reads_ahead_in_order_through_short_answers() -> None:
    data = os.urandom(100_000)
    for most in (len(data), 4096, 1000):
        file = _Answering(data, most)
        got = [p async for p in _read_ahead(file, 10, len(data), 8192, 4)]  # type: ignore[arg-type]
        assert b"".join(got) == data[10:]
        assert all(len(p) == 8192 for p in got[:-1])  # each piece whole, in order
        pieces = [len(p) for p in got]
        assert file.reads == sum(-(-n // most) for n in pieces)  # the rest of each, once
    shrunk = _Answering(data[:50_000], 4096)  # the file got shorter while it was read
    got = [p async for p in _read_ahead(shrunk, 0, len(data), 8192, 4)]  # type: ignore[arg-type]
    assert b"".join(got) == data[:50_000]


async def test_upload_many_spools_within_bounds_and_leaves_nothing(
    openssh: OpenSSHServer, remote_dir: Path, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    cfg = config(
        {"a": openssh.host_config("a"), "b": openssh.host_config("b")},
        files={"max_file_bytes": 100_000, "spool_dir": spool},
    )
    async with running_scout(cfg) as scout:
        path = str(remote_dir / "spooled")

        async def call(data: bytes, **upload: Any) -> list[exec_pb2.UploadManyResponse]:
            start = exec_pb2.UploadManyStart(
                hosts=["a", "b"], upload=exec_pb2.UploadStart(path=path, **upload)
            )
            replies: list[exec_pb2.UploadManyResponse] = await bidi_stream(
                scout.stub.UploadMany, many(start, data), timeout=30
            )
            return replies

        await fails(call(b"x" * 100_001), grpc.StatusCode.INVALID_ARGUMENT, "max_file_bytes")
        await fails(call(b"x", sha256="0" * 64), grpc.StatusCode.DATA_LOSS, "no host")
        await fails(call(b"xy", size=3), grpc.StatusCode.DATA_LOSS)
        start = exec_pb2.UploadManyStart(hosts=["a"], upload=exec_pb2.UploadStart(path="rel"))
        await fails(
            bidi_stream(scout.stub.UploadMany, many(start, b"x"), timeout=30),
            grpc.StatusCode.INVALID_ARGUMENT,
            "absolute",
        )
        assert not Path(path).exists()  # noqa: ASYNC240
        done = await call(b"z" * 100_000)
        assert sorted(m.host for m in done if m.WhichOneof("event") == "result") == ["a", "b"]
    assert Path(path).read_bytes() == b"z" * 100_000  # noqa: ASYNC240
    assert list(spool.iterdir()) == []  # anonymous files: nothing ever named on disk
    assert leftovers(remote_dir) == []


async def test_an_unwritable_spool_is_unavailable_and_writes_no_host(
    openssh: OpenSSHServer, remote_dir: Path, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the spool directory should be")
    cfg = config({"a": openssh.host_config("a")}, files={"spool_dir": blocked / "spool"})
    async with running_scout(cfg) as scout:
        start = exec_pb2.UploadManyStart(
            hosts=["a"], upload=exec_pb2.UploadStart(path=str(remote_dir / "f"))
        )
        details = await fails(
            bidi_stream(scout.stub.UploadMany, many(start, b"x"), timeout=30),
            grpc.StatusCode.UNAVAILABLE,
            "spool_dir",
        )
    assert str(blocked) not in details  # where scout keeps its files is not the caller's
    assert not (remote_dir / "f").exists()


async def test_shutdown_stops_an_upload_and_removes_its_temporary_file(
    openssh: OpenSSHServer, remote_dir: Path
) -> None:
    target = owned(remote_dir / "kept.txt", b"before")
    async with running_scout(config({"o": openssh.host_config("o")})) as scout:
        half = asyncio.Event()

        async def messages() -> AsyncIterator[exec_pb2.UploadRequest]:
            yield exec_pb2.UploadRequest(start=exec_pb2.UploadStart(host="o", path=str(target)))
            for i in range(64):
                yield exec_pb2.UploadRequest(chunk=os.urandom(64 * 1024))
                if i == 8:
                    half.set()
                    await asyncio.sleep(30)  # the caller stalls; the server shuts down

        call = scout.stub.Upload(messages(), timeout=60)
        await half.wait()
        for _ in range(200):
            if growing(remote_dir):
                break
            await asyncio.sleep(0.01)
        assert leftovers(remote_dir)
        await scout.app.stop(grace=0.2)
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        assert scout.app.pool.reserved == 0
    assert target.read_bytes() == b"before"
    assert leftovers(remote_dir) == []


async def test_host_connection_cut_mid_upload_is_unavailable_and_cleaned_up(
    openssh: OpenSSHServer, remote_dir: Path
) -> None:
    """The SSH connection to the host dies at a real TCP cut in the middle of an upload:
    UNAVAILABLE (nothing was put in place, a retry is safe), the target unchanged, and
    the temporary file removed over a fresh connection."""
    target = owned(remote_dir / "app.conf", b"old")
    proxy = await CutProxy(("127.0.0.1", openssh.port), cut_after=1 << 40).start()
    host = dataclasses.replace(openssh.host_config("o"), address="127.0.0.1", port=proxy.port)
    cut_known = remote_dir.parent / f"{remote_dir.name}.known_hosts"
    assert host.known_hosts is not None
    trust_at(host.known_hosts, proxy.port, cut_known)
    host = dataclasses.replace(host, known_hosts=cut_known)
    try:
        async with running_scout(config({"o": host})) as scout:
            await scout.execute(host="o", command="true")  # the connection is open
            proxy.cut_after = proxy.upstream_bytes + 4 * 1024 * 1024
            data = os.urandom(16 * 1024 * 1024)
            await fails(
                upload(scout, data, path=str(target)), grpc.StatusCode.UNAVAILABLE, "nothing"
            )
            assert proxy.cut.is_set()
            for _ in range(200):
                if not leftovers(remote_dir):
                    break
                await asyncio.sleep(0.05)
            assert target.read_bytes() == b"old"
            assert leftovers(remote_dir) == []
            await upload(scout, b"retried", path=str(target))  # a fresh connection works
            assert target.read_bytes() == b"retried"
    finally:
        await proxy.close()
        cut_known.unlink(missing_ok=True)
