"""may_have_run is False when the request was never sent (client/reach.py), and True when
the server went away while the command ran.

Each case is a real connection on loopback: a refused port, a name DNS cannot resolve,
TLS to a plaintext server and the reverse, a CA that did not sign the server's
certificate; and a real `scout-server --demo` killed while its command sleeps.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import TLS, Client, Stdout, Unavailable, Unreachable
from client.reach import cause_of
from testkit.certs import PKI
from testkit.ports import free_port

from .fakeexec import FakeExec
from .serverproc import start_server

pytestmark = pytest.mark.timeout(30)


async def unreachable(client: Client, method: str) -> Unreachable:
    """Run one call of every kind and return what it raised, checking it is Unreachable."""
    async with client:
        with pytest.raises(Unreachable) as info:
            if method == "execute":
                await client.execute("web1", "exit-now 0", timeout=5)
            elif method == "stream":
                async with client.stream("web1", "exit-now 0", close_stdin=True) as call:
                    [_ async for _ in call]
            elif method == "execute_many":
                async with client.execute_many(["web1", "web2"], "exit-now 0") as events:
                    [_ async for _ in events]
            else:
                await client.health()
    err = info.value
    assert isinstance(err, Unavailable)
    assert not err.may_have_run
    assert err.target == client.target
    return err


METHODS = ["execute", "stream", "execute_many", "health"]


@pytest.mark.parametrize("method", METHODS)
async def test_a_refused_port_ran_nothing(method: str) -> None:
    target = f"127.0.0.1:{free_port()}"
    err = await unreachable(Client(target), method)
    assert err.cause == "refused"
    assert str(err).startswith(f"cannot reach scout at {target}: ")


async def test_a_name_that_does_not_resolve_ran_nothing() -> None:
    err = await unreachable(Client("scout.invalid:50051"), "execute")
    assert err.cause == "dns"


# (the server speaks TLS, the CA the client trusts: None for plaintext) -> the cause
TLS_MISMATCHES = {
    (True, None): "plaintext-to-tls",
    (False, "ca"): "tls-to-plaintext",
    (True, "other_ca"): "untrusted",
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", TLS_MISMATCHES, ids=TLS_MISMATCHES.values())
async def test_a_tls_mismatch_ran_nothing(
    fake: tuple[FakeExec, str],
    tls_fake: tuple[FakeExec, str],
    pki: PKI,
    case: tuple[bool, str | None],
    method: str,
) -> None:
    server_tls, ca = case
    servicer, target = tls_fake if server_tls else fake
    tls = None if ca is None else TLS(ca_file=getattr(pki, ca).bundle)
    err = await unreachable(Client(target, tls=tls), method)
    assert err.cause == TLS_MISMATCHES[case]
    assert servicer.seen.requests == []


async def test_split_fan_out_to_no_server_is_unreachable_as_a_whole() -> None:
    target = f"127.0.0.1:{free_port()}"
    client = Client(target, split_fan_out=True)
    async with client, client.execute_many(["web1", "web2"], "exit-now 0") as events:
        with pytest.raises(Unreachable) as info:
            [event async for event in events]
    assert (info.value.cause, info.value.may_have_run) == ("refused", False)


async def test_no_connection_in_time_ran_nothing() -> None:
    # A listening socket that never accepts: the TCP connect completes in the backlog,
    # the TLS handshake never does.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        client = Client(target, tls=TLS(), connect_timeout=0.5)
        err = await unreachable(client, "execute")
    assert err.cause == "timeout"
    assert str(err) == f"no connection to scout at {target} within 0.5s"


def test_causes_from_grpc_words() -> None:
    assert cause_of("ipv4:127.0.0.1:1: Socket closed", tls=False) == "plaintext-to-tls"
    assert cause_of("ipv4:127.0.0.1:1: Socket closed", tls=True) == "other"
    assert cause_of("Tls handshake failed: WRONG_VERSION_NUMBER", tls=True) == "tls-to-plaintext"
    assert cause_of("something new", tls=True) == "other"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[object, str]]:
    proc, target = start_server(["--demo"], tmp_path / "demo.log")
    try:
        yield proc, target
    finally:
        proc.kill()
        proc.wait(timeout=20)


async def test_a_server_killed_mid_command_may_have_run(demo: tuple[object, str]) -> None:
    proc, target = demo
    async with Client(target) as client:
        with pytest.raises(Unavailable) as info:
            async with client.stream("local", "echo started; sleep 20", close_stdin=True) as call:
                async for event in call:
                    assert isinstance(event, Stdout)  # the command is running
                    proc.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
    assert not isinstance(info.value, Unreachable)
    assert info.value.may_have_run
    await asyncio.to_thread(proc.wait, 10)  # type: ignore[attr-defined]  # gone for sure
    async with Client(target) as client:  # the server is gone now: nothing is sent
        with pytest.raises(Unreachable):
            await client.execute("local", "true")
