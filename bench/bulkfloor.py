"""What glibc's malloc costs a gRPC bulk stream, with and without scout's setting.

`python -m bench.bulkfloor [RUNS]`: a grpc.aio server (no SSH, no scout code) streams
256 MiB as 1 MiB `DownloadResponse` messages to a grpc.aio client in another process,
RUNS times (default 3), first with glibc's defaults, then with `scout.allocator`'s
setting in both processes; per run the MiB/s and each process's CPU seconds. The
setting is a process's for good, so each case runs in a fresh interpreter.

Not a scenario of `make bench`: the measure behind scout.allocator (BENCHMARKS.md,
"What moved").
"""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import time
from multiprocessing.queues import Queue

import grpc

from scout.allocator import keep_freed_memory
from scout.v1 import exec_pb2, exec_pb2_grpc

from .loadgen import tree_cpu
from .specs import GRPC_OPTIONS

SIZE, CHUNK = 256 * 2**20, 2**20


class _Streamer(exec_pb2_grpc.ExecServiceServicer):
    async def Download(
        self, request: exec_pb2.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> None:
        data = bytes(CHUNK)
        for _ in range(SIZE // CHUNK):
            await context.write(exec_pb2.DownloadResponse(chunk=data))


def _serve(ports: Queue[int]) -> None:
    async def serve() -> None:
        server = grpc.aio.server(options=GRPC_OPTIONS)
        exec_pb2_grpc.add_ExecServiceServicer_to_server(_Streamer(), server)
        ports.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


async def _read(port: int, server: int, runs: int) -> list[tuple[float, float, float]]:
    """Per run: MiB/s and the server's and this client's CPU seconds."""
    rows = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
        stub = exec_pb2_grpc.ExecServiceStub(channel)
        for _ in range(runs):
            server_cpu, client_cpu = tree_cpu(server), time.process_time()
            began = time.perf_counter()
            got = 0
            async for message in stub.Download(exec_pb2.DownloadRequest(host="h", path="/p")):
                got += len(message.chunk)
            wall = time.perf_counter() - began
            assert got == SIZE
            server_cpu, client_cpu = tree_cpu(server) - server_cpu, time.process_time() - client_cpu
            rows.append((got / wall / 2**20, server_cpu, client_cpu))
    return rows


def measure(runs: int) -> list[tuple[float, float, float]]:
    """RUNS streams with this process's allocator (the client here, a forked server):
    per run MiB/s, server CPU, client CPU."""
    ports: Queue[int] = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    try:
        assert server.pid is not None
        return asyncio.run(_read(ports.get(timeout=30), server.pid, runs))
    finally:
        server.terminate()
        server.join(10)


def _case(kept: bool, runs: int) -> None:
    """One case: this process's allocator set (or not), then its runs."""
    if kept:
        keep_freed_memory()
    for rate, server, client in measure(runs):
        print(f"{rate:6.0f} MiB/s  CPU s: server {server:.2f}  client {client:.2f}", flush=True)


def main() -> None:
    """Both cases, each in a fresh interpreter."""
    if len(sys.argv) > 2:  # one case, run by the parent below
        _case(sys.argv[1] == "kept", int(sys.argv[2]))
        return
    runs = sys.argv[1] if len(sys.argv) > 1 else "3"
    for case in ("default", "kept"):
        print(f"malloc {case}:", flush=True)
        subprocess.run([sys.executable, "-m", "bench.bulkfloor", case, runs], check=True)


if __name__ == "__main__":
    main()
