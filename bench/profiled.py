"""`python -m bench.profiled [--profile OUT] [--gc-log OUT] -- [scout-server args]`.

scout-server, instrumented from the outside (its code unchanged):

- `--profile OUT`: cProfile, switched on by SIGUSR1 and off by SIGUSR2, which writes OUT,
  so the profile covers the measured window only (not imports, start-up or warm-up).
  The timer is the process's CPU clock, so time spent waiting in epoll is not cost.
- `--gc-log OUT`: one line per cyclic garbage collection that takes a millisecond or
  more, or is a full (generation 2) one: monotonic start time, duration, generation,
  objects collected. A full collection stops the event loop while it runs.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from server.main import main as server_main

_GC_REPORTED = 0.001  # seconds: shorter young-generation collections are not logged


def _profile_on_cue(out: Path) -> None:
    """SIGUSR1 starts the profiler, SIGUSR2 stops it and writes out."""
    profiler = cProfile.Profile(time.process_time)

    def start(_signum: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def _log_gc(log: TextIO) -> None:
    """Write one line per slow or full collection (gc.callbacks runs around each)."""
    started = 0.0

    def callback(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.monotonic()
            return
        took = time.monotonic() - started
        if took >= _GC_REPORTED or info["generation"] == 2:
            log.write(f"{started:.6f} {took:.6f} {info['generation']} {info['collected']}\n")
            log.flush()

    gc.callbacks.append(callback)


def main() -> None:
    """Install the instruments, then run the server as `scout-server` would."""
    parser = argparse.ArgumentParser(prog="python -m bench.profiled")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--gc-log", type=Path)
    parser.add_argument("server_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    server_args = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args
    if args.profile is not None:
        _profile_on_cue(args.profile)
    if args.gc_log is not None:
        _log_gc(args.gc_log.open("w", encoding="ascii"))  # open for the process's life
    sys.argv[0] = "scout-server"
    server_main(server_args)


if __name__ == "__main__":
    main()
