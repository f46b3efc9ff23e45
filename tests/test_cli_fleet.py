"""`scout exec` on many hosts and `scout hosts`, against the scripted fake (tests/fakeexec.py).

The fake plays each host's script from the command (JSON); "after" steps fix the
order in which hosts finish, so no test depends on timing.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from client.cli import amain, parse_args
from client.fleetcli import OUTCOME_KEYS
from testkit.processes import read_until_closed

from .fakeexec import FakeExec

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(20)


def script(**hosts: list[list[Any]]) -> str:
    """The fake's per-host script; the key "any" stands for "*" (hosts not named)."""
    return json.dumps({("*" if name == "any" else name): steps for name, steps in hosts.items()})


async def cli(target: str, *argv: str) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    words = [argv[0], "--target", target, *argv[1:]]
    code = await amain(words, stdin=None, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# ---- telling hosts from the command ------------------------------------------


@pytest.mark.parametrize(
    ("argv", "hosts", "selector", "command", "fan_out"),
    [
        (["web1", "uptime"], ["web1"], "", "uptime", False),
        (["web1", "--", "uptime"], ["web1"], "", "uptime", False),
        (["web1", "web2", "--", "uptime", "-a"], ["web1", "web2"], "", "uptime -a", True),
        (["web*", "uptime"], ["web*"], "", "uptime", True),
        (["db[12]", "--", "uptime"], ["db[12]"], "", "uptime", True),
        (["-l", "role=web", "--", "uptime"], [], "role=web", "uptime", True),
        (["--selector=role=web", "db1", "--", "uptime"], ["db1"], "role=web", "uptime", True),
        (["-lrole=web", "--", "uptime"], [], "role=web", "uptime", True),
        (["--json", "web1", "--", "uptime"], ["web1"], "", "uptime", True),
        (["a", "--cwd", "/", "b", "--max-parallel", "3", "--", "x"], ["a", "b"], "", "x", True),
        # Without a `--` of ours, the command starts after the one host, as before.
        (["h", "ls", "-l"], ["h"], "", "ls -l", False),
        (["h", "ls", "-la", "--", "x"], ["h"], "", "ls -la -- x", False),
        (["h", "ls", "-l", "--", "x"], ["h"], "", "ls -l -- x", False),
        (["h", "--", "echo", "--", "x"], ["h"], "", "echo -- x", False),
        # With one, every other word before it is a host: a command's own `--` needs one first.
        (["web1", "sudo", "--", "id"], ["web1", "sudo"], "", "id", True),
    ],
)
def test_hosts_end_at_our_dashes_else_after_the_first_word(
    argv: list[str], hosts: list[str], selector: str, command: str, fan_out: bool
) -> None:
    args = parse_args(["exec", *argv])
    assert (args.hosts, args.selector, args.command, args.fan_out) == (
        hosts,
        selector,
        command,
        fan_out,
    )


def test_fan_out_options() -> None:
    args = parse_args(["exec", "web1", "--timeout", "5", "web2", "--max-parallel", "3", "--", "x"])
    assert (args.timeout, args.max_parallel, args.json) == (5.0, 3, False)
    assert parse_args(["exec", "web*", "x"]).max_parallel == 0


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["exec", "-l", "role=web", "uptime"], "-l needs --"),
        (["exec", "-l", "role=web", "web1", "uptime"], "-l needs --"),
        (["exec", "web1", "web2", "--tty", "--", "top"], "--tty"),
        (["exec", "web*", "--tty", "top"], "--tty"),
        (["exec", "--json", "--tty", "web1", "--", "top"], "--tty"),
        (["exec", "--max-parallel", "0", "web*", "x"], "at least 1"),
        (["exec", "--max-parallel", "many", "web*", "x"], "whole number"),
        (["exec", "--", "uptime"], "missing HOST"),
        (["exec", "web1", "web2", "--"], "missing COMMAND"),
        (["hosts", "role=web", "region=eu"], "one label selector at most"),
        (["hosts", "-l", "role=web", "region=eu"], "one label selector at most"),
        (["exec", "--max-failures", "0", "web*", "x"], "at least 1"),
        (["exec", "--max-output", "-5", "web*", "x"], "at least 1"),
    ],
)
def test_fan_out_usage_mistakes_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    assert says in err


# ---- output --------------------------------------------------------------------


