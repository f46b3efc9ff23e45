"""The TOML config: every key checked, the bad ones named."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, DurableSettings, redact
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
        ("[durable]\nstores = 'x'", "durable.stores: unknown key"),
        ("[durable]\nstore = 'postgres://h/db'", 'durable.store: expected "sqlite:PATH"'),
        ("[durable]\nstore = 'sqlite:'", "durable.store: expected a path"),
        ("[durable]\nstore = 'redis://:6379/0'", "durable.store: 'redis://:6379/0' is not"),
        ("[durable]\nstore = 'redis://h:port/0'", "durable.store: 'redis://h:port/0' is not"),
        ("[durable]\nstore = 'redis://h/x'", "durable.store: the database of"),
        ("[durable]\nstore = 7", "durable.store: expected a string"),
        ("[durable]\nmax_records = 0", "durable.max_records: must be at least 1"),
        ("[durable]\nmax_outcome_bytes = 10", "durable.max_outcome_bytes: must be at least"),
        ("[durable]\nmax_detach_grace = -1", "durable.max_detach_grace: must be at least 0"),
        ("[durable]\nretention = 60", "durable.retention: must be at least exec.max_timeout"),
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


def test_the_durable_section_loads_with_paths_from_the_config_folder(tmp_path: Path) -> None:
    text = (
        "[exec]\nmax_timeout = 30\ndefault_timeout = 30\nstream_default_timeout = 30\n"
        "[durable]\nstore = 'sqlite:state/keys.db'\nretention = 60\n"
        "max_records = 5\nmax_outcome_bytes = 2048\nreplay_buffer_bytes = 0\n"
        "max_detached = 3\nmax_detach_grace = 600\n"
    )
    durable = load(write(tmp_path, text)).durable
    assert durable == DurableSettings(
        store=f"sqlite:{tmp_path}/state/keys.db",
        retention=60.0,
        max_records=5,
        max_outcome_bytes=2048,
        replay_buffer_bytes=0,
        max_detached=3,
        max_detach_grace=600.0,
    )
    assert load(write(tmp_path, "")).durable == DurableSettings()  # store "": the default file
    redis = load(write(tmp_path, "[durable]\nstore = 'rediss://:pw@cache:6380/2'\n"))
    assert redis.durable.store == "rediss://:pw@cache:6380/2"


def test_a_bad_redis_url_is_named_without_its_password(tmp_path: Path) -> None:
    for url in ("redis://:hunter2@h:nope/0", "redis://u:hunter2@h/db", "redis://:hunter2@/0"):
        with pytest.raises(ConfigError, match=r"durable\.store") as info:
            load(write(tmp_path, f"[durable]\nstore = '{url}'\n"))
        assert "hunter2" not in str(info.value)
        assert "***@" in str(info.value)
    assert "hunter2" not in repr(DurableSettings(store="redis://:hunter2@h/0"))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:6379/0", "redis://***@h:6379/0"),
        ("redis://user:s3cret@h", "redis://***@h"),
        ("redis://:s3c@ret@h/1", "redis://***@h/1"),
        ("redis://:s3c/ret@h/1", "redis://***@h/1"),
        ("redis://:s3c?ret@h/1", "redis://***@h/1"),
        ("redis://h/0?password=s3cret", "redis://h/0?***"),
        ("rediss://h:6380/2", "rediss://h:6380/2"),
        ("sqlite:/var/lib/scout/durable.sqlite3", "sqlite:/var/lib/scout/durable.sqlite3"),
    ],
)
def test_redact_hides_every_form_of_a_password(url: str, shown: str) -> None:
    assert redact(url) == shown
