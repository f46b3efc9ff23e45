"""Who is calling, and what they may do: bearer tokens, client certificates, per-caller policy.

With no `[[callers]]` configured, scout is open (the loopback default; off loopback,
`config.check_exposure` demands callers, mTLS or an explicit `allow_anonymous`). Once any
caller is configured, every call must carry an identity, deny by default:

- a bearer token (`authorization: Bearer <token>`), stored only as its SHA-256 and
  compared in constant time against every caller's hash, never logged or echoed;
- and/or the mTLS client certificate's common name (the TLS handshake has already
  checked it against `[tls] client_ca_file`). A caller with both configured must show
  both; a token and a certificate naming two different callers is refused.

Then the caller's policy: `hosts` are glob patterns (fnmatch, case sensitive) over the
inventory name; `stream` allows Stream. A caller with `commands` is restricted: it may
send only argv, and only argv its patterns allow (server.argvpolicy), never with a pty
(a pager on a terminal runs a shell on `!`), only the `env`
names it lists (never one that changes how a shell or the loader starts) and only a
`working_dir` its `working_dirs` globs allow. On a caller without `commands`, `env` and
`working_dirs` hold when set. The host is checked before the inventory is looked at, so
a caller cannot probe for names it may not use. A refusal names the rule that refused
it, and quotes what the caller sent only briefly. The order is host, then what runs,
then the method, so that "may not use Stream" is the real and only reason.

Files (Upload, Download, UploadMany): `files` says whether the caller may read, write or
both ("none" by default), `paths` which files (server.pathpolicy: globs over the
normalised path, checked again on the host's real path by server.files). The anonymous
caller of an open server may read and write everything, as it may run anything.

A call one worker forwards to another (server.forwarding) proves nothing itself: the
worker that received it authenticated it, and the owner takes the caller's name from it
(`Gate.named`), once the forwarding server has checked the supervisor's secret.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import shlex
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc

from scout.v1 import exec_pb2

from .argvpolicy import argv_matches, startup_reason
from .config import CallerConfig
from .errors import (
    InvalidRequest,
    PermissionDenied,
    PoolExhausted,
    ScoutError,
    Unauthenticated,
    brief,
)
from .live import LiveConfig
from .pathpolicy import PathError, allowed, normalise

# An open server (no [[callers]]) lets anyone who reaches it run any command, so it lets
# them read and write any file too: a file policy narrower than that would guard nothing.
ANONYMOUS = CallerConfig(
    name="-",
    hosts=("*",),
    stream=True,
    max_in_flight=1 << 30,
    files="read-write",
    paths=("/**",),
)


@dataclass(frozen=True)
class Forwarded:
    """A call another worker of the same supervisor authenticated and forwarded here
    (server.forwarding): who called, and the request id it has there."""

    caller: str
    request_id: str


# Set by the forwarding server around a forwarded call, after it checked the secret;
# server.rpc then takes the caller from it instead of from the call's credentials.
forwarded: ContextVar[Forwarded | None] = ContextVar("forwarded", default=None)


def hash_token(token: str) -> str:
    """The SHA-256 hex of a token: what `[[callers]] token_sha256` holds."""
    return hashlib.sha256(token.encode()).hexdigest()


def _bearer(metadata: Sequence[Any] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header, if any."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _common_name(auth_context: dict[str, list[bytes]] | None) -> str | None:
    """The verified client certificate's CN, when the call came over mutual TLS."""
    names = (auth_context or {}).get("x509_common_name") or []
    return names[0].decode(errors="replace") if names else None


