"""max_concurrent_rpcs: beyond it, every ExecService call is refused at once with scout's own
status, message and trailers, whether it is turned away at the door (a one-message request,
before grpc reads it: server.rpc.door) or in the RPC loop (a streaming request)."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest

from scout.v1 import exec_pb2
from server.rpc import RpcStats, door
from testkit.processes import eventually
from testkit.scripted import ScriptedServer

from .scoutd import config, running_scout, started

LIMIT = 2
MESSAGE = f"scout is at its limit of {LIMIT} calls at once (max_concurrent_rpcs); retry in a second"


async def test_calls_beyond_max_concurrent_rpcs_are_refused_with_scouts_own_status(
    shell_server: ScriptedServer,
) -> None:
    cfg = dataclasses.replace(
        config({"h": shell_server.host_config("h")}), max_concurrent_rpcs=LIMIT
    )
    async with running_scout(cfg) as s:
        stub = s.stub
        holding = asyncio.gather(*(s.execute(host="h", command="sleep 1.5") for _ in range(LIMIT)))
        assert await eventually(lambda: s.app.service.rpcs.in_flight == LIMIT)
        one = exec_pb2.ExecuteRequest(host="h", command="true")
        big = exec_pb2.ExecuteRequest(host="h", command="cat", stdin=b"x" * (8 << 20))
        calls = {
            "Execute": lambda md: stub.Execute(one, metadata=md),
            # refused while the caller may still be sending it (past HTTP/2's first window)
            "Execute, 8 MiB of stdin": lambda md: stub.Execute(big, metadata=md),
            "ListHosts": lambda md: stub.ListHosts(exec_pb2.ListHostsRequest(), metadata=md),
            "ExecuteMany": lambda md: _drain(
                stub.ExecuteMany(
                    exec_pb2.ExecuteManyRequest(
                        hosts=["h"], request=exec_pb2.ExecuteRequest(command="true")
                    ),
                    metadata=md,
                )
            ),
            "Download": lambda md: _drain(
                stub.Download(exec_pb2.DownloadRequest(host="h", path="/etc/hostname"), metadata=md)
            ),
            "Stream": lambda md: _drain(
                stub.Stream(iter([exec_pb2.StreamRequest(start=one)]), metadata=md)
            ),
        }
        for i, (method, call) in enumerate(calls.items()):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call((("x-request-id", f"refused-{i}"),))
            error = info.value
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, method
            assert error.details() == MESSAGE, method
            assert started(error) == "false", method
            assert dict(error.trailing_metadata() or ())["x-request-id"] == f"refused-{i}"
        finished = s.app.service.rpcs.finished
        for method in ("ListHosts", "ExecuteMany", "Download", "Stream"):
            assert finished[(method, "RESOURCE_EXHAUSTED")] == 1, method
        assert finished[("Execute", "RESOURCE_EXHAUSTED")] == 2
        assert all(r.exit_code == 0 for r in await holding)
        assert (await s.execute(host="h", command="true")).exit_code == 0  # room again


async def _drain(call: object) -> None:
    async for _ in call:  # type: ignore[attr-defined]
        pass


def test_the_door_turns_away_only_one_message_calls_and_only_at_the_limit() -> None:
    class Servicer:
        rpcs = RpcStats(max_in_flight=LIMIT)

    refusal, service = door(Servicer(), "scout.v1.ExecService"), "/scout.v1.ExecService/"  # type: ignore[arg-type]
    one_message = ("Execute", "ListHosts", "ExecuteMany", "Download")
    streaming = ("Stream", "Upload", "UploadMany")
    Servicer.rpcs.in_flight = LIMIT - 1
    assert all(refusal(service + m) is None for m in one_message + streaming)
    Servicer.rpcs.in_flight = LIMIT
    assert all(refusal(service + m) is not None for m in one_message)
    assert all(refusal(service + m) is None for m in streaming)
    assert refusal("/grpc.health.v1.Health/Check") is None  # outside max_concurrent_rpcs
