"""`RetryPolicy`: retry a keyed command whose fate the client does not know, never twice.

    client = Client(target, retry=RetryPolicy(attempts=6, deadline=120))
    result = await client.execute("web1", "systemctl restart app")   # a key is made
    result.replayed    # True: the outcome was recorded by an earlier attempt

A command sent with an idempotency key runs at most once under that key (README,
"Retries and re-attaching"): a retry with the same key waits for the run in progress,
gets its recorded outcome (`x-scout-replayed: true`), or learns that its outcome is
unknown. So a retry is safe exactly when it carries the key of the first attempt, and
the client never retries a call without one. With a policy, the client makes a key
(`make_key`) for every execute, stream and execute_many that has none.

What is retried (`retryable`): answers that leave the call's fate unknown to the client,
or that say nothing ran yet:

- UNAVAILABLE, marked by scout or not: a dropped or refused connection, a server
  going away, scout's outcome store being down (nothing ran), or a keyed call that
  landed on a replica that does not run the key ("retry");
- `Unreachable` (no connection at all; nothing was sent);
- CANCELLED and ABORTED *without* scout's `x-scout-started` mark: the transport's
  words (a cut connection, a proxy's reset), not the server's decision.

What is final: every answer scout decided itself (it carries `x-scout-started`) other
than UNAVAILABLE. In particular ABORTED "outcome unknown" (`x-scout-started: true`: the
run under this key started, and the process running it died before recording how it
ended) is final: the server never runs that key again, so a retry would only get the
same ABORTED back. The caller must find out on the host what happened. The same holds
for a recorded failure (an error outcome comes back replayed). DEADLINE_EXCEEDED is the
caller's own bound and is not retried either; nor is our own cancel(), nor anything
marked `x-scout-replayed` (a recorded outcome, whatever its code).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import TypeVar

from .errors import ScoutError, Unreachable

__all__ = [
    "KEY_PATTERN",
    "RetryPolicy",
    "check_key",
    "make_key",
    "next_wait",
    "retryable",
    "seconds",
    "with_retries",
]

T = TypeVar("T")

KEY_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
KEY_PREFIX = "scout-"


def make_key() -> str:
    """A fresh idempotency key: "scout-" and a uuid4's 32 hex digits (38 characters)."""
    return KEY_PREFIX + uuid.uuid4().hex


def check_key(key: str) -> str:
    """The key if the server would accept it (1-128 of A-Z a-z 0-9 . _ : -), else ValueError."""
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError(
            f"idempotency_key must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {key!r}"
        )
    return key


def seconds(value: float | timedelta | None, name: str) -> float | None:
    """A duration given as seconds or a timedelta, as positive float seconds (or None)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be positive seconds (or a timedelta), got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How a Client retries keyed calls (see the module docstring for which answers).

    attempts         calls in all, the first one included (at least 1)
    initial_backoff  seconds before the first retry
    max_backoff      the longest wait between two attempts
    multiplier       each wait is the previous one times this
    jitter           each wait is moved by up to this fraction of it, either way
    deadline         seconds from the first attempt after which no new attempt starts
                     (None: attempts alone bound it); an attempt already sent keeps
                     its own deadline (the command's timeout plus the client's margin,
                     or rpc_timeout), so a long command is never cut by the policy
    detach_grace     seconds (or a timedelta) the server keeps a keyed command running
                     after its caller went away, so a retry or a re-attach finds it
                     still running; used when a call gives none. None: the server
                     stops the command when the connection drops, and a retry gets
                     that stopped outcome back.
    """

    attempts: int = 5
    initial_backoff: float = 0.25
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    deadline: float | None = 60.0
    detach_grace: float | timedelta | None = 60.0

    def __post_init__(self) -> None:
        """Refuse values that cannot describe a retry schedule."""
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts!r}")
        for name in ("initial_backoff", "max_backoff"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        seconds(self.deadline, "deadline")
        object.__setattr__(self, "detach_grace", seconds(self.detach_grace, "detach_grace"))

    def backoffs(self) -> Iterator[float]:
        """The waits before the 2nd, 3rd, ... attempts (attempts - 1 of them)."""
        wait = self.initial_backoff
        for _ in range(self.attempts - 1):
            spread = wait * self.jitter
            yield max(0.0, min(self.max_backoff, wait + random.uniform(-spread, spread)))
            wait = min(self.max_backoff, wait * self.multiplier)


def retryable(err: ScoutError) -> bool:
    """Whether a keyed call that failed with err may be sent again with the same key."""
    if err.replayed:
        return False  # a recorded outcome: the same answer every time
    if isinstance(err, Unreachable) or err.code == "UNAVAILABLE":
        return True
    if err.code in ("CANCELLED", "ABORTED"):
        return not err.decided_by_scout
    return False


async def with_retries(
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[T]],
    *,
    stop: Callable[[], bool] = lambda: False,
) -> T:
    """Await attempt() until it returns, or raises an error `retryable` says is final, or
    the policy's attempts or deadline run out (then the last error is raised). `stop`
    says when to give up at once (the client was closed)."""
    loop = asyncio.get_running_loop()
    ends = None if policy.deadline is None else loop.time() + policy.deadline
    waits = policy.backoffs()
    while True:
        try:
            return await attempt()
        except ScoutError as err:
            wait = next_wait(err, waits, ends, stop)
            if wait is None:
                raise
        await asyncio.sleep(wait)


def next_wait(
    err: ScoutError, waits: Iterator[float], ends: float | None, stop: Callable[[], bool]
) -> float | None:
    """How long to wait before sending again after err; None: err is final."""
    if not retryable(err) or stop():
        return None
    wait = next(waits, None)
    if wait is None:
        return None
    if ends is not None and asyncio.get_running_loop().time() + wait >= ends:
        return None
    return wait


class Outage:
    """One stretch of failures of a call under a RetryPolicy: its backoffs and its
    deadline, shared by every try until one works."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.waits = policy.backoffs()
        deadline = policy.deadline
        self.ends = None if deadline is None else asyncio.get_running_loop().time() + deadline

    async def again(
        self, err: ScoutError, call: Callable[[], Awaitable[None]], stop: Callable[[], bool]
    ) -> bool:
        """Wait, then make the call again, until it works (True) or err is final (False)."""
        while (wait := next_wait(err, self.waits, self.ends, stop)) is not None:
            await asyncio.sleep(wait)
            if stop():
                return False
            try:
                await call()
            except ScoutError as later:
                err = later
                continue
            return True
        return False
