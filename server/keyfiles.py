"""SSH key files for the embedded local SSH server: written once, 0600, with a `.pub` beside.

The demo (`scout-server --demo`), the tests' SSH servers and the benchmarks all need a
host key, one authorized client key and a known_hosts file; this is the one place that
writes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh


def write_key(path: Path, key: asyncssh.SSHKey) -> None:
    """Write a private key 0600 (sshd and ssh refuse looser ones) and its .pub beside it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key("openssh"))
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key("openssh"))


def load_or_create_key(path: Path, comment: str) -> asyncssh.SSHKey:
    """Load an ed25519 key, or create and persist it once, so restarts keep trust."""
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    write_key(path, key)
    return key


@dataclass(frozen=True)
class ShellKeys:
    """The host key, the one authorized client key, and the files a client needs."""

    host_key: asyncssh.SSHKey
    client_key: asyncssh.SSHKey
    identity_file: Path
    known_hosts: Path

    def trust(self, address: str, port: int) -> None:
        """Add `[address]:port` to known_hosts, so clients verify this host key there."""
        public = self.host_key.export_public_key("openssh").decode("ascii").strip()
        line = f"[{address}]:{port} {public}\n"
        existing = self.known_hosts.read_text() if self.known_hosts.exists() else ""
        if line not in existing:
            with self.known_hosts.open("a", encoding="ascii") as f:
                f.write(line)


def load_or_create_keys(state_dir: Path, comment: str = "scout-demo") -> ShellKeys:
    """Keys in state_dir, made on first use; many listeners may share one ShellKeys.
    known_hosts exists from the start (empty until a listener is trusted), so a client
    configured with it can start before any listener does."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / "known_hosts").touch(mode=0o600)
    return ShellKeys(
        host_key=load_or_create_key(state_dir / "host_ed25519", f"{comment}-host"),
        client_key=load_or_create_key(state_dir / "client_ed25519", f"{comment}-client"),
        identity_file=state_dir / "client_ed25519",
        known_hosts=state_dir / "known_hosts",
    )
