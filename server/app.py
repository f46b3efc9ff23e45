"""Assembling the gRPC server: ExecService, health, reflection, and a two-step shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncssh
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scout.v1 import exec_pb2, exec_pb2_grpc

from .config import Config
from .connector import Connector
from .introspection import HEALTH_SERVICE, Health, enable_reflection
from .pool import Pool
from .service import ExecService

log = logging.getLogger(__name__)

SERVICE_NAME = exec_pb2.DESCRIPTOR.services_by_name["ExecService"].full_name
_MAX_MESSAGE = 64 * 1024 * 1024  # gRPC message bound: stdin, command and capped output


@dataclass
class App:
    """A running scout server."""

    config: Config
    server: grpc.aio.Server
    pool: Pool[asyncssh.SSHClientConnection]
    service: ExecService
    health: Health
    port: int

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, in-flight RPCs get the grace period, then close the pool."""
        grace = self.config.shutdown_grace if grace is None else grace
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.pool.close()
        log.info("stopped; pool closed")

    async def wait(self) -> None:
        """Until the server stops."""
        await self.server.wait_for_termination()


async def start(config: Config, listen: str | None = None) -> App:
    """Build and start the server; listen defaults to the config's (port 0 picks one)."""
    address = listen or config.listen
    pool: Pool[asyncssh.SSHClientConnection] = Pool(config.pool, Connector(config.ssh, config.pool))
    service = ExecService(config, pool)
    server = grpc.aio.server(
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )
    exec_pb2_grpc.add_ExecServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    health = Health()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection((SERVICE_NAME, HEALTH_SERVICE), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening on %s (port %d), %d hosts", address, port, len(config.hosts))
    return App(config, server, pool, service, health, port)
