""" "May have run": only the server's own x-scout-started: false mark says nothing ran.

Against the scripted fake (tests/fakeexec.py): in this process, and in a child
process that the tests kill mid-call, as a crashed server or a cut connection would.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from client import (
    Aborted,
    Cancelled,
    Client,
    InvalidRequest,
    Overloaded,
    ScoutError,
    Timeout,
    Unavailable,
)
from client.cli import amain

from .fakeexec import FakeExec, serving

pytestmark = pytest.mark.timeout(20)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with serving(FakeExec()) as target, Client(target) as c:
        yield c


@pytest.mark.parametrize("code", ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED", "NOT_FOUND"])
async def test_execute_unmarked_status_may_have_run_marked_did_not(
    client: Client, code: str
) -> None:
    with pytest.raises(ScoutError) as unmarked:
        await client.execute("web1", f"fail {code} from a proxy")
    with pytest.raises(ScoutError) as marked:
        await client.execute("web1", f"refuse {code} decided by scout")
    assert (unmarked.value.code, unmarked.value.may_have_run) == (code, True)
    assert (marked.value.code, marked.value.may_have_run) == (code, False)


@pytest.mark.parametrize(
    ("command", "cls", "may_have_run"),
    [
        ("refuse RESOURCE_EXHAUSTED no slot", Overloaded, False),
        ("fail RESOURCE_EXHAUSTED grpc's own limit", Overloaded, True),
        ("fail UNAVAILABLE reset by a proxy", Unavailable, True),
        ("partial-then-abort", Aborted, True),
        ("output-then-refuse", Unavailable, True),  # output arrived: it had started
    ],
)
async def test_stream_statuses(
    client: Client, command: str, cls: type[ScoutError], may_have_run: bool
) -> None:
    with pytest.raises(cls) as info:
        async with client.stream("web1", command, close_stdin=True) as call:
            async for _ in call:
                pass
    assert info.value.may_have_run is may_have_run


async def test_our_own_deadline_and_cancel_may_have_run(client: Client) -> None:
    with pytest.raises(Timeout) as deadline:
        await client.execute("web1", "sleep 5", rpc_timeout=0.2)
    assert deadline.value.may_have_run
    async with client.stream("web1", "hang") as call:
        call.cancel()
        with pytest.raises(Cancelled) as cancelled:
            await anext(call)
    assert cancelled.value.may_have_run


async def test_refused_before_sending_did_not_run(client: Client) -> None:
    with pytest.raises(InvalidRequest) as info:
        await client.execute("wéb1", "true")
    assert not info.value.may_have_run


# ---- a server killed mid-call ------------------------------------------------


@asynccontextmanager
async def killable_fake() -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """The fake in a child process: yield it and its target; it is killed on the way out."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakeexec", cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line.startswith(b"port "), line
        yield proc, f"127.0.0.1:{int(line.split()[1])}"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def kill_once_started(proc: asyncio.subprocess.Process) -> None:
    """Wait until the fake has the call (the command "runs"), then kill it outright."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    assert line == b"started web1\n", line
    proc.kill()


async def test_server_killed_mid_execute_may_have_run() -> None:
    async with killable_fake() as (proc, target), Client(target) as client:
        call = asyncio.ensure_future(client.execute("web1", "sleep 30"))
        await kill_once_started(proc)
        with pytest.raises(ScoutError) as info:
            await call
    assert info.value.code == "UNAVAILABLE"
    assert info.value.may_have_run


async def test_server_killed_mid_stream_may_have_run() -> None:
    async with killable_fake() as (proc, target), Client(target) as client:
        with pytest.raises(ScoutError) as info:
            async with client.stream("web1", "hang", close_stdin=True) as call:
                await kill_once_started(proc)
                async for _ in call:
                    pass
    assert info.value.code == "UNAVAILABLE"
    assert info.value.may_have_run


async def test_cli_says_may_have_run_when_the_server_dies() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    async with killable_fake() as (proc, target):
        argv = ["exec", "--target", target, "web1", "--", "hang"]
        cli = asyncio.ensure_future(amain(argv, stdin=None, stdout=out, stderr=err))
        await kill_once_started(proc)
        code = await cli
    assert code == 255
    assert err.getvalue().startswith(b"scout: ")
    assert err.getvalue().endswith(b" (the command may have run)\n")


async def test_cli_says_did_not_run_when_scout_says_so() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    async with serving(FakeExec()) as target:
        argv = ["exec", "--target", target, "web1", "--", "refuse UNAVAILABLE web1 unreachable"]
        code = await amain(argv, stdin=None, stdout=out, stderr=err)
    assert (code, err.getvalue()) == (125, b"scout: web1 unreachable (the command did not run)\n")
