"""Assembling the gRPC server: ExecService, health, reflection, reloads, and the shutdown.

A reload (SIGHUP) is server.reload's: App only wires it to the parts it updates.

Shutdown has two steps (docs/architecture.md, "Stopping"): health goes NOT_SERVING and
in-flight RPCs get the grace period; then grpc cancels what is left, each cancelled
handler stops its command (TERM, KILL, close) within a short stop budget, and the pool
closes its connections only after those stops (or the budget) are over: no remote command
outlives scout's interest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncssh
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scout.v1 import exec_pb2

from .audit import AuditLog
from .callers import IdentityInterceptor
from .command import CLOSE_WAIT, KILL_WAIT
from .config import Config, ConfigError, check_exposure, listening_line
from .connector import Connector, round_trip
from .errors import FileError
from .forwarding import Forwarder, ForwardingPlan, ForwardingServer
from .introspection import HEALTH_SERVICE, Health, StreamSlots, enable_reflection
from .keepalive import ping_options
from .live import LiveConfig
from .metrics import MetricsServer, Sources, exposition, served
from .pool import Pool
from .reload import INSECURE_WARNING, MATCH_EXEC_WARNING, Reloader
from .rpc import door, safe_parser
from .service import ExecService
from .tls import ServerTLS

log = logging.getLogger(__name__)
# asyncssh logs every command line at INFO, and env values travel in it: those may be
# secrets, which never go to a log. Its warnings and errors still do.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

SERVICE_NAME = exec_pb2.DESCRIPTOR.services_by_name["ExecService"].full_name
FILE_CHECK_PERIOD = 2.0  # seconds between looks at known_hosts and key files
# grpc core queues calls it has not handed to Python yet and cancels them past 1,000 by
# default; scout's own limit (max_concurrent_rpcs) must be the one that answers.
PENDING_CALLS = 1_000_000


@dataclass
class App:
    """A running scout server."""

    live: LiveConfig
    server: grpc.aio.Server
    pool: Pool[asyncssh.SSHClientConnection]
    service: ExecService
    health: Health
    connector: Connector
    port: int
    reloader: Reloader
    tls: ServerTLS | None = None
    metrics: MetricsServer | None = None
    forwarding: ForwardingServer | None = None  # a worker's socket for its siblings
    _watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        """The config in force (a reload swaps it)."""
        return self.live.current

    def counted(self) -> Sources:
        """What the metrics read (server.metrics)."""
        service = self.service
        return Sources(
            self.live,
            service.rpcs,
            service.gate,
            self.pool,
            service.output_budget,
            service.audit,
            service.durable,
        )

    def stop_budget(self) -> float:
        """How long stopping the commands still running may take after the grace."""
        return self.config.exec.kill_grace + KILL_WAIT + CLOSE_WAIT + 0.5

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING; in-flight RPCs get the grace; their commands are stopped; pool closed."""
        grace = self.config.shutdown_grace if grace is None else grace
        if self._watcher is not None:
            self._watcher.cancel()
        await self.health.enter_graceful_shutdown()
        self.service.stopping = True
        if self.forwarding is None:
            await self.server.stop(grace)
        else:  # siblings watch the store from now on; forwarded calls get the same grace
            self.forwarding.gone()
            await asyncio.gather(self.server.stop(grace), self.forwarding.stop(grace))
        budget = self.stop_budget()
        await self.service.durable.close(budget)  # keyed runs: stopped, recorded as such
        forwarder = self.service.durable.forwarder
        if isinstance(forwarder, Forwarder):
            await forwarder.close()
        await self.service.launcher.wait_stopped(budget)
        await self.pool.close(drain_within=budget)
        self.service.audit.close()
        if self.metrics is not None:
            await self.metrics.stop()
        log.info("stopped; pool closed")

    async def reload(self) -> None:
        """SIGHUP: the config file, the audit file, the TLS and SSH files (server.reload)."""
        await self.reloader.reload()

    def reload_files(self) -> None:
        """Re-read TLS files, known_hosts and keys that changed; retire what relied on them.
        The config file waits for a SIGHUP."""
        self.reloader.reload_files()

    async def _watch_files(self) -> None:
        """Notice edits of known_hosts and keys without a SIGHUP (bounded by shutdown)."""
        while True:
            await asyncio.sleep(FILE_CHECK_PERIOD)
            self.reload_files()

    async def wait(self) -> None:
        """Until the server stops."""
        await self.server.wait_for_termination()


