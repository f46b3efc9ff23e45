"""The `scout` command's failures in its own words, run as people run it (the console script).

Every case is a real `scout` process against a live server on loopback: scout itself
(tests/scoutd.py) with the in-process SSH host, the scripted fake over TLS
(tests/fakeexec.py, certificates from testkit/certs.py), or nothing at all. Each
failure is one line on stderr that names the cause and the flag or variable that
fixes it, with the exit code of client/exitcodes.py; grpc's own log lines stay off
stderr unless --verbose.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.exitcodes import TABLE
from server.callers import hash_token
from server.config import CallerConfig, Config
from testkit.certs import PKI
from testkit.ports import free_port
from testkit.scripted import ScriptedServer

from .fakeexec import FakeExec
from .scoutd import Scout, running_scout

SCOUT = str(Path(sys.executable).parent / "scout")
TOKEN = "batch-4f0c2e9a7d1b6e3f5a8c"
pytestmark = pytest.mark.timeout(60)


async def scout(
    *argv: str, stdin: bytes = b"", env: dict[str, str] | None = None, home: Path
) -> tuple[int, bytes, bytes]:
    """Run the scout console script; a fresh HOME, no $SCOUT_* but those in env."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "XDG_"))}
    proc = await asyncio.create_subprocess_exec(
        SCOUT,
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**clean, "HOME": str(home), **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def nothing_ran(*argv: str, home: Path) -> str:
    """scout's message for argv, which must exit 125 (nothing ran) and print nothing."""
    code, out, err = await scout(*argv, home=home)
    assert (code, out) == (125, b""), err
    return err.decode()


@pytest.fixture
async def guarded(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    """scout with two names for the SSH host and one caller, batch: no Stream, three
    argv patterns."""
    batch = CallerConfig(
        name="batch",
        token_sha256=hash_token(TOKEN),
        hosts=("local*",),
        commands=("echo *", "cat", "sleep *"),
        stream=False,
    )
    hosts = {name: shell_server.host_config(name) for name in ("local", "local2")}
    async with running_scout(Config(hosts=hosts, callers=(batch,))) as s:
        yield s


@pytest.fixture
async def open_scout(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    hosts = {name: shell_server.host_config(name) for name in ("local", "local2")}
    async with running_scout(Config(hosts=hosts)) as s:
        yield s


# ---- nothing could have run --------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "local", "--", "uptime"],
        ["exec", "a", "b", "--", "x"],
        ["exec", "--split-fan-out", "a", "b", "--", "x"],
        ["hosts"],
    ],
)
async def test_nothing_listening_is_cannot_reach_and_nothing_ran(
    argv: list[str], tmp_path: Path
) -> None:
    target = f"127.0.0.1:{free_port()}"
    assert await nothing_ran(argv[0], "--target", target, *argv[1:], home=tmp_path) == (
        f"scout: cannot reach scout at {target} "
        "(is scout-server running? --target / $SCOUT_TARGET)\n"
    )


async def test_plaintext_to_a_tls_port_says_add_tls(
    tls_fake: tuple[FakeExec, str], tmp_path: Path
) -> None:
    assert await nothing_ran("health", "--target", tls_fake[1], home=tmp_path) == (
        f"scout: scout at {tls_fake[1]} closed the connection: it expects TLS "
        "(add --tls, or --ca FILE for a private CA; $SCOUT_TLS, $SCOUT_CA)\n"
    )


async def test_tls_to_a_plaintext_port_says_drop_tls(
    fake: tuple[FakeExec, str], pki: PKI, tmp_path: Path
) -> None:
    argv = ["exec", "--target", fake[1], "--ca", str(pki.ca.bundle), "web1", "--", "x"]
    assert await nothing_ran(*argv, home=tmp_path) == (
        f"scout: scout at {fake[1]} does not speak TLS: "
        "drop --tls and --ca (and $SCOUT_TLS, $SCOUT_CA)\n"
    )


async def test_a_private_ca_with_tls_names_ca_and_no_grpc_line_leaks(
    tls_fake: tuple[FakeExec, str], pki: PKI, tmp_path: Path
) -> None:
    argv = ["exec", "--target", tls_fake[1], "--tls", "web1", "x"]
    # one line: no "Handshake failed" from grpc's C core, no ": OK"
    assert await nothing_ran(*argv, home=tmp_path) == (
        f"scout: scout at {tls_fake[1]} has a certificate not signed by a CA this machine trusts "
        "(--ca FILE / $SCOUT_CA names the CA that signed it)\n"
    )
    other = str(pki.other_ca.bundle)
    err = await nothing_ran("health", "--target", tls_fake[1], "--ca", other, home=tmp_path)
    assert err.startswith(f"scout: scout at {tls_fake[1]} has a certificate not signed ")
    assert f"by the CA in {other} " in err
    _, _, verbose = await scout(
        "health", "--target", tls_fake[1], "--tls", "--verbose", home=tmp_path
    )
    lines = verbose.decode().splitlines()
    assert any("Handshake failed" in line for line in lines), lines  # grpc's, when asked
    assert f"scout: scout at {tls_fake[1]} has a certificate not signed by a CA" in verbose.decode()


async def test_no_token_names_the_flag_and_the_variable(guarded: Scout, tmp_path: Path) -> None:
    argv = ["exec", "--target", guarded.target, "local", "--", "echo hi"]
    code, out, err = await scout(*argv, home=tmp_path)
    assert (code, out) == (125, b""), err
    assert err.decode() == (
        f"scout: scout at {guarded.target} wants a bearer token: "
        "--token-file PATH or $SCOUT_TOKEN\n"
    )
    code, _, err = await scout(*argv, env={"SCOUT_TOKEN": "not-" + TOKEN}, home=tmp_path)
    assert code == 125, err
    assert (
        err.decode()
        == f"scout: scout at {guarded.target} does not know this token (from $SCOUT_TOKEN)\n"
    )
    assert TOKEN.encode() not in err


async def test_a_missing_token_file_names_it_and_its_flag(tmp_path: Path) -> None:
    argv = ["exec", "--token-file", "/nope", "--target", "127.0.0.1:1", "local", "--", "true"]
    code, _, err = await scout(*argv, home=tmp_path)
    assert code == 125, err
    assert err.decode() == (
        "scout: cannot read the token file /nope: No such file or directory "
        "(--token-file PATH / $SCOUT_TOKEN)\n"
    )


# ---- no Stream allowed: Execute instead, and the real reason for a refusal -----------


async def test_a_caller_without_stream_gets_execute(guarded: Scout, tmp_path: Path) -> None:
    env = {"SCOUT_TOKEN": TOKEN}
    argv = ["exec", "--target", guarded.target, "--argv", "local", "--"]
    code, out, err = await scout(*argv, "echo", "hi; id", env=env, home=tmp_path)
    assert (code, out, err) == (0, b"hi; id\n", b"")
    code, out, _ = await scout(*argv, "cat", stdin=b"piped in\n", env=env, home=tmp_path)
    assert (code, out) == (0, b"piped in\n")


async def test_a_refusal_names_the_host_or_the_command(guarded: Scout, tmp_path: Path) -> None:
    env = {"SCOUT_TOKEN": TOKEN}
    target = ["--target", guarded.target]
    rm = ["exec", *target, "--argv", "local", "--", "rm", "-rf", "/"]
    code, _, err = await scout(*rm, env=env, home=tmp_path)
    assert code == 125, err
    assert err.decode() == (
        "scout: caller batch may not run argv 'rm -rf /' (commands: echo *, cat, sleep *) "
        "(the command did not run)\n"
    )
    echo = ["exec", *target, "--argv", "db1", "--", "echo", "x"]
    code, _, err = await scout(*echo, env=env, home=tmp_path)
    assert code == 125, err
    assert err.decode() == (
        "scout: caller batch may not run commands on 'db1' (hosts: local*) "
        "(the command did not run)\n"
    )


# ---- a timeout ----------------------------------------------------------------------


async def test_a_timeout_exits_124_and_says_it_was_stopped(
    open_scout: Scout, tmp_path: Path
) -> None:
    base = ["exec", "--target", open_scout.target, "--timeout", "1"]
    code, out, err = await scout(*base, "local", "--", "sleep 5", home=tmp_path)
    assert (code, out) == (124, b"")
    assert err.decode() == "scout: local: the command ran past its timeout (1s) and was stopped\n"
    code, out, err = await scout(*base, "local", "local2", "--", "sleep 5", home=tmp_path)
    assert (code, out) == (124, b"")
    lines = sorted(err.decode().splitlines())
    assert lines == [
        "local | scout: local: the command ran past its timeout (1s) and was stopped",
        "local2 | scout: local2: the command ran past its timeout (1s) and was stopped",
        "scout: 2 hosts: 0 ok, 2 timed out",
        "scout: timed out: local, local2",
    ]
    assert b"may have run" not in err


# ---- settings from the environment and a profile ------------------------------------


async def test_scout_ca_and_scout_tls_come_from_the_environment(
    tls_fake: tuple[FakeExec, str], pki: PKI, tmp_path: Path
) -> None:
    env = {"SCOUT_TARGET": tls_fake[1], "SCOUT_CA": str(pki.ca.bundle)}
    assert await scout("health", env=env, home=tmp_path) == (0, b"SERVING\n", b"")
    code, _, err = await scout(
        "health", env={**env, "SCOUT_CA": "", "SCOUT_TLS": "1"}, home=tmp_path
    )
    assert code == 125, err
    assert b"not signed by a CA this machine trusts" in err  # TLS, default roots


async def test_a_profile_file_holds_target_ca_and_token_file(
    tls_fake: tuple[FakeExec, str], guarded: Scout, pki: PKI, tmp_path: Path
) -> None:
    config = tmp_path / ".config" / "scout"
    config.mkdir(parents=True)
    (config / "batch.token").write_text(TOKEN + "\n")
    (config / "client.toml").write_text(
        f'[default]\ntarget = "{guarded.target}"\ntoken_file = "batch.token"\n\n'
        f'[fake]\ntarget = "{tls_fake[1]}"\nca = "{pki.ca.bundle}"\n'
    )
    code, out, _ = await scout(
        "exec", "--argv", "local", "--", "echo", "from the profile", home=tmp_path
    )
    assert (code, out) == (0, b"from the profile\n")
    assert await scout("health", "--profile", "fake", home=tmp_path) == (0, b"SERVING\n", b"")
    flag_wins = ["health", "--profile", "fake", "--target", guarded.target]
    assert (await scout(*flag_wins, home=tmp_path))[0] == 125  # TLS to scout's plaintext
    code, _, err = await scout("health", "--profile", "nope", home=tmp_path)
    assert code == 2
    assert (
        f"no profile 'nope' in {config / 'client.toml'} (profiles: default, fake)" in err.decode()
    )


# ---- one exit-code table, where people look -----------------------------------------


def test_the_exit_code_table_is_in_exec_help_and_the_readme() -> None:
    done = subprocess.run([SCOUT, "exec", "--help"], capture_output=True, timeout=30, check=True)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    shown = " ".join(done.stdout.decode().partition("exit codes:")[2].split())
    for exit_code, when in TABLE:
        assert f"| {exit_code} | {when} |" in readme, exit_code
        assert f"{exit_code} {' '.join(when.split())}" in shown, exit_code
    assert "worst reached, in this order: 255, 125, 3, 124, 2, 1, 4, 0" in shown
    assert "worst reached, in this order: 255, 125, 3, 124, 2, 1, 4, 0" in readme
    assert "| 4 | many hosts: every command exited 0, but some host's output" in readme
