"""The agent brings hot-plugged CPUs and memory blocks online (OnlineCPUMem)."""

import asyncio

import pytest

from agent import hotplug


def sysfs(tmp_path, cpus: dict[str, str], blocks: dict[str, str]):
    cpu_root, memory_root = tmp_path / "cpu", tmp_path / "memory"
    for name, state in cpus.items():
        (cpu_root / name).mkdir(parents=True)
        if state:
            (cpu_root / name / "online").write_text(state)
    (cpu_root / "online").write_text("0-1\n")  # a file, not a CPU
    for name, state in blocks.items():
        (memory_root / name).mkdir(parents=True)
        (memory_root / name / "state").write_text(state)
    return cpu_root, memory_root


def test_offline_cpus_and_memory_blocks_are_brought_online(tmp_path):
    cpu_root, memory_root = sysfs(tmp_path, {"cpu0": "", "cpu1": "1\n", "cpu2": "0\n"},
                                  {"memory8": "online\n", "memory9": "offline\n"})
    done = asyncio.run(hotplug.online(1, wait=True, cpu_only=False,
                                      cpu_root=str(cpu_root), memory_root=str(memory_root)))
    assert done == (1, 1)
    assert (cpu_root / "cpu2" / "online").read_text() == "1"
    assert (memory_root / "memory9" / "state").read_text() == "online"


def test_cpus_that_never_come_are_a_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(hotplug, "ONLINE_WAIT", 0.2)
    cpu_root, memory_root = sysfs(tmp_path, {"cpu0": "", "cpu1": "1\n"}, {})
    with pytest.raises(TimeoutError, match="0 of 2 new CPUs"):
        asyncio.run(hotplug.online(2, wait=True, cpu_only=True,
                                   cpu_root=str(cpu_root), memory_root=str(memory_root)))


def test_the_new_cpus_reach_the_cpusets_that_inherited_theirs(tmp_path):
    root = tmp_path / "cpuset"
    for folder, cpus in (("", "0-2"), ("pykata", "0-1"), ("pykata/app", "0-1"),
                         ("pykata/pinned", "1"), ("pykata/app/inner", "0-1")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpuset.cpus").write_text(cpus + "\n")
    assert hotplug.widen_cpusets(str(root), "/pykata") == 3
    read = {folder: (root / folder / "cpuset.cpus").read_text().strip()
            for folder in ("pykata", "pykata/app", "pykata/app/inner", "pykata/pinned")}
    assert read == {"pykata": "0-2", "pykata/app": "0-2", "pykata/app/inner": "0-2",
                    "pykata/pinned": "1"}  # set on purpose: kept
    assert hotplug.widen_cpusets(str(tmp_path / "v2"), "/pykata") == 0
