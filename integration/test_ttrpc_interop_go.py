"""Interop with Go's ttrpc 1.1.1 (containerd 1.6's): our client against a Go server,
the Go client against our server, and wire bytes against the Go codec's."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2

import ttrpc
from ttrpc.pb.request_pb2 import KeyValue, Request, Response

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

GO_ECHO = "pykata.test.Echo"  # served by `gottrpc serve`; payloads are raw bytes
PY_ECHO = "pykata.interop.Echo"  # served by our Server here; BytesValue in and out
BytesValue = wrappers_pb2.BytesValue
MiB = 1 << 20


def _go(binary: Path, *args: str, timeout: float = 30) -> str:
    return subprocess.run([str(binary), *args], capture_output=True, text=True,
                          check=True, timeout=timeout).stdout.strip()


# --------------------------------------------------------------- our client, Go server


@pytest.fixture
async def go_client(gottrpc_server: Any) -> AsyncIterator[ttrpc.Client]:
    client = await ttrpc.Client.connect(f"unix://{gottrpc_server.socket}", timeout=5)
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize("size", [0, 1, 100, 64 * 1024, MiB])
async def test_echo_sizes(go_client: ttrpc.Client, size: int) -> None:
    payload = os.urandom(size)
    assert await go_client.call(GO_ECHO, "Echo", payload, timeout=10) == payload


async def test_fail_is_not_found(go_client: ttrpc.Client) -> None:
    with pytest.raises(ttrpc.TTRPCError) as err:
        await go_client.call(GO_ECHO, "Fail", b"", timeout=5)
    assert err.value.code == ttrpc.Code.NOT_FOUND
    assert err.value.message == "no such thing"


async def test_sleep_within_deadline(go_client: ttrpc.Client) -> None:
    assert await go_client.call(GO_ECHO, "Sleep", b"10", timeout=5) == b"slept"


async def test_sleep_past_deadline(go_client: ttrpc.Client) -> None:
    t0 = time.monotonic()
    with pytest.raises(ttrpc.TTRPCError) as err:
        await go_client.call(GO_ECHO, "Sleep", b"5000", timeout=0.2)
    assert err.value.code == ttrpc.Code.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 2
    # the connection is still good afterwards
    assert await go_client.call(GO_ECHO, "Echo", b"after", timeout=5) == b"after"


async def _raw_frame_call(sock: Path, request: Request, stream_id: int = 1) -> Response:
    """One call by hand: 10-byte ttrpc header (length, stream id, type 1, flags 0) + Request."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        data = request.SerializeToString()
        writer.write(struct.pack(">IIBB", len(data), stream_id, 1, 0) + data)
        await writer.drain()
        length, sid, msg_type, _flags = struct.unpack(">IIBB", await reader.readexactly(10))
        assert (sid, msg_type) == (stream_id, 2)
        return Response.FromString(await reader.readexactly(length))
    finally:
        writer.close()


async def test_go_server_applies_our_timeout_nano(gottrpc_server: Any) -> None:
    """Go's server turns timeout_nano into its own deadline (no client-side timer here)."""
    request = Request(service=GO_ECHO, method="Sleep", payload=b"5000", timeout_nano=200_000_000)
    t0 = time.monotonic()
    response = await asyncio.wait_for(_raw_frame_call(gottrpc_server.socket, request), 5)
    assert time.monotonic() - t0 < 2
    assert response.status.code == ttrpc.Code.DEADLINE_EXCEEDED
    assert "deadline" in response.status.message
    # and an even stream id is refused, as ttrpc requires odd client ids
    response = await _raw_frame_call(gottrpc_server.socket, Request(service=GO_ECHO,
                                                                     method="Echo"), 2)
    assert response.status.code == ttrpc.Code.INVALID_ARGUMENT


