"""The monitor socket's HTTP/1.1 server: routing, limits, timeouts, and curl as a client."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat

import pytest

from pykata_common.exposition import CONTENT_TYPE
from shim.monitor.http import MonitorServer, Request
from shim.monitor.overhead import PodOverhead
from shim.monitor.page import agent_families, metrics_page, sandbox_labels
from shim.monitor.parse import parse
from shim.monitor.rpc_metrics import RpcMetrics

CURL = shutil.which("curl")


async def metrics(request: Request):
    return 200, "text/plain; version=0.0.4; charset=utf-8", b"# metrics\nm 1\n"


async def echo(request: Request):
    text = f"{request.method} {len(request.body)} {request.headers.get('content-type', '-')}\n"
    return 200, "text/plain", text.encode() + request.body


async def stats(request: Request):
    path = request.param("path")
    if path is None:
        return 400, "text/plain", "Required parameter path not found"
    return 200, "application/json", f'{{"path": "{path}"}}'


async def crash(request: Request):
    raise RuntimeError("handler bug")


async def slow(request: Request):
    await asyncio.sleep(10)
    return 200, "text/plain", b""


async def bad_reply(request: Request):
    return "200", "text/plain", b""  # type: ignore[return-value]


def routes(server: MonitorServer) -> MonitorServer:
    server.route("/metrics", metrics)
    server.route("/iptables", echo, ("GET", "PUT"))
    server.route("/direct-volume/resize", echo, ("POST",))
    server.route("/direct-volume/stats", stats, ("GET", "POST"))
    server.route("/crash", crash)
    server.route("/slow", slow)
    server.route("/bad", bad_reply)
    return server


@pytest.fixture
async def loop_errors():
    """Anything that reaches the loop's exception handler fails the test."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(None)
    assert errors == []


@pytest.fixture
async def monitor(tmp_path, loop_errors):
    server = routes(MonitorServer(max_body=4096, max_head=2048, idle_timeout=2.0, body_timeout=0.3))
    server.handler_timeout = 0.3
    path = str(tmp_path / "shim-monitor.sock")
    await server.start(path)
    yield server, path
    await server.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return status, headers, body


