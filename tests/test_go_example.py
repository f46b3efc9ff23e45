"""examples/go/client.go (Debian's grpc-go, stubs generated at build time) against a live scout.

build.sh runs once per session into a temporary folder (its stubs, GOPATH and Go cache
too), so the example folder stays as committed. Only a machine without `go` skips these
tests; with `go` present, a missing protoc or plugin fails the build (.ci/run installs all).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .exampleclients import ROOT, ROUTED, build, readme_output, run_example, scout, through_proxy
from .scoutd import Scout

EXAMPLE = ROOT / "examples" / "go"
__all__ = ["scout"]  # the fixture


@pytest.fixture(scope="session")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's binary, built with examples/go/build.sh once per session."""
    if shutil.which("go") is None:
        pytest.skip("go is not installed: Debian package golang-go (see .ci/run)")
    folder = tmp_path_factory.mktemp("go-example")
    build([str(EXAMPLE / "build.sh"), str(folder)])
    return folder / "scout-example"


async def test_go_example_runs_execute_and_stream(scout: Scout, go_example: Path) -> None:
    code, out, err = await run_example([str(go_example), scout.target, "local"])
    assert (code, out) == (0, readme_output("scout-example")), err


async def test_go_example_reports_the_status_of_a_failed_call(
    scout: Scout, go_example: Path
) -> None:
    code, out, err = await run_example([str(go_example), scout.target, "nope"])
    assert (code, out) == (1, "")
    assert err == "scout: NotFound: host 'nope' is not in the inventory\n"


async def test_go_example_names_the_host_on_every_call(scout: Scout, go_example: Path) -> None:
    """Proxies route by x-scout-host, so a call without it could land on the wrong replica."""
    (code, out, err), routed = await through_proxy(
        scout, lambda target: run_example([str(go_example), target, "local"])
    )
    assert (code, out) == (0, readme_output("scout-example")), err
    assert routed == ROUTED