async def test_metadata_reaches_go(go_client: ttrpc.Client) -> None:
    got = await go_client.call(GO_ECHO, "Metadata", b"foo", timeout=5, metadata={"foo": "bar"})
    assert got == b"bar"
    # keys go lower-case on the wire; Go looks them up lower-cased too
    got = await go_client.call(GO_ECHO, "Metadata", b"x-mixed", timeout=5,
                               metadata={"X-Mixed": ["first", "second"]})
    assert got == b"first"
    with pytest.raises(ttrpc.TTRPCError) as err:
        await go_client.call(GO_ECHO, "Metadata", b"absent", timeout=5)
    assert err.value.code == ttrpc.Code.NOT_FOUND


async def test_unknown_method_and_service(go_client: ttrpc.Client) -> None:
    with pytest.raises(ttrpc.TTRPCError) as err:
        await go_client.call(GO_ECHO, "NoSuchMethod", b"", timeout=5)
    assert err.value.code == ttrpc.Code.UNIMPLEMENTED
    with pytest.raises(ttrpc.TTRPCError) as err:
        await go_client.call("no.such.Service", "Echo", b"", timeout=5)
    assert err.value.code == ttrpc.Code.UNIMPLEMENTED


async def test_200_concurrent_calls_one_connection(go_client: ttrpc.Client) -> None:
    payloads = [f"call-{i}".encode() * (i % 7 + 1) for i in range(200)]
    results = await asyncio.gather(
        *(go_client.call(GO_ECHO, "Echo", p, timeout=20) for p in payloads)
    )
    assert results == payloads


async def test_mixed_concurrent_calls(go_client: ttrpc.Client) -> None:
    """Slow, failing and fast calls interleaved: every answer reaches its own caller."""

    async def one(i: int) -> object:
        try:
            if i % 3 == 0:
                return await go_client.call(GO_ECHO, "Sleep", b"20", timeout=10)
            if i % 3 == 1:
                return await go_client.call(GO_ECHO, "Fail", b"", timeout=10)
            return await go_client.call(GO_ECHO, "Echo", str(i).encode(), timeout=10)
        except ttrpc.TTRPCError as exc:
            return exc.code

    results = await asyncio.gather(*(one(i) for i in range(150)))
    for i, r in enumerate(results):
        assert r == [b"slept", ttrpc.Code.NOT_FOUND, str(i).encode()][i % 3]


async def test_go_server_dies_mid_call(gottrpc_server: Any) -> None:
    client = await ttrpc.Client.connect(str(gottrpc_server.socket))
    try:
        pending = asyncio.ensure_future(client.call(GO_ECHO, "Sleep", b"10000"))
        await asyncio.sleep(0.1)
        os.kill(gottrpc_server.proc.pid, signal.SIGKILL)
        with pytest.raises(ttrpc.TTRPCError) as err:
            await asyncio.wait_for(pending, 5)
        assert err.value.code == ttrpc.Code.UNAVAILABLE
        with pytest.raises(ttrpc.TTRPCError) as err:
            await client.call(GO_ECHO, "Echo", b"x", timeout=1)
        assert err.value.code == ttrpc.Code.UNAVAILABLE
    finally:
        await client.close()


# --------------------------------------------------------------- wire bytes vs Go's codec

GOLDEN_REQUESTS = [
    dict(service="svc", method="M"),
    dict(service=GO_ECHO, method="Echo", payload=b"\x00\x01\xff", timeout_nano=5_000_000_000),
    dict(service="containerd.task.v2.Task", method="State", payload=b"\n\x03abc",
         timeout_nano=1, metadata=[("a", "b"), ("containerd-namespace", "k8s.io"), ("a", "c")]),
    dict(service="s", method="m", payload=b"x" * 300, timeout_nano=-1),
]


