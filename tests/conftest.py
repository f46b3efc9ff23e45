"""Shared fixtures. Logic lives in the modules beside this file; fixtures only wire it.

ssh_keys      session: one ShellKeys shared by every in-process server (cheap starts)
shell_server  function: a ScriptedServer on 127.0.0.1, port 0 (testkit/scripted.py)
shell_host    function: scout's HostConfig for shell_server, named "shell"
local_scout   function: scout (in this process) whose one host, "local", is shell_server
fleet         function: the test module's FLEET_SIZE (default 4) scripted servers
pki           module: a CA, a server certificate, client certificates (testkit/certs.py)
openssh       session: a real OpenSSH sshd on loopback (testkit/sshd.py)
openssh_host  session: scout's HostConfig for openssh, named "openssh"
fake          function: the scripted fake ExecService (tests/fakeexec.py) and its target
tls_fake      function: the same behind TLS, pki's server certificate
client        function: a scout Client connected to fake
openssh_scout function: scout (in this process) whose one host, "o", is the openssh rig
remote_dir    function: a directory openssh's login user owns (tests/filerig.py)

Where each part of the code is tested (module -> test files):

server.service, .rpc          test_service, test_hardening_requests, test_fuzz, test_request_ids
server.launch, .command       test_exit_paths, test_lifecycle, test_budget, test_run_record
server.stream, .output        test_service, test_stream_backpressure, test_hardening_load
server.fanout, .targets       test_fleet, test_visibility, test_split_fanout, test_fanout_controls
server.files, .sftpchannel,   test_files, test_client_files, test_cli_cp
  .uploadmany, .spool,
  .pathpolicy
server.pool, .poolstate       test_pool, test_poolstate, test_pool_ssh, test_hardening_hosts
server.audit, .callers, .tls  test_security, test_visibility, test_request_ids, test_argv,
                              test_policy_order
server.argvpolicy, .requests  test_argv, test_hardening_requests, test_fuzz
server.config, .configfile    test_config, test_reload, test_metrics_exposure
server.reload, .live          test_reload
server.connector, .sshfiles   test_service, test_fleet, test_reload, test_hardening_hosts,
                              test_jump_specs
server.inventory, .sshconfig  test_fleet, test_sshconfig, test_jump_specs
server.metrics, .logs         test_ops, test_metrics_exposure, test_hardening_requests
server.keepalive              test_keepalive, test_config
server.introspection          test_introspection, test_introspection_bounds, test_polyglot
server.app, .main, .tokens,   test_server_process, test_server_commands, test_hardening_process,
  .quiet                      test_deploy
server.workers, .workermetrics  test_workers
server.errors, docs/          test_docs
scout/v1 (the contract)       test_contract, test_breaking, test_polyglot, test_readme,
                              test_go_example, test_node_example
client.aio, .calls, .sync,    test_client_e2e, test_client_errors, test_client_started,
  .results                    test_cli_live
client.files                  test_client_files, test_files
client.fleet, .splitfanout    test_client_fleet, test_split_fanout
client.cli, .fleetcli,        test_cli, test_cli_fleet, test_cli_fanout, test_cli_live,
  .argtypes, .fanoutinput,    test_cli_words, test_cli_cp, test_completion
  .fanoutstatus, .cpcli,
  .completion
client.profiles, .explain     test_profiles, test_cli_words
client.credentials, .reach    test_client_tls, test_client_reach, test_cli_words
client.mcpserver, .mcptools,  test_mcp
  .mcpfiles
testkit/                      test_sshservers
deploy/                       test_deploy, test_replicas
imports of server/, client/   test_imports
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from client import Client
from server.config import HostConfig
from server.keyfiles import ShellKeys, load_or_create_keys
from testkit.certs import PKI, make_pki
from testkit.scripted import ScriptedServer, scripted_fleet, scripted_server
from testkit.sshd import OpenSSHServer, start_openssh

from .fakeexec import FakeExec, serving, tls_credentials
from .filerig import login_user_dir
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
async def tls_fake(pki: PKI) -> AsyncIterator[tuple[FakeExec, str]]:
    """The fake ExecService on loopback behind TLS (pki's server certificate)."""
    servicer = FakeExec()
    async with serving(servicer, tls_credentials(pki)) as target:
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
