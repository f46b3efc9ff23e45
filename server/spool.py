"""UploadMany's spool: the caller's bytes, once, on scout's own disk, for every host.

The caller sends the content once; hosts are written `max_parallel` at a time, so the
content must be kept until the last host has it. Memory would not do (a file may be a
GiB), so it goes to an anonymous file in the spool directory: O_TMPFILE where the
kernel offers it, else a file unlinked right after it is created. Either way nothing is
left on disk when the call ends, however it ends, even if scout is killed.

The spool directory is `[files] spool_dir`; by default `$STATE_DIRECTORY/spool` when
systemd gives scout a StateDirectory=, else `scout-spool` in the system's temporary
directory. It is created 0700.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Self

from .errors import HostUnavailable, InvalidRequest, ScoutError

log = logging.getLogger(__name__)


def spool_dir(configured: Path | None) -> Path:
    """Where spool files go."""
    if configured is not None:
        return configured
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "spool"
    return Path(tempfile.gettempdir()) / "scout-spool"


class Spool:
    """One anonymous spool file: written once in order, then read by every host."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except (OSError, AttributeError):  # a file system without O_TMPFILE
                self.fd, name = tempfile.mkstemp(dir=directory, prefix=".spool-")
                os.unlink(name)
        except OSError as exc:
            raise self._unusable(exc) from None
        self.limit = limit
        self.size = 0
        self.digest = hashlib.sha256()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def write(self, chunk: bytes) -> None:
        """Append a chunk; past the limit, InvalidRequest (nothing is written to any host)."""
        if self.size + len(chunk) > self.limit:
            raise InvalidRequest(
                f"the file is over [files] max_file_bytes ({self.limit}); nothing written"
            )
        view = memoryview(chunk)
        try:
            while view:
                written = os.pwrite(self.fd, view, self.size)
                self.size += written
                view = view[written:]
        except OSError as exc:  # a full disk
            raise self._unusable(exc) from None
        self.digest.update(chunk)

    def _unusable(self, exc: OSError) -> ScoutError:
        """The spool cannot be written: scout's own trouble, said as UNAVAILABLE (no host
        was written), naming the setting to fix."""
        log.error("UploadMany cannot spool in %s: %s", self.directory, exc.strerror or exc)
        return HostUnavailable(
            f"scout cannot spool the file ({exc.strerror or type(exc).__name__}); no host was "
            "written. [files] spool_dir must be a writable directory with room for the file"
        )

    async def chunks(self, chunk_bytes: int) -> AsyncIterator[bytes]:
        """The content from the start, in chunks (each reader has its own position)."""
        offset = 0
        while offset < self.size:
            data = os.pread(self.fd, min(chunk_bytes, self.size - offset), offset)
            if not data:
                return
            offset += len(data)
            yield data
