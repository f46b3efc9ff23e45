"""scout.allocator: large messages reuse heap memory instead of mapping it again.

Each case runs in a fresh interpreter (malloc's settings are the process's, for good):
four 1 MiB blocks made and freed, fifty times over, counting the page faults it costs.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import resource, sys
    from scout.allocator import keep_freed_memory
    if sys.argv[1] == "kept" and not keep_freed_memory():
        raise SystemExit("not glibc")
    def rounds(n):
        for _ in range(n):
            held = [b"x" * (1 << 20) for _ in range(4)]
            del held
    rounds(3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(50)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


def faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return int(done.stdout)


@glibc
def test_freed_megabytes_are_reused_without_page_faults() -> None:
    """By default glibc gives the freed 4 MiB back and faults it in again each round
    (about 1,000 faults a round); kept, the heap serves every round from what it has."""
    assert faults("default") > 50 * 500
    assert faults("kept") < 50 * 10
