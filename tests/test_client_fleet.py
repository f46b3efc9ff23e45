"""list_hosts and execute_many against the scripted fake ExecService (tests/fakeexec.py).

Each test's ExecuteMany command is the fake's per-host script in JSON; "after"
steps fix the completion order without timing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client import (
    Aborted,
    Cancelled,
    Client,
    CommandTimeout,
    ExecOptions,
    Host,
    HostEvent,
    HostNotFound,
    HostOutput,
    InvalidRequest,
    Result,
    ScoutError,
    ServerError,
    SyncClient,
    Unavailable,
    from_host_status,
    from_rpc_error,
)

from .fakeexec import FakeExec
from .readmescripts import run_python_block

ROOT = Path(__file__).resolve().parent.parent
S = grpc.StatusCode
pytestmark = pytest.mark.timeout(10)


def script(**hosts: list[list[Any]]) -> str:
    """The fake's per-host script; the key "any" stands for "*" (hosts not named)."""
    return json.dumps({("*" if name == "any" else name): steps for name, steps in hosts.items()})


async def collect(events: AsyncIterator[HostEvent]) -> list[HostEvent]:
    return [event async for event in events]


# ---- list_hosts -------------------------------------------------------------


async def test_list_hosts_returns_the_inventory_as_values(client: Client) -> None:
    hosts = await client.list_hosts()
    assert [h.name for h in hosts] == ["db1", "web1", "web2", "web3"]
    web3 = hosts[3]
    assert web3 == Host(
        name="web3",
        address="web3.example.net",
        port=22,
        user="deploy",
        labels={"role": "web", "region": "eu", "canary": "yes"},
        via=("bastion", "admin@jump2:2200"),
    )
    assert (hosts[1].connections_open, hosts[1].channels_in_use) == (2, 1)
    with pytest.raises(TypeError):
        web3.labels["role"] = "db"  # type: ignore[index]  # a value, not a view of the wire


async def test_list_hosts_by_selector_and_patterns(
    fake: tuple[FakeExec, str], client: Client
) -> None:
    assert [h.name for h in await client.list_hosts("region=us")] == ["web2"]
    assert [h.name for h in await client.list_hosts(hosts=["db*"])] == ["db1"]
    both = await client.list_hosts("region=us", ["db1"])
    assert [h.name for h in both] == ["db1", "web2"]
    sent = fake[0].seen.listings
    assert [(r.selector, list(r.hosts)) for r in sent] == [
        ("region=us", []),
        ("", ["db*"]),
        ("region=us", ["db1"]),
    ]
    # Routed by the first entry only when it names one host.
    assert fake[0].seen.hosts == ["", "", "db1"]


async def test_list_hosts_errors_never_may_have_run(client: Client) -> None:
    with pytest.raises(InvalidRequest, match="malformed selector") as info:
        await client.list_hosts("role")
    assert not info.value.may_have_run


async def test_hosts_must_be_a_sequence_not_a_string(client: Client) -> None:
    with pytest.raises(TypeError, match=r"\['web1'\]"):
        await client.list_hosts(hosts="web1")
    with pytest.raises(TypeError, match="not one string"):
        client.execute_many("web1", "true")


# ---- execute_many -------------------------------------------------------------


async def test_results_come_in_completion_order(fake: tuple[FakeExec, str], client: Client) -> None:
    command = script(
        web1=[["after", "web2"], ["stdout", "one\n"], ["exit", 0]],
        web2=[["after", "web3"], ["stderr", "two\n"], ["exit", 3]],
        web3=[["stdout", "three\n"], ["signal", "TERM"]],
    )
    events = await collect(client.execute_many(["web*"], command, env={"A": "1"}, timeout=5))
    assert [e.host for e in events if isinstance(e, Result)] == ["web3", "web2", "web1"]
    web3, web2, web1 = events
    assert isinstance(web3, Result)
    assert (web3.exit_code, web3.signal, web3.stdout, web3.ok) == (-1, "TERM", b"three\n", False)
    assert isinstance(web2, Result)
    assert (web2.exit_code, web2.stderr, web2.stderr_bytes, web2.duration) == (3, b"two\n", 4, 0.01)
    assert isinstance(web1, Result)
    assert web1.check() is web1
    request = fake[0].seen.many[0]
    assert list(request.hosts) == ["web*"]
    assert (request.selector, request.max_parallel, request.stream_output) == ("", 0, False)
    assert request.request.host == ""
    assert request.request.command == command
    assert dict(request.request.env) == {"A": "1"}
    assert request.request.timeout.ToNanoseconds() == 5_000_000_000
    # timeout bounds each host's command; the call itself has no deadline unless asked.
    assert fake[0].seen.time_remaining == [None]


