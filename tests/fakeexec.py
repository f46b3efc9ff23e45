"""A scripted fake ExecService for the client's tests (no SSH involved).

The fake's behaviour is chosen by the command string, as asyncssh's test
server chooses by user name, so each test states the server side it needs:

    fail CODE TEXT          abort with CODE and no x-scout-started mark (like a proxy)
    refuse CODE TEXT        abort with CODE marked x-scout-started: false (nothing ran)
    sleep SECS              Execute: wait, then answer as echo does
    killed                  Execute: answer "killed by TERM"
    hang                    Stream: send headers, then wait 30 s
    partial-then-abort      Stream: headers, some stdout, then ABORTED
    output-then-refuse      Stream: headers, some stdout, then a (wrong) "false" mark
    exit-now CODE [SIGNAL]  Stream: exit at once
    wait-signal             Stream: exit with the first signal received
    anything else           Execute: echo stdin, exit 3; Stream: cat

ListHosts and ExecuteMany work over a fixed inventory (INVENTORY: db1, web1,
web2, web3). Host entries are names or fnmatch globs; the fake's selector is
only "k=v,k=v" (anything else is INVALID_ARGUMENT, as a malformed selector is).
ExecuteMany plays one script per host, given as the command in JSON:
{"web1": [STEP, ...], "*": [STEP, ...]} ("*" for hosts not named); a command
that is not JSON runs ["stdout", "HOST\n"], ["exit", 0] everywhere. Steps:

    ["stdout", TEXT] ["stderr", TEXT]   output (a chunk with stream_output, else kept)
    ["after", HOST]                     wait until HOST's last message was sent
    ["sleep", SECS]
    ["exit", CODE] ["signal", NAME]     the host's result (the default end: exit 0)
    ["error", CODE, STARTED, TEXT]      the host's status, with the started flag
    ["abort", CODE, TEXT]               end the whole RPC with CODE, unmarked

A literal name not in the inventory gets NOT_FOUND (started false) with the
closest names, as scout says it; no target at all is NOT_FOUND for the RPC.

Run as `python -m tests.fakeexec`, it serves on 127.0.0.1:0, prints "port N",
then "started HOST" for every call it receives, so a test can kill it mid-call.
"""

from __future__ import annotations

import asyncio
import difflib
import fnmatch
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from scout.v1 import exec_pb2, exec_pb2_grpc
from testkit.certs import PKI

S = grpc.StatusCode
NOTHING_RAN = (("x-scout-started", "false"),)
DEFAULT_MAX_PARALLEL = 8


def _host(name: str, address: str, port: int, user: str, labels: str, *via: str) -> exec_pb2.Host:
    """One inventory entry; labels as "k=v,k=v"."""
    pairs = dict(pair.split("=") for pair in labels.split(","))
    return exec_pb2.Host(name=name, address=address, port=port, user=user, labels=pairs, via=via)


INVENTORY = [
    _host("db1", "10.0.0.5", 22, "postgres", "role=db,region=eu", "bastion"),
    _host("web1", "10.0.0.1", 22, "deploy", "role=web,region=eu"),
    _host("web2", "10.0.0.2", 2222, "deploy", "role=web,region=us"),
    _host(
        "web3",
        "web3.example.net",
        22,
        "deploy",
        "role=web,region=eu,canary=yes",
        "bastion",
        "admin@jump2:2200",
    ),
]
INVENTORY[0].connections_open = 1
INVENTORY[1].connections_open, INVENTORY[1].channels_in_use = 2, 1


