"""Crash cleanup from disk: kill what vm.json names, never a recycled pid; idempotent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim.vmm import kill_from_state, procs
from shim.vmm.layout import VMPaths
from shim.vmm.vm_record import StateWriter, load_record


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen]]:
    """Processes this test starts; whatever is left is killed (by pid) and reaped."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def sleeper(spawned: list[subprocess.Popen], *extra: str) -> subprocess.Popen:
    # argv carries `extra`, so a test can make it name (or not) the state dir
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *extra])
    spawned.append(p)
    return p


def write_vm_json(state: Path, **procs_: tuple[int, int | None]) -> None:
    state.mkdir(parents=True, exist_ok=True)
    data = {"format": 1, "agent": {},
            "processes": {n: {"pid": pid, "start_time": st, "argv0": n}
                          for n, (pid, st) in procs_.items()}}
    (state / "vm.json").write_text(json.dumps(data))


def touch_sockets(state: Path) -> None:
    for path in [*VMPaths(state).sockets(), state / "vfs.sock.pid"]:
        path.write_text("")


def alive(p: subprocess.Popen) -> bool:
    return procs.is_running(p.pid, None)


def test_kills_recorded_processes_and_removes_sockets(tmp_path, spawned):
    qemu, vfsd = sleeper(spawned), sleeper(spawned)
    write_vm_json(tmp_path, qemu=(qemu.pid, procs.start_time(qemu.pid)),
                  virtiofsd=(vfsd.pid, procs.start_time(vfsd.pid)))
    touch_sockets(tmp_path)
    (tmp_path / "console.log").write_text("kept\n")
    done = kill_from_state(tmp_path)
    assert f"qemu pid {qemu.pid}: terminated" in done
    assert f"virtiofsd pid {vfsd.pid}: terminated" in done
    assert qemu.wait(5) == -15 and vfsd.wait(5) == -15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console.log"]
    assert kill_from_state(tmp_path) == []  # idempotent


def test_recycled_pid_is_left_alone(tmp_path, spawned):
    other = sleeper(spawned)
    write_vm_json(tmp_path, qemu=(other.pid, procs.start_time(other.pid) - 100))
    done = kill_from_state(tmp_path)
    assert alive(other)
    assert any("is another process now" in line and "left alone" in line for line in done)
    assert "removed vm.json" in done
    assert kill_from_state(tmp_path) == []


def test_zombie_and_vanished_processes_count_as_gone(tmp_path, spawned):
    dead = sleeper(spawned)
    started = procs.start_time(dead.pid)
    dead.kill()  # a zombie until reaped below
    assert procs.wait_gone(dead.pid, started, 5)
    write_vm_json(tmp_path, qemu=(dead.pid, started), virtiofsd=(2**22 + 12345, 1))
    assert kill_from_state(tmp_path) == ["removed vm.json"]


def test_sigterm_ignored_means_sigkill(tmp_path, spawned):
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE)
    spawned.append(stubborn)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    write_vm_json(tmp_path, qemu=(stubborn.pid, procs.start_time(stubborn.pid)))
    assert f"qemu pid {stubborn.pid}: killed" in kill_from_state(tmp_path, grace=0.2)
    assert stubborn.wait(5) == -9


def test_pidfiles_alone_are_trusted_only_if_argv_names_the_state_dir(tmp_path, spawned):
    state = tmp_path / "sandbox"
    state.mkdir()
    ours, stranger = sleeper(spawned, str(state / "qmp.sock")), sleeper(spawned)
    (state / "qemu.pid").write_text(f"{ours.pid}\n")
    (state / "virtiofsd.pid").write_text(f"{stranger.pid}\n")
    done = kill_from_state(state)
    assert f"qemu pid {ours.pid}: terminated" in done
    assert ours.wait(5) == -15
    assert alive(stranger)
    assert not (state / "qemu.pid").exists() and not (state / "virtiofsd.pid").exists()


def test_record_without_start_time_needs_argv_proof(tmp_path, spawned):
    stranger = sleeper(spawned)
    write_vm_json(tmp_path, qemu=(stranger.pid, None))
    kill_from_state(tmp_path)
    assert alive(stranger)


def test_state_writer_records_pid_and_start_time(tmp_path, spawned):
    p = sleeper(spawned)
    writer = StateWriter(VMPaths(tmp_path))
    writer.add_process("qemu", p.pid, "/usr/bin/qemu-system-x86_64")
    writer.set_agent(address="unix:///x/agent.sock")
    record = load_record(tmp_path)
    assert record is not None
    assert record.processes["qemu"].pid == p.pid
    assert record.processes["qemu"].start_time == procs.start_time(p.pid)
    assert record.agent == {"address": "unix:///x/agent.sock"}
    assert (tmp_path / "qemu.pid").read_text() == f"{p.pid}\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_missing_or_corrupt_state(tmp_path):
    assert kill_from_state(tmp_path / "never-existed") == []
    (tmp_path / "vm.json").write_text("{not json")
    assert kill_from_state(tmp_path) == ["removed vm.json"]


def test_proc_helpers():
    import os

    assert procs.start_time(os.getpid()) == procs.start_time(os.getpid())
    assert procs.state(os.getpid()) == "R"
    assert procs.start_time(2**22 + 12345) is None
    assert procs.cmdline(os.getpid())[0].endswith(("python3", "python", "python3.11"))
