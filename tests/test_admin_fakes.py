"""Stand-ins for the admin CLI tests: a state root with sandboxes whose monitor sockets
are served by the real shim/monitor/http.py server (in a thread with its own loop),
with simple handlers in place of a sandbox's routes. No tests here."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim import paths
from shim.monitor.http import MonitorServer, Request

PAGE_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FakeSandbox:
    """The routes of one sandbox's monitor socket, and what it was sent."""

    def __init__(self, sandbox_id: str) -> None:
        self.id = sandbox_id
        self.rules = {"/iptables": b"*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "/ip6tables": b""}
        self.puts: list[tuple[str, str, bytes]] = []  # (path, content type, body)
        self.resizes: list[dict] = []
        self.stats_paths: list[str] = []

    def page(self) -> str:
        return (
            "# HELP kata_hypervisor_threads Threads of QEMU.\n"
            "# TYPE kata_hypervisor_threads gauge\n"
            f'kata_hypervisor_threads{{sandbox_id="{self.id}"}} 7\n'
            "# HELP kata_guest_load Guest load.\n"
            "# TYPE kata_guest_load gauge\n"
            'kata_guest_load{item="load1"} 0.5\n'
            "# HELP go_goroutines Goroutines.\n"
            "# TYPE go_goroutines gauge\n"
            "go_goroutines 3\n"
        )

    async def metrics(self, request: Request):
        return 200, PAGE_CONTENT_TYPE, self.page()

    async def agent_url(self, request: Request):
        return 200, "text/plain", "vsock://3:1024"

    async def iptables(self, request: Request):
        if request.method == "PUT":
            content_type = request.headers.get("content-type", "")
            self.puts.append((request.path, content_type, request.body))
            self.rules[request.path] = request.body
            return 200, "text/plain", b""
        return 200, "text/plain", self.rules[request.path]

    async def stats(self, request: Request):
        path = request.param("path")
        if path is None:
            return 400, "text/plain", "Required parameter path not found"
        self.stats_paths.append(path)
        body = {"capacity": 1 << 30, "used": 4096, "available": (1 << 30) - 4096, "path": path}
        return 200, "application/json", json.dumps(body)

    async def resize(self, request: Request):
        self.resizes.append(json.loads(request.body))
        return 200, "text/plain", b""

    def server(self) -> MonitorServer:
        server = MonitorServer()
        server.route("/metrics", self.metrics)
        server.route("/agent-url", self.agent_url)
        server.route("/iptables", self.iptables, ("GET", "PUT"))
        server.route("/ip6tables", self.iptables, ("GET", "PUT"))
        server.route("/direct-volume/stats", self.stats, ("GET", "POST"))
        server.route("/direct-volume/resize", self.resize, ("POST",))
        return server


class LoopThread:
    """An event loop in a thread, so synchronous CLI code can call servers on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Node:
    """A state root with sandboxes in it (PYKATA_STATE_ROOT for subprocesses)."""

    def __init__(self, root: Path, loop: LoopThread) -> None:
        self.root = root
        self.loop = loop
        self.servers: list[MonitorServer] = []

    def state_dir(self, sandbox_id: str, namespace: str = "k8s.io", **record) -> Path:
        state = self.root / namespace / sandbox_id
        state.mkdir(parents=True, exist_ok=True)
        data = {"namespace": namespace, "sandbox_id": sandbox_id, "shim_pid": 0, "containers": {}}
        data.update(record)
        (state / paths.SANDBOX_FILE).write_text(json.dumps(data))
        return state

    def serve(self, sandbox_id: str, namespace: str = "k8s.io") -> FakeSandbox:
        """A sandbox whose monitor socket answers."""
        fake = FakeSandbox(sandbox_id)
        socket_path = self.state_dir(sandbox_id, namespace) / paths.MONITOR_SOCKET
        server = fake.server()
        self.loop.run(server.start(str(socket_path)))
        self.servers.append(server)
        return fake

    def dead(self, sandbox_id: str, namespace: str = "k8s.io") -> Path:
        """A sandbox whose shim died: its socket file is there, nobody listens."""
        import socket

        socket_path = self.state_dir(sandbox_id, namespace) / paths.MONITOR_SOCKET
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(socket_path))
        sock.close()
        return socket_path

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYKATA_STATE_ROOT": str(self.root)}

    def close(self) -> None:
        for server in self.servers:
            self.loop.run(server.close())


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: socket paths must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="pka-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def node(short_tmp, monkeypatch) -> Iterator[Node]:
    """A state root the in-process CLI uses (shim.paths patched) with a server loop."""
    root = short_tmp / "state"
    root.mkdir()
    monkeypatch.setattr(paths, "STATE_ROOT", root)
    monkeypatch.setattr(paths, "DIRECT_VOLUMES_ROOT", root / "direct-volumes")
    loop = LoopThread()
    fake_node = Node(root, loop)
    yield fake_node
    fake_node.close()
    loop.close()
