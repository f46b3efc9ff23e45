"""Keyed commands under `scout-server --workers 2` (server.forwarding): an attach or a
retry reaches the command whichever worker the kernel hands the connection to.

A real supervisor with two workers and the SQLite store; the host is the in-process
scripted SSH server, whose count of exec requests is the far side's word on how many
times a command ran. Which worker answered a call is read from its access line (a call
forwarded to the owner leaves a second line there, marked `forwarded`).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from scout.v1 import exec_pb2
from server.callers import hash_token
from testkit.processes import eventually, stop
from testkit.scripted import ScriptedServer

from .serverproc import host_toml, start_server
from .test_workers import Served, alive, channels, stub_of

TOKEN = "durable-workers-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
CALLER = f'[[callers]]\nname = "ci"\ntoken_sha256 = "{hash_token(TOKEN)}"\nhosts = ["*"]\n'
CALLER += "stream = true\n"
TRIES = 40  # new connections at most, until each worker has answered a sibling's attach


def gated(name: str, gate: Path) -> str:
    """A command that says it started, waits for the gate file, then says it is done."""
    return f"echo {name} started; while [ ! -e {gate} ]; do sleep 0.05; done; echo {name} done"


@pytest.fixture
def workers(tmp_path: Path, shell_server: ScriptedServer) -> Iterator[Served]:
    """scout-server --workers 2 with the SQLite store; host "h" is shell_server."""
    config = tmp_path / "scout.toml"
    store = tmp_path / "durable.sqlite3"
    config.write_text(
        CALLER
        + host_toml("h", shell_server.host_config("h"))
        + f'[durable]\nstore = "sqlite:{store}"\n'
    )
    log = tmp_path / "scout.log"
    args = ["--config", str(config), "--workers", "2", "--log-format", "json"]
    proc, target = start_server(args, log)
    served = Served(proc, log, int(target.rsplit(":", 1)[1]), metadata=AUTH)
    try:
        yield served
    finally:
        stop(proc, timeout=30)
        for pid in served.every_pid():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def answered_by(served: Served, request_id: str) -> int | None:
    """The worker the caller's connection reached (not the owner a call was forwarded to)."""
    for line in served.lines():
        logged = str(line.get("request_id", "")).partition(":")[2]
        if logged == request_id and "status" in line and "forwarded" not in line:
            return int(line["worker"])
    return None


def forwarded_to(served: Served, request_id: str) -> int | None:
    """The worker that answered a forwarded call, from its own access line."""
    for line in served.lines():
        logged = str(line.get("request_id", "")).partition(":")[2]
        if logged == request_id and "status" in line and "forwarded" in line:
            return int(line["worker"])
    return None


def keyed(
    channel: grpc.aio.Channel, key: str, command: str, request_id: str = ""
) -> grpc.aio.UnaryUnaryCall[Any, exec_pb2.ExecuteResponse]:
    request = exec_pb2.ExecuteRequest(host="h", command=command, idempotency_key=key)
    metadata = AUTH + ((("x-request-id", request_id),) if request_id else ())
    return stub_of(channel).Execute(request, metadata=metadata, timeout=60)


async def first_output(
    channel: grpc.aio.Channel, key: str, request_id: str
) -> exec_pb2.StreamResponse:
    """Attach to key from offset 0: its first output message (then leave)."""
    attach = exec_pb2.Attach(idempotency_key=key, host="h")
    call = stub_of(channel).Stream(
        iter([exec_pb2.StreamRequest(attach=attach)]),
        metadata=(*AUTH, ("x-request-id", request_id)),
        timeout=30,
    )
    headers = dict(await call.initial_metadata() or ())
    assert headers.get("x-scout-started") == "true"
    message = await call.read()
    call.cancel()
    assert isinstance(message, exec_pb2.StreamResponse)
    return message


def trailers(metadata: Any) -> dict[str, str]:
    return {k: v for k, v in metadata or ()}


