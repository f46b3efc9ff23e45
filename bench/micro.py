"""What each piece of a warm Execute's path costs on its own, in CPU µs per call.

    .venv/bin/python -m bench.micro

A one-off investigation for issue 14 (its findings are in BENCHMARKS.md, "Cuts to the
request path"). Each row times one operation, or one operation against what replaced it, by
the process CPU clock over many calls inside a running event loop, so the loop's own
scheduling is counted where the operation needs it. The grpc rows run inside a real
grpc.aio handler.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable

import grpc

from scout.v1 import exec_pb2, exec_pb2_grpc

N = 100_000


def per_call(fn: Callable[[], object], n: int = N) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


async def per_await(make: Callable[[], Awaitable[object]], n: int = N) -> float:
    start = time.process_time()
    for _ in range(n):
        await make()
    return (time.process_time() - start) / n * 1e6


async def nothing() -> None:
    return None


async def in_task() -> None:
    await asyncio.get_running_loop().create_task(nothing())


async def under_timeout() -> None:
    async with asyncio.timeout(10):
        await nothing()


async def shielded() -> None:
    future = asyncio.get_running_loop().create_future()
    future.set_result(None)
    await asyncio.shield(future)


async def settled_wait() -> None:
    """launch._settled's shape: a future, a done callback and a timer around a task."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(nothing())
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    timer = loop.call_later(10, wake)
    await waiter
    timer.cancel()


class Handler(exec_pb2_grpc.ExecServiceServicer):
    async def Execute(self, request: object, context: grpc.aio.ServicerContext) -> object:
        metadata = per_call(context.invocation_metadata, 20_000)
        auth = per_call(context.auth_context, 20_000)
        return exec_pb2.ExecuteResponse(stdout=f"{metadata} {auth}".encode())


async def grpc_rows() -> dict[str, float]:
    server = grpc.aio.server()
    exec_pb2_grpc.add_ExecServiceServicer_to_server(Handler(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await exec_pb2_grpc.ExecServiceStub(channel).Execute(
            exec_pb2.ExecuteRequest(host="h", command="echo ok")
        )
    await server.stop(0)
    metadata, auth = (float(x) for x in reply.stdout.split())
    return {"invocation_metadata(), once more": metadata, "auth_context(), no TLS": auth}


async def loop_rows() -> dict[str, float]:
    base = await per_await(nothing)
    return {
        "a task per channel open (create, run, await)": await per_await(in_task) - base,
        "_settled: future, done callback, timer": await per_await(settled_wait) - base,
        "asyncio.timeout around an await": await per_await(under_timeout) - base,
        "asyncio.shield of a future": await per_await(shielded) - base,
    }


def plain_rows() -> dict[str, float]:
    prefix, serial = secrets.token_hex(8), itertools.count()
    quiet = logging.getLogger("bench.micro.quiet")
    quiet.setLevel(logging.INFO)
    out, err = b"ok\n", b""

    def response() -> bytes:
        reply = exec_pb2.ExecuteResponse(stdout=out, stderr=err, exit_code=0)
        return reply.SerializeToString()

    return {
        "request id: uuid4().hex": per_call(lambda: uuid.uuid4().hex),
        "request id: prefix + counter": per_call(lambda: f"{prefix}{next(serial):016x}"),
        "shard: crc32 of the name % 8": per_call(lambda: zlib.crc32(b"fake000") % 8),
        "logger.debug with DEBUG off": per_call(lambda: quiet.debug("x %s", out)),
        "ExecuteResponse built and serialized": per_call(response),
    }


def main() -> None:
    rows = plain_rows() | asyncio.run(loop_rows()) | asyncio.run(grpc_rows())
    for name, us in rows.items():
        print(f"| {name} | {us:.2f} |")


if __name__ == "__main__":
    main()
