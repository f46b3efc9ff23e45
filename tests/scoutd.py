"""A scout server on 127.0.0.1:0 for tests, and a stub to call it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.app import App, start
from server.config import Config


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
