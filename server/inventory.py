"""The inventory: hosts from OpenSSH config files and `[hosts.NAME]` tables, their labels,
and the hosts a request's patterns and selector pick.

People who run scout already describe their hosts in ssh_config files, so every concrete
`Host` alias in `[ssh] config_files` (no wildcards) is a host, its settings resolved by
asyncssh's own config support as OpenSSH would (`HostName`, `User`, `Port`,
`IdentityFile`, `ProxyJump`, `Include`, `Match`, `ServerAlive*`). A `[hosts.NAME]` table
overrides or adds to what the files say. `ProxyJump` hops become host configs of their
own, chained by `jump`, so each hop is a pooled connection too.

Labels: `[labels]` tables keyed by a glob over host names, then a host's own
`labels = {...}`, which wins.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import getpass
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, HostConfig
from .selector import Selector
from .sshconfig import SSHConfigFiles

WILDCARDS = frozenset("*?![")
EXCLUDE = "!"  # a target that removes hosts: `!web3`, `!web-eu-*`


def _jump_spec(spec: str) -> tuple[str | None, str, int | None]:
    """`[ssh://][user@]host[:port]` of one ProxyJump hop, as OpenSSH reads it: a bracketed
    IPv6 address (`[::1]:2222`) keeps its colons, and the URL form drops its scheme."""
    text = spec if spec.startswith("ssh://") else f"ssh://{spec}"
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"ssh.config_files: ProxyJump hop {spec!r}: {err}") from None
    if parts.scheme != "ssh" or not parts.hostname or parts.path or parts.query:
        raise ConfigError(f"ssh.config_files: ProxyJump hop {spec!r} is not [user@]host[:port]")
    host = parts.netloc.rpartition("@")[2]  # urlsplit's hostname is lowered: keep the case
    host = (parts.hostname or "") if host.startswith("[") else host.partition(":")[0]
    user = urllib.parse.unquote(parts.username) if parts.username else None
    return user, host, port


class _Resolver:
    """Builds HostConfigs from ssh_config, one per alias or hop, each resolved once."""

    def __init__(self, files: SSHConfigFiles) -> None:
        self.files = files
        self._done: dict[tuple[str, str | None, int | None], HostConfig] = {}

    def host(
        self,
        alias: str,
        user: str | None = None,
        port: int | None = None,
        resolving: tuple[str, ...] = (),
    ) -> HostConfig:
        key = (alias, user, port)
        if key in self._done:
            return self._done[key]
        if alias in resolving:
            raise ConfigError(f"ssh.config_files: ProxyJump loops through {alias}")
        opts = self.files.options(alias)
        get: Callable[[str], Any] = opts.get
        jump = None
        proxy = get("ProxyJump")
        if proxy and str(proxy).lower() != "none":
            for spec in str(proxy).split(","):
                hop_user, hop_host, hop_port = _jump_spec(spec.strip())
                hop = self.host(hop_host, hop_user, hop_port, (*resolving, alias))
                jump = dataclasses.replace(hop, jump=jump) if jump is not None else hop
        host = f"[{alias}]" if ":" in alias else alias  # an IPv6 address, as written
        name = f"{user}@{host}" if user else host
        name = f"{name}:{port}" if port else name
        interval = get("ServerAliveInterval")
        known = get("UserKnownHostsFile")
        config = HostConfig(
            name=name,
            address=str(get("Hostname") or alias),
            port=int(port or get("Port") or 22),
            user=str(user or get("User") or getpass.getuser()),
            identity_files=tuple(Path(p).expanduser() for p in get("IdentityFile") or ()),
            known_hosts=Path(known[0]).expanduser() if known else None,
            jump=jump,
            keepalive_interval=float(interval) if interval is not None else None,
            keepalive_count_max=get("ServerAliveCountMax"),
        )
        self._done[key] = config
        return config


def build(
    files: Sequence[Path],
    tables: Mapping[str, dict[str, Any]],
    labels: Mapping[str, Mapping[str, str]],
    table_host: Callable[[str, dict[str, Any]], HostConfig],
    *,
    allow_match_exec: bool = False,
) -> dict[str, HostConfig]:
    """The whole inventory: ssh_config hosts, then tables over them, then labels.

    tables: each `[hosts.NAME]` table's checked values; a name the files do not know
    becomes a host by `table_host` (which needs its address). Each ssh_config file is
    read once (server.sshconfig), however many aliases it has.
    """
    hosts: dict[str, HostConfig] = {}
    if files:
        parsed = SSHConfigFiles(files, allow_match_exec=allow_match_exec)
        resolver = _Resolver(parsed)
        names = [a for a in parsed.aliases() if not WILDCARDS & set(a)]
        hosts = {alias: resolver.host(alias) for alias in names}
    for name, values in tables.items():
        if name in hosts:
            hosts[name] = dataclasses.replace(hosts[name], **values)
        else:
            hosts[name] = table_host(name, values)
    for name, host in hosts.items():
        merged: dict[str, str] = {}
        for pattern, extra in labels.items():
            if fnmatch.fnmatchcase(name, pattern):
                merged.update(extra)
        merged.update(tables.get(name, {}).get("labels", {}))
        if merged != host.labels:
            hosts[name] = dataclasses.replace(host, labels=merged)
    return hosts


def is_pattern(text: str) -> bool:
    """Whether a target is a glob over names (or an exclusion) rather than one name."""
    return bool(WILDCARDS & set(text))


def is_exclusion(text: str) -> bool:
    """Whether a target is an exclusion, `!NAME` or `!GLOB` (Ansible's pattern syntax)."""
    return text.startswith(EXCLUDE)


def excluded(name: str, patterns: Iterable[str]) -> bool:
    """Whether an exclusion among the patterns removes this name."""
    return any(fnmatch.fnmatchcase(name, p[1:]) for p in patterns if is_exclusion(p))


def pick(
    hosts: Mapping[str, HostConfig], patterns: Iterable[str], selector: Selector | None
) -> tuple[list[str], list[str]]:
    """The targets: names and globs matched, plus selector matches, less the exclusions'
    hosts (sorted), and the plain names that are not in the inventory (each is a target
    that will answer NOT_FOUND). Exclusions alone start from every host, as in Ansible."""
    patterns = list(patterns)
    found: set[str] = set()
    missing: list[str] = []
    including = [p for p in patterns if not is_exclusion(p)]
    if not including and selector is None:
        found.update(hosts)
    for pattern in including:
        if is_pattern(pattern):
            found.update(fnmatch.filter(hosts, pattern))
        elif pattern in hosts:
            found.add(pattern)
        elif pattern not in missing:
            missing.append(pattern)
    if selector is not None:
        found.update(name for name, host in hosts.items() if selector.matches(host.labels))
    found = {name for name in found if not excluded(name, patterns)}
    return sorted(found), [name for name in missing if not excluded(name, patterns)]
