"""examples/go/client.go (Debian's grpc-go, stubs generated at build time) against a live scout.

build.sh runs once per session into a temporary folder (its stubs, GOPATH and Go cache
too), so the example folder stays as committed. Only a machine without `go` skips these
tests; with `go` present, a missing protoc or plugin fails the build (.ci/run installs all).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from server.config import Config
from testkit.scripted import ScriptedServer

from .scoutd import Scout, running_scout
from .test_node_example import HostRoutingProxy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "go"
README_OUTPUT = re.compile(r"scout-example [^\n]*\n```\n\n```text\n(.*?)```", re.DOTALL)


def readme_output() -> str:
    """What README.md shows the example printing: the ```text block after its command."""
    found = README_OUTPUT.search((ROOT / "README.md").read_text())
    assert found, "README.md shows no output after `scout-example ...`"
    return found[1]


@pytest.fixture(scope="session")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's binary, built with examples/go/build.sh once per session."""
    if shutil.which("go") is None:
        pytest.skip("go is not installed: Debian package golang-go (see .ci/run)")
    folder = tmp_path_factory.mktemp("go-example")
    result = subprocess.run(
        [str(EXAMPLE / "build.sh"), str(folder)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "scout-example"


async def run_example(binary: Path, *args: str) -> tuple[int, str, str]:
    """`scout-example ARGS...`; return its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(binary), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def scout(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    async with running_scout(Config(hosts={"local": shell_server.host_config("local")})) as s:
        yield s


async def test_go_example_runs_execute_and_stream(scout: Scout, go_example: Path) -> None:
    code, out, err = await run_example(go_example, scout.target, "local")
    assert (code, out) == (0, readme_output()), err


async def test_go_example_reports_the_status_of_a_failed_call(
    scout: Scout, go_example: Path
) -> None:
    code, out, err = await run_example(go_example, scout.target, "nope")
    assert (code, out) == (1, "")
    assert err == "scout: NotFound: host 'nope' is not in the inventory\n"


async def test_go_example_names_the_host_on_every_call(scout: Scout, go_example: Path) -> None:
    """Proxies route by x-scout-host, so a call without it could land on the wrong replica."""
    proxy = HostRoutingProxy(scout.channel)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((proxy,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        code, out, err = await run_example(go_example, f"127.0.0.1:{port}", "local")
    finally:
        await server.stop(None)
    assert (code, out) == (0, readme_output()), err
    assert proxy.routed == [
        ("/scout.v1.ExecService/Execute", "local"),
        ("/scout.v1.ExecService/Stream", "local"),
        ("/scout.v1.ExecService/ListHosts", "local"),
    ]
