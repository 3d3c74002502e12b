"""Hybrid vsock from the host: the `CONNECT 1024` handshake against a fake daemon, hostile
answers refused within 64 bytes, and the agent client over it (calls, reconnects)."""

from __future__ import annotations

import asyncio

import pytest
from fake_hvsock import OK, FakeHybridVsock, agent_server

import ttrpc
from shim import hybrid_vsock
from shim.agent_client import AgentAddress, AgentClient
from shim.hybrid_vsock import MAX_REPLY, HandshakeError, parse_reply


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "hvsock.sock")


async def test_connect_sends_connect_and_leaves_what_follows_the_answer(path):
    fake = FakeHybridVsock(path, reply=OK + b"first ttrpc bytes")
    try:
        sock = await hybrid_vsock.connect(path, 1024, timeout=5)
        try:
            got = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 100), 5)
        finally:
            sock.close()
        assert fake.requests == [b"CONNECT 1024\n"]
        assert got == b"first ttrpc bytes"  # nothing after the newline was consumed
    finally:
        await fake.close()


@pytest.mark.parametrize("line, port", [(b"OK 0\n", 0), (b"OK 1073741824\n", 1073741824),
                                        (b"OK 4294967295\n", 4294967295)])
def test_good_answers(line, port):
    assert parse_reply(line) == port


@pytest.mark.parametrize("line", [
    b"", b"OK\n", b"OK \n", b"ok 5\n", b"OK 5", b"OK 5 \n", b"OK -5\n", b"OK +5\n",
    b"OK 0x10\n", b"OK 4294967296\n", b"OK 12345678901\n", b"OK 5\r\n", b" OK 5\n",
    b"ERR connection refused\n", b"OK \xff\n", b"OK 5\nOK 6\n",
])
def test_anything_but_ok_digits_newline_is_refused(line):
    with pytest.raises(HandshakeError):
        parse_reply(line)


@pytest.mark.parametrize("reply, says", [
    (b"ERR no listener\n", "not an OK answer"),
    (b"OK 12a\n", "not an OK answer"),
    (b"A" * 10_000, f"within {MAX_REPLY} bytes"),
    (b"OK " + b"9" * 200 + b"\n", f"within {MAX_REPLY} bytes"),
    (None, "closed before answering CONNECT 1024"),
])
async def test_hostile_or_failed_answers_are_connection_errors(path, reply, says):
    fake = FakeHybridVsock(path, reply=reply)
    try:
        with pytest.raises(HandshakeError, match=says):
            await hybrid_vsock.connect(path, 1024, timeout=5)
    finally:
        await fake.close()


@pytest.mark.parametrize("reply", [b"", b"OK 5"])
async def test_a_silent_or_unfinished_answer_times_out(path, reply):
    fake = FakeHybridVsock(path, reply=reply)
    try:
        with pytest.raises(TimeoutError):
            await hybrid_vsock.connect(path, 1024, timeout=0.2)
    finally:
        await fake.close()


@pytest.mark.parametrize("give_up", ["timeout", "cancel"])
async def test_a_dial_given_up_on_is_closed_only_after_its_answer(path, give_up):
    """vhost-device-vsock 0.3 dies (its worker thread) writing OK into a closed socket:
    a dial that times out or is cancelled after CONNECT went out leaves its socket open
    until the answer came, and the next dial is answered."""
    fake = FakeHybridVsock(path, reply=OK, answer_after=0.3)
    try:
        if give_up == "timeout":
            with pytest.raises(TimeoutError):
                await hybrid_vsock.connect(path, 1024, timeout=0.1)
        else:
            dial = asyncio.ensure_future(hybrid_vsock.connect(path, 1024, timeout=5))
            await asyncio.sleep(0.1)
            dial.cancel()
            with pytest.raises(asyncio.CancelledError):
                await dial
        assert fake.requests == [b"CONNECT 1024\n"]
        assert hybrid_vsock.abandoned() == 1  # still waiting for its answer
        for _ in range(100):
            if not hybrid_vsock.abandoned():
                break
            await asyncio.sleep(0.02)
        assert hybrid_vsock.abandoned() == 0  # answered, then closed
        assert fake.answers_into_closed == 0
        sock = await hybrid_vsock.connect(path, 1024, timeout=5)
        sock.close()
    finally:
        await fake.close()


async def test_no_daemon_is_an_oserror(path):
    with pytest.raises(OSError):
        await hybrid_vsock.connect(path, 1024, timeout=1)


def test_address():
    address = AgentAddress(hvsock_path="/run/pykata/ns/pod/hvsock.sock")
    assert str(address) == "hvsock:///run/pykata/ns/pod/hvsock.sock:1024"
    with pytest.raises(ValueError):
        AgentAddress(hvsock_path="/x", unix_path="/y")
    with pytest.raises(ValueError):
        AgentAddress(hvsock_path="/x", vsock_cid=3)


async def test_agent_client_calls_and_reconnects_over_hybrid_vsock(path):
    fake = FakeHybridVsock(path, agent_server())
    client = AgentClient(AgentAddress(hvsock_path=path), connect_timeout=2)
    try:
        assert (await client.check()).status == 1
        await client.reset()  # the connection broke: the next call dials again
        assert (await client.check()).status == 1
        assert fake.requests == [b"CONNECT 1024\n"] * 2
    finally:
        await client.close()
        await fake.close()


async def test_agent_client_turns_a_hostile_answer_into_unavailable(path):
    fake = FakeHybridVsock(path, reply=b"OK 1 and more\n")
    client = AgentClient(AgentAddress(hvsock_path=path), connect_timeout=2)
    try:
        with pytest.raises(ttrpc.TTRPCError) as err:
            await client.check()
        assert err.value.code == ttrpc.Code.UNAVAILABLE
        assert "hvsock://" in err.value.message and "not an OK answer" in err.value.message
    finally:
        await client.close()
        await fake.close()
