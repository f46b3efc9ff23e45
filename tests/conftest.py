"""Shared fixtures. Logic lives in the modules beside this file; fixtures only wire it.

ssh_keys      session: one ShellKeys shared by every in-process server (cheap starts)
shell_server  function: a ScriptedServer on 127.0.0.1, port 0 (testkit/scripted.py)
shell_host    function: scout's HostConfig for shell_server, named "shell"
openssh       session: a real OpenSSH sshd on loopback (testkit/sshd.py)
openssh_host  session: scout's HostConfig for openssh, named "openssh"
fake          function: the scripted fake ExecService (tests/fakeexec.py) and its target
client        function: a scout Client connected to fake
openssh_scout function: scout (in this process) whose one host, "o", is the openssh rig
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from client import Client
from server.config import HostConfig
from server.keyfiles import ShellKeys, load_or_create_keys
from testkit.certs import PKI, make_pki
from testkit.scripted import ScriptedServer, scripted_fleet, scripted_server
from testkit.sshd import OpenSSHServer, start_openssh

from .fakeexec import FakeExec, serving
from .scoutd import Scout, config, running_scout


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> ShellKeys:
    """Host and client keys (and one known_hosts) for all in-process SSH servers."""
    return load_or_create_keys(tmp_path_factory.mktemp("sshkeys"))


@pytest.fixture
async def shell_server(ssh_keys: ShellKeys) -> AsyncIterator[ScriptedServer]:
    """A scripted in-process SSH server; tests steer its knobs while it runs."""
    async with scripted_server(ssh_keys) as server:
        yield server


@pytest.fixture
def shell_host(shell_server: ScriptedServer) -> HostConfig:
    """The inventory entry for shell_server."""
    return shell_server.host_config("shell")


@pytest.fixture
async def local_scout(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    """scout (in this process) whose one host, "local", is shell_server."""
    async with running_scout(config({"local": shell_server.host_config("local")})) as s:
        yield s


@pytest.fixture
async def fleet(
    ssh_keys: ShellKeys, request: pytest.FixtureRequest
) -> AsyncIterator[list[ScriptedServer]]:
    """In-process SSH servers on loopback ports: the test module's FLEET_SIZE of them."""
    async with scripted_fleet(ssh_keys, getattr(request.module, "FLEET_SIZE", 4)) as servers:
        yield servers


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA, a server certificate and client certificates (testkit/certs.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


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
