"""The server process: nothing runs on after scout lets go, and a bad start says why.

Shutdown stops every running command before the process exits; a missing key or
known_hosts file, or a port in use, stops the start with one line naming it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import time
from pathlib import Path

import asyncssh
import grpc
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.app import start
from server.config import Config, ConfigError, HostConfig
from server.keyfiles import write_key
from testkit.processes import eventually, marker, process_list, sleeps
from testkit.sshd import OpenSSHServer

from .serverproc import host_toml, server_exits, start_server

# ---- shutdown --------------------------------------------------------------------------


@pytest.mark.sshd
@pytest.mark.slow
async def test_shutdown_stops_every_running_command_before_the_process_exits(
    openssh: OpenSSHServer, tmp_path: Path
) -> None:
    m = marker()
    cfg = tmp_path / "scout.toml"
    cfg.write_text("shutdown_grace = 2.0\n" + host_toml("o", openssh.host_config("o")))
    proc, target = start_server(["--config", str(cfg)], tmp_path / "scout.log")
    channel = grpc.aio.insecure_channel(target)
    stub = exec_pb2_grpc.ExecServiceStub(channel)
    calls = [
        asyncio.ensure_future(stub.Execute(exec_pb2.ExecuteRequest(host="o", command=f"sleep {m}")))
        for _ in range(20)
    ]
    try:
        assert await eventually(lambda: len(sleeps(m)) == 20, within=10)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        codes = {
            r.code() if isinstance(r, grpc.aio.AioRpcError) else r
            for r in await asyncio.gather(*calls, return_exceptions=True)
        }
        assert proc.wait(timeout=15) == 0
        exited = time.monotonic() - began
        assert exited < 2.0 + 5.0  # the grace, then the stop budget
        assert not process_list(m)  # every command was stopped first
        assert codes <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
        log = (tmp_path / "scout.log").read_text()
        assert "shutting down" in log and "stopped; pool closed" in log
    finally:
        await channel.close()
        if proc.poll() is None:
            proc.kill()


# ---- a bad start ------------------------------------------------------------------------


async def test_missing_key_or_known_hosts_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    known, key = tmp_path / "known_hosts", tmp_path / "id"
    known.write_text("")
    write_key(key, asyncssh.generate_private_key("ssh-ed25519"))
    base = HostConfig(name="h", address="127.0.0.1", user="u", known_hosts=known, identity_file=key)
    for host in (
        dataclasses.replace(base, identity_file=tmp_path / "no-such-key"),
        dataclasses.replace(base, known_hosts=tmp_path / "no-such-known_hosts"),
    ):
        missing = host.identity_file if host.identity_file != key else host.known_hosts
        with pytest.raises(ConfigError, match=str(missing)):
            await start(Config(hosts={"h": host}), "127.0.0.1:0")
    key.chmod(0o644)  # readable by others: refused, as ssh refuses it
    with pytest.raises(ConfigError, match="too open"):
        await start(Config(hosts={"h": base}), "127.0.0.1:0")


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        done = server_exits("--demo", "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert lines[-1] == (
        f"scout-server: cannot listen on 127.0.0.1:{port} "
        "(in use, or not an address of this machine)"
    )
    assert not any("Traceback" in x for x in lines)
