"""Nothing a caller may not see: ListHosts and ExecuteMany, tried by a restricted caller.

The caller `web-bot` may use `web?` and `app1`. The inventory also has hosts it may not
use (`db1`, `db-primary`, `webdb`, and `bastion`, app1's jump host). Every answer it gets,
results, statuses, messages and metadata, is searched for those names. Real grpc
channels, the in-process SSH server behind every host.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from scout.v1 import exec_pb2
from server.callers import hash_token
from server.config import CallerConfig, HostConfig
from server.selector import MAX_REQUIREMENTS
from server.targets import MAX_GLOBS, MAX_WILDCARDS
from testkit.ports import free_port
from testkit.scripted import ScriptedServer

from .scoutd import Scout, config, running_scout, started

WEB_TOKEN = "web-bot-5b0e1f2a3c4d"
OPS_TOKEN = "ops-9a8b7c6d5e4f"
CALLERS = (
    CallerConfig(name="web-bot", token_sha256=hash_token(WEB_TOKEN), hosts=("web?", "app1")),
    CallerConfig(name="ops", token_sha256=hash_token(OPS_TOKEN), hosts=("*",)),
)
HIDDEN = ("db1", "db-primary", "webdb", "bastion")


def inventory(server: ScriptedServer) -> dict[str, HostConfig]:
    def host(name: str, role: str) -> HostConfig:
        return dataclasses.replace(server.host_config(name), labels={"role": role})

    hosts = {name: host(name, "web") for name in ("web1", "web2", "webdb")}
    hosts |= {name: host(name, "db") for name in ("db1", "db-primary")}
    bastion = host("bastion", "jump")
    hosts["bastion"] = dataclasses.replace(bastion, port=free_port())  # down: app1 fails
    hosts["app1"] = dataclasses.replace(host("app1", "app"), jump=hosts["bastion"])
    return hosts


@pytest.fixture
async def guarded(shell_server: ScriptedServer, tmp_path: Path) -> AsyncIterator[Scout]:
    audit = {"file": str(tmp_path / "audit.jsonl")}
    cfg = config(inventory(shell_server), callers=CALLERS, audit=audit)
    async with running_scout(cfg) as s:
        yield s


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Seen:
    """Everything scout said to the caller, as text, to search for hidden names."""

    def __init__(self) -> None:
        self.text: list[str] = []

    def error(self, err: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        self.text += [err.details() or "", repr(err.trailing_metadata())]
        self.text.append(repr(err.initial_metadata()))
        return err

    def check(self) -> None:
        everything = "\n".join(self.text)
        assert everything  # something was said
        for name in HIDDEN:
            assert name not in everything, (name, everything)


async def many(
    s: Scout, seen: Seen, token: str = WEB_TOKEN, **fields: Any
) -> list[exec_pb2.ExecuteManyResponse]:
    fields.setdefault("request", exec_pb2.ExecuteRequest(command="echo hi"))
    call = s.stub.ExecuteMany(
        exec_pb2.ExecuteManyRequest(**fields), metadata=bearer(token), timeout=20
    )
    messages = [m async for m in call]
    seen.text += [str(m) for m in messages]
    seen.text += [repr(await call.initial_metadata()), repr(await call.trailing_metadata())]
    return messages


async def many_fails(s: Scout, seen: Seen, **fields: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await many(s, seen, **fields)
    return seen.error(info.value)


async def list_hosts(
    s: Scout, seen: Seen, token: str = WEB_TOKEN, **fields: Any
) -> exec_pb2.ListHostsResponse:
    response: exec_pb2.ListHostsResponse = await s.stub.ListHosts(
        exec_pb2.ListHostsRequest(**fields), metadata=bearer(token), timeout=10
    )
    seen.text.append(str(response))
    return response


async def test_a_fan_out_never_names_a_host_its_caller_may_not_use(guarded: Scout) -> None:
    seen = Seen()
    # Globs and selectors that match only hidden hosts: NOT_FOUND, nothing named.
    for fields in ({"hosts": ["db*"]}, {"selector": "role=db"}, {"hosts": ["*db*"]}):
        err = await many_fails(guarded, seen, **fields)
        assert err.code() == grpc.StatusCode.NOT_FOUND, fields
        assert started(err) == "false"
    # A glob over both: only the hosts the caller may use run.
    messages = await many(guarded, seen, hosts=["web*", "*1"])
    assert sorted(m.host for m in messages) == ["app1", "web1", "web2"]
    assert all(m.result.stdout == b"hi\n" for m in messages if m.host != "app1")
    app1 = next(m for m in messages if m.host == "app1")  # its jump host is down
    assert app1.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "through a jump host this caller may not use" in app1.error.message
    messages = await many(guarded, seen, selector="role in (web,db)")
    assert sorted(m.host for m in messages) == ["web1", "web2"]
    # A typo close to a hidden host: its hint names only hosts the caller may use.
    (typo,) = await many(guarded, seen, hosts=["webd"])
    assert typo.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "closest: web" in typo.error.message
    seen.check()
    audit = Path(guarded.app.config.audit.file)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]  # noqa: ASYNC240
    refused = [x for x in lines if x["code"] == "NOT_FOUND" and x["host"] == ""]
    assert [(x["method"], x["caller"], x["started"]) for x in refused] == [
        ("ExecuteMany", "web-bot", False)
    ] * 3  # each fan-out refused as a whole has its line


async def test_a_hidden_name_and_an_unknown_one_get_the_same_answer(guarded: Scout) -> None:
    seen = Seen()
    answers = {}
    for name in ("db-primary", "db-primarx"):  # in the inventory, and not
        (message,) = await many(guarded, seen, hosts=[name])
        text = str(message).replace(name, "NAME")
        answers[name] = (message.error.code, message.started, text)
    assert answers["db-primary"] == answers["db-primarx"]
    assert answers["db-primary"][0] == grpc.StatusCode.PERMISSION_DENIED.value[0]
    for text in ("db-primarx", "db-primar"):  # Execute's hint hides them too
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await guarded.stub.Execute(
                exec_pb2.ExecuteRequest(host=text, command="true"), metadata=bearer(WEB_TOKEN)
            )
        assert "db-primary" not in (info.value.details() or "")


async def test_list_hosts_hides_jump_hosts_and_is_audited(guarded: Scout) -> None:
    seen = Seen()
    listed = await list_hosts(guarded, seen)
    assert [h.name for h in listed.hosts] == ["app1", "web1", "web2"]
    app1 = listed.hosts[0]
    assert list(app1.via) == ["(hidden)"]
    assert not (await list_hosts(guarded, seen, selector="role=db")).hosts
    assert not (await list_hosts(guarded, seen, hosts=["db1", "b*"])).hosts
    seen.check()
    ops = await list_hosts(guarded, Seen(), token=OPS_TOKEN, hosts=["app1"])
    assert list(ops.hosts[0].via) == ["bastion"]  # a caller who may use it sees it
    audit = Path(guarded.app.config.audit.file)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]  # noqa: ASYNC240
    assert [(x["method"], x["caller"], x["code"]) for x in lines] == [
        ("ListHosts", "web-bot", "OK"),
        ("ListHosts", "web-bot", "OK"),
        ("ListHosts", "web-bot", "OK"),
        ("ListHosts", "ops", "OK"),
    ]


async def test_blank_selectors_and_unbounded_patterns_are_invalid(guarded: Scout) -> None:
    seen = Seen()
    long_name = "w" * 256
    for fields, says in (
        ({"selector": " \t "}, "selector: blank"),
        ({"hosts": [f"web{i}" for i in range(10_001)]}, "hosts: at most 10000 names"),
        ({"hosts": [long_name]}, "hosts: each name or pattern at most 255 bytes"),
        ({"hosts": ["é" * 128]}, "hosts: each name or pattern at most 255 bytes"),
        ({"hosts": [f"w{i}*" for i in range(MAX_GLOBS + 1)]}, f"at most {MAX_GLOBS} glob"),
        ({"hosts": ["*" * (MAX_WILDCARDS + 1)]}, f"at most {MAX_WILDCARDS} wildcards"),
        ({"selector": ",".join(["role"] * (MAX_REQUIREMENTS + 1))}, "at most 32 requirements"),
        ({"hosts": ["web1\nx"]}, "control characters"),
        ({"hosts": ["  "]}, "blank"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await list_hosts(guarded, seen, **fields)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert says in (info.value.details() or ""), info.value.details()
        err = await many_fails(guarded, seen, **fields)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert says in (err.details() or ""), err.details()
        assert started(err) == "false"
    listed = await list_hosts(guarded, seen, hosts=[f"web{i}*" for i in range(MAX_GLOBS)])
    assert [h.name for h in listed.hosts] == ["web1", "web2"]


async def test_a_jump_hosts_failure_is_named_only_to_a_caller_who_may_use_it(
    guarded: Scout,
) -> None:
    seen = Seen()
    answers = {}
    for token in (WEB_TOKEN, OPS_TOKEN):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await guarded.stub.Execute(
                exec_pb2.ExecuteRequest(host="app1", command="true"), metadata=bearer(token)
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        answers[token] = info.value.details() or ""
    seen.error(info.value)  # ops: may use bastion
    assert "through jump host bastion" in answers[OPS_TOKEN]
    web = Seen()
    web.text.append(answers[WEB_TOKEN])
    web.check()
    assert answers[WEB_TOKEN].startswith("app1: through a jump host this caller may not use")


async def test_exclusions_reveal_no_host_the_caller_may_not_use(guarded: Scout) -> None:
    """An attacker excludes names and globs it guesses: if excluding a hidden host changed
    anything (a listing, a fan-out's hosts, an error), the difference would reveal it."""
    seen = Seen()
    assert [h.name for h in (await list_hosts(guarded, seen, hosts=["!web1"])).hosts] == [
        "app1",
        "web2",
    ]
    for real, made_up in (("!db-primary", "!db-primarx"), ("!db*", "!zz*"), ("!*db*", "!*q*")):
        answers = []
        for exclusion in (real, made_up):
            hosts = [h.name for h in (await list_hosts(guarded, seen, hosts=[exclusion])).hosts]
            ran = await many(guarded, seen, hosts=[exclusion, "!app1"])
            answers.append((hosts, sorted((m.host, m.result.stdout) for m in ran)))
        assert answers[0] == answers[1], (real, made_up)
        assert answers[0][0] == ["app1", "web1", "web2"]
    # A hidden name and an unknown one, given and excluded: both vanish, nothing said.
    for name in ("db-primary", "db-primarx"):
        ran = await many(guarded, seen, hosts=[name, f"!{name}", "web1"])
        assert [m.host for m in ran] == ["web1"]
    # Excluding every host the caller may see leaves nothing: NOT_FOUND, as for db*.
    err = await many_fails(guarded, seen, hosts=["!web*", "!app1"])
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert started(err) == "false"
    seen.check()
