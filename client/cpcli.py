"""`scout cp`: copy files to and from hosts through scout, like scp.

    scout cp [OPTIONS] LOCAL HOST:PATH            upload to one host
    scout cp [OPTIONS] LOCAL 'GLOB:PATH'          upload to every host the glob picks
    scout cp [OPTIONS] LOCAL -l SELECTOR:PATH     upload to every host the selector picks
    scout cp [OPTIONS] HOST:PATH LOCAL            download (LOCAL `-`: to stdout)
        --mode OCTAL  --create-only  --max-parallel N

A word is remote when a `:` comes before any `/` (as scp has it: `./a:b` is local);
PATH must be absolute. An upload goes to a temporary name on the host and is renamed
over PATH only when every byte arrived; a download goes to a temporary file next to
LOCAL, renamed once the SHA-256 the server sent matches. A progress bar (bytes, rate,
ETA) goes to stderr when it is a terminal.

Exit status, as `scout exec`'s fan-out: 0 every host has the file (or the download is
complete), 3 some host's transfer failed (each says why on stderr), 255 the call itself
failed (a malformed request, no target, the server unreachable, a local file error),
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from . import examples
from .aio import Client
from .argtypes import checked
from .errors import ScoutError
from .fleet import is_pattern

EXIT_OK = 0
EXIT_HOST_FAILED = 3
EXIT_CALL_FAILED = 255
CALL_CODES = {"INVALID_ARGUMENT", "UNAUTHENTICATED", "CANCELLED", "UNKNOWN", "INTERNAL"}


_mode = checked(
    lambda text: int(text, 8),
    lambda v: 0 <= v <= 0o7777,
    "expected octal permission bits, got {text!r}",
    "permission bits are 0 to 7777, got {text!r}",
)
_WHOLE = "expected a whole number from 1, got {text!r}"
_count = checked(int, lambda v: v >= 1, _WHOLE, _WHOLE)


def add_parser(commands: Any, connection: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `cp` subcommand's arguments."""
    cp: argparse.ArgumentParser = commands.add_parser(
        "cp",
        parents=[connection],
        help="copy a file to hosts or from a host (through scout's SFTP)",
        usage=(
            "scout cp [OPTIONS] LOCAL HOST:PATH | LOCAL GLOB:PATH | LOCAL -l SELECTOR:PATH\n"
            "       scout cp [OPTIONS] HOST:PATH LOCAL"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit: 0 done, 3 some host's transfer failed, 255 the call itself failed\n\n"
        + examples.CP,
    )
    cp.add_argument("source", metavar="SOURCE")
    cp.add_argument("dest", nargs="?", default=None, metavar="DEST")
    cp.add_argument(
        "-l",
        "--selector",
        default="",
        metavar="SELECTOR:PATH",
        help="upload to every host this label selector picks, at PATH",
    )
    cp.add_argument(
        "--mode", type=_mode, default=0, metavar="OCTAL", help="the file's mode (e.g. 0644)"
    )
    cp.add_argument("--create-only", action="store_true", help="refuse to replace an existing file")
    cp.add_argument(
        "--max-parallel",
        type=_count,
        default=0,
        metavar="N",
        help="upload to at most N hosts at once (default: the server's)",
    )
    return cp


def remote(word: str) -> tuple[str, str] | None:
    """(host, path) when word is HOST:PATH (a `:` before any `/`), else None."""
    colon = word.find(":")
    if colon <= 0 or "/" in word[:colon]:
        return None
    return word[:colon], word[colon + 1 :]


def selector_target(text: str) -> tuple[str, str]:
    """SELECTOR:PATH split at the `:` before the absolute path."""
    cut = text.find(":/")
    if cut <= 0:
        raise ValueError(f"-l expects SELECTOR:/ABSOLUTE/PATH, got {text!r}")
    return text[:cut], text[cut + 1 :]


class ProgressBar:
    """Bytes, rate and ETA on one terminal line, redrawn at most ten times a second."""

    def __init__(self, stream: BinaryIO | None, total: int, label: str) -> None:
        self.stream = stream
        self.total = total
        self.label = label
        self.began = time.monotonic()
        self.drawn = 0.0

    def __call__(self, done: int, *, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not final and now - self.drawn < 0.1:
            return
        self.drawn = now
        rate = done / max(now - self.began, 1e-6)
        line = f"\r{self.label} {_size(done)}"
        if self.total:
            eta = (self.total - done) / rate if rate else 0.0
            line += f"/{_size(self.total)} {100 * done // self.total}%  ETA {eta:.0f}s"
        line += f"  {_size(int(rate))}/s"
        self.stream.write(f"{line}\x1b[K{'' if not final else chr(10)}".encode())
        self.stream.flush()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _terminal(stream: BinaryIO) -> BinaryIO | None:
    try:
        return stream if os.isatty(stream.fileno()) else None
    except (OSError, ValueError, AttributeError):
        return None


@contextmanager
def _say(stderr: BinaryIO) -> Iterator[Any]:
    def say(text: str) -> None:
        stderr.write(f"{text}\n".encode(errors="replace"))
        stderr.flush()

    yield say


async def run_cp(
    client: Client, args: argparse.Namespace, stdout: BinaryIO, stderr: BinaryIO
) -> int:
    """Run `scout cp`; the exit status."""
    with _say(stderr) as say:
        try:
            return await _copy(client, args, stdout, stderr, say)
        except ScoutError as err:
            say(f"scout: {err}")
            return EXIT_CALL_FAILED if err.code in CALL_CODES else EXIT_HOST_FAILED
        except (OSError, ValueError) as err:
            say(f"scout: {err}")
            return EXIT_CALL_FAILED


async def _copy(
    client: Client, args: argparse.Namespace, stdout: BinaryIO, stderr: BinaryIO, say: Any
) -> int:
    bar_stream = _terminal(stderr)
    if args.selector:
        if args.dest is not None:
            raise ValueError("with -l SELECTOR:PATH, give only the local file")
        selector, path = selector_target(args.selector)
        return await _upload_many(client, args, [], selector, path, bar_stream=bar_stream, say=say)
    if args.dest is None:
        raise ValueError("give a SOURCE and a DEST (one of them HOST:PATH)")
    source, dest = remote(args.source), remote(args.dest)
    if source is not None and dest is not None:
        raise ValueError("copy between two hosts is not supported: one side must be local")
    if dest is not None:
        host, path = dest
        if is_pattern(host):
            return await _upload_many(
                client, args, [host], "", path, bar_stream=bar_stream, say=say
            )
        local = Path(args.source)
        bar = ProgressBar(bar_stream, _local_size(local), f"{local.name} -> {host}")
        answer = await client.upload(
            host, path, local, mode=args.mode, create_only=args.create_only, progress=bar
        )
        bar(answer.bytes_written, final=True)
        return EXIT_OK
    if source is None:
        raise ValueError("one of SOURCE and DEST must be HOST:PATH")
    host, path = source
    bar = ProgressBar(bar_stream, 0, f"{host}:{Path(path).name}")
    call = client.download(host, path, progress=bar)
    if args.dest == "-":
        async with call:
            async for chunk in call:
                stdout.write(chunk)
        stdout.flush()
    else:
        target = _local_target(Path(args.dest), path)
        info = await call.to_file(target, mode=args.mode or None)
        bar(info.size, final=True)
    return EXIT_OK


def _local_size(local: Path) -> int:
    """The local file's size (OSError, said as a call failure, when it is not there)."""
    return local.stat().st_size


def _local_target(dest: Path, remote_path: str) -> Path:
    """Where a download goes: dest, or the remote file's name inside dest when a folder."""
    return dest / Path(remote_path).name if dest.is_dir() else dest


async def _upload_many(
    client: Client,
    args: argparse.Namespace,
    hosts: list[str],
    selector: str,
    path: str,
    *,
    bar_stream: BinaryIO | None,
    say: Any,
) -> int:
    local = Path(args.source)
    if remote(args.source) is not None:
        raise ValueError("upload to many hosts: SOURCE must be a local file")
    bar = ProgressBar(bar_stream, _local_size(local), f"{local.name} -> hosts")
    failed = ok = 0
    async for outcome in client.upload_many(
        hosts,
        path,
        local,
        selector=selector,
        max_parallel=args.max_parallel,
        mode=args.mode,
        create_only=args.create_only,
        progress=bar,
    ):
        if outcome.ok:
            ok += 1
        else:
            failed += 1
            say(f"{outcome.host}: {outcome.error}")
    say(f"scout: {ok} hosts have the file" + (f", {failed} failed" if failed else ""))
    return EXIT_HOST_FAILED if failed else EXIT_OK
