"""Shared fixtures. Logic lives in the modules beside this file; fixtures only wire it.

ssh_keys      session: one ShellKeys shared by every in-process server (cheap starts)
shell_server  function: a ScriptedServer on 127.0.0.1, port 0 (testkit/scripted.py)
shell_host    function: scout's HostConfig for shell_server, named "shell"
openssh       session: a real OpenSSH sshd on loopback (testkit/sshd.py)
openssh_host  session: scout's HostConfig for openssh, named "openssh"
fake          function: the scripted fake ExecService (tests/fakeexec.py) and its target
client        function: a scout Client connected to fake
openssh_scout function: scout (in this process) whose one host, "o", is the openssh rig
remote_dir    function: a directory openssh's login user owns (tests/filerig.py)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from client import Client
from server.config import HostConfig
from server.keyfiles import ShellKeys, load_or_create_keys
from testkit.scripted import ScriptedServer, start_scripted
from testkit.sshd import OpenSSHServer, start_openssh

from .fakeexec import FakeExec, serving
from .filerig import login_user_dir
from .scoutd import Scout, config, running_scout


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> ShellKeys:
    """Host and client keys (and one known_hosts) for all in-process SSH servers."""
    return load_or_create_keys(tmp_path_factory.mktemp("sshkeys"))


@pytest.fixture
async def shell_server(ssh_keys: ShellKeys) -> AsyncIterator[ScriptedServer]:
    """A scripted in-process SSH server; tests steer its knobs while it runs."""
    server = await start_scripted(ssh_keys)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def shell_host(shell_server: ScriptedServer) -> HostConfig:
    """The inventory entry for shell_server."""
    return shell_server.host_config("shell")


@pytest.fixture(scope="session")
def openssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSSHServer]:
    """A real sshd for the whole session (fails, never skips, without openssh-server)."""
    server = start_openssh(tmp_path_factory.mktemp("openssh"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def openssh_host(openssh: OpenSSHServer) -> HostConfig:
    """The inventory entry for openssh."""
    return openssh.host_config("openssh")


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeExec, str]]:
    """The fake ExecService on loopback: for client tests that script the server's answers."""
    servicer = FakeExec()
    async with serving(servicer) as target:
        yield servicer, target


@pytest.fixture
async def client(fake: tuple[FakeExec, str]) -> AsyncIterator[Client]:
    """A Client of fake."""
    async with Client(fake[1]) as c:
        yield c


@pytest.fixture
async def openssh_scout(openssh: OpenSSHServer) -> AsyncIterator[Scout]:
    """scout serving one host, "o": the real sshd."""
    async with running_scout(config({"o": openssh.host_config("o")})) as s:
        yield s


@pytest.fixture
def remote_dir() -> Iterator[Path]:
    """A directory the SSH login user owns (files tests write there through scout)."""
    with login_user_dir() as path:
        yield path
