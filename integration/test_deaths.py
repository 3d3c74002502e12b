"""Deaths flow up: whatever dies under a running pod, containerd hears of it and nothing hangs.

For each death (QEMU killed, virtiofsd killed, vhost-device-vsock killed where the agent
is on hybrid vsock, a guest kernel panic, the shim daemon killed) a container runs with
an exec in flight. Then: the task is STOPPED (or, for the shim, cleaned up by
containerd) within seconds, an exit is published for the container and the exec, the
exec's `ctr` returns instead of hanging, a new exec fails at once, `ctr task rm` works,
nothing is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid

import pytest

from integration.containerd_env import _pids_with_arg
from integration.pykata_env import (
    RUNTIME,
    STATE_ROOT,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)

pytestmark = pytest.mark.integration
STOPPED_WITHIN = 5.0  # seconds from the death to the task's STOPPED (the bound)


@pytest.fixture(scope="module")
def pykata(containerd, busybox_image):
    ensure_shim_on_path()
    ensure_guest_assets()
    return containerd, busybox_image


class Events:
    """`ctr events` in the background: the /tasks/exit envelopes of one container."""

    def __init__(self, cd, container_id: str) -> None:
        self.container_id = container_id
        self.exits: list[dict] = []
        self.exec_started: set[str] = set()
        self.proc = subprocess.Popen(cd.ctr_argv("events"), stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            started = re.search(r"/tasks/exec-started\s+(\{.*\})", line)
            if started:
                event = json.loads(started.group(1))
                if event.get("container_id") == self.container_id:
                    self.exec_started.add(event.get("exec_id", ""))
            match = re.search(r"/tasks/exit\s+(\{.*\})", line)
            if match:
                event = json.loads(match.group(1))
                if event.get("container_id") == self.container_id:
                    self.exits.append(event)

    def wait_exits(self, ids: set[str], timeout: float = 20.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = {e["id"]: e.get("exit_status", 0) for e in self.exits}
            if ids <= set(seen):
                return seen
            time.sleep(0.1)
        return {e["id"]: e.get("exit_status", 0) for e in self.exits}

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def task_status(cd, cid: str) -> str:
    match = re.search(rf"^{cid}\s+\d+\s+(\w+)", cd.ctr("task", "ls").stdout, re.M)
    return match.group(1) if match else "GONE"


def wait_status(cd, cid: str, wanted: set[str], timeout: float) -> tuple[str, float]:
    t0 = time.monotonic()
    status = task_status(cd, cid)
    while status not in wanted and time.monotonic() - t0 < timeout:
        time.sleep(0.1)
        status = task_status(cd, cid)
    return status, time.monotonic() - t0


def start_pod(cd, image: str, cid: str, events: Events, *, privileged: bool = False
              ) -> subprocess.Popen:
    t0 = time.monotonic()
    extra = ["--privileged"] if privileged else []
    result = cd.ctr("run", "--runtime", RUNTIME, *extra, "-d", image, cid, "sleep", "600",
                    timeout=240)
    assert result.returncode == 0, result.stderr + cd.log_tail()
    status, _ = wait_status(cd, cid, {"RUNNING"}, 120)
    assert status == "RUNNING", status
    # the exec in flight: a long-running process the death must end
    inflight = subprocess.Popen(
        cd.ctr_argv("task", "exec", "--exec-id", "inflight", cid, "sleep", "600"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "inflight" in events.exec_started or inflight.poll() is not None:
            break
        time.sleep(0.2)
    assert inflight.poll() is None, inflight.stderr.read() if inflight.stderr else ""
    assert "inflight" in events.exec_started, "the exec never started"
    print(f"pod and exec running after {time.monotonic() - t0:.2f} s")
    return inflight


def pids_of(cid: str, program: str) -> list[int]:
    """The pod's processes whose executable is `program` (QEMU's argv names
    virtiofsd's socket too, so argv alone cannot tell them apart)."""
    found = []
    for pid in _pids_with_arg(f"{STATE_ROOT}/"):
        if f"/{cid}/" not in _cmdline(pid):
            continue
        argv0 = _cmdline(pid).split(" ", 1)[0]
        names = {os.path.basename(argv0), _comm(pid)}
        if any(name.startswith(program) for name in names) or (
                program == "virtiofsd" and "/virtiofsd " in _cmdline(pid)
                and not any(name.startswith("qemu") for name in names)):
            found.append(pid)
    return found


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def finish(cd, cid: str, inflight: subprocess.Popen) -> None:
    """The exec's ctr ended by itself; a new exec fails fast; task rm works; nothing left."""
    t0 = time.monotonic()
    try:
        inflight.wait(timeout=30)
        print(f"inflight ctr ended after {time.monotonic() - t0:.2f} s")
    except subprocess.TimeoutExpired:
        inflight.kill()
        inflight.wait()
        raise AssertionError("the exec in flight still hangs after the death") from None
    t0 = time.monotonic()
    late = cd.ctr("task", "exec", "--exec-id", "late", cid, "true", timeout=60)
    assert late.returncode != 0, "an exec into a dead pod succeeded"
    assert time.monotonic() - t0 < 30, "an exec into a dead pod took long to fail"
    removed = cd.ctr("task", "rm", "-f", cid, timeout=60)
    assert removed.returncode == 0 or "not found" in removed.stderr, removed.stderr
    assert cd.ctr("container", "rm", cid, timeout=60).returncode == 0
    print(f"late exec + rm done after {time.monotonic() - t0:.2f} s")
    assert_nothing_left()


