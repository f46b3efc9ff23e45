"""Another process on an outcome store, for tests/test_durable_store.py.

`python -m tests.storerace race URL OWNER KEYS START`: open the store, wait until the
wall clock reads START, then claim keys k0..k{KEYS-1} as OWNER, in an order of its own
(shuffled by OWNER: in one order, whoever took the first key would stay ahead and win
them all), and print the indexes it won as JSON: several started together race for
every key.

`python -m tests.storerace die URL KEY`: claim KEY, then SIGKILL itself at once (no
close, no exit handlers): what a worker killed mid-command leaves behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time

from server.config import DurableSettings
from server.durablestore import Record, open_store

SCOPE = "race"


async def race(url: str, owner: str, keys: int, start: float) -> list[int]:
    """The keys this process won."""
    store = open_store(DurableSettings(store=url))
    try:
        await store.get(SCOPE, "warm-up")  # opened: the race is the claims alone
        await asyncio.sleep(max(0.0, start - time.time()))
        won = []
        order = list(range(keys))
        random.Random(owner).shuffle(order)
        for i in order:
            if await store.claim(Record(SCOPE, f"k{i}", "fp", owner, time.time())) is None:
                won.append(i)
        return sorted(won)
    finally:
        await store.close()


async def die(url: str, key: str) -> None:
    """Claim key, say so, and die by SIGKILL."""
    store = open_store(DurableSettings(store=url))
    assert await store.claim(Record(SCOPE, key, "fp", "doomed", time.time())) is None
    print("claimed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    """race or die, as the arguments say."""
    match sys.argv[1:]:
        case ["race", url, owner, keys, start]:
            print(json.dumps(asyncio.run(race(url, owner, int(keys), float(start)))))
        case ["die", url, key]:
            asyncio.run(die(url, key))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main()
