"""One recorder of "a command ran" (server.launch.Run): Execute, Stream and ExecuteMany
(captured and streamed) leave the same audit line, and the same command counts, for the
same command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scout.v1 import exec_pb2
from server.config import HostConfig

from .scoutd import Scout, config, running_scout

SAME = ("host", "command", "argv", "exit_code", "signal", "bytes_out", "code", "started")


async def test_every_rpc_records_a_run_alike(shell_host: HostConfig, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    cfg = config({"shell": shell_host}, audit={"file": str(audit)})
    async with running_scout(cfg) as scout:
        await scout.execute(host="shell", command="echo hi")
        await _stream(scout)
        for stream_output in (False, True):
            await _execute_many(scout, stream_output=stream_output)
        stats = scout.app.service.rpcs
        assert stats.commands.get("exit_zero") == 4
        assert stats.output_bytes.get("stdout") == 4 * len(b"hi\n")
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["method"] for line in lines] == ["Execute", "Stream"] + ["ExecuteMany"] * 2
    expected = {
        "host": "shell",
        "command": "echo hi",
        "argv": [],
        "exit_code": 0,
        "signal": "",
        "bytes_out": 3,
        "code": "OK",
        "started": True,
    }
    for line in lines:
        assert {key: line[key] for key in SAME} == expected, line["method"]
    assert len({frozenset(line) for line in lines}) == 1  # the same fields, every RPC


async def _stream(scout: Scout) -> None:
    async def messages() -> Any:
        yield exec_pb2.StreamRequest(start=exec_pb2.ExecuteRequest(host="shell", command="echo hi"))

    events = [event async for event in scout.stub.Stream(messages(), timeout=10)]
    assert events[-1].exit.exit_code == 0


async def _execute_many(scout: Scout, *, stream_output: bool) -> None:
    request = exec_pb2.ExecuteManyRequest(
        hosts=["shell"],
        request=exec_pb2.ExecuteRequest(command="echo hi"),
        stream_output=stream_output,
    )
    events = [event async for event in scout.stub.ExecuteMany(request, timeout=10)]
    assert events[-1].result.exit_code == 0
