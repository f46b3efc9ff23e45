"""The TOML config: every key checked, the bad ones named."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError
from server.configfile import load

GOOD = """
listen = "127.0.0.1:6000"
[server]
keepalive_interval = 20.0
min_ping_interval = 0.25
[ssh]
known_hosts = "known_hosts"
client_keys = ["id_ed25519"]
[pool]
shards = 4
max_connections = 20
[exec]
max_output_bytes = 1024
[hosts.web1]
address = "127.0.0.2"
port = 2222
user = "deploy"
identity_file = "~/keys/web1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scout.toml"
    path.write_text(text)
    return path


def test_a_full_config_loads(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD))
    assert config.listen == "127.0.0.1:6000"
    assert config.ssh.known_hosts == tmp_path / "known_hosts"
    assert config.ssh.client_keys == (tmp_path / "id_ed25519",)
    assert config.pool.shards == 4 and config.pool.max_connections == 20
    assert config.pool.max_sessions_per_connection == 8  # default kept
    assert (config.server.keepalive_interval, config.server.min_ping_interval) == (20.0, 0.25)
    assert (config.server.keepalive_timeout, config.server.max_ping_strikes) == (10.0, 2)
    web1 = config.hosts["web1"]
    assert (web1.address, web1.port, web1.user) == ("127.0.0.2", 2222, "deploy")
    assert web1.identity_file == Path("~/keys/web1").expanduser()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("listn = 'x:1'", "listn: unknown key"),
        ("[pool]\nshard = 4", "pool.shard: unknown key"),
        ("[pool]\nshards = 0", "pool.shards: must be at least 1"),
        ("[pool]\nshards = 'four'", "pool.shards: expected a number"),
        ("[pool]\nmax_connections = 2.5", "pool.max_connections: expected a whole number"),
        ("[pool]\nidle_timeout = true", "pool.idle_timeout: expected a number"),
        ("[exec]\nkill_grace = -1", "exec.kill_grace: must be at least 0"),
        ("[exec]\nmax_output_bytes = 0", "exec.max_output_bytes: must be at least 1"),
        ("[ssh]\nknownhosts = 'x'", "ssh.knownhosts: unknown key"),
        ("[hosts.a]\nport = 22", "hosts.a.address: required"),
        ("[hosts.a]\naddress = 'h'\nport = 70000", "hosts.a.port: must be at most 65535"),
        ("[hosts.a]\naddress = 'h'\nidentity = 'k'", "hosts.a.identity: unknown key"),
        ("[hosts.'a b']\naddress = 'h'", "hosts.a b: a host name is"),
        ("listen = 'nocolon'", "listen: expected HOST:PORT"),
        ("[server]\nkeepalive = 5", "server.keepalive: unknown key"),
        ("[server]\nkeepalive_timeout = 0", "server.keepalive_timeout: must be at least 0.1"),
        ("[server]\nmax_ping_strikes = 1.5", "server.max_ping_strikes: expected a whole number"),
        ("[server]\nmin_ping_interval = -1", "server.min_ping_interval: must be at least 0"),
        ("listen = ", "not valid TOML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path / "nope.toml")


def test_grpc_message_limits_follow_the_exec_limits(tmp_path: Path) -> None:
    """The largest request and response the limits allow fit the gRPC limits (issue 9.9):
    they were a fixed 64 MiB, so a larger stdin, or output with `text`, failed after the
    command ran."""
    path = tmp_path / "scout.toml"
    mib = 1024 * 1024
    path.write_text(f"[exec]\nmax_stdin_bytes = {100 * mib}\nmax_output_bytes = {17 * mib}\n")
    limits = load(path).exec
    assert limits.receive_limit() > 100 * mib + limits.max_command_bytes
    assert limits.send_limit() > 4 * 17 * mib  # stdout, stderr and a text copy of each
