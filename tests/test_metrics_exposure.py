"""/metrics off loopback is said loudly at start, as plaintext gRPC off loopback is: it
has no authentication and names every host and caller. It is a warning, not a refusal:
Prometheus scraping from another machine is a normal setup."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import Config, MetricsSettings, check_exposure

from .serverproc import server_exits

UNREACHABLE = "192.0.2.1:9464"  # TEST-NET-1: no machine's address, so binding it fails


def with_metrics(listen: str) -> Config:
    return Config(metrics=MetricsSettings(listen=listen))


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "10.1.2.3:9464"])
def test_metrics_off_loopback_is_a_warning(listen: str) -> None:
    warnings = check_exposure(with_metrics(listen), "127.0.0.1:50051")
    assert [w for w in warnings if f"[metrics] listen = {listen}" in w], warnings
    assert all("WITHOUT authentication" in w for w in warnings)


@pytest.mark.parametrize("listen", ["", "127.0.0.1:9464", "[::1]:9464", "localhost:9464"])
def test_metrics_on_loopback_or_off_is_quiet(listen: str) -> None:
    assert check_exposure(with_metrics(listen), "127.0.0.1:50051") == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_server_says_it_before_it_binds(tmp_path: Path, workers: str) -> None:
    """One process serves /metrics itself; with workers, the supervisor does (its workers
    serve none), so each path logs the warning. The bind then fails: nothing listens."""
    config = tmp_path / "scout.toml"
    config.write_text("")
    args = ("--config", str(config), "--listen", "127.0.0.1:0", "--workers", workers)
    done = server_exits(*args, "--metrics", UNREACHABLE)
    err = done.stderr.decode()
    assert done.returncode != 0, err
    assert f"[metrics] listen = {UNREACHABLE}" in err and "WITHOUT authentication" in err, err