@dataclass
class Seen:
    """What the fake server received, for the tests to assert on."""

    requests: list[exec_pb2.ExecuteRequest] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    peer_names: list[list[bytes]] = field(default_factory=list)
    time_remaining: list[float | None] = field(default_factory=list)
    stream_messages: list[exec_pb2.StreamRequest] = field(default_factory=list)
    many: list[exec_pb2.ExecuteManyRequest] = field(default_factory=list)
    listings: list[exec_pb2.ListHostsRequest] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class FakeExec(exec_pb2_grpc.ExecServiceServicer):
    """An ExecService whose behaviour is picked by the request's command."""

    def __init__(self, on_call: Callable[[str], None] | None = None) -> None:
        self.seen = Seen()
        self._on_call = on_call

    def _record(self, request: exec_pb2.ExecuteRequest, context: Any) -> None:
        metadata = {key: str(value) for key, value in context.invocation_metadata()}
        self.seen.requests.append(request)
        self.seen.metadata.append(metadata)
        self.seen.hosts.append(metadata.get("x-scout-host", ""))
        self.seen.peer_names.append(context.auth_context().get("x509_common_name", []))
        self.seen.time_remaining.append(context.time_remaining())
        self.seen.started.set()
        if self._on_call is not None:
            self._on_call(request.host)

    async def Execute(
        self, request: exec_pb2.ExecuteRequest, context: Any
    ) -> exec_pb2.ExecuteResponse:
        self._record(request, context)
        words = request.command.split(" ", 2)
        if words[0] == "fail":
            await context.abort(S[words[1]], words[2])
        if words[0] == "refuse":
            await context.abort(S[words[1]], words[2], trailing_metadata=NOTHING_RAN)
        if words[0] == "sleep":
            await asyncio.sleep(float(words[1]))
        if words[0] == "killed":
            return exec_pb2.ExecuteResponse(exit_code=-1, signal="TERM", core_dumped=True)
        response = exec_pb2.ExecuteResponse(
            stdout=request.stdin,
            stderr=b"\xffwarn",
            exit_code=3,
            stdout_bytes=len(request.stdin) + 100,
            stdout_truncated=True,
        )
        response.duration.FromMilliseconds(250)
        if request.text:
            response.stdout_text = request.stdin.decode(errors="replace")
            response.stderr_text = "\ufffdwarn"
        return response

    async def Stream(self, request_iterator: Any, context: Any) -> None:
        first = await context.read()
        self._record(first.start, context)
        words = first.start.command.split(" ", 2)
        try:
            await self._script(words, first.start, context)
        except asyncio.CancelledError:
            self.seen.cancelled.set()
            raise

    async def _script(self, words: list[str], start: exec_pb2.ExecuteRequest, context: Any) -> None:
        """Play one scripted stream; `cat` echoes stdin and reports signals and resizes."""
        if words[0] == "fail":  # before the command started: no response headers
            await context.abort(S[words[1]], words[2])
        if words[0] == "refuse":
            await context.abort(S[words[1]], words[2], trailing_metadata=NOTHING_RAN)
        await context.send_initial_metadata(())  # as scout: headers mean "started"
        if words[0] == "partial-then-abort":
            await context.write(exec_pb2.StreamResponse(stdout=b"partial"))
            await context.abort(S.ABORTED, "lost the connection to web1 after the command started")
        if words[0] == "output-then-refuse":
            await context.write(exec_pb2.StreamResponse(stdout=b"partial"))
            await context.abort(S.UNAVAILABLE, "a wrong mark", trailing_metadata=NOTHING_RAN)
        if words[0] == "hang":
            await asyncio.sleep(30)
        if words[0] == "exit-now":
            signal_name = words[2] if len(words) > 2 else ""
            await context.write(_exit(exit_code=int(words[1]), signal=signal_name))
            return
        if words[0] == "wait-signal":
            while (message := await context.read()) is not grpc.aio.EOF:
                self.seen.stream_messages.append(message)
                if message.WhichOneof("event") == "signal":
                    await context.write(exec_pb2.StreamResponse(stderr=b"got it\n"))
                    await context.write(_exit(exit_code=-1, signal=message.signal))
                    return
            await context.write(_exit(exit_code=0))
            return
        # cat: stdout echoes stdin, stderr narrates signals and resizes, EOF ends it
        # (close_stdin or a half-close).
        total = 0
        if start.stdin:
            total += len(start.stdin)
            await context.write(exec_pb2.StreamResponse(stdout=start.stdin))
        while not start.close_stdin and (message := await context.read()) is not grpc.aio.EOF:
            self.seen.stream_messages.append(message)
            kind = message.WhichOneof("event")
            if kind == "stdin":
                total += len(message.stdin)
                await context.write(exec_pb2.StreamResponse(stdout=message.stdin))
            elif kind == "signal":
                await context.write(
                    exec_pb2.StreamResponse(stderr=f"signal {message.signal}".encode())
                )
            elif kind == "resize":
                size = f"resize {message.resize.columns}x{message.resize.rows}"
                await context.write(exec_pb2.StreamResponse(stderr=size.encode()))
            elif kind == "close_stdin":
                break
        await context.write(_exit(exit_code=0, stdout_bytes=total))

    async def ListHosts(
        self, request: exec_pb2.ListHostsRequest, context: Any
    ) -> exec_pb2.ListHostsResponse:
        self._record(exec_pb2.ExecuteRequest(), context)
        self.seen.listings.append(request)
        labels = await _selector(request.selector, context)
        picked = [
            host
            for host in INVENTORY
            if (not request.hosts and not request.selector)
            or any(fnmatch.fnmatchcase(host.name, entry) for entry in request.hosts)
            or (labels is not None and _matches(host, labels))
        ]
        return exec_pb2.ListHostsResponse(hosts=picked)

    async def ExecuteMany(self, request: exec_pb2.ExecuteManyRequest, context: Any) -> None:
        self._record(request.request, context)
        self.seen.many.append(request)
        if request.request.host:
            await context.abort(
                S.INVALID_ARGUMENT, "request.host must be empty", trailing_metadata=NOTHING_RAN
            )
        labels = await _selector(request.selector, context)
        targets = _targets(request.hosts, labels)
        if not targets:
            await context.abort(
                S.NOT_FOUND, "no host matches the targets", trailing_metadata=NOTHING_RAN
            )
        plan = _plan(request.request.command)
        fan_out = _FanOut(request, context, targets)
        try:
            await fan_out.run(plan)
        except asyncio.CancelledError:
            self.seen.cancelled.set()
            raise


