"""`scout mcp`'s file tools: list, find, tree, read, diff, write and copy, on scout's RPCs.

Listing, finding and the tree are commands sent as argv of a fixed shape, so that an
operator can allow exactly them to a restricted caller (README, "Using scout from AI
assistants"):

    list_directory  ls -la --time-style=full-iso -- PATH     (parsed into entries)
    find_files      find PATH -maxdepth N -name PATTERN
    tree            find PATH -maxdepth N -printf '%y %p\\0'  (drawn here)

Paths must be absolute: a path starting with `-` would be an option of `find`, and
`find -delete ...` deletes, so the policy patterns can pin the first character (`/*`).

Reading, writing and copying go through `FileAccess`, the seam between these tools and
how bytes move: `ScoutFiles`, on scout's Files RPCs (Download, Upload), so the caller's
`files` and `paths` policy decides them. scout has no directory listing RPC, so
list_directory (and a directory's `scout://` resource) stays the `ls` command above.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path as PathLib
from typing import Any, Protocol

from .aio import Client
from .errors import ScoutError
from .mcptools import ToolFailure, cut, failure_from, invalid, run_with_progress
from .results import Result

__all__ = [
    "FileAccess",
    "FileRead",
    "ScoutFiles",
    "diff_files",
    "find_files",
    "list_directory",
    "parse_ls",
    "parse_target",
    "read_file",
    "read_files",
    "read_one",
    "tree",
]

DEFAULT_FIND_DEPTH = 5  # scout_mcp's `depth` default
DEFAULT_TREE_DEPTH = 3
MAX_DEPTH = 64
MAX_DIFF_BYTES = 1024 * 1024  # each side of a diff_files


Moved = Callable[[int], None]  # told the bytes a copy has moved so far


@dataclass(frozen=True)
class FileRead:
    """What a read returned: the bytes, and whether the file goes on past them."""

    data: bytes
    truncated: bool


class FileAccess(Protocol):
    """How the file tools move bytes; ToolFailure when scout refuses or fails."""

    async def read(self, host: str, path: str, offset: int, max_bytes: int) -> FileRead:
        """Up to max_bytes of the file from offset, and whether there is more."""
        ...

    async def write(
        self, host: str, path: str, data: bytes, mode: int | None, create_only: bool
    ) -> dict[str, Any]:
        """Put data in the file; what was written (path, size)."""
        ...

    async def copy(
        self, source: tuple[str, str], target: tuple[str, str], moved: Moved | None = None
    ) -> dict[str, Any]:
        """Stream one file from (host, path) to (host, path) ("" host: here); what arrived.
        `moved` is told the bytes moved so far."""
        ...


def absolute(path: str, what: str = "path") -> str:
    """The path if it is absolute; a tool error otherwise (see the module docstring)."""
    if not path.startswith("/"):
        raise invalid(f"{what} must be an absolute path (starting with /), got {path!r}")
    if "\0" in path:
        raise invalid(f"{what} cannot contain NUL")
    return path


def parse_target(target: str, what: str = "target") -> tuple[str, str]:
    """`HOST:/path` as (host, path)."""
    host, sep, path = target.partition(":")
    if not sep or not host:
        raise invalid(f"{what} must be HOST:/path, got {target!r}")
    return host, absolute(path, what)


def _depth(value: int | None, default: int) -> int:
    """A max_depth within reason."""
    depth = default if value is None else value
    if not 0 <= depth <= MAX_DEPTH:
        raise invalid(f"max_depth must be 0 to {MAX_DEPTH}, got {depth}")
    return depth


async def _run(client: Client, host: str, argv: list[str], max_output: int) -> Result:
    """Run a fixed-shape argv; scout's refusal or failure becomes a ToolFailure."""
    try:
        result: Result = await run_with_progress(
            client.execute(host, argv=argv, max_output_bytes=max_output), None, host
        )
    except ScoutError as err:
        raise failure_from(err) from None
    return result


def _command_failed(result: Result, argv: list[str]) -> ToolFailure:
    """A listing command that exited non-zero: say what it said (no such file, ...)."""
    said = result.stderr.decode(errors="replace").strip()[:2000]
    return ToolFailure(
        "COMMAND_FAILED",
        f"{argv[0]} exited {result.exit_code}{' (' + result.signal + ')' if result.signal else ''}"
        f": {said or 'no message'}",
        may_have_run=True,
        host=result.host,
    )


# ---- list_directory --------------------------------------------------------------------

