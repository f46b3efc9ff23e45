"""Commands as argv: the patterns, the two bypasses they close, and argv byte for byte.

The bypasses run on the in-process SSH server (real /bin/sh commands on this machine),
with a marker file that a command which ran would have made. The quoting runs on the
real OpenSSH sshd (testkit/sshd.py), logging in as one user per login shell Debian
ships (users made by login_user, as root), and the remote program is python printing
its argv NUL-separated.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scout.v1 import exec_pb2
from server.argvpolicy import argv_matches, split_pattern
from server.audit import capped_argv
from server.callers import hash_token
from server.config import CallerConfig, Config, ConfigError, HostConfig
from server.configfile import load, parse
from testkit.scripted import ScriptedServer
from testkit.sshd import OpenSSHServer, login_user

from .scoutd import Scout, config, running_scout, started

TOKEN = "argv-caller-0f1e2d3c4b5a69788796"
# Each shell as the login shell: sshd runs `SHELL -c LINE` with scout's line.
SHELLS = {
    "sh": "/bin/sh",
    "dash": "/bin/dash",
    "bash": "/bin/bash",
    "zsh": "/bin/zsh",
    "ksh": "/bin/ksh93",  # Debian package ksh
    "mksh": "/bin/mksh",
}
PRINT_ARGV = (
    "import os, sys; "
    "sys.stdout.buffer.write(b''.join(os.fsencode(a) + b'\\0' for a in sys.argv[1:]))"
)
HARD = [
    "",
    " ",
    "two words",
    "'",
    "it's",
    '"',
    'say "hi"',
    "a\nb",
    "\n",
    "tab\there",
    "$(echo ran)",
    "`echo ran`",
    "${IFS}",
    "$HOME",
    "*",
    "?",
    "[a-z]*",
    "~",
    "~root",
    "-n",
    "-e",
    "--",
    "-",
    "\\",
    "\\n",
    "!",
    "!!",
    "#",
    ";",
    "&&",
    "|",
    "> out",
    "<",
    "(",
    "{a,b}",
    "A=1",
    "=ls",
    "%1",
    "é日本",
    "\x01\x7f",
    "'\"'\"'",
]


# ---- patterns --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "argv", "allowed"),
    [
        ("uptime", ["uptime"], True),
        ("uptime", ["uptime", "-p"], False),
        ("uptime", ["/usr/bin/uptime"], False),
        ("systemctl status *", ["systemctl", "status", "nginx"], True),
        ("systemctl status *", ["systemctl", "status", "a;b c"], True),  # one element
        ("systemctl status *", ["systemctl", "status", "a", "b"], False),
        ("systemctl status *", ["systemctl", "status"], False),
        ("systemctl status *", ["systemctl", "Status", "x"], False),  # case sensitive
        ("cat /var/log/*", ["cat", "/var/log/a/b"], True),  # no `/` special-casing
        ("journalctl -u * ...", ["journalctl", "-u", "x"], True),
        ("journalctl -u * ...", ["journalctl", "-u", "x", "-n", "5"], True),
        ("journalctl -u * ...", ["journalctl", "-u"], False),
        ("'my prog' 'a b'", ["my prog", "a b"], True),
        ("echo *", ["echo", "x; touch M"], True),  # harmless: one argument to echo
        ("echo *", ["echo", "x", ";", "touch", "M"], False),
        # a wildcard never matches a `..` path component: it would lead out of the pattern
        ("cat /var/log/*", ["cat", "/var/log/../../etc/shadow"], False),
        ("cat /var/log/*", ["cat", "/var/log/a/.."], False),
        ("cat /var/log/*", ["cat", "/var/log/a..b"], True),  # not a component
        ("echo *", ["echo", ".."], False),
        ("cat ../*", ["cat", "../x"], True),  # the pattern's own `..`
        ("cat ../*", ["cat", "../../x"], False),
    ],
)
def test_argv_patterns(pattern: str, argv: list[str], allowed: bool) -> None:
    assert argv_matches(pattern, argv) is allowed


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("'unclosed", "is not a shell word list"),
        ("", "expected a list of strings"),
        ("   ", "has no words"),
        ("... uptime", "`...` may only be the last word"),
        ("a ... b", "`...` may only be the last word"),
    ],
)
def test_a_bad_pattern_stops_the_config_naming_the_caller(
    tmp_path: Path, entry: str, says: str
) -> None:
    path = tmp_path / "scout.toml"
    path.write_text(
        f'[[callers]]\nname = "bot"\ntoken_sha256 = "{hash_token(TOKEN)}"\n'
        f"commands = [{_toml_string(entry)}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "callers[bot].commands" in str(info.value) and says in str(info.value)


def _toml_string(text: str) -> str:
    """text as a TOML literal string (no escapes needed for these)."""
    return f"'{text}'" if "'" not in text else f'"{text}"'


def test_env_and_working_dirs_load_and_start_up_names_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scout.toml"
    path.write_text(
        f'[[callers]]\nname = "bot"\ntoken_sha256 = "{hash_token(TOKEN)}"\n'
        'commands = ["systemctl status *", "uptime"]\n'
        'env = ["LANG", "TZ", "LD_PRELOAD"]\nworking_dirs = ["/srv/*"]\n'
        f'[[callers]]\nname = "ops"\ntoken_sha256 = "{hash_token("ops")}"\n'
    )
    caplog.set_level(logging.WARNING)
    bot, ops = load(path).callers
    assert (bot.commands, bot.env, bot.working_dirs) == (
        ("systemctl status *", "uptime"),
        ("LANG", "TZ", "LD_PRELOAD"),
        ("/srv/*",),
    )
    assert bot.restricted and not ops.restricted
    assert (ops.env, ops.working_dirs) == (None, None)  # unset: any, for an unrestricted one
    assert "callers[bot].env lists LD_PRELOAD" in caplog.text
    assert "dynamic loader" in caplog.text
    path.write_text(
        f'[[callers]]\nname = "bot"\ntoken_sha256 = "{hash_token(TOKEN)}"\nenv = ["A-B"]\n'
    )
    with pytest.raises(ConfigError, match=r"callers\[bot\]\.env: 'A-B' is not a variable name"):
        load(path)


def test_split_pattern_keeps_quoted_words_whole() -> None:
    assert split_pattern("""grep -e 'a b' "c d" ...""") == ("grep", "-e", "a b", "c d", "...")


# ---- bounds -----------------------------------------------------------------------------


async def test_argv_is_bounded_like_every_field(shell_server: ScriptedServer) -> None:
    cfg = config({"h": shell_server.host_config("h")}, exec={"max_command_bytes": 1000})
    huge = "x" * 2000
    async with running_scout(cfg) as s:
        for argv, says in (
            (["echo", "a\0b"], "argv: element 1 contains a NUL byte"),
            (["", "x"], "argv: the first element, the program, must not be empty"),
            (["true"] * 4097, "argv: at most 4096 elements"),
            (["echo", huge], "argv: at most 1000 bytes on this server (all elements together)"),
            (["echo"] + ["é" * 100] * 6, "argv: at most 1000 bytes"),  # 606 chars, 1204 bytes
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.execute(host="h", argv=argv)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, argv[:3]
            details = info.value.details() or ""
            assert details.startswith(says) and huge not in details, details
        r = await s.execute(host="h", argv=["echo"] + ["é" * 100] * 4)  # 804 bytes: fits
        assert r.exit_code == 0


def test_the_audit_line_keeps_a_bounded_argv() -> None:
    assert capped_argv(["echo", "a b"]) == ["echo", "a b"]
    kept = capped_argv(["x"] * 5000)
    assert len(kept) == 4097 and kept[-1] == "... (904 more elements)"
    kept = capped_argv(["a" * 200_000, "b"])
    assert kept[0].endswith("... (200000 chars)") and len(kept[0]) < 110_000
    assert kept[1:] == ["... (1 more elements)"]


# ---- the two bypasses ------------------------------------------------------------------


def guarded(server: ScriptedServer, *callers: CallerConfig) -> Config:
    return dataclasses.replace(config({"h": server.host_config("h")}), callers=callers)


def caller(**policy: Any) -> CallerConfig:
    return CallerConfig(name="bot", token_sha256=hash_token(TOKEN), hosts=("h",), **policy)


async def call(s: Scout, **fields: Any) -> exec_pb2.ExecuteResponse:
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    request = exec_pb2.ExecuteRequest(host="h", **fields)
    response: exec_pb2.ExecuteResponse = await s.stub.Execute(
        request, metadata=metadata, timeout=20
    )
    return response


async def refused(s: Scout, says: str, **fields: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(s, **fields)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value
    assert says in (info.value.details() or ""), info.value.details()
    assert started(info.value) == "false"


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """A file that only a command the policy refuses would make: a test that takes it
    fails if the file exists at its end."""
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a refused command ran: it made the marker"


async def test_shell_metacharacters_through_a_glob_are_refused(
    shell_server: ScriptedServer, tmp_path: Path, marker: Path
) -> None:
    async with running_scout(guarded(shell_server, caller(commands=("echo *",)))) as s:
        for line in (
            f"echo x; touch {marker}",
            f"echo x && touch {marker}",
            f"echo x | touch {marker}",
            f"echo $(touch {marker})",
            f"echo `touch {marker}`",
            f"echo x\ntouch {marker}",
            f"echo x\rtouch {marker}\n",
        ):
            await refused(s, "may send only argv", command=line)
        await refused(s, "commands: echo *", argv=["echo", "x", ";", "touch", str(marker)])
        await refused(s, "commands: echo *", argv=["sh", "-c", f"touch {marker}"])
        # As argv the whole line is one argument of echo: printed, never run.
        for word in (f"x; touch {marker}", f"$(touch {marker})", f"x\ntouch {marker}"):
            r = await call(s, argv=["echo", word])
            assert (r.exit_code, r.stdout) == (0, f"{word}\n".encode())


async def test_bash_env_past_an_exact_rule_is_refused(
    shell_server: ScriptedServer, tmp_path: Path, marker: Path
) -> None:
    evil = tmp_path / "evil.sh"
    evil.write_text(f"touch {marker}\n")
    report = tmp_path / "report"  # a bash script: bash reads $BASH_ENV before running it
    report.write_text("#!/bin/bash\necho report\n")
    report.chmod(0o755)
    policy = caller(commands=(str(report),), env=("LANG", "BASH_ENV"))  # listed, even
    async with running_scout(guarded(shell_server, policy)) as s:
        await refused(s, "may send only argv", command=str(report), env={"BASH_ENV": str(evil)})
        for name in ("BASH_ENV", "ENV", "LD_PRELOAD", "PATH", "SHELLOPTS", "PS4", "IFS"):
            await refused(s, f"may not set env {name}", argv=[str(report)], env={name: str(evil)})
        await refused(s, "env: LANG, BASH_ENV", argv=[str(report)], env={"HOME": "/tmp"})
        r = await call(s, argv=[str(report)], env={"LANG": "C"})  # what the rule allows
        assert (r.exit_code, r.stdout) == (0, b"report\n")


async def test_a_pty_that_would_make_an_allowed_pager_run_a_shell_is_refused(
    shell_server: ScriptedServer, tmp_path: Path, marker: Path
) -> None:
    # With a terminal, `less` (systemctl's and journalctl's pager too) reads commands
    # from it, and `!cmd` runs a shell: stdin alone, through Execute, was enough.
    page = tmp_path / "app.log"
    page.write_text("line\n")
    assert shutil.which("less"), "the pager is /usr/bin/less (Debian package less)"
    policy = caller(commands=(f"less {tmp_path}/*",), stream=True)
    async with running_scout(guarded(shell_server, policy)) as s:
        escape = f"!touch {marker}\nq".encode()
        await refused(s, "pty", argv=["less", str(page)], pty=True, stdin=escape)
        r = await call(s, argv=["less", str(page)], stdin=escape)  # no terminal: a cat
        assert (r.exit_code, r.stdout) == (0, b"line\n")


async def test_a_wildcard_does_not_lead_out_of_its_directory_through_dot_dot(
    shell_server: ScriptedServer, tmp_path: Path, marker: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    async with running_scout(guarded(shell_server, caller(commands=(f"touch {inbox}/*",)))) as s:
        await refused(s, "commands: touch", argv=["touch", f"{inbox}/../MARKER"])
        await refused(s, "commands: touch", argv=["touch", f"{inbox}/x/../../MARKER"])
        r = await call(s, argv=["touch", f"{inbox}/ok"])  # what the rule allows
        assert r.exit_code == 0 and (inbox / "ok").exists()


async def test_an_empty_commands_list_allows_no_command(
    shell_server: ScriptedServer, tmp_path: Path, marker: Path
) -> None:
    # `commands = []`, like `hosts = []`, `env = []` and `working_dirs = []`, is an empty
    # allow-list; it made the caller unrestricted: any shell line.
    path = tmp_path / "scout.toml"
    path.write_text(
        f'[[callers]]\nname = "bot"\ntoken_sha256 = "{hash_token(TOKEN)}"\n'
        'hosts = ["h"]\ncommands = []\n'
    )
    (policy,) = load(path).callers
    assert policy.restricted
    async with running_scout(guarded(shell_server, policy)) as s:
        await refused(s, "may send only argv", command=f"touch {marker}")
        await refused(s, "commands: none", argv=["touch", str(marker)])
        listed = await s.stub.ListHosts(
            exec_pb2.ListHostsRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
        assert [h.name for h in listed.hosts] == ["h"]  # a caller that only lists hosts


async def test_an_unrestricted_caller_with_env_and_working_dirs_is_held_to_them(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    policy = caller(env=("LANG",), working_dirs=(str(tmp_path),))
    async with running_scout(guarded(shell_server, policy)) as s:
        r = await call(s, command="pwd; echo $LANG", env={"LANG": "C"}, working_dir=str(tmp_path))
        assert r.stdout == f"{tmp_path}\nC\n".encode()
        r = await call(s, argv=["pwd"], working_dir=str(tmp_path))
        assert r.stdout == f"{tmp_path}\n".encode()
        await refused(s, "env: LANG", command="true", env={"TZ": "UTC"})
        await refused(s, "working_dirs:", command="true", working_dir="/")
    async with running_scout(guarded(shell_server, caller())) as s:  # unset: any
        r = await call(s, command="echo $PATH", env={"PATH": "/x"}, working_dir="/")
        assert r.stdout == b"/x\n"


# ---- argv byte for byte, on every login shell ------------------------------------------


@pytest.fixture(scope="module")
def shell_hosts(openssh: OpenSSHServer) -> dict[str, HostConfig]:
    """One inventory host per login shell, all on the one sshd (one user per shell)."""
    if os.geteuid() != 0:
        pytest.skip("a login user per shell needs root (useradd); CI runs as root")
    hosts = {}
    for name, shell in SHELLS.items():
        if not Path(shell).exists():
            pytest.fail(f"{shell} is missing: apt-get install {name} (see .ci/run)")
        hosts[name] = dataclasses.replace(openssh.host_config(name), user=login_user(shell))
    return hosts


@pytest.fixture
async def shells(shell_hosts: dict[str, HostConfig]) -> AsyncIterator[Scout]:
    async with running_scout(config(shell_hosts)) as s:
        yield s


def python3() -> str:
    found = shutil.which("python3", path="/usr/bin:/bin")
    assert found, "the remote program is /usr/bin/python3 (Debian package python3)"
    return found


def expected(argv: list[str]) -> bytes:
    return b"".join(word.encode() + b"\0" for word in argv)


async def test_argv_reaches_the_program_byte_for_byte_on_every_login_shell(
    shells: Scout,
) -> None:
    program = [python3(), "-c", PRINT_ARGV]
    for name in SHELLS:
        r = await shells.execute(host=name, argv=[*program, *HARD])
        assert (r.exit_code, r.stderr) == (0, b""), (name, r.stderr)
        assert r.stdout == expected(HARD), name
        # env and working_dir go in front, and change nothing about argv
        r = await shells.execute(
            host=name, argv=[*program, *HARD], env={"LANG": "C", "X": "'$(x)'"}, working_dir="/"
        )
        assert r.stdout == expected(HARD), name


_argv_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"))


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run and in CI
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(argv=st.lists(_argv_text, max_size=8), shell=st.sampled_from(["bash", "dash"]))
async def test_random_argv_reaches_the_program_through_bash_and_dash(
    shells: Scout, argv: list[str], shell: str
) -> None:
    program = [python3(), "-c", PRINT_ARGV]
    r = await shells.execute(host=shell, argv=[*program, *argv])
    assert (r.exit_code, r.stdout) == (0, expected(argv)), r.stderr


# ---- the README's worked example -------------------------------------------------------


def readme_policy() -> CallerConfig:
    """The `[[callers]]` of the README's worked example, with a token of ours."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("A worked example:", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    block = block.replace('"9f86d0..."', f'"{hash_token(TOKEN)}"')
    (policy,) = parse(tomllib.loads(block), Path()).callers
    return policy


