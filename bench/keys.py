"""Keys for a benchmark run: one host key, one client key, a known_hosts file.

Every target (OpenSSH or the protocol-only server) uses the same host key and trusts the
same client key, so scout, the raw client and the naive pool all authenticate the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh


@dataclass(frozen=True)
class Keys:
    """Paths of the key material in a run's work directory."""

    host_key: Path
    client_key: Path
    client_pub: Path
    known_hosts: Path

    def host_public(self) -> str:
        """The host key as one OpenSSH public key line."""
        key = asyncssh.read_private_key(self.host_key)
        return key.export_public_key("openssh").decode().strip()

    def trust(self, endpoints: list[tuple[str, int]]) -> None:
        """Add known_hosts lines for these (address, port) endpoints."""
        public = self.host_public()
        with self.known_hosts.open("a", encoding="ascii") as f:
            for address, port in endpoints:
                name = address if port == 22 else f"[{address}]:{port}"
                f.write(f"{name} {public}\n")


def _write_private(path: Path, key: asyncssh.SSHKey) -> None:
    """Write a private key readable by its owner only (sshd refuses others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key("openssh"))


def make_keys(workdir: Path) -> Keys:
    """Generate fresh ed25519 keys and an empty known_hosts in workdir."""
    keys = Keys(
        host_key=workdir / "host_ed25519",
        client_key=workdir / "client_ed25519",
        client_pub=workdir / "client_ed25519.pub",
        known_hosts=workdir / "known_hosts",
    )
    host = asyncssh.generate_private_key("ssh-ed25519", comment="scout-bench-host")
    client = asyncssh.generate_private_key("ssh-ed25519", comment="scout-bench-client")
    _write_private(keys.host_key, host)
    _write_private(keys.client_key, client)
    keys.client_pub.write_bytes(client.export_public_key("openssh"))
    keys.known_hosts.write_text("", encoding="ascii")
    return keys
