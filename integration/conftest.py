"""Fixtures for integration tests: a private containerd, a busybox image, the Go ttrpc peer."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gottrpc.build import build_gottrpc  # noqa: E402
from integration.containerd_env import (  # noqa: E402
    PrivateContainerd,
    _mounts_under,
    _pids_with_arg,
    import_busybox,
)
from integration.containerd_versions import containerd_for  # noqa: E402


def _require(*binaries: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.fail(f"missing host binaries: {', '.join(missing)} (see `make host-packages`)")
    if os.geteuid() != 0:
        pytest.fail("needs root (containerd, mounts)")


@pytest.fixture(scope="session")
def containerd() -> Iterator[PrivateContainerd]:
    """A started private containerd (CRI off), stopped and checked at session end."""
    _require("containerd", "ctr", "runc")
    cd = PrivateContainerd().start()
    try:
        yield cd
    finally:
        cd.stop()
        leftovers = {
            "containerd alive": cd.proc is not None and cd.proc.poll() is None,
            "processes": _pids_with_arg(cd.address),
            "mounts": _mounts_under(cd.dir),
            "dir exists": cd.dir.exists(),
        }
        bad = {k: v for k, v in leftovers.items() if v}
        if bad:
            raise AssertionError(f"private containerd left things behind: {bad}")


def _check_stopped(cd: PrivateContainerd) -> None:
    leftovers = {
        "containerd alive": cd.proc is not None and cd.proc.poll() is None,
        "processes": _pids_with_arg(cd.address),
        "mounts": _mounts_under(cd.dir),
        "dir exists": cd.dir.exists(),
        "shim sockets still served": cd.left_sockets,
    }
    bad = {k: v for k, v in leftovers.items() if v}
    if bad:
        raise AssertionError(f"private containerd left things behind: {bad}")


@pytest.fixture(scope="session")
def containerd_of_line() -> Iterator:
    """get(line) -> (a started private containerd of that line, its busybox image)."""
    _require("runc")
    started: dict[str, tuple[PrivateContainerd, str]] = {}

    def get(line: str) -> tuple[PrivateContainerd, str]:
        if line not in started:
            binaries = containerd_for(line)
            cd = PrivateContainerd(containerd_bin=binaries.containerd, ctr_bin=binaries.ctr)
            cd.start()
            started[line] = (cd, import_busybox(cd))
        return started[line]

    try:
        yield get
    finally:
        for cd, _ in started.values():
            cd.stop()
        for cd, _ in started.values():
            _check_stopped(cd)


@pytest.fixture(scope="session")
def busybox_image(containerd: PrivateContainerd) -> str:
    """The busybox image, imported once into the session containerd; its name."""
    return import_busybox(containerd)


@pytest.fixture(scope="session")
def gottrpc() -> Path:
    """Path of the built Go ttrpc peer (bench/gottrpc)."""
    if shutil.which("go") is None:
        pytest.fail("go not installed (golang-go): run `make host-packages`")
    return build_gottrpc()


class GoServer:
    """A running ``gottrpc serve``; ``.socket`` is its unix socket path."""

    def __init__(self, binary: Path, socket: Path) -> None:
        self.socket = socket
        self.proc = subprocess.Popen(
            [str(binary), "serve", "-socket", str(socket)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 10.0)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != "READY":
            self.stop()
            raise RuntimeError(f"gottrpc serve did not start: {line!r} {self.proc.stderr}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def gottrpc_server(gottrpc: Path) -> Iterator[GoServer]:
    """A ``gottrpc serve`` on a short unix socket path, stopped after the test."""
    d = Path(tempfile.mkdtemp(prefix="gs-", dir="/tmp"))  # short: sun_path < 108 bytes
    try:
        server = GoServer(gottrpc, d / "go.sock")
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)