_LS_LINE = re.compile(
    r"^(?P<mode>[-bcdlps?][-rwxsStTl]{9}[.+@]?)\s+(?P<links>\d+)\s+(?P<owner>\S+)\s+"
    r"(?P<group>\S+)\s+(?P<size>\d+|\d+,\s*\d+)\s+(?P<date>\d{4}-\d\d-\d\d)\s+"
    r"(?P<time>\d\d:\d\d:\d\d(?:\.\d+)?)\s+(?P<tz>[-+]\d{4})\s(?P<name>.*)$"
)
_KINDS = {
    "-": "file",
    "d": "directory",
    "l": "symlink",
    "c": "char_device",
    "b": "block_device",
    "p": "fifo",
    "s": "socket",
}


def parse_ls(text: str) -> list[dict[str, Any]]:
    """`ls -la --time-style=full-iso` output as entries (`.` and `..` included)."""
    entries = []
    for line in text.splitlines():
        m = _LS_LINE.match(line)
        if m is None:
            continue  # "total N", or a line we cannot read
        name, target = m["name"], None
        if m["mode"][0] == "l" and " -> " in name:
            name, target = name.split(" -> ", 1)
        size = m["size"]
        entry: dict[str, Any] = {
            "name": name,
            "type": _KINDS.get(m["mode"][0], "other"),
            "mode": m["mode"][:10],
            "size": int(size) if size.isdigit() else 0,
            "owner": m["owner"],
            "group": m["group"],
            "modified": f"{m['date']}T{m['time']}{m['tz'][:3]}:{m['tz'][3:]}",
        }
        if target is not None:
            entry["target"] = target
        entries.append(entry)
    return entries


async def list_directory(client: Client, host: str, path: str, max_output: int) -> dict[str, Any]:
    """A directory's entries, from `ls -la --time-style=full-iso -- PATH`."""
    argv = ["ls", "-la", "--time-style=full-iso", "--", absolute(path)]
    result = await _run(client, host, argv, max(max_output, 1024 * 1024))
    if not result.ok:
        raise _command_failed(result, argv)
    parsed = parse_ls(result.stdout.decode(errors="replace"))
    entries = [e for e in parsed if e["name"] not in (".", "..")]
    return {
        "host": host,
        "path": path,
        "is_directory": any(e["name"] == "." and e["type"] == "directory" for e in parsed),
        "entries": entries,
        "count": len(entries),
        "truncated": result.stdout_truncated,
    }


# ---- find_files and tree ---------------------------------------------------------------


async def find_files(
    client: Client, host: str, path: str, pattern: str, *, max_depth: int | None, max_output: int
) -> dict[str, Any]:
    """Paths under PATH whose name matches the glob, from `find PATH -maxdepth N -name GLOB`."""
    if not pattern:
        raise invalid("pattern must not be empty (use * for every name)")
    depth = _depth(max_depth, DEFAULT_FIND_DEPTH)
    argv = ["find", absolute(path), "-maxdepth", str(depth), "-name", pattern]
    result = await _run(client, host, argv, max_output)
    text, was_cut = cut(result.stdout, max_output)
    lines = text.splitlines()
    if was_cut or result.stdout_truncated:
        lines = lines[:-1]  # the last line may be a cut path
    out: dict[str, Any] = {
        "host": host,
        "path": path,
        "pattern": pattern,
        "matches": lines,
        "count": len(lines),
        "truncated": was_cut or result.stdout_truncated,
    }
    if not result.ok:  # find says what it could not read, and goes on
        out["exit_code"] = result.exit_code
        out["stderr"] = cut(result.stderr, 4096)[0]
    return out


def draw_tree(root: str, records: Sequence[tuple[str, str]]) -> str:
    """Draw (kind, path) records from find as an indented tree; directories end in `/`."""
    lines = []
    base = root.rstrip("/") or "/"
    for kind, path in sorted(records, key=lambda record: record[1]):
        if path.rstrip("/") == base.rstrip("/") or path == base:
            lines.append(base + ("/" if base != "/" else ""))
            continue
        rel = path[len(base) :].lstrip("/")
        depth = rel.count("/")
        name = rel.rsplit("/", 1)[-1]
        lines.append("  " * (depth + 1) + name + ("/" if kind == "d" else ""))
    return "\n".join(lines)


async def tree(
    client: Client, host: str, path: str, max_depth: int | None, max_output: int
) -> dict[str, Any]:
    """A directory tree, from `find PATH -maxdepth N -printf '%y %p\\0'`."""
    depth = _depth(max_depth, DEFAULT_TREE_DEPTH)
    argv = ["find", absolute(path), "-maxdepth", str(depth), "-printf", "%y %p\\0"]
    result = await _run(client, host, argv, max_output)
    records = []
    raw = result.stdout.split(b"\0")
    truncated = result.stdout_truncated
    if truncated:
        raw = raw[:-1]
    for item in raw:
        if not item:
            continue
        kind, _, name = item.decode(errors="replace").partition(" ")
        records.append((kind, name))
    if not records and not result.ok:
        raise _command_failed(result, argv)
    return {
        "host": host,
        "path": path,
        "tree": draw_tree(path, records),
        "entries": len(records),
        "truncated": truncated,
    }