async def test_lines_are_prefixed_whole_and_kept_on_their_stream(
    fake: tuple[FakeExec, str],
) -> None:
    command = script(
        web1=[
            ["stdout", "hel"],
            ["stderr", "warn"],
            ["after", "web2"],
            ["stdout", "lo\nwor"],
            ["stdout", "ld\nno newline"],
            ["stderr", "ing\n"],
        ],
        web2=[["stdout", "two\n"], ["stderr", "oops\n"]],
    )
    code, out, err = await cli(fake[1], "exec", "web1", "web2", "--", command)
    assert code == 0
    assert out == b"web2 | two\nweb1 | hello\nweb1 | world\nweb1 | no newline\n"
    assert err.splitlines() == [
        b"web2 | oops",
        b"web1 | warning",
        b"scout: 2 hosts: 2 ok",
    ]
    # Not a terminal: no progress line.
    assert b"\x1b" not in err
    request = fake[0].seen.many[0]
    assert request.stream_output
    assert list(request.hosts) == ["web1", "web2"]


async def test_a_long_line_is_cut_into_prefixed_pieces(fake: tuple[FakeExec, str]) -> None:
    from client.fleetcli import MAX_LINE

    command = script(web1=[["stdout", "x" * (MAX_LINE + 10)], ["stdout", "y\n"]])
    code, out, _ = await cli(fake[1], "exec", "web1", "--json", "--", "true")
    assert code == 0  # --json: the whole output in one object
    code, out, _ = await cli(fake[1], "exec", "web1", "-l", "role=nothing", "--", command)
    assert code == 0
    assert out == b"web1 | " + b"x" * MAX_LINE + b"\nweb1 | " + b"x" * 10 + b"y\n"


async def test_options_reach_the_request(fake: tuple[FakeExec, str]) -> None:
    argv = ["exec", "web*", "--timeout", "7", "--env", "A=1", "--cwd", "/srv"]
    code, _, _ = await cli(fake[1], *argv, "--max-parallel", "2", "-l", "region=eu", "--", "x")
    assert code == 0
    request = fake[0].seen.many[0]
    assert (list(request.hosts), request.selector, request.max_parallel) == (
        ["web*"],
        "region=eu",
        2,
    )
    inner = request.request
    assert (inner.command, dict(inner.env), inner.working_dir) == ("x", {"A": "1"}, "/srv")
    assert inner.timeout.ToNanoseconds() == 7_000_000_000
    assert (inner.pty, inner.stdin) == (False, b"")
    # --timeout is per host, not for the call (the other one is ListHosts', for the counts)
    assert sorted(fake[0].seen.time_remaining, key=str)[1:] == [None]


async def test_failures_get_a_line_and_the_summary_names_them(fake: tuple[FakeExec, str]) -> None:
    command = script(
        web1=[["exit", 1]],
        web2=[["after", "web1"], ["signal", "KILL"]],
        web3=[["after", "web2"], ["error", "UNAVAILABLE", False, "cannot reach web3"]],
        db1=[["after", "web3"], ["stdout", "fine\n"]],
    )
    code, out, err = await cli(fake[1], "exec", "web*", "db1", "db2", "--", command)
    assert code == 3
    assert out == b"db1 | fine\n"
    lines = err.decode().splitlines()
    assert lines[:4] == [
        "db2 | scout: host 'db2' is not in the inventory; closest: db1, web2 "
        "(the command did not run)",
        "web1 | scout: exited with status 1",
        "web2 | scout: killed by signal KILL",
        "web3 | scout: cannot reach web3 (the command did not run)",
    ]
    assert lines[4:] == [
        "scout: 5 hosts: 1 ok, 1 exited non-zero, 1 killed by a signal, 2 could not run",
        "scout: exited non-zero: web1",
        "scout: killed by a signal: web2",
        "scout: could not run: db2, web3",
    ]


