"""Shared fixtures for the fast tests: a test service and a running ttrpc server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2  # noqa: E402

import ttrpc  # noqa: E402

ECHO_SERVICE = "pykata.test.Echo"


def _echo_descriptor():
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName(ECHO_SERVICE)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name="pykata_tests/echo.proto",
        package="pykata.test",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    service = proto.service.add(name="Echo")
    for name in ("Echo", "Sleep", "Fail", "Crash", "Metadata", "Grow", "Missing"):
        service.method.add(
            name=name,
            input_type=".google.protobuf.BytesValue",
            output_type=".google.protobuf.BytesValue",
        )
    pool.Add(proto)
    return pool.FindServiceByName(ECHO_SERVICE)


ECHO = _echo_descriptor()
BytesValue = wrappers_pb2.BytesValue


class EchoService:
    """The test service: every method takes and returns a BytesValue."""

    def __init__(self) -> None:
        self.cancelled: list[int] = []
        self.started = 0

    async def Echo(self, request, context):
        return request

    async def Sleep(self, request, context):
        """Sleeps value (seconds, as text), answers the value; records cancellations."""
        self.started += 1
        try:
            await asyncio.sleep(float(request.value.decode()))
        except asyncio.CancelledError:
            self.cancelled.append(context.stream_id)
            raise
        return request

    async def Fail(self, request, context):
        raise ttrpc.TTRPCError(ttrpc.Code.NOT_FOUND, "no such thing")

    async def Crash(self, request, context):
        raise ValueError("handler blew up")

    async def Metadata(self, request, context):
        key = request.value.decode()
        return BytesValue(value=",".join(context.metadata.get(key, [])).encode())

    async def Grow(self, request, context):
        return BytesValue(value=b"x" * int(request.value.decode()))

    # "Missing" is declared in the service but not implemented here.


def bytes_value(data: bytes) -> bytes:
    return BytesValue(value=data).SerializeToString()


def parse_value(payload: bytes) -> bytes:
    return BytesValue.FromString(payload).value


@pytest.fixture
def echo_service() -> EchoService:
    return EchoService()


@pytest.fixture
async def server(tmp_path, echo_service) -> AsyncIterator[tuple[ttrpc.Server, str]]:
    srv = ttrpc.Server()
    srv.register(ECHO, echo_service)
    address = f"unix://{tmp_path}/ttrpc.sock"
    await srv.serve_unix(address)
    yield srv, address
    await srv.shutdown(grace=1.0)


@pytest.fixture
async def client(server) -> AsyncIterator[ttrpc.Client]:
    _, address = server
    conn = await ttrpc.Client.connect(address)
    yield conn
    await conn.close()
