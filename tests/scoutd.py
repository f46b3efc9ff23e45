"""A scout server on 127.0.0.1:0 for tests, a stub to call it, and small helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.app import App, start
from server.config import CallerConfig, Config, HostConfig


def secs(value: float) -> duration_pb2.Duration:
    """A protobuf Duration."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def started(err: grpc.aio.AioRpcError) -> str | None:
    """The x-scout-started trailer of a failed call ("true", "false"), or None."""
    for key, value in err.trailing_metadata() or ():
        if key == "x-scout-started":
            return str(value)
    return None


def config(
    hosts: dict[str, HostConfig],
    *,
    callers: tuple[CallerConfig, ...] = (),
    **sections: dict[str, Any],
) -> Config:
    """A Config with these hosts and callers; `pool=dict(...)`, `exec=dict(...)` override
    settings."""
    base = Config(hosts=hosts, callers=callers)
    changes: dict[str, Any] = {}
    for name, values in sections.items():
        current = getattr(base, name)
        changes[name] = dataclasses.replace(current, **values) if values else current
    return dataclasses.replace(base, **changes)


@dataclass
class Scout:
    """A running server, its address, a channel and a stub on it."""

    app: App
    target: str
    channel: grpc.aio.Channel
    stub: exec_pb2_grpc.ExecServiceStub

    async def execute(self, rpc_timeout: float = 30.0, **fields: Any) -> exec_pb2.ExecuteResponse:
        """Call Execute with the given request fields."""
        request = exec_pb2.ExecuteRequest(**fields)
        response: exec_pb2.ExecuteResponse = await self.stub.Execute(request, timeout=rpc_timeout)
        return response

    async def assert_stream_fails(
        self,
        messages: AsyncIterator[exec_pb2.StreamRequest],
        code: grpc.StatusCode,
        says: str,
        rpc_timeout: float = 10.0,
    ) -> None:
        """A Stream of these messages ends with code, its details containing says."""
        call = self.stub.Stream(messages, timeout=rpc_timeout)
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as error:
            assert (error.code(), says in (error.details() or "")) == (code, True), error
        else:
            raise AssertionError(f"Stream ended OK; expected {code.name}")


@asynccontextmanager
async def running_scout(config: Config) -> AsyncIterator[Scout]:
    """Start scout for config, yield it, stop it (grace 1 s) and close the channel."""
    app = await start(config, "127.0.0.1:0")
    target = f"127.0.0.1:{app.port}"
    channel = grpc.aio.insecure_channel(target)
    try:
        yield Scout(app, target, channel, exec_pb2_grpc.ExecServiceStub(channel))
    finally:
        await channel.close()
        await app.stop(grace=1.0)
