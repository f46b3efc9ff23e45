"""Hostile requests: whatever a caller sends, scout answers with a short, honest status and
hurts no other caller.

Oversize exec lines against OpenSSH's packet limit, values echoed without bound into
messages and log lines, forged log lines, bytes that are not a message, fields that
validation missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator

import grpc
import pytest

from scout.v1 import exec_pb2
from server.logs import JsonFormatter, TextFormatter
from testkit.scripted import ScriptedServer

from .scoutd import Scout, config, running_scout, started

EXECUTE = "/scout.v1.ExecService/Execute"
STREAM = "/scout.v1.ExecService/Stream"


# ---- the exec line ---------------------------------------------------------------------


@pytest.mark.sshd
async def test_oversize_exec_lines_are_refused_and_hurt_no_other_command(
    openssh_scout: Scout,
) -> None:
    victims = [
        asyncio.ensure_future(openssh_scout.execute(host="o", command="sleep 1; echo ok"))
        for _ in range(6)
    ]
    await asyncio.sleep(0.3)  # the victims run on the pooled connections now
    attacks: list[dict[str, object]] = [
        {"command": "true", "working_dir": "/" + "d" * 300 * 1024},
        {"command": "true", "env": {"V": "'" * 60 * 1024}},  # 300 KiB once quoted
        {"command": "'" * 64 * 1024, "env": {"A": "'" * 30 * 1024}},
    ]
    for fields in attacks:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await openssh_scout.stub.Execute(exec_pb2.ExecuteRequest(host="o", **fields))  # type: ignore[arg-type]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert started(info.value) == "false"
        assert len(info.value.details() or "") < 300
    results = await asyncio.gather(*victims)
    assert all((r.exit_code, r.stdout) == (0, b"ok\n") for r in results)
    assert openssh_scout.app.pool.stats.evictions == {}  # no connection was lost


# ---- inputs echoed without bound -------------------------------------------------------


async def test_huge_values_are_refused_with_a_short_message_and_a_short_log_line(
    shell_server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        for fields in (
            {"host": "h" * 10 * 1024 * 1024, "command": "true"},
            {"host": "h", "command": "true", "env": {"N" * 5 * 1024 * 1024: "v"}},
            {"host": "h", "command": "true", "env": {"A\n": "v"}},
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.stub.Execute(exec_pb2.ExecuteRequest(**fields))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(info.value.details() or "") < 300
        with pytest.raises(grpc.aio.AioRpcError) as info:  # over the receive limit
            await s.stub.Execute(exec_pb2.ExecuteRequest(host="x" * 60 * 1024 * 1024))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the whole line as an operator's pipeline gets it, fields too (the host among them)
    for formatter in (JsonFormatter(), TextFormatter()):
        assert max(len(formatter.format(r)) for r in caplog.records) < 1000


FORGED = "\n2026-01-01 00:00:00,000 INFO server.rpc: Execute OK 0.001s [caller=admin]"
FIELD = r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s\]"]+)'
FIELDS = re.compile(rf"(?P<head>.*) \[(?P<fields>{FIELD}(?: {FIELD})*)\]")


def fields_of(line: str) -> dict[str, str]:
    """The [k=v ...] fields at the end of a text log line, values unquoted: after the last
    ` [` where the rest reads as fields (a quoted value cannot end them early)."""
    match = FIELDS.fullmatch(line)
    assert match is not None, line
    return {
        k: json.loads(v) if v.startswith('"') else v for k, v in re.findall(FIELD, match["fields"])
    }


async def test_no_caller_can_forge_a_text_log_line(
    shell_server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sneaky = "h] status=OK caller=admin [x"  # a valid host name: no control characters
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        for host in ("h" + FORGED, "h\r\x1b[2K", sneaky):
            with pytest.raises(grpc.aio.AioRpcError):
                await s.stub.Execute(
                    exec_pb2.ExecuteRequest(host=host, command="true" + FORGED),
                    metadata=(("x-request-id", "r] caller=admin"),),
                )
    formatter = TextFormatter()
    access = [r for r in caplog.records if r.name == "server.rpc"]
    assert len(access) == 3
    for record in access:
        line = formatter.format(record)
        assert "\n" not in line and "\r" not in line and "\x1b" not in line, line
        fields = fields_of(line)
        # the request's own fields join when logging was set up (another test in this
        # process may have): never a field the caller wrote in
        assert {"status", "duration", "host"} <= set(fields), line
        assert set(fields) <= {"status", "duration", "host", "request_id", "caller", "method"}
        assert fields["status"] != "OK" and fields.get("caller", "-") == "-", line
    hosts = [fields_of(formatter.format(r))["host"] for r in access]
    assert hosts == ["(invalid)", "(invalid)", sneaky]
    # a message that carries a caller's value stays on its line
    record = logging.makeLogRecord({"msg": "ExecuteMany on %s failed", "args": (FORGED,)})
    assert "\n" not in formatter.format(record)
    assert "\\n2026-01-01" in formatter.format(record)


# ---- malformed messages ----------------------------------------------------------------


async def test_bytes_that_are_not_a_message_get_invalid_argument_and_no_traceback(
    shell_server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        execute = s.channel.unary_unary(EXECUTE)
        for body in (b"\xff\xff\xff\xff", b"\x0a\x02\xff\xfe"):  # garbage; bad UTF-8 host
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await execute(body)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid message" in (info.value.details() or "")
        stream = s.channel.stream_stream(STREAM)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream(iter([b"\xff\xff\xff"])):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info]


# ---- validation gaps -------------------------------------------------------------------


async def test_malformed_fields_are_invalid_argument(shell_server: ScriptedServer) -> None:
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        bad_duration = exec_pb2.ExecuteRequest(host="h", command="true")
        bad_duration.timeout.seconds, bad_duration.timeout.nanos = 1, 1_000_000_000
        for request in (
            exec_pb2.ExecuteRequest(host="h", command="true", env={"A\n": "1"}),
            exec_pb2.ExecuteRequest(host="h\0", command="true"),
            bad_duration,
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.stub.Execute(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request

        async def resize_zero() -> AsyncIterator[exec_pb2.StreamRequest]:
            yield exec_pb2.StreamRequest(
                start=exec_pb2.ExecuteRequest(host="h", command="sleep 5", pty=True)
            )
            yield exec_pb2.StreamRequest(resize=exec_pb2.TerminalSize(columns=0, rows=0))
            await asyncio.sleep(10)

        await s.assert_stream_fails(resize_zero(), grpc.StatusCode.INVALID_ARGUMENT, "resize")
