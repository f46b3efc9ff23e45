"""The hosts a request picks, as its caller may see them: ListHosts and ExecuteMany share it.

Globs, the selector and exclusions (`!web3`, `!web-eu-*`, which remove hosts from the
union; alone, from every host, as in Ansible) expand only over the hosts the caller's
policy allows, so a host outside it is never named by scout: not in a listing, not in a
fan-out's results, not in a NOT_FOUND, not in a "closest" hint, and excluding it changes
nothing the caller sees. A plain name is the caller's own word: ExecuteMany
keeps it as a target, answered per host as Execute would answer it (PERMISSION_DENIED
outside the policy, whether the inventory has it or not; NOT_FOUND inside it), so a
caller learns nothing it did not already say.

Every part of the picking is bounded before any matching: the number of names and
patterns, each one's bytes, the globs and their wildcards (each glob is matched against
every host), and the selector's requirements (`server.selector`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from . import inventory
from . import selector as selectors
from .config import HostConfig
from .errors import InvalidRequest, brief
from .requests import MAX_HOST, is_host_name

# The matching work: each glob is matched against every host, at a cost that grows with
# its wildcards (measured over 10,000 hosts: 16 globs of 8 wildcards take ~70 ms; 64 of
# 120 took 2.3 s, all on the event loop).
MAX_GLOBS = 16  # glob patterns in one request
MAX_WILDCARDS = 8  # `*`, `?` and `[` in one glob
HIDDEN = "(hidden)"  # a jump host the caller may not use, in ListHosts' `via`


def check_patterns(patterns: Sequence[str], max_count: int) -> None:
    """The `hosts` field's bounds: how many, how long each, how many globs."""
    if len(patterns) > max_count:
        raise InvalidRequest(f"hosts: at most {max_count} names or patterns, got {len(patterns)}")
    globs = 0
    for pattern in patterns:
        if len(pattern) > MAX_HOST or len(pattern.encode()) > MAX_HOST:
            raise InvalidRequest(
                f"hosts: each name or pattern at most {MAX_HOST} bytes, got {brief(pattern)}"
            )
        if not is_host_name(pattern) or not pattern.strip():
            raise InvalidRequest(
                f"hosts: {brief(pattern)} is not a name or pattern (empty, blank or with "
                "control characters)"
            )
        if inventory.is_exclusion(pattern) and (
            not pattern[1:].strip() or inventory.is_exclusion(pattern[1:])
        ):
            raise InvalidRequest(
                f"hosts: {brief(pattern)} excludes nothing: write `!NAME` or `!GLOB`"
            )
        wildcards = sum(pattern.count(c) for c in "*?[")
        if wildcards > MAX_WILDCARDS:
            raise InvalidRequest(
                f"hosts: at most {MAX_WILDCARDS} wildcards (*, ?, [) in a pattern, got "
                f"{wildcards} in {brief(pattern)}"
            )
        globs += inventory.is_pattern(pattern)
    if globs > MAX_GLOBS:
        raise InvalidRequest(
            f"hosts: at most {MAX_GLOBS} glob patterns (each is matched against every host), "
            f"got {globs}"
        )


def parse_selector(text: str) -> selectors.Selector | None:
    """The request's selector: none when empty; a blank one is a mistake, not "all"."""
    if not text:
        return None
    if not text.strip():
        raise InvalidRequest("selector: blank; leave it empty to pick by hosts alone")
    return selectors.parse(text)


def pick(
    hosts: Mapping[str, HostConfig],
    may_use: Callable[[str], bool],
    patterns: Sequence[str],
    selector: selectors.Selector | None,
) -> tuple[list[str], list[str]]:
    """The hosts the caller may use that the patterns and the selector pick, less the
    exclusions' (sorted), and the plain names given that are not among them and not
    excluded (in the order given, once each).

    Exclusions (`!NAME`, `!GLOB`) only ever remove from what the caller may see, so an
    exclusion of a hidden host changes nothing a caller can observe."""
    found, _ = inventory.pick(hosts, patterns, selector)
    visible = [name for name in found if may_use(name)]
    shown = set(visible)
    named = [
        p
        for p in dict.fromkeys(patterns)
        if not inventory.is_pattern(p) and p not in shown and not inventory.excluded(p, patterns)
    ]
    return visible, named


def via(host: HostConfig, may_use: Callable[[str], bool]) -> list[str]:
    """The host's jump hosts, first hop first, those the caller may not use as HIDDEN."""
    return [hop if may_use(hop) else HIDDEN for hop in host.via]
