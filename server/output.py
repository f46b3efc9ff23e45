"""A command's output on its way to the caller, bounded per call and server-wide.

Execute keeps output in memory until the command ends: `ExecuteOutput` caps each stream
(`max_output_bytes`) and charges what it keeps to the server-wide `OutputBudget`
(`[exec] max_buffered_output_bytes`). When the budget is spent, the channel stops
reading: the SSH window closes, the remote command blocks on its writes, and it waits
for room within its deadline. Stream keeps little: `OutputQueue` holds at most ~2 MiB
and pauses the channel while the caller is behind.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

STDOUT, STDERR = 1, 2
HIGH_WATER = 1024 * 1024  # keyed commands' replay (server.replay): pause above this lag
LOW_WATER = 256 * 1024  # ... and resume below this
MAX_MESSAGE = 256 * 1024  # ... and merge chunks of one kind up to this size
# OutputQueue (Stream, ExecuteMany): fewer, larger messages for a bulk stream
QUEUE_HIGH_WATER = 2 * 1024 * 1024  # pause the channel above this many buffered bytes
QUEUE_LOW_WATER = 512 * 1024  # ... and resume below this
QUEUE_MESSAGE = 1024 * 1024  # merge chunks of one kind up to this size
GATHER_WITHIN = 0.001  # how long output that keeps arriving may wait to be merged


class Pausable(Protocol):
    """The part of an SSH channel that flow control needs."""

    def pause_reading(self) -> None:
        """Stop delivering received data (the peer's window then closes)."""

    def resume_reading(self) -> None:
        """Deliver received data again."""


class Output(Protocol):
    """Where a run's output goes (ExecuteOutput, OutputQueue): fed by the channel, paced
    through it, told when no more will come; `stdout`/`stderr` count the bytes."""

    stdout: CappedBuffer
    stderr: CappedBuffer

    def feed(self, kind: int, data: bytes) -> None:
        """A chunk of STDOUT or STDERR arrived."""

    def attach(self, chan: Pausable) -> None:
        """The channel to pause and resume."""

    def close(self) -> None:
        """The channel is closed: no more output will come."""


class CappedBuffer:
    """Counts output against `cap` bytes (0: no cap); collects the part under it if asked."""

    __slots__ = ("cap", "chunks", "collect", "kept", "total")

    def __init__(self, cap: int, *, collect: bool = True) -> None:
        self.cap = cap
        self.collect = collect
        self.chunks: list[bytes] = []
        self.kept = 0
        self.total = 0

    def feed(self, data: bytes) -> bytes:
        """Count everything; keep and return the part that fits under the cap."""
        self.total += len(data)
        if self.cap and self.kept + len(data) > self.cap:
            data = data[: self.cap - self.kept]
        if data:
            self.kept += len(data)
            if self.collect:
                self.chunks.append(data)
        return data

    @property
    def truncated(self) -> bool:
        """Whether bytes were discarded."""
        return self.total > self.kept

    def value(self) -> bytes:
        """The kept bytes."""
        return b"".join(self.chunks)


class OutputBudget:
    """Bytes of Execute output held in memory, server-wide, and who waits for room.

    Charging never fails: a chunk has already arrived when it is charged. Past the limit,
    one call at a time (the first to get there) may go on and finish: without it, calls
    that each hold part of the budget would wait for each other until their deadlines.
    The others pause their channels and are resumed, in order, as room frees; when that
    call ends and the paused ones still hold the whole budget, the first of them is
    resumed to take its place. So the limit is exceeded by at most one call's output
    (4 x max_output_bytes) plus the data already in flight (one SSH window per paused
    channel; `max_concurrent_rpcs` bounds those).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.paused = 0  # calls paused for room, in all
        self.overdraft: object | None = None  # the one call allowed past the limit
        self._waiting: deque[Callable[[], None]] = deque()

    def charge(self, n: int) -> bool:
        """Count n bytes; whether there is still room after them."""
        self.used += n
        self.peak = max(self.peak, self.used)
        return self.used <= self.limit

    def when_room(self, resume: Callable[[], None]) -> None:
        """Call resume once the budget has room again."""
        self.paused += 1
        self._waiting.append(resume)

    def release(self, n: int) -> None:
        """n bytes are gone; wake waiters while there is room, and when there is none and
        nobody holds the overdraft, the first waiter (it takes the overdraft at its next
        chunk): the paused calls may hold the whole budget between them, and none of them
        could finish if none of them were woken."""
        self.used -= n
        while self._waiting and self.used < self.limit:
            self._waiting.popleft()()
        if self._waiting and self.overdraft is None:
            self._waiting.popleft()()

    def forget(self, resume: Callable[[], None]) -> None:
        """A paused call is over: it waits for room no more."""
        with contextlib.suppress(ValueError):
            self._waiting.remove(resume)

    @property
    def waiting(self) -> int:
        """Callers paused for room."""
        return len(self._waiting)


class ExecuteOutput:
    """Execute's stdout and stderr: capped, charged to the budget, paused when it is spent."""

    def __init__(self, cap: int, budget: OutputBudget, *, text: bool) -> None:
        self.stdout = CappedBuffer(cap)
        self.stderr = CappedBuffer(cap)
        self._budget = budget
        self._weight = 2 if text else 1  # `text` keeps a decoded copy of each stream
        self._charged = 0
        self._chan: Pausable | None = None
        self._paused = False
        self._spent = False  # the budget was spent before a channel was attached

    def attach(self, chan: Pausable) -> None:
        """The channel to pause when the budget is spent."""
        self._chan = chan
        if self._spent:
            self._pause()

    def feed(self, kind: int, data: bytes) -> None:
        """Keep a chunk (cut at the cap) and charge it."""
        kept = (self.stdout if kind == STDOUT else self.stderr).feed(data)
        if not kept:
            return
        charge = len(kept) * self._weight
        self._charged += charge
        budget = self._budget
        if not budget.charge(charge):
            if budget.overdraft is None:
                budget.overdraft = self  # go on past the limit, and finish
            elif budget.overdraft is not self:
                self._pause()

    def _pause(self) -> None:
        """Stop reading the channel until the budget has room."""
        if self._chan is None:
            self._spent = True
        elif not self._paused:
            self._paused = True
            self._chan.pause_reading()
            self._budget.when_room(self._resume)

    def _resume(self) -> None:
        self._paused = False
        if self._chan is not None:
            self._chan.resume_reading()

    def close(self) -> None:
        """Nothing to wake: Execute reads its output once the command has ended."""

    def release(self) -> None:
        """The call is over: give the bytes back to the budget."""
        if self._budget.overdraft is self:
            self._budget.overdraft = None
        if self._paused:  # ended while it waited (a deadline, a cancel): not a waiter now
            self._paused = False
            self._budget.forget(self._resume)
        self._budget.release(self._charged)
        self._charged = 0


class OutputQueue:
    """Stream output between the SSH reader and the gRPC writer, bounded in bytes.

    Above the high-water mark the channel stops reading, so the SSH window closes and
    the remote command blocks on its writes: a slow caller slows the command down.

    On resume, asyncssh hands over what it buffered while paused and, with the first
    piece, grants the peer a full window again. If we paused again in the middle of that
    hand-over, the rest would stay in asyncssh's buffer, uncounted by the next grant, and
    that buffer would grow by up to a window per cycle. So the hand-over is taken whole
    (at most one window), and the pause decision waits until it is done.
    """

    def __init__(self, cap: int) -> None:
        self._items: deque[tuple[int, bytes]] = deque()
        self._buffered = 0
        self._ready = asyncio.Event()
        self._eof = False
        self._error: BaseException | None = None
        self._chan: Pausable | None = None
        self._paused = False
        self._resuming = False
        self.stdout = CappedBuffer(cap, collect=False)  # counts and caps; the queue keeps
        self.stderr = CappedBuffer(cap, collect=False)

    def attach(self, chan: Pausable) -> None:
        """The channel to pause and resume."""
        self._chan = chan

    def feed(self, kind: int, data: bytes) -> None:
        """Queue a chunk (cut at the cap), pausing the channel when too much is waiting."""
        data = (self.stdout if kind == STDOUT else self.stderr).feed(data)
        if not data:
            return
        self._items.append((kind, data))
        self._buffered += len(data)
        self._ready.set()
        if not self._resuming:
            self._maybe_pause()

    def _maybe_pause(self) -> None:
        """Stop reading the channel while too much output waits for the caller."""
        if self._buffered > QUEUE_HIGH_WATER and not self._paused and self._chan is not None:
            self._paused = True
            self._chan.pause_reading()

    def close(self) -> None:
        """No more output will come."""
        self._eof = True
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        """The call must end: the reader's next get() raises error."""
        self._error = error
        self._ready.set()

    async def _gather(self) -> None:
        """While output keeps arriving, let it join the next message: one event-loop turn
        at a time, until a turn brings nothing new, QUEUE_MESSAGE bytes wait, the channel is
        paused or ended, or GATHER_WITHIN has passed. A chunk that comes alone goes out
        after one turn; a bulk stream goes out in large messages, which cost both ends
        less per byte than one message per SSH packet."""
        loop = asyncio.get_running_loop()
        until = loop.time() + GATHER_WITHIN
        while self._buffered < QUEUE_MESSAGE and not (self._eof or self._paused or self._error):
            before = self._buffered
            await asyncio.sleep(0)
            if self._buffered == before or loop.time() >= until:
                return

    async def get(self) -> tuple[int, bytes] | None:
        """The next chunk, merged with queued chunks of the same kind; None at the end."""
        while not self._items or self._error is not None:
            if self._error is not None:
                raise self._error
            if self._eof:
                return None
            self._ready.clear()
            await self._ready.wait()
        await self._gather()
        if self._error is not None:
            raise self._error
        kind, data = self._items.popleft()
        if self._items and self._items[0][0] == kind and len(data) < QUEUE_MESSAGE:
            parts = [data]
            size = len(data)
            while self._items and self._items[0][0] == kind and size < QUEUE_MESSAGE:
                more = self._items.popleft()[1]
                parts.append(more)
                size += len(more)
            data = b"".join(parts)
        self._buffered -= len(data)
        if self._paused and self._buffered < QUEUE_LOW_WATER and self._chan is not None:
            self._paused = False
            self._resuming = True
            try:
                self._chan.resume_reading()  # delivers everything asyncssh buffered
            finally:
                self._resuming = False
            self._maybe_pause()
        return kind, data


async def chunks(queue: OutputQueue, text: bool) -> AsyncIterator[tuple[int, bytes, str | None]]:
    """A command's output as (STDOUT or STDERR, bytes, their text or None) until its end.

    With `text`, each chunk comes with its UTF-8 decoding (invalid bytes replaced, a
    character split between chunks completed in the next), and at the end whatever a
    stream's decoder still holds comes as (stream, b"", rest).
    """
    decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in (STDOUT, STDERR)}
    while (item := await queue.get()) is not None:
        kind, data = item
        yield kind, data, decoders[kind].decode(data) if text else None
    if text:
        for kind, decoder in decoders.items():
            if rest := decoder.decode(b"", final=True):
                yield kind, b"", rest
