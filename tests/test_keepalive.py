"""Quiet calls and HTTP/2 pings: callers and proxies that ping keep their calls; callers
that vanish are found by scout's own pings.

A call whose command prints nothing sends no data either way; a caller's keepalive (or a
proxy's, like the shipped Envoy config's `connection_keepalive`) then pings a connection
with no data flowing, which grpc's default policy answers with GOAWAY "too many pings".
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from testkit.processes import eventually, gone, marker, sleeping
from testkit.proxies import serving, start_envoy
from testkit.relay import Relay
from testkit.scripted import ScriptedServer

from .scoutd import config, running_scout

QUIET = 20  # seconds the command prints nothing
# A caller that pings every second and keeps pinging while no data flows.
PINGING = (
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


async def quiet_call(target: str, options: tuple[tuple[str, int], ...] = ()) -> bytes:
    """Execute a command silent for QUIET seconds; its stdout."""
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = exec_pb2_grpc.ExecServiceStub(channel)
        request = exec_pb2.ExecuteRequest(host="h", command=f"sleep {QUIET}; echo done")
        response = await stub.Execute(request, timeout=QUIET + 30)
        return bytes(response.stdout)


@pytest.mark.slow
async def test_a_quiet_call_outlives_a_pinging_caller_and_envoys_pings(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    """Both at once: from a client pinging every second, and through the shipped Envoy
    config with its pings to scout every second (30 s as shipped)."""
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        envoy = await asyncio.to_thread(
            start_envoy, tmp_path / "envoy", [s.app.port] * 3, ping_interval="1s"
        )
        with serving(envoy):
            outcomes = await asyncio.gather(
                quiet_call(s.target, PINGING), quiet_call(envoy.target), return_exceptions=True
            )
    assert list(outcomes) == [b"done\n", b"done\n"], outcomes


async def test_a_caller_that_vanishes_mid_call_is_found_and_its_command_stopped(
    shell_server: ScriptedServer,
) -> None:
    """scout's own pings go unanswered: it drops the connection, which cancels the call,
    which stops the command (grpc's default would wait 2 hours before the first ping)."""
    m = marker()  # `sleep 30.x`: it would end by itself only after 30 s
    fast = {"keepalive_interval": 1.0, "keepalive_timeout": 1.0}
    async with running_scout(config({"h": shell_server.host_config("h")}, server=fast)) as s:
        relay = await Relay(s.app.port).start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}") as channel:
                stub = exec_pb2_grpc.ExecServiceStub(channel)
                call = stub.Execute(exec_pb2.ExecuteRequest(host="h", command=f"sleep {m}"))
                assert await sleeping(m, within=10.0)
                relay.freeze()
                assert await gone(f"sleep {m}", within=15.0)
                assert await eventually(lambda: s.app.service.rpcs.in_flight == 0)
                call.cancel()
        finally:
            await relay.close()


async def test_a_stricter_ping_policy_from_the_config_is_the_one_applied(
    shell_server: ScriptedServer,
) -> None:
    """[server] min_ping_interval = 5: the same every-second pinger now gets "too many
    pings" (GOAWAY after max_ping_strikes + 1 early pings), as with grpc's defaults."""
    strict = {"min_ping_interval": 5.0, "max_ping_strikes": 1}
    async with running_scout(config({"h": shell_server.host_config("h")}, server=strict)) as s:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await quiet_call(s.target, PINGING)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    assert "ping" in (info.value.details() or "").lower(), info.value.details()
