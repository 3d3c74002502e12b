"""pykata-runtime monitor: every sandbox's /metrics on one endpoint, like kata-monitor."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import test_admin_fakes as fakes

from shim.admin import run, shim_client
from shim.admin.errors import AdminError
from shim.admin.node_monitor import Listen, NodeMonitor, parse_listen, start
from shim.monitor.http import MonitorServer, Request
from shim.monitor.parse import parse

node = fakes.node  # fixtures
short_tmp = fakes.short_tmp

ROOT = Path(__file__).resolve().parent.parent


def get(target: str) -> Request:
    path, _, query = target.partition("?")
    return Request("GET", path, parse_qs(query), {}, b"")


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list] = {}
    for family in parse(text, strict=True):
        for sample in family.samples:
            out.setdefault(family.name + sample.suffix, []).append(
                (dict(sample.labels), sample.value)
            )
    return out


@pytest.fixture
def three(node):
    """Two sandboxes that answer and one whose shim died."""
    node.serve("pod1")
    node.serve("pod2", "default")
    node.dead("gone")
    return node


async def test_aggregates_answering_sandboxes_and_counts_the_dead_one(three):
    monitor = NodeMonitor()
    status, content_type, body = await monitor.metrics(get("/metrics"))
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    found = samples(body.decode())
    # a sandbox_id the shim set stays (once); one it did not set is added
    assert sorted(found["kata_hypervisor_threads"], key=lambda s: s[0]["sandbox_id"]) == [
        ({"sandbox_id": "pod1"}, 7),
        ({"sandbox_id": "pod2"}, 7),
    ]
    assert sorted(labels["sandbox_id"] for labels, _ in found["kata_guest_load"]) == [
        "pod1",
        "pod2",
    ]
    assert all(labels["item"] == "load1" for labels, _ in found["kata_guest_load"])
    # the Go client's own families are renamed, as kata-monitor does
    assert "go_goroutines" not in found and len(found["kata_shim_go_goroutines"]) == 2
    assert found["kata_monitor_running_shim_count"] == [({}, 3)]
    assert found["kata_monitor_scrape_count"] == [({}, 1)]
    assert found["kata_monitor_scrape_failed_count"] == [({}, 1)]
    assert found["kata_monitor_scrape_durations_histogram_milliseconds_count"] == [({}, 0)]
    _, _, again = await monitor.metrics(get("/metrics"))
    found = samples(again.decode())
    assert found["kata_monitor_scrape_count"] == [({}, 2)]
    assert found["kata_monitor_scrape_failed_count"] == [({}, 2)]
    assert found["kata_monitor_scrape_durations_histogram_milliseconds_count"] == [({}, 1)]
    buckets = found["kata_monitor_scrape_durations_histogram_milliseconds_bucket"]
    assert [labels["le"] for labels, _ in buckets][:3] == ["1", "2", "4"]
    assert buckets[-1] == ({"le": "+Inf"}, 1)


async def test_one_sandbox_and_family_filters(three):
    monitor = NodeMonitor()
    status, _, body = await monitor.metrics(get("/metrics?sandbox=pod2"))
    assert status == 200 and b'kata_hypervisor_threads{sandbox_id="pod2"} 7' in body
    status, _, body = await monitor.metrics(get("/metrics?sandbox=gone"))
    assert status == 500 and b"did not answer" in body
    status, _, body = await monitor.metrics(get("/metrics?sandbox=nope"))
    assert status == 404
    _, _, body = await monitor.metrics(get("/metrics?filter_family=kata_guest,kata_shim_go"))
    assert sorted(samples(body.decode())) == ["kata_guest_load", "kata_shim_go_goroutines"]


async def test_sandboxes_and_agent_url(three):
    monitor = NodeMonitor()
    _, _, body = await monitor.sandboxes(get("/sandboxes"))
    assert body == b"pod2\ngone\npod1\n"  # sorted by namespace, then id
    assert await monitor.agent_url(get("/agent-url?sandbox=pod1")) == (
        200,
        "text/plain; charset=utf-8",
        b"vsock://3:1024\n",
    )
    assert (await monitor.agent_url(get("/agent-url")))[0] == 400
    assert (await monitor.agent_url(get("/agent-url?sandbox=gone")))[0] == 500


async def test_no_sandboxes_still_gives_the_monitor_families(node):
    _, _, body = await NodeMonitor().metrics(get("/metrics"))
    assert samples(body.decode())["kata_monitor_running_shim_count"] == [({}, 0)]


async def test_a_scrape_is_concurrent(node):
    """Three sandboxes taking 0.6 s each answer in about 0.6 s together, not 1.8 s."""

    async def slow(request):
        await asyncio.sleep(0.6)
        return 200, "text/plain", b"m 1\n"

    servers = []
    for name in ("slow1", "slow2", "slow3"):
        server = MonitorServer()
        server.route("/metrics", slow)
        await server.start(str(node.state_dir(name) / "shim-monitor.sock"))
        servers.append(server)
    try:
        t0 = time.monotonic()
        _, _, body = await NodeMonitor(timeout=2.0).metrics(get("/metrics"))
        took = time.monotonic() - t0
    finally:
        for server in servers:
            await server.close()
    assert took < 1.5, took
    assert sorted(labels["sandbox_id"] for labels, _ in samples(body.decode())["m"]) == [
        "slow1",
        "slow2",
        "slow3",
    ]


async def test_a_sandbox_slower_than_the_timeout_is_skipped(node):
    async def stuck(request):
        await asyncio.sleep(5)
        return 200, "text/plain", b""

    server = MonitorServer()
    server.route("/metrics", stuck)
    await server.start(str(node.state_dir("stuck") / "shim-monitor.sock"))
    fake = node.serve("pod1")
    try:
        monitor = NodeMonitor(timeout=0.3)
        _, _, body = await monitor.metrics(get("/metrics"))
    finally:
        await server.close()
    found = samples(body.decode())
    assert found["kata_monitor_scrape_failed_count"] == [({}, 1)]
    assert found["kata_hypervisor_threads"] == [({"sandbox_id": fake.id}, 7)]


@pytest.mark.parametrize(
    ("addr", "listen"),
    [
        ("127.0.0.1:8090", Listen(host="127.0.0.1", port=8090)),
        ("[::1]:8090", Listen(host="::1", port=8090)),
        ("localhost:8090", Listen(host="localhost", port=8090)),
        ("unix:/run/x.sock", Listen(unix="/run/x.sock")),
        ("unix:///run/x.sock", Listen(unix="/run/x.sock")),
    ],
)
def test_parse_listen(addr, listen):
    assert parse_listen(addr) == listen


@pytest.mark.parametrize(
    ("addr", "listen"),
    [
        (":9100", Listen(host="0.0.0.0", port=9100)),
        ("0.0.0.0:9100", Listen(host="0.0.0.0", port=9100)),
        ("[::]:9100", Listen(host="::", port=9100)),
    ],
)
def test_every_interface_must_be_asked_for(addr, listen):
    with pytest.raises(AdminError, match=r"every interface.*--listen-any"):
        parse_listen(addr)
    assert parse_listen(addr, allow_any=True) == listen


@pytest.mark.parametrize("addr", ["8090", "host:", "host:http", "unix:", "h:70000"])
def test_parse_listen_refuses(addr):
    with pytest.raises(AdminError):
        parse_listen(addr)


async def test_served_over_tcp_and_unix(three, short_tmp):
    monitor = NodeMonitor()
    tcp, where = await start(monitor, Listen(host="127.0.0.1", port=0))
    unix, unix_where = await start(monitor, Listen(unix=str(short_tmp / "monitor.sock")))
    try:
        host, port = where.rsplit(":", 1)

        def over_tcp(target):
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                conn.request("GET", target)
                response = conn.getresponse()
                return response.status, response.read()
            finally:
                conn.close()

        status, body = await asyncio.to_thread(over_tcp, "/metrics")
        assert status == 200 and b'sandbox_id="pod1"' in body
        assert await asyncio.to_thread(over_tcp, "/nope") == (404, b"no such path: /nope\n")
        listed = await asyncio.to_thread(shim_client.get, short_tmp / "monitor.sock", "/sandboxes")
        assert listed == b"pod2\ngone\npod1\n"
        assert unix_where == f"unix:{short_tmp / 'monitor.sock'}"
        assert stat.S_IMODE(os.stat(short_tmp / "monitor.sock").st_mode) == 0o600
        with pytest.raises(AdminError, match="another process serves"):
            await start(monitor, Listen(unix=str(short_tmp / "monitor.sock")))
    finally:
        await tcp.close()
        await unix.close()
    assert not (short_tmp / "monitor.sock").exists()


def start_monitor(three, sock: Path, *args: str) -> subprocess.Popen:
    """`pykata-runtime monitor ARGS`, once it serves `sock`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shim.admin", "monitor", *args],
        cwd=ROOT,
        env=three.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() >= deadline:
            proc.kill()
            raise AssertionError(f"monitor did not start: {proc.communicate()}")
        time.sleep(0.05)
    return proc


