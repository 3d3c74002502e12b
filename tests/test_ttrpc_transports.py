"""The same calls over every transport: Unix paths and URIs, fds, socket pairs, pipes."""

import asyncio
import os
import socket
import stat
import subprocess
import sys
import textwrap

import pytest
from conftest import ECHO, ECHO_SERVICE, EchoService, bytes_value, parse_value

import ttrpc
from ttrpc import Code, TTRPCError
from ttrpc.transport import peer_credentials, unix_path


async def echo_ok(conn: ttrpc.Client) -> None:
    assert parse_value(await conn.call(ECHO_SERVICE, "Echo", bytes_value(b"over"))) == b"over"


def make_server(**kwargs) -> ttrpc.Server:
    server = ttrpc.Server(**kwargs)
    server.register(ECHO, EchoService())
    return server


@pytest.mark.parametrize("form", ["path", "uri"])
async def test_unix_path_and_uri(tmp_path, form):
    path = str(tmp_path / "a.sock")
    address = path if form == "path" else f"unix://{path}"
    server = make_server()
    await server.serve_unix(address)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with await ttrpc.Client.connect(address) as conn:
        await echo_ok(conn)
    await server.shutdown()
    assert not os.path.exists(path), "the socket file is removed at shutdown"


async def test_abstract_socket():
    name = f"@pykata-test-{os.getpid()}"
    server = make_server()
    await server.serve_unix(name)
    async with await ttrpc.Client.connect(f"unix://{name}") as conn:
        await echo_ok(conn)
    await server.shutdown()


def test_unix_path_parsing():
    assert unix_path("unix:///run/x.sock") == "/run/x.sock"
    assert unix_path("/run/x.sock") == "/run/x.sock"
    assert unix_path("@abc") == "\0abc"
    with pytest.raises(ValueError, match="unsupported ttrpc address scheme 'tcp'"):
        unix_path("tcp://1.2.3.4:5")
    with pytest.raises(ValueError, match="empty"):
        unix_path("unix://")


async def test_connected_socket_pair():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    server = make_server()
    connection = await server.serve_socket(theirs)
    conn = await ttrpc.Client.from_socket(ours)
    await echo_ok(conn)
    await conn.close()
    await asyncio.wait_for(connection.closed, 5)
    await server.shutdown()


async def test_pipe_pair():
    to_server_r, to_server_w = os.pipe()
    to_client_r, to_client_w = os.pipe()
    server = make_server()
    await server.serve_pipes(to_server_r, to_client_w)
    conn = await ttrpc.Client.from_pipes(to_client_r, to_server_w)
    await asyncio.gather(*(echo_ok(conn) for _ in range(50)))
    big = b"p" * (1 << 20)
    assert parse_value(await conn.call(ECHO_SERVICE, "Echo", bytes_value(big))) == big
    await conn.close()
    await server.shutdown()


async def test_inherited_listener_fd(tmp_path):
    # containerd's pattern: the parent binds the socket, the shim serves fd 3.
    path = str(tmp_path / "fd.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path[:0] = {sys.path!r}
        import ttrpc
        from conftest import ECHO, EchoService
        async def main():
            server = ttrpc.Server()
            server.register(ECHO, EchoService())
            await server.serve_fd(3)
            print("ready", flush=True)
            await asyncio.sleep(30)
        asyncio.run(main())
        """
    )
    fd = listener.fileno()
    child = subprocess.Popen(
        ["bash", "-c", f'exec 3<&{fd} {fd}<&-; exec "$0" -c "$1"', sys.executable, script],
        pass_fds=[fd],
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(__file__),
    )
    try:
        assert child.stdout.readline().strip() == b"ready"
        listener.close()
        async with await ttrpc.Client.connect(path) as conn:
            await echo_ok(conn)
    finally:
        child.kill()
        child.wait()


async def test_peer_credentials_and_same_uid_check(tmp_path):
    path = str(tmp_path / "cred.sock")
    server = make_server(authorize=ttrpc.require_same_uid)
    await server.serve_unix(path)
    async with await ttrpc.Client.connect(path) as conn:
        await echo_ok(conn)
    a, b = socket.socketpair()
    assert peer_credentials(a) == (os.getpid(), os.geteuid(), os.getegid())
    a.close()
    b.close()
    await server.shutdown()


async def test_refused_peer_is_disconnected(tmp_path):
    path = str(tmp_path / "deny.sock")
    server = make_server(authorize=lambda sock: False)
    await server.serve_unix(path)
    conn = await ttrpc.Client.connect(path)
    with pytest.raises(TTRPCError) as caught:
        await conn.call(ECHO_SERVICE, "Echo", b"")
    assert caught.value.code == Code.UNAVAILABLE
    await conn.close()
    await server.shutdown()


def test_import_ttrpc_loads_nothing_of_pykata():
    code = (
        "import sys, time; t = time.perf_counter(); import ttrpc; "
        "print(time.perf_counter() - t); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('shim', 'agent', 'protos', 'guest', 'google', 'asyncio')))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[1] == "[]", "import ttrpc must stay lazy and free of pykata modules"