async def exchange(path: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionResetError:  # closed with our request unread
        return True


async def test_get_metrics_and_keep_alive(monitor):
    _, path = monitor
    reader, writer = await asyncio.open_unix_connection(path)
    for _ in range(2):
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert body == b"# metrics\nm 1\n"
        assert "connection" not in headers
    writer.write(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (200, "close")
    assert await closed_by_peer(reader)
    writer.close()


async def test_http_1_0_closes_after_the_answer(monitor):
    _, path = monitor
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await closed_by_peer(reader)
    writer.close()


async def test_absolute_form_target_and_query_parameters(monitor):
    _, path = monitor
    status, _, body = await exchange(path, b"GET http://x/metrics HTTP/1.1\r\n\r\n")
    assert (status, body) == (200, b"# metrics\nm 1\n")
    request = b"GET /direct-volume/stats?path=%2Fvol%20a HTTP/1.1\r\n\r\n"
    status, headers, body = await exchange(path, request)
    assert (status, headers["content-type"], body) == (
        200,
        "application/json",
        b'{"path": "/vol a"}',
    )
    status, _, body = await exchange(path, b"GET /direct-volume/stats HTTP/1.1\r\n\r\n")
    assert (status, body) == (400, b"Required parameter path not found")


async def test_unknown_path_is_404_and_wrong_method_405_with_allow(monitor):
    _, path = monitor
    status, headers, _ = await exchange(path, b"GET /nope HTTP/1.1\r\n\r\n")
    assert (status, headers["connection"]) == (404, "close")
    status, headers, _ = await exchange(path, b"DELETE /iptables HTTP/1.1\r\n\r\n")
    assert (status, headers["allow"]) == (405, "GET, PUT")
    status, _, _ = await exchange(path, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
    assert status == 405


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"HELLO\r\n\r\n", 400),
        (b"get /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"GET /metrics HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nBad : spacing\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"PUT /iptables HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400),
        (b"PUT /iptables HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        (
            b"PUT /iptables HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"PUT /iptables HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"PUT /iptables HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
        (b"GET /direct-volume/stats?path=%ff HTTP/1.1\r\n\r\n", 400),
    ],
)
async def test_malformed_requests_are_refused_and_closed(monitor, data, status):
    _, path = monitor
    got, headers, _ = await exchange(path, data)
    assert (got, headers["connection"]) == (status, "close")


async def test_bodies_by_length_and_chunked(monitor):
    _, path = monitor
    request = (
        b"PUT /iptables HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nrules"
    )
    status, _, body = await exchange(path, request)
    assert (status, body) == (200, b"PUT 5 text/plain\nrules")
    chunked = (
        b"POST /direct-volume/resize HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\nTrailer: x\r\n\r\n'
    )
    status, _, body = await exchange(path, chunked)
    assert (status, body) == (200, b'POST 8 -\n{"a": 1}')


async def test_body_limits(monitor):
    _, path = monitor
    status, _, body = await exchange(
        path, b"PUT /iptables HTTP/1.1\r\nContent-Length: 4097\r\n\r\n"
    )
    assert status == 413 and b"4096" in body
    chunks = b"".join(b"800\r\n" + b"x" * 0x800 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    request = b"PUT /iptables HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    status, _, _ = await exchange(path, request)
    assert status == 413
    status, _, _ = await exchange(path, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 3000 + b"\r\n\r\n")
    assert status == 431


async def test_expect_100_continue(monitor):
    _, path = monitor
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"PUT /iptables HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"abc")
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"PUT 3 -\nabc")
    writer.close()


async def test_handler_failures_become_5xx_and_the_server_goes_on(monitor):
    _, path = monitor
    status, _, body = await exchange(path, b"GET /crash HTTP/1.1\r\n\r\n")
    assert status == 500 and b"handler bug" in body
    status, _, _ = await exchange(path, b"GET /slow HTTP/1.1\r\n\r\n")
    assert status == 504
    status, _, _ = await exchange(path, b"GET /bad HTTP/1.1\r\n\r\n")
    assert status == 500
    status, _, _ = await exchange(path, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == 200


async def test_idle_and_slow_connections_are_closed(tmp_path, loop_errors):
    server = routes(MonitorServer(idle_timeout=0.2, body_timeout=0.2))
    path = str(tmp_path / "m.sock")
    await server.start(path)
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        assert await closed_by_peer(reader)  # sent nothing
        writer.close()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET /metr")  # a head that never ends
        assert await closed_by_peer(reader)
        writer.close()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"PUT /iptables HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        status, _, _ = await read_response(reader)
        assert status == 408
        assert await closed_by_peer(reader)
        writer.close()
    finally:
        await server.close()


async def test_a_stalled_peer_does_not_hold_up_others(monitor):
    _, path = monitor
    _, stalled = await asyncio.open_unix_connection(path)
    stalled.write(b"PUT /iptables HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
    results = await asyncio.gather(
        *(exchange(path, b"GET /metrics HTTP/1.1\r\n\r\n") for _ in range(10))
    )
    assert [status for status, _, _ in results] == [200] * 10
    stalled.close()


async def test_peers_that_hang_up_mid_request_leave_no_error(monitor):
    server, path = monitor
    for data in (
        b"GET /metrics HTTP/1.1\r\n",
        b"PUT /iptables HTTP/1.1\r\nContent-Length: 9\r\n\r\n",
    ):
        _, writer = await asyncio.open_unix_connection(path)
        writer.write(data)
        await writer.drain()
        writer.close()
    await asyncio.sleep(0.1)
    status, _, _ = await exchange(path, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == 200
    for _ in range(100):
        if server.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert server.connections == 0


async def test_connection_cap(tmp_path, loop_errors):
    server = routes(MonitorServer(max_connections=2))
    path = str(tmp_path / "m.sock")
    await server.start(path)
    try:
        held = [await asyncio.open_unix_connection(path) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert server.connections == 2
        status, _, body = await exchange(path, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert (status, body) == (503, b"too many connections\n")
        for _, writer in held:
            writer.close()
    finally:
        await server.close()


async def test_socket_mode_and_close_ends_connections_and_removes_the_socket(monitor):
    server, path = monitor
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert server.path == path
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
    await read_response(reader)
    await server.close()
    assert await closed_by_peer(reader)
    assert not os.path.exists(path) and server.path is None
    writer.close()
    await server.close()  # twice is fine


async def test_a_stale_socket_file_is_replaced(tmp_path, loop_errors):
    path = str(tmp_path / "m.sock")
    first = routes(MonitorServer())
    await first.start(path)
    first._server.close()  # type: ignore[union-attr]  # as if the old shim died
    async with routes(MonitorServer()) as second:
        await second.start(path)
        status, _, _ = await exchange(path, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status == 200


async def test_an_unauthorized_peer_gets_no_answer(tmp_path, loop_errors):
    seen = []

    def refuse(sock):
        seen.append(sock.family)
        return False

    async with routes(MonitorServer(authorize=refuse)) as server:
        path = str(tmp_path / "m.sock")
        await server.start(path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        assert await closed_by_peer(reader)
        writer.close()
    assert len(seen) == 1


# -- curl --------------------------------------------------------------------


async def curl(path: str, *args: str) -> tuple[int, bytes]:
    process = await asyncio.create_subprocess_exec(
        CURL,  # type: ignore[arg-type]
        "-sS",
        "--max-time",
        "10",
        "--unix-socket",
        path,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err
    body, _, code = out.rpartition(b"\n")
    return int(code), body


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_get_post_put(monitor, tmp_path):
    _, path = monitor
    assert await curl(path, "http://x/metrics") == (200, b"# metrics\nm 1\n")
    assert await curl(path, "http://x/nope") == (404, b"no such path: /nope\n")
    assert await curl(path, "-X", "DELETE", "http://x/iptables") == (405, b"DELETE not allowed\n")
    code, body = await curl(
        path, "-d", '{"VolumePath": "/v", "Size": 1}', "http://x/direct-volume/resize"
    )
    assert (code, body) == (
        200,
        b'POST 31 application/x-www-form-urlencoded\n{"VolumePath": "/v", "Size": 1}',
    )
    rules = tmp_path / "rules"
    rules.write_bytes(b"-A INPUT -j ACCEPT\n" * 200)  # over 1 KiB: curl sends Expect: 100-continue
    code, body = await curl(path, "-X", "PUT", "--data-binary", f"@{rules}", "http://x/iptables")
    assert code == 200 and body.startswith(b"PUT 3800 ")
    code, body = await curl(
        path, "-G", "--data-urlencode", "path=/a b", "http://x/direct-volume/stats"
    )
    assert (code, body) == (200, b'{"path": "/a b"}')


# -- the /metrics page served end to end ------------------------------------------

AGENT_TEXT = (
    "# HELP kata_guest_meminfo Guest memory.\n"
    "# TYPE kata_guest_meminfo gauge\n"
    'kata_guest_meminfo{item="mem_total"} 2.097152e+09\n'
    "# HELP process_open_fds Agent fds.\n"
    "# TYPE process_open_fds gauge\n"
    "process_open_fds 9\n"
    "# TYPE kata_shim_fds gauge\n"  # not the guest's to say: dropped
    "kata_shim_fds 1\n"
)


def test_sandbox_labels_and_agent_renaming():
    assert sandbox_labels("sb") == {"sandbox_id": "sb"}
    assert sandbox_labels("sb", cri_uid="u", cri_name="n", cri_namespace="default") == {
        "sandbox_id": "sb",
        "cri_uid": "u",
        "cri_name": "n",
        "cri_namespace": "default",
    }
    names = [f.name for f in agent_families(AGENT_TEXT)]
    assert names == ["kata_guest_meminfo", "kata_agent_process_open_fds"]


async def test_metrics_page_over_the_socket(tmp_path, loop_errors):
    child = await asyncio.create_subprocess_exec("sleep", "30")
    rpc = RpcMetrics()
    rpc.observe_task("containerd.task.v2.Task", "Create", 0.012, 0)
    overhead = PodOverhead()
    processes = [
        ("kata_shim", os.getpid(), None),
        ("kata_hypervisor", child.pid, None),
        ("kata_virtiofsd", None, None),
    ]

    async def serve_metrics(request: Request):
        body = await metrics_page(
            processes,
            labels=sandbox_labels("sb1", cri_namespace="default"),
            rpc=rpc,
            overhead=overhead,
            agent_text=AGENT_TEXT,
        )
        return 200, CONTENT_TYPE, body

    server = MonitorServer()
    server.route("/metrics", serve_metrics)
    path = str(tmp_path / "shim-monitor.sock")
    await server.start(path)
    try:
        status, headers, body = await exchange(path, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert (status, headers["content-type"]) == (200, CONTENT_TYPE)
        families = {f.name: f for f in parse(body.decode(), strict=True)}
        for name in (
            "kata_shim_proc_status",
            "kata_shim_fds",
            "kata_hypervisor_proc_status",
            "kata_hypervisor_netdev",
            "kata_shim_rpc_durations_histogram_milliseconds",
            "kata_shim_pod_overhead_memory_in_bytes",
            "kata_shim_pod_overhead_cpu",
            "kata_guest_meminfo",
            "kata_agent_process_open_fds",
        ):
            assert name in families, name
            for sample in families[name].samples:
                assert sample.labels[:2] == (("sandbox_id", "sb1"), ("cri_namespace", "default"))
        assert families["kata_shim_fds"].kind == "gauge"
        assert len(families["kata_shim_fds"].samples) == 1
        assert not any(name.startswith("kata_virtiofsd") for name in families)
        if CURL is not None:
            code, text = await curl(path, "http://x/metrics")
            assert code == 200 and b'kata_hypervisor_threads{sandbox_id="sb1"' in text
    finally:
        await server.close()
        child.kill()
        await child.wait()