def test_the_command_serves_until_sigterm(three, short_tmp):
    sock = short_tmp / "m.sock"
    proc = start_monitor(three, sock, "--listen", f"unix:{sock}")
    try:
        body = shim_client.get(sock, "/metrics").decode()
        assert "kata_monitor_scrape_failed_count 1" in body
        assert 'kata_guest_load{sandbox_id="pod2",item="load1"} 0.5' in body
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "serving /metrics and /sandboxes on unix:" in err
    assert not sock.exists()


def test_by_default_it_serves_a_socket_only_its_owner_can_use(three):
    """No --listen: STATE_ROOT/node-monitor.sock, 0600, in a 0700 state root."""
    three.root.chmod(0o755)  # as an older version left it
    sock = three.root / "node-monitor.sock"
    proc = start_monitor(three, sock)
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(three.root.stat().st_mode) == 0o700
        # the socket in the state root is not taken for a namespace
        assert shim_client.get(sock, "/sandboxes") == b"pod2\ngone\npod1\n"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert f"on unix:{sock}" in err


def test_the_command_refuses_every_interface_unless_asked(node, capsys):
    assert run(["monitor", "--listen", ":9100"]) == 1
    err = capsys.readouterr().err
    assert "every interface" in err and "--listen-any" in err and "127.0.0.1:9100" in err
