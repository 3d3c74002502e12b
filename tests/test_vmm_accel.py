"""KVM or TCG: the decision table, the cached probe, the probe steps against fake QEMUs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shim.vmm import accel, hostcaps
from shim.vmm.accel import KvmProbe, choose_accel, decide
from shim.vmm.hostcaps import HostCapsCache, probe_seccomp
from shim.vmm.vm_config import TCG_CPU_MODEL

OK = KvmProbe(True, "kernel boot probe ok", 0.8)
BAD = KvmProbe(False, "QEMU accel=kvm -cpu host exited -6: failed to set MSR 0x10a", 0.05)


@pytest.mark.parametrize(
    ("requested", "kvm_dev", "probe", "want", "cpu", "why"),
    [
        ("tcg", True, OK, "tcg", TCG_CPU_MODEL, "accel=tcg configured"),
        ("kvm", False, None, "kvm", "host", "accel=kvm configured"),
        ("auto", False, None, "tcg", TCG_CPU_MODEL, "does not exist"),
        ("auto", True, OK, "kvm", "host", "KVM probe passed"),
        ("auto", True, BAD, "tcg", TCG_CPU_MODEL, "KVM unusable: QEMU accel=kvm"),
        ("auto", True, None, "tcg", TCG_CPU_MODEL, "not probed"),
    ],
)
def test_decide(requested, kvm_dev, probe, want, cpu, why):
    choice = decide(requested, kvm_dev=kvm_dev, probe=probe)
    assert (choice.accel, choice.cpu) == (want, cpu)
    assert why in choice.reason


def test_decide_keeps_a_configured_cpu_model_and_rejects_nonsense():
    assert decide("auto", kvm_dev=True, probe=OK, cpu_model="Skylake-Server").cpu == (
        "Skylake-Server")
    with pytest.raises(ValueError):
        decide("hvf", kvm_dev=True, probe=OK)


@pytest.fixture
def fake_dev(tmp_path) -> str:
    dev = tmp_path / "kvm"
    dev.write_text("")
    return str(dev)


class Calls(list):
    """Calls of the fake probe; `.result` is what it answers."""

    result: KvmProbe = BAD


@pytest.fixture
def probes(monkeypatch) -> Calls:
    """Replace the real probe; records its calls and answers from .result."""
    calls = Calls()

    def fake_probe(qemu, kernel, cpu, dev):
        calls.append((qemu, kernel, cpu, dev))
        return calls.result

    monkeypatch.setattr(accel, "probe_kvm", fake_probe)
    return calls


async def test_probe_runs_once_then_comes_from_the_cache(tmp_path, fake_dev, probes):
    cache = HostCapsCache(tmp_path / "cache")
    first = await choose_accel("auto", "/usr/bin/true", None, cache=cache, dev=fake_dev)
    second = await choose_accel("auto", "/usr/bin/true", None, cache=cache, dev=fake_dev)
    assert len(probes) == 1
    assert (first.accel, first.cached, second.accel, second.cached) == ("tcg", False, "tcg", True)
    assert "MSR 0x10a" in second.reason
    data = json.loads((tmp_path / "cache" / "host-caps.json").read_text())
    assert data["boot_id"] == hostcaps.boot_id()


async def test_cache_is_dropped_after_a_reboot(tmp_path, fake_dev, probes, monkeypatch):
    cache = HostCapsCache(tmp_path)
    await choose_accel("auto", "/usr/bin/true", None, cache=cache, dev=fake_dev)
    monkeypatch.setattr(hostcaps, "boot_id", lambda: "another-boot")
    probes.result = OK
    choice = await choose_accel("auto", "/usr/bin/true", None, cache=cache, dev=fake_dev)
    assert len(probes) == 2 and choice.accel == "kvm" and choice.cpu == "host"


async def test_a_replaced_qemu_is_probed_again(tmp_path, fake_dev, probes):
    qemu = tmp_path / "qemu"
    qemu.write_text("v1")
    cache = HostCapsCache(tmp_path)
    await choose_accel("auto", str(qemu), None, cache=cache, dev=fake_dev)
    qemu.write_text("version 2")
    await choose_accel("auto", str(qemu), None, cache=cache, dev=fake_dev)
    assert len(probes) == 2


async def test_no_probe_without_dev_or_when_configured(tmp_path, probes):
    cache = HostCapsCache(tmp_path)
    missing = str(tmp_path / "no-kvm")
    assert (await choose_accel("auto", "q", None, cache=cache, dev=missing)).accel == "tcg"
    assert (await choose_accel("kvm", "q", None, cache=cache, dev=missing)).accel == "kvm"
    assert (await choose_accel("tcg", "q", None, cache=cache)).accel == "tcg"
    assert probes == []


def test_ioctl_probe_reports_why(tmp_path):
    ok, reason = accel.probe_ioctls(str(tmp_path / "nope"))
    assert not ok and "No such file" in reason
    plain = tmp_path / "plain"
    plain.write_text("")
    ok, reason = accel.probe_ioctls(str(plain))
    assert not ok and "ioctl" in reason


def fake_qemu(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-qemu"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_firmware_probe_outcomes(tmp_path):
    ok, _ = accel.probe_qemu_firmware(fake_qemu(tmp_path, "exit 99"))
    assert ok
    ok, why = accel.probe_qemu_firmware(fake_qemu(
        tmp_path, "echo 'error: failed to set MSR 0x10a to 0x69' >&2; kill -ABRT $$"))
    assert not ok and "MSR 0x10a" in why and "-6" in why
    ok, why = accel.probe_qemu_firmware(fake_qemu(tmp_path, "exec sleep 30"), timeout=0.3)
    assert not ok and "hung" in why


def test_kernel_probe_outcomes(tmp_path):
    ok, _ = accel.probe_qemu_kernel(fake_qemu(
        tmp_path, "echo 'Kernel panic - not syncing: VFS: Unable to mount root fs'"), "vmlinuz")
    assert ok
    ok, why = accel.probe_qemu_kernel(fake_qemu(tmp_path, "exec sleep 30"), "vmlinuz",
                                      timeout=0.3)
    assert not ok and "hang" in why


def test_probe_kvm_stops_at_the_first_failed_step(tmp_path, monkeypatch):
    steps: list[str] = []
    monkeypatch.setattr(accel, "probe_ioctls", lambda dev: (steps.append("ioctl"), (True, ""))[1])
    monkeypatch.setattr(accel, "probe_qemu_firmware",
                        lambda q, cpu: (steps.append("fw"), (False, "abort"))[1])
    monkeypatch.setattr(accel, "probe_qemu_kernel",
                        lambda q, k, cpu: (steps.append("kernel"), (True, ""))[1])
    kernel = tmp_path / "vmlinuz"
    kernel.write_text("")
    result = accel.probe_kvm("qemu", str(kernel))
    assert steps == ["ioctl", "fw"] and not result.usable and result.reason == "abort"


def test_seccomp_probe_and_cache(tmp_path):
    cache = HostCapsCache(tmp_path)
    good = fake_qemu(tmp_path, 'echo "QEMU emulator version 7.2"')
    assert probe_seccomp(good, cache)[0]
    os.unlink(good)
    bad = fake_qemu(tmp_path, "echo \"-sandbox on: There is no option group 'sandbox'\" >&2;"
                              " exit 1")
    ok, detail = probe_seccomp(bad, cache)  # new file identity: probed again
    assert not ok and "sandbox" in detail
    assert probe_seccomp(bad, cache) == (ok, detail)


def test_unwritable_cache_is_only_slower(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = HostCapsCache(blocker / "sub")
    cache.put("k", 1)
    assert cache.get("k") is None
