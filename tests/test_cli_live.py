"""The README's Python example and the scout command against a live scout server.

scout runs in this process (tests/scoutd.py) with host "local" on the in-process
SSH server (testkit/scripted.py), so the commands are real /bin/sh processes.
"""

from __future__ import annotations

import io
import platform
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.cli import amain
from server.config import Config
from testkit.scripted import ScriptedServer

from .readmescripts import run_python_block
from .scoutd import Scout, running_scout

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def scout(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    async with running_scout(Config(hosts={"local": shell_server.host_config("local")})) as s:
        yield s


async def test_readme_python_example_runs_as_a_script(scout: Scout, tmp_path: Path) -> None:
    out = await run_python_block("From Python", scout.target, tmp_path, 30)
    assert out.startswith(f"0 {platform.uname().system} "), out


async def cli(*argv: str) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    code = await amain(list(argv), stdin=None, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def test_timeout_after_the_host_is_scouts_option(scout: Scout) -> None:
    # Sent to the shell, "--timeout 1 sleep 3" would fail at once with status 127.
    argv = ["exec", "local", "--target", scout.target, "--timeout", "1", "--", "sleep", "3"]
    code, out, err = await cli(*argv)
    assert (code, out) == (124, b"")  # as timeout(1)
    assert err == b"scout: local: the command ran past its timeout (1s) and was stopped\n"


async def test_cwd_env_and_tty_reach_the_command(scout: Scout, tmp_path: Path) -> None:
    options = ["--target", scout.target, "--cwd", str(tmp_path), "--env", "GREETING=hi"]
    line = 'pwd; echo "$GREETING"; test -t 0 && echo tty || echo no-tty'
    code, out, err = await cli("exec", "local", *options, "--", line)
    assert (code, out, err) == (0, f"{tmp_path}\nhi\nno-tty\n".encode(), b"")
    code, out, _ = await cli(
        "exec", "local", "--target", scout.target, "--tty", "--", "test -t 0 && echo tty"
    )
    assert (code, out) == (0, b"tty\r\n")  # a pty turns \n into \r\n
