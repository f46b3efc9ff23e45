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
redis_server  module: a real redis-server on loopback, persistence off (testkit/redis.py)
(autouse)     $XDG_STATE_HOME in a temporary folder for the session and for each test, so
              servers' default outcome store is never ~/.local/state/scout

Tests that start another program (a real sshd, nginx, Envoy, redis, a scout-server process) or
build the Go and Node examples are marked `external` here, and those in SLOW `slow`:
`make test-fast` leaves both out.

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
server.forwarding             test_forwarding, test_durable_workers
server.errors, docs/          test_docs
server.durablestore,          test_durable_store, test_config, test_reload
  .durablerecord, .sqlitestore,
  .redisstore
scout/v1 (the contract)       test_contract, test_breaking, test_polyglot, test_readme,
                              test_go_example, test_node_example
client.aio, .calls, .sync,    test_client_e2e, test_client_errors, test_client_started,
  .results                    test_cli_live
client.retry                  test_client_retry, test_durable_client
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
testkit/                      test_sshservers, test_durable_store (testkit/redis.py)
deploy/                       test_deploy, test_replicas, test_durable_replicas
imports of server/, client/   test_imports
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import CodeType, FunctionType, ModuleType
from typing import Any

import pytest

from client import Client
from server.config import HostConfig
from server.keyfiles import ShellKeys, load_or_create_keys
from testkit import proxies
from testkit.certs import PKI, make_pki
from testkit.redis import RedisServer, start_redis
from testkit.scripted import ScriptedServer, scripted_fleet, scripted_server
from testkit.sshd import OpenSSHServer, start_openssh

from . import exampleclients, serverproc
from .fakeexec import FakeExec, serving, tls_credentials
from .filerig import login_user_dir
from .scoutd import Scout, config, running_scout

# Where a server's default outcome store goes (server.durablestore.default_store_url).
STATE_VARIABLES = ("STATE_DIRECTORY", "XDG_STATE_HOME")


