"""The audit log: one JSON line per call that reached identity and policy, whatever its end.

A line says who (caller, peer), what (method, host, the command or the argv list, or only
the SHA-256 of the line the host's shell got when `log_commands = false`, working_dir, the
*names* of env variables, never their values),
and how it ended (exit code or signal, bytes out, duration, the status code); a file
transfer's line has the path, direction, bytes and SHA-256 instead of the command. Success,
non-zero exit, refusal, failure, timeout and cancellation each get theirs.

Each line is one write(2). With worker processes all appending to one destination, a
file opened O_APPEND already keeps lines whole, but a pipe or socket (stdout under a
container runtime or systemd) does so only for writes up to 4 KiB; so a worker writes
while holding a POSIX record lock on the destination, which the others' lock waits for.

A full disk or an unwritable file fails closed: the line that could not be written goes
to the server log at ERROR (so it is not lost silently) and into a bounded backlog, and
until the backlog is written, scout runs no new command (UNAVAILABLE, nothing started).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from scout.v1 import exec_pb2

from .argvpolicy import argv_line
from .config import MAX_EXEC_LINE, MAX_WORKING_DIR_BYTES, AuditSettings, CallerConfig
from .errors import AuditUnavailable, FileError
from .requests import MAX_ARGV, MAX_ENV, MAX_HOST

log = logging.getLogger(__name__)

BACKLOG = 1000  # lines kept while the file cannot be written; the oldest go past this


@dataclass
class CallRecord:
    """What one call did, filled in as it goes; becomes one audit line."""

    method: str
    peer: str
    request_id: str = ""
    caller: str = "-"
    who: CallerConfig | None = None  # the authenticated caller, once known
    ran: bool = False  # the command started (for the metrics of commands)
    started: bool = False  # the command may have started (the status's x-scout-started)
    authorized: bool = False  # reached the authorization step: audit it
    host: str = ""
    command: str = ""
    argv: list[str] = field(default_factory=list)
    working_dir: str = ""
    env_names: list[str] = field(default_factory=list)
    exit_code: int | None = None
    signal: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    code: str = "OK"
    duration: float = 0.0
    path: str = ""  # files: the path asked for
    direction: str = ""  # files: "upload" or "download"; empty for commands
    file_bytes: int = 0  # files: bytes moved
    sha256: str = ""  # files: SHA-256 of the bytes moved
    key: str = ""  # the idempotency_key, when the request has one
    replayed: bool = False  # the answer is an earlier run's outcome: nothing ran for it
    forwarded: bool = False  # another worker received the call and forwarded it here
    relayed: bool = False  # the answer came from the worker running the key (forwarded)

    def describe(self, request: Any) -> None:
        """Copy what an ExecuteRequest asks for, for the audit and access lines. This runs
        before validation (refused calls are recorded too), so every field is cut to
        validation's own limits: a valid request is recorded whole.
        """
        if isinstance(request, exec_pb2.ExecuteRequest):
            self.host = capped(request.host, MAX_HOST)
            self.command = capped(request.command, MAX_EXEC_LINE)
            self.argv = capped_argv(request.argv)
            self.working_dir = capped(request.working_dir, MAX_WORKING_DIR_BYTES)
            self.env_names = [capped(name, MAX_HOST) for name in list(request.env)[:MAX_ENV]]

    def line(self, *, log_commands: bool) -> dict[str, Any]:
        """The JSON object of the audit line."""
        record: dict[str, Any] = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "request_id": self.request_id,
            "caller": self.caller,
            "method": self.method,
            "host": self.host,
        }
        if self.direction:
            record.update(
                path=self.path,
                direction=self.direction,
                bytes=self.file_bytes,
                sha256=self.sha256,
                duration=round(self.duration, 6),
                code=self.code,
                peer=self.peer,
            )
            return record
        if log_commands:
            record["command"] = self.command
            record["argv"] = self.argv
        else:
            line = argv_line(self.argv) if self.argv else self.command
            record["command_sha256"] = hashlib.sha256(line.encode()).hexdigest()
        record.update(
            working_dir=self.working_dir,
            env_names=sorted(self.env_names),
            exit_code=self.exit_code,
            signal=self.signal,
            bytes_out=self.stdout_bytes + self.stderr_bytes,
            duration=round(self.duration, 6),
            code=self.code,
            started=self.ran or self.started,
            peer=self.peer,
        )
        if self.key:
            record.update(idempotency_key=self.key, replayed=self.replayed)
        return record


def capped(text: str, limit: int) -> str:
    """text, or its first limit characters and how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def capped_argv(argv: Sequence[str]) -> list[str]:
    """argv, or as much of it as fits MAX_EXEC_LINE characters and MAX_ARGV elements, then
    an element saying how many were left out."""
    kept: list[str] = []
    room = MAX_EXEC_LINE
    for arg in argv[:MAX_ARGV]:
        if room <= 0:
            break
        kept.append(capped(arg, room))
        room -= len(arg)
    if len(kept) < len(argv):
        kept.append(f"... ({len(argv) - len(kept)} more elements)")
    return kept


