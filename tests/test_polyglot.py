"""Callers that are not Python: buf's curl (Go) with reflection, and from the .proto alone."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from .scoutd import Scout

ROOT = Path(__file__).resolve().parent.parent
BUF = shutil.which("buf") or str(ROOT / ".venv" / "bin" / "buf")


async def buf_curl(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run `buf curl` (a Go program) and return its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        BUF,
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_reflection_lists_the_service(local_scout: Scout) -> None:
    code, out, err = await buf_curl("--list-methods", f"http://{local_scout.target}")
    assert code == 0, err
    methods = out.split()
    assert "scout.v1.ExecService/Execute" in methods
    assert "scout.v1.ExecService/Stream" in methods
    assert "grpc.health.v1.Health/Check" in methods


async def call_from_protos(
    local_scout: Scout, method: str, *messages: Mapping[str, object]
) -> tuple[int, str, str]:
    """buf curl with the schema compiled from protos/, no reflection, messages on stdin."""
    return await buf_curl(
        "--schema",
        str(ROOT / "protos"),
        "--reflect=false",
        "-d",
        "@-",
        f"http://{local_scout.target}/scout.v1.ExecService/{method}",
        stdin="\n".join(json.dumps(m) for m in messages).encode(),
    )


async def test_execute_from_the_proto_files_alone(local_scout: Scout) -> None:
    """No reflection: buf compiles protos/ itself, as any language's tooling would."""
    request = {"host": "local", "command": "echo hi; exit 3", "text": True, "timeout": "5s"}
    code, out, err = await call_from_protos(local_scout, "Execute", request)
    assert code == 0, err
    response = json.loads(out)
    assert response["stdoutText"] == "hi\n" and response["exitCode"] == 3


async def test_stream_from_the_proto_files_alone(local_scout: Scout) -> None:
    """A bidirectional stream: start, stdin, then end of input (EOF for the command)."""
    messages: list[Mapping[str, object]] = [
        {"start": {"host": "local", "command": "tr a-z A-Z"}},
        {"stdin": "aGVsbG8K"},  # base64 of "hello\n"
    ]
    code, out, err = await call_from_protos(local_scout, "Stream", *messages)
    assert code == 0, err
    replies = [json.loads(part) for part in out.replace("}\n{", "}\x00{").split("\x00")]
    assert replies[0] == {"stdout": "SEVMTE8K"}  # base64 of "HELLO\n"
    assert replies[-1]["exit"].get("exitCode", 0) == 0


async def test_unknown_host_status_reaches_a_go_caller(local_scout: Scout) -> None:
    code, _, err = await buf_curl(
        "-d",
        json.dumps({"host": "nope", "command": "true"}),
        f"http://{local_scout.target}/scout.v1.ExecService/Execute",
    )
    assert code != 0
    assert "not_found" in err.lower() and "'nope' is not in the inventory" in err


async def test_execute_many_from_the_proto_files_alone(local_scout: Scout) -> None:
    """A server stream: one message per host; a host outside the inventory has its own."""
    request = {"hosts": ["local", "elsewhere"], "request": {"command": "echo fan", "text": True}}
    code, out, err = await call_from_protos(local_scout, "ExecuteMany", request)
    assert code == 0, err
    replies = {
        r["host"]: r for r in (json.loads(p) for p in out.replace("}\n{", "}\x00{").split("\x00"))
    }
    assert replies["local"]["result"]["stdoutText"] == "fan\n"
    assert replies["elsewhere"]["error"]["code"] == 5  # NOT_FOUND