def force_cleanup(cd, cid: str, inflight: subprocess.Popen | None) -> None:
    if inflight is not None and inflight.poll() is None:
        inflight.kill()
        inflight.wait()
    cd.ctr("task", "kill", "-s", "KILL", cid)
    cd.ctr("task", "rm", "-f", cid, timeout=120)
    cd.ctr("container", "rm", cid)


@pytest.mark.parametrize("victim", ["qemu", "virtiofsd", "vhost-vsock", "guest-panic"])
def test_a_vm_death_stops_every_process_of_the_pod(pykata, victim):
    cd, image = pykata
    cid = f"death-{victim}-{uuid.uuid4().hex[:6]}"
    events = Events(cd, cid)
    inflight = None
    try:
        inflight = start_pod(cd, image, cid, events, privileged=victim == "guest-panic")
        if victim == "guest-panic":
            # sysrq 'c' crashes the guest kernel on purpose (a privileged container may)
            panic = subprocess.Popen(
                cd.ctr_argv("task", "exec", "--exec-id", "panic", cid, "sh", "-c",
                            "echo c > /proc/sysrq-trigger"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            program = {"qemu": "qemu-system", "vhost-vsock": "vhost-device"}.get(victim, victim)
            pids = pids_of(cid, program)
            if victim == "vhost-vsock" and not pids:
                pytest.skip("the pod's agent channel is not hybrid vsock on this host")
            assert pids, f"no {victim} process for the pod"
            for pid in pids:  # virtiofsd runs as a launcher and its sandboxed child
                os.kill(pid, signal.SIGKILL)
        status, took = wait_status(cd, cid, {"STOPPED", "GONE"}, STOPPED_WITHIN)
        print(f"{victim}: {status} after {took:.2f} s")
        assert status == "STOPPED", f"{status} {took:.1f} s after the death"
        t0 = time.monotonic()
        exits = events.wait_exits({cid, "inflight"})
        print(f"exits after {time.monotonic() - t0:.2f} s: {exits}")
        assert exits.get(cid) == 255 and exits.get("inflight") == 255, exits
        assert len([e for e in events.exits if e["id"] == cid]) == 1, "exit published twice"
        if victim == "guest-panic":
            panic.wait(timeout=30)
        finish(cd, cid, inflight)
        log = cd.log_path.read_text(errors="replace")
        shim_log = [line for line in log.splitlines()
                    if "the pod's VM died" in line and cid in line]
        assert shim_log, "the shim did not log the death:\n" + "\n".join(
            line for line in log.splitlines() if cid in line)[-4000:]
        expected = {"qemu": "QEMU", "virtiofsd": "virtiofsd",
                    "vhost-vsock": "vhost-device-vsock",
                    "guest-panic": "the guest kernel panicked"}[victim]
        assert expected in shim_log[-1], shim_log[-1]
    finally:
        events.stop()
        force_cleanup(cd, cid, inflight)


def test_a_killed_shim_daemon_ends_the_exec_in_flight_and_containerd_cleans_up(pykata):
    cd, image = pykata
    cid = f"death-shim-{uuid.uuid4().hex[:6]}"
    events = Events(cd, cid)
    inflight = None
    try:
        inflight = start_pod(cd, image, cid, events)
        daemons = [p for p in _pids_with_arg(f"-id {cid}")
                   if "containerd-shim-pykata-v2" in _cmdline(p)]
        assert len(daemons) == 1, daemons
        os.kill(daemons[0], signal.SIGKILL)
        status, took = wait_status(cd, cid, {"STOPPED", "GONE"}, STOPPED_WITHIN + 10)
        assert status in ("STOPPED", "GONE"), f"{status} {took:.1f} s after the kill"
        exits = events.wait_exits({cid})
        assert cid in exits, exits  # containerd publishes it for the dead shim
        finish(cd, cid, inflight)
        assert not os.path.exists(STATE_ROOT / cd.namespace / cid)
    finally:
        events.stop()
        force_cleanup(cd, cid, inflight)
