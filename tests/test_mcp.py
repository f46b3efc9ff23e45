"""`scout mcp` against a live scout server, through the MCP SDK's own client (tests/mcprig.py).

One scout server serves the whole module; each test spawns `scout mcp` over stdio (or
streamable HTTP), as an assistant's client would.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client as MCPClient

from client import Client
from client.mcpfiles import draw_tree, parse_ls
from client.mcptools import Settings, plain_argv, run_on_hosts
from testkit.ports import free_port
from testkit.processes import gone, marker, sleeping, stop

from .mcprig import (
    ASSISTANT_TOKEN,
    OPS_TOKEN,
    Rig,
    child_env,
    error_text,
    fields,
    mcp_command,
    running_rig,
    session,
)
from .serverproc import ROOT

pytestmark = pytest.mark.timeout(90)

TOOLS = {
    "list_hosts",
    "run_command",
    "run_on_hosts",
    "read_file",
    "write_file",
    "list_directory",
    "find_files",
    "tree",
    "diff_files",
    "copy_file",
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with running_rig(tmp_path_factory.mktemp("mcp")) as r:
        yield r


@pytest.fixture
def files(rig: Rig) -> Iterator[Path]:
    """A small tree where the assistant may read: a/one.txt, a/b/two.py, a/b/c/three.py,
    and a binary file."""
    top = rig.data / uuid.uuid4().hex
    (top / "a" / "b" / "c").mkdir(parents=True)
    (top / "a" / "one.txt").write_text("alpha\nbeta\ngamma\n")
    (top / "a" / "b" / "two.py").write_text("print(2)\n")
    (top / "a" / "b" / "c" / "three.py").write_text("print(3)\n")
    (top / "a" / "blob.bin").write_bytes(bytes(range(256)))
    yield top
    shutil.rmtree(top)


# ---- without a server ------------------------------------------------------------------


def test_plain_lines_are_sent_as_argv_and_the_rest_as_shell_lines() -> None:
    assert plain_argv("uptime") == ["uptime"]
    assert plain_argv("df -h /") == ["df", "-h", "/"]
    assert plain_argv("journalctl -u nginx --since '1 hour ago'") == [
        "journalctl",
        "-u",
        "nginx",
        "--since",
        "1 hour ago",
    ]
    for line in (
        "uptime | cat",
        "echo $HOME",
        "ls *.py",
        "rm -rf /tmp/x; reboot",
        "A=1 env",
        "echo `id`",
        "cat < /etc/passwd",
        "ls ~",
        "if true",
        "echo =ls",
        "",
        "echo 'unclosed",
    ):
        assert plain_argv(line) is None, line


def test_ls_output_becomes_entries() -> None:
    text = (
        "total 8\n"
        "drwxr-xr-x 3 me staff 4096 2026-12-07 19:01:02.123456789 +0000 .\n"
        "-rw-r--r-- 1 me staff   18 2026-12-07 19:01:02.000000000 +0100 a b.txt\n"
        "lrwxrwxrwx 1 me staff    5 2026-12-07 19:01:02.000000000 +0000 ln -> a b.txt\n"
    )
    dot, plain, link = parse_ls(text)
    assert (dot["name"], dot["type"]) == (".", "directory")
    assert plain == {
        "name": "a b.txt",
        "type": "file",
        "mode": "-rw-r--r--",
        "size": 18,
        "owner": "me",
        "group": "staff",
        "modified": "2026-12-07T19:01:02.000000000+01:00",
    }
    assert (link["type"], link["target"]) == ("symlink", "a b.txt")
    drawn = draw_tree("/r", [("d", "/r"), ("d", "/r/a"), ("f", "/r/a/x"), ("f", "/r/y")])
    assert drawn == "/r/\n  a/\n    x\n  y"


def test_without_the_sdk_scout_mcp_says_how_to_install_it() -> None:
    code = "import sys; sys.modules['mcp'] = None; from client.cli import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, "mcp"], capture_output=True, timeout=30, cwd=ROOT, check=False
    )
    assert done.returncode == 2
    assert b"pip install 'scout[mcp]'" in done.stderr, done.stderr


def test_a_token_file_that_cannot_be_read_is_named_and_nothing_serves(tmp_path: Path) -> None:
    missing = tmp_path / "no.token"
    done = subprocess.run(
        mcp_command("127.0.0.1:1", "--token-file", str(missing)),
        env=child_env(OPS_TOKEN),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 2 and str(missing).encode() in done.stderr, done.stderr
    assert OPS_TOKEN.encode() not in done.stderr + done.stdout


async def test_a_token_file_is_read_like_the_cli_does(rig: Rig, tmp_path: Path) -> None:
    token = tmp_path / "assistant.token"
    token.write_text(ASSISTANT_TOKEN + "\n")
    async with session(rig, "wrong-token", "--token-file", str(token)) as mcp:  # the file wins
        r = await mcp.call_tool("run_command", {"host": "db1", "command": "uptime"})
        assert "caller assistant may not run commands on 'db1'" in error_text(r)


# ---- an unrestricted caller ------------------------------------------------------------


async def test_tools_hosts_commands_and_fan_out(rig: Rig) -> None:
    async with session(rig) as mcp:
        listed = await mcp.list_tools()
        assert {tool.name for tool in listed.tools} >= TOOLS
        run = next(tool for tool in listed.tools if tool.name == "run_command")
        assert run.description and "exit" in run.description
        assert set(run.input_schema["required"]) == {"host"}

        r = await mcp.call_tool("run_command", {"host": "local", "command": "sh -c 'exit 3'"})
        assert not r.is_error  # an exit code is a result
        out = fields(r)
        assert (out["exit_code"], out["signal"], out["stdout_truncated"]) == (3, "", False)
        assert out["argv"] == ["sh", "-c", "exit 3"]  # a plain line goes as argv
        assert isinstance(out["duration"], float)

        r = await mcp.call_tool(
            "run_command",
            {"host": "local", "command": "echo $GREETING; pwd", "env": {"GREETING": "hi"}}
            | {"working_dir": "/tmp"},
        )
        assert (fields(r)["stdout"], fields(r)["command"]) == ("hi\n/tmp\n", "echo $GREETING; pwd")

        r = await mcp.call_tool("list_hosts", {"selector": "role=web"})
        assert [h["name"] for h in fields(r)["hosts"]] == ["web1", "web2"]
        assert fields(r)["hosts"][0]["labels"] == {"role": "web"}
        r = await mcp.call_tool("list_hosts", {"patterns": ["d*", "local"]})
        assert [h["name"] for h in fields(r)["hosts"]] == ["db1", "local"]

        fan_out = {"command": "echo hello", "hosts": ["local", "db1"], "selector": "role=web"}
        r = await mcp.call_tool("run_on_hosts", fan_out)
        out = fields(r)
        assert (out["hosts"], out["succeeded"], out["failed"]) == (4, 4, 0)
        assert [(x["host"], x["stdout"]) for x in out["results"]] == [
            (name, "hello\n") for name in ("db1", "local", "web1", "web2")
        ]
        r = await mcp.call_tool("run_on_hosts", {"command": "exit 1", "hosts": ["web*"]})
        assert (fields(r)["succeeded"], fields(r)["exited_nonzero"]) == (0, 2)

        r = await mcp.call_tool("run_command", {"host": "nosuch", "command": "true"})
        assert error_text(r).startswith("NOT_FOUND: ")
        assert fields(r)["error"]["may_have_run"] is False


async def test_file_tools_and_resources(rig: Rig, files: Path) -> None:
    root = files / "a"
    async with session(rig) as mcp:
        r = await mcp.call_tool("list_directory", {"host": "local", "path": str(root)})
        entries = {e["name"]: e for e in fields(r)["entries"]}
        assert set(entries) == {"one.txt", "b", "blob.bin"}
        assert (entries["b"]["type"], entries["one.txt"]["size"]) == ("directory", 17)

        r = await mcp.call_tool(
            "find_files", {"host": "local", "path": str(root), "pattern": "*.py"}
        )
        assert sorted(fields(r)["matches"]) == [f"{root}/b/c/three.py", f"{root}/b/two.py"]
        r = await mcp.call_tool(
            "find_files", {"host": "local", "path": str(root), "pattern": "*.py", "max_depth": 2}
        )
        assert fields(r)["matches"] == [f"{root}/b/two.py"]

        r = await mcp.call_tool("tree", {"host": "local", "path": str(root)})
        assert fields(r)["tree"].splitlines() == [
            f"{root}/",
            "  b/",
            "    c/",
            "      three.py",
            "    two.py",
            "  blob.bin",
            "  one.txt",
        ]

        path = str(root / "one.txt")
        r = await mcp.call_tool("read_file", {"host": "local", "path": path})
        assert (fields(r)["content"], fields(r)["truncated"]) == ("alpha\nbeta\ngamma\n", False)
        r = await mcp.call_tool(
            "read_file", {"host": "local", "path": path, "offset": 6, "max_bytes": 4}
        )
        assert (fields(r)["content"], fields(r)["truncated"]) == ("beta", True)
        r = await mcp.call_tool("read_file", {"host": "local", "path": str(root / "blob.bin")})
        assert fields(r)["encoding"] == "base64"
        r = await mcp.call_tool("read_file", {"host": "local", "path": str(root / "none")})
        assert error_text(r).startswith("NOT_FOUND: ")

        r = await mcp.call_tool("read_file", {"targets": [f"web1:{path}", f"web2:{path}x"]})
        assert (fields(r)["targets"], fields(r)["succeeded"]) == (2, 1)

        r = await mcp.call_tool("diff_files", {"a": f"web1:{path}", "b": f"web2:{path}"})
        assert (fields(r)["identical"], fields(r)["diff"]) == (True, "")
        expected = "alpha\nBETA\ngamma\n"
        r = await mcp.call_tool("diff_files", {"a": f"local:{path}", "content": expected})
        assert not fields(r)["identical"]
        assert "-beta\n+BETA\n" in fields(r)["diff"]

        text = await mcp.read_resource(f"scout://local{path}")
        assert getattr(text.contents[0], "text", None) == "alpha\nbeta\ngamma\n"
        listing = await mcp.read_resource(f"scout://local{root}")
        assert "one.txt" in getattr(listing.contents[0], "text", "")
        hosts = await mcp.read_resource("hosts://list")
        assert '"web1"' in getattr(hosts.contents[0], "text", "")

        r = await mcp.call_tool("find_files", {"host": "local", "path": "-delete", "pattern": "x"})
        assert "absolute path" in error_text(r)


@pytest.mark.slow
async def test_write_file_and_copy_file(rig: Rig, files: Path) -> None:
    here = files / "w"
    here.mkdir()
    async with session(rig, OPS_TOKEN, "--local-files", str(here)) as mcp:
        written = here / "new.conf"
        target = str(written)
        r = await mcp.call_tool(
            "write_file", {"host": "web1", "path": target, "content": "x = 1\n", "mode": "0600"}
        )
        assert fields(r)["bytes_written"] == 6
        assert (written.read_text(), written.stat().st_mode & 0o777) == ("x = 1\n", 0o600)
        again = {"host": "web1", "path": target, "content": "y", "create_only": True}
        r = await mcp.call_tool("write_file", again)
        assert error_text(r).startswith("ALREADY_EXISTS: ")
        blob = {"host": "web1", "path": target, "content": "AAEC/w==", "encoding": "base64"}
        r = await mcp.call_tool("write_file", blob)
        assert written.read_bytes() == b"\x00\x01\x02\xff"

        big = here / "big.bin"
        big.write_bytes(os.urandom(20 * 1024 * 1024))
        r = await mcp.call_tool(
            "copy_file", {"source": f"web1:{big}", "target": f"web2:{here}/copy.bin"}
        )
        out = fields(r)
        assert out["bytes"] == 20 * 1024 * 1024, r
        assert out["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
        assert (here / "copy.bin").read_bytes() == big.read_bytes()  # byte-exact

        r = await mcp.call_tool("copy_file", {"source": f"web1:{target}", "target": f"{here}/down"})
        assert (here / "down").read_bytes() == b"\x00\x01\x02\xff"
        r = await mcp.call_tool(
            "copy_file", {"source": f"{here}/down", "target": f"web2:{here}/up"}
        )
        assert (here / "up").read_bytes() == b"\x00\x01\x02\xff"
        r = await mcp.call_tool(
            "copy_file", {"source": f"web1:{here}/none", "target": f"web2:{here}/x"}
        )
        assert error_text(r).startswith("NOT_FOUND: ") and not (here / "x").exists()
        r = await mcp.call_tool("copy_file", {"source": f"{here}/a", "target": f"{here}/b"})
        assert "give HOST:/path on one side" in error_text(r)
        for outside in ("/etc/passwd", f"{here}/../escape", f"{files}"):
            r = await mcp.call_tool("copy_file", {"source": f"web1:{target}", "target": outside})
            assert "must be under --local-files" in error_text(r), outside
    assert not (files / "escape").exists()
    async with session(rig) as mcp:  # no --local-files: no local path
        r = await mcp.call_tool("copy_file", {"source": f"web1:{target}", "target": f"{here}/z"})
        assert error_text(r).startswith("PERMISSION_DENIED: ") and "--local-files" in error_text(r)


# ---- a restricted caller: the README's read-only assistant -----------------------------


async def test_the_readme_assistant_gets_its_tools_and_nothing_else(rig: Rig, files: Path) -> None:
    root = files / "a"
    before = len(rig.audit_lines())
    async with session(rig, ASSISTANT_TOKEN) as mcp:
        allowed: list[tuple[str, dict[str, Any]]] = [
            ("run_command", {"host": "web1", "command": "uptime"}),
            ("run_command", {"host": "web2", "command": "df -h /"}),
            ("list_directory", {"host": "web1", "path": str(root)}),
            ("find_files", {"host": "web1", "path": str(root), "pattern": "*.py"}),
            ("tree", {"host": "web1", "path": str(root)}),
            ("read_file", {"host": "web1", "path": str(root / "one.txt")}),
            ("read_file", {"host": "web1", "path": str(root / "one.txt"), "offset": 6}),
            ("diff_files", {"a": f"web1:{root}/one.txt", "b": f"web2:{root}/one.txt"}),
        ]
        for name, args in allowed:
            r = await mcp.call_tool(name, args)
            assert not r.is_error, (name, r.content)
        r = await mcp.call_tool("run_on_hosts", {"command": "uptime", "hosts": ["web*"]})
        assert fields(r)["succeeded"] == 2
        text = await mcp.read_resource(f"scout://web1{root}/one.txt")
        assert getattr(text.contents[0], "text", None) == "alpha\nbeta\ngamma\n"
        listing = await mcp.read_resource(f"scout://web1{root}")
        assert "one.txt" in getattr(listing.contents[0], "text", "")

        r = await mcp.call_tool("run_command", {"host": "db1", "command": "uptime"})
        assert error_text(r).startswith("PERMISSION_DENIED: ")
        assert "hosts: web*" in error_text(r)
        assert fields(r)["error"] == fields(r)["error"] | {
            "code": "PERMISSION_DENIED",
            "may_have_run": False,
        }
        r = await mcp.call_tool("run_command", {"host": "web1", "command": "rm -rf /tmp/x"})
        assert error_text(r).startswith("PERMISSION_DENIED: ") and "commands:" in error_text(r)
        r = await mcp.call_tool("run_command", {"host": "web1", "command": "uptime | cat"})
        assert error_text(r).startswith("PERMISSION_DENIED: ")
        assert "may send only argv" in error_text(r)
        r = await mcp.call_tool("list_directory", {"host": "local", "path": "/"})
        assert error_text(r).startswith("PERMISSION_DENIED: ")
        write = {"host": "web1", "path": f"{root}/new", "content": "x"}
        r = await mcp.call_tool("write_file", write)
        assert error_text(r).startswith("PERMISSION_DENIED: ") and not (root / "new").exists()
        r = await mcp.call_tool("read_file", {"host": "web1", "path": "/etc/hostname"})
        assert error_text(r).startswith("PERMISSION_DENIED: ")
    lines = rig.audit_lines()[before:]
    assert {line["caller"] for line in lines} == {"assistant"}
    refused = [(x["method"], x["host"]) for x in lines if x["code"] == "PERMISSION_DENIED"]
    assert refused == [
        ("Execute", "db1"),
        ("Execute", "web1"),
        ("Execute", "web1"),
        ("Execute", "local"),
        ("Upload", "web1"),
        ("Download", "web1"),
    ]
    ran = [x.get("argv") for x in lines if x["code"] == "OK"]
    assert ["uptime"] in ran and ["find", str(root), "-maxdepth", "5", "-name", "*.py"] in ran
    # one line per call: diff_files reads twice, the fan-out runs twice, the directory
    # resource tries a read (FAILED_PRECONDITION) and then lists
    assert len(lines) == len(allowed) + 1 + 2 + 1 + 2 + len(refused), lines


# ---- limits, progress, cancellation ----------------------------------------------------


async def test_a_fan_out_keeps_a_bounded_share_of_output_in_all(rig: Rig) -> None:
    settings = Settings(max_output=8, fan_out_output=12)
    async with Client(rig.target, token=OPS_TOKEN) as client:
        out = await run_on_hosts(client, settings, "echo 0123456789", hosts=["*"])
    assert (out["hosts"], out["succeeded"]) == (4, 4)
    kept = [len(r["stdout"]) for r in out["results"]]
    assert sum(kept) == 12 and max(kept) == 8, kept
    assert all(r["stdout_truncated"] and r["stdout_bytes"] == 11 for r in out["results"])


async def test_50_mib_of_output_is_cut_at_max_output(rig: Rig) -> None:
    async with session(rig, OPS_TOKEN, "--max-output", "1000") as mcp:
        flood = {"host": "local", "command": "head -c 50M /dev/zero"}
        r = await mcp.call_tool("run_command", flood)
        out = fields(r)
        assert (out["exit_code"], out["stdout_truncated"], len(out["stdout"])) == (0, True, 1000)
        assert out["stdout_bytes"] == 50 * 1024 * 1024  # the whole size, as the server counted it
        assert out["stderr_truncated"] is False


async def test_cancelling_a_call_stops_the_remote_command(rig: Rig) -> None:
    m = marker()
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    async with session(rig) as mcp:
        call = asyncio.create_task(
            mcp.call_tool(
                "run_command",
                {"host": "local", "command": f"sleep {m}"},
                progress_callback=on_progress,
            )
        )
        assert await sleeping(m, within=10)
        await asyncio.sleep(1.5)  # past a second: progress comes
        assert seen and "running for" in (seen[0][1] or ""), seen
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await gone(m, within=5.0)  # TERM at once, KILL after kill_grace (2 s)
        r = await mcp.call_tool("run_command", {"host": "local", "command": "echo still"})
        assert fields(r)["stdout"] == "still\n"  # and scout mcp serves on


# ---- bad input -------------------------------------------------------------------------


async def test_bad_input_is_a_clear_tool_error_and_scout_mcp_serves_on(rig: Rig) -> None:
    async with session(rig) as mcp:
        r = await mcp.call_tool("run_command", {"command": "true"})
        assert "host" in error_text(r) and "required" in error_text(r).lower()
        bad = {"host": "local", "command": "true", "timeout_s": "x"}
        r = await mcp.call_tool("run_command", bad)
        assert "timeout_s" in error_text(r)
        r = await mcp.call_tool("run_command", {"host": ["local"], "command": "true"})
        assert "host" in error_text(r)
        r = await mcp.call_tool("run_command", {"host": "local"})
        assert "exactly one of `command`" in error_text(r)
        r = await mcp.call_tool("run_command", {"host": "local", "command": "x" * 10_000_000})
        assert error_text(r).startswith("INVALID_ARGUMENT: command is 10000000 bytes")
        r = await mcp.call_tool("run_on_hosts", {"command": "true"})
        assert "give `hosts`" in error_text(r)
        r = await mcp.call_tool("read_file", {"host": "local"})
        assert "give host and path, or targets" in error_text(r)
        r = await mcp.call_tool("diff_files", {"a": "local:/etc/hostname"})
        assert "exactly one of `b`" in error_text(r)
        bad = {"host": "local", "path": "/tmp/x", "content": "%", "encoding": "base64"}
        r = await mcp.call_tool("write_file", bad)
        assert "base64" in error_text(r)
        r = await mcp.call_tool("no_such_tool", {})
        assert r.is_error
        r = await mcp.call_tool("run_command", {"host": "local", "command": "echo ok"})
        assert fields(r)["stdout"] == "ok\n"


# ---- streamable HTTP -------------------------------------------------------------------


@pytest.fixture
def http_mcp(rig: Rig, tmp_path: Path) -> Iterator[str]:
    """`scout mcp --http` on a free loopback port, serving; its URL. Its log never shows
    the token."""
    port = free_port()
    with (tmp_path / "mcp.log").open("wb") as log:
        proc = subprocess.Popen(
            mcp_command(rig.target, "--http", f"127.0.0.1:{port}"),
            env=child_env(OPS_TOKEN),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop(proc, 5)
    assert OPS_TOKEN not in (tmp_path / "mcp.log").read_text(errors="replace")


async def test_streamable_http_answers_tools_list_and_call(http_mcp: str) -> None:
    async with MCPClient(http_mcp) as mcp:
        listed = await mcp.list_tools()
        assert {tool.name for tool in listed.tools} >= TOOLS
        r = await mcp.call_tool("run_command", {"host": "web2", "command": "echo over http"})
        assert fields(r)["stdout"] == "over http\n"


def test_streamable_http_listens_on_loopback_only(rig: Rig) -> None:
    done = subprocess.run(
        mcp_command(rig.target, "--http", "0.0.0.0:8765"),
        env=child_env(OPS_TOKEN),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and b"loopback only" in done.stderr, done.stderr