async def test_host_errors_are_events_with_their_class_and_may_have_run(client: Client) -> None:
    command = script(
        web1=[["error", "UNAVAILABLE", False, "cannot reach web1"]],
        web2=[["after", "web1"], ["error", "DEADLINE_EXCEEDED", True, "web2 timed out"]],
        web3=[["after", "web2"], ["error", "ABORTED", True, "lost web3"]],
        db1=[["after", "web3"], ["error", "INTERNAL", True, ""]],
    )
    events = await collect(client.execute_many(["web1", "web2", "web3", "db2", "db1"], command))
    errors = [e for e in events if isinstance(e, ScoutError)]
    assert len(errors) == len(events) == 5
    by_host = {e.host: e for e in errors}
    assert [type(by_host[h]) for h in ("web1", "web2", "web3", "db1", "db2")] == [
        Unavailable,
        CommandTimeout,  # the server stopped it: a Timeout that certainly ran
        Aborted,
        ServerError,
        HostNotFound,
    ]
    assert [by_host[h].may_have_run for h in ("web1", "web2", "web3", "db1", "db2")] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert str(by_host["web1"]) == "cannot reach web1"
    assert by_host["web2"].code == "DEADLINE_EXCEEDED"
    assert str(by_host["db1"]) == "scout call for host 'db1' failed with INTERNAL"
    # The server suggests names itself; the client keeps its words.
    assert str(by_host["db2"]).startswith("host 'db2' is not in the inventory; closest:")
    # The unknown host is known at once, so it comes first; the rest follow the script.
    assert [e.host for e in errors][1:] == ["web1", "web2", "web3", "db1"]


async def test_stream_output_yields_chunks_before_each_result(client: Client) -> None:
    command = script(
        web1=[["stdout", "hel"], ["after", "web2"], ["stdout", "lo\n"], ["stderr", "e\n"]],
        web2=[["stdout", "x\n"], ["exit", 1]],
    )
    events = await collect(
        client.execute_many(["web1"], command, selector="region=us", stream_output=True)
    )
    assert events[0] == HostOutput(host="web1", stream="stdout", data=b"hel")
    assert events[1] == HostOutput(host="web2", stream="stdout", data=b"x\n")
    assert isinstance(events[2], Result)
    assert (events[2].host, events[2].exit_code, events[2].stdout) == ("web2", 1, b"")
    assert events[3:5] == [
        HostOutput(host="web1", stream="stdout", data=b"lo\n"),
        HostOutput(host="web1", stream="stderr", data=b"e\n"),
    ]
    last = events[5]
    assert isinstance(last, Result)
    # The output came as chunks; the result keeps the counts.
    assert (last.host, last.stdout, last.stdout_bytes, last.stderr_bytes) == ("web1", b"", 6, 2)
    assert len(events) == 6


async def test_the_rpc_itself_fails_as_execute_does(client: Client) -> None:
    with pytest.raises(HostNotFound, match="no host matches") as info:
        await collect(client.execute_many([], "true", selector="role=nothing"))
    assert not info.value.may_have_run  # marked x-scout-started: false
    with pytest.raises(InvalidRequest, match="malformed selector") as bad:
        await collect(client.execute_many([], "true", selector="role"))
    assert not bad.value.may_have_run
    with pytest.raises(ValueError, match="max_parallel"):
        client.execute_many(["web1"], "true", max_parallel=-1)
    with pytest.raises(ValueError, match="max_failures"):
        client.execute_many(["web1"], "true", max_failures=-1)


async def test_an_rpc_cut_mid_fan_out_may_have_run(client: Client) -> None:
    command = script(
        web1=[["exit", 0]], web2=[["after", "web1"], ["abort", "UNAVAILABLE", "proxy reset"]]
    )
    events: list[HostEvent] = []
    with pytest.raises(Unavailable, match="proxy reset") as info:
        async for event in client.execute_many(["web1", "web2"], command):
            events.append(event)
    assert [type(e) for e in events] == [Result]
    assert info.value.may_have_run  # unmarked: it did not come from scout's decision


async def test_routing_header_names_the_first_host_only_when_it_is_a_name(
    fake: tuple[FakeExec, str], client: Client
) -> None:
    await collect(client.execute_many(["web2", "web*"], "true"))
    await collect(client.execute_many(["web?", "web2"], "true"))
    await collect(client.execute_many([], "true", selector="role=web"))
    assert fake[0].seen.hosts == ["web2", "", ""]
    with pytest.raises(InvalidRequest, match="printable ASCII") as info:
        client.execute_many(["wéb1"], "true")
    assert not info.value.may_have_run


