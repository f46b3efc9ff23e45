"""A command whose time is up before it can start never reaches the host.

A command's budget (its timeout, or the RPC deadline less the time kept to stop it) is
spent while waiting: for a channel place, a connect, a free ExecuteMany slot, a Stream's
`start`. A warm connection then answers at once, and the channel open used to get at
least 0.1 s whatever was left: the exec went out with no time left, and the command was
stopped as soon as it started (anything it did in between was done, and the caller was
told "may have run"). Checked on the far side: the server's count of exec requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from scout.v1 import exec_pb2
from server.audit import CallRecord
from server.errors import CommandTimeout
from server.keyfiles import ShellKeys
from server.requests import check_execute
from testkit.processes import marker
from testkit.scripted import ScriptedServer, scripted_server

from .scoutd import config, running_scout, secs, started


@pytest.fixture
async def slowish_open(ssh_keys: ShellKeys) -> AsyncIterator[ScriptedServer]:
    """A server that confirms each channel open 50 ms late (under the old 0.1 s floor)."""
    async with scripted_server(ssh_keys, open_delay=0.05) as server:
        yield server


async def test_a_warm_connection_starts_nothing_once_the_deadline_is_too_near(
    shell_server: ScriptedServer,
) -> None:
    """50 ms to the RPC deadline: less than the time kept to stop a command, so none may
    start. Called below the RPC layer so the 50 ms are exact, not a race with grpc."""
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        await s.execute(host="h", command="true")  # a warm connection with free channels
        service = s.app.service
        request = exec_pb2.ExecuteRequest(host="h", command=f"sleep {marker()}")
        host, spec = check_execute(service.config, request)
        with pytest.raises(CommandTimeout) as info:
            await service.execute_once(host, spec, request, 0.05, CallRecord("Execute", "t"))
        assert info.value.started is False, info.value.message
        assert shell_server.stats.exec_requests == 1  # the warm-up's `true` only
        assert s.app.pool.reserved == 0


async def test_an_open_that_ends_after_the_timeout_runs_nothing(
    slowish_open: ScriptedServer,
) -> None:
    """A 10 ms timeout, a channel open of 50 ms: the exec would go out 40 ms too late."""
    async with running_scout(config({"h": slowish_open.host_config("h")})) as s:
        await s.execute(host="h", command="true")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.execute(host="h", command=f"sleep {marker()}", timeout=secs(0.01))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert started(info.value) == "false", info.value.details()
        await s.execute(host="h", command="true")  # the connection was not retired...
        assert slowish_open.stats.accepted == 1
    assert slowish_open.stats.exec_requests == 2  # ...and only the two `true`s ran
