"""Health and reflection, as the tools that probe gRPC servers call them."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from server.introspection import REFLECTION_V1, REFLECTION_V1ALPHA

from .scoutd import Scout

ROOT = Path(__file__).resolve().parent.parent
BUF = shutil.which("buf") or str(ROOT / ".venv" / "bin" / "buf")
GRPCURL = shutil.which("grpcurl") or str(ROOT / ".venv" / "bin" / "grpcurl")
EVERY_SERVICE = {
    "scout.v1.ExecService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


async def run(*argv: str) -> tuple[int, str, str]:
    """Run a tool; return its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def reflect(
    local_scout: Scout, service: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """Ask one reflection service (v1 or v1alpha: the same messages, the same bytes)."""
    call = local_scout.channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter(requests), timeout=10)
    return [response async for response in call]


@pytest.mark.parametrize("service", [REFLECTION_V1, REFLECTION_V1ALPHA])
async def test_each_reflection_version_lists_and_describes(
    local_scout: Scout, service: str
) -> None:
    listed, described = await reflect(
        local_scout,
        service,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="scout.v1.ExecService"),
    )
    assert {s.name for s in listed.list_services_response.service} == EVERY_SERVICE
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    assert "scout/v1/exec.proto" in {f.name for f in files}


@pytest.mark.parametrize("service", [REFLECTION_V1, REFLECTION_V1ALPHA])
async def test_each_reflection_service_describes_itself(local_scout: Scout, service: str) -> None:
    """Tools that list every method (buf curl --list-methods) describe every listed service."""
    (described,) = await reflect(
        local_scout, service, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
    )
    (file,) = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    assert f"{file.package}.{file.service[0].name}" == service
    method = file.service[0].method[0]
    assert method.input_type == f".{file.package}.ServerReflectionRequest"


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
async def test_buf_curl_lists_methods_with_either_reflection_protocol(
    local_scout: Scout, protocol: str
) -> None:
    code, out, err = await run(
        BUF,
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--reflect-protocol",
        protocol,
        "--list-methods",
        f"http://{local_scout.target}",
    )
    assert code == 0, err
    assert {m.rsplit("/", 1)[0] for m in out.split()} == EVERY_SERVICE


async def test_grpcurl_lists_and_describes(local_scout: Scout) -> None:
    """grpcurl 1.8.6 reflects over v1alpha."""
    code, out, err = await run(GRPCURL, "-plaintext", local_scout.target, "list")
    assert code == 0, err
    assert set(out.split()) == EVERY_SERVICE
    code, out, err = await run(GRPCURL, "-plaintext", local_scout.target, "describe", REFLECTION_V1)
    assert code == 0, err
    assert "stream .grpc.reflection.v1.ServerReflectionRequest" in out


async def test_health_list_reports_every_service(local_scout: Scout) -> None:
    stub = health_pb2_grpc.HealthStub(local_scout.channel)
    listed = await stub.List(health_pb2.HealthListRequest(), timeout=10)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": serving,
        "scout.v1.ExecService": serving,
    }


async def test_health_list_follows_a_graceful_shutdown(local_scout: Scout) -> None:
    await local_scout.app.health.enter_graceful_shutdown()
    stub = health_pb2_grpc.HealthStub(local_scout.channel)
    listed = await stub.List(health_pb2.HealthListRequest(), timeout=10)
    assert {s.status for s in listed.statuses.values()} == {
        health_pb2.HealthCheckResponse.NOT_SERVING
    }
