"""File paths a request names, and the `paths` globs a caller's policy allows for them.

A path is checked twice (docs/architecture.md, "Files"): here, on the request's own
text, normalised (`..` resolved lexically, repeated `/` folded), so `/srv/app/../../etc`
is judged as `/etc`; then again on the host's real path (SFTP `realpath`), so a symlink
inside an allowed tree that points out of it is refused too. A path with NUL or another
control character, or a relative one, is refused before either.

Globs are over whole absolute paths: `*` and `?` match within one path component, `**`
as a whole component matches any number of them (zero included), `[...]` a class.
`/srv/app/**` is every path under /srv/app (and /srv/app itself).
"""

from __future__ import annotations

import functools
import posixpath
import re

MAX_PATH_BYTES = 4096  # PATH_MAX
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PathError(ValueError):
    """A path no policy may be asked about: relative, too long, or with control characters."""


def normalise(path: str) -> str:
    """The absolute path the request names, `..` and `.` resolved, or PathError."""
    if not path:
        raise PathError("path: required")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise PathError(f"path: at most {MAX_PATH_BYTES} bytes")
    if _CONTROL.search(path):
        raise PathError("path: NUL and control characters are refused")
    if not path.startswith("/"):
        raise PathError("path: must be absolute (start with /)")
    clean = posixpath.normpath(path)
    return "/" + clean.lstrip("/")


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    for i, part in enumerate(pattern.split("/")):
        if part == "**":
            parts.append("(?:/[^/]*)*" if i else "")
            continue
        regex = ""
        j = 0
        while j < len(part):
            c = part[j]
            if c == "*":
                regex += "[^/]*"
            elif c == "?":
                regex += "[^/]"
            elif c == "[":
                end = part.find("]", j + 2 if part[j + 1 : j + 2] in ("!", "]") else j + 1)
                if end < 0:
                    regex += re.escape(c)
                else:
                    body = part[j + 1 : end].replace("\\", "\\\\")
                    if body.startswith("!"):
                        body = "^" + body[1:]
                    regex += f"(?!/)[{body}]"
                    j = end
            else:
                regex += re.escape(c)
            j += 1
        parts.append(("/" if i else "") + regex)
    return re.compile("".join(parts))


def allowed(path: str, patterns: tuple[str, ...]) -> bool:
    """Whether a normalised absolute path matches one of the globs."""
    return any(_compiled(p).fullmatch(path) for p in patterns)


def check_pattern(pattern: str) -> str | None:
    """What is wrong with a `paths` glob (for the config), or None."""
    if not pattern.startswith("/"):
        return f"{pattern!r} must be absolute (start with /)"
    if ".." in pattern.split("/"):
        return f"{pattern!r} must not contain `..`"
    return None
