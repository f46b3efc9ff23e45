"""Health Watch and reflection streams: outside `max_concurrent_rpcs` (a busy scout still
answers its probes), inside a bound of their own, `[server] max_introspection_streams`.

Without it, health (open to anyone) let a caller hold any number of Watch streams, each
keeping the service name it watches: 2,000 Watches past `max_concurrent_rpcs = 1`, or
40 Watches of 4 MB names for +700 MiB of the server's memory.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from server.config import ServerSettings
from server.introspection import MAX_SERVICE_NAME, REFLECTION_V1
from testkit.processes import eventually
from testkit.scripted import ScriptedServer

from .scoutd import Scout, config, running_scout
from .serverproc import start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
LIMIT = 4


@pytest.fixture
async def scout(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    bounds = config(
        {"h": shell_server.host_config("h")}, server={"max_introspection_streams": LIMIT}
    )
    async with running_scout(bounds) as s:
        yield s


async def watching(scout: Scout, service: str = "") -> Any:
    """A Watch stream that has had its first answer (so it holds its place)."""
    call = health_pb2_grpc.HealthStub(scout.channel).Watch(
        health_pb2.HealthCheckRequest(service=service)
    )
    first = await call.read()
    assert first.status == SERVING, first
    return call


async def reflecting(scout: Scout) -> Any:
    """A reflection stream that has answered one question and stays open."""
    call = scout.channel.stream_stream(
        f"/{REFLECTION_V1}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    answer = await call.read()
    assert answer.list_services_response.service, answer
    return call


async def refused(call: Any) -> grpc.aio.AioRpcError:
    """The error a stream ended with at its first read."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    return info.value


async def test_watch_and_reflection_streams_have_a_bound_of_their_own(scout: Scout) -> None:
    held = [await watching(scout), await watching(scout), await reflecting(scout)]
    held.append(await reflecting(scout))  # LIMIT streams open
    health = health_pb2_grpc.HealthStub(scout.channel)
    extra_watch = health.Watch(health_pb2.HealthCheckRequest())
    error = await refused(extra_watch)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert "max_introspection_streams" in (error.details() or "")
    extra_reflection = scout.channel.stream_stream(f"/{REFLECTION_V1}/ServerReflectionInfo")()
    assert (await refused(extra_reflection)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Probes and commands are not held up by the streams (nor the streams by them).
    check = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert check.status == SERVING
    assert (await scout.execute(host="h", command="echo ok")).stdout == b"ok\n"
    held.pop(0).cancel()  # a place frees when its stream ends
    assert await eventually(lambda: scout.app.health.streams.open == LIMIT - 1)
    held.append(await watching(scout))
    for call in held:
        call.cancel()
    assert await eventually(lambda: scout.app.health.streams.open == 0)


async def test_a_watch_names_a_service_of_a_sane_length(scout: Scout) -> None:
    health = health_pb2_grpc.HealthStub(scout.channel)
    huge = health.Watch(health_pb2.HealthCheckRequest(service="x" * (4 * 1024 * 1024)))
    error = await refused(huge)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert f"at most {MAX_SERVICE_NAME} bytes" in (error.details() or "")
    (await watching(scout, "scout.v1.ExecService")).cancel()
    assert await eventually(lambda: scout.app.health.streams.open == 0)


@pytest.mark.slow
async def test_ten_thousand_watches_get_the_default_bound_and_probes_still_answer(
    tmp_path: Path,
) -> None:
    """A real scout process, its defaults, one caller opening 10,000 Watch streams."""
    cfg = tmp_path / "scout.toml"
    cfg.write_text("max_concurrent_rpcs = 1\n")
    proc, target = start_server(["--config", str(cfg)], tmp_path / "scout.log")
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    try:
        stubs = [health_pb2_grpc.HealthStub(c) for c in channels]
        calls = [
            stubs[i % 4].Watch(health_pb2.HealthCheckRequest(service=f"s{i}"))
            for i in range(10_000)
        ]

        async def first(call: Any) -> str:
            try:
                answer: health_pb2.HealthCheckResponse = await call.read()
                return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
            except grpc.aio.AioRpcError as error:
                return str(error.code().name)

        outcomes = await asyncio.gather(*(first(c) for c in calls))
        limit = ServerSettings().max_introspection_streams
        assert outcomes.count("SERVICE_UNKNOWN") == limit
        assert outcomes.count("RESOURCE_EXHAUSTED") == 10_000 - limit
        check = await stubs[0].Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == SERVING
        for call in calls:
            call.cancel()
    finally:
        for channel in channels:
            await channel.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
