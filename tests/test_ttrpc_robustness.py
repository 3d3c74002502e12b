"""A server facing hostile or broken peers: it answers precisely and stays up."""

import asyncio
import contextlib
import logging
import random
import socket

import pytest
from conftest import ECHO_SERVICE, bytes_value, parse_value

import ttrpc
from ttrpc import Code
from ttrpc.framing import (
    HEADER,
    MAX_MESSAGE_SIZE,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    encode_frame,
    encode_header,
)
from ttrpc.pb.request_pb2 import Request, Response
from ttrpc.transport import unix_path


class RawPeer:
    """A hand-driven ttrpc client: writes whatever bytes the test wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, address: str) -> "RawPeer":
        return cls(*await asyncio.open_unix_connection(unix_path(address)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, stream_id: int, method: str, payload: bytes = b"") -> None:
        request = Request(service=ECHO_SERVICE, method=method, payload=payload)
        await self.send(encode_frame(stream_id, TYPE_REQUEST, request.SerializeToString()))

    async def response(self) -> tuple[int, Response]:
        header = await asyncio.wait_for(self.reader.readexactly(10), 5)
        length, stream_id, msg_type, _ = HEADER.unpack(header)
        assert msg_type == TYPE_RESPONSE
        return stream_id, Response.FromString(await self.reader.readexactly(length))

    async def closed_by_server(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


async def still_serving(address: str) -> None:
    async with await ttrpc.Client.connect(address) as conn:
        assert parse_value(await conn.call(ECHO_SERVICE, "Echo", bytes_value(b"alive"))) == b"alive"


async def test_even_stream_id_is_invalid_argument(server):
    _, address = server
    peer = await RawPeer.connect(address)
    await peer.request(2, "Echo")
    stream_id, response = await peer.response()
    assert stream_id == 2
    assert response.status.code == Code.INVALID_ARGUMENT
    await peer.request(1, "Echo", bytes_value(b"x"))  # the connection still works
    stream_id, response = await peer.response()
    assert (stream_id, response.status.code) == (1, 0)
    peer.close()


async def test_reused_or_decreasing_stream_id_is_invalid_argument(server):
    _, address = server
    peer = await RawPeer.connect(address)
    await peer.request(5, "Echo")
    assert (await peer.response())[1].status.code == Code.OK
    for stale in (5, 3):
        await peer.request(stale, "Echo")
        stream_id, response = await peer.response()
        assert (stream_id, response.status.code) == (stale, Code.INVALID_ARGUMENT)
    peer.close()


async def test_unparsable_request_envelope_is_invalid_argument(server):
    _, address = server
    peer = await RawPeer.connect(address)
    await peer.send(encode_frame(1, TYPE_REQUEST, b"\x0a\xff"))
    stream_id, response = await peer.response()
    assert (stream_id, response.status.code) == (1, Code.INVALID_ARGUMENT)
    peer.close()


async def test_oversized_frame_is_answered_and_connection_kept(server):
    _, address = server
    peer = await RawPeer.connect(address)
    too_big = MAX_MESSAGE_SIZE + 1
    await peer.send(encode_header(too_big, 1, TYPE_REQUEST) + b"\0" * too_big)
    stream_id, response = await peer.response()
    assert stream_id == 1
    assert response.status.code == Code.RESOURCE_EXHAUSTED
    assert response.status.message == (
        "message length 4194305 exceed maximum message size of 4194304"
    )
    await peer.request(3, "Echo", bytes_value(b"after"))
    stream_id, response = await peer.response()
    assert (stream_id, parse_value(response.payload)) == (3, b"after")
    peer.close()


async def test_unknown_frame_type_closes_only_that_connection(server, caplog):
    caplog.set_level(logging.WARNING, logger="ttrpc")
    _, address = server
    bystander = await ttrpc.Client.connect(address)
    peer = await RawPeer.connect(address)
    await peer.send(encode_header(3, 1, 0x7F) + b"abc")
    assert await peer.closed_by_server()
    assert "unknown frame type 127" in caplog.text
    assert await bystander.call(ECHO_SERVICE, "Echo", b"") == b""
    await bystander.close()


async def test_response_frame_from_a_client_closes_the_connection(server):
    _, address = server
    peer = await RawPeer.connect(address)
    await peer.send(encode_frame(1, TYPE_RESPONSE, b""))
    assert await peer.closed_by_server()
    await still_serving(address)


async def test_peer_vanishing_mid_frame_is_logged_and_harmless(server, caplog):
    caplog.set_level(logging.WARNING, logger="ttrpc")
    _srv, address = server
    peer = await RawPeer.connect(address)
    frame = encode_frame(1, TYPE_REQUEST, Request(service=ECHO_SERVICE).SerializeToString())
    await peer.send(frame[:7])
    peer.close()
    for _ in range(100):
        if "middle of a frame" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert "middle of a frame" in caplog.text
    await still_serving(address)


async def test_peer_vanishing_with_calls_in_flight_cancels_them(server, echo_service):
    _srv, address = server
    peer = await RawPeer.connect(address)
    await peer.request(1, "Sleep", bytes_value(b"30"))
    for _ in range(100):
        if echo_service.started:
            break
        await asyncio.sleep(0.01)
    peer.close()
    for _ in range(100):
        if echo_service.cancelled:
            break
        await asyncio.sleep(0.01)
    assert echo_service.cancelled == [1]
    await still_serving(address)


@pytest.mark.parametrize("seed", range(20))
async def test_fuzz_random_bytes_never_take_the_server_down(server, seed):
    _, address = server
    rng = random.Random(seed)
    peer = await RawPeer.connect(address)
    for _ in range(rng.randrange(1, 6)):
        kind = rng.random()
        if kind < 0.4:  # pure noise
            blob = rng.randbytes(rng.randrange(1, 4096))
        elif kind < 0.8:  # a plausible header with a random body
            length = rng.randrange(0, 2048)
            blob = encode_header(length, rng.randrange(0, 64), rng.choice((1, 2, 3, 4)))
            blob += rng.randbytes(rng.randrange(0, length + 1))
        else:  # a well-formed frame holding a mutated request
            data = bytearray(
                Request(service=ECHO_SERVICE, method="Echo", payload=b"abc").SerializeToString()
            )
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            blob = encode_frame(rng.randrange(1, 100) | 1, TYPE_REQUEST, bytes(data))
        try:
            await peer.send(blob)
        except ConnectionError:
            break
    peer.close()
    await still_serving(address)


async def test_many_hostile_connections_at_once(server):
    _, address = server

    async def noise(seed: int) -> None:
        rng = random.Random(1000 + seed)
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, unix_path(address))
        with contextlib.suppress(ConnectionError):
            await asyncio.get_running_loop().sock_sendall(sock, rng.randbytes(10000))
        sock.close()

    await asyncio.gather(*(noise(i) for i in range(50)))
    await still_serving(address)
