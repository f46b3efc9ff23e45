"""A blocking wrapper around the asyncio `Client`, for scripts and sync code.

Design: one private event loop per `SyncClient`, driven by `asyncio.Runner` in
the calling thread. The gRPC channel binds to that loop, so it stays warm
across calls (a fresh `asyncio.run` per call would reconnect every time). A
lock makes calls from several threads safe, at the price of running them one
at a time; code that wants concurrency should use the asyncio `Client`.
Calling from inside a running event loop is refused by asyncio: use `Client`
there. Ctrl-C in the main thread cancels the RPC, and the server stops the
command, before KeyboardInterrupt propagates.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, Self, TypeVar

from client.aio import DEFAULT_DEADLINE_MARGIN, DEFAULT_TARGET, Client
from client.credentials import TLS
from client.options import ExecOptions
from client.results import Result

__all__ = ["SyncClient"]

T = TypeVar("T")


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
        self, host: str, command: str, options: ExecOptions | None = None, **fields: Any
    ) -> Result:
        """Run a command and wait for its Result; same arguments as Client.execute."""
        return self._run(self._client.execute(host, command, options, **fields))

    def health(self, service: str = "", *, rpc_timeout: float | None = 10.0) -> str:
        """Ask the server's health service; returns e.g. "SERVING"."""
        return self._run(self._client.health(service, rpc_timeout=rpc_timeout))