class _Abort(Exception):
    """A step ended the whole ExecuteMany RPC."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class _FanOut:
    """One scripted ExecuteMany: each host plays its steps, at most max_parallel at once."""

    def __init__(
        self, request: exec_pb2.ExecuteManyRequest, context: Any, targets: list[str]
    ) -> None:
        self.request = request
        self.context = context
        self.targets = targets
        self.finished = {host: asyncio.Event() for host in targets}
        self.slots = asyncio.Semaphore(request.max_parallel or DEFAULT_MAX_PARALLEL)
        self.write_lock = asyncio.Lock()

    async def run(self, plan: dict[str, list[list[Any]]]) -> None:
        tasks = [
            asyncio.create_task(self.host(name, plan.get(name, plan.get("*", []))))
            for name in self.targets
        ]
        try:
            await asyncio.gather(*tasks)
        except _Abort as abort:
            await self.context.abort(S[abort.code], abort.text)
        finally:
            for task in tasks:
                task.cancel()

    async def send(self, host: str, **event: Any) -> None:
        async with self.write_lock:
            await self.context.write(exec_pb2.ExecuteManyResponse(host=host, **event))

    async def host(self, name: str, steps: list[list[Any]]) -> None:
        try:
            if name not in {h.name for h in INVENTORY}:
                closest = difflib.get_close_matches(name, [h.name for h in INVENTORY], 2, 0.5)
                text = f"host {name!r} is not in the inventory"
                if closest:
                    text += f"; closest: {', '.join(closest)}"
                await self.send(name, error=_status("NOT_FOUND", text), started=False)
                return
            async with self.slots:
                await self.play(name, steps)
        finally:
            self.finished[name].set()

    async def play(self, name: str, steps: list[list[Any]]) -> None:
        kept = {"stdout": b"", "stderr": b""}
        counts = {"stdout": 0, "stderr": 0}
        for kind, *args in steps:
            if kind in ("stdout", "stderr"):
                data = args[0].encode()
                counts[kind] += len(data)
                if self.request.stream_output:
                    await self.send(name, output=exec_pb2.OutputChunk(**{kind: data}))
                else:
                    kept[kind] += data
            elif kind == "after":
                await self.finished[args[0]].wait()
            elif kind == "sleep":
                await asyncio.sleep(args[0])
            elif kind == "error":
                code, started, text = args
                await self.send(name, error=_status(code, text), started=started)
                return
            elif kind == "abort":
                raise _Abort(args[0], args[1])
            elif kind in ("exit", "signal"):
                break
        else:
            kind, args = "exit", [0]
        result = exec_pb2.ExecuteResponse(
            stdout=kept["stdout"],
            stderr=kept["stderr"],
            stdout_bytes=counts["stdout"],
            stderr_bytes=counts["stderr"],
            exit_code=args[0] if kind == "exit" else -1,
            signal=args[0] if kind == "signal" else "",
        )
        result.duration.FromMilliseconds(10)
        await self.send(name, result=result)


async def _selector(text: str, context: Any) -> dict[str, str] | None:
    """The fake's selector: "k=v,k=v" only; None when empty."""
    if not text:
        return None
    labels: dict[str, str] = {}
    for term in text.split(","):
        key, sep, value = term.partition("=")
        if not sep or not key.strip():
            await context.abort(
                S.INVALID_ARGUMENT,
                f"malformed selector {text!r}: expected key=value",
                trailing_metadata=NOTHING_RAN,
            )
        labels[key.strip()] = value.strip()
    return labels


