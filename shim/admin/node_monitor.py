"""`pykata-runtime monitor`: one HTTP endpoint for the node, like kata-monitor.

Routes (kata-monitor's):
  /metrics                  every sandbox's /metrics, scraped concurrently and merged
                            family by family, each sample labelled sandbox_id (a label the
                            shim already set is kept); then the monitor's own families
                            kata_monitor_running_shim_count, _scrape_count,
                            _scrape_failed_count, _scrape_durations_histogram_milliseconds
  /metrics?sandbox=ID       that sandbox's page as its shim serves it
  /metrics?filter_family=A,B  only the sandbox families whose names start with A or B
  /sandboxes                sandbox ids, one a line
  /agent-url?sandbox=ID     the sandbox's agent URL

Nothing is authenticated: whoever can connect reads every pod's metrics (with its CRI
name, namespace and uid) and agent URL. So by default it listens where only its user
(root) can connect, a 0600 unix socket (STATE_ROOT/node-monitor.sock); a TCP address
must be named (loopback lets every local user in), and every interface (`:PORT`,
`0.0.0.0`, `[::]`) also needs --listen-any.

A sandbox whose socket does not answer in time is left out of the page and counted
in kata_monitor_scrape_failed_count (kata-monitor counts a failed page there; here
it is one per sandbox that failed, which says more). Sandboxes are found on each
scrape from the state directories, so no watcher is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from pykata_common.exposition import CONTENT_TYPE, Family, render_bytes, with_labels
from shim import paths
from shim.admin import shim_client
from shim.admin.errors import AdminError
from shim.admin.sandboxes import monitor_socket, sandbox_dirs
from shim.monitor.http import MonitorServer, Reply, Request
from shim.monitor.parse import parse

NODE_SOCKET = "node-monitor.sock"  # the default, under STATE_ROOT
SOCKET_MODE = 0o600  # its owner only: the pages are every pod's
SCRAPE_TIMEOUT = 3.0
# kata-monitor renames these families of a shim's page (they are the Go client's own)
SHIM_RENAMED = ("go_", "process_")
SHIM_PREFIX = "kata_shim_"
DURATION_BOUNDS = tuple(float(2**i) for i in range(10))  # 1 .. 512 ms, as kata-monitor
_TEXT = "text/plain; charset=utf-8"


def _text(status: int, text: str) -> Reply:
    return status, _TEXT, text.encode()


class Listen(NamedTuple):
    """Where the monitor listens: a Unix socket path, or a TCP host and port."""

    unix: str | None = None
    host: str = ""
    port: int = 0


def default_listen() -> str:
    """The 0600 unix socket under STATE_ROOT."""
    return f"unix:{paths.STATE_ROOT / NODE_SOCKET}"


def is_wildcard(host: str) -> bool:
    """Whether binding `host` listens on every interface (empty, 0.0.0.0, ::)."""
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a name: it resolves to the addresses it names


def parse_listen(addr: str, *, allow_any: bool = False) -> Listen:
    """`unix:PATH`, `HOST:PORT`, `[V6ADDR]:PORT`, or with `allow_any`, `:PORT` (all
    interfaces) and the unspecified addresses; AdminError for anything else."""
    if addr.startswith("unix:"):
        path = addr[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise AdminError("unix: needs a socket path")
        return Listen(unix=path)
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise AdminError(f"listen address {addr!r} is not HOST:PORT or unix:PATH")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if is_wildcard(host) and not allow_any:
        raise AdminError(
            f"listen address {addr!r} is every interface: whoever reaches this host would "
            "read every pod's metrics and agent URL, unauthenticated. Give --listen-any "
            f"to mean that, or a loopback address (127.0.0.1:{port_text})"
        )
    return Listen(host=host or "0.0.0.0", port=int(port_text))


class Target(NamedTuple):
    """A sandbox to scrape."""

    sandbox_id: str
    socket: Path


class NodeMonitor:
    """Scrapes the sandboxes under the state root; keeps kata-monitor's counters."""

    def __init__(self, root: Path | None = None, *, timeout: float = SCRAPE_TIMEOUT) -> None:
        self.root = root
        self.timeout = timeout
        self.scrapes = 0
        self.failed = 0
        self._duration_counts = [0] * (len(DURATION_BOUNDS) + 1)
        self._duration_sum = 0.0

    def targets(self) -> list[Target]:
        """Every sandbox on the node and its monitor socket."""
        return [Target(d.name, monitor_socket(d)) for d in sandbox_dirs(self.root)]

    def _find(self, sandbox_id: str) -> Target | None:
        return next((t for t in self.targets() if t.sandbox_id == sandbox_id), None)

    async def _fetch(self, target: Target, path: str) -> bytes | None:
        try:
            return await asyncio.to_thread(
                shim_client.get, target.socket, path, timeout=self.timeout
            )
        except shim_client.ShimCallError:
            return None

    async def scrape(self, targets: Sequence[Target]) -> list[tuple[Target, bytes]]:
        """The /metrics pages of `targets`, fetched at once; a sandbox that fails is counted
        and left out."""
        pages = await asyncio.gather(*(self._fetch(t, "/metrics") for t in targets))
        answered = [(t, page) for t, page in zip(targets, pages, strict=True) if page is not None]
        self.failed += len(targets) - len(answered)
        return answered

    def _observe(self, milliseconds: float) -> None:
        index = next(
            (i for i, bound in enumerate(DURATION_BOUNDS) if milliseconds <= bound),
            len(DURATION_BOUNDS),
        )
        self._duration_counts[index] += 1
        self._duration_sum += milliseconds

    def own_families(self, running: int) -> list[Family]:
        """kata-monitor's families about itself."""
        return [
            Family("kata_monitor_running_shim_count", "Running shim count (sandboxes).").add(
                running
            ),
            Family("kata_monitor_scrape_count", "Scrape count.", "counter").add(self.scrapes),
            Family(
                "kata_monitor_scrape_failed_count",
                "Sandboxes whose metrics could not be scraped.",
                "counter",
            ).add(self.failed),
            Family(
                "kata_monitor_scrape_durations_histogram_milliseconds",
                "Time used to scrape from shims.",
                "histogram",
            ).add_histogram(DURATION_BOUNDS, self._duration_counts, self._duration_sum),
        ]

    async def metrics(self, request: Request) -> Reply:
        """The node page (or one sandbox's, with ?sandbox=)."""
        started = time.monotonic()
        self.scrapes += 1
        try:
            sandbox_id = request.param("sandbox")
            if sandbox_id:
                return await self._one_page(sandbox_id)
            prefixes = [p for p in (request.param("filter_family") or "").split(",") if p]
            targets = self.targets()
            answered = await self.scrape(targets)
            body = await asyncio.to_thread(self._merge, answered, prefixes, len(targets))
            return 200, CONTENT_TYPE, body
        finally:
            # observed after the answer is built, so a scrape shows its predecessors
            self._observe((time.monotonic() - started) * 1000.0)

    async def _one_page(self, sandbox_id: str) -> Reply:
        target = self._find(sandbox_id)
        if target is None:
            return _text(404, f"no sandbox {sandbox_id}\n")
        page = await self._fetch(target, "/metrics")
        if page is None:
            self.failed += 1
            return _text(500, f"sandbox {sandbox_id} did not answer\n")
        return 200, CONTENT_TYPE, page

    def _merge(
        self, answered: Sequence[tuple[Target, bytes]], prefixes: Sequence[str], running: int
    ) -> bytes:
        families: list[Family] = [] if prefixes else self.own_families(running)
        for target, page in answered:
            parsed = parse(page.decode(errors="replace"))
            for family in parsed:
                if family.name.startswith(SHIM_RENAMED):
                    family.name = SHIM_PREFIX + family.name
            if prefixes:
                parsed = [f for f in parsed if f.name.startswith(tuple(prefixes))]
            families.extend(with_labels(parsed, {"sandbox_id": target.sandbox_id}))
        return render_bytes(families)

    async def sandboxes(self, request: Request) -> Reply:
        """Sandbox ids, one a line."""
        return _text(200, "".join(f"{t.sandbox_id}\n" for t in self.targets()))

    async def agent_url(self, request: Request) -> Reply:
        sandbox_id = request.param("sandbox")
        if not sandbox_id:
            return _text(400, "sandbox not given (?sandbox=ID)\n")
        target = self._find(sandbox_id)
        if target is None:
            return _text(404, f"no sandbox {sandbox_id}\n")
        url = await self._fetch(target, "/agent-url")
        if url is None:
            return _text(500, f"sandbox {sandbox_id} did not answer\n")
        return 200, _TEXT, url.rstrip(b"\n") + b"\n"

    def server(self) -> MonitorServer:
        """A MonitorServer with the routes above."""
        server = MonitorServer(handler_timeout=self.timeout * 4)
        server.route("/metrics", self.metrics)
        server.route("/sandboxes", self.sandboxes)
        server.route("/agent-url", self.agent_url)
        return server


