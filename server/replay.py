"""A keyed command's output, kept so that callers can attach, leave and come back.

`ReplayLog` is the Output of a command started with an idempotency key. It counts and
caps each stream as a Stream does (`max_output_bytes`), keeps the first
`max_outcome_bytes` of each for the recorded outcome, and keeps the latest
`replay_buffer_bytes` (both streams together) as entries with their byte offsets, in the
order they arrived. Each attached caller reads through its own `Reader`, from the offsets
it asked for: output older than the buffer is not invented, the reader is told how many
bytes of which stream are gone (`lost`) and goes on from the oldest kept byte.

Flow control: while a reader is attached, the channel stops reading when the slowest
reader is more than `pause_lag` bytes behind, as Stream's queue does, and no entry an
attached reader has yet to read is dropped (the buffer may then hold up to `pause_lag`
and one SSH chunk more than `window`), so a caller that keeps its connection never
loses a byte. With nobody attached the command runs at its own pace and the oldest
entries make room for new ones.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass

from .output import HIGH_WATER, LOW_WATER, MAX_MESSAGE, STDERR, STDOUT, CappedBuffer, Pausable

STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}


@dataclass(frozen=True, slots=True)
class Entry:
    """A chunk of output: its stream, its offset in that stream, and the bytes."""

    seq: int
    kind: int
    offset: int
    data: bytes
    upto: int  # bytes appended to the log up to and including this entry


@dataclass(frozen=True, slots=True)
class Lost:
    """`count` bytes of `kind`, asked for, are no longer kept."""

    kind: int
    count: int


Item = Entry | Lost


class ReplayLog:
    """Output of one keyed command: capped, kept for its outcome, replayable by offset."""

    def __init__(self, cap: int, outcome_cap: int, window: int) -> None:
        self.stdout = CappedBuffer(cap, collect=False)  # counts and caps, as Stream's queue
        self.stderr = CappedBuffer(cap, collect=False)
        self.kept = {STDOUT: CappedBuffer(outcome_cap), STDERR: CappedBuffer(outcome_cap)}
        self.window = max(window, 1)
        self.pause_lag = min(HIGH_WATER, max(self.window // 2, 1))
        self.resume_lag = min(LOW_WATER, self.pause_lag // 2)
        self.entries: deque[Entry] = deque()
        self.next_seq = 0
        self.appended = 0  # bytes appended in all
        self.held = 0  # bytes in entries
        self.dropped = {STDOUT: 0, STDERR: 0}  # per stream: bytes evicted = first kept offset
        self.closed = False
        self.readers: set[Reader] = set()
        self._chan: Pausable | None = None
        self._paused = False
        self._resuming = False

    def end(self, kind: int) -> int:
        """The offset after the last byte of a stream so far (its capped length)."""
        return (self.stdout if kind == STDOUT else self.stderr).kept

    def attach(self, chan: Pausable) -> None:
        """The channel to pause while an attached reader is far behind."""
        self._chan = chan

    def feed(self, kind: int, data: bytes) -> None:
        """A chunk arrived: cap it, keep it for the outcome and the buffer, wake readers."""
        offset = self.end(kind)
        data = (self.stdout if kind == STDOUT else self.stderr).feed(data)
        if not data:
            return
        self.kept[kind].feed(data)
        self.appended += len(data)
        self.entries.append(Entry(self.next_seq, kind, offset, data, self.appended))
        self.next_seq += 1
        self.held += len(data)
        unread = min((r.seq for r in self.readers), default=self.next_seq)
        while self.held > self.window and len(self.entries) > 1:
            if self.entries[0].seq >= unread:  # an attached reader still needs it: the
                break  # the channel pauses (pause_lag) instead: this stays bounded
            old = self.entries.popleft()
            self.held -= len(old.data)
            self.dropped[old.kind] = old.offset + len(old.data)
        self._wake()
        if not self._resuming:
            self._maybe_pause()

    def close(self) -> None:
        """No more output will come."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        for reader in self.readers:
            reader.ready.set()

    def lag(self) -> int:
        """Bytes the slowest attached reader has still to read."""
        return max((self.appended - r.passed for r in self.readers), default=0)

    def _maybe_pause(self) -> None:
        if not self._paused and self._chan is not None and self.lag() > self.pause_lag:
            self._paused = True
            self._chan.pause_reading()

    def moved(self) -> None:
        """A reader read or left: resume the channel once nobody is far behind. The
        hand-over asyncssh makes on resume is taken whole (see server.output.OutputQueue)."""
        if self._paused and self._chan is not None and self.lag() < self.resume_lag:
            self._paused = False
            self._resuming = True
            try:
                self._chan.resume_reading()
            finally:
                self._resuming = False
            self._maybe_pause()

    def reader(self, stdout_offset: int, stderr_offset: int) -> Reader:
        """A new reader from these offsets (checked by the caller against `end`)."""
        reader = Reader(self, {STDOUT: stdout_offset, STDERR: stderr_offset})
        self.readers.add(reader)
        return reader


class Reader:
    """One attached caller's place in a ReplayLog."""

    def __init__(self, log: ReplayLog, want: dict[int, int]) -> None:
        self.log = log
        self.want = want  # per stream: the next offset to send
        first = log.entries[0] if log.entries else None
        self.seq = first.seq if first else log.next_seq
        self.passed = (first.upto - len(first.data)) if first else log.appended
        self.ready = asyncio.Event()
        self.ready.set()
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        """The attached call must end: the next read raises error."""
        self.error = error
        self.ready.set()

    def leave(self) -> None:
        """The caller is gone: it no longer holds the channel back."""
        self.log.readers.discard(self)
        self.log.moved()

    async def read(self) -> list[Item] | None:
        """What is there to send (lost counts first, then chunks merged by stream up to
        MAX_MESSAGE), waiting for some; None once the command's output has all been read."""
        log = self.log
        while True:
            if self.error is not None:
                raise self.error
            items: list[Item] = []
            for kind in (STDOUT, STDERR):
                if self.want[kind] < log.dropped[kind]:
                    items.append(Lost(kind, log.dropped[kind] - self.want[kind]))
                    self.want[kind] = log.dropped[kind]
            items.extend(self._chunks())
            if items:
                log.moved()
                return items
            if log.closed:
                return None
            self.ready.clear()
            await self.ready.wait()

    def _chunks(self) -> list[Item]:
        log = self.log
        if not log.entries:
            return []
        first_seq = log.entries[0].seq
        start = max(self.seq - first_seq, 0)
        out: list[Item] = []
        for entry in itertools.islice(log.entries, start, None):
            self.seq, self.passed = entry.seq + 1, entry.upto
            skip = self.want[entry.kind] - entry.offset
            if skip >= len(entry.data):
                continue
            data = entry.data[skip:] if skip > 0 else entry.data
            offset = entry.offset + max(skip, 0)
            self.want[entry.kind] = entry.offset + len(entry.data)
            last = out[-1] if out else None
            if (
                isinstance(last, Entry)
                and last.kind == entry.kind
                and len(last.data) + len(data) <= MAX_MESSAGE
            ):
                out[-1] = Entry(last.seq, last.kind, last.offset, last.data + data, entry.upto)
            else:
                out.append(Entry(entry.seq, entry.kind, offset, data, entry.upto))
        return out
