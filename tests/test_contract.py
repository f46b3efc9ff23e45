"""The contract: stubs match protos/, buf lint passes, names other languages rely on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from scout.v1 import exec_pb2
from server import protogen

ROOT = Path(__file__).resolve().parent.parent
BUF = shutil.which("buf") or str(ROOT / ".venv" / "bin" / "buf")


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    """Committed stubs equal what `make protos` writes now; run it after editing protos/."""
    written = protogen.generate(tmp_path)
    assert {p.name for p in written} == {"exec_pb2.py", "exec_pb2.pyi", "exec_pb2_grpc.py"}
    for fresh in written:
        committed = ROOT / fresh.relative_to(tmp_path)
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: make protos"


def test_buf_lint_passes() -> None:
    result = subprocess.run(
        [BUF, "lint"], check=False, cwd=ROOT / "protos", capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_contract_names() -> None:
    """Other languages depend on these names: add fields freely, rename none."""
    service = exec_pb2.DESCRIPTOR.services_by_name["ExecService"]
    assert service.full_name == "scout.v1.ExecService"
    methods = {m.name: m for m in service.methods}
    assert not methods["Execute"].client_streaming and not methods["Execute"].server_streaming
    assert methods["Stream"].client_streaming and methods["Stream"].server_streaming
    request = exec_pb2.ExecuteRequest.DESCRIPTOR.fields_by_name
    for name in ("host", "command", "stdin", "env", "timeout", "max_output_bytes"):
        assert name in request
    response = exec_pb2.ExecuteResponse.DESCRIPTOR.fields_by_name
    for name in ("stdout", "stderr", "exit_code", "signal", "stdout_truncated"):
        assert name in response
    start = exec_pb2.StreamRequest.DESCRIPTOR.fields_by_name["start"]
    assert start.message_type is exec_pb2.ExecuteRequest.DESCRIPTOR
    events = exec_pb2.StreamResponse.DESCRIPTOR.oneofs_by_name["event"]
    assert [f.name for f in events.fields][:3] == ["stdout", "stderr", "exit"]
    assert "lost" in [f.name for f in events.fields]  # issue 21: re-attachable streams
    for name in ("idempotency_key", "detach_grace"):
        assert name in request
    attach = exec_pb2.StreamRequest.DESCRIPTOR.fields_by_name["attach"].message_type
    assert attach is not None
    assert [f.name for f in attach.fields] == [
        "idempotency_key",
        "host",
        "stdout_offset",
        "stderr_offset",
    ]
    assert "offset" in exec_pb2.StreamResponse.DESCRIPTOR.fields_by_name
