"""The README's Python example, the scout command and the client's argv against a live
scout server.

scout runs in this process (tests/scoutd.py) with host "local" on the in-process
SSH server (testkit/scripted.py), so the commands are real /bin/sh processes.
"""

from __future__ import annotations

import asyncio
import io
import platform
from pathlib import Path

import pytest

from client import Client, Result, Stdout, SyncClient
from client.cli import amain
from server.callers import hash_token
from server.config import CallerConfig, Config
from testkit.scripted import ScriptedServer

from .readmescripts import run_python_block
from .scoutd import Scout, running_scout

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)


async def test_readme_python_example_runs_as_a_script(local_scout: Scout, tmp_path: Path) -> None:
    out = await run_python_block("From Python", local_scout.target, tmp_path, 30)
    assert out.startswith(f"0 {platform.uname().system} "), out


async def cli(*argv: str) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    code = await amain(list(argv), stdin=None, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def test_timeout_after_the_host_is_scouts_option(local_scout: Scout) -> None:
    # Sent to the shell, "--timeout 1 sleep 3" would fail at once with status 127.
    argv = ["exec", "local", "--target", local_scout.target, "--timeout", "1", "--", "sleep", "3"]
    code, out, err = await cli(*argv)
    assert (code, out) == (124, b"")  # as timeout(1)
    assert err == b"scout: local: the command ran past its timeout (1s) and was stopped\n"


async def test_cwd_env_and_tty_reach_the_command(local_scout: Scout, tmp_path: Path) -> None:
    options = ["--target", local_scout.target, "--cwd", str(tmp_path), "--env", "GREETING=hi"]
    line = 'pwd; echo "$GREETING"; test -t 0 && echo tty || echo no-tty'
    code, out, err = await cli("exec", "local", *options, "--", line)
    assert (code, out, err) == (0, f"{tmp_path}\nhi\nno-tty\n".encode(), b"")
    code, out, _ = await cli(
        "exec", "local", "--target", local_scout.target, "--tty", "--", "test -t 0 && echo tty"
    )
    assert (code, out) == (0, b"tty\r\n")  # a pty turns \n into \r\n


# ---- argv ------------------------------------------------------------------------------

ARGV = ["printf", "%s|", "a b", "'q'", "$(id)", "*", "", "-n"]
PRINTED = b"a b|'q'|$(id)|*||-n|"


async def test_the_client_sends_argv_on_every_call(local_scout: Scout) -> None:
    async with Client(local_scout.target) as c:
        r = await c.execute("local", argv=ARGV)
        assert (r.exit_code, r.stdout) == (0, PRINTED)
        async with c.stream("local", argv=ARGV, close_stdin=True) as call:
            out = b"".join([e.data async for e in call if isinstance(e, Stdout)])
        assert out == PRINTED
        (many,) = [e async for e in c.execute_many(["local"], argv=ARGV)]
        assert isinstance(many, Result) and many.stdout == PRINTED
        with pytest.raises(ValueError, match="not both"):
            await c.execute("local", "true", argv=["true"])
        with pytest.raises(TypeError, match="not one string"):
            await c.execute("local", argv="true")
    async with Client(local_scout.target, split_fan_out=True) as c:
        (many,) = [e async for e in c.execute_many(["local"], argv=ARGV)]
        assert isinstance(many, Result) and many.stdout == PRINTED

    def blocking() -> tuple[bytes, bytes]:
        with SyncClient(local_scout.target) as c:
            (many,) = c.execute_many(["local"], argv=ARGV)
            assert isinstance(many, Result)
            return c.execute("local", argv=ARGV).stdout, many.stdout

    assert await asyncio.to_thread(blocking) == (PRINTED, PRINTED)


async def test_cli_argv_sends_each_word_as_one_element(local_scout: Scout) -> None:
    target = ["--target", local_scout.target]
    code, out, err = await cli("exec", "local", *target, "--argv", "--", *ARGV)
    assert (code, out, err) == (0, PRINTED, b"")
    code, out, err = await cli("exec", "--argv", *target, "local", *ARGV)  # no `--`
    assert (code, out, err) == (0, PRINTED, b"")
    code, out, err = await cli("exec", "loc*", *target, "--argv", "--", *ARGV)  # a fan-out
    assert (code, out) == (0, b"local | " + PRINTED + b"\n"), err


async def test_a_restricted_caller_runs_argv_from_the_cli(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("restricted-1f2e3d4c5b6a\n")
    bot = CallerConfig(
        name="bot",
        token_sha256=hash_token("restricted-1f2e3d4c5b6a"),
        hosts=("local",),
        commands=("printf * ...",),
        stream=True,
    )
    cfg = Config(hosts={"local": shell_server.host_config("local")}, callers=(bot,))
    async with running_scout(cfg) as s:
        options = ["--target", s.target, "--token-file", str(token)]
        code, out, err = await cli("exec", "local", *options, "--argv", "--", *ARGV)
        assert (code, out, err) == (0, PRINTED, b"")
        code, out, err = await cli("exec", "loc*", *options, "--argv", "--", *ARGV)  # fan-out
        assert (code, out) == (0, b"local | " + PRINTED + b"\n"), err
        code, out, err = await cli("exec", "local", *options, "--", *ARGV)  # a shell line
        assert (code, out) == (125, b"")
        assert b"may send only argv" in err and b"(the command did not run)" in err
