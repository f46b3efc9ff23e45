"""server.forwarding in one process: two scout servers as two workers of one supervisor
(one owner group, one socket folder, one secret, one SQLite store), called directly.

What `--workers 2` does with real processes is tests/test_durable_workers.py; here each
"worker" is chosen by calling its own port, so every path is taken every time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.app import App, start
from server.callers import hash_token
from server.config import CallerConfig, Config
from server.durablestore import Record, open_store
from server.forwarding import CALLER_KEY, SECRET_KEY, Forwarder, ForwardingPlan
from server.idempotency import fingerprint
from testkit.processes import eventually
from testkit.scripted import ScriptedServer
from tests.scoutd import config

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
CALLERS = (
    CallerConfig(name="alice", token_sha256=hash_token(ALICE), hosts=("*",), stream=True),
    CallerConfig(name="bob", token_sha256=hash_token(BOB), hosts=("*",), stream=True),
)


def auth(token: str = ALICE) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclasses.dataclass
class Worker:
    app: App
    plan: ForwardingPlan
    stub: exec_pb2_grpc.ExecServiceStub

    @property
    def forwarder(self) -> Forwarder:
        forwarder = self.app.service.durable.forwarder
        assert isinstance(forwarder, Forwarder)
        return forwarder


@pytest.fixture
def folder() -> Iterator[Path]:
    """The supervisor's private folder: short, as a Unix socket path must be."""
    with tempfile.TemporaryDirectory(prefix="scout-fwd-") as path:
        yield Path(path)


@pytest.fixture
def plans(folder: Path) -> list[ForwardingPlan]:
    group, secret = uuid.uuid4().hex, secrets.token_hex(32)
    return [ForwardingPlan(group, uuid.uuid4().hex, folder, secret) for _ in range(2)]


def keyed_config(server: ScriptedServer, tmp_path: Path) -> Config:
    base = config(
        {"h": server.host_config("h")},
        callers=CALLERS,
        durable={"store": f"sqlite:{tmp_path / 'durable.sqlite3'}"},
    )
    return dataclasses.replace(base, allow_plaintext=True)


@pytest.fixture
async def workers(
    shell_server: ScriptedServer, tmp_path: Path, plans: list[ForwardingPlan]
) -> AsyncIterator[list[Worker]]:
    """Two servers, as the two workers of one supervisor."""
    settings = keyed_config(shell_server, tmp_path)
    running: list[Worker] = []
    channels = []
    try:
        for plan in plans:
            app = await start(settings, "127.0.0.1:0", forwarding=plan)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
            channels.append(channel)
            running.append(Worker(app, plan, exec_pb2_grpc.ExecServiceStub(channel)))
        yield running
    finally:
        for channel in channels:
            await channel.close()
        for worker in running:
            await worker.app.stop(grace=1.0)


def gated(gate: Path) -> str:
    return f"echo started; while [ ! -e {gate} ]; do sleep 0.02; done; echo done"


def request(key: str, command: str) -> exec_pb2.ExecuteRequest:
    return exec_pb2.ExecuteRequest(host="h", command=command, idempotency_key=key)


def trailers(metadata: Any) -> dict[str, str]:
    return {k: v for k, v in metadata or ()}


async def test_a_retry_and_an_attach_at_the_sibling_are_answered_by_the_owner(
    workers: list[Worker], shell_server: ScriptedServer, tmp_path: Path
) -> None:
    owner, sibling = workers
    gate = tmp_path / "gate"
    running = owner.stub.Execute(request("k", gated(gate)), metadata=auth(), timeout=30)
    assert await eventually(lambda: shell_server.stats.exec_requests == 1)
    assert owner.plan.socket(owner.plan.id).is_socket()

    attach = exec_pb2.Attach(idempotency_key="k", host="h")
    attached = sibling.stub.Stream(
        iter([exec_pb2.StreamRequest(attach=attach)]), metadata=auth(), timeout=30
    )
    assert trailers(await attached.initial_metadata()).get("x-scout-started") == "true"
    first = await attached.read()
    assert isinstance(first, exec_pb2.StreamResponse)
    assert (first.stdout, first.offset) == (b"started\n", 0)

    retry = sibling.stub.Execute(request("k", gated(gate)), metadata=auth(), timeout=30)
    # bob's key "k" is not alice's: it runs on its own (the caller travels by name)
    bobs = sibling.stub.Execute(request("k", "echo bob"), metadata=auth(BOB), timeout=30)
    assert (await bobs).stdout == b"bob\n"
    assert shell_server.stats.exec_requests == 2
    await asyncio.sleep(0.3)
    assert not retry.done()
    gate.touch()
    answer = await running
    assert answer.stdout == b"started\ndone\n"
    assert await retry == answer
    assert trailers(await retry.trailing_metadata()).get("x-scout-replayed") == "true"
    rest = []
    while (message := await attached.read()) is not grpc.aio.EOF:
        rest.append(message)
    assert b"".join(m.stdout for m in rest) == b"done\n"
    assert rest[-1].exit.exit_code == 0
    assert sibling.forwarder.forwarded == 2  # the retry and the attach
    assert shell_server.stats.exec_requests == 2