@pytest.mark.parametrize("case", GOLDEN_REQUESTS, ids=range(len(GOLDEN_REQUESTS)))
def test_request_bytes_match_go(gottrpc: Path, case: dict[str, Any]) -> None:
    args = ["rawreq", "-service", case["service"], "-method", case["method"],
            "-payload-hex", case.get("payload", b"").hex(),
            "-timeout-nano", str(case.get("timeout_nano", 0))]
    for k, v in case.get("metadata", []):
        args += ["-md", f"{k}={v}"]
    go_bytes = bytes.fromhex(_go(gottrpc, *args))
    ours = Request(
        service=case["service"], method=case["method"], payload=case.get("payload", b""),
        timeout_nano=case.get("timeout_nano", 0),
        metadata=[KeyValue(key=k, value=v) for k, v in case.get("metadata", [])],
    ).SerializeToString()
    assert ours == go_bytes


@pytest.mark.parametrize(("code", "message", "payload"), [
    (0, "", b""), (0, "", b"\x01\x02"), (5, "no such thing", b""), (12, "method X", b"z"),
])
def test_response_bytes_match_go(gottrpc: Path, code: int, message: str, payload: bytes) -> None:
    go_bytes = bytes.fromhex(_go(gottrpc, "rawresp", "-code", str(code), "-message", message,
                                 "-payload-hex", payload.hex()))
    ours = Response(payload=payload)
    if code or message:
        ours.status.code = code
        ours.status.message = message
    assert ours.SerializeToString() == go_bytes
    parsed = Response.FromString(go_bytes)
    assert (parsed.status.code, parsed.status.message, parsed.payload) == (code, message, payload)


# --------------------------------------------------------------- Go client, our server


def _py_echo_descriptor() -> Any:
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName(PY_ECHO)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name="pykata_integration/interop_echo.proto",
        package="pykata.interop",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    service = proto.service.add(name="Echo")
    for name in ("Echo", "Sleep", "Fail", "Metadata", "Crash"):
        service.method.add(name=name, input_type=".google.protobuf.BytesValue",
                           output_type=".google.protobuf.BytesValue")
    pool.Add(proto)
    return pool.FindServiceByName(PY_ECHO)


