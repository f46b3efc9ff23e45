"""A network namespace the test makes itself: hosts that only a jump host can reach.

Inside it, 127.0.0.1 is its own loopback, which nothing outside can reach; a veth pair
gives it one address the outside can (`inside`, with `outside` on our side). So an sshd
on the inside loopback is reachable only through an sshd on `inside` that forwards.
Needs root and Debian's iproute2 (`ip netns`), which .ci/run installs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Netns:
    """A namespace and its veth addresses."""

    name: str
    outside: str  # our end of the veth pair
    inside: str  # the namespace's end, reachable from here
    veth_inside: str  # the name of the namespace's end


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def netns(tag: str) -> Iterator[Netns]:
    """Create a namespace with loopback up and a veth pair; delete it afterwards."""
    name = f"scout-{tag}-{os.getpid() % 10000}"
    subnet = 16 + os.getpid() % 200  # 10.231.<subnet>.0/30, unlikely to collide
    veth_out, veth_in = f"so{os.getpid() % 100000}", f"si{os.getpid() % 100000}"
    space = Netns(name, f"10.231.{subnet}.1", f"10.231.{subnet}.2", veth_in)
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("netns", "del", name)  # a leftover of a killed run
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
