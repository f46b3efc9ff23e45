"""`scout cp` against a live scout: upload, download, globs and selectors, the exit
statuses, and the progress bar (on a pty, since it shows only on a terminal)."""

from __future__ import annotations

import dataclasses
import io
import os
import pty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.cli import amain
from client.cpcli import ProgressBar, remote, selector_target
from server.config import Config
from server.keyfiles import ShellKeys
from testkit.scripted import ScriptedServer, close_all, start_fleet

from .readmescripts import run_python_block
from .scoutd import Scout, running_scout

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def scout(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    async with running_scout(Config(hosts={"local": shell_server.host_config("local")})) as s:
        yield s


async def cli(*argv: str) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    code = await amain(list(argv), stdin=None, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_remote_words_are_told_from_local_ones() -> None:
    assert remote("web1:/etc/hosts") == ("web1", "/etc/hosts")
    assert remote("web*:/x") == ("web*", "/x")
    assert remote("./a:b") is None and remote("/tmp/a:b") is None and remote("plain") is None
    assert selector_target("role=web,region in (eu,us):/srv/a") == (
        "role=web,region in (eu,us)",
        "/srv/a",
    )
    with pytest.raises(ValueError, match="SELECTOR:/"):
        selector_target("role=web")


async def test_cp_up_and_down(scout: Scout, tmp_path: Path) -> None:
    local = tmp_path / "app.conf"
    data = os.urandom(300_000)
    local.write_bytes(data)
    remote_path = tmp_path / "remote" / "app.conf"
    remote_path.parent.mkdir()
    t = ("--target", scout.target)
    assert await cli("cp", *t, str(local), f"local:{remote_path}", "--mode", "600") == (0, b"", b"")
    assert remote_path.read_bytes() == data
    assert remote_path.stat().st_mode & 0o777 == 0o600
    code, _, err = await cli("cp", *t, "--create-only", str(local), f"local:{remote_path}")
    assert code == 3 and b"create_only" in err
    back = tmp_path / "back"
    back.mkdir()
    assert (await cli("cp", *t, f"local:{remote_path}", str(back)))[0] == 0
    assert (back / "app.conf").read_bytes() == data
    code, out, _ = await cli("cp", *t, f"local:{remote_path}", "-")
    assert (code, out) == (0, data)
    code, _, err = await cli("cp", *t, f"local:{tmp_path}/absent", str(back / "x"))
    assert code == 3 and b"no such file" in err
    assert not (back / "x").exists()
    code, _, err = await cli("cp", *t, str(tmp_path / "missing"), f"local:{remote_path}")
    assert code == 255 and b"missing" in err
    code, _, err = await cli("cp", *t, str(local), "local:relative/path")
    assert code == 255
    code, _, err = await cli("cp", *t, "a:/x", "b:/y")
    assert code == 255 and b"one side must be local" in err


async def test_cp_to_a_glob_and_a_selector(ssh_keys: ShellKeys, tmp_path: Path) -> None:
    servers = await start_fleet(ssh_keys, 3)
    try:
        for i, server in enumerate(servers):
            (tmp_path / f"h{i}").mkdir()
            server.sftp_view = (tmp_path / f"h{i}", tmp_path / "view")
        (tmp_path / "view").mkdir()
        hosts = {
            f"web{i}": dataclasses.replace(
                s.host_config(f"web{i}"), labels={"role": "db" if i == 2 else "web"}
            )
            for i, s in enumerate(servers)
        }
        local = tmp_path / "f.txt"
        local.write_bytes(b"everywhere")
        async with running_scout(Config(hosts=hosts)) as scout:
            t = ("--target", scout.target)
            code, _, err = await cli("cp", *t, str(local), f"web*:{tmp_path}/view/f.txt")
            assert code == 0, err
            assert b"3 hosts have the file" in err
            code, _, err = await cli(
                "cp", *t, str(local), "-l", f"role=db:{tmp_path}/view/f.txt", "--create-only"
            )
            assert code == 3 and b"web2:" in err and b"1 failed" in err
        for i in range(3):
            assert (tmp_path / f"h{i}" / "f.txt").read_bytes() == b"everywhere"
    finally:
        await close_all(servers)


def test_progress_bar_shows_bytes_rate_and_eta_on_a_terminal() -> None:
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "wb", buffering=0, closefd=False) as stream:
            bar = ProgressBar(stream, 4 << 20, "big.bin -> web1")
            bar(1 << 20, final=True)
        shown = os.read(leader, 4096).decode()
    finally:
        os.close(leader)
        os.close(follower)
    assert "big.bin -> web1 1.0 MiB/4.0 MiB 25%" in shown
    assert "ETA" in shown and "/s" in shown
    silent = ProgressBar(None, 10, "x")
    silent(5, final=True)  # no terminal: nothing to draw, nothing raised


async def test_readme_files_python_example_runs_as_a_script(scout: Scout, tmp_path: Path) -> None:
    out = await run_python_block("## Files", scout.target, tmp_path, 30)
    assert out == "12 True\nlocal ok\n", out
    assert (tmp_path / "copy.conf").read_bytes() == b"port = 8080\n"
