"""Helpers of the files tests: a remote directory the SSH login user owns, its files."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from client.files import send_all
from testkit.sshd import login_user


@contextmanager
def login_user_dir() -> Iterator[Path]:
    """A directory the SSH login user owns, that every user may traverse."""
    path = Path(tempfile.mkdtemp(prefix="scout-files-"))
    path.chmod(0o755)
    user = pwd.getpwnam(login_user())
    os.chown(path, user.pw_uid, user.pw_gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def owned(path: Path, data: bytes = b"", mode: int = 0o644) -> Path:
    """A file with data, owned by the login user."""
    path.write_bytes(data)
    user = pwd.getpwnam(login_user())
    os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(mode)
    return path


def leftovers(directory: Path) -> list[str]:
    """Temporary files an upload left behind."""
    return sorted(p.name for p in directory.iterdir() if ".scout-" in p.name)


async def client_stream(method: Any, messages: AsyncIterator[Any], **options: Any) -> Any:
    """Call a client-streaming method (Upload) writing messages, as the client library
    does (client.files.send_all): the server's early status survives; its answer."""
    call = method(**options)
    await send_all(call, messages)
    return await call


async def bidi_stream(method: Any, messages: AsyncIterator[Any], **options: Any) -> list[Any]:
    """Call UploadMany writing messages as the client library does; every response."""
    call = method(**options)
    writer = asyncio.ensure_future(send_all(call, messages))
    try:
        return [message async for message in call]
    finally:
        writer.cancel()
