"""Keep grpc's C-core log lines ("I1207 ... Handshake failed ...") off the terminal.

grpc's C core writes its own log lines straight to file descriptor 2, and reads
GRPC_VERBOSITY only when grpc is imported, which the `client` package does before the
`scout` command can look at its arguments. So, unless --verbose, the command points
descriptor 2 at /dev/null and gives Python a new stderr on a copy of the real one:
every line scout writes (and any traceback) still reaches the terminal, and the C
core's lines, which scout restates in its own words (client/explain.py), do not.
"""

from __future__ import annotations

import io
import os
import sys
from typing import BinaryIO

__all__ = ["hide_native_logs"]


def hide_native_logs() -> BinaryIO:
    """Silence descriptor 2 for native code; return Python's new stderr (binary)."""
    if sys.stderr is None:  # started with descriptor 2 closed: nowhere to write
        return open(os.devnull, "wb")  # lives as long as the process
    sys.stderr.flush()
    try:
        ours = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep grpc's lines off
        return sys.stderr.buffer
    os.set_inheritable(ours, False)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
    finally:
        os.close(devnull)
    binary = os.fdopen(ours, "wb")
    sys.stderr = io.TextIOWrapper(
        binary, encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    return binary