async def test_the_socket_serves_only_calls_with_the_secret(
    workers: list[Worker], shell_server: ScriptedServer, plans: list[ForwardingPlan]
) -> None:
    plan = plans[0]
    path = plan.socket(plan.id)
    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        stub = exec_pb2_grpc.ExecServiceStub(channel)
        for metadata in (
            auth(),  # a caller's own token is not enough here
            ((SECRET_KEY, "0" * 64), (CALLER_KEY, "alice")),
            ((SECRET_KEY, plan.secret), (CALLER_KEY, "mallory")),  # no such caller
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Execute(
                    exec_pb2.ExecuteRequest(host="h", command="echo no"),
                    metadata=metadata,
                    timeout=10,
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert shell_server.stats.exec_requests == 0
        ok = await stub.Execute(
            exec_pb2.ExecuteRequest(host="h", command="echo yes"),
            metadata=((SECRET_KEY, plan.secret), (CALLER_KEY, "alice")),
            timeout=10,
        )
        assert ok.stdout == b"yes\n"
    assert path.stat().st_mode & 0o077 == 0 or path.parent.stat().st_mode & 0o077 == 0


async def test_an_owner_that_does_not_answer_is_judged_by_its_heartbeat(
    workers: list[Worker], shell_server: ScriptedServer, tmp_path: Path, folder: Path
) -> None:
    """A record of a sibling that died: its socket is still there but refuses; the retry
    watches the store until the owner's heartbeat is gone, then ABORTED, nothing runs."""
    sibling = workers[1]
    dead = f"{sibling.plan.group}/{uuid.uuid4().hex}"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(folder / f"{dead.partition('/')[2]}.sock"))  # bound, never listening
    store = open_store(keyed_config(shell_server, tmp_path).durable)
    try:
        asked = request("dead", "echo never")
        await store.beat(dead)
        record = Record("alice", "dead", fingerprint("h", asked), dead, time.time())
        assert await store.claim(record) is None
        assert sibling.forwarder.reaches(dead)
        retry = sibling.stub.Execute(asked, metadata=auth(), timeout=30)
        await asyncio.sleep(0.5)
        assert not retry.done()  # refused there: now watching the owner's heartbeat
        await store.gone(dead)
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await retry
        assert lost.value.code() == grpc.StatusCode.ABORTED
        assert "outcome is unknown" in (lost.value.details() or "")
        assert trailers(lost.value.trailing_metadata()).get("x-scout-started") == "true"
        assert sibling.forwarder.forwarded == 0
        assert shell_server.stats.exec_requests == 0
    finally:
        stale.close()
        await store.close()


def test_only_another_worker_of_the_same_group_with_a_socket_is_reached(
    plans: list[ForwardingPlan],
) -> None:
    mine, other = plans
    forwarder = Forwarder(mine)
    other.socket(other.id).touch()  # a plain file is no socket
    assert not forwarder.reaches(f"{other.group}/{other.id}")
    other.socket(other.id).unlink()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(other.socket(other.id)))
    try:
        assert forwarder.reaches(f"{other.group}/{other.id}")
        assert not forwarder.reaches(f"{uuid.uuid4().hex}/{other.id}")  # another supervisor's
        assert not forwarder.reaches(f"{mine.group}/{mine.id}")  # itself
        assert not forwarder.reaches(f"{mine.group}/")
        assert mine.secret not in repr(mine)
    finally:
        listener.close()
