"""What a key costs in the outcome store: CPU per claim + finish, on this process's loop.

`python -m bench.storecost [sqlite|redis] [N]`: N keys (default 5000), each claimed, then
finished with an outcome of OUTCOME_BYTES (a small ExecuteResponse, encoded), one after
another as a keyed Execute does; CPU (process time: this process's, not redis-server's)
and wall time per key. The target (issue 21): a key costs at most 10 % more server CPU
than a ~900 us Execute, so well under 80 us for both calls.

Not a scenario of `make bench`: a one-off measure of the store alone; the keyed-Execute
scenario measures the whole server.

Measured here (2 cores shared with other test runs, SQLite 3.40, redis-py 8.2, Redis 7.0):
SQLite 54-58 us per key at load 3, 66 us at load 6.5 (the two statements alone are
~27 + ~25 us: WAL frames and shm locks, 12 syscalls; a checkpoint adds ~4 us a key);
get 8-12 us. Redis 260-290 us per key, get ~135 us: redis-py's asyncio client costs
~130 us of CPU a command (hiredis changes nothing measurable).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from server.config import DurableSettings
from server.durablestore import Record, Store, open_store
from testkit.redis import start_redis

OUTCOME_BYTES = 600
WARMUP = 300


async def measure(store: Store, n: int) -> dict[str, float]:
    """Microseconds per key: claim + finish (CPU of the whole process, the store's thread
    and its checkpoints included, and wall), then get (CPU)."""
    outcome = b"x" * OUTCOME_BYTES
    owner = "bench/0123456789abcdef0123456789abcdef"
    fingerprint = "f" * 64
    for i in range(WARMUP):
        await store.claim(Record("bench", f"warm-{i}", fingerprint, owner, time.time()))
        await store.finish("bench", f"warm-{i}", outcome)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        await store.claim(Record("bench", f"key-{i}", fingerprint, owner, time.time()))
        await store.finish("bench", f"key-{i}", outcome)
    await asyncio.sleep(0.2)  # a checkpoint started by the last keys ends
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall - 0.2
    got = time.process_time()
    for i in range(n):
        await store.get("bench", f"key-{i}")
    got = time.process_time() - got
    return {
        "claim + finish": cpu / n * 1e6,
        "  (wall)": wall / n * 1e6,
        "get": got / n * 1e6,
    }


async def run(kind: str, n: int, directory: Path) -> dict[str, float]:
    """Open the store of that kind, measure it, close it."""
    if kind == "sqlite":
        store = open_store(DurableSettings(store=f"sqlite:{directory / 'durable.sqlite3'}"))
        try:
            return await measure(store, n)
        finally:
            await store.close()
    redis = start_redis(directory / "redis")
    try:
        store = open_store(DurableSettings(store=redis.url))
        try:
            return await measure(store, n)
        finally:
            await store.close()
    finally:
        redis.stop()


def main() -> None:
    """Print the microseconds per call."""
    kind = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    with tempfile.TemporaryDirectory() as directory:
        per = asyncio.run(run(kind, n, Path(directory)))
    print(f"{kind}, {n} keys, outcome {OUTCOME_BYTES} bytes: us per call (CPU unless said)")
    for name, value in per.items():
        print(f"  {name:16} {value:8.1f}")


if __name__ == "__main__":
    main()
