"""`scout exec` on many hosts as people run it (the console script) against a live scout:
output never cut in silence, stdin to every host, --json's nulls, the progress line's
counts, --max-failures, exclusions, and `scout hosts` with names and globs.

scout runs in this process (tests/scoutd.py) with four names for the in-process SSH
host (testkit/scripted.py), so the commands are real /bin/sh processes; the server's
output cap is lowered to CAP bytes so a cut is cheap to make.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.fanoutinput import MAX_STDIN
from testkit.processes import read_until_closed
from testkit.scripted import ScriptedServer

from .scoutd import Scout, config, running_scout

SCOUT = str(Path(sys.executable).parent / "scout")
CAP = 1000  # the server's [exec] max_output_bytes here
HOSTS = ("web1", "web2", "web3", "web4")
LINE = "abcdefghijklmnopqrstuvwxyz"  # 27 bytes a line: CAP cuts the 38th after one byte
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def scout(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    hosts = {name: shell_server.host_config(name) for name in HOSTS}
    async with running_scout(config(hosts, exec={"max_output_bytes": CAP})) as s:
        yield s


def _env(home: Path, target: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "XDG_"))}
    return {**clean, "HOME": str(home), "SCOUT_TARGET": target}


async def run(s: Scout, home: Path, *argv: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    """Run the scout console script against s; stdin is a pipe that ends."""
    proc = await asyncio.create_subprocess_exec(
        SCOUT,
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(home, s.target),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def fan_out(
    s: Scout, home: Path, parallel: int, command: str, stderr: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """Start `scout exec 'web*' --max-parallel N -- command` against s, left running."""
    return await asyncio.create_subprocess_exec(
        *(SCOUT, "exec", "web*", "--max-parallel", str(parallel), "--", command),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env=_env(home, s.target),
    )


# ---- output that is never silently cut ------------------------------------------------


async def test_a_cut_host_is_named_and_the_run_exits_4(scout: Scout, tmp_path: Path) -> None:
    command = f"yes {LINE} | head -n 100"  # 2700 bytes
    code, out, err = await run(scout, tmp_path, "exec", "web1", "web2", "--", command)
    assert code == 4, err
    for host in ("web1", "web2"):
        lines = [x for x in out.decode().splitlines() if x.startswith(f"{host} | ")]
        assert lines == [f"{host} | {LINE}"] * 37 + [f"{host} | a"]  # the cut line, cut
    said = err.decode().splitlines()
    assert "web1 | scout: stdout cut at the output cap after 1000 of 2700 bytes" in err.decode()
    assert said[-2:] == [
        "scout: 2 hosts: 2 ok; output cut on 2",
        "scout: output cut at the output cap: web1 (stdout), web2 (stdout)",
    ]
    code, out, err = await run(scout, tmp_path, "exec", "--json", "web1", "web2", "--", command)
    assert code == 4
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["stdout_truncated"], len(r["stdout"])) for r in records] == [(True, CAP)] * 2


async def test_a_failure_outranks_a_cut(scout: Scout, tmp_path: Path) -> None:
    command = f"yes {LINE} | head -n 100; exit 1"
    code, _, err = await run(scout, tmp_path, "exec", "web1", "web2", "--", command)
    assert code == 1
    assert "scout: 2 hosts: 0 ok, 2 exited non-zero; output cut on 2" in err.decode()


async def test_max_output_sets_the_cap_up_to_the_servers(scout: Scout, tmp_path: Path) -> None:
    command = f"yes {LINE} | head -n 100"
    argv = ["exec", "--json", "web1", "web2", "--max-output"]
    code, out, _ = await run(scout, tmp_path, *argv, "100", "--", command)
    assert code == 4
    assert {len(json.loads(line)["stdout"]) for line in out.splitlines()} == {100}
    code, out, _ = await run(scout, tmp_path, *argv, "5000000", "--", command)
    assert code == 4  # lowered to the server's maximum
    assert {len(json.loads(line)["stdout"]) for line in out.splitlines()} == {CAP}
    code, out, _ = await run(scout, tmp_path, *argv, "270", "--", f"yes {LINE} | head -n 10")
    assert code == 0  # all of it fits: nothing cut
    code, out, err = await run(
        scout, tmp_path, "exec", "web1", "--max-output", "10", "--", "echo 0123456789abcdef"
    )
    assert (code, out) == (0, b"0123456789")  # one host: the command's own code, and a note
    assert err == b"scout: stdout cut at the output cap (17 bytes written in all)\n"


# ---- stdin goes to every host --------------------------------------------------------


async def test_piped_stdin_reaches_every_host(scout: Scout, tmp_path: Path) -> None:
    code, out, err = await run(
        scout, tmp_path, "exec", "web1", "web2", "--", "cat", stdin=b"x\ny\n"
    )
    assert code == 0, err
    assert sorted(out.decode().splitlines()) == ["web1 | x", "web1 | y", "web2 | x", "web2 | y"]
    code, out, _ = await run(
        scout, tmp_path, "exec", "-n", "web1", "web2", "--", "cat", stdin=b"x\n"
    )
    assert (code, out) == (0, b"")  # -n: no stdin


async def test_too_much_stdin_is_refused_before_anything_runs(scout: Scout, tmp_path: Path) -> None:
    data = b"z" * (MAX_STDIN + 1)
    code, out, err = await run(
        scout, tmp_path, "exec", "web1", "web2", "--", "touch ran", stdin=data
    )
    assert (code, out) == (125, b"")
    assert err.decode().startswith(f"scout: stdin is more than {MAX_STDIN} bytes")
    assert err.decode().endswith("(nothing ran)\n")


# ---- --json -----------------------------------------------------------------------------


async def test_json_signal_is_null_for_a_normal_exit(scout: Scout, tmp_path: Path) -> None:
    code, out, _ = await run(scout, tmp_path, "exec", "--json", "web1", "--", "true")
    assert code == 0
    assert json.loads(out)["signal"] is None
    code, out, _ = await run(scout, tmp_path, "exec", "--json", "web1", "--", "kill -TERM $$")
    assert (code, json.loads(out)["signal"]) == (2, "TERM")


# ---- --max-failures and exclusions -------------------------------------------------------


async def test_max_failures_starts_no_new_host(scout: Scout, tmp_path: Path) -> None:
    argv = ["exec", "web*", "--max-parallel", "1", "--max-failures", "1", "--", "exit 3"]
    code, _, err = await run(scout, tmp_path, *argv)
    assert code == 3
    lines = err.decode().splitlines()
    assert lines[-3:] == [
        "scout: 4 hosts: 0 ok, 1 exited non-zero, 3 not started",
        "scout: exited non-zero: web1",
        "scout: not started: web2, web3, web4",
    ]
    assert (
        "web2 | scout: not started: 1 failures (max_failures 1) (the command did not run)" in lines
    )
    code, out, _ = await run(scout, tmp_path, "exec", "--json", *argv[1:])
    records = {r["host"]: r for r in map(json.loads, out.splitlines())}
    assert records["web4"]["error"]["code"] == "ABORTED"
    assert records["web4"]["may_have_run"] is False


async def test_exclusions_in_exec_and_hosts(scout: Scout, tmp_path: Path) -> None:
    code, out, _ = await run(scout, tmp_path, "exec", "web*", "!web2", "!web[34]", "--", "echo hi")
    assert (code, out) == (0, b"web1 | hi\n")
    code, out, _ = await run(scout, tmp_path, "exec", "!web1", "--", "echo hi")  # alone: all but
    assert (code, sorted(out.splitlines())) == (0, [b"web2 | hi", b"web3 | hi", b"web4 | hi"])
    code, out, _ = await run(scout, tmp_path, "hosts", "--names", "web*", "!web3")
    assert (code, out) == (0, b"web1\nweb2\nweb4\n")


async def test_hosts_takes_names_globs_and_a_selector(scout: Scout, tmp_path: Path) -> None:
    code, out, err = await run(scout, tmp_path, "hosts", "web1", "web[34]")
    assert (code, err) == (0, b"")
    assert [line.split()[0] for line in out.decode().splitlines()] == [
        "NAME",
        "web1",
        "web3",
        "web4",
    ]
    code, out, err = await run(scout, tmp_path, "hosts", "--json", "web2", "nosuch")
    assert (code, [json.loads(x)["name"] for x in out.splitlines()]) == (1, ["web2"])
    assert err == b"scout: nosuch: no such host (or not one this caller may use)\n"
    code, out, _ = await run(scout, tmp_path, "hosts", "--names", "-l", "role")
    assert (code, out) == (0, b"")  # a bare KEY selector goes with -l (no host has labels)


# ---- a terminal: progress, and Ctrl-C -----------------------------------------------------


async def test_progress_counts_running_and_queued_hosts(scout: Scout, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    try:
        proc = await fan_out(scout, tmp_path, 1, "sleep 0.5", stderr=slave)
    finally:
        os.close(slave)
    try:
        await asyncio.wait_for(proc.communicate(), 30)
        seen = await asyncio.to_thread(read_until_closed, master)
    finally:
        os.close(master)
    terminal = seen.decode()
    assert proc.returncode == 0
    # One host runs at a time (the first 0/4 line may come before ListHosts answers).
    for counts in (
        "2/4 done, 0 failed, 1 running, 1 queued",
        "3/4 done, 0 failed, 1 running, 0 queued",
    ):
        assert f"\r\x1b[Kscout: {counts}" in terminal, terminal


async def test_ctrl_c_counts_the_hosts_it_stopped(scout: Scout, tmp_path: Path) -> None:
    proc = await fan_out(scout, tmp_path, 2, "echo started; sleep 30")
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.readline(), 20)
    await asyncio.wait_for(proc.stdout.readline(), 20)  # both running hosts are heard
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130
    assert err.decode().splitlines() == [
        "scout: 4 hosts: 0 ok, 4 stopped by Ctrl-C",
        "scout: stopped by Ctrl-C (running, or not yet started): web1, web2, web3, web4",
        "scout: interrupted; the server stops the commands still running",
    ]
