"""A network namespace the test makes itself: hosts that only a jump host can reach.

Inside it, 127.0.0.1 is its own loopback, which nothing outside can reach; a veth pair
gives it one address the outside can (`inside`, with `outside` on our side). So an sshd
on the inside loopback is reachable only through an sshd on `inside` that forwards.
Needs root and Debian's iproute2 (`ip netns`), which .ci/run installs.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Netns:
    """A namespace and its veth addresses."""

    name: str
    outside: str  # our end of the veth pair
    inside: str  # the namespace's end, reachable from here
    veth_inside: str  # the name of the namespace's end


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


SLOTS = range(200)  # slot N: 10.231.(16+N).0/30, namespace scout-TAG-N, veths scout-o/iN
LOCKS = Path("/run/lock")  # scout-netns-N.lock: held by the process using slot N


@contextlib.contextmanager
def _claim_slot() -> Iterator[int]:
    """A slot no other test process uses: its lock held until the with-block ends.

    Locks (not pids) keep pytest-xdist workers and concurrent runs apart; an flock dies
    with its process, so a killed run leaves no claim behind. A slot whose subnet is on an
    interface already (a run that takes no lock, a leftover) is passed over.
    """
    LOCKS.mkdir(parents=True, exist_ok=True)
    for slot in SLOTS:
        with (LOCKS / f"scout-netns-{slot}.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            if _subnet_in_use(slot):
                continue
            yield slot
            return
    raise RuntimeError(f"all {len(SLOTS)} test network slots are taken: ip netns list")


def _subnet_in_use(slot: int) -> bool:
    shown = subprocess.run(
        ["ip", "-o", "addr", "show", "to", f"10.231.{16 + slot}.0/30"],
        check=True,
        capture_output=True,
        timeout=10,
    )
    return bool(shown.stdout.strip())


@contextlib.contextmanager
def netns(tag: str) -> Iterator[Netns]:
    """Create a namespace with loopback up and a veth pair; delete it afterwards."""
    with _claim_slot() as slot:
        name = f"scout-{tag}-{slot}"
        veth_out, veth_in = f"scout-o{slot}", f"scout-i{slot}"
        subnet = f"10.231.{16 + slot}"
        space = Netns(name, f"{subnet}.1", f"{subnet}.2", veth_in)
        for leftover in (["netns", "del", name], ["link", "del", veth_out]):  # of a killed run
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip(*leftover)
        _ip("netns", "add", name)
        try:
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("link", "add", veth_out, "type", "veth", "peer", "name", veth_in)
            _ip("link", "set", veth_in, "netns", name)
            _ip("addr", "add", f"{space.outside}/30", "dev", veth_out)
            _ip("link", "set", veth_out, "up")
            _ip("-n", name, "addr", "add", f"{space.inside}/30", "dev", veth_in)
            _ip("-n", name, "link", "set", veth_in, "up")
            yield space
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", veth_out)
            _ip("netns", "del", name)
