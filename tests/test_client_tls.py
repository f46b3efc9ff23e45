"""Credentials: TLS and mutual TLS with real certificates, and the bearer token.

The certificates are made here with `cryptography` (a CA, a server certificate
for 127.0.0.1 and localhost, client certificates), and a real grpc.aio server
on 127.0.0.1:0 serves the scripted fake with grpc.ssl_server_credentials.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client import TLS, Client, NotAllowed, ScoutError, Stdout, SyncClient, Unavailable
from client.cli import amain
from testkit.certs import PKI

from .fakeexec import FakeExec, serving, tls_credentials

pytestmark = pytest.mark.timeout(20)
TOKEN = "s3cr3t-T0ken-9f86d081884c7d659a2feaa0c55ad015"


@pytest.fixture
async def mtls_fake(pki: PKI) -> AsyncIterator[tuple[FakeExec, str]]:
    servicer = FakeExec()
    async with serving(servicer, tls_credentials(pki, mutual=True)) as target:
        yield servicer, target


# ---- TLS ---------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_tls_with_the_right_ca(pki: PKI, tls_fake: tuple[FakeExec, str], host: str) -> None:
    target = tls_fake[1].replace("127.0.0.1", host)
    async with Client(target, tls=TLS(ca_file=pki.ca.bundle)) as client:
        result = await client.execute("web1", "echo", stdin=b"over tls")
        assert await client.health() == "SERVING"
    assert result.stdout == b"over tls"
    assert tls_fake[0].seen.hosts == ["web1"]


async def test_tls_with_the_wrong_ca_fails(pki: PKI, tls_fake: tuple[FakeExec, str]) -> None:
    async with Client(tls_fake[1], tls=TLS(ca_file=pki.other_ca.bundle)) as client:
        with pytest.raises(Unavailable):
            await client.execute("web1", "echo", rpc_timeout=5)
    assert tls_fake[0].seen.requests == []  # the handshake failed: nothing reached the server


async def test_plaintext_to_a_tls_port_fails(tls_fake: tuple[FakeExec, str]) -> None:
    async with Client(tls_fake[1]) as client:
        with pytest.raises(Unavailable):
            await client.execute("web1", "echo", rpc_timeout=5)
    assert tls_fake[0].seen.requests == []


# ---- mutual TLS --------------------------------------------------------------


async def test_mtls_presents_the_client_certificate(
    pki: PKI, mtls_fake: tuple[FakeExec, str]
) -> None:
    tls = TLS(ca_file=pki.ca.bundle, cert_file=pki.client.cert, key_file=pki.client.key)
    async with (
        Client(mtls_fake[1], tls=tls) as client,
        client.stream("web1", "cat", stdin=b"x", close_stdin=True) as call,
    ):
        events = [event async for event in call]
    assert events[0] == Stdout(b"x")
    assert mtls_fake[0].seen.peer_names == [[b"deploy-bot"]]


@pytest.mark.parametrize("who", ["nobody", "stranger"])
async def test_mtls_refuses_a_missing_or_foreign_certificate(
    pki: PKI, mtls_fake: tuple[FakeExec, str], who: str
) -> None:
    if who == "nobody":
        tls = TLS(ca_file=pki.ca.bundle)
    else:
        tls = TLS(ca_file=pki.ca.bundle, cert_file=pki.stranger.cert, key_file=pki.stranger.key)
    async with Client(mtls_fake[1], tls=tls) as client:
        with pytest.raises(Unavailable):
            await client.execute("web1", "echo", rpc_timeout=5)
    assert mtls_fake[0].seen.requests == []


def test_tls_files_are_checked_when_the_client_is_made(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        TLS(cert_file=pki.client.cert)
    with pytest.raises(FileNotFoundError):
        Client("127.0.0.1:1", tls=TLS(ca_file=tmp_path / "missing.pem"))


async def test_the_command_line_speaks_mtls(pki: PKI, mtls_fake: tuple[FakeExec, str]) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    argv = ["exec", "web1", "--target", mtls_fake[1], "--ca", str(pki.ca.bundle)]
    argv += ["--cert", str(pki.client.cert), "--key", str(pki.client.key), "--", "exit-now 4"]
    assert await amain(argv, stdin=None, stdout=out, stderr=err) == 4, err.getvalue()
    assert mtls_fake[0].seen.peer_names == [[b"deploy-bot"]]


# ---- the bearer token --------------------------------------------------------


async def test_token_travels_on_every_call_over_plaintext_too() -> None:
    servicer = FakeExec()
    async with serving(servicer) as target, Client(target, token=TOKEN) as client:
        await client.execute("web1", "echo")
        async with client.stream("web2", "exit-now 0") as call:
            assert [event async for event in call]
    assert [m["authorization"] for m in servicer.seen.metadata] == [f"Bearer {TOKEN}"] * 2
    assert servicer.seen.hosts == ["web1", "web2"]  # the routing header stays


async def test_token_over_tls_and_sync(pki: PKI, tls_fake: tuple[FakeExec, str]) -> None:
    def call() -> None:
        with SyncClient(tls_fake[1], token=TOKEN, tls=TLS(ca_file=pki.ca.bundle)) as client:
            client.execute("web1", "echo")

    await asyncio.to_thread(call)
    assert tls_fake[0].seen.metadata[0]["authorization"] == f"Bearer {TOKEN}"


def test_a_token_grpc_cannot_carry_is_refused_without_showing_it() -> None:
    for bad in ("", "with space", "new\nline", "tökén"):
        with pytest.raises(ValueError, match="printable ASCII") as info:
            Client("127.0.0.1:1", token=bad)
        if bad:
            assert bad not in str(info.value)


async def test_the_token_appears_in_no_repr_error_or_log(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    servicer = FakeExec()
    async with serving(servicer) as target:
        client = Client(target, token=TOKEN)
        seen.append(repr(client))
        for command in ("fail UNAUTHENTICATED who are you", "fail INTERNAL boom"):
            with pytest.raises(ScoutError) as info:
                await client.execute("web1", command)
            seen += [str(info.value), repr(info.value), repr(info.value.__cause__)]
        with pytest.raises(NotAllowed):
            async with client.stream("web1", "fail PERMISSION_DENIED not you") as call:
                await anext(call)
        seen.append(repr(call))
        await client.close()
        seen.append(repr(client))

        # the command line, from the environment and from a file, failing and succeeding
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        monkeypatch.setenv("SCOUT_TOKEN", TOKEN)
        for argv in (
            ["exec", "--target", target, "web1", "--", "fail UNAUTHENTICATED no"],
            ["exec", "--target", target, "--token-file", str(token_file), "web1", "--", "x"],
            ["health", "--target", target, "--token-file", str(token_file)],
        ):
            out, err = io.BytesIO(), io.BytesIO()
            await amain(argv, stdin=None, stdout=out, stderr=err)
            seen += [out.getvalue().decode(), err.getvalue().decode()]
    assert [m["authorization"] for m in servicer.seen.metadata] == [f"Bearer {TOKEN}"] * 5
    captured = capfd.readouterr()
    seen += [captured.out, captured.err, caplog.text]
    assert any("UNAUTHENTICATED" in text or "who are you" in text for text in seen)
    assert not [text for text in seen if TOKEN in text or TOKEN[:8] in text]
