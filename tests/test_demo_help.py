"""What `make run` prints suggests only tools that `make run` installed."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from server.demo import help_text
from server.localshell import ShellHost

DEMO = cast(ShellHost, SimpleNamespace(address="127.0.0.1", port=2222, user="me"))


@pytest.mark.parametrize("has_buf", [True, False])
def test_buf_curl_is_suggested_only_when_installed(
    has_buf: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "python").touch()
    if has_buf:
        (tmp_path / "buf").touch()  # the dev extra's buf-bin, beside the venv's python
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    text = help_text(DEMO, "127.0.0.1:50051", None)
    assert ".venv/bin/scout exec local -- uname -a\n" in text
    assert (".venv/bin/buf curl" in text) is has_buf
    assert ("`make venv` adds grpcurl and buf curl" in text) is not has_buf
    assert "http://127.0.0.1:50051/scout.v1.ExecService/Execute" in text or not has_buf
