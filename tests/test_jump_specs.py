"""ProxyJump hops as OpenSSH reads them: `ssh://user@host:port` URLs, bracketed IPv6
addresses, and comma lists of hops (server/inventory.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, HostConfig
from server.configfile import parse


def _hops(tmp_path: Path, jump: str) -> list[HostConfig]:
    """The hops, first hop first, of a host whose ssh_config says `ProxyJump jump`."""
    conf = tmp_path / "ssh_config"
    conf.write_text(f"Host inner\n  HostName 10.0.0.9\n  User root\n  ProxyJump {jump}\n")
    cfg = parse({"ssh": {"config_files": [str(conf)]}}, tmp_path)
    hops = []
    hop = cfg.hosts["inner"].jump
    while hop is not None:
        hops.append(hop)
        hop = hop.jump
    return hops[::-1]


def _where(hop: HostConfig) -> tuple[str, str, int]:
    return hop.user, hop.address, hop.port


def test_an_ssh_url_gives_the_user_and_port_without_the_scheme(tmp_path: Path) -> None:
    (hop,) = _hops(tmp_path, "ssh://me@bastion:2222")
    assert _where(hop) == ("me", "bastion", 2222)


def test_a_bracketed_ipv6_address_is_split_from_its_port(tmp_path: Path) -> None:
    (hop,) = _hops(tmp_path, "me@[::1]:2222")
    assert _where(hop) == ("me", "::1", 2222)
    (bare,) = _hops(tmp_path, "[fe80::1]")
    assert (bare.address, bare.port) == ("fe80::1", 22)


def test_a_comma_list_of_hops_keeps_each_form_and_the_order(tmp_path: Path) -> None:
    first, second, third = _hops(tmp_path, "ssh://a@Bastion1:2201,b@[::1]:2202,gate")
    assert _where(first) == ("a", "Bastion1", 2201)  # the name's case is kept
    assert _where(second) == ("b", "::1", 2202)
    assert (third.address, third.port) == ("gate", 22)
    assert _where(first)[0] != "ssh://a"


@pytest.mark.parametrize("spec", ["bastion:notaport", "ssh://me@bastion/path", "http://x"])
def test_a_hop_that_is_not_user_host_port_is_a_config_error(tmp_path: Path, spec: str) -> None:
    with pytest.raises(ConfigError, match="ProxyJump"):
        _hops(tmp_path, spec)
