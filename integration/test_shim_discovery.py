"""Whatever directory containerd runs in, the shim it finds works, or says why it cannot.

containerd 1.6 looks for `containerd-shim-pykata-v2` in its own working
directory before PATH: started in the checkout, it runs the checkout's script,
whose `python3` is the first on PATH. Every containerd here has a `python3`
without any packages first on its PATH (as a fresh machine's global one), so
these tests pass only if the shim finds pykata's interpreter by itself.
"""

from __future__ import annotations

import hashlib
import platform
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from integration.containerd_env import PrivateContainerd, _pids_with_arg, import_busybox
from integration.pykata_env import (
    ROOT,
    RUNTIME,
    SHIM_NAME,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)

pytestmark = pytest.mark.integration
PLANTED = "planted failure: this structlog is broken on purpose"


def _shim_script_of(pid: int) -> str:
    """The script a shim process runs (argv[1] of `python SCRIPT ...`)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[1].decode()


@pytest.fixture(scope="module")
def assets() -> None:
    ensure_shim_on_path()
    ensure_guest_assets()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _remove(cd: PrivateContainerd, cid: str) -> None:
    cd.ctr("task", "kill", "-s", "KILL", cid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = cd.ctr("task", "ls").stdout
        if cid not in listed or "STOPPED" in listed:
            break
        time.sleep(0.5)
    cd.ctr("task", "delete", "--force", cid, timeout=120)
    cd.ctr("container", "delete", cid)


@pytest.mark.parametrize("where", ["checkout", "root", "tempdir"])
def test_containerd_in_any_directory_runs_a_working_shim(assets, where, tmp_path):
    cwd = {"checkout": ROOT, "root": Path("/"), "tempdir": tmp_path}[where]
    # from the checkout containerd runs the checkout's script; elsewhere the one on PATH
    expected_script = str(ROOT / SHIM_NAME) if where == "checkout" else ensure_shim_on_path()
    with PrivateContainerd(cwd=cwd) as cd:
        image = import_busybox(cd)
        cid = f"disc-{where}-{uuid.uuid4().hex[:6]}"
        result = cd.ctr("run", "--runtime", RUNTIME, "-d", image, cid, "sleep", "300",
                        timeout=240)
        assert result.returncode == 0, (result.stderr, cd.log_tail())
        try:
            daemons = [p for p in _pids_with_arg(f"-id {cid}") if SHIM_NAME in _cmdline(p)]
            assert len(daemons) == 1, [_cmdline(p) for p in daemons]
            assert _shim_script_of(daemons[0]) == expected_script
            # the daemon's children (QEMU here) never see the start-up hand-over variables
            qemus = [p for p in _pids_with_arg(f"/{cid}/") if "qemu" in _cmdline(p)]
            assert qemus, "no QEMU for the pod"
            environ = Path(f"/proc/{qemus[0]}/environ").read_bytes().split(b"\0")
            internal = (b"PYKATA_SHIM_REEXEC=", b"PYKATA_READY_FD=")
            assert not [e for e in environ if e.startswith(internal)], "internal env leaked"
            run = cd.ctr("task", "exec", "--exec-id", "probe", cid,
                         "sh", "-c", "uname -r; exit 5", timeout=120)
            assert run.returncode == 5, (run.stderr, cd.log_tail())
            kernel = run.stdout.strip()
            assert kernel.startswith("6.1.") and kernel != platform.release(), kernel
        finally:
            _remove(cd, cid)
    assert_nothing_left()


def test_daemon_that_cannot_start_says_why_in_containerd_log_and_ctr(assets):
    with tempfile.TemporaryDirectory(prefix="planted-") as planted:
        Path(planted, "structlog.py").write_text(f"raise RuntimeError({PLANTED!r})\n")
        with PrivateContainerd(env={"PYTHONPATH": planted}) as cd:
            image = import_busybox(cd)
            cid = f"disc-fail-{uuid.uuid4().hex[:6]}"
            result = cd.ctr("run", "--runtime", RUNTIME, "--rm", image, cid, "true",
                            timeout=120)
            assert result.returncode != 0
            assert "shim daemon failed to start" in result.stderr, result.stderr
            assert PLANTED in result.stderr, result.stderr
            assert "ttrpc: closed" not in result.stderr
            log = ""
            for _ in range(50):  # containerd copies the shim's log asynchronously
                log = cd.log_path.read_text(errors="replace")
                if PLANTED in log:
                    break
                time.sleep(0.1)
            assert "Traceback (most recent call last)" in log, cd.log_tail()
            assert f"RuntimeError: {PLANTED}" in log
            cd.ctr("container", "delete", cid)
            digest = hashlib.sha256(f"{cd.address}/{cd.namespace}/{cid}".encode()).hexdigest()
            assert not Path("/run/containerd/s", digest).exists(), "daemon socket left behind"
    assert_nothing_left()


def test_grouped_container_daemon_removes_the_socket_it_served(assets):
    """The socket is named after the group, not the id: the daemon removes that one."""
    with PrivateContainerd() as cd:
        image = import_busybox(cd)
        group = f"grp-{uuid.uuid4().hex[:6]}"
        cid = f"member-{uuid.uuid4().hex[:6]}"
        socket = Path("/run/containerd/s") / hashlib.sha256(
            f"{cd.address}/{cd.namespace}/{group}".encode()).hexdigest()
        result = cd.ctr("run", "--runtime", RUNTIME, "--rm",
                        "--annotation", f"io.containerd.runc.v2.group={group}",
                        image, cid, "echo", "grouped", timeout=240)
        assert result.returncode == 0, (result.stderr, cd.log_tail())
        assert result.stdout.strip() == "grouped"
        deadline = time.monotonic() + 20
        while socket.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not socket.exists(), f"{socket} (the group's socket) left behind"
    assert_nothing_left()
