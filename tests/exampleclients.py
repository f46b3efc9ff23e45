"""What the example clients' tests share (examples/node, examples/go): the README's text of
their output, running one, the scout they call, and a proxy that records each call's host.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.config import Config
from testkit.scripted import ScriptedServer

from .scoutd import Scout, running_scout

ROOT = Path(__file__).resolve().parent.parent
ROUTED = [  # what every example calls, each with its host header
    ("/scout.v1.ExecService/Execute", "local"),
    ("/scout.v1.ExecService/Stream", "local"),
    ("/scout.v1.ExecService/ListHosts", "local"),
]


def readme_output(command: str) -> str:
    """What README.md shows an example printing: the ```text block after `command ...`."""
    pattern = re.escape(command) + r" [^\n]*\n```\n\n```text\n(.*?)```"
    found = re.search(pattern, (ROOT / "README.md").read_text(), re.DOTALL)
    assert found, f"README.md shows no output after `{command} ...`"
    return found[1]


def build(argv: list[str], cwd: Path | None = None) -> None:
    """An example's build step (npm ci, build.sh): 5 minutes at most, and it must succeed."""
    done = subprocess.run(argv, check=False, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


async def run_example(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run an example to its end (60 s at most); return its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def scout(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    """scout with one host, "local", as the examples' README lines use."""
    async with running_scout(Config(hosts={"local": shell_server.host_config("local")})) as s:
        yield s


async def through_proxy(
    scout: Scout, call: Callable[[str], Awaitable[tuple[int, str, str]]]
) -> tuple[tuple[int, str, str], list[tuple[str, str | None]]]:
    """Run call(target) against a HostRoutingProxy in front of scout; its result, and what
    the proxy routed."""
    proxy = HostRoutingProxy(scout.channel)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((proxy,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await call(f"127.0.0.1:{port}"), proxy.routed
    finally:
        await server.stop(None)


class HostRoutingProxy(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A gRPC proxy in front of scout, as nginx would be: it reads x-scout-host, forwards
    the call's bytes, the response headers and the status (Execute's with its trailing
    metadata), and records what it routed."""

    def __init__(self, upstream: grpc.aio.Channel) -> None:
        self.upstream = upstream
        self.routed: list[tuple[str, str | None]] = []

    def service(self, details: Any) -> Any:
        """Record the call's host header; forward unary and streaming calls as they are."""
        self.routed.append((details.method, dict(details.invocation_metadata).get("x-scout-host")))
        if details.method.endswith("/Execute"):
            return grpc.unary_unary_rpc_method_handler(self._unary(details.method))
        return grpc.stream_stream_rpc_method_handler(self._stream(details.method))

    def _unary(self, method: str) -> Any:
        async def forward(request: bytes, context: Any) -> bytes:
            call = self.upstream.unary_unary(method)(request, timeout=context.time_remaining())
            try:
                reply: bytes = await call
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details(), exc.trailing_metadata())
            context.set_trailing_metadata(await call.trailing_metadata())  # x-scout-replayed
            return reply

        return forward

    def _stream(self, method: str) -> Any:
        async def forward(requests: Any, context: Any) -> AsyncIterator[bytes]:
            call = self.upstream.stream_stream(method)(requests, timeout=context.time_remaining())
            try:
                await context.send_initial_metadata(await call.initial_metadata())
                async for reply in call:
                    yield reply
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details())

        return forward
