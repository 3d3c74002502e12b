"""Client and server together: results, statuses, deadlines, concurrency, sizes."""

import asyncio
import logging

import pytest
from conftest import ECHO, ECHO_SERVICE, BytesValue, bytes_value, parse_value

import ttrpc
from ttrpc import Code, TTRPCError
from ttrpc.framing import MAX_MESSAGE_SIZE


async def test_typed_stub_round_trip(client):
    stub = ttrpc.Stub(client, ECHO)
    answer = await stub.Echo(BytesValue(value=b"hello"))
    assert answer == BytesValue(value=b"hello")


async def test_empty_payload_both_ways(client):
    assert await client.call(ECHO_SERVICE, "Echo", b"") == b""
    answer = await ttrpc.Stub(client, ECHO).Echo(BytesValue())
    assert answer.value == b""


@pytest.mark.parametrize(
    ("service", "method", "message"),
    [
        ("no.such.Service", "Echo", "service no.such.Service"),
        (ECHO_SERVICE, "Nope", "method Nope"),
        (ECHO_SERVICE, "Missing", "method Missing"),
    ],
)
async def test_unknown_service_or_method_is_unimplemented(client, service, method, message):
    with pytest.raises(TTRPCError) as caught:
        await client.call(service, method, b"")
    assert caught.value.code == Code.UNIMPLEMENTED
    assert caught.value.message == message


async def test_unparsable_payload_is_invalid_argument(client):
    with pytest.raises(TTRPCError) as caught:
        await client.call(ECHO_SERVICE, "Echo", b"\xff\xff\xff")
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert "google.protobuf.BytesValue" in caught.value.message


async def test_handler_error_carries_its_code(client):
    with pytest.raises(TTRPCError) as caught:
        await client.call(ECHO_SERVICE, "Fail", b"")
    assert (caught.value.code, caught.value.message) == (Code.NOT_FOUND, "no such thing")


async def test_unexpected_exception_is_unknown_and_logged(client, caplog):
    caplog.set_level(logging.ERROR, logger="ttrpc")
    with pytest.raises(TTRPCError) as caught:
        await client.call(ECHO_SERVICE, "Crash", b"")
    assert caught.value.code == Code.UNKNOWN
    assert caught.value.message == "handler blew up"
    assert any(r.exc_info and "handler blew up" in str(r.exc_info[1]) for r in caplog.records)


async def test_server_deadline_cancels_the_handler(client, echo_service):
    with pytest.raises(TTRPCError) as caught:
        await client.call(ECHO_SERVICE, "Sleep", bytes_value(b"30"), timeout=0.2)
    assert caught.value.code == Code.DEADLINE_EXCEEDED
    for _ in range(50):
        if echo_service.cancelled:
            break
        await asyncio.sleep(0.02)
    assert echo_service.cancelled == [1]
    # the connection is still good
    assert parse_value(await client.call(ECHO_SERVICE, "Echo", bytes_value(b"ok"))) == b"ok"


async def test_call_within_deadline_succeeds(client):
    answer = await client.call(ECHO_SERVICE, "Sleep", bytes_value(b"0.01"), timeout=10)
    assert parse_value(answer) == b"0.01"


async def test_zero_timeout_fails_before_sending(client, echo_service):
    with pytest.raises(TTRPCError) as caught:
        await client.call(ECHO_SERVICE, "Sleep", bytes_value(b"1"), timeout=0)
    assert caught.value.code == Code.DEADLINE_EXCEEDED
    assert echo_service.started == 0


async def test_metadata_keys_are_lower_cased_and_multi_valued(server):
    _, address = server
    async with await ttrpc.Client.connect(
        address, metadata={"Containerd-Namespace-TTRPC": "k8s.io"}
    ) as conn:
        answer = await conn.call(
            ECHO_SERVICE, "Metadata", bytes_value(b"containerd-namespace-ttrpc")
        )
        assert parse_value(answer) == b"k8s.io"
        answer = await conn.call(
            ECHO_SERVICE, "Metadata", bytes_value(b"x-multi"), metadata={"X-Multi": ["a", "b"]}
        )
        assert parse_value(answer) == b"a,b"


async def test_thousand_concurrent_calls_on_one_connection(client):
    payloads = [f"call-{i}".encode() for i in range(1000)]
    answers = await asyncio.gather(
        *(client.call(ECHO_SERVICE, "Echo", bytes_value(p)) for p in payloads)
    )
    assert [parse_value(a) for a in answers] == payloads


