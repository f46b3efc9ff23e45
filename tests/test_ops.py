"""Operating scout: /metrics after real traffic, JSON logs, request ids end to end."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scout.v1 import exec_pb2, exec_pb2_grpc
from testkit.scripted import ScriptedServer

from .scoutd import Scout, config, running_scout, secs
from .serverproc import host_toml, start_server


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
async def metered(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    cfg = config({"h": shell_server.host_config("h")}, metrics={"listen": "127.0.0.1:0"})
    async with running_scout(cfg) as s:
        yield s


async def test_metrics_after_execute_stream_a_failure_and_a_timeout(metered: Scout) -> None:
    s = metered
    assert s.app.metrics is not None
    await s.execute(host="h", command="printf 12345")
    with pytest.raises(grpc.aio.AioRpcError):
        await s.execute(host="nope", command="true")
    with pytest.raises(grpc.aio.AioRpcError):
        await s.execute(host="h", command="sleep 5", timeout=secs(0.5))
    start = exec_pb2.ExecuteRequest(host="h", command="echo hi", close_stdin=True)
    [_ async for _ in s.stub.Stream(iter([exec_pb2.StreamRequest(start=start)]))]
    m = await asyncio.to_thread(scrape, s.app.metrics.port)

    def value(name: str, **labels: str) -> float:
        return m[(name, tuple(sorted(labels.items())))]

    assert value("scout_rpcs_total", method="Execute", code="OK") == 1
    assert value("scout_rpcs_total", method="Execute", code="NOT_FOUND") == 1
    assert value("scout_rpcs_total", method="Execute", code="DEADLINE_EXCEEDED") == 1
    assert value("scout_rpcs_total", method="Stream", code="OK") == 1
    assert value("scout_rpc_duration_seconds_count", method="Execute") == 3
    assert value("scout_rpcs_in_flight", method="Execute") == 0
    assert value("scout_commands_total", outcome="exit_zero") == 2
    assert value("scout_commands_total", outcome="timeout") == 1
    assert value("scout_command_output_bytes_total", stream="stdout") == 5 + 3
    assert value("scout_pool_connects_total", result="ok") == 1
    assert value("scout_pool_checkouts_total") == 3
    assert value("scout_pool_reuses_total") == 2
    assert value("scout_pool_connect_duration_seconds_count") == 1
    assert value("scout_pool_connections", state="open") == 1
    assert value("scout_pool_channels_in_use") == 0
    assert value("scout_host_connections", host="h") == 1
    assert value("scout_host_commands_total", host="h", outcome="timeout") == 1
    # every section is counted (that none is held across a connect is a rule of the pool,
    # checked without a clock in test_pool.py; a hold's wall time here is the scheduler's)
    assert value("scout_shard_lock_hold_seconds_count") >= 6
    assert value("scout_shard_lock_wait_seconds_count") >= 3


async def test_per_host_series_can_be_turned_off(shell_server: ScriptedServer) -> None:
    cfg = config(
        {"h": shell_server.host_config("h")}, metrics={"listen": "127.0.0.1:0", "per_host": False}
    )
    async with running_scout(cfg) as s:
        await s.execute(host="h", command="true")
        assert s.app.metrics is not None
        m = await asyncio.to_thread(scrape, s.app.metrics.port)
    assert not [name for name, _ in m if name.startswith("scout_host_")]
    assert m[("scout_commands_total", (("outcome", "exit_zero"),))] == 1


async def test_json_logs_carry_the_request_id_the_caller_got_back(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    cfg = tmp_path / "scout.toml"
    cfg.write_text(
        "[exec]\nexport_request_id = true\n" + host_toml("h", shell_server.host_config("h"))
    )
    log = tmp_path / "scout.log"
    proc, target = start_server(["--config", str(cfg), "--log-format", "json"], log)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = exec_pb2_grpc.ExecServiceStub(channel)
            call = stub.Execute(
                exec_pb2.ExecuteRequest(host="h", command="echo $SCOUT_REQUEST_ID"),
                metadata=(("x-request-id", "req-42"),),
            )
            response = await call
            assert response.stdout == b"req-42\n"  # export_request_id
            assert ("x-request-id", "req-42") in tuple(await call.trailing_metadata())
            for bad in ("x" * 200, "two words"):  # not taken: a fresh one instead
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Execute(
                        exec_pb2.ExecuteRequest(host="nope", command="true"),
                        metadata=(("x-request-id", bad),),
                    )
                given = dict(info.value.trailing_metadata() or ())["x-request-id"]
                assert given != bad and len(given) == 32
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    (access,) = [x for x in lines if x.get("request_id") == "req-42" and "status" in x]
    assert access["logger"] == "server.rpc" and access["level"] == "INFO"
    assert (access["method"], access["status"], access["host"], access["caller"]) == (
        "Execute",
        "OK",
        "h",
        "-",
    )
    assert access["duration"] > 0
    refused = [x for x in lines if x.get("status") == "NOT_FOUND"]
    assert len(refused) == 2 and all("not in the inventory" in x["message"] for x in refused)
    assert not [x for x in lines if "traceback" in x]  # tracebacks only for INTERNAL


async def test_the_metrics_endpoint_answers_only_get_metrics(metered: Scout) -> None:
    assert metered.app.metrics is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", metered.app.metrics.port)
    writer.write(b"GET /secrets HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 404")
