"""Is there a connection to scout before a request is sent? If not, nothing can have run.

Why a separate step: once grpc has failed a call with UNAVAILABLE, the status alone
cannot say whether the request left this process (a refused connect and a server
killed mid-command look the same), so the client had to say "may have run" for both.
Instead, before each call the client asks the channel's connectivity state, and waits
(bounded) while it is IDLE or CONNECTING:

    READY              a connection exists (TCP, the TLS handshake and the server's
                       HTTP/2 settings are done): send; a failure from here on may
                       have run, as before
    TRANSIENT_FAILURE  the last attempt to connect failed (refused, DNS, a TLS
                       handshake either way, a wrong CA): grpc would fail the call
                       without sending it, so it is not sent, and the error is
                       `Unreachable` with may_have_run False
    still connecting   after the bound: `Unreachable` ("timeout"), nothing sent

The decision rests on grpc's connectivity state machine, not on error text. Only the
words do: to name the cause, a health check (harmless if it does reach a server that
came up meanwhile; then the call goes ahead) returns grpc's last connect error, whose
text is sorted into a few causes for the CLI to word the fix (`cause_of`).
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .errors import Unreachable

__all__ = ["CAUSES", "cause_of", "ensure_ready"]

C = grpc.ChannelConnectivity
PROBE_TIMEOUT = 5.0  # seconds for the health check that fetches the reason

# grpc's words for a failed connect, in the order they are tried: (cause, any of).
CAUSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("refused", ("Connection refused",)),
    ("dns", ("DNS resolution failed", "errors resolving", "lookup error", "Domain name not")),
    ("tls-to-plaintext", ("WRONG_VERSION_NUMBER",)),
    ("untrusted", ("CERTIFICATE_VERIFY_FAILED",)),
    ("client-cert", ("CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE")),
    ("tls", ("Tls handshake failed", "Handshake failed", "SSL_ERROR")),
    ("plaintext-to-tls", ("Socket closed", "Connection reset")),
)


def cause_of(reason: str, *, tls: bool) -> str:
    """Sort grpc's connect error into a cause; "Socket closed" means TLS only on plaintext."""
    for cause, words in CAUSES:
        if any(word in reason for word in words):
            if cause == "plaintext-to-tls" and tls:
                return "other"
            return cause
    return "other"


async def _last_error(channel: grpc.aio.Channel) -> str | None:
    """grpc's last connect error, from a health check that it fails at once; None if the
    check got an answer (the channel connected meanwhile)."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            return str(err.details() or "")
    return None


async def ensure_ready(
    channel: grpc.aio.Channel, target: str, within: float | None, *, tls: bool, host: str = ""
) -> None:
    """Return once the channel has a connection; raise Unreachable when it has none.

    within bounds the wait for a connection in progress (None: grpc's own connect
    timeout); host is the call's, for the error. A closed channel (SHUTDOWN) is left
    to the call, which grpc refuses.
    """
    state = channel.get_state(try_to_connect=True)
    if state is C.READY:
        return
    try:
        async with asyncio.timeout(within):
            while state in (C.IDLE, C.CONNECTING):
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
    except TimeoutError:
        raise Unreachable(
            f"no connection to scout at {target} within {within:g}s",
            target=target,
            cause="timeout",
            host=host,
        ) from None
    if state is not C.TRANSIENT_FAILURE:
        return
    reason = await _last_error(channel)
    if reason is None:
        return
    raise Unreachable(
        f"cannot reach scout at {target}: {reason}",
        target=target,
        cause=cause_of(reason, tls=tls),
        host=host,
    )