async def start(monitor: NodeMonitor, listen: Listen) -> tuple[MonitorServer, str]:
    """Serve `monitor` on `listen`; returns the server and the address it is bound to."""
    server = monitor.server()
    if listen.unix is not None:
        if os.path.exists(listen.unix) and paths.socket_is_served(listen.unix):
            # binding would unlink the socket of a monitor that still serves it
            raise AdminError(f"another process serves {listen.unix}")
        await server.start(listen.unix, mode=SOCKET_MODE)
        return server, f"unix:{listen.unix}"
    host, port = await server.start_tcp(listen.host, listen.port)
    return server, f"{host}:{port}"


async def _serve_until_signalled(listen: Listen) -> None:
    server, where = await start(NodeMonitor(), listen)
    print(f"pykata-runtime monitor: serving /metrics and /sandboxes on {where}", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


def monitor(args: argparse.Namespace) -> int:
    """Run the node endpoint until SIGINT or SIGTERM."""
    address = args.listen or default_listen()
    listen = parse_listen(address, allow_any=args.listen_any)
    try:
        if args.listen is None:
            paths.private_dir(paths.STATE_ROOT)
        asyncio.run(_serve_until_signalled(listen))
    except OSError as exc:
        raise AdminError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    mon = sub.add_parser(
        "monitor",
        help="one metrics endpoint for the node (every sandbox, like kata-monitor)",
        description=(
            "Serves every sandbox's /metrics (with its CRI pod name, namespace and uid), "
            "/sandboxes (their ids) and /agent-url (each guest agent's address), without "
            "authentication, to whoever can connect: by default a unix socket only its "
            f"owner can use ({paths.STATE_ROOT / NODE_SOCKET}, mode 0600). "
            "127.0.0.1:PORT lets every local user in; another interface, whoever reaches it."
        ),
    )
    mon.add_argument(
        "--listen",
        default=None,
        metavar="ADDR",
        help="unix:PATH (a 0600 socket), HOST:PORT or [V6ADDR]:PORT "
        f"(default {default_listen()}; kata-monitor's is 127.0.0.1:8090)",
    )
    mon.add_argument(
        "--listen-any",
        action="store_true",
        help="allow an address on every interface (:PORT, 0.0.0.0:PORT, [::]:PORT): "
        "anyone who reaches the host reads every pod's metrics",
    )
    mon.set_defaults(func=monitor)