class PyEcho:
    """Handlers the Go client calls; records what each call saw."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []
        self.cancelled = 0

    async def Echo(self, request: Any, context: ttrpc.CallContext) -> Any:
        return request

    async def Sleep(self, request: Any, context: ttrpc.CallContext) -> Any:
        self.timeouts.append(context.timeout)
        try:
            await asyncio.sleep(float(request.value.decode()))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return BytesValue(value=b"slept")

    async def Fail(self, request: Any, context: ttrpc.CallContext) -> Any:
        raise ttrpc.TTRPCError(ttrpc.Code.NOT_FOUND, "no such thing")

    async def Metadata(self, request: Any, context: ttrpc.CallContext) -> Any:
        value = context.get(request.value.decode())
        if value is None:
            raise ttrpc.TTRPCError(ttrpc.Code.NOT_FOUND, "no such key")
        return BytesValue(value=value.encode())

    async def Crash(self, request: Any, context: ttrpc.CallContext) -> Any:
        raise ValueError("handler blew up")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pyi-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def py_server(short_dir: Path) -> AsyncIterator[tuple[Path, PyEcho]]:
    service = PyEcho()
    server = ttrpc.Server()
    server.register(_py_echo_descriptor(), service)
    sock = short_dir / "py.sock"
    await server.serve_unix(str(sock))
    try:
        yield sock, service
    finally:
        await server.shutdown(grace=1.0)


async def _go_call(gottrpc: Path, sock: Path, method: str, value: bytes | None = None, *,
                   payload_file: Path | None = None, service: str = PY_ECHO,
                   extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run `gottrpc call` without blocking the loop that serves it; its JSON answer."""
    args = [str(gottrpc), "call", "-socket", str(sock), "-service", service, "-method", method]
    if payload_file is not None:
        args += ["-payload-file", str(payload_file)]
    elif value is not None:
        args += ["-payload-hex", BytesValue(value=value).SerializeToString().hex()]
    proc = await asyncio.create_subprocess_exec(
        *args, *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    answer = json.loads(out)
    answer["value"] = BytesValue.FromString(bytes.fromhex(answer["payload_hex"])).value
    return answer


async def test_go_client_echo(gottrpc: Path, py_server: tuple[Path, PyEcho]) -> None:
    sock, _ = py_server
    for value in (b"", b"hello", bytes(range(256))):
        answer = await _go_call(gottrpc, sock, "Echo", value)
        assert (answer["code"], answer["value"]) == (0, value)


async def test_go_client_echo_1mib(gottrpc: Path, py_server: tuple[Path, PyEcho],
                                   short_dir: Path) -> None:
    sock, _ = py_server
    value = os.urandom(MiB)
    f = short_dir / "payload.bin"
    f.write_bytes(BytesValue(value=value).SerializeToString())
    answer = await _go_call(gottrpc, sock, "Echo", payload_file=f)
    assert answer["code"] == 0
    assert answer["value"] == value


async def test_go_client_errors(gottrpc: Path, py_server: tuple[Path, PyEcho]) -> None:
    sock, _ = py_server
    answer = await _go_call(gottrpc, sock, "Fail", b"")
    assert (answer["code"], answer["message"]) == (ttrpc.Code.NOT_FOUND, "no such thing")
    answer = await _go_call(gottrpc, sock, "Nope", b"")
    assert answer["code"] == ttrpc.Code.UNIMPLEMENTED
    answer = await _go_call(gottrpc, sock, "Echo", b"", service="no.such.Service")
    assert answer["code"] == ttrpc.Code.UNIMPLEMENTED
    answer = await _go_call(gottrpc, sock, "Crash", b"")
    assert answer["code"] == ttrpc.Code.UNKNOWN
    assert "blew up" in answer["message"]


async def test_go_client_metadata(gottrpc: Path, py_server: tuple[Path, PyEcho]) -> None:
    sock, _ = py_server
    answer = await _go_call(gottrpc, sock, "Metadata", b"foo", extra=("-md", "foo=bar"))
    assert (answer["code"], answer["value"]) == (0, b"bar")
    answer = await _go_call(gottrpc, sock, "Metadata", b"k",
                            extra=("-md", "K=first", "-md", "k=second"))
    assert (answer["code"], answer["value"]) == (0, b"first")


async def test_go_client_deadline(gottrpc: Path, py_server: tuple[Path, PyEcho]) -> None:
    sock, service = py_server
    t0 = time.monotonic()
    answer = await _go_call(gottrpc, sock, "Sleep", b"5", extra=("-timeout-ms", "200"))
    assert answer["code"] == ttrpc.Code.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 3
    # Go sent its deadline as timeout_nano and our server applied it
    (seen,) = service.timeouts
    assert seen is not None and 0.1 < seen <= 0.2
    for _ in range(50):
        if service.cancelled:
            break
        await asyncio.sleep(0.02)
    assert service.cancelled == 1
    answer = await _go_call(gottrpc, sock, "Sleep", b"0.01", extra=("-timeout-ms", "5000"))
    assert (answer["code"], answer["value"]) == (0, b"slept")


async def test_go_bench_against_our_server(gottrpc: Path, py_server: tuple[Path, PyEcho],
                                           short_dir: Path) -> None:
    """64 Go callers on one connection for 0.5 s: no errors, answers flowing."""
    sock, _ = py_server
    f = short_dir / "small.bin"
    f.write_bytes(BytesValue(value=b"x" * 100).SerializeToString())
    proc = await asyncio.create_subprocess_exec(
        str(gottrpc), "bench", "-socket", str(sock), "-service", PY_ECHO, "-method", "Echo",
        "-payload-file", str(f), "-concurrency", "64", "-duration-ms", "500",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["errors"] == 0, result
    assert result["calls"] > 100, result