@pytest.fixture(scope="session", autouse=True)
def _session_state_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Servers started for the whole session (or in a child process) keep their default
    outcome store (server/durablestore.py: $XDG_STATE_HOME/scout) in this session's
    folder, never in the ~/.local/state/scout of the person or CI running the tests."""
    saved = {name: os.environ.get(name) for name in STATE_VARIABLES}
    os.environ.pop("STATE_DIRECTORY", None)
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(autouse=True)
def _state_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test's servers start with an empty default outcome store: keys one test used
    never meet another's (the README's examples reuse theirs)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


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


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the module (fails, never skips, without redis-server)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


# What makes a test `external`: calling one of these from its body, one of its fixtures, or
# a function of this project that they call (found in their code, not by names or files, so
# a test keeps its mark when it moves).
EXTERNAL: frozenset[Callable[..., Any]] = frozenset(
    {
        start_openssh,
        start_redis,
        proxies.nginx_binary,
        proxies.envoy_binary,
        exampleclients.build,
        serverproc.start_server,
        serverproc.server_exits,
    }
)


# Tests that took 1.4 s or more on 2 busy cores, most waiting out a timeout or starting
# scout-server workers: `slow` by name, so that a test keeps its mark when it moves.
SLOW = frozenset(
    {
        "test_a_burst_beyond_grpc_cores_queue_gets_no_cancelled",
        "test_a_caller_that_vanishes_mid_call_is_found_and_its_command_stopped",
        "test_a_connect_that_reads_a_changed_file_does_not_keep_the_news_from_other_hosts",
        "test_a_deadline_during_a_late_exec_reply_is_may_have_run_and_stops_the_command",
        "test_a_fan_out_does_not_starve_a_single_execute",
        "test_a_flood_of_stream_messages_is_paced",
        "test_a_key_is_answered_by_any_replica_from_the_shared_store",
        "test_a_killed_workers_key_is_outcome_unknown_at_the_other_and_never_runs_again",
        "test_a_stream_cut_at_10s_and_attached_at_15s_of_a_30s_command",
        "test_a_host_key_added_and_revoked_while_scout_runs",
        "test_a_host_that_never_speaks_is_one_connect_timeout_and_unavailable",
        "test_a_hung_redis_is_store_unavailable_within_the_command_timeout",
        "test_a_jump_hosts_failure_is_named_only_to_a_caller_who_may_use_it",
        "test_a_retired_connection_under_a_long_stream_does_not_block_its_replacement",
        "test_a_revoked_key_retires_a_host_that_a_reload_added",
        "test_a_second_signal_skips_the_grace_on_every_worker",
        "test_a_stricter_ping_policy_from_the_config_is_the_one_applied",
        "test_a_timeout_exits_124_and_says_it_was_stopped",
        "test_an_attach_through_the_other_worker_carries_stdin_and_signals",
        "test_attach_and_a_keyed_retry_reach_the_command_whichever_worker_answers",
        "test_audit_lines_of_all_workers_stay_whole",
        "test_cancel_during_a_slow_channel_open_stops_what_the_late_open_started",
        "test_changed_host_key_is_failed_precondition",
        "test_connect_failure_reaches_every_waiter_once_and_the_host_backs_off",
        "test_each_worker_gets_its_share_of_a_callers_max_in_flight",
        "test_every_outcome_leaves_one_audit_line_and_no_token_anywhere",
        "test_every_worker_serves_tls_on_the_one_port",
        "test_failing_connects_beside_a_full_connection_back_off_instead_of_looping",
        "test_fan_out_gives_each_host_its_result_or_its_own_status",
        "test_hash_token_help_prints_help_instead_of_hashing_it",
        "test_hundred_sequential_commands_use_one_ssh_connection",
        "test_insecure_accept_any_host_key_is_explicit_and_loud",
        "test_new_token_prints_a_fresh_token_and_its_config_line",
        "test_opens_that_outlive_their_deadline_run_nothing",
        "test_processes_racing_for_the_same_keys_win_each_exactly_once",
        "test_redis_down_refuses_keyed_requests_before_anything_runs_unkeyed_ones_run",
        "test_refused_authentication_is_failed_precondition",
        "test_rejected_host_is_not_retried",
        "test_restarts_past_the_bound_stop_the_server_with_status_1",
        "test_sighup_reaches_every_worker_and_never_stops_one",
        "test_sighup_reloads_the_inventory_and_retires_removed_hosts",
        "test_sighup_revokes_a_removed_caller_in_every_worker_and_keeps_each_ones_port",
        "test_sigterm_drains_every_worker_and_stops_what_outlives_the_grace",
        "test_stream_output_arrives_as_produced",
        "test_ten_thousand_aliases_load_in_seconds",
        "test_the_owner_killed_a_retry_through_nginx_is_outcome_unknown_and_never_reruns",
        "test_two_hundred_hosts_never_exceed_the_connection_bound",
        "test_unreachable_host_is_unavailable",
        "test_workers_stop_when_the_supervisor_is_killed",
    }
)


def _calls_external(obj: object, known: dict[CodeType, bool]) -> bool:
    """Whether obj is, or is a function of this project that refers to, one in EXTERNAL."""
    if not callable(obj):
        return False
    func = inspect.unwrap(obj)
    if func in EXTERNAL:
        return True
    if not isinstance(func, FunctionType) or not func.__module__.startswith(("tests", "testkit")):
        return False
    if func.__code__ not in known:
        known[func.__code__] = False  # while it is being read (a recursive function)
        codes, names = [func.__code__], set[str]()
        while codes:  # the function, and the functions and lambdas defined inside it
            code = codes.pop()
            names.update(code.co_names)
            codes += [c for c in code.co_consts if isinstance(c, CodeType)]
        found = [func.__globals__.get(n) for n in names]
        found += [getattr(m, n, None) for m in found if isinstance(m, ModuleType) for n in names]
        known[func.__code__] = any(_calls_external(f, known) for f in found)
    return known[func.__code__]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `external` the tests that start another program, `slow` those named in SLOW."""
    known: dict[CodeType, bool] = {}
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        fixtures = item._fixtureinfo.name2fixturedefs.values()
        funcs = [item.function, *(d.func for defs in fixtures for d in defs)]
        if any(_calls_external(f, known) for f in funcs):
            item.add_marker(pytest.mark.external)
        if item.originalname in SLOW:
            item.add_marker(pytest.mark.slow)