class AuditLog:
    """Appends audit lines to a file or stdout; fails closed when it cannot."""

    def __init__(self, settings: AuditSettings, *, shared: bool = False) -> None:
        self.settings = settings
        self.shared = shared  # other worker processes write to the same destination
        self._backlog: deque[bytes] = deque(maxlen=BACKLOG)
        self._fd = _open(settings.file)
        self.lines = 0

    def reopen(self, settings: AuditSettings) -> None:
        """SIGHUP: open the destination again, by name, and switch to it.

        logrotate's `create` mode renames the file and makes a new one: without this
        scout would go on appending to the renamed file. The settings may have changed
        too (another file, log_commands). A destination that cannot be opened keeps the
        old one, with an error in the log (FileError to the caller).
        """
        fd = _open(settings.file)
        old, self._fd, self.settings = self._fd, fd, settings
        if old is not None and old != sys.stdout.fileno():
            os.close(old)
        if self._fd is not None and self._backlog:
            self._flush()

    @property
    def enabled(self) -> bool:
        """An audit destination is configured."""
        return self._fd is not None

    def ready(self) -> None:
        """AuditUnavailable while lines that failed cannot be written yet (fail closed)."""
        if self._backlog and not self._flush():
            raise AuditUnavailable(
                f"the audit log {self.settings.file} cannot be written, so scout runs no "
                "command until it can; an operator must act"
            )

    def write(self, call: CallRecord) -> None:
        """Append the call's line (after any backlog)."""
        if self._fd is None or not call.authorized:
            return
        line = json.dumps(call.line(log_commands=self.settings.log_commands), ensure_ascii=False)
        self._backlog.append(line.encode() + b"\n")
        if not self._flush():
            log.error("audit line not written (kept in memory, retried): %s", line)

    def _flush(self) -> bool:
        """Write the backlog, unbuffered (a partial write keeps its rest); whether all went."""
        assert self._fd is not None
        try:
            with self._locked(self._fd):
                self._write_backlog(self._fd)
        except OSError as exc:
            log.error(  # noqa: TRY400 - the reason is enough, no traceback
                "audit log %s cannot be written (%s): refusing new commands",
                self.settings.file,
                exc.strerror or exc,
            )
            return False
        return True

    @contextlib.contextmanager
    def _locked(self, fd: int) -> Iterator[None]:
        """Hold the destination's lock while writing, if other workers write there too."""
        if not self.shared:
            yield
            return
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)

    def _write_backlog(self, fd: int) -> None:
        """Each line in one write; a partial write keeps its rest first in line."""
        while self._backlog:
            data = self._backlog[0]
            written = os.write(fd, data)
            if written < len(data):
                self._backlog[0] = data[written:]
                continue
            self._backlog.popleft()
            self.lines += 1

    def close(self) -> None:
        """Close the file (not stdout)."""
        if self._fd is not None and self.settings.file != "-":
            os.close(self._fd)
            self._fd = None


def _open(file: str) -> int | None:
    """The destination's descriptor: none for "", stdout for "-", else the file appended to."""
    if file == "-":
        return sys.stdout.fileno()
    if not file:
        return None
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(file, flags, 0o640)
    except OSError as exc:
        raise FileError(f"cannot open the audit log {file}: {exc.strerror}") from None
