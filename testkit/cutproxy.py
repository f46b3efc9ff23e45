"""A TCP proxy on loopback that cuts a connection after so many bytes upstream.

For "the connection is cut in the middle": both sockets of the connection that carried
the `cut_after`-th byte are aborted (no orderly close), as when a machine dies or a
network path drops; each side learns of it only from its own socket. Connections made
after the cut pass through (a reconnect works), unless `abort()` is called again.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class CutProxy:
    """Forwards 127.0.0.1:port to target; cuts the connection that sends the
    `cut_after`-th byte upstream (counted over all connections), once."""

    target: tuple[str, int]
    cut_after: int
    port: int = 0
    upstream_bytes: int = 0
    cut: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _connections: list[list[asyncio.StreamWriter]] = field(default_factory=list)

    async def start(self) -> CutProxy:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        pair = [writer, up_writer]
        self._connections.append(pair)
        await asyncio.gather(
            self._pump(reader, up_writer, pair, count=True),
            self._pump(up_reader, writer, pair, count=False),
            return_exceptions=True,
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: list[asyncio.StreamWriter],
        *,
        count: bool,
    ) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if count and not self.cut.is_set():
                self.upstream_bytes += len(data)
                if self.upstream_bytes >= self.cut_after:
                    self.cut.set()
                    _abort(pair)
                    return
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def abort(self) -> None:
        """Cut every connection open now."""
        self.cut.set()
        for pair in self._connections:
            _abort(pair)

    async def close(self) -> None:
        """Stop listening and cut what is left."""
        self.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _abort(pair: list[asyncio.StreamWriter]) -> None:
    for writer in pair:
        writer.transport.abort()
