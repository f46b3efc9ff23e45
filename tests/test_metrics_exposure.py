"""/metrics off loopback is said loudly at start, as plaintext gRPC off loopback is: it
has no authentication and names every host and caller. It is a warning, not a refusal:
Prometheus scraping from another machine is a normal setup. Whoever reaches it cannot
hold more than a few of scout's connections (its files) at once."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest

from server.config import Config, MetricsSettings, check_exposure
from server.metrics import MAX_CONNECTIONS, MetricsServer
from testkit.processes import eventually
from testkit.scripted import ScriptedServer

from .scoutd import config, running_scout
from .serverproc import server_exits

UNREACHABLE = "192.0.2.1:9464"  # TEST-NET-1: no machine's address, so binding it fails


def with_metrics(listen: str) -> Config:
    return Config(metrics=MetricsSettings(listen=listen))


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "10.1.2.3:9464"])
def test_metrics_off_loopback_is_a_warning(listen: str) -> None:
    warnings = check_exposure(with_metrics(listen), "127.0.0.1:50051")
    assert [w for w in warnings if f"[metrics] listen = {listen}" in w], warnings
    assert all("WITHOUT authentication" in w for w in warnings)


@pytest.mark.parametrize("listen", ["", "127.0.0.1:9464", "[::1]:9464", "localhost:9464"])
def test_metrics_on_loopback_or_off_is_quiet(listen: str) -> None:
    assert check_exposure(with_metrics(listen), "127.0.0.1:50051") == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_server_says_it_before_it_binds(tmp_path: Path, workers: str) -> None:
    """One process serves /metrics itself; with workers, the supervisor does (its workers
    serve none), so each path logs the warning. The bind then fails: nothing listens."""
    config = tmp_path / "scout.toml"
    config.write_text("")
    args = ("--config", str(config), "--listen", "127.0.0.1:0", "--workers", workers)
    done = server_exits(*args, "--metrics", UNREACHABLE)
    err = done.stderr.decode()
    assert done.returncode != 0, err
    assert f"[metrics] listen = {UNREACHABLE}" in err and "WITHOUT authentication" in err, err


async def test_idle_connections_cannot_pile_up_and_a_scrape_works_once_they_go(
    shell_server: ScriptedServer,
) -> None:
    """Connections that send nothing held one socket each for 5 s, with no bound on how
    many: a loop of them took scout's open files (which SSH connections need too)."""
    cfg = config({"h": shell_server.host_config("h")}, metrics={"listen": "127.0.0.1:0"})
    async with running_scout(cfg) as s:
        metrics = s.app.metrics
        assert metrics is not None
        port = metrics.port
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
        assert await eventually(lambda: metrics.connections == MAX_CONNECTIONS)
        reader, writer = await asyncio.open_connection("127.0.0.1", metrics.port)
        busy = await asyncio.wait_for(reader.read(), 3.0)  # at once, not after 5 s
        writer.close()
        assert busy.startswith(b"HTTP/1.1 503"), busy
        for _, idle_writer in idle:
            idle_writer.close()
            with contextlib.suppress(ConnectionError):
                await idle_writer.wait_closed()
        assert await eventually(lambda: metrics.connections == 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", metrics.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        scraped = await asyncio.wait_for(reader.read(), 10.0)
        writer.close()
        assert scraped.startswith(b"HTTP/1.1 200") and b"scout_rpcs_total" in scraped


async def test_a_scraper_that_never_reads_its_answer_gives_its_place_back() -> None:
    """The answer's write had no time bound: a scraper that asked and then read nothing
    held its connection (and, with the bound above, one of 16 places) for good."""

    async def large() -> bytes:
        return b"# " + b"x" * (32 * 1024 * 1024) + b"\n"  # more than any socket buffers

    server = MetricsServer(large, write_timeout=0.5)
    await server.start("127.0.0.1:0")
    stuck = socket.socket()
    try:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.setblocking(False)
        await asyncio.get_running_loop().sock_connect(stuck, ("127.0.0.1", server.port))
        await asyncio.get_running_loop().sock_sendall(stuck, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert await eventually(lambda: server.connections == 1)
        assert await eventually(lambda: server.connections == 0, within=10.0)
    finally:
        stuck.close()
        await server.stop()
