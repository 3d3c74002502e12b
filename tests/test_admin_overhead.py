"""overhead: PSS and CPU of real processes, and the RuntimeClass YAML built from them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
import test_admin_fakes as fakes

from shim.admin import run
from shim.admin.errors import AdminError
from shim.admin.measure import MeasureError, Measurement, ProcessCost, measure
from shim.admin.overhead import sandbox_pids
from shim.admin.runtimeclass import cpu_quantity, memory_quantity, runtime_class_yaml
from shim.monitor.procfs import pss_bytes
from shim.vmm import procs

node = fakes.node  # fixtures
short_tmp = fakes.short_tmp

MIB = 1 << 20
HOLD_20_MIB = (
    "import time; x = bytearray(20 << 20); x[::4096] = b'x' * len(x[::4096]); time.sleep(60)"
)
BUSY = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"


@pytest.fixture
def spawn():
    """Start processes for a test; each is killed (by its pid) and reaped afterwards."""
    started: list[subprocess.Popen] = []

    def start(*argv: str) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        children = procs.children(proc.pid)  # the sleep a `sh -c "sleep & wait"` forked
        proc.kill()
        proc.wait(10)
        for child in children:
            if procs.cmdline(child)[:1] == ["sleep"]:
                os.kill(child, signal.SIGKILL)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def resident(pid: int, at_least: int) -> bool:
    pss = pss_bytes(pid)
    return pss is not None and pss >= at_least


def quantities(yaml_text: str) -> tuple[int, int]:
    memory = re.search(r'^    memory: "(\d+)Mi"$', yaml_text, re.M)
    cpu = re.search(r'^    cpu: "(\d+)m"$', yaml_text, re.M)
    assert memory and cpu, yaml_text
    return int(memory.group(1)), int(cpu.group(1))


def test_quantities_round_up_after_the_margin():
    assert memory_quantity(100 * MIB, 10) == "110Mi"
    assert memory_quantity(100 * MIB + 1, 10) == "111Mi"
    assert memory_quantity(100 * MIB, 0) == "100Mi"
    assert memory_quantity(1, 10) == "1Mi"
    assert cpu_quantity(0.25, 10) == "275m"
    assert cpu_quantity(0.0001, 0) == "1m"
    assert cpu_quantity(0.0, 10) == "1m"


def test_measures_pss_and_cpu_of_real_processes(spawn):
    holder = spawn(sys.executable, "-c", HOLD_20_MIB)
    busy = spawn(sys.executable, "-c", BUSY)
    idle = spawn("sleep", "60")
    wait_for(lambda: resident(holder.pid, 20 * MIB))
    pids = {"shim": [holder.pid], "qemu": [busy.pid], "virtiofsd": [idle.pid]}
    m = measure(pids, 1.0, interval=0.25)
    assert [(p.role, p.pid) for p in m.processes] == [
        ("shim", holder.pid),
        ("qemu", busy.pid),
        ("virtiofsd", idle.pid),
    ]
    assert {p.memory_kind for p in m.processes} == {"PSS"}
    assert m.processes[0].memory_bytes >= 20 * MIB
    assert m.memory_bytes >= sum(pss_bytes(pid) for group in pids.values() for pid in group) * 0.9
    assert m.samples >= 4 and 0.9 <= m.seconds < 3
    assert m.processes[1].cpu_seconds > m.processes[2].cpu_seconds
    assert m.cpu_cores > 0

    text = runtime_class_yaml(m, 10)
    memory_mi, cpu_m = quantities(text)
    assert memory_mi * MIB >= m.memory_bytes * 1.1  # at least the measured PSS, plus margin
    assert cpu_m >= m.cpu_cores * 1100
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body[:6] == [
        "apiVersion: node.k8s.io/v1",
        "kind: RuntimeClass",
        "metadata:",
        "  name: pykata",
        "handler: pykata",
        "overhead:",
    ]
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert any("memory (PSS, peak of the total): shim" in line for line in comments), comments
    assert any("+ 10% margin" in line for line in comments)


def test_a_process_that_exits_spoils_the_measurement(spawn):
    short = spawn("sleep", "0.3")
    with pytest.raises(MeasureError, match="exited during the measurement"):
        measure({"qemu": [short.pid]}, 2.0, interval=0.1)
    with pytest.raises(MeasureError, match="is not running"):
        measure({"qemu": [short.pid]}, 0.1)  # a zombie
    short.wait()
    with pytest.raises(MeasureError, match="is not running"):
        measure({"qemu": [short.pid]}, 0.1)  # gone
    with pytest.raises(MeasureError, match="no processes"):
        measure({}, 0.1)


def test_yaml_notes_and_margin():
    m = Measurement(
        [
            ProcessCost("qemu", 1, 150 * MIB, "PSS", 0.5),
            ProcessCost("shim", 2, 40 * MIB, "VmRSS", 0),
        ],
        seconds=5.0,
        memory_bytes=190 * MIB,
        samples=6,
    )
    text = runtime_class_yaml(m, 20, notes=["idle pod booted for this"])
    assert text.splitlines()[:6] == [
        "# pykata pod overhead, from a measurement",
        "# idle pod booted for this",
        "# measured over 5.0 s, 6 memory samples",
        "# memory (PSS/VmRSS, peak of the total): qemu 150.0 MiB + shim 40.0 MiB = 190.0 MiB",
        "# cpu (utime+stime / wall time): 0.100 CPU",
        "# podFixed = measured + 20% margin, rounded up to Mi and m",
    ]
    assert quantities(text) == (228, 120)


def _running_sandbox(node, spawn, *, shim_started=None):
    shim = spawn("sleep", "60")
    qemu = spawn("sleep", "60")
    virtiofsd = spawn("sh", "-c", "sleep 60 & wait")  # forks the one that serves, as with
    wait_for(lambda: procs.children(virtiofsd.pid))  # --sandbox=namespace
    vsock = spawn("sleep", "60")  # hybrid vsock's daemon
    state = node.state_dir(
        "pod1",
        shim_pid=shim.pid,
        shim_started=shim_started if shim_started is not None else procs.start_time(shim.pid),
    )
    record = {
        "format": 1,
        "agent": {},
        "processes": {
            name: {"pid": p.pid, "start_time": procs.start_time(p.pid), "argv0": name}
            for name, p in (("qemu", qemu), ("virtiofsd", virtiofsd), ("vhost-vsock", vsock))
        },
    }
    (state / "vm.json").write_text(json.dumps(record))
    return state, shim, qemu, virtiofsd


def test_sandbox_pids_come_from_the_state_dir(node, spawn):
    state, shim, qemu, virtiofsd = _running_sandbox(node, spawn)
    pids = sandbox_pids(state)
    assert pids["shim"] == [shim.pid] and pids["qemu"] == [qemu.pid]
    assert pids["virtiofsd"][0] == virtiofsd.pid and len(pids["virtiofsd"]) == 2
    assert len(pids["vhost-vsock"]) == 1


def test_a_recycled_shim_pid_is_not_measured(node, spawn):
    state, *_ = _running_sandbox(node, spawn, shim_started=1)
    with pytest.raises(AdminError, match="is not running"):
        sandbox_pids(state)


def test_overhead_of_a_running_sandbox(node, spawn, capsys):
    _, shim, qemu, virtiofsd = _running_sandbox(node, spawn)
    measured = sum(
        pss_bytes(pid)
        for pid in (shim.pid, qemu.pid, virtiofsd.pid, *procs.children(virtiofsd.pid))
    )
    assert run(["overhead", "--sandbox", "pod1", "--seconds", "0.5", "--margin", "10"]) == 0
    text = capsys.readouterr().out
    memory_mi, cpu_m = quantities(text)
    assert memory_mi * MIB >= measured
    assert cpu_m >= 1
    assert "# running sandbox k8s.io/pod1" in text
    assert "memory (PSS, peak of the total): shim " in text and " + virtiofsd " in text


def test_overhead_of_a_sandbox_that_is_not_there(node, capsys):
    assert run(["overhead", "--sandbox", "nope", "--seconds", "0"]) == 1
    assert "no sandbox 'nope'" in capsys.readouterr().err


class FakeSandbox:
    """Stands in for shim.sandbox.sandbox.Sandbox: its 'VM' is processes the test started."""

    made: list[FakeSandbox] = []

    def __init__(self, namespace, sandbox_id, config, *, qemu=None, virtiofsd=None, fail=False):
        self.namespace, self.id, self.config = namespace, sandbox_id, config
        self.vm = types.SimpleNamespace(pid=qemu, virtiofsd=virtiofsd, vhost_vsock=None)
        self.fail = fail
        self.calls: list[str] = []
        FakeSandbox.made.append(self)

    async def start(self, *, netns, hostname=""):
        self.calls.append(f"start netns={netns}")
        if self.fail:
            raise RuntimeError("QEMU exited")

    async def stop(self):
        self.calls.append("stop")


def test_overhead_boots_measures_and_tears_down_an_idle_pod(short_tmp, spawn, monkeypatch, capsys):
    from shim.sandbox import sandbox as sandbox_module

    qemu = spawn("sleep", "60")
    virtiofsd = spawn("sh", "-c", "sleep 60 & wait")
    wait_for(lambda: procs.children(virtiofsd.pid))
    FakeSandbox.made = []
    monkeypatch.setattr(
        sandbox_module,
        "Sandbox",
        lambda ns, sid, config: FakeSandbox(
            ns, sid, config, qemu=qemu.pid, virtiofsd=types.SimpleNamespace(pid=virtiofsd.pid)
        ),
    )
    config = short_tmp / "c.toml"
    config.write_text("[hypervisor.qemu]\ndefault_vcpus = 2\ndefault_memory = 512\n")
    argv = ["--config", str(config), "overhead", "--seconds", "0.3", "--settle", "0"]
    assert run(argv) == 0
    out = capsys.readouterr()
    (pod,) = FakeSandbox.made
    assert pod.namespace == "pykata-overhead" and pod.calls == ["start netns=None", "stop"]
    assert "# idle pod booted for this (2 vCPU, 512 MiB" in out.out
    assert "memory (PSS, peak of the total): shim " in out.out and " + virtiofsd " in out.out
    memory_mi, _ = quantities(out.out)
    assert memory_mi * MIB >= pss_bytes(os.getpid())  # this process stood in for the shim
    assert "booting an idle pod (2 vCPU, 512 MiB)" in out.err


def test_an_idle_pod_that_fails_to_boot_is_torn_down(short_tmp, monkeypatch, capsys):
    from shim.sandbox import sandbox as sandbox_module

    FakeSandbox.made = []
    monkeypatch.setattr(
        sandbox_module, "Sandbox", lambda ns, sid, config: FakeSandbox(ns, sid, config, fail=True)
    )
    config = short_tmp / "c.toml"
    config.write_text("")
    assert run(["--config", str(config), "overhead", "--seconds", "0", "--settle", "0"]) == 1
    assert "the idle pod did not start: QEMU exited" in capsys.readouterr().err
    assert FakeSandbox.made[0].calls == ["start netns=None", "stop"]