async def test_options_value_and_keywords_and_max_parallel_reach_the_request(
    fake: tuple[FakeExec, str], client: Client
) -> None:
    options = ExecOptions(working_dir="/srv", stdin=b"in", rpc_timeout=8.0)
    await collect(
        client.execute_many(["web1"], "true", options, max_parallel=3, max_failures=2, text=True)
    )
    request = fake[0].seen.many[0]
    assert (request.max_parallel, request.max_failures) == (3, 2)
    assert (request.request.working_dir, request.request.stdin, request.request.text) == (
        "/srv",
        b"in",
        True,
    )
    remaining = fake[0].seen.time_remaining[0]
    assert remaining is not None
    assert 0 < remaining < 8.5  # the deadline is rpc_timeout (grpc's clock rounds)


async def test_leaving_the_block_cancels_the_fan_out(
    fake: tuple[FakeExec, str], client: Client
) -> None:
    command = script(web1=[["exit", 0]], any=[["sleep", 30]])
    async with client.execute_many(["web*"], command) as events:
        first = await anext(events)
        assert isinstance(first, Result)
        assert first.host == "web1"
        assert "running" in repr(events)
    await asyncio.wait_for(fake[0].seen.cancelled.wait(), 5)
    assert "done" in repr(events)


async def test_our_own_cancel_reads_as_cancelled(client: Client) -> None:
    call = client.execute_many(["web1"], script(any=[["sleep", 30]]))
    assert "not started" in repr(call)
    reader = asyncio.ensure_future(anext(call))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(Cancelled) as info:
        await reader
    assert info.value.may_have_run


async def test_unknown_event_kinds_are_skipped(client: Client) -> None:
    # A message with no event set stands for a newer server's kind.
    from client.fleet import host_event_from_response
    from scout.v1 import exec_pb2

    assert host_event_from_response(exec_pb2.ExecuteManyResponse(host="web1")) is None
    empty_chunk = exec_pb2.ExecuteManyResponse(host="web1", output=exec_pb2.OutputChunk())
    assert host_event_from_response(empty_chunk) is None


# ---- the one status table -------------------------------------------------------


@pytest.mark.parametrize("code", [c for c in S if c != S.OK], ids=lambda c: c.name)
def test_host_status_maps_like_an_rpc_status(code: grpc.StatusCode) -> None:
    rpc = from_rpc_error(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata()), "h")
    host = from_host_status(code.value[0], "why", "h", started=False)
    assert type(host) is type(rpc)
    assert (host.code, host.message, host.host, host.may_have_run) == (code.name, "why", "h", False)
    assert from_host_status(code.value[0], "why", "h", started=True).may_have_run


@pytest.mark.parametrize("number", [0, 17, -1, 999])
def test_host_status_ok_or_unknown_numbers_are_server_errors(number: int) -> None:
    err = from_host_status(number, "", "h", started=True)
    assert (type(err), err.code) == (ServerError, "UNKNOWN")
    assert "UNKNOWN" in str(err)


# ---- SyncClient ---------------------------------------------------------------


async def test_sync_client_lists_hosts_and_collects_outcomes(fake: tuple[FakeExec, str]) -> None:
    command = script(web1=[["after", "web2"], ["exit", 0]], web2=[["stdout", "x"], ["exit", 2]])

    def blocking() -> tuple[list[Host], list[Result | ScoutError]]:
        with SyncClient(fake[1]) as client:
            names = client.list_hosts(hosts=["web*"])
            outcomes = client.execute_many(
                ["web1", "web2", "gone"], command, max_parallel=2, max_failures=9
            )
            return names, outcomes

    hosts, outcomes = await asyncio.to_thread(blocking)
    assert [h.name for h in hosts] == ["web1", "web2", "web3"]
    assert [o.host for o in outcomes] == ["gone", "web2", "web1"]
    gone, web2, web1 = outcomes
    assert isinstance(gone, HostNotFound)
    assert isinstance(web2, Result)
    assert (web2.exit_code, web2.stdout) == (2, b"x")
    assert isinstance(web1, Result)
    assert web1.ok
    assert (fake[0].seen.many[0].max_parallel, fake[0].seen.many[0].max_failures) == (2, 9)


# ---- the README's example -------------------------------------------------------


async def test_readme_fleet_example_runs_as_a_script(
    fake: tuple[FakeExec, str], tmp_path: Path
) -> None:
    out = await run_python_block("`execute_many(hosts, command", fake[1], tmp_path, 10)
    lines = out.splitlines()
    assert lines[0] == "['web1', 'web2', 'web3']"
    assert sorted(lines[1:]) == ["web1 0 web1", "web2 0 web2", "web3 0 web3"]
    assert fake[0].seen.many[0].max_parallel == 20
