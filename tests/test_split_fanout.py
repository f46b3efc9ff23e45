"""Client(split_fan_out=True): a fan-out as one call per host, against a real scout.

What a split fan-out yields must be what one ExecuteMany yields (the events, the call's
own failures), within the client's max_parallel, and leaving it must stop every host's
command. tests/test_replicas.py shows what it is for: behind nginx, each host's call
lands on the replica that holds its connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client import (
    Client,
    HostEvent,
    HostNotFound,
    HostOutput,
    InvalidRequest,
    Result,
    ScoutError,
    SyncClient,
    Timeout,
)
from server.keyfiles import ShellKeys
from testkit.processes import gone, marker, running
from testkit.scripted import scripted_fleet

from .scoutd import Scout, config, running_scout

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def scout(ssh_keys: ShellKeys) -> AsyncIterator[Scout]:
    """scout with four hosts, a0 ... a3, each its own in-process SSH server."""
    async with scripted_fleet(ssh_keys, 4) as servers:
        hosts = {f"a{i}": s.host_config(f"a{i}") for i, s in enumerate(servers)}
        async with running_scout(config(hosts)) as running:
            yield running


def outcomes(events: list[HostEvent]) -> dict[str, tuple[object, ...]]:
    """Each host's outcome, comparable across the two ways: its output joined from
    chunks or taken from the Result, and its exit code or error class."""
    output: dict[str, bytes] = {}
    ends: dict[str, tuple[object, ...]] = {}
    for event in events:
        if isinstance(event, HostOutput):
            output[event.host] = output.get(event.host, b"") + event.data
        elif isinstance(event, Result):
            ends[event.host] = (event.exit_code, output.get(event.host, b"") + event.stdout)
        else:
            assert isinstance(event, ScoutError)
            ends[event.host] = (type(event), event.code, event.may_have_run)
    return ends


@pytest.mark.parametrize("stream_output", [False, True])
async def test_a_split_fan_out_yields_what_one_execute_many_does(
    scout: Scout, stream_output: bool
) -> None:
    targets = ["nowhere", "a[02]", "a1", "a0"]  # a0 twice; "nowhere" is not in the inventory
    command = "echo out-$((6 * 7)); exit 3"
    seen = []
    for split in (False, True):
        async with Client(scout.target, split_fan_out=split) as client:
            call = client.execute_many(
                targets, command, selector="", stream_output=stream_output, timeout=10
            )
            async with call:
                seen.append([event async for event in call])
    one, split_events = seen
    assert outcomes(split_events) == outcomes(one)
    assert outcomes(split_events) == {
        "nowhere": (HostNotFound, "NOT_FOUND", False),
        **{host: (3, b"out-42\n") for host in ("a0", "a1", "a2")},
    }
    if stream_output:  # chunks come before their host's Result, which then has no output
        results = [e for e in split_events if isinstance(e, Result)]
        assert all(r.stdout == b"" and r.stdout_bytes == 7 for r in results)


async def test_the_call_itself_fails_only_for_no_targets_or_nothing_matching(
    scout: Scout,
) -> None:
    async with Client(scout.target, split_fan_out=True) as client:
        with pytest.raises(InvalidRequest, match="at least one target"):
            async for _ in client.execute_many([], "true"):
                pass
        with pytest.raises(HostNotFound, match="no host in the inventory matches"):
            async for _ in client.execute_many(["b*"], "true", selector="role=none"):
                pass
        # A selector alone picks hosts through ListHosts (none of these has labels).
        with pytest.raises(HostNotFound):
            async for _ in client.execute_many([], "true", selector="role=web"):
                pass


async def test_max_parallel_bounds_the_hosts_running_at_once(scout: Scout, tmp_path: Path) -> None:
    lock = tmp_path / "lock"  # every host is this machine: mkdir fails while one holds it
    command = f"mkdir {lock} || echo CLASH; sleep 0.2; rmdir {lock}"

    def blocking() -> list[object]:  # SyncClient passes split_fan_out on too
        with SyncClient(scout.target, split_fan_out=True) as client:
            return list(client.execute_many(["a*"], command, max_parallel=1, timeout=10))

    done = await asyncio.to_thread(blocking)  # the SSH servers run on this loop meanwhile
    assert sorted(r.host for r in done if isinstance(r, Result)) == ["a0", "a1", "a2", "a3"]
    assert all(isinstance(r, Result) and r.stdout == b"" for r in done)


async def test_leaving_the_block_stops_every_hosts_command(scout: Scout) -> None:
    m = marker()
    async with Client(scout.target, split_fan_out=True) as client:
        call = client.execute_many(["a*"], f"sleep {m}")
        async with call:
            reader = asyncio.ensure_future(anext(call))
            assert await running(m)
            reader.cancel()
        assert await gone(m)


async def test_the_whole_calls_deadline_raises_timeout_and_stops_the_commands(
    scout: Scout,
) -> None:
    m = marker()
    async with Client(scout.target, split_fan_out=True) as client:
        with pytest.raises(Timeout, match="fan-out deadline"):
            async for _ in client.execute_many(["a*"], f"sleep {m}", rpc_timeout=1.0):
                pass
    assert await gone(m)


@pytest.mark.parametrize(
    ("targets", "picked"),
    [
        (["a*", "!a1", "!a[23]"], {"a0"}),
        (["!a0"], {"a1", "a2", "a3"}),  # exclusions alone: from every host
        (["a0", "a1", "!a1", "nowhere", "!nowhere"], {"a0"}),
        (["a0", "a2", "!a[12]"], {"a0"}),  # literal names, a glob exclusion, no ListHosts glob
    ],
)
async def test_exclusions_pick_the_same_hosts_both_ways(
    scout: Scout, targets: list[str], picked: set[str]
) -> None:
    seen = []
    for split in (False, True):
        async with (
            Client(scout.target, split_fan_out=split) as client,
            client.execute_many(targets, "echo hi", timeout=10) as call,
        ):
            seen.append(outcomes([event async for event in call]))
    assert seen[0] == seen[1]
    assert set(seen[0]) == picked


async def test_max_failures_stops_starting_hosts_both_ways(scout: Scout) -> None:
    seen = []
    for split in (False, True):
        async with Client(scout.target, split_fan_out=split) as client:
            call = client.execute_many(["a*"], "exit 7", max_parallel=1, max_failures=2)
            async with call:
                events = [event async for event in call]
        seen.append(outcomes(events))
        stopped = [e for e in events if isinstance(e, ScoutError)]
        assert [str(e.message) for e in stopped] == ["not started: 2 failures (max_failures 2)"] * 2
    assert seen[0] == seen[1]
    assert [seen[0][h][0] for h in ("a0", "a1")] == [7, 7]
    assert {seen[0][h][1:] for h in ("a2", "a3")} == {("ABORTED", False)}  # nothing ran
