"""Hostile input, as a seeded and bounded property test: every field, every Stream shape, raw bytes.

Each example is a batch of calls to one scout server on the in-process SSH server. Every
call must end with OK or a status from the README's table (never UNKNOWN or INTERNAL), and
after each batch the server must still run a well-formed command. Commands stay harmless:
the fuzzed text only ever reaches the remote shell quoted, as an argument of printf.

The statuses are checked on both sides. A hostile Stream caller keeps writing after the
server has ended the call; grpc's Python client then reports its own INTERNAL ("Internal
error from Core") in place of the server's status. So the server's own count of the
statuses it sent (`rpcs.finished`) is checked too, and must hold one table status per call.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scout.v1 import exec_pb2
from server.keyfiles import ShellKeys
from testkit.scripted import start_scripted

from .scoutd import config, running_scout

CLIENT_WRITE_RACE = "Internal error from Core"
TABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

texts = st.text(max_size=64) | st.sampled_from(["", "\0", "a\nb", "'" * 200, "é" * 10])
commands = st.one_of(
    st.sampled_from(["true", "exit 3", "cat", "echo out; echo err >&2", "", "  ", "\0"]),
    texts.map(lambda t: "printf %s " + shlex.quote(t)),
)
durations = st.builds(
    lambda s, n: {"seconds": s, "nanos": n},
    st.integers(-5, 5),
    st.integers(-2_000_000_000, 2_000_000_000) | st.sampled_from([0, 500_000_000]),
)
requests = st.builds(
    lambda host, command, stdin, env, timeout, cap, text, cwd, pty, size: exec_pb2.ExecuteRequest(
        host=host,
        command=command,
        stdin=stdin,
        env=env,
        timeout=timeout,
        max_output_bytes=cap,
        text=text,
        working_dir=cwd,
        pty=pty,
        terminal_size=size,
    ),
    st.sampled_from(["h", "h", "nope", "", "h\0", "H" * 300]) | texts,
    commands,
    st.binary(max_size=256),
    st.dictionaries(texts, texts, max_size=3),
    st.none() | durations,
    st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 10]),
    st.booleans(),
    st.sampled_from(["", "/tmp", "/nonexistent", "..", "\0"]) | texts,
    st.booleans(),
    st.none() | st.builds(dict, columns=st.integers(0, 20_000), rows=st.integers(0, 20_000)),
)
stream_events = st.one_of(
    requests.map(lambda r: exec_pb2.StreamRequest(start=r)),
    st.binary(max_size=128).map(lambda b: exec_pb2.StreamRequest(stdin=b)),
    (texts | st.sampled_from(["INT", "TERM", "sigusr1"])).map(
        lambda s: exec_pb2.StreamRequest(signal=s)
    ),
    st.builds(
        lambda c, r: exec_pb2.StreamRequest(resize={"columns": c, "rows": r}),
        st.integers(0, 20_000),
        st.integers(0, 20_000),
    ),
    st.just(exec_pb2.StreamRequest(close_stdin=True)),
    st.just(exec_pb2.StreamRequest()),
)
calls = st.one_of(
    requests.map(lambda r: ("execute", r)),
    st.lists(stream_events, min_size=0, max_size=5).map(lambda rs: ("stream", rs)),
    st.binary(max_size=256).map(lambda b: ("raw_execute", b)),
    st.lists(st.binary(max_size=64), max_size=3).map(lambda bs: ("raw_stream", bs)),
)


async def outcome(
    channel: grpc.aio.Channel, stub: Any, kind: str, payload: Any
) -> grpc.StatusCode | None:
    """Make one call; its final status code (None: the client library hid it)."""
    try:
        if kind == "execute":
            await stub.Execute(payload, timeout=10)
        elif kind == "stream":

            async def messages() -> AsyncIterator[exec_pb2.StreamRequest]:
                for message in payload:
                    yield message

            async for _ in stub.Stream(messages(), timeout=10):
                pass
        elif kind == "raw_execute":
            await channel.unary_unary("/scout.v1.ExecService/Execute")(payload, timeout=10)
        else:
            call = channel.stream_stream("/scout.v1.ExecService/Stream")(iter(payload), timeout=10)
            async for _ in call:
                pass
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.INTERNAL and err.details() == CLIENT_WRITE_RACE:
            return None  # the client's own: it wrote after the call ended (see the docstring)
        return err.code()
    return grpc.StatusCode.OK


@settings(
    max_examples=12,
    derandomize=True,  # seeded: the same examples on every run and in CI
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(calls, min_size=10, max_size=25))
def test_hostile_input_gets_a_table_status_and_the_server_stays_up(
    ssh_keys: ShellKeys, batch: list[tuple[str, Any]]
) -> None:
    async def run() -> None:
        shell = await start_scripted(ssh_keys)
        cfg = config({"h": shell.host_config("h")}, exec={"stream_start_timeout": 1.0})
        try:
            async with running_scout(cfg) as s:
                codes = await asyncio.gather(
                    *(outcome(s.channel, s.stub, kind, payload) for kind, payload in batch)
                )
                for (kind, payload), code in zip(batch, codes, strict=True):
                    assert code is None or code in TABLE, (code, kind, payload)
                sent = s.app.service.rpcs.finished
                assert {grpc.StatusCode[code] for _, code in sent} <= TABLE, sent
                assert sum(sent.values()) == len(batch)
                r = await s.execute(host="h", command="echo alive")
                assert r.stdout == b"alive\n"
        finally:
            await shell.close()

    asyncio.run(run())