def _handlers(service: ExecService) -> grpc.GenericRpcHandler:
    """ExecService's methods, with deserializers that mark bad bytes instead of raising."""
    kinds = {  # each method's messages are exec_pb2.<name>Request and <name>Response
        "Execute": grpc.unary_unary_rpc_method_handler,
        "Stream": grpc.stream_stream_rpc_method_handler,
        "ListHosts": grpc.unary_unary_rpc_method_handler,
        "ExecuteMany": grpc.unary_stream_rpc_method_handler,
        "Upload": grpc.stream_unary_rpc_method_handler,
        "Download": grpc.unary_stream_rpc_method_handler,
        "UploadMany": grpc.stream_stream_rpc_method_handler,
    }
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            name: kind(
                getattr(service, name),
                request_deserializer=safe_parser(getattr(exec_pb2, f"{name}Request")),
                response_serializer=getattr(exec_pb2, f"{name}Response").SerializeToString,
            )
            for name, kind in kinds.items()
        },
    )


def _prepare(
    live: LiveConfig, address: str, *, shared: bool
) -> tuple[Connector, ServerTLS | None, AuditLog]:
    """Check everything that can be wrong before serving: exposure, files, audit log."""
    config = live.current
    for warning in check_exposure(config, address):
        log.warning("%s", warning)
    if config.ssh.allow_match_exec:
        log.warning(MATCH_EXEC_WARNING)
    for host in config.hosts.values():
        if host.insecure_accept_any_host_key:
            log.warning(INSECURE_WARNING, host.name)
    connector = Connector(live)
    try:
        connector.preload(config.hosts.values())
        tls = ServerTLS(config.tls) if config.tls.enabled else None
        audit = AuditLog(config.audit, shared=shared)
    except FileError as exc:
        raise ConfigError(f"{exc} (scout checks its files at start)") from None
    return connector, tls, audit


async def start(
    config: Config,
    listen: str | None = None,
    loader: Callable[[], Config] | None = None,
    *,
    shared_port: bool = False,
    forwarding: ForwardingPlan | None = None,
) -> App:
    """Build and start the server; listen defaults to the config's (port 0 picks one).

    `shared_port`: one worker of several on a port its supervisor holds (SO_REUSEPORT);
    otherwise the port is scout's alone, so a second scout on it fails instead of
    silently sharing it. The supervisor, not a worker, writes the listening line.
    `forwarding`: a worker's place among its siblings (server.forwarding): its owner id,
    and the socket it serves them on.
    """
    address = listen or config.listen
    live = LiveConfig(config)
    connector, tls, audit = _prepare(live, address, shared=shared_port)
    pool: Pool[asyncssh.SSHClientConnection] = Pool(config.pool, connector, settle=round_trip)
    connector.pool = pool
    service = ExecService(live, pool, audit=audit)
    internal = None
    if forwarding is not None:
        service.durable.owner = forwarding.owner
        service.durable.forwarder = Forwarder(forwarding)
        internal = ForwardingServer(forwarding, service.Execute, service.Stream)
    server = grpc.aio.server(
        interceptors=[
            IdentityInterceptor(
                service.gate,
                mutual_tls=config.tls.client_ca_file is not None,
                door=door(service, SERVICE_NAME),
            )
        ],
        options=[
            ("grpc.max_receive_message_length", config.exec.receive_limit()),
            ("grpc.max_send_message_length", config.exec.send_limit()),
            ("grpc.server.max_pending_requests", PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS),
            ("grpc.so_reuseport", int(shared_port)),
            *ping_options(config.server),
        ],
    )
    server.add_generic_rpc_handlers((_handlers(service),))
    streams = StreamSlots(config.server.max_introspection_streams)
    health = Health(streams)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection((SERVICE_NAME, HEALTH_SERVICE), server, streams)
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.credentials())
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address} (in use, or not an address of this machine)")
    if internal is not None:
        await internal.start()
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "%s %s", "serving" if shared_port else "listening on", listening_line(config, address, port)
    )
    reloader = Reloader(live, service, pool, connector, address, tls, loader)
    app = App(live, server, pool, service, health, connector, port, reloader, tls)
    app.forwarding = internal
    if config.metrics.listen:
        app.metrics = MetricsServer(served(exposition(app.counted())))
        await app.metrics.start(config.metrics.listen)
    app._watcher = asyncio.get_running_loop().create_task(app._watch_files())
    return app