# ---- reading and diffing ---------------------------------------------------------------


class ScoutFiles:
    """File access over scout's Files RPCs: Download to read, Upload to write, both to copy.

    The server's `files` and `paths` policy (README, "Files") applies to every one of
    them. A copy streams: each chunk Download gives goes on to Upload as it comes, so
    memory holds a few chunks whatever the file's size, and nothing is written to disk
    here unless one side is a local path.
    """

    def __init__(self, client: Client) -> None:
        """Move bytes through this client."""
        self._client = client

    async def read(self, host: str, path: str, offset: int, max_bytes: int) -> FileRead:
        """Up to max_bytes from offset (Download's range), and whether the file is longer."""
        parts: list[bytes] = []
        try:
            async with self._client.download(host, path, offset=offset, length=max_bytes) as call:
                async for chunk in call:
                    parts.append(chunk)
                info = call.info
        except ScoutError as err:
            raise failure_from(err) from None
        data = b"".join(parts)
        size = info.size if info is not None else offset + len(data)
        return FileRead(data, offset + len(data) < size)

    async def write(
        self, host: str, path: str, data: bytes, mode: int | None, create_only: bool
    ) -> dict[str, Any]:
        """Put data in place (a temporary file renamed over the target by the server)."""
        try:
            done = await self._client.upload(
                host, path, data, mode=mode or 0, create_only=create_only
            )
        except ScoutError as err:
            raise failure_from(err) from None
        return {
            "host": host,
            "path": path,
            "bytes_written": done.bytes_written,
            "sha256": done.sha256,
            "duration": round(done.duration, 3),
        }

    async def copy(
        self, source: tuple[str, str], target: tuple[str, str], moved: Moved | None = None
    ) -> dict[str, Any]:
        """Stream a file host to host (Download -> Upload), or between a host and here."""
        (src_host, src_path), (dst_host, dst_path) = source, target
        began = time.monotonic()
        try:
            if src_host and dst_host:
                async with self._client.download(src_host, src_path) as call:
                    done = await self._client.upload(dst_host, dst_path, call, progress=moved)
                info = call.info
                if info is None or info.sha256 != done.sha256:
                    raise ToolFailure(
                        "DATA_LOSS",
                        f"the copy of {src_host}:{src_path} arrived with another digest "
                        "than the one read; the target may hold a bad copy",
                        may_have_run=True,
                        host=dst_host,
                    )
                size, digest = done.bytes_written, done.sha256
            elif src_host:
                download = self._client.download(src_host, src_path, progress=moved)
                got = await download.to_file(dst_path)
                size, digest = got.size, got.sha256
            elif dst_host:
                local = PathLib(src_path)
                done = await self._client.upload(dst_host, dst_path, local, progress=moved)
                size, digest = done.bytes_written, done.sha256
            else:
                raise invalid("copy_file copies to or from a host: give HOST:/path on one side")
        except ScoutError as err:
            raise failure_from(err) from None
        except OSError as err:  # the local side
            raise ToolFailure("LOCAL_FILE", f"{err.strerror}: {err.filename}") from None
        return {
            "source": _side(source),
            "target": _side(target),
            "bytes": size,
            "sha256": digest,
            "duration": round(time.monotonic() - began, 3),
        }


def _side(side: tuple[str, str]) -> str:
    """A copy's side as the assistant wrote it."""
    host, path = side
    return f"{host}:{path}" if host else path


def decode_content(content: str, encoding: str) -> bytes:
    """write_file's content as bytes: UTF-8 text, or base64."""
    if encoding == "utf-8":
        return content.encode()
    if encoding == "base64":
        import base64
        import binascii

        try:
            return base64.b64decode(content, validate=True)
        except binascii.Error as err:
            raise invalid(f"content is not valid base64: {err}") from None
    raise invalid(f"encoding must be utf-8 or base64, got {encoding!r}")


