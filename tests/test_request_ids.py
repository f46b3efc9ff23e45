"""With [[callers]], a request id a caller sends is its own: scout makes it `NAME:ID`.

Taken as sent, one caller could reuse another's id (seen in a shared log, or a scout-made
one, which every trailer shows): the audit then had two callers' calls under one
request id, and a command that reads SCOUT_REQUEST_ID could not tell them apart. Caller
names have no `:` and scout's own ids have none, so `NAME:` tells who chose an id, and no
caller can make one that another caller's call, or scout, had.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.callers import hash_token
from server.config import CallerConfig
from server.logs import RequestFields
from testkit.scripted import ScriptedServer

from .scoutd import Scout, config, running_scout

TOKENS = {"ops": "ops-token-2d8e9b0c7a6f5e4d", "bot": "bot-token-7c1f0e6a8d2b4e59"}


@pytest.fixture
async def scout(shell_server: ScriptedServer, tmp_path: Path) -> AsyncIterator[Scout]:
    cfg = config(
        {"h": shell_server.host_config("h")},
        exec={"export_request_id": True},
        audit={"file": str(tmp_path / "audit.jsonl")},
    )
    callers = tuple(
        CallerConfig(name=name, token_sha256=hash_token(token), hosts=("*",))
        for name, token in TOKENS.items()
    )
    async with running_scout(dataclasses.replace(cfg, callers=callers)) as s:
        yield s


async def call(
    scout: Scout, caller: str | None, request_id: str | None, traceparent: str | None = None
) -> tuple[str, str]:
    """Execute `echo $SCOUT_REQUEST_ID` as caller (None: no token); the id the command saw
    (empty when refused) and the id of the trailer."""
    metadata: list[tuple[str, str]] = []
    if traceparent is not None:
        metadata.append(("traceparent", traceparent))
    if caller is not None:
        metadata.append(("authorization", f"Bearer {TOKENS[caller]}"))
    if request_id is not None:
        metadata.append(("x-request-id", request_id))
    stub = exec_pb2_grpc.ExecServiceStub(scout.channel)
    request = exec_pb2.ExecuteRequest(host="h", command="echo $SCOUT_REQUEST_ID")
    rpc = stub.Execute(request, metadata=tuple(metadata), timeout=10)
    try:
        seen = (await rpc).stdout.decode().strip()
    except grpc.aio.AioRpcError:
        seen = ""
    trailers = dict(await rpc.trailing_metadata() or ())
    return seen, str(trailers["x-request-id"])


def audit(scout: Scout) -> list[dict[str, Any]]:
    return [json.loads(x) for x in Path(scout.app.config.audit.file).read_text().splitlines()]


async def test_a_caller_cannot_take_another_callers_request_id_or_scouts(scout: Scout) -> None:
    _, chosen = await call(scout, "ops", "deploy-7")
    _, made = await call(scout, "ops", None)  # scout makes one
    for seen in (chosen, made):  # bot reuses each id it could have seen; so does a stranger
        await call(scout, "bot", seen)
        await call(scout, None, seen)
    callers: dict[str, set[str]] = {}
    for line in audit(scout):
        callers.setdefault(line["request_id"], set()).add(line["caller"])
    assert all(len(names) == 1 for names in callers.values()), callers
    assert callers == {
        "ops:deploy-7": {"ops"},
        made: {"ops"},
        "bot:ops:deploy-7": {"bot"},
        f"bot:{made}": {"bot"},
        "-:ops:deploy-7": {"-"},
        f"-:{made}": {"-"},
    }
    assert ":" not in made


async def test_the_command_and_the_trailer_see_the_same_id_as_the_audit(scout: Scout) -> None:
    assert await call(scout, "ops", "deploy-7") == ("ops:deploy-7", "ops:deploy-7")
    assert await call(scout, "bot", "ops:deploy-7") == ("bot:ops:deploy-7", "bot:ops:deploy-7")
    assert await call(scout, None, "deploy-7") == ("", "-:deploy-7")  # refused, still named


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


async def test_a_traceparent_gives_its_trace_id_when_no_request_id_is_sent(
    scout: Scout, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    caplog.handler.addFilter(RequestFields())  # the request's fields, as scout's handler adds
    assert await call(scout, "ops", None, TRACEPARENT) == (f"ops:{TRACE}", f"ops:{TRACE}")
    assert await call(scout, "bot", "deploy-7", TRACEPARENT) == ("bot:deploy-7", "bot:deploy-7")
    assert [line["request_id"] for line in audit(scout)] == [f"ops:{TRACE}", "bot:deploy-7"]
    access = [r for r in caplog.records if getattr(r, "status", None) is not None]
    assert [getattr(r, "request_id", None) for r in access] == [f"ops:{TRACE}", "bot:deploy-7"]


@pytest.mark.parametrize(
    "bad",
    [
        f"ff-{TRACE}-00f067aa0ba902b7-01",  # version ff is invalid
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # an all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # an all-zero parent id
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # upper-case hex
        f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has four fields
        "not-a-traceparent",
    ],
)
async def test_an_invalid_traceparent_is_ignored(scout: Scout, bad: str) -> None:
    seen, trailer = await call(scout, "ops", None, bad)
    assert seen == trailer and TRACE not in trailer and TRACE.upper() not in trailer
    assert not trailer.startswith("ops:")  # a scout-made id


async def test_a_later_version_may_carry_more_fields(scout: Scout) -> None:
    assert await call(scout, "ops", None, f"01-{TRACE}-00f067aa0ba902b7-01-more") == (
        f"ops:{TRACE}",
        f"ops:{TRACE}",
    )
