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
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, Self, TypedDict, TypeVar, Unpack

from .aio import DEFAULT_TARGET, Client, ExecuteManyCall
from .credentials import TLS
from .files import DownloadCall, FileInfo, HostUpload, Source
from .fleet import HostOutcome, HostOutput
from .retry import RetryPolicy

__all__ = ["SyncClient"]

T = TypeVar("T")
P = ParamSpec("P")


class ClientOptions(TypedDict, total=False):
    """Client's keyword arguments (see Client.__init__), which SyncClient passes on."""

    token: str | None
    tls: TLS | None
    channel_options: Sequence[tuple[str, Any]]
    deadline_margin: float
    split_fan_out: bool
    connect_timeout: float
    retry: RetryPolicy | None


def _blocking(
    method: Callable[Concatenate[Client, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncClient, P], T]:
    """A Client method as a SyncClient one: the same arguments, its result once awaited."""

    @functools.wraps(method)
    def run(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self._client, *args, **kwargs))

    return run


def _gathered(
    method: Callable[Concatenate[Client, P], ExecuteManyCall],
) -> Callable[Concatenate[SyncClient, P], list[HostOutcome]]:
    """Client.execute_many as a SyncClient method: every host's Result or ScoutError, in
    completion order, once the fan-out has ended. A host's error is an item of the list;
    only the RPC's own failure raises. Output chunks are not asked for."""

    @functools.wraps(method)
    def run(self: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> list[HostOutcome]:
        return self._run(_outcomes(method(self._client, *args, **kwargs)))

    run.__doc__ = _gathered.__doc__
    return run


async def _outcomes(call: ExecuteManyCall) -> list[HostOutcome]:
    """Run a fan-out to its end and keep each host's outcome."""
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

    def __init__(self, target: str = DEFAULT_TARGET, **options: Unpack[ClientOptions]) -> None:
        """Create the private loop's runner; the channel opens on the first call.

        The arguments are Client's: see Client.__init__.
        """
        self._client = Client(target, **options)
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

    # Client's calls, blocking: the same arguments and docs (see Client).
    execute = _blocking(Client.execute)
    list_hosts = _blocking(Client.list_hosts)
    health = _blocking(Client.health)
    execute_many = _gathered(Client.execute_many)
    upload = _blocking(Client.upload)

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
