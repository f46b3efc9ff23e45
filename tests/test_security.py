"""Safe to expose: TLS and mTLS with real certificates, caller identity and policy, audit.

Certificates are made in the test (testkit/certs.py); clients are real grpc channels;
commands run on the in-process SSH server. Every check is on what a caller or an
operator sees: the status and its message, the audit line, the server's log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.app import App, start
from server.callers import hash_token
from server.config import (
    AuditSettings,
    CallerConfig,
    Config,
    ConfigError,
    HostConfig,
    TLSSettings,
    check_exposure,
)
from testkit.certs import PKI
from testkit.scripted import ScriptedServer

from .scoutd import config, started
from .serverproc import server_exits

BOT_TOKEN = "bot-7c1f0e6a8d2b4e59a3f1"
OPS_TOKEN = "ops-2d8e9b0c7a6f5e4d3c2b"
READER_TOKEN = "reader-5b4a39281706f5e4d3c2"
CALLERS = (
    CallerConfig(  # restricted: argv patterns, so argv only
        name="deploy-bot",
        token_sha256=hash_token(BOT_TOKEN),
        hosts=("web*",),
        commands=("echo *", "true", "exit *", "sleep *"),
        env=("SECRET", "BASH_ENV"),  # BASH_ENV: listed, and refused all the same
        working_dirs=("/tmp", "/srv/*"),
        max_in_flight=2,
    ),
    CallerConfig(name="ops", token_sha256=hash_token(OPS_TOKEN), hosts=("*",), stream=True),
    CallerConfig(  # restricted, with Stream
        name="reader",
        token_sha256=hash_token(READER_TOKEN),
        hosts=("web*",),
        commands=("cat", "printenv LANG"),
        env=("LANG",),
        stream=True,
    ),
)


def inventory(server: ScriptedServer) -> dict[str, HostConfig]:
    return {name: server.host_config(name) for name in ("web1", "db1")}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclasses.dataclass
class Served:
    app: App
    target: str

    def channel(self, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(self.target)
        return grpc.aio.secure_channel(self.target, credentials)


async def serving(cfg: Config) -> Served:
    app = await start(cfg, "127.0.0.1:0")
    return Served(app, f"127.0.0.1:{app.port}")


@pytest.fixture
async def guarded(shell_server: ScriptedServer, tmp_path: Path) -> AsyncIterator[Served]:
    """scout with callers and an audit log, plaintext on loopback."""
    audit = {"file": str(tmp_path / "audit.jsonl")}
    cfg = config(inventory(shell_server), callers=CALLERS, audit=audit)
    served = await serving(cfg)
    yield served
    await served.app.stop(grace=1.0)


def audit_lines(served: Served) -> list[dict[str, Any]]:
    path = Path(served.app.config.audit.file)
    return [json.loads(line) for line in path.read_text().splitlines()]


async def execute(channel: grpc.aio.Channel, token: str | None, **fields: Any) -> Any:
    stub = exec_pb2_grpc.ExecServiceStub(channel)
    metadata = bearer(token) if token else ()
    return await stub.Execute(exec_pb2.ExecuteRequest(**fields), metadata=metadata, timeout=10)


# ---- transport -------------------------------------------------------------------------


async def test_tls_right_ca_wrong_ca_expired_and_plaintext(
    shell_server: ScriptedServer, pki: PKI
) -> None:
    tls = TLSSettings(cert_file=pki.server.cert, key_file=pki.server.key)
    served = await serving(dataclasses.replace(config(inventory(shell_server)), tls=tls))
    try:
        right = grpc.ssl_channel_credentials(pki.ca.bundle.read_bytes())
        async with served.channel(right) as channel:
            r = await execute(channel, None, host="web1", command="echo tls")
            assert r.stdout == b"tls\n"
        wrong = grpc.ssl_channel_credentials(pki.other_ca.bundle.read_bytes())
        async with served.channel(wrong) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await execute(channel, None, host="web1", command="true")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        async with served.channel() as channel:  # plaintext to a TLS port
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await execute(channel, None, host="web1", command="true")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await served.app.stop(grace=0.5)
    expired = pki.ca.issue("expired-server", server=True, expired=True)
    tls = TLSSettings(cert_file=expired.cert, key_file=expired.key)
    served = await serving(dataclasses.replace(config(inventory(shell_server)), tls=tls))
    try:
        async with served.channel(right) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await execute(channel, None, host="web1", command="true")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await served.app.stop(grace=0.5)


async def test_mutual_tls_refuses_strangers_and_maps_the_certificate_to_its_caller(
    shell_server: ScriptedServer, pki: PKI
) -> None:
    tls = TLSSettings(pki.server.cert, pki.server.key, client_ca_file=pki.ca.bundle)
    by_cert = CallerConfig(name="cert-bot", cert_common_name="deploy-bot", hosts=("web1",))
    cfg = dataclasses.replace(config(inventory(shell_server)), tls=tls, callers=(by_cert,))
    served = await serving(cfg)
    ca = pki.ca.bundle.read_bytes()
    try:
        for who in (None, pki.stranger):
            creds = grpc.ssl_channel_credentials(
                ca,
                who.key.read_bytes() if who else None,
                who.cert.read_bytes() if who else None,
            )
            async with served.channel(creds) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await execute(channel, None, host="web1", command="true")
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails
        creds = grpc.ssl_channel_credentials(
            ca, pki.client.key.read_bytes(), pki.client.cert.read_bytes()
        )
        async with served.channel(creds) as channel:
            r = await execute(channel, None, host="web1", command="echo mtls")
            assert r.stdout == b"mtls\n"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await execute(channel, None, host="db1", command="true")
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "caller cert-bot" in (info.value.details() or "")
    finally:
        await served.app.stop(grace=0.5)


async def test_sighup_reloads_the_certificate_for_new_connections_and_keeps_calls_in_flight(
    shell_server: ScriptedServer, pki: PKI, tmp_path: Path
) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    cfg = dataclasses.replace(config(inventory(shell_server)), tls=TLSSettings(cert, key))
    served = await serving(cfg)
    old_ca = grpc.ssl_channel_credentials(pki.ca.bundle.read_bytes())
    new_ca = grpc.ssl_channel_credentials(pki.other_ca.bundle.read_bytes())
    try:
        async with served.channel(old_ca) as old:
            stub = exec_pb2_grpc.ExecServiceStub(old)
            queue: asyncio.Queue[exec_pb2.StreamRequest | None] = asyncio.Queue()
            start_msg = exec_pb2.ExecuteRequest(host="web1", command="cat")
            await queue.put(exec_pb2.StreamRequest(start=start_msg))

            async def requests() -> AsyncIterator[exec_pb2.StreamRequest]:
                while (msg := await queue.get()) is not None:
                    yield msg

            call = stub.Stream(requests(), timeout=20)
            await call.initial_metadata()
            rotated = pki.other_ca.issue("scout-server-2", server=True)
            shutil.copy(rotated.cert, cert)
            shutil.copy(rotated.key, key)
            await served.app.reload()  # what SIGHUP does
            async with served.channel(new_ca) as fresh:  # a new connection: the new certificate
                r = await execute(fresh, None, host="web1", command="echo rotated")
                assert r.stdout == b"rotated\n"
            async with served.channel(old_ca) as stale:
                with pytest.raises(grpc.aio.AioRpcError):
                    await execute(stale, None, host="web1", command="true")
            await queue.put(exec_pb2.StreamRequest(stdin=b"still here\n"))  # the old call
            await queue.put(exec_pb2.StreamRequest(close_stdin=True))
            out = b"".join([m.stdout async for m in call])
            assert out == b"still here\n"
    finally:
        await served.app.stop(grace=0.5)


def test_off_loopback_scout_needs_tls_and_identities_or_says_so_loudly() -> None:
    base = Config()
    with pytest.raises(ConfigError, match=r"not a loopback address and \[tls\] is not set"):
        check_exposure(base, "0.0.0.0:50051")
    tls = dataclasses.replace(base, tls=TLSSettings(Path("c"), Path("k")))
    with pytest.raises(ConfigError, match="no \\[\\[callers\\]\\]"):
        check_exposure(tls, "10.1.2.3:50051")
    assert check_exposure(dataclasses.replace(tls, callers=CALLERS), "10.1.2.3:50051") == []
    loud = dataclasses.replace(base, allow_plaintext=True, allow_anonymous=True)
    warnings = check_exposure(loud, "[::]:50051")
    assert any("WITHOUT TLS" in w for w in warnings) and any("ANYONE" in w for w in warnings)
    assert check_exposure(base, "127.0.0.1:50051") == check_exposure(base, "[::1]:1") == []


def test_a_non_loopback_listen_without_tls_refuses_to_start(tmp_path: Path) -> None:
    cfg = tmp_path / "scout.toml"
    cfg.write_text('listen = "0.0.0.0:0"\n')
    done = server_exits("--config", str(cfg))
    assert done.returncode == 2
    assert b"allow_plaintext" in done.stderr and b"[tls]" in done.stderr


# ---- identity and policy ---------------------------------------------------------------


async def test_the_policy_matrix(guarded: Served) -> None:
    async with guarded.channel() as channel:
        refusals: list[tuple[str | None, dict[str, Any], str, str]] = [
            (None, {"command": "true"}, "UNAUTHENTICATED", "needs an identity"),
            ("wrong", {"command": "true"}, "UNAUTHENTICATED", "not one scout"),
            (BOT_TOKEN, {"host": "db1", "argv": ["true"]}, "PERMISSION_DENIED", "hosts: web*"),
            (BOT_TOKEN, {"argv": ["rm", "-rf", "/"]}, "PERMISSION_DENIED", "commands: echo *"),
            (BOT_TOKEN, {"argv": ["echo", "a", "b"]}, "PERMISSION_DENIED", "commands:"),
            (BOT_TOKEN, {"host": "nowhere", "argv": ["true"]}, "PERMISSION_DENIED", "hosts:"),
            (OPS_TOKEN, {"host": "nowhere", "command": "true"}, "NOT_FOUND", "not in the"),
            # a restricted caller sends argv, never a shell line
            (BOT_TOKEN, {"command": "echo x"}, "PERMISSION_DENIED", "may send only argv"),
            (BOT_TOKEN, {"command": "true"}, "PERMISSION_DENIED", "as argv"),
            # its env: the names it lists, never a shell's or the loader's start-up names
            (BOT_TOKEN, {"argv": ["true"], "env": {"OTHER": "1"}}, "PERMISSION_DENIED", "env:"),
            (BOT_TOKEN, {"argv": ["true"], "env": {"BASH_ENV": "/x"}}, "PERMISSION_DENIED",
             "BASH_ENV: it changes how a shell starts"),
            (BOT_TOKEN, {"argv": ["true"], "env": {"LD_PRELOAD": "/x.so"}}, "PERMISSION_DENIED",
             "dynamic loader"),
            (READER_TOKEN, {"argv": ["cat"], "env": {"PATH": "/tmp"}}, "PERMISSION_DENIED",
             "which program"),
            # its working_dir: the globs it lists
            (BOT_TOKEN, {"argv": ["true"], "working_dir": "/etc"}, "PERMISSION_DENIED",
             "working_dirs: /tmp, /srv/*"),
            (BOT_TOKEN, {"argv": ["true"], "working_dir": "/srv/../etc"}, "PERMISSION_DENIED",
             "`..`"),
            (READER_TOKEN, {"argv": ["cat"], "working_dir": "/tmp"}, "PERMISSION_DENIED",
             "working_dirs: none"),
            # anyone: exactly one of command and argv
            (OPS_TOKEN, {"command": "true", "argv": ["true"]}, "INVALID_ARGUMENT", "not both"),
            (OPS_TOKEN, {}, "INVALID_ARGUMENT", "command or argv"),
        ]  # fmt: skip
        for token, asked, code, says in refusals:
            fields = {"host": "web1", **asked}
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await execute(channel, token, **fields)
            assert info.value.code().name == code, (token, fields)
            assert says in (info.value.details() or ""), info.value.details()
            assert started(info.value) == "false"
        r = await execute(channel, BOT_TOKEN, host="web1", argv=["echo", "allowed"])
        assert r.stdout == b"allowed\n"
        r = await execute(channel, BOT_TOKEN, host="web1", argv=["echo", "$(id); x"])
        assert r.stdout == b"$(id); x\n"  # one argument, never a shell line
        r = await execute(
            channel,
            BOT_TOKEN,
            host="web1",
            argv=["echo", "in"],
            env={"SECRET": "s"},
            working_dir="/tmp",
        )
        assert r.stdout == b"in\n"
        r = await execute(channel, OPS_TOKEN, host="db1", command="uname")
        assert r.exit_code == 0
        r = await execute(channel, OPS_TOKEN, host="db1", argv=["printf", "%s|", "a b", "c"])
        assert r.stdout == b"a b|c|"  # an unrestricted caller may send either

        stub = exec_pb2_grpc.ExecServiceStub(channel)
        start_msg = exec_pb2.StreamRequest(
            start=exec_pb2.ExecuteRequest(host="web1", argv=["echo", "s"], close_stdin=True)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Stream(iter([start_msg]), metadata=bearer(BOT_TOKEN)):
                pass
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "stream = false" in (info.value.details() or "")
        out = [m async for m in stub.Stream(iter([start_msg]), metadata=bearer(OPS_TOKEN))]
        assert out[0].stdout == b"s\n" and out[-1].exit.exit_code == 0
        await _a_restricted_stream(stub)

        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest())  # no credentials at all
        assert status.status == health_pb2.HealthCheckResponse.SERVING

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in reflect.ServerReflectionInfo(iter([ask])):
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = [
            a async for a in reflect.ServerReflectionInfo(iter([ask]), metadata=bearer(OPS_TOKEN))
        ]
        names = {s.name for s in answers[0].list_services_response.service}
        assert "scout.v1.ExecService" in names


async def _a_restricted_stream(stub: Any) -> None:
    """Stream holds a restricted caller to the same argv and env policy as Execute."""

    def start(**fields: Any) -> list[exec_pb2.StreamRequest]:
        request = exec_pb2.ExecuteRequest(host="web1", **fields)
        return [exec_pb2.StreamRequest(start=request), exec_pb2.StreamRequest(stdin=b"in\n")]

    for fields, says in (
        ({"command": "cat"}, "may send only argv"),
        ({"argv": ["cat", "/etc/passwd"]}, "commands: cat, printenv LANG"),
        ({"argv": ["cat"], "env": {"BASH_ENV": "/x"}}, "BASH_ENV"),
        ({"argv": ["cat"], "env": {"TZ": "UTC"}}, "env: LANG"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Stream(iter(start(**fields)), metadata=bearer(READER_TOKEN)):
                pass
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, fields
        assert says in (info.value.details() or ""), info.value.details()
    messages = [*start(argv=["cat"]), exec_pb2.StreamRequest(close_stdin=True)]
    out = [m async for m in stub.Stream(iter(messages), metadata=bearer(READER_TOKEN))]
    assert b"".join(m.stdout for m in out) == b"in\n" and out[-1].exit.exit_code == 0
    messages = start(argv=["printenv", "LANG"], env={"LANG": "C.UTF-8"}, close_stdin=True)[:1]
    out = [m async for m in stub.Stream(iter(messages), metadata=bearer(READER_TOKEN))]
    assert b"".join(m.stdout for m in out) == b"C.UTF-8\n"


async def test_execute_many_holds_a_restricted_caller_to_argv_and_its_env(
    guarded: Served, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER"
    async with guarded.channel() as channel:
        stub = exec_pb2_grpc.ExecServiceStub(channel)

        async def many(**fields: Any) -> list[exec_pb2.ExecuteManyResponse]:
            request = exec_pb2.ExecuteManyRequest(
                hosts=["web1"], request=exec_pb2.ExecuteRequest(**fields)
            )
            return [m async for m in stub.ExecuteMany(request, metadata=bearer(BOT_TOKEN))]

        for fields, says in (
            ({"command": f"echo x; touch {marker}"}, "may send only argv"),
            ({"argv": ["sh", "-c", f"touch {marker}"]}, "commands:"),
            ({"argv": ["echo", "x"], "env": {"BASH_ENV": str(marker)}}, "BASH_ENV"),
            ({"argv": ["echo", "x"], "env": {"LANG": "C"}}, "env: SECRET, BASH_ENV"),
            ({"argv": ["echo", "x"], "working_dir": "/"}, "working_dirs:"),
        ):
            (message,) = await many(**fields)
            assert message.WhichOneof("event") == "error", fields
            assert message.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
            assert says in message.error.message and not message.started
        (message,) = await many(argv=["echo", f"x; touch {marker}"], env={"SECRET": "1"})
        assert message.result.stdout == f"x; touch {marker}\n".encode()
    assert not marker.exists()


async def test_a_caller_beyond_its_max_in_flight_is_refused_at_once(guarded: Served) -> None:
    async with guarded.channel() as channel:
        calls = [
            asyncio.ensure_future(execute(channel, BOT_TOKEN, host="web1", argv=["sleep", "1"]))
            for _ in range(3)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(refused) == 1 and refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_in_flight" in (refused[0].details() or "")
        r = await execute(channel, OPS_TOKEN, host="web1", command="true")  # others unaffected
        assert r.exit_code == 0


# ---- audit -----------------------------------------------------------------------------


async def test_every_outcome_leaves_one_audit_line_and_no_token_anywhere(
    guarded: Served, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    async with guarded.channel() as channel:
        await execute(channel, BOT_TOKEN, host="web1", argv=["echo", "ok"], env={"SECRET": "v4lue"})
        await execute(channel, BOT_TOKEN, host="web1", argv=["exit", "3"], working_dir="/tmp")
        for token, fields in (
            ("wrong-" + BOT_TOKEN, {"host": "web1", "command": "true"}),
            (BOT_TOKEN, {"host": "db1", "argv": ["true"]}),
            (BOT_TOKEN, {"host": "web1", "argv": ["sleep", "5"], "timeout": {"seconds": 1}}),
            (None, {"host": "web1", "command": "true"}),
            (BOT_TOKEN, {"host": "web1", "argv": ["rm", "-rf", "/"]}),
            (OPS_TOKEN, {"host": "nowhere", "command": "true"}),
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await execute(channel, token, **fields)
        start_msg = exec_pb2.StreamRequest(
            start=exec_pb2.ExecuteRequest(host="web1", command="echo s", close_stdin=True)
        )
        with pytest.raises(grpc.aio.AioRpcError):  # deploy-bot may not Stream
            stub = exec_pb2_grpc.ExecServiceStub(channel)
            async for _ in stub.Stream(iter([start_msg]), metadata=bearer(BOT_TOKEN)):
                pass
        cancelled = asyncio.ensure_future(
            execute(channel, OPS_TOKEN, host="web1", command="sleep 5")
        )
        await asyncio.sleep(0.5)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
    await asyncio.sleep(0.3)
    lines = audit_lines(guarded)
    text = Path(guarded.app.config.audit.file).read_text()  # noqa: ASYNC240 - a small file
    assert [(x["caller"], x["code"]) for x in lines] == [
        ("deploy-bot", "OK"),
        ("deploy-bot", "OK"),
        ("-", "UNAUTHENTICATED"),
        ("deploy-bot", "PERMISSION_DENIED"),
        ("deploy-bot", "DEADLINE_EXCEEDED"),
        ("-", "UNAUTHENTICATED"),
        ("deploy-bot", "PERMISSION_DENIED"),
        ("ops", "NOT_FOUND"),
        ("deploy-bot", "PERMISSION_DENIED"),
        ("ops", "CANCELLED"),
    ]
    ok, nonzero, unauth, denied, timeout, anonymous, command, missing, stream, cancel = lines
    assert set(ok) == {
        "time", "request_id", "caller", "method", "host", "command", "argv", "working_dir",
        "env_names", "exit_code", "signal", "bytes_out", "duration", "code", "started", "peer",
    }  # fmt: skip
    assert (ok["method"], ok["host"], ok["command"]) == ("Execute", "web1", "")
    assert ok["argv"] == ["echo", "ok"]
    assert ok["env_names"] == ["SECRET"] and ok["exit_code"] == 0 and ok["bytes_out"] == 3
    assert ok["peer"].startswith("ipv4:127.0.0.1:")
    assert (nonzero["exit_code"], nonzero["working_dir"]) == (3, "/tmp")
    assert unauth["host"] == "web1" and unauth["exit_code"] is None
    assert denied["host"] == "db1" and denied["exit_code"] is None
    assert timeout["signal"] in ("TERM", "") and 0.9 < timeout["duration"] < 4
    assert (anonymous["host"], anonymous["command"]) == ("web1", "true")
    assert (command["argv"], command["exit_code"]) == (["rm", "-rf", "/"], None)
    assert (anonymous["argv"], unauth["argv"]) == ([], [])  # a shell command: no argv
    assert (missing["host"], missing["exit_code"]) == ("nowhere", None)
    assert (stream["method"], stream["host"], stream["command"]) == ("Stream", "web1", "echo s")
    assert cancel["command"] == "sleep 5"
    assert [x["started"] for x in lines] == [
        True, True, False, False, True, False, False, False, False, True,
    ]  # fmt: skip
    everything = text + caplog.text
    for secret in (BOT_TOKEN, OPS_TOKEN, "v4lue"):
        assert secret not in everything


async def test_log_commands_false_keeps_only_the_commands_hash(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    audit = AuditSettings(file=str(tmp_path / "a.jsonl"), log_commands=False)
    served = await serving(dataclasses.replace(config(inventory(shell_server)), audit=audit))
    try:
        async with served.channel() as channel:
            await execute(channel, None, host="web1", command="echo private")
            await execute(channel, None, host="web1", argv=["echo", "private"])
    finally:
        await served.app.stop(grace=0.5)
    line, by_argv = audit_lines(served)
    for each in (line, by_argv):
        assert "command" not in each and "argv" not in each and "private" not in json.dumps(each)
    assert line["command_sha256"] == hash_token("echo private")
    assert by_argv["command_sha256"] == hash_token("'echo' 'private'")  # the line sent


async def test_an_unwritable_audit_log_fails_closed(
    shell_server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditSettings(file="/dev/full")  # every write: ENOSPC, as on a full disk
    served = await serving(dataclasses.replace(config(inventory(shell_server)), audit=audit))
    try:
        async with served.channel() as channel:
            r = await execute(channel, None, host="web1", command="echo first")
            assert r.stdout == b"first\n"  # it ran; its line could not be written...
            assert "audit line not written" in caplog.text  # ...so it went to the log
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await execute(channel, None, host="web1", command="echo second")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "audit log /dev/full cannot be written" in (info.value.details() or "")
            assert started(info.value) == "false"
    finally:
        await served.app.stop(grace=0.5)


# ---- the SSH side ----------------------------------------------------------------------


async def test_insecure_accept_any_host_key_is_explicit_and_loud(
    shell_server: ScriptedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = dataclasses.replace(shell_server.host_config("lab"), known_hosts=empty)
    served = await serving(config({"lab": host}))
    try:
        async with served.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await execute(channel, None, host="lab", command="true")
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await served.app.stop(grace=0.5)
    caplog.set_level(logging.WARNING)
    unsafe = dataclasses.replace(host, insecure_accept_any_host_key=True)
    served = await serving(config({"lab": unsafe}))
    try:
        assert "hosts.lab: insecure_accept_any_host_key = true" in caplog.text
        async with served.channel() as channel:
            r = await execute(channel, None, host="lab", command="echo trusted anyway")
            assert r.stdout == b"trusted anyway\n"
    finally:
        await served.app.stop(grace=0.5)


def test_hash_token_prints_the_hash_the_config_wants() -> None:
    done = server_exits("hash-token", stdin=b"s3cret\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == [hash_token("s3cret")]
    assert b"s3cret" not in done.stdout + done.stderr


async def test_a_refused_stream_is_heard_as_its_refusal_while_the_caller_still_writes(
    guarded: Served,
) -> None:
    """A Stream refused before anything ran reads what its caller still sends first: a
    grpc-python caller still writing when the status comes hears INTERNAL ("Failed
    execute_batch") instead (about one call in eight before rpc.drain)."""
    start = exec_pb2.ExecuteRequest(host="web1", argv=["cat"], env={"BASH_ENV": "/x"})
    messages = [exec_pb2.StreamRequest(start=start)]
    messages += [exec_pb2.StreamRequest(stdin=b"in\n")] * 3
    async with guarded.channel() as channel:
        stub = exec_pb2_grpc.ExecServiceStub(channel)
        for token, code in [(READER_TOKEN, "PERMISSION_DENIED"), ("", "UNAUTHENTICATED")] * 20:
            metadata = bearer(token) if token else ()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.Stream(iter(messages), metadata=metadata):
                    pass
            assert info.value.code().name == code, info.value.details()