def endpoint(text: str, local_root: PathLib | None) -> tuple[str, str]:
    """copy_file's side: `HOST:/path` as (host, path), or a local absolute path as ("", path).

    A local path is this machine's, outside scout's policy and audit: it is allowed only
    under `scout mcp --local-files DIR`, judged after symlinks and `..` are resolved.
    """
    if not text.startswith("/"):
        return parse_target(text)
    path = absolute(text)
    if local_root is None:
        raise ToolFailure(
            "PERMISSION_DENIED",
            f"{text}: copy_file reaches local paths only when scout mcp is started with "
            "--local-files DIR (this machine's files are outside scout's policy and audit)",
        )
    root = local_root.resolve()
    resolved = PathLib(path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ToolFailure(
            "PERMISSION_DENIED", f"{text}: local paths must be under --local-files {root}"
        )
    return "", str(resolved)


async def path_resource(
    client: Client, files: FileAccess, host: str, path: str, max_output: int
) -> str | bytes:
    """scout://HOST/PATH: the file's first bytes, or a directory's `ls -la` listing.

    The file is tried first (Download); a path that is no regular file (FAILED_PRECONDITION)
    is listed, and if it is no directory either, the read's own error stands.
    """
    try:
        got = await files.read(host, path, 0, max_output)
    except ToolFailure as failure:
        if failure.code != "FAILED_PRECONDITION":
            raise
        listing = await list_directory(client, host, path, max_output)
        if not listing["is_directory"]:
            raise failure from None
        lines = [
            f"{e['mode']} {e['owner']} {e['group']} {e['size']:>10} {e['modified']} {e['name']}"
            + (f" -> {e['target']}" if "target" in e else "")
            for e in listing["entries"]
        ]
        return "\n".join(lines) + "\n"
    try:
        return got.data.decode()
    except UnicodeDecodeError:
        return got.data


def _content(data: bytes) -> dict[str, Any]:
    """Bytes for the assistant: text when they are UTF-8, else base64."""
    try:
        return {"content": data.decode(), "encoding": "utf-8"}
    except UnicodeDecodeError:
        import base64

        return {"content": base64.b64encode(data).decode(), "encoding": "base64"}


async def read_file(
    files: FileAccess, host: str, path: str, offset: int, max_bytes: int
) -> dict[str, Any]:
    """A file's bytes (or a range), as text or base64, and whether there is more."""
    if offset < 0:
        raise invalid(f"offset must be 0 or more, got {offset}")
    if max_bytes < 1:
        raise invalid(f"max_bytes must be at least 1, got {max_bytes}")
    got = await files.read(host, absolute(path), offset, max_bytes)
    return {
        "host": host,
        "path": path,
        "offset": offset,
        "bytes": len(got.data),
        "truncated": got.truncated,
        **_content(got.data),
    }


async def read_one(
    files: FileAccess, host: str | None, path: str | None, offset: int, max_bytes: int
) -> dict[str, Any]:
    """read_file's single form: both host and path are needed (or targets instead)."""
    if not host or not path:
        raise invalid("give host and path, or targets (HOST:/path, one file each)")
    return await read_file(files, host, path, offset, max_bytes)


async def read_files(files: FileAccess, targets: Sequence[str], max_bytes: int) -> dict[str, Any]:
    """One file on each of several `HOST:/path` targets: per-target results, a success count."""
    if not targets:
        raise invalid("targets must name at least one HOST:/path")
    parsed = [parse_target(t) for t in targets]
    results: list[dict[str, Any]] = []
    for target, (host, path) in zip(targets, parsed, strict=True):
        try:
            got = await files.read(host, path, 0, max_bytes)
        except ToolFailure as failure:
            results.append({"target": target, **failure.fields()})
            continue
        results.append(
            {"target": target, "bytes": len(got.data), "truncated": got.truncated}
            | _content(got.data)
        )
    succeeded = sum(1 for r in results if "error" not in r)
    return {"targets": len(results), "succeeded": succeeded, "results": results}


async def diff_files(
    files: FileAccess, a: str, b: str | None, content: str | None
) -> dict[str, Any]:
    """A unified diff of `HOST:/path` a against b (another HOST:/path) or given content."""
    if (b is None) == (content is None):
        raise invalid("give exactly one of `b` (HOST:/path) or `content` to compare `a` with")
    host_a, path_a = parse_target(a, "a")
    first = await files.read(host_a, path_a, 0, MAX_DIFF_BYTES)
    if b is not None:
        host_b, path_b = parse_target(b, "b")
        second = await files.read(host_b, path_b, 0, MAX_DIFF_BYTES)
        label_b = b
    else:
        assert content is not None
        second = FileRead(content.encode(), truncated=False)
        label_b = "content"
    lines_a = first.data.decode(errors="replace").splitlines(keepends=True)
    lines_b = second.data.decode(errors="replace").splitlines(keepends=True)
    diff = "".join(difflib.unified_diff(lines_a, lines_b, fromfile=a, tofile=label_b))
    truncated = first.truncated or second.truncated  # then only the first MiB was compared
    return {
        "a": a,
        "b": label_b,
        "identical": first.data == second.data and not truncated,
        "diff": diff,
        "truncated": truncated,
    }