def _matches(host: exec_pb2.Host, labels: dict[str, str]) -> bool:
    return all(host.labels.get(key) == value for key, value in labels.items())


def _targets(entries: Any, labels: dict[str, str] | None) -> list[str]:
    """The union of names, globs and selector matches, in the order scout starts them."""
    names: set[str] = set()
    for entry in entries:
        if any(ch in entry for ch in "*?["):
            names.update(h.name for h in INVENTORY if fnmatch.fnmatchcase(h.name, entry))
        else:
            names.add(entry)
    if labels is not None:
        names.update(h.name for h in INVENTORY if _matches(h, labels))
    return sorted(names)


def _plan(command: str) -> dict[str, list[list[Any]]]:
    if command.startswith("{"):
        plan: dict[str, list[list[Any]]] = json.loads(command)
        return plan
    return {name: [["stdout", f"{name}\n"], ["exit", 0]] for name in (h.name for h in INVENTORY)}


def _status(code: str, text: str) -> dict[str, Any]:
    """A google.rpc.Status as the message's initializer takes it (no google.rpc import)."""
    return {"code": S[code].value[0], "message": text}


def _exit(**fields: Any) -> exec_pb2.StreamResponse:
    return exec_pb2.StreamResponse(exit=exec_pb2.ExitStatus(**fields))


def tls_credentials(pki: PKI, *, mutual: bool = False) -> grpc.ServerCredentials:
    """The server's certificate from pki; `mutual`: clients must show one pki's CA signed."""
    pair = (pki.server.key.read_bytes(), pki.server.cert.read_bytes())
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=pki.ca.bundle.read_bytes() if mutual else None,
        require_client_auth=mutual,
    )


@asynccontextmanager
async def serving(
    servicer: FakeExec, credentials: grpc.ServerCredentials | None = None
) -> AsyncIterator[str]:
    """Serve servicer on 127.0.0.1:0; yield the target.

    The health service knows "" and "scout.v1.ExecService" (SERVING) and
    "maintenance" (NOT_SERVING).
    """
    server = grpc.aio.server()
    exec_pb2_grpc.add_ExecServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    status = health_pb2.HealthCheckResponse
    await health_servicer.set("scout.v1.ExecService", status.SERVING)
    await health_servicer.set("maintenance", status.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _serve_forever() -> None:
    """Serve until killed, telling the parent the port and each call on stdout."""

    def tell(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async with serving(FakeExec(on_call=lambda host: tell(f"started {host}"))) as target:
        tell(f"port {target.rsplit(':', 1)[1]}")
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve_forever())
