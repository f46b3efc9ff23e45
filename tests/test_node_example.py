"""examples/node/client.js (grpc-js, the proto loaded at run time) against a live scout.

npm ci runs once per session into a temporary folder (NODE_PATH points node at it), so
the example folder stays as committed and npm's own cache makes later sessions quick.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.config import Config
from testkit.scripted import ScriptedServer

from .scoutd import Scout, running_scout

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node"
README_OUTPUT = re.compile(r"node client\.js [^\n]*\n```\n\n```text\n(.*?)```", re.DOTALL)


def readme_output() -> str:
    """What README.md shows the example printing: the ```text block after its command."""
    found = README_OUTPUT.search((ROOT / "README.md").read_text())
    assert found, "README.md shows no output after `node client.js ...`"
    return found[1]


def tool(name: str) -> str:
    """A command the Node tests need; a missing one fails them (.ci/run installs it)."""
    path = shutil.which(name)
    assert path, f"{name} is not installed: Debian packages nodejs and npm (see .ci/run)"
    return path


@pytest.fixture(scope="session")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's locked dependencies, installed with `npm ci` once per session."""
    folder = tmp_path_factory.mktemp("node-example")
    for name in ("package.json", "package-lock.json"):
        shutil.copy(EXAMPLE / name, folder / name)
    result = subprocess.run(
        [tool("npm"), "ci", "--no-audit", "--no-fund"],
        check=False,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "node_modules"


async def run_example(node_modules: Path, *args: str) -> tuple[int, str, str]:
    """`node examples/node/client.js ARGS...`; return its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        tool("node"),
        str(EXAMPLE / "client.js"),
        *args,
        env={**os.environ, "NODE_PATH": str(node_modules)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def scout(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    async with running_scout(Config(hosts={"local": shell_server.host_config("local")})) as s:
        yield s


async def test_node_example_runs_execute_and_stream(scout: Scout, node_modules: Path) -> None:
    code, out, err = await run_example(node_modules, scout.target, "local")
    assert (code, out) == (0, readme_output()), err


async def test_node_example_reports_the_status_of_a_failed_call(
    scout: Scout, node_modules: Path
) -> None:
    code, out, err = await run_example(node_modules, scout.target, "nope")
    assert (code, out) == (1, "")
    assert err == "scout: NOT_FOUND: host 'nope' is not in the inventory\n"


class HostRoutingProxy(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A gRPC proxy in front of scout, as nginx would be: it reads x-scout-host, forwards
    the call's bytes, the response headers and the status, and records what it routed."""

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
            try:
                reply: bytes = await self.upstream.unary_unary(method)(
                    request, timeout=context.time_remaining()
                )
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details())
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


async def test_node_example_names_the_host_on_every_call(scout: Scout, node_modules: Path) -> None:
    """Proxies route by x-scout-host, so a call without it could land on the wrong replica."""
    proxy = HostRoutingProxy(scout.channel)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((proxy,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        code, out, err = await run_example(node_modules, f"127.0.0.1:{port}", "local")
    finally:
        await server.stop(None)
    assert (code, out) == (0, readme_output()), err
    assert proxy.routed == [
        ("/scout.v1.ExecService/Execute", "local"),
        ("/scout.v1.ExecService/Stream", "local"),
        ("/scout.v1.ExecService/ListHosts", "local"),
    ]