async def test_attach_and_a_keyed_retry_reach_the_command_whichever_worker_answers(
    workers: Served, shell_server: ScriptedServer, tmp_path: Path
) -> None:
    served = workers
    on = await channels(served, {0, 1})
    gate = tmp_path / "gate"
    keys = {w: f"cmd-{w}-{uuid.uuid4().hex[:8]}" for w in on}
    before = shell_server.stats.exec_requests
    # One keyed command owned by each worker: its Execute waits there.
    runs = {w: keyed(on[w], keys[w], gated(f"w{w}", gate)) for w in on}
    assert await eventually(lambda: shell_server.stats.exec_requests == before + 2, 10)

    # New connections (the kernel picks their worker) until each worker has answered an
    # attach for the command the other one runs.
    crossed: set[int] = set()
    tries = 0
    while crossed != {0, 1} and tries < TRIES:
        tries += 1
        channel = grpc.aio.insecure_channel(
            served.target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for owner, key in keys.items():
            request_id = f"attach-{uuid.uuid4().hex}"
            message = await first_output(channel, key, request_id)
            assert (message.stdout, message.offset) == (f"w{owner} started\n".encode(), 0)
            assert await eventually(lambda: answered_by(served, request_id) is not None)  # noqa: B023
            worker = answered_by(served, request_id)
            if worker != owner:
                assert worker is not None
                crossed.add(worker)
                assert await eventually(lambda: forwarded_to(served, request_id) == owner)  # noqa: B023
        await channel.close()
    assert crossed == {0, 1}, f"after {tries} connections, only workers {crossed} crossed"

    # A retry of each key on the other worker, while the command runs: it waits there
    # (forwarded to the owner) and gets the one outcome.
    retry_ids = {w: f"retry-{w}-{uuid.uuid4().hex}" for w in on}
    retries = {w: keyed(on[1 - w], keys[w], gated(f"w{w}", gate), retry_ids[w]) for w in on}
    await asyncio.sleep(0.5)
    assert not any(r.done() for r in retries.values())  # waiting for the command's end
    gate.touch()
    for w in on:
        first, again = await runs[w], await retries[w]
        assert first.exit_code == 0 and first.stdout == f"w{w} started\nw{w} done\n".encode()
        assert again == first
        assert trailers(await runs[w].trailing_metadata()).get("x-scout-replayed") is None
        assert trailers(await retries[w].trailing_metadata()).get("x-scout-replayed") == "true"
    assert shell_server.stats.exec_requests == before + 2  # each command ran once
    for w in on:  # each retry was answered by the owner, through the other worker
        assert (answered_by(served, retry_ids[w]), forwarded_to(served, retry_ids[w])) == (1 - w, w)
    print(f"both workers answered a sibling's attach after {tries} connections")
    # Finished: a retry anywhere is the record's outcome again.
    for w in on:
        late = keyed(on[1 - w], keys[w], gated(f"w{w}", gate))
        assert (await late).stdout == f"w{w} started\nw{w} done\n".encode()
        assert trailers(await late.trailing_metadata()).get("x-scout-replayed") == "true"
    assert shell_server.stats.exec_requests == before + 2
    assert not re.search(r"[0-9a-f]{64}", served.text())  # the workers' secret in no line
    for channel in on.values():
        await channel.close()


async def test_a_killed_workers_key_is_outcome_unknown_at_the_other_and_never_runs_again(
    workers: Served, shell_server: ScriptedServer, tmp_path: Path
) -> None:
    served = workers
    on = await channels(served, {0, 1})
    key = f"killed-{uuid.uuid4().hex[:8]}"
    before = shell_server.stats.exec_requests
    gate = tmp_path / "gate"
    running = keyed(on[0], key, gated("w0", gate))
    assert await eventually(lambda: shell_server.stats.exec_requests == before + 1, 10)
    os.kill(served.pids()[0], signal.SIGKILL)
    with pytest.raises(grpc.aio.AioRpcError):
        await running
    # Worker 1 finds worker 0's record; worker 0 is gone (no socket, then no heartbeat).
    with pytest.raises(grpc.aio.AioRpcError) as retried:
        await keyed(on[1], key, gated("w0", gate))
    error = retried.value
    assert error.code() == grpc.StatusCode.ABORTED, error.details()
    assert "outcome is unknown" in (error.details() or "")
    assert trailers(error.trailing_metadata()).get("x-scout-started") == "true"
    assert shell_server.stats.exec_requests == before + 1  # never run again
    gate.touch()  # whatever is left of the command ends
    for channel in on.values():
        await channel.close()


async def test_an_attach_through_the_other_worker_carries_stdin_and_signals(
    workers: Served, shell_server: ScriptedServer
) -> None:
    served = workers
    on = await channels(served, {0, 1})
    key = f"stdin-{uuid.uuid4().hex[:8]}"
    start = exec_pb2.ExecuteRequest(
        host="h", command="echo ready; read line; echo got $line; sleep 30", idempotency_key=key
    )
    starter = stub_of(on[0]).Stream(metadata=AUTH, timeout=30)
    await starter.write(exec_pb2.StreamRequest(start=start))
    assert (await starter.read()).stdout == b"ready\n"
    request_id = f"attach-{uuid.uuid4().hex}"
    attached = stub_of(on[1]).Stream(metadata=(*AUTH, ("x-request-id", request_id)), timeout=30)
    await attached.write(
        exec_pb2.StreamRequest(attach=exec_pb2.Attach(idempotency_key=key, host="h"))
    )
    replayed = await attached.read()
    assert (replayed.stdout, replayed.offset) == (b"ready\n", 0)
    await attached.write(exec_pb2.StreamRequest(stdin=b"hello\n"))  # through worker 1 to 0
    live = await attached.read()
    assert (live.stdout, live.offset) == (b"got hello\n", 6)
    assert (await starter.read()).stdout == b"got hello\n"  # the starter sees it too
    await attached.write(exec_pb2.StreamRequest(signal="TERM"))
    ends = [await attached.read(), await starter.read()]
    assert [m.exit.signal for m in ends] == ["TERM", "TERM"]
    assert await attached.code() == grpc.StatusCode.OK
    assert await starter.code() == grpc.StatusCode.OK
    assert (answered_by(served, request_id), forwarded_to(served, request_id)) == (1, 0)
    for channel in on.values():
        await channel.close()
