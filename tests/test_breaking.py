"""`buf breaking` against the last released contract (protos-released/) catches what it must.

`make lint` runs the same check on protos/ itself; these tests show that it can fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUF = shutil.which("buf") or str(ROOT / ".venv" / "bin" / "buf")
RELEASED = ROOT / "protos-released" / "image.json"
EXEC_PROTO = Path("scout/v1/exec.proto")


def buf_breaking(protos: Path) -> subprocess.CompletedProcess[str]:
    """The Makefile's check, on a given copy of protos/."""
    return subprocess.run(
        [BUF, "breaking", "--against", str(RELEASED)],
        check=False,
        cwd=protos,
        capture_output=True,
        text=True,
        timeout=60,
    )


def edited_copy(tmp_path: Path, old: str, new: str) -> Path:
    """protos/ copied to tmp_path with one line of exec.proto replaced."""
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy)
    source = (copy / EXEC_PROTO).read_text()
    assert source.count(old) == 1, f"{old!r} is not one line of {EXEC_PROTO}"
    (copy / EXEC_PROTO).write_text(source.replace(old, new))
    return copy


def test_the_live_contract_is_compatible_with_the_release() -> None:
    result = buf_breaking(ROOT / "protos")
    assert result.returncode == 0, result.stdout + result.stderr


def test_renumbering_a_field_fails(tmp_path: Path) -> None:
    result = buf_breaking(edited_copy(tmp_path, "string command = 2;", "string command = 99;"))
    assert result.returncode != 0
    assert 'Previously present field "2" with name "command" on message "ExecuteRequest"' in (
        result.stdout
    ), result.stdout + result.stderr


def test_renaming_a_field_fails(tmp_path: Path) -> None:
    """JSON callers (grpcurl, buf curl, proto3 JSON) send names, not numbers."""
    result = buf_breaking(edited_copy(tmp_path, "int32 exit_code = 3;", "int32 exit_status = 3;"))
    assert result.returncode != 0
    assert '"exit_code"' in result.stdout, result.stdout + result.stderr


def test_adding_a_field_passes(tmp_path: Path) -> None:
    """The check is about compatibility, not about any difference."""
    added = "bool close_stdin = 11;\n  string note = 99;"
    result = buf_breaking(edited_copy(tmp_path, "bool close_stdin = 11;", added))
    assert result.returncode == 0, result.stdout + result.stderr
