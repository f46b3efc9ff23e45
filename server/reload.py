"""SIGHUP: read the config file again, off the event loop, and put it in force in one swap.

What changes live: the inventory (hosts from ssh_config and `[hosts.NAME]`, labels),
`[[callers]]`, `[audit]`, `[exec]` and `[fanout]` limits, `max_concurrent_rpcs`,
`shutdown_grace`, `[ssh]` (known_hosts, client keys, agent, config files), `[metrics]
per_host`, the `[durable]` bounds and the exposure flags. A host whose settings changed
connects with the new ones from the next call: its idle connections close now, busy ones
when their command ends. A removed caller's next call is UNAUTHENTICATED; its calls in
flight finish.

What waits for a restart, with a WARNING naming the key and the old value kept: what the
listening socket and the pool were built with (`listen`, `workers`, `[tls]` paths,
`[metrics] listen`, every `[pool]` key), `[durable] store` (the keys given out are
recorded in the old one; the URLs are logged without a password), and an `[exec]` limit
that would need a larger gRPC message than the server accepts or sends (raising
`max_stdin_bytes`, `max_command_bytes` or `max_output_bytes`; lowering them is live).

The audit file is opened again by name on every reload (logrotate's `create` mode).
Reading the file (ssh_config files included) runs in a thread; the swap runs on the loop.
A config that does not load, or whose files do not, changes nothing (an ERROR says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncssh

from .audit import AuditLog
from .config import Config, ConfigError, check_exposure, redact
from .connector import Connector
from .errors import FileError
from .live import LiveConfig

if TYPE_CHECKING:
    from .pool import Pool
    from .service import ExecService
    from .tls import ServerTLS

log = logging.getLogger(__name__)

RESTART_ONLY_TOP = ("listen", "workers")
RESTART_ONLY_SECTIONS = ("pool", "tls")
RECEIVE_KEYS = ("max_stdin_bytes", "max_command_bytes")  # sized into the receive limit
SEND_KEYS = ("max_output_bytes",)  # sized into the send limit
LOADING_SWITCH = 0.0005  # seconds: the GIL switch interval while a thread reads the config


def keep_restart_only(old: Config, fresh: Config) -> tuple[Config, list[str]]:
    """fresh, with old's values where a value cannot change while serving; a warning for
    each such key that changed."""
    warnings: list[str] = []
    kept: dict[str, Any] = {}

    def keep(key: str, was: object, now: object) -> None:
        warnings.append(f"reload: {key} changed to {now!r}, which takes a restart; keeping {was!r}")

    for key in RESTART_ONLY_TOP:
        if getattr(old, key) != getattr(fresh, key):
            keep(key, getattr(old, key), getattr(fresh, key))
            kept[key] = getattr(old, key)
    for section in RESTART_ONLY_SECTIONS:
        was, now = getattr(old, section), getattr(fresh, section)
        for f in dataclasses.fields(was):
            if getattr(was, f.name) != getattr(now, f.name):
                keep(f"{section}.{f.name}", getattr(was, f.name), getattr(now, f.name))
        kept[section] = was
    if old.metrics.listen != fresh.metrics.listen:
        keep("metrics.listen", old.metrics.listen, fresh.metrics.listen)
        kept["metrics"] = dataclasses.replace(fresh.metrics, listen=old.metrics.listen)
    if old.durable.store != fresh.durable.store:
        keep("durable.store", redact(old.durable.store), redact(fresh.durable.store))
        kept["durable"] = dataclasses.replace(fresh.durable, store=old.durable.store)
    exec_ = fresh.exec
    for keys, grows in (
        (RECEIVE_KEYS, exec_.receive_limit() > old.exec.receive_limit()),
        (SEND_KEYS, exec_.send_limit() > old.exec.send_limit()),
    ):
        if grows:
            for key in keys:
                if getattr(exec_, key) != getattr(old.exec, key):
                    keep(f"exec.{key}", getattr(old.exec, key), getattr(exec_, key))
            exec_ = dataclasses.replace(exec_, **{k: getattr(old.exec, k) for k in keys})
    kept["exec"] = exec_
    return dataclasses.replace(fresh, **kept), warnings


@dataclass
class Reloader:
    """Puts a freshly read config in force: every part that holds live state follows."""

    live: LiveConfig
    service: ExecService
    pool: Pool[asyncssh.SSHClientConnection]
    connector: Connector
    address: str  # where the server listens, for the exposure rule
    tls: ServerTLS | None = None
    loader: Callable[[], Config] | None = None  # reads the config file again
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def audit(self) -> AuditLog:
        """The audit log (reopened on every reload)."""
        return self.service.audit

    async def reload(self) -> None:
        """SIGHUP: the config file (if there is one), the audit file, then the SSH files.
        Reloads run one at a time, each to its end."""
        async with self._lock:
            fresh = None
            if self.loader is not None:
                try:
                    with _short_gil_turns():
                        fresh = await asyncio.to_thread(self.loader)
                except ConfigError as exc:
                    log.error("config not reloaded, serving the previous one: %s", exc)  # noqa: TRY400
            if fresh is None or not self.apply(fresh):
                self._reopen_audit(self.live.current)
            self.reload_files()

    def apply(self, fresh: Config) -> bool:
        """Check fresh, then swap it in; whether it is now in force."""
        old = self.live.current
        merged, warnings = keep_restart_only(old, fresh)
        try:
            for warning in check_exposure(merged, self.address):
                log.warning("%s", warning)
            ssh_changed = _ssh_of(merged) != _ssh_of(old)
            changed = [
                h for h in merged.hosts.values() if ssh_changed or old.hosts.get(h.name) != h
            ]
            self.connector.preload(changed, merged.ssh)
        except (ConfigError, FileError) as exc:
            log.error("config not reloaded, serving the previous one: %s", exc)  # noqa: TRY400
            return False
        if not self._reopen_audit(merged):
            log.error("config not reloaded, serving the previous one: audit.file")
            return False
        self._warn_insecure(old, merged)
        for warning in warnings:
            log.warning("%s", warning)
        self.live.swap(merged)  # the one write: every reader asks `live` from now on
        self.service.rpcs.max_in_flight = merged.max_concurrent_rpcs
        self.service.output_budget.limit = merged.exec.max_buffered_output_bytes
        configs = {h.name: h for h in self.connector.hosts_with_jumps(merged.hosts.values())}
        retired = self.pool.update_hosts(configs, "reload")
        log.info(
            "config reloaded: %d hosts (%d added, %d removed, %d changed; %d retired in the "
            "pool), %d callers",
            len(merged.hosts),
            len(merged.hosts.keys() - old.hosts.keys()),
            len(old.hosts.keys() - merged.hosts.keys()),
            sum(1 for n, h in merged.hosts.items() if n in old.hosts and old.hosts[n] != h),
            len(retired),
            len(merged.callers),
        )
        return True

    def _reopen_audit(self, config: Config) -> bool:
        """Open the audit destination again by name (logrotate renamed the old file)."""
        try:
            self.audit.reopen(config.audit)
        except FileError as exc:
            log.error("%s; still writing to the audit log opened before", exc)  # noqa: TRY400
            return False
        return True

    def _warn_insecure(self, old: Config, fresh: Config) -> None:
        """The loud warnings of a start, for what a reload turns on."""
        if fresh.ssh.allow_match_exec and not old.ssh.allow_match_exec:
            log.warning(MATCH_EXEC_WARNING)
        for host in fresh.hosts.values():
            before = old.hosts.get(host.name)
            if host.insecure_accept_any_host_key and not (
                before and before.insecure_accept_any_host_key
            ):
                log.warning(INSECURE_WARNING, host.name)

    def reload_files(self) -> None:
        """Re-read TLS files, known_hosts and keys that changed (cheap: by mtime); retire
        the connections of every host the pool knows (jump hosts too) that uses one."""
        if self.tls is not None:
            self.tls.reload()
        changed = set(self.connector.reload())
        if changed:
            hosts = {s.name for s in self.pool.hosts() if self.connector.uses(s.config, changed)}
            self.pool.retire_hosts(hosts, "files_changed")


@contextlib.contextmanager
def _short_gil_turns() -> Iterator[None]:
    """While a thread reads the config, it gives the GIL up every LOADING_SWITCH seconds
    instead of every 5 ms: each turn of the event loop that waits for the GIL behind it
    (a health check takes dozens) then waits that much at most."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, LOADING_SWITCH))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _ssh_of(config: Config) -> tuple[object, ...]:
    """The [ssh] settings that decide how every host connects."""
    ssh = config.ssh
    return (ssh.known_hosts, ssh.client_keys, ssh.agent)


MATCH_EXEC_WARNING = (
    "ssh.allow_match_exec = true: `Match exec` lines in ssh.config_files run commands ON "
    "THIS GATEWAY each time the inventory is read"
)
INSECURE_WARNING = (
    "hosts.%s: insecure_accept_any_host_key = true: ANY host key is accepted, so anyone "
    "who can intercept its traffic can impersonate it"
)
