"""The standard services that tools probe a gRPC server with: health and reflection.

Health: grpcio-health-checking's servicer (1.85) inherits `List` from the generated base
class, which answers UNIMPLEMENTED although reflection advertises it; `Health` answers it.

Bounds: these services are outside `max_concurrent_rpcs` on purpose (a scout busy with
commands must still answer its probes), and health needs no identity. So their
long-lived streams, Health.Watch and reflection, count against a bound of their own
(`[server] max_introspection_streams`), and a Watch names a service of a sane length:
grpcio keeps each watched name for the stream's life (measured before these bounds: 40
Watches of 4 MB names, +700 MiB; 2,000 Watches past `max_concurrent_rpcs = 1`).

Reflection: grpcurl up to 1.8 speaks `grpc.reflection.v1alpha`; buf curl, grpc-go and
newer grpcurl ask `grpc.reflection.v1` first. grpcio-reflection (1.85) serves only v1alpha.
The two protocols are one proto under two package names (the same messages with the same
field numbers, so the same bytes on the wire), so v1 here is the v1alpha servicer
registered under v1's method path, and v1's descriptor (v1alpha's, renamed) is added to
the descriptor pool so that tools can describe v1 too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_V1ALPHA = reflection.SERVICE_NAME
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
MAX_SERVICE_NAME = 512  # bytes of a service name a Watch may name (real ones: under 100)


class StreamSlots:
    """How many introspection streams are open, against their limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    async def enter(self, context: grpc.aio.ServicerContext) -> None:
        """Take a place, or end the call with RESOURCE_EXHAUSTED."""
        if self.open >= self.limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"scout is at its limit of {self.limit} health Watch and reflection streams "
                "at once ([server] max_introspection_streams); retry later",
            )
        self.open += 1

    def leave(self) -> None:
        """Give the place back."""
        self.open -= 1


class Health(HealthServicer):  # type: ignore[misc]  # grpcio-health-checking is untyped
    """The official asyncio health servicer, with `List` answered and `Watch` bounded."""

    def __init__(self, streams: StreamSlots) -> None:
        super().__init__()
        self.streams = streams

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """The base class's Watch, within the stream bound, for a name of a sane length."""
        if len(request.service.encode()) > MAX_SERVICE_NAME:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"service: at most {MAX_SERVICE_NAME} bytes, got {len(request.service.encode())}",
            )
        await self.streams.enter(context)
        try:
            await super().Watch(request, context)
        finally:
            self.streams.leave()

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Every service's status: the base class keeps them in `_server_status`."""
        statuses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)


class Reflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]  # untyped
    """grpcio-reflection's asyncio servicer, within the stream bound."""

    def __init__(self, service_names: Iterable[str], streams: StreamSlots) -> None:
        super().__init__(tuple(service_names))
        self.streams = streams

    async def ServerReflectionInfo(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        """The base class's answers, while this stream holds a place."""
        await self.streams.enter(context)
        try:
            async for response in super().ServerReflectionInfo(request_iterator, context):
                yield response
        finally:
            self.streams.leave()


def enable_reflection(
    service_names: Iterable[str], server: grpc.aio.Server, streams: StreamSlots
) -> None:
    """Serve reflection for service_names (and both reflection services) under v1 and v1alpha."""
    _add_v1_descriptor(descriptor_pool.Default())
    servicer = Reflection((*service_names, REFLECTION_V1, REFLECTION_V1ALPHA), streams)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


def _add_v1_descriptor(pool: Any) -> None:
    """Add grpc/reflection/v1/reflection.proto, built from v1alpha's, unless it is there."""
    try:
        pool.FindServiceByName(REFLECTION_V1)
    except KeyError:
        pass
    else:
        return
    alpha, v1 = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(alpha, v1)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(alpha, v1)
            method.output_type = method.output_type.replace(alpha, v1)
    pool.AddSerializedFile(proto.SerializeToString())
