"""The shim under an interpreter without pykata's packages, and a daemon that dies at start-up.

A fresh machine's global `python3` has none of pykata's dependencies; the
checkout's script must then find pykata's interpreter or say what is missing,
and a daemon that cannot start must say why to containerd (in `start`'s output,
which `ctr` prints, and on the bundle's `log` FIFO, which containerd copies into
its own log).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from integration.containerd_env import bare_python_dir
from protos.containerd.task.v2 import shim_pb2
from shim.interpreter import REQUIRED_MODULES, missing_distributions
from shim.paths import socket_address

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "containerd-shim-pykata-v2"
PLANTED = "planted failure: this structlog is broken on purpose"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A python3 with the standard library only."""
    return str(bare_python_dir(tmp_path_factory.mktemp("bare")) / "python3")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYKATA_")}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def test_this_interpreter_has_every_dependency():
    assert missing_distributions() == []


def test_bare_interpreter_lacks_them_all(bare_python):
    code = "from shim.interpreter import missing_distributions as m; print(','.join(m()))"
    out = subprocess.run([bare_python, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=_env(), check=True)
    assert out.stdout.strip().split(",") == list(REQUIRED_MODULES.values())


def test_without_any_usable_interpreter_start_names_what_is_missing(bare_python, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    # as if already re-executed once: no other interpreter is tried
    env = _env(PYKATA_SHIM_REEXEC="/elsewhere/python3")
    result = subprocess.run(
        [bare_python, str(SHIM), "-namespace", "n", "-id", "c1", "-address", "/x", "start"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "containerd-shim-pykata-v2 start:" in result.stderr
    assert "lacks pykata's dependencies: structlog, protobuf, pyroute2, qemu.qmp" in result.stderr
    assert "make setup" in result.stderr and "PYKATA_PYTHON" in result.stderr
    assert not (tmp_path / "address").exists()


def test_bare_interpreter_reexecutes_with_pykatas_own(bare_python, tmp_path):
    env = _env(PYKATA_PYTHON=sys.executable, PYKATA_STATE_ROOT=str(tmp_path / "state"))
    result = subprocess.run(
        [bare_python, str(SHIM), "-namespace", "n", "-id", "gone", "-bundle", str(tmp_path),
         "delete"],
        cwd=tmp_path, capture_output=True, env=env, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert shim_pb2.DeleteResponse.FromString(result.stdout).exit_status == 137


def _drain(fd: int) -> bytes:
    """What a non-blocking reader of the log FIFO holds now."""
    logged = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return logged
        if not chunk:
            return logged
        logged += chunk


def test_daemon_dying_at_import_fails_start_with_its_reason_and_logs_the_traceback(tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "structlog.py").write_text(f"raise RuntimeError({PLANTED!r})\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"annotations": {}}))
    os.mkfifo(bundle / "log")
    reader = os.open(bundle / "log", os.O_RDWR | os.O_NONBLOCK)  # as containerd opens it
    containerd_address = str(tmp_path / "c.sock")
    cid = f"startup-{os.getpid()}"
    try:
        result = subprocess.run(
            [sys.executable, str(SHIM), "-namespace", "pykata-test", "-address",
             containerd_address, "-id", cid, "start"],
            cwd=bundle, capture_output=True, text=True, timeout=60,
            env=_env(PYTHONPATH=str(planted)),
        )
        logged = _drain(reader)
    finally:
        os.close(reader)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "shim daemon failed to start" in result.stderr
    assert f"RuntimeError: {PLANTED}" in result.stderr
    text = logged.decode()
    assert "Traceback (most recent call last)" in text
    assert f"RuntimeError: {PLANTED}" in text
    socket_path = socket_address(containerd_address, "pykata-test", cid).removeprefix("unix://")
    assert not os.path.exists(socket_path)
    assert not (bundle / "address").exists()


def test_a_daemon_told_to_shut_down_removes_its_socket_and_exits_cleanly(tmp_path):
    import asyncio

    import ttrpc
    from shim.vmm import procs

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"annotations": {}}))
    os.mkfifo(bundle / "log")
    reader = os.open(bundle / "log", os.O_RDWR | os.O_NONBLOCK)
    containerd_address = str(tmp_path / "c.sock")
    cid = f"shutdown-{os.getpid()}"
    try:
        result = subprocess.run(
            [sys.executable, str(SHIM), "-namespace", "pykata-test", "-address",
             containerd_address, "-id", cid, "start"],
            cwd=bundle, capture_output=True, text=True, timeout=60, env=_env(),
        )
        assert result.returncode == 0, result.stderr
        socket_path = result.stdout.strip().removeprefix("unix://")
        task = shim_pb2.DESCRIPTOR.services_by_name["Task"]

        async def shut_down() -> int:
            client = await ttrpc.Client.connect(socket_path)
            stub = ttrpc.Stub(client, task)
            pid = (await stub.Connect(shim_pb2.ConnectRequest(id=cid))).shim_pid
            await stub.Shutdown(shim_pb2.ShutdownRequest(id=cid))
            await client.close()
            return pid

        pid = asyncio.run(shut_down())
        for _ in range(200):
            if not procs.is_running(pid, None):
                break
            asyncio.run(asyncio.sleep(0.05))
        assert not procs.is_running(pid, None), "the daemon did not exit"
        assert not os.path.exists(socket_path)
        logged = _drain(reader)
    finally:
        os.close(reader)
    text = logged.decode()
    assert "shim exiting" in text
    assert "shim daemon failed" not in text and "Traceback" not in text, text
