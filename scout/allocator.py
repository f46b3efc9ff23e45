"""glibc's malloc, told to keep the memory that bulk transfers reuse.

A file or a large output crosses scout as messages of up to 1 MiB: bytes objects that
protobuf, grpc and asyncssh allocate and free by the hundred a second. glibc serves a
request over its mmap threshold (128 KiB at start, raised as such blocks are freed)
with a fresh mapping and gives it back on free, and hands the top of the heap back to
the kernel whenever more than twice that threshold is free there. Either way every 1 MiB
message costs 256 page faults to map its pages again and a munmap or madvise to drop
them: in a grpc.aio server streaming 256 MiB to a local client, 0.75 s of the server's
CPU, against 0.10 s with the settings below (BENCHMARKS.md, "What moved").

So the server and the `scout` command raise both at start: blocks up to MMAP_THRESHOLD
come from the heap, and up to TRIM_THRESHOLD of free heap stays mapped for the next
message. The cost is memory a process has used once staying with it (at most
TRIM_THRESHOLD beyond what it uses). Other C libraries (musl, macOS) manage memory their
own way: nothing is changed there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024  # blocks below this come from the heap, not a mapping
TRIM_THRESHOLD = 32 * 1024 * 1024  # free heap kept mapped before any goes back


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; whether it was done (glibc only)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError) as exc:
        log.debug("malloc thresholds left as they were: %s", exc)
        return False
    return done
