"""The SSH files scout trusts and authenticates with: known_hosts and private keys.

Each is read at start (a missing or unreadable file stops the server, naming it) and read
again when it changes on disk or on `reload()` (SIGHUP). A file that turns unreadable
later keeps its last good contents, with an error in the log: a half-written edit must
not turn every host away. Key material never reaches a log line or a message.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import asyncssh

from .errors import FileError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class _Stamp:
    """What tells a changed file: inode, size and modification time."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> _Stamp:
        st = os.stat(path)
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


class _Watched(Generic[T]):
    """One file's parsed contents, re-read when its stamp changes."""

    def __init__(self, path: Path, value: T, stamp: _Stamp) -> None:
        self.path = path
        self.value = value
        self.stamp = stamp


class _Files(ABC, Generic[T]):
    """Files of one kind, parsed once and again when they change."""

    kind = "file"

    def __init__(self) -> None:
        self._files: dict[Path, _Watched[T]] = {}
        # re-read by a connect (get) or a load, not yet reported by changed(): whoever
        # reads a changed file first must not keep the news from the other users of it
        self._unreported: set[Path] = set()

    @abstractmethod
    def _parse(self, path: Path) -> T:
        """Read one file of this kind."""

    def _read(self, path: Path) -> _Watched[T]:
        try:
            stamp = _Stamp.of(path)
            return _Watched(path, self._parse(path), stamp)
        except (OSError, ValueError, asyncssh.KeyImportError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _reason(exc)
            raise FileError(f"cannot read the {self.kind} {path}: {reason}") from None

    def load(self, path: Path) -> T:
        """Read path now (at start, or for hosts a reload adds): FileError if unusable."""
        before = self._files.get(path)
        watched = self._files[path] = self._read(path)
        if before is not None and before.stamp != watched.stamp:
            self._unreported.add(path)
        return watched.value

    def get(self, path: Path) -> T:
        """The contents, re-read first if the file changed (a stat per call)."""
        watched = self._files.get(path)
        if watched is None:
            return self.load(path)
        try:
            changed = _Stamp.of(path) != watched.stamp
        except OSError:
            changed = True
        if changed and self._refresh(watched):
            self._unreported.add(path)
        return watched.value

    def _refresh(self, watched: _Watched[T]) -> bool:
        """Read a file again; keep the old contents if the new ones cannot be used."""
        try:
            fresh = self._read(watched.path)
        except FileError as exc:
            log.error("%s; keeping the version read before", exc)  # noqa: TRY400 - no traceback
            return False
        changed = fresh.stamp != watched.stamp
        watched.value, watched.stamp = fresh.value, fresh.stamp
        if changed:
            log.info("re-read the %s %s", self.kind, watched.path)
        return changed

    def changed(self) -> list[Path]:
        """Re-read the files whose stamp changed on disk; return those, and those re-read
        since the last call by a connect or a load."""
        out = set(self._unreported)
        self._unreported.clear()
        for watched in self._files.values():
            try:
                same = _Stamp.of(watched.path) == watched.stamp
            except OSError:
                same = False
            if not same and self._refresh(watched):
                out.add(watched.path)
        return sorted(out)


class KnownHostsFiles(_Files[asyncssh.SSHKnownHosts]):
    """known_hosts files."""

    kind = "known_hosts file"

    def _parse(self, path: Path) -> asyncssh.SSHKnownHosts:
        return asyncssh.read_known_hosts(str(path))


class KeyFiles(_Files[asyncssh.SSHKey]):
    """Private keys (unencrypted: scout runs unattended; use ssh-agent for others)."""

    kind = "client key"

    def _parse(self, path: Path) -> asyncssh.SSHKey:
        st = os.stat(path)
        mode = st.st_mode & 0o777
        if st.st_uid == os.geteuid() and mode & 0o077:
            # ssh's own rule: a key of ours that others may read is no longer ours alone
            # (a key another user owns, such as a mounted secret, is that user's business)
            raise ValueError(f"permissions {mode:04o} are too open; chmod 600 it")
        return asyncssh.read_private_key(path)


def _reason(exc: Exception) -> str:
    """Why a file was refused, in words that never quote its contents."""
    if isinstance(exc, ValueError) and str(exc).startswith("permissions"):
        return str(exc)
    return type(exc).__name__


def fingerprint(key: asyncssh.SSHKey) -> str:
    """`ssh-ed25519 SHA256:...`: what a person compares with `ssh-keygen -lf`."""
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"
