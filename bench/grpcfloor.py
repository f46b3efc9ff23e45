"""A gRPC-only ExecService that answers at once, with no SSH behind it: the gRPC floor.

Same grpc.aio server, same generated stubs, same message limits as scout, but `Execute`
returns a fixed response without touching SSH. Its CPU per request is what the gRPC hop
alone costs in this process model; with the raw asyncssh client's CPU per request (the
SSH floor), it splits scout's cost into gRPC, SSH, and scout's own work in between.

Run as `python -m bench.grpcfloor`; it prints one JSON line with its endpoint when ready.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import grpc

from scout.v1 import exec_pb2, exec_pb2_grpc

from .fakessh import REPLY
from .procs import print_json
from .specs import GRPC_OPTIONS


class _Echo(exec_pb2_grpc.ExecServiceServicer):
    """Execute answers what the protocol-only SSH host would, without SSH."""

    async def Execute(self, request: exec_pb2.ExecuteRequest, context: Any) -> Any:
        return exec_pb2.ExecuteResponse(stdout=REPLY, exit_code=0, stdout_bytes=len(REPLY))


async def serve() -> None:
    """Serve on 127.0.0.1:0 until SIGTERM."""
    server = grpc.aio.server(options=[*GRPC_OPTIONS, ("grpc.so_reuseport", 0)])
    exec_pb2_grpc.add_ExecServiceServicer_to_server(_Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print_json({"endpoints": [("127.0.0.1", port)]})
    await stop.wait()
    await server.stop(1.0)


if __name__ == "__main__":
    asyncio.run(serve())
