"""examples/node/client.js (grpc-js, the proto loaded at run time) against a live scout.

npm ci runs once per session into a temporary folder (NODE_PATH points node at it), so
the example folder stays as committed and npm's own cache makes later sessions quick.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .exampleclients import ROOT, ROUTED, build, readme_output, run_example, scout, through_proxy
from .scoutd import Scout

EXAMPLE = ROOT / "examples" / "node"
# the Go example's calls, a keyed Execute twice after the first, and a Download before ListHosts
NODE_ROUTED = [
    ROUTED[0],
    ROUTED[0],
    ROUTED[0],
    ROUTED[1],
    ("/scout.v1.ExecService/Download", "local"),
    *ROUTED[2:],
]
__all__ = ["scout"]  # the fixture


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
    build([tool("npm"), "ci", "--no-audit", "--no-fund"], cwd=folder)
    return folder / "node_modules"


async def node(node_modules: Path, *args: str) -> tuple[int, str, str]:
    """`node examples/node/client.js ARGS...`; its exit code, stdout and stderr."""
    env = {**os.environ, "NODE_PATH": str(node_modules)}
    return await run_example([tool("node"), str(EXAMPLE / "client.js"), *args], env)


async def test_node_example_runs_execute_stream_and_download(
    scout: Scout, node_modules: Path
) -> None:
    code, out, err = await node(node_modules, scout.target, "local")
    assert (code, out) == (0, readme_output("node client.js")), err


async def test_node_example_reports_the_status_of_a_failed_call(
    scout: Scout, node_modules: Path
) -> None:
    code, out, err = await node(node_modules, scout.target, "nope")
    assert (code, out) == (1, "")
    assert err == "scout: NOT_FOUND: host 'nope' is not in the inventory\n"


async def test_node_example_names_the_host_on_every_call(scout: Scout, node_modules: Path) -> None:
    """Proxies route by x-scout-host, so a call without it could land on the wrong replica."""
    (code, out, err), routed = await through_proxy(
        scout, lambda target: node(node_modules, target, "local")
    )
    assert (code, out) == (0, readme_output("node client.js")), err
    assert routed == NODE_ROUTED
