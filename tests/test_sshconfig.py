"""ssh_config files read once: each alias resolves exactly as asyncssh's own parser says."""

from __future__ import annotations

import getpass
from pathlib import Path

from asyncssh.config import SSHClientConfig

from server.sshconfig import SSHConfigFiles

OPTIONS = (
    *("Hostname", "User", "Port", "IdentityFile", "ProxyJump", "UserKnownHostsFile"),
    *("ServerAliveInterval", "ServerAliveCountMax", "ForwardAgent"),
)


def test_every_alias_resolves_as_asyncssh_resolves_it(tmp_path: Path) -> None:
    extra = tmp_path / "extra.conf"
    extra.write_text(
        "Host db1 db2\n  HostName %h.db.example\n  User dba\n"
        "Host db2\n  Port 2202\n  IdentityFile ~/.ssh/%r-%h\n"
    )
    main = tmp_path / "main.conf"
    main.write_text(
        "# a fleet\nUser = everyone\n"
        f"Include {extra}\n"
        "Host web1 web2 web3\n  HostName %h.example.net\n  IdentityFile /k/web\n"
        'Host web2\n  Port 2222\n  IdentityFile "/k/with space"\n'
        "Host web* !web3\n  ServerAliveInterval 7\n  ProxyJump bastion\n"
        "Host bastion gate\n  HostName 192.0.2.1\n  User jump\n"
        "Match host web3.example.net\n  ServerAliveCountMax 5\n"
        "Match originalhost db* user dba\n  ForwardAgent yes\n"
        "Host *\n  UserKnownHostsFile /k/known\n  IdentityFile /k/default\n"
    )
    files = [main, tmp_path / "second.conf"]
    files[1].write_text("Host web1\n  Port 9\nHost solo,gate2\n  HostName 198.51.100.7\n")
    parsed = SSHConfigFiles(files)
    aliases = parsed.aliases()
    assert aliases[:5] == ["db1", "db2", "web1", "web2", "web3"]
    assert {"bastion", "gate", "solo,gate2", "web*", "!web3", "*"} <= set(aliases)
    for alias in [
        "db1",
        "db2",
        "web1",
        "web2",
        "web3",
        "bastion",
        "gate",
        "solo",
        "gate2",
        "other",
    ]:
        theirs = SSHClientConfig.load(
            None, files, False, False, False, getpass.getuser(), (), alias, ()
        )
        ours = parsed.options(alias)
        assert [ours.get(o) for o in OPTIONS] == [theirs.get(o) for o in OPTIONS], alias