# ---- exit status ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "code"),
    [
        ({"any": [["exit", 0]]}, 0),
        ({"web2": [["exit", 1]]}, 1),
        ({"web2": [["exit", 255]]}, 1),
        ({"web2": [["signal", "TERM"]]}, 2),
        ({"web2": [["error", "DEADLINE_EXCEEDED", True, "web2 timed out"]]}, 124),
        ({"web1": [["signal", "TERM"]], "web2": [["error", "DEADLINE_EXCEEDED", True, "t"]]}, 124),
        ({"web1": [["exit", 1]], "web2": [["signal", "TERM"]]}, 2),
        ({"web2": [["error", "ABORTED", True, "lost web2"]]}, 3),
        ({"web1": [["exit", 1]], "web2": [["error", "FAILED_PRECONDITION", False, "key"]]}, 3),
        (
            {
                "web1": [["error", "DEADLINE_EXCEEDED", True, "t"]],
                "web2": [["error", "ABORTED", True, "l"]],
            },
            3,
        ),
        (
            {
                "web1": [["exit", 0]],
                "web2": [["after", "web1"], ["abort", "UNAVAILABLE", "proxy reset"]],
            },
            255,
        ),
    ],
)
async def test_exit_status_is_the_worst_failure_class(
    fake: tuple[FakeExec, str], steps: dict[str, list[list[Any]]], code: int
) -> None:
    got, _, err = await cli(fake[1], "exec", "web1", "web2", "--", script(**steps))
    assert got == code, err


async def test_unknown_host_is_class_3_and_the_servers_suggestion_is_printed(
    fake: tuple[FakeExec, str],
) -> None:
    code, _, err = await cli(fake[1], "exec", "web1", "wbe2", "--", "true")
    assert code == 3
    assert b"wbe2 | scout: host 'wbe2' is not in the inventory; closest: web2" in err


async def test_a_failed_call_exits_255_or_125_after_summing_up_what_was_heard(
    fake: tuple[FakeExec, str],
) -> None:
    command = script(web1=[["exit", 0]], web2=[["after", "web1"], ["abort", "INTERNAL", "bug"]])
    code, out, err = await cli(fake[1], "exec", "web1", "web2", "--", command)
    assert (code, out) == (255, b"")
    assert err.decode().splitlines() == [
        "scout: 1 host: 1 ok",
        "scout: bug (commands may have run)",
    ]
    code, out, err = await cli(fake[1], "exec", "-l", "role=nothing", "--", "true")
    assert (code, out) == (125, b"")  # nothing ran
    assert err == b"scout: no host matches the targets (no command ran)\n"
    code, _, err = await cli(fake[1], "exec", "-l", "role", "--", "true")
    assert code == 125
    assert err.startswith(b"scout: malformed selector")


# ---- --json ------------------------------------------------------------------------


async def test_json_prints_one_object_per_host(fake: tuple[FakeExec, str]) -> None:
    command = script(
        web1=[["stdout", "caf\u00e9\n"], ["stderr", "w\n"], ["exit", 2]],
        web2=[["after", "web1"], ["error", "DEADLINE_EXCEEDED", True, "web2 timed out"]],
    )
    code, out, err = await cli(fake[1], "exec", "--json", "web1", "web2", "gone", "--", command)
    assert code == 3
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert all(tuple(r) == OUTCOME_KEYS for r in records)
    gone_error = {"code": "NOT_FOUND", "message": records[0]["error"]["message"]}
    timed_out = {"code": "DEADLINE_EXCEEDED", "message": "web2 timed out"}
    expected = [  # in OUTCOME_KEYS order
        ("gone", None, None, "", "", False, False, gone_error, False),
        ("web1", 2, None, "caf\u00e9\n", "w\n", False, False, None, True),  # null, not ""
        ("web2", None, None, "", "", False, False, timed_out, True),
    ]
    assert records == [dict(zip(OUTCOME_KEYS, row, strict=True)) for row in expected]
    assert records[0]["error"]["message"].startswith("host 'gone' is not in the inventory")
    # No per-host lines in JSON mode: only the summary, on stderr.
    assert err.decode().splitlines()[0] == (
        "scout: 3 hosts: 0 ok, 1 exited non-zero, 1 timed out, 1 could not run"
    )
    assert not fake[0].seen.many[0].stream_output  # each host's output whole, in its object


async def test_json_with_one_host_still_goes_through_execute_many(
    fake: tuple[FakeExec, str],
) -> None:
    code, out, _ = await cli(fake[1], "exec", "web1", "--json", "--", "true")
    assert code == 0
    assert json.loads(out)["stdout"] == "web1\n"
    assert len(fake[0].seen.many) == 1


# ---- scout hosts -------------------------------------------------------------------

