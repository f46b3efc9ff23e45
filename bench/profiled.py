"""`python -m bench.profiled OUT [scout-server args]`: scout-server under cProfile, on cue.

Profiling starts on SIGUSR1 and stops on SIGUSR2, which writes OUT, so the profile
covers the measured window only (not imports, start-up or warm-up). The timer is the
process's CPU clock, so time spent waiting in epoll does not count as cost.
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from types import FrameType

from server.main import main as server_main


def main() -> None:
    """Install the two signal handlers, then run the server as `scout-server` would."""
    out, argv = sys.argv[1], sys.argv[2:]
    profiler = cProfile.Profile(time.process_time)

    def start(_signum: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    server_main(argv)


if __name__ == "__main__":
    main()