async def test_out_of_order_answers_reach_the_right_callers(client):
    # The first call sleeps longest, so answers come back in reverse order.
    delays = [b"0.3", b"0.2", b"0.1", b"0"]
    order: list[bytes] = []

    async def one(delay: bytes) -> bytes:
        answer = parse_value(await client.call(ECHO_SERVICE, "Sleep", bytes_value(delay)))
        order.append(answer)
        return answer

    answers = await asyncio.gather(*(one(d) for d in delays))
    assert answers == delays
    assert order == list(reversed(delays))


async def test_blocked_call_does_not_block_others(client):
    blocked = asyncio.ensure_future(client.call(ECHO_SERVICE, "Sleep", bytes_value(b"30")))
    for i in range(20):
        assert parse_value(await client.call(ECHO_SERVICE, "Echo", bytes_value(b"%d" % i)))
    assert not blocked.done()
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked


async def test_largest_message_that_fits(client):
    # Request envelope = payload + a few bytes of framing for service/method names
    overhead = len(bytes_value(b"")) + 64
    data = b"z" * (MAX_MESSAGE_SIZE - overhead)
    assert parse_value(await client.call(ECHO_SERVICE, "Echo", bytes_value(data))) == data


async def test_oversized_request_is_refused_locally(client):
    with pytest.raises(TTRPCError) as caught:
        await client.call(ECHO_SERVICE, "Echo", b"x" * (MAX_MESSAGE_SIZE + 1))
    assert caught.value.code == Code.RESOURCE_EXHAUSTED
    assert "exceed maximum message size of 4194304" in caught.value.message
    assert await client.call(ECHO_SERVICE, "Echo", b"") == b""


async def test_oversized_answer_becomes_resource_exhausted(client):
    with pytest.raises(TTRPCError) as caught:
        await client.call(ECHO_SERVICE, "Grow", bytes_value(str(MAX_MESSAGE_SIZE + 1).encode()))
    assert caught.value.code == Code.RESOURCE_EXHAUSTED
    assert caught.value.message.startswith("message length 41943")
    assert await client.call(ECHO_SERVICE, "Echo", b"") == b""


async def test_pending_calls_fail_unavailable_when_server_goes(tmp_path):
    server = ttrpc.Server()
    server.register(ECHO, __import__("conftest").EchoService())
    address = str(tmp_path / "s.sock")
    await server.serve_unix(address)
    conn = await ttrpc.Client.connect(address)
    pending = asyncio.ensure_future(conn.call(ECHO_SERVICE, "Sleep", bytes_value(b"30")))
    await asyncio.sleep(0.05)
    await server.shutdown(grace=0.1)
    with pytest.raises(TTRPCError) as caught:
        await pending
    assert caught.value.code in (Code.UNAVAILABLE, Code.CANCELLED)
    await conn.wait_closed()
    with pytest.raises(TTRPCError) as caught:
        await conn.call(ECHO_SERVICE, "Echo", b"")
    assert caught.value.code == Code.UNAVAILABLE


async def test_graceful_shutdown_lets_short_calls_finish(tmp_path, echo_service):
    server = ttrpc.Server()
    server.register(ECHO, echo_service)
    address = str(tmp_path / "s.sock")
    await server.serve_unix(address)
    conn = await ttrpc.Client.connect(address)
    short = asyncio.ensure_future(conn.call(ECHO_SERVICE, "Sleep", bytes_value(b"0.2")))
    long = asyncio.ensure_future(conn.call(ECHO_SERVICE, "Sleep", bytes_value(b"30")))
    await asyncio.sleep(0.05)
    await server.shutdown(grace=0.5)
    assert parse_value(await short) == b"0.2"
    with pytest.raises(TTRPCError) as caught:
        await long
    assert caught.value.code in (Code.CANCELLED, Code.UNAVAILABLE)
    assert echo_service.cancelled == [3]
    with pytest.raises((ConnectionError, FileNotFoundError)):
        await ttrpc.Client.connect(address)
    await conn.close()


async def test_registering_a_service_twice_is_refused(echo_service):
    server = ttrpc.Server()
    server.register(ECHO, echo_service)
    with pytest.raises(ValueError, match="already registered"):
        server.register(ECHO, echo_service)


def test_sync_handlers_are_refused():
    class Sync:
        def Echo(self, request, context):
            return request

    with pytest.raises(TypeError, match="async def"):
        ttrpc.Server().register(ECHO, Sync())
