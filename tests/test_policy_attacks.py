"""A restricted caller's attempts that held: each one here is covered nowhere else.

An attacker with a valid token whose policy lists `commands`, `env` and `working_dirs`
tries to run what the policy does not name: look-alike argv, crafted env values, crafted
working_dirs, a crafted request id that scout exports itself, a second `start` in a
Stream, and a Stream kept open across the SIGHUP that removes it. Commands run on the
in-process SSH server (real /bin/sh on this machine); a marker file that any injected
command would have made proves that none ran. (The bypasses that did not hold have their
tests beside their fixes: test_argv.py, test_reload.py; here only the pty refusal's
other two ways in, Stream and ExecuteMany.)
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.app import start
from server.argvpolicy import argv_matches
from server.callers import hash_token
from server.config import CallerConfig
from server.configfile import load
from testkit.scripted import ScriptedServer

from .scoutd import Scout, config, running_scout, started
from .serverproc import host_toml

TOKEN = "attacker-3e9d1c7b5a2f4e60"
BEARER = (("authorization", f"Bearer {TOKEN}"),)


@pytest.mark.parametrize(
    ("pattern", "argv", "allowed"),
    [
        ("systemctl status *", ["\u0455ystemctl", "status", "x"], False),  # Cyrillic dze
        ("systemctl status *", ["systemctl", "status", "x", "--", "y"], False),
        ("systemctl status nginx", ["systemctl", "status", "ngin*"], False),  # `*` sent
        ("systemctl status nginx", ["systemctl", "status", "[n]ginx"], False),  # `[` sent
        ("systemctl status *", ["systemctl", "status", ""], True),  # one (empty) element
        ("uptime", ["uptime", ""], False),  # an empty element is still one more
        ("journalctl ...", ["journalctl"], True),  # `...`: zero further elements too
        ("journalctl -u *", ["journalctl", "-u", "x\nrm -rf /"], True),  # one argument
        # a wildcard matches an option too (the README says so, and how to avoid it)
        ("systemctl status *", ["systemctl", "status", "--host=admin@elsewhere"], True),
        ("systemctl status [a-z]*", ["systemctl", "status", "--host=admin@elsewhere"], False),
        ("systemctl status [a-z]*", ["systemctl", "status", "nginx.service"], True),
    ],
)
def test_look_alike_argv(pattern: str, argv: list[str], allowed: bool) -> None:
    assert argv_matches(pattern, argv) is allowed


def restricted(tmp_path: Path) -> CallerConfig:
    return CallerConfig(
        name="attacker",
        token_sha256=hash_token(TOKEN),
        hosts=("h",),
        commands=("printenv LANG", "pwd", "printenv SCOUT_REQUEST_ID", "cat"),
        env=("LANG",),
        working_dirs=(f"{tmp_path}/*",),
        stream=True,
    )


@pytest.fixture
async def scout(shell_server: ScriptedServer, tmp_path: Path) -> AsyncIterator[Scout]:
    cfg = config({"h": shell_server.host_config("h")}, exec={"export_request_id": True})
    async with running_scout(dataclasses.replace(cfg, callers=(restricted(tmp_path),))) as s:
        yield s


async def run(s: Scout, metadata: Any = BEARER, **fields: Any) -> exec_pb2.ExecuteResponse:
    response: exec_pb2.ExecuteResponse = await s.stub.Execute(
        exec_pb2.ExecuteRequest(host="h", **fields), metadata=metadata, timeout=20
    )
    return response


def injections(marker: Path) -> list[str]:
    """Values that would run `touch marker` if a shell read them as code."""
    return [
        f"x'; touch {marker}; echo '",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"a\ntouch {marker}",
        f"\\'; touch {marker} #",
        f"'\"'\"'; touch {marker}",
    ]


async def test_crafted_env_values_are_values(scout: Scout, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    for value in injections(marker):
        r = await run(scout, argv=["printenv", "LANG"], env={"LANG": value})
        assert (r.exit_code, r.stdout) == (0, f"{value}\n".encode()), value
    assert not marker.exists()


async def test_crafted_working_dirs_are_one_directory(scout: Scout, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    for name in injections(marker):  # inside the glob: allowed, then cannot be entered
        r = await run(scout, argv=["pwd"], working_dir=f"{tmp_path}/{name}")
        assert (r.exit_code, r.stdout) == (125, b""), name  # nothing after `cd` ran
    odd = tmp_path / "it's $(here)"
    odd.mkdir()
    r = await run(scout, argv=["pwd"], working_dir=str(odd))
    assert r.stdout == f"{odd}\n".encode()
    # `~`, `-` (cd's OLDPWD), relative and doubled-slash forms are outside the glob.
    for wd in ("~", "-", "~/x", odd.name, f"/{odd}", f"{tmp_path}"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await run(scout, argv=["pwd"], working_dir=wd)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, wd
        assert started(info.value) == "false"
    assert not marker.exists()


async def test_a_crafted_request_id_never_reaches_the_shell(scout: Scout, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    for supplied in injections(marker):
        metadata = (*BEARER, ("x-request-id", supplied.replace("\n", " ")))
        r = await run(scout, metadata=metadata, argv=["printenv", "SCOUT_REQUEST_ID"])
        exported = r.stdout.decode().strip()
        assert exported and supplied not in exported, exported  # refused: scout's own id
    metadata = (*BEARER, ("x-request-id", "job-7.a:b"))
    r = await run(scout, metadata=metadata, argv=["printenv", "SCOUT_REQUEST_ID"])
    assert r.stdout == b"attacker:job-7.a:b\n"
    assert not marker.exists()


async def test_a_second_start_in_a_stream_is_refused(scout: Scout, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    echoed = asyncio.Event()

    async def messages() -> AsyncIterator[exec_pb2.StreamRequest]:
        yield exec_pb2.StreamRequest(start=exec_pb2.ExecuteRequest(host="h", argv=["cat"]))
        yield exec_pb2.StreamRequest(stdin=b"up\n")
        await echoed.wait()  # cat has started: it echoed its first line
        yield exec_pb2.StreamRequest(
            start=exec_pb2.ExecuteRequest(host="h", command=f"touch {marker}")
        )

    call = scout.stub.Stream(messages(), metadata=BEARER, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for message in call:
            if message.stdout:
                echoed.set()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`start` may only be the first message" in (info.value.details() or "")
    assert started(info.value) == "true"  # cat had started, and has been stopped
    assert not marker.exists()


async def test_a_stream_in_flight_outlives_the_reload_that_removes_its_caller(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    # By design ("its calls in flight finish"): the Stream's stdin still reaches the
    # command it started, while every new call of the caller is refused.
    path = tmp_path / "scout.toml"
    caller = (
        f"[[callers]]\nname = 'attacker'\ntoken_sha256 = '{hash_token(TOKEN)}'\n"
        "hosts = ['h']\ncommands = ['cat']\nstream = true\n"
    )
    hosts = host_toml("h", shell_server.host_config("h"))
    path.write_text(caller + hosts)
    app = await start(load(path), "127.0.0.1:0", lambda: load(path))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            s = Scout(app, "", channel, exec_pb2_grpc.ExecServiceStub(channel))
            call = s.stub.Stream(metadata=BEARER, timeout=20)
            await call.write(
                exec_pb2.StreamRequest(start=exec_pb2.ExecuteRequest(host="h", argv=["cat"]))
            )
            await call.write(exec_pb2.StreamRequest(stdin=b"before\n"))
            assert (await call.read()).stdout == b"before\n"
            other = f"[[callers]]\nname = 'other'\ntoken_sha256 = '{hash_token('x')}'\n"
            path.write_text(other + hosts)  # attacker removed (and the server still closed)
            await app.reload()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await run(s, argv=["cat"], stdin=b"new call\n")
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await call.write(exec_pb2.StreamRequest(stdin=b"after\n"))
            assert (await call.read()).stdout == b"after\n"
            await call.write(exec_pb2.StreamRequest(close_stdin=True))
            assert (await call.read()).exit.exit_code == 0
    finally:
        await app.stop(grace=1.0)


async def test_neither_stream_nor_a_fan_out_gives_a_restricted_caller_a_pty(
    scout: Scout, tmp_path: Path
) -> None:
    start = exec_pb2.ExecuteRequest(host="h", argv=["cat"], pty=True)
    stdin = exec_pb2.StreamRequest(stdin=b"!sh\n")
    call = scout.stub.Stream(
        _messages(exec_pb2.StreamRequest(start=start), stdin), metadata=BEARER, timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not ask for a pty" in (info.value.details() or "")
    request = exec_pb2.ExecuteManyRequest(
        hosts=["h"], request=exec_pb2.ExecuteRequest(argv=["cat"], pty=True, stdin=b"!sh\n")
    )
    (message,) = [m async for m in scout.stub.ExecuteMany(request, metadata=BEARER, timeout=10)]
    assert message.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "may not ask for a pty" in message.error.message and not message.started


async def _messages(*messages: exec_pb2.StreamRequest) -> AsyncIterator[exec_pb2.StreamRequest]:
    for message in messages:
        yield message
