"""A TCP relay on loopback that can go silent: a caller whose machine vanished, as scout
sees it (the connection stays open, nothing more arrives, nothing is acknowledged above
TCP), without touching the network configuration."""

from __future__ import annotations

import asyncio
import contextlib


class Relay:
    """Forwards 127.0.0.1:port to 127.0.0.1:target until freeze(); then forwards nothing."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._frozen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Relay:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        """Stop forwarding both ways, for good; every socket stays open."""
        self._frozen.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while not self._frozen.is_set():
            data = await source.read(65536)
            if not data or self._frozen.is_set():
                break
            sink.write(data)
            await sink.drain()
        if not self._frozen.is_set():
            sink.close()

    async def close(self) -> None:
        """Stop listening, drop every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
