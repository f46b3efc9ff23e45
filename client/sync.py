"""A blocking wrapper around the asyncio `Client`, for scripts and sync code.

Design: one private event loop per `SyncClient`, driven by `asyncio.Runner` in
the calling thread. The gRPC channel binds to that loop, so it stays warm
across calls (a fresh `asyncio.run` per call would reconnect every time). A
lock makes calls from several threads safe, at the price of running them one
at a time; code that wants concurrency should use the asyncio `Client`.
Calling from inside a running event loop is refused by asyncio: use `Client`
there. Ctrl-C in the main thread cancels the RPC, and the server stops the
command, before KeyboardInterrupt propagates.

`execute_many` returns a list: every host's outcome in completion order once
the fan-out has ended, since a blocking iterator would hold the loop (and the
lock) between items. Code that wants each host as it finishes, or its output
as it comes, iterates the asyncio `Client.execute_many`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, Self, TypeVar

from .aio import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DEADLINE_MARGIN,
    DEFAULT_TARGET,
    Client,
    ExecuteManyCall,
)
from .credentials import TLS
from .files import DownloadCall, FileInfo, HostUpload, Source, Uploaded
from .fleet import Host, HostOutcome, HostOutput
from .options import ExecOptions
from .results import Result

__all__ = ["SyncClient"]

T = TypeVar("T")


async def _outcomes(call: ExecuteManyCall) -> list[HostOutcome]:
    """Run a fan-out to its end and keep each host's outcome (output chunks are not asked for)."""
    async with call:
        return [event async for event in call if not isinstance(event, HostOutput)]


async def _whole(call: DownloadCall) -> tuple[bytes, FileInfo]:
    """A download's bytes and its end."""
    async with call:
        data = b"".join([chunk async for chunk in call])
    assert call.info is not None
    return data, call.info


async def _collect(events: AsyncIterator[HostUpload]) -> list[HostUpload]:
    return [event async for event in events]


class SyncClient:
    """A blocking scout client; see the module docstring for how it runs."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: TLS | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        deadline_margin: float = DEFAULT_DEADLINE_MARGIN,
        split_fan_out: bool = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        """Create the private loop's runner; the channel opens on the first call.

        The arguments are Client's: see Client.__init__.
        """
        self._client = Client(
            target,
            token=token,
            tls=tls,
            channel_options=channel_options,
            deadline_margin=deadline_margin,
            split_fan_out=split_fan_out,
            connect_timeout=connect_timeout,
        )
        self._runner = asyncio.Runner()
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        """Show the wrapped client, for logs."""
        return f"<SyncClient {self._client!r}>"

    def __enter__(self) -> Self:
        """Use as `with SyncClient() as c:` so the channel and loop always close."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close on the way out."""
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one coroutine on the private loop, one caller at a time."""
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError("this scout client is closed")
            return self._runner.run(coro)

    def close(self) -> None:
        """Close the channel, then the private loop. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._runner.run(self._client.close())
            finally:
                self._runner.close()

    def execute(
        self,
        host: str,
        command: str = "",
        options: ExecOptions | None = None,
        *,
        argv: Sequence[str] | None = None,
        **fields: Any,
    ) -> Result:
        """Run a command (a shell line, or argv=[...]) and wait for its Result; same
        arguments as Client.execute."""
        return self._run(self._client.execute(host, command, options, argv=argv, **fields))

    def list_hosts(
        self, selector: str = "", hosts: Sequence[str] = (), *, rpc_timeout: float | None = 10.0
    ) -> list[Host]:
        """List the inventory hosts the selector and names or globs pick; see Client.list_hosts."""
        return self._run(self._client.list_hosts(selector, hosts, rpc_timeout=rpc_timeout))

    def execute_many(
        self,
        hosts: Sequence[str],
        command: str = "",
        options: ExecOptions | None = None,
        *,
        argv: Sequence[str] | None = None,
        selector: str = "",
        max_parallel: int = 0,
        max_failures: int = 0,
        **fields: Any,
    ) -> list[HostOutcome]:
        """Run one command on many hosts; every host's Result or ScoutError, in completion order.

        Same arguments as Client.execute_many, without stream_output; a host's error
        is an item of the list, and only the RPC's own failure raises.
        """
        call = self._client.execute_many(
            hosts,
            command,
            options,
            argv=argv,
            selector=selector,
            max_parallel=max_parallel,
            max_failures=max_failures,
            **fields,
        )
        return self._run(_outcomes(call))

    def upload(self, host: str, path: str, source: Source, **options: Any) -> Uploaded:
        """Write a file on host; the options are Client.upload's."""
        return self._run(self._client.upload(host, path, source, **options))

    def download(self, host: str, path: str, **options: Any) -> tuple[bytes, FileInfo]:
        """Read a file (or a range of it) whole into memory, with its end's info; for big
        files use download_to_file. The options are Client.download's."""
        return self._run(_whole(self._client.download(host, path, **options)))

    def download_to_file(
        self, host: str, path: str, local: str | os.PathLike[str], **options: Any
    ) -> FileInfo:
        """Read a file into local (renamed into place once its digest matched)."""
        return self._run(self._client.download(host, path, **options).to_file(local))

    def upload_many(
        self, hosts: Sequence[str], path: str, source: Source, **options: Any
    ) -> list[HostUpload]:
        """Write one file to many hosts; every host's outcome once all are done."""
        return self._run(_collect(self._client.upload_many(hosts, path, source, **options)))

    def health(self, service: str = "", *, rpc_timeout: float | None = 10.0) -> str:
        """Ask the server's health service; returns e.g. "SERVING"."""
        return self._run(self._client.health(service, rpc_timeout=rpc_timeout))
