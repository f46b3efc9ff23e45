"""RetryPolicy, against a scripted keyed server: what is retried (always with the first
attempt's key), what is final (ABORTED "outcome unknown" from scout), and Stream's
re-attach by offsets, whose events never repeat or skip a byte without a Lost event.

The server side here is a fake that plays a script per call (tests/fakeexec.py's
`serving`); tests/test_durable_client.py runs the same client against the real server
through a proxy that cuts the TCP connection.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
import pytest

from client import (
    Aborted,
    AlreadyExists,
    Client,
    Exit,
    KeyNotFound,
    Lost,
    Result,
    RetryPolicy,
    ScoutError,
    Stderr,
    Stdout,
    SyncClient,
    Unavailable,
)
from client.errors import from_rpc_error
from client.retry import make_key, retryable
from scout.v1 import exec_pb2, exec_pb2_grpc

from .fakeexec import serving

pytestmark = pytest.mark.timeout(20)
S = grpc.StatusCode
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, deadline=5)
STARTED = (("x-scout-started", "true"),)
NOTHING_RAN = (("x-scout-started", "false"),)
REPLAYED = (("x-scout-replayed", "true"),)


class Keyed(exec_pb2_grpc.ExecServiceServicer):
    """Plays one step per call, in order (the last repeats):

    drop       UNAVAILABLE without scout's mark (the transport's answer to a cut)
    cancelled  CANCELLED without the mark
    reset      ABORTED without the mark (a proxy's)
    unknown    ABORTED "outcome unknown", x-scout-started: true (scout's own answer)
    store      UNAVAILABLE "outcome store", x-scout-started: false
    conflict   ALREADY_EXISTS, x-scout-started: false
    ok         exit 0, stdout "done"
    replay     exit 0, stdout "done", trailing x-scout-replayed: true
    """

    def __init__(self, *steps: str) -> None:
        self.steps = list(steps)
        self.requests: list[exec_pb2.ExecuteRequest] = []
        self.many: list[exec_pb2.ExecuteManyRequest] = []
        self.streams: list[exec_pb2.StreamRequest] = []
        self.stream_plays: list[list[tuple[str, Any]]] = []

    def _step(self) -> str:
        return self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]

    async def Execute(self, request: exec_pb2.ExecuteRequest, context: Any) -> Any:
        self.requests.append(request)
        step = self._step()
        if step == "drop":
            await context.abort(S.UNAVAILABLE, "Socket closed")
        if step == "cancelled":
            await context.abort(S.CANCELLED, "Cancelled")
        if step == "reset":
            await context.abort(S.ABORTED, "stream reset by a proxy")
        if step == "unknown":
            await context.abort(
                S.ABORTED,
                "command with idempotency_key started at 12:00:00; its outcome is unknown",
                trailing_metadata=STARTED,
            )
        if step == "store":
            await context.abort(S.UNAVAILABLE, "outcome store down", trailing_metadata=NOTHING_RAN)
        if step == "conflict":
            await context.abort(
                S.ALREADY_EXISTS, "idempotency_key names another request", NOTHING_RAN
            )
        if step == "replay":
            context.set_trailing_metadata(REPLAYED)
        return exec_pb2.ExecuteResponse(stdout=b"done", stdout_bytes=4)

    async def ExecuteMany(self, request: exec_pb2.ExecuteManyRequest, context: Any) -> None:
        """web1 ends first, web2 once web1 was reported; `drop` ends the call between."""
        self.many.append(request)
        step = self._step()
        result = exec_pb2.ExecuteResponse(exit_code=0)
        await context.write(exec_pb2.ExecuteManyResponse(host="web1", result=result))
        if step == "drop":
            await context.abort(S.UNAVAILABLE, "Socket closed")
        await context.write(exec_pb2.ExecuteManyResponse(host="web2", result=result))

    async def Stream(self, request_iterator: Any, context: Any) -> None:
        """Play the next of stream_plays: ("out", (offset, bytes)), ("err", ...),
        ("lost", (stream, n)), ("exit", code), ("drop", None), ("notfound", None)."""
        first = await context.read()
        self.streams.append(first)
        play = self.stream_plays.pop(0)
        await context.send_initial_metadata(STARTED)
        for kind, value in play:
            if kind == "out":
                await context.write(exec_pb2.StreamResponse(stdout=value[1], offset=value[0]))
            elif kind == "err":
                await context.write(exec_pb2.StreamResponse(stderr=value[1], offset=value[0]))
            elif kind == "lost":
                lost = exec_pb2.Lost(stream=value[0], bytes=value[1])
                await context.write(exec_pb2.StreamResponse(lost=lost))
            elif kind == "exit":
                await context.write(
                    exec_pb2.StreamResponse(exit=exec_pb2.ExitStatus(exit_code=value))
                )
            elif kind == "drop":
                await context.abort(S.UNAVAILABLE, "Socket closed")
            elif kind == "notfound":
                await context.abort(S.NOT_FOUND, "no command with that key", NOTHING_RAN)
            elif kind == "replayed":
                context.set_trailing_metadata(REPLAYED)


@asynccontextmanager
async def keyed(*steps: str) -> AsyncIterator[tuple[Keyed, str]]:
    servicer = Keyed(*steps)
    async with serving(servicer) as target:  # type: ignore[arg-type]
        yield servicer, target


def keys(requests: list[exec_pb2.ExecuteRequest]) -> set[str]:
    return {r.idempotency_key for r in requests}


# ---- the policy and the rule ------------------------------------------------------


def test_made_keys_are_unique_and_in_the_servers_charset() -> None:
    made = {make_key() for _ in range(100)}
    assert len(made) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", key) for key in made)


def test_policy_backoffs_grow_to_the_cap_within_jitter() -> None:
    policy = RetryPolicy(attempts=6, initial_backoff=1, max_backoff=5, multiplier=2, jitter=0.1)
    waits = list(policy.backoffs())
    assert len(waits) == 5
    for wait, nominal in zip(waits, [1, 2, 4, 5, 5], strict=True):
        assert nominal * 0.9 <= wait <= min(5, nominal * 1.1)
    assert RetryPolicy(detach_grace=timedelta(minutes=10)).detach_grace == 600.0
    for bad in ({"attempts": 0}, {"jitter": 2}, {"multiplier": 0.5}, {"detach_grace": -1}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


def error(code: grpc.StatusCode, trailers: tuple[tuple[str, str], ...] = ()) -> ScoutError:
    rpc = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), "x")
    return from_rpc_error(rpc, "web1")


def test_a_recorded_outcome_is_final_whatever_its_code() -> None:
    assert not retryable(error(grpc.StatusCode.UNAVAILABLE, (*NOTHING_RAN, *REPLAYED)))


@pytest.mark.parametrize(
    ("code", "trailers", "again"),
    [
        (S.UNAVAILABLE, (), True),  # a cut connection
        (S.UNAVAILABLE, NOTHING_RAN, True),  # the store is down; nothing ran
        (S.UNAVAILABLE, STARTED, True),  # "running on another replica; retry"
        (S.CANCELLED, (), True),  # the transport's cancel
        (S.ABORTED, (), True),  # a proxy's reset: the fate is unknown to us
        (S.ABORTED, STARTED, False),  # scout: outcome unknown; the same answer forever
        (S.ALREADY_EXISTS, NOTHING_RAN, False),
        (S.DEADLINE_EXCEEDED, (), False),  # the caller's own bound
        (S.INVALID_ARGUMENT, NOTHING_RAN, False),
        (S.RESOURCE_EXHAUSTED, NOTHING_RAN, False),
    ],
)
def test_what_is_retried(
    code: grpc.StatusCode, trailers: tuple[tuple[str, str], ...], again: bool
) -> None:
    assert retryable(error(code, trailers)) is again


# ---- Execute ----------------------------------------------------------------------


async def test_a_dropped_execute_is_sent_again_with_the_same_key() -> None:
    async with keyed("drop", "cancelled", "reset", "replay") as (server, target):
        async with Client(target, retry=FAST) as client:
            result = await client.execute("web1", "deploy", timeout=10)
        assert (result.stdout, result.replayed) == (b"done", True)
        assert len(server.requests) == 4
        (key,) = keys(server.requests)
        assert key.startswith("scout-")
        assert {r.detach_grace.seconds for r in server.requests} == {60}  # the policy's


async def test_the_callers_own_key_and_grace_are_kept() -> None:
    async with keyed("drop", "ok") as (server, target):
        policy = RetryPolicy(initial_backoff=0.01, detach_grace=None)
        async with Client(target, retry=policy) as client:
            result = await client.execute("web1", "deploy", idempotency_key="deploy-7")
        assert not result.replayed
        assert keys(server.requests) == {"deploy-7"}
        assert not server.requests[0].HasField("detach_grace")


async def test_outcome_unknown_is_final_and_asked_once() -> None:
    async with keyed("drop", "unknown", "ok") as (server, target):
        async with Client(target, retry=FAST) as client:
            with pytest.raises(Aborted) as info:
                await client.execute("web1", "deploy")
        assert len(server.requests) == 2  # the drop's retry, then scout's final answer
        assert (info.value.may_have_run, info.value.decided_by_scout) == (True, True)
        assert "outcome is unknown" in str(info.value)


async def test_a_key_for_another_request_is_final() -> None:
    async with keyed("conflict", "ok") as (server, target):
        async with Client(target, retry=FAST) as client:
            with pytest.raises(AlreadyExists) as info:
                await client.execute("web1", "deploy", idempotency_key="k1")
        assert len(server.requests) == 1 and not info.value.may_have_run


async def test_without_a_key_nothing_is_retried() -> None:
    async with keyed("drop", "ok") as (server, target):
        async with Client(target) as client:
            with pytest.raises(Unavailable) as info:
                await client.execute("web1", "deploy")
            assert info.value.may_have_run
            with pytest.raises(ValueError, match="detach_grace needs an idempotency_key"):
                await client.execute("web1", "deploy", detach_grace=10)
        assert len(server.requests) == 1 and server.requests[0].idempotency_key == ""


async def test_attempts_run_out() -> None:
    async with keyed("store") as (server, target):
        policy = RetryPolicy(attempts=3, initial_backoff=0.01)
        async with Client(target, retry=policy) as client:
            with pytest.raises(Unavailable) as info:
                await client.execute("web1", "deploy")
        assert len(server.requests) == 3 and len(keys(server.requests)) == 1
        assert not info.value.may_have_run


async def test_sync_client_takes_the_policy() -> None:
    async with keyed("drop", "replay") as (server, target):
        client = SyncClient(target, retry=FAST)
        try:
            result = await asyncio.to_thread(client.execute, "web1", "deploy")
        finally:
            await asyncio.to_thread(client.close)
        assert result.replayed and len(keys(server.requests)) == 1


async def test_bad_keys_are_refused_before_sending() -> None:
    async with keyed("ok") as (server, target):
        async with Client(target) as client:
            for bad in ("has space", "x" * 129, "slash/es"):
                with pytest.raises(ValueError, match="idempotency_key"):
                    await client.execute("web1", "true", idempotency_key=bad)
        assert server.requests == []


# ---- ExecuteMany ------------------------------------------------------------------


async def test_a_dropped_fan_out_is_sent_again_and_reports_each_host_once() -> None:
    async with keyed("drop", "ok") as (server, target):
        async with Client(target, retry=FAST) as client:
            events = [event async for event in client.execute_many(["web1", "web2"], "true")]
        assert [e.host for e in events if isinstance(e, Result)] == ["web1", "web2"]
        assert len(server.many) == 2
        assert len({m.request.idempotency_key for m in server.many}) == 1


# ---- Stream -----------------------------------------------------------------------


async def read_all(call: Any) -> list[Any]:
    return [event async for event in call]


async def test_stream_reattaches_with_its_offsets_and_drops_the_overlap() -> None:
    async with keyed("ok") as (server, target):
        server.stream_plays = [
            [("out", (0, b"0123")), ("err", (0, b"e1")), ("out", (4, b"4567")), ("drop", None)],
            [("out", (6, b"6789ab")), ("err", (0, b"e1e2")), ("exit", 0)],
        ]
        async with (
            Client(target, retry=FAST) as client,
            client.stream("web1", "count", close_stdin=True) as call,
        ):
            events = await read_all(call)
        stdout = b"".join(e.data for e in events if isinstance(e, Stdout))
        stderr = b"".join(e.data for e in events if isinstance(e, Stderr))
        assert (stdout, stderr) == (b"0123456789ab", b"e1e2")
        assert isinstance(events[-1], Exit) and call.reconnects == 1
        start, attach = server.streams
        assert start.WhichOneof("event") == "start"
        assert attach.attach == exec_pb2.Attach(
            idempotency_key=start.start.idempotency_key,
            host="web1",
            stdout_offset=8,
            stderr_offset=2,
        )
        assert call.offsets == (12, 4)


async def test_lost_output_is_an_event_never_a_silent_gap() -> None:
    async with keyed("ok") as (server, target):
        server.stream_plays = [
            [("out", (0, b"ab")), ("drop", None)],
            [("lost", ("stdout", 3)), ("out", (5, b"fg")), ("out", (9, b"jk")), ("exit", 0)],
        ]
        async with (
            Client(target, retry=FAST) as client,
            client.stream("web1", "count", close_stdin=True) as call,
        ):
            events = await read_all(call)
        assert events[:-1] == [
            Stdout(b"ab"),
            Lost("stdout", 3),  # the server's word
            Stdout(b"fg"),
            Lost("stdout", 2),  # a gap it did not announce: said all the same
            Stdout(b"jk"),
        ]
        assert call.offsets == (11, 0)


async def test_attach_replays_and_says_so() -> None:
    async with keyed("ok") as (server, target):
        server.stream_plays = [[("out", (3, b"def")), ("exit", 7), ("replayed", None)]]
        async with (
            Client(target) as client,
            client.attach("web1", "build-1", stdout_offset=3) as call,
        ):
            events = await read_all(call)
        assert events == [Stdout(b"def"), Exit(events[-1].status)]
        assert call.replayed and call.exit_status is not None
        assert call.exit_status.exit_code == 7
        (first,) = server.streams
        assert first.attach.idempotency_key == "build-1" and first.attach.stdout_offset == 3


async def test_attach_to_an_unknown_key_is_key_not_found() -> None:
    async with keyed("ok") as (server, target):
        server.stream_plays = [[("notfound", None)]]
        async with Client(target, retry=FAST) as client:
            with pytest.raises(KeyNotFound):
                async with client.attach("web1", "nope") as call:
                    await read_all(call)


async def test_a_stream_without_a_key_is_not_reattached() -> None:
    async with keyed("ok") as (server, target):
        server.stream_plays = [[("out", (0, b"ab")), ("drop", None)]]
        async with Client(target) as client:
            with pytest.raises(Unavailable):
                async with client.stream("web1", "count", close_stdin=True) as call:
                    await read_all(call)
        assert len(server.streams) == 1