@dataclass
class Gate:
    """Authentication, policy and each caller's calls in flight.

    The callers are read from the config in force at each call: a reload that removes a
    caller refuses its next call, one that changes a policy applies it from the next
    call; calls in flight keep the CallerConfig they were admitted with, except that an
    ExecuteMany asks `current()` before each host it starts.
    """

    live: LiveConfig
    in_flight: dict[str, int] = field(default_factory=dict)

    @property
    def callers(self) -> tuple[CallerConfig, ...]:
        """The callers of the config in force."""
        return self.live.current.callers

    @property
    def open(self) -> bool:
        """No callers configured: everyone is the anonymous caller."""
        return not self.callers

    def authenticate(
        self, metadata: Sequence[Any] | None, auth_context: dict[str, list[bytes]] | None
    ) -> CallerConfig:
        """The caller this call proves to be, or Unauthenticated."""
        if self.open:
            return ANONYMOUS
        token = _bearer(metadata)
        by_token = None
        if token is not None:
            digest = hash_token(token)
            for caller in self.callers:  # every hash, every time: no early exit to time
                if caller.token_sha256 and hmac.compare_digest(digest, caller.token_sha256):
                    by_token = caller
        common_name = _common_name(auth_context)
        by_cert = None
        if common_name is not None:
            by_cert = next((c for c in self.callers if c.cert_common_name == common_name), None)
        if token is not None and by_token is None:
            raise Unauthenticated("the bearer token is not one scout knows")
        if by_token and by_cert and by_token is not by_cert:
            raise Unauthenticated("the bearer token and the client certificate name two callers")
        found = by_token or by_cert
        if found is None:
            if common_name is not None:
                raise Unauthenticated(
                    f"the client certificate's name {brief(common_name)} is not a caller's"
                )
            raise Unauthenticated(
                "this server needs an identity: send `authorization: Bearer <token>`"
                + (
                    " or a client certificate"
                    if any(c.cert_common_name for c in self.callers)
                    else ""
                )
            )
        if found.token_sha256 and by_token is None:
            raise Unauthenticated(f"caller {found.name} must also send its bearer token")
        if found.cert_common_name and by_cert is None:
            raise Unauthenticated(f"caller {found.name} must also show its client certificate")
        return found

    def named(self, name: str) -> CallerConfig:
        """The caller of this name, for a call another worker authenticated (forwarded):
        Unauthenticated when the config in force here has no such caller."""
        if self.open:
            return ANONYMOUS
        for found in self.callers:
            if found.name == name:
                return found
        raise Unauthenticated(f"caller {brief(name)} is not configured in this worker")

    def current(self, caller: CallerConfig) -> CallerConfig:
        """caller as the config in force now has it (a reload may have narrowed it), for a
        command a call in flight is about to start; Unauthenticated when a reload removed
        it or changed its credentials. A fan-out asks before each host: its hosts not yet
        started are new commands, and a revoked caller starts none."""
        if self.open:
            return ANONYMOUS
        for found in self.callers:
            if (found.name, found.token_sha256, found.cert_common_name) == (
                caller.name,
                caller.token_sha256,
                caller.cert_common_name,
            ):
                return found
        if caller is ANONYMOUS:
            raise Unauthenticated(
                "a reload of the config added callers: this server now needs an identity, "
                "and no new command of this call starts"
            )
        raise Unauthenticated(
            f"caller {caller.name} was removed, or its credentials changed, by a reload of "
            "the config: no new command of this call starts"
        )

    def admit(self, caller: CallerConfig) -> None:
        """Count one more call of caller, or refuse it at once past its max_in_flight."""
        count = self.in_flight.get(caller.name, 0)
        if count >= caller.max_in_flight:
            raise PoolExhausted(
                f"caller {caller.name} is at its limit of {caller.max_in_flight} calls at once "
                "(max_in_flight); retry in a second"
            )
        self.in_flight[caller.name] = count + 1

    def release(self, caller: CallerConfig) -> None:
        """One call of caller ended."""
        self.in_flight[caller.name] -= 1

    def may_use(self, caller: CallerConfig, host: str) -> bool:
        """Whether caller's policy allows host (ListHosts shows only those)."""
        return caller is ANONYMOUS or any(fnmatch.fnmatchcase(host, p) for p in caller.hosts)

    def shown(self, caller: CallerConfig | None, exc: ScoutError) -> str:
        """exc's message for caller: without the names of hosts it may not use (a jump
        host's failure is told without naming the jump host; the server log has it)."""
        if caller is None or all(self.may_use(caller, name) for name in exc.mentions):
            return exc.message
        return (
            f"{exc.host}: through a jump host this caller may not use: it could not be "
            "reached (the server's log says more)"
        )

    def authorize(
        self, caller: CallerConfig, method: str, request: exec_pb2.ExecuteRequest
    ) -> None:
        """PermissionDenied unless caller's policy allows the method, the host, and what
        the request runs (command or argv), with its env and working_dir."""
        if caller is ANONYMOUS:
            return
        who = f"caller {caller.name}"
        host = request.host
        if not self.may_use(caller, host):
            rule = ", ".join(caller.hosts) if caller.hosts else "none"
            raise PermissionDenied(f"{who} may not run commands on {brief(host)} (hosts: {rule})")
        if caller.restricted:
            _check_argv(who, caller, request)
        _check_env(who, caller, request)
        _check_working_dir(who, caller, request.working_dir)
        # Last, so that a refusal names a forbidden host or command first, and "may not
        # use Stream" means that Execute would be allowed (the CLI then falls back to it).
        if method == "Stream" and not caller.stream:
            raise PermissionDenied(f"{who} may not use Stream (its policy has stream = false)")

    def authorize_file(self, caller: CallerConfig, host: str, path: str, direction: str) -> str:
        """The normalised path, or PermissionDenied unless caller may `direction` ("read"
        or "write") files on host at that path. InvalidRequest for a path no policy can
        judge (relative, NUL or control characters)."""
        try:
            clean = normalise(path)
        except PathError as exc:
            raise InvalidRequest(str(exc)) from None
        if caller is ANONYMOUS:
            return clean
        who = f"caller {caller.name}"
        if not caller.may_files(direction):
            raise PermissionDenied(
                f"{who} may not {direction} files (its policy has files = {caller.files!r})"
            )
        if not self.may_use(caller, host):
            rule = ", ".join(caller.hosts) if caller.hosts else "none"
            raise PermissionDenied(f"{who} may not use host {brief(host)} (hosts: {rule})")
        self.check_path(caller, clean, direction, path)
        return clean

    def check_path(self, caller: CallerConfig, clean: str, direction: str, asked: str) -> None:
        """PermissionDenied unless `paths` allow clean; the message quotes only what the
        caller asked for (`asked`), never where the host resolved it."""
        if caller is ANONYMOUS or allowed(clean, caller.paths):
            return
        rule = ", ".join(caller.paths) if caller.paths else "none"
        how = "" if clean == asked else " (resolved, it is outside them)"
        raise PermissionDenied(
            f"caller {caller.name} may not {direction} {brief(asked)}{how} (paths: {rule})"
        )


