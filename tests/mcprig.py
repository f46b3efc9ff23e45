"""A live rig for `scout mcp`: a scout-server child process, its hosts, and MCP sessions.

The hosts (local, web1, web2, db1) are one local shell SSH server (server/localshell.py,
the demo's) serving in a thread of the test process, so their commands are processes of
this machine (testkit/processes.py looks at them). The scout server runs as a child with
a config file naming two callers: "ops" (any host, any command) and "assistant" (the
README's read-only example, with hosts web* and files it may read under `data`), and an
audit file. Each MCP session spawns
`scout mcp` over stdio with the SDK's own client, as an assistant would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp import Client as MCPClient
from mcp import StdioServerParameters
from mcp.types import CallToolResult

from server.callers import hash_token
from server.keyfiles import load_or_create_keys
from server.localshell import ShellHost
from testkit.processes import stop

from .serverproc import ROOT, host_toml, start_server

OPS_TOKEN = "ops-token-for-mcp-tests"
ASSISTANT_TOKEN = "assistant-token-for-mcp-tests"
HOSTS = {"local": "ops", "web1": "web", "web2": "web", "db1": "db"}  # name: role label


def readme_assistant(data: Path) -> str:
    """The README's read-only assistant caller, as TOML, with our token, reading under data."""
    text = (ROOT / "README.md").read_text()
    block = text.split("An assistant's caller, read-only:", 1)[1]
    block = block.split("```toml\n", 1)[1].split("```", 1)[0]
    block = re.sub(r"(?m)^paths = .*$", f'paths = ["{data}/**"]', block)
    return block.replace('"9f86d0..."', f'"{hash_token(ASSISTANT_TOKEN)}"')


@dataclass
class Rig:
    """The running scout server: where it listens, its audit file and its log."""

    target: str
    audit: Path
    log: Path
    data: Path  # where the assistant may read files

    def audit_lines(self) -> list[dict[str, Any]]:
        """Every audit line written so far."""
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line]


@contextmanager
def shell_host(state: Path) -> Iterator[ShellHost]:
    """The local shell SSH server, serving from its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mcp-shell-host", daemon=True)
    thread.start()
    host = asyncio.run_coroutine_threadsafe(
        ShellHost(load_or_create_keys(state)).start(), loop
    ).result(10)
    try:
        yield host
    finally:
        asyncio.run_coroutine_threadsafe(host.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@contextmanager
def running_rig(tmp: Path, *flags: str) -> Iterator[Rig]:
    """scout-server with the hosts and callers above, until the block ends."""
    with shell_host(tmp / "keys") as shell:
        audit = tmp / "audit.jsonl"
        data = tmp / "data"
        data.mkdir()
        parts = [f'[audit]\nfile = "{audit}"\n']
        parts.append(
            f'[[callers]]\nname = "ops"\ntoken_sha256 = "{hash_token(OPS_TOKEN)}"\n'
            'hosts = ["*"]\nfiles = "read-write"\npaths = ["/**"]\n'
        )
        parts.append(readme_assistant(data))
        for name, role in HOSTS.items():
            parts.append(host_toml(name, shell.host_config(name)))
            parts.append(f'labels = {{ role = "{role}" }}\n')
        config = tmp / "scout.toml"
        config.write_text("\n".join(parts))
        log = tmp / "scout.log"
        proc, target = start_server(["--config", str(config), *flags], log)
        try:
            yield Rig(target, audit, log, data)
        finally:
            stop(proc, 10)


def mcp_command(target: str, *extra: str) -> list[str]:
    """`scout mcp` as the console script runs it, against target."""
    return [sys.executable, "-m", "client.cli", "mcp", "--target", target, *extra]


def child_env(token: str) -> dict[str, str]:
    """Our environment with the caller's token (never on the command line)."""
    return {**os.environ, "SCOUT_TOKEN": token, "PYTHONPATH": str(ROOT)}


@asynccontextmanager
async def session(rig: Rig, token: str = OPS_TOKEN, *extra: str) -> AsyncIterator[MCPClient]:
    """An MCP client session with `scout mcp` over stdio, as Claude Desktop would start it."""
    command = mcp_command(rig.target, *extra)
    params = StdioServerParameters(
        command=command[0], args=command[1:], env=child_env(token), cwd=str(ROOT)
    )
    async with MCPClient(params, read_timeout_seconds=60) as client:
        yield client


def fields(result: CallToolResult) -> dict[str, Any]:
    """A tool result's structured content (every scout tool has one)."""
    assert result.structured_content is not None, result
    return dict(result.structured_content)


def error_text(result: CallToolResult) -> str:
    """The text of a tool error."""
    assert result.is_error, result
    return " ".join(getattr(block, "text", "") for block in result.content)