async def test_the_readmes_worked_example_does_what_its_table_says(
    shell_server: ScriptedServer,
) -> None:
    policy = dataclasses.replace(readme_policy(), hosts=("h",))  # the table's web1
    runs: list[dict[str, Any]] = [
        {"argv": ["systemctl", "status", "nginx"]},
        {"argv": ["systemctl", "status", "nginx; reboot"]},
        {"argv": ["journalctl", "-u", "nginx", "--since", "1 hour ago"]},
        {"argv": ["uptime"], "env": {"LANG": "C"}, "working_dir": "/srv/app"},
    ]
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"command": "systemctl status nginx"}, "may send only argv"),
        ({"argv": ["systemctl", "restart", "nginx"]}, "commands:"),
        ({"argv": ["uptime", "-p"]}, "commands:"),
        ({"argv": ["uptime"], "env": {"TZ": "UTC", "HOME": "/tmp"}}, "(env: LANG, TZ"),
        ({"argv": ["uptime"], "env": {"LD_PRELOAD": "/tmp/x.so"}}, "dynamic loader"),
        ({"argv": ["uptime"], "env": {"BASH_ENV": "/tmp/x"}}, "shell starts"),
        ({"argv": ["uptime"], "working_dir": "/etc"}, "working_dirs: /srv/*"),
        ({"argv": ["uptime"], "working_dir": "/srv/../etc"}, "working_dirs: /srv/*"),
        ({"command": "uptime", "argv": ["uptime"]}, "may send only argv"),
        ({}, "may send only argv"),
    ]
    async with running_scout(guarded(shell_server, policy)) as s:
        for fields in runs:
            r = await call(s, **fields)  # ran: the exit code is the program's (or 125, 127)
            assert r.exit_code in (0, 1, 3, 4, 125, 127), (fields, r.stderr)
        for fields, says in refusals:
            await refused(s, says, **fields)