def _check_argv(who: str, caller: CallerConfig, request: exec_pb2.ExecuteRequest) -> None:
    """A restricted caller sends argv, and argv its `commands` patterns allow."""
    rule = ", ".join(caller.commands or ()) or "none"
    if request.command or not request.argv:
        raise PermissionDenied(
            f"{who} may send only argv, not a shell command (commands: {rule}); send the "
            "program and its arguments as argv, one element each"
        )
    if not any(argv_matches(pattern, request.argv) for pattern in caller.commands or ()):
        shown = brief(shlex.join(request.argv[:32]))
        raise PermissionDenied(f"{who} may not run argv {shown} (commands: {rule})")
    if request.pty:
        raise PermissionDenied(
            f"{who} may not ask for a pty: on a terminal an allowed program turns "
            "interactive (a pager or an editor runs a shell on `!`), so no caller with "
            "commands gets one"
        )


def _check_env(who: str, caller: CallerConfig, request: exec_pb2.ExecuteRequest) -> None:
    """Only the `env` names the policy lists (for a restricted caller: none by default,
    and never a name that changes how a shell or the loader starts)."""
    if not request.env:
        return
    allowed = caller.env
    if allowed is None and not caller.restricted:
        return
    for name in request.env:
        reason = startup_reason(name) if caller.restricted else None
        if reason is not None:
            raise PermissionDenied(
                f"{who} may not set env {name}: {reason}, so no caller with commands may set it"
            )
        if name not in (allowed or ()):
            rule = ", ".join(allowed) if allowed else "none"
            raise PermissionDenied(f"{who} may not set env {brief(name)} (env: {rule})")


def _check_working_dir(who: str, caller: CallerConfig, working_dir: str) -> None:
    """Only a working_dir the `working_dirs` globs allow (for a restricted caller: none by
    default); `..` is refused there, since a glob cannot see where it leads."""
    if not working_dir:
        return
    allowed = caller.working_dirs
    if allowed is None and not caller.restricted:
        return
    rule = ", ".join(allowed) if allowed else "none"
    if ".." in working_dir.split("/"):
        raise PermissionDenied(
            f"{who} may not use a working_dir with `..` in it (working_dirs: {rule})"
        )
    if not any(fnmatch.fnmatchcase(working_dir, pattern) for pattern in allowed or ()):
        raise PermissionDenied(
            f"{who} may not run in working_dir {brief(working_dir)} (working_dirs: {rule})"
        )


class IdentityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Requires an identity for the services scout does not write itself (reflection), and
    is the door of max_concurrent_rpcs: at the limit, a one-message ExecService call gets
    server.rpc.door's refusal before grpc reads its request.

    ExecService authenticates in its own RPC loop (server.rpc), where the client
    certificate is visible; health stays open for probes. An interceptor sees only the
    metadata: under mutual TLS the handshake has already proved a certificate from the
    client CA, which is identity enough to read the schema; otherwise it needs a token.
    """

    def __init__(
        self, gate: Gate, *, mutual_tls: bool, door: Callable[[str], Any] = lambda _: None
    ) -> None:
        self._gate = gate
        self._mutual_tls = mutual_tls
        self._door = door

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        method: str = details.method
        if (refusal := self._door(method)) is not None:  # at max_concurrent_rpcs
            return refusal
        if self._gate.open or method.startswith(OWN_PREFIXES):
            return await continuation(details)
        try:
            self._gate.authenticate(details.invocation_metadata, None)
        except Unauthenticated as exc:
            if not self._mutual_tls or _bearer(details.invocation_metadata) is not None:
                return _refusal(exc.message)
        return await continuation(details)


OWN_PREFIXES = ("/scout.v1.", "/grpc.health.v1.")


def _refusal(message: str) -> Any:
    """A handler that answers UNAUTHENTICATED (reflection is a bidirectional stream)."""

    async def refuse(requests: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.stream_stream_rpc_method_handler(refuse)
