"""A TCP proxy on loopback that cuts the connection after so many bytes upstream.

For "the caller's connection is cut in the middle": both sockets are aborted (no
orderly close), as when a client machine dies or a network path drops, and the server
learns of it only from its own socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class CutProxy:
    """Forwards 127.0.0.1:port to target; aborts both sides once `cut_after` bytes went up."""

    target: tuple[str, int]
    cut_after: int
    port: int = 0
    upstream_bytes: int = 0
    cut: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> CutProxy:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pump(reader, up_writer, count=True),
            self._pump(up_reader, writer, count=False),
            return_exceptions=True,
        )

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        while not self.cut.is_set():
            data = await reader.read(65536)
            if not data:
                break
            if count:
                self.upstream_bytes += len(data)
                if self.upstream_bytes >= self.cut_after:
                    self.abort()
                    return
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def abort(self) -> None:
        """Cut every connection now."""
        self.cut.set()
        for writer in self._writers:
            writer.transport.abort()

    async def close(self) -> None:
        """Stop listening and cut what is left."""
        self.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