TABLE = """\
NAME  ADDRESS           PORT  USER      LABELS                         VIA                       CONNECTIONS  CHANNELS
db1   10.0.0.5          22    postgres  region=eu,role=db              bastion                   1            0
web1  10.0.0.1          22    deploy    region=eu,role=web             -                         2            1
web2  10.0.0.2          2222  deploy    region=us,role=web             -                         0            0
web3  web3.example.net  22    deploy    canary=yes,region=eu,role=web  bastion,admin@jump2:2200  0            0
"""  # noqa: E501


async def test_hosts_prints_a_table(fake: tuple[FakeExec, str]) -> None:
    code, out, err = await cli(fake[1], "hosts")
    assert (code, err) == (0, b"")
    assert out.decode() == TABLE


async def test_hosts_selector_and_json(fake: tuple[FakeExec, str]) -> None:
    code, out, _ = await cli(fake[1], "hosts", "role=web,region=eu", "--json")
    assert code == 0
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert records == [
        {
            "name": "web1",
            "address": "10.0.0.1",
            "port": 22,
            "user": "deploy",
            "labels": {"role": "web", "region": "eu"},
            "via": [],
            "connections_open": 2,
            "channels_in_use": 1,
        },
        {
            "name": "web3",
            "address": "web3.example.net",
            "port": 22,
            "user": "deploy",
            "labels": {"role": "web", "region": "eu", "canary": "yes"},
            "via": ["bastion", "admin@jump2:2200"],
            "connections_open": 0,
            "channels_in_use": 0,
        },
    ]
    assert fake[0].seen.listings[0].selector == "role=web,region=eu"
    code, out, err = await cli(fake[1], "hosts", "-l", "role")
    assert (code, out) == (125, b"")
    assert err.startswith(b"scout: malformed selector")


# ---- a real terminal, a real Ctrl-C ------------------------------------------------


async def start_cli(target: str, *argv: str, stderr: int) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOUT_")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client.cli",
        "exec",
        "--target",
        target,
        *argv,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )


async def test_progress_line_only_when_stderr_is_a_terminal(fake: tuple[FakeExec, str]) -> None:
    # web3 ends last and after a pause, so the ListHosts total is in by then.
    command = script(
        web1=[["stdout", "a\n"]],
        web2=[["after", "web1"], ["exit", 1]],
        web3=[["after", "web2"], ["sleep", 1.0], ["stdout", "c\n"]],
    )
    master, slave = pty.openpty()
    try:
        proc = await start_cli(fake[1], "web*", "--", command, stderr=slave)
    finally:
        os.close(slave)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        seen = await asyncio.to_thread(read_until_closed, master)
    finally:
        os.close(master)
    assert proc.returncode == 1
    assert out == b"web1 | a\nweb3 | c\n"
    terminal = seen.decode()
    progress = r"\r\x1b\[Kscout: 2/3 done, 1 failed, 1 running or queued"  # no --max-parallel
    assert re.search(progress, terminal), terminal
    # Cleared before each line written to it, and for good before the summary.
    assert "\r\x1b[Kweb2 | scout: exited with status 1\r\n" in terminal
    summary = "scout: 3 hosts: 2 ok, 1 exited non-zero\r\nscout: exited non-zero: web2\r\n"
    assert terminal.endswith("\r\x1b[K" + summary)
    assert fake[0].seen.listings[0].hosts == ["web*"]


async def test_ctrl_c_cancels_the_fan_out(fake: tuple[FakeExec, str]) -> None:
    command = script(web1=[["exit", 1]], any=[["sleep", 30]])
    proc = await start_cli(fake[1], "web*", "--", command, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 10)
    assert line == b"web1 | scout: exited with status 1\n"
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert (proc.returncode, out) == (130, b"")
    await asyncio.wait_for(fake[0].seen.cancelled.wait(), 5)  # the server heard the cancel
    assert err.decode().splitlines() == [
        "scout: 3 hosts: 0 ok, 1 exited non-zero, 2 stopped by Ctrl-C",
        "scout: exited non-zero: web1",
        "scout: stopped by Ctrl-C (running, or not yet started): web2, web3",
        "scout: interrupted; the server stops the commands still running",
    ]


def test_every_failure_class_is_a_row_of_the_exit_code_table() -> None:
    from client.exitcodes import TABLE
    from client.fleetcli import SEVERITY, FailureClass

    codes = {code for code, _ in TABLE}
    assert {str(kind.value) for kind in FailureClass} <= codes
    assert set(SEVERITY) == set(FailureClass)
