"""VM templates end to end: `pykata-runtime factory`, then `ctr run` of pods whose VMs are
restored from the template (shared filesystem and NICs hot-plugged), and the cases where
the template must be rebuilt or cannot be used."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from integration.load_env import pod_netns
from integration.pykata_env import (
    RUNTIME,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)

pytestmark = pytest.mark.integration
RUN_TIMEOUT = 300
# what each pod prints: its bind-mounted file, 16 random bytes, its clock, hostname, NIC
POD_SCRIPT = (
    "cat /mine/who; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
    "date +%s; hostname; cat /sys/class/net/eth0/address 2>/dev/null || echo no-nic; "
    "ip -o -4 addr show eth0 2>/dev/null | grep -o 'inet [0-9.]*' || echo no-ip"
)


def runtime(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shim.admin", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, template: Path, extra: str = "") -> Path:
    path.write_text(
        f'[factory]\nenable_template = true\ntemplate_path = "{template}"\n{extra}'
    )
    return path


@pytest.fixture(scope="module")
def factory(containerd, busybox_image):
    """(containerd, image, config, template dir) with a template made by `factory init`."""
    ensure_shim_on_path()
    ensure_guest_assets()
    # on tmpfs, as the template's RAM belongs in memory
    work = Path(f"/dev/shm/pykata-test-{uuid.uuid4().hex[:8]}")
    work.mkdir()
    config = write_config(work / "configuration.toml", work / "template")
    made = runtime(config, "factory", "init")
    assert made.returncode == 0, made.stderr
    yield containerd, busybox_image, config, work / "template"
    gone = runtime(config, "factory", "destroy")
    assert gone.returncode == 0 and "removed" in gone.stdout, gone.stdout + gone.stderr
    shutil.rmtree(work)
    assert_nothing_left()


def shim_log_since(cd, offset: int) -> str:
    with open(cd.log_path, errors="replace") as log:
        log.seek(offset)
        return log.read()


def log_offset(cd) -> int:
    return os.path.getsize(cd.log_path)


def run_pod(cd, image: str, config: Path, mine: Path, *, netns: str | None = None,
            script: str = POD_SCRIPT) -> subprocess.Popen:
    cid = f"tpl-{uuid.uuid4().hex[:8]}"
    args = ["run", "--rm", "--runtime", RUNTIME, "--runtime-config-path", str(config),
            "--mount", f"type=bind,src={mine},dst=/mine,options=rbind:ro"]
    if netns:
        args += ["--with-ns", f"network:{netns}"]
    argv = cd.ctr_argv(*args, image, cid, "sh", "-c", script)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(run: subprocess.Popen) -> list[str]:
    out, err = run.communicate(timeout=RUN_TIMEOUT)
    assert run.returncode == 0, f"ctr run failed ({run.returncode}): {err}"
    return out.splitlines()


def pod_dir(tmp_path: Path, text: str) -> Path:
    mine = tmp_path / f"mine-{uuid.uuid4().hex[:6]}"
    mine.mkdir()
    (mine / "who").write_text(text + "\n")
    return mine


def test_factory_status_reports_a_template_pods_can_use(factory):
    _, _, config, _ = factory
    shown = runtime(config, "factory", "status", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    facts = json.loads(shown.stdout)
    assert facts["present"] and facts["enabled"] and facts["action"] == "restore"
    assert facts["on_tmpfs"] and facts["state_bytes"] > 0
    assert 0 < facts["memory_bytes_used"] < facts["shape"]["memory_mib"] * 2**20
    checked = json.loads(runtime(config, "check", "--json").stdout)
    [line] = [c for c in checked["checks"] if c["name"] == "VM template"]
    assert line["status"] == "ok" and line["detail"].startswith("pods restore"), line
    env = json.loads(runtime(config, "env", "--json").stdout)
    assert env["factory"]["enable_template"] and env["factory"]["template"]["action"] == "restore"
    again = runtime(config, "factory", "init")
    assert again.returncode == 0 and "already up to date" in again.stdout, again.stdout


def test_ctr_run_restores_the_vm_from_the_template(factory, tmp_path):
    cd, image, config, _ = factory
    offset = log_offset(cd)
    t0 = time.time()
    lines = finish(run_pod(cd, image, config, pod_dir(tmp_path, "pod-a")))
    assert lines[0] == "pod-a"  # a bind mount over virtio-fs, hot-plugged into the clone
    assert re.fullmatch(r"[0-9a-f]{32}", lines[1])
    assert abs(int(lines[2]) - t0) < 30, "the clone's clock is the template's"
    assert lines[4] == "no-nic"
    log = shim_log_since(cd, offset)
    assert "restored_from" in log and str(factory[3]) in log, log[-3000:]
    assert "booting the VM" not in log


def test_two_clones_at_once_have_their_own_files_rng_clock_and_network(factory, tmp_path):
    cd, image, config, _ = factory
    pairs = [pod_netns(31), pod_netns(32)]
    try:
        offset = log_offset(cd)
        t0 = time.time()
        runs = [
            run_pod(cd, image, config, pod_dir(tmp_path, f"pod-{i}"), netns=pair.pod_path)
            for i, pair in enumerate(pairs)
        ]
        outputs = [finish(run) for run in runs]
        macs = [pair_mac(pair) for pair in pairs]
    finally:
        for pair in pairs:
            pair.delete()
    for i, lines in enumerate(outputs):
        assert lines[0] == f"pod-{i}", lines
        assert abs(int(lines[2]) - t0) < 60, lines
        assert lines[4] == macs[i], (lines, macs)
        assert lines[5] == f"inet 198.18.{31 + i}.2", lines
    assert outputs[0][1] != outputs[1][1], "both clones drew the same random bytes"
    log = shim_log_since(cd, offset)
    assert log.count("restored_from=") + log.count('"restored_from"') >= 2, log[-3000:]


def pair_mac(pair) -> str:
    """The MAC of the pod's veth (sysfs would show the root netns: ask ip)."""
    got = subprocess.run(["nsenter", f"--net={pair.pod_path}", "--", "ip", "-o", "link",
                          "show", "eth0"], capture_output=True, text=True)
    return re.search(r"link/ether (\S+)", got.stdout)[1]


def test_a_template_older_than_its_kernel_is_rebuilt(containerd, busybox_image, tmp_path):
    ensure_shim_on_path()
    ensure_guest_assets()
    work = Path(f"/dev/shm/pykata-test-{uuid.uuid4().hex[:8]}")
    work.mkdir()
    try:
        kernel = work / "vmlinuz"
        shutil.copy("/usr/share/pykata/vmlinuz", kernel)
        config = write_config(work / "configuration.toml", work / "template",
                              f'[hypervisor.qemu]\nkernel = "{kernel}"\n')
        assert runtime(config, "factory", "init").returncode == 0
        before = json.loads((work / "template" / "template.json").read_text())
        later = time.time() + 5
        os.utime(kernel, (later, later))  # a newer kernel, as after an upgrade
        stale = runtime(config, "factory", "status")
        assert stale.returncode == 1 and "rebuild" in stale.stdout, stale.stdout
        offset = log_offset(containerd)
        lines = finish(run_pod(containerd, busybox_image, config, pod_dir(tmp_path, "rebuilt")))
        assert lines[0] == "rebuilt"
        log = shim_log_since(containerd, offset)
        assert "rebuilding the VM template" in log and "kernel changed" in log, log[-3000:]
        assert "restored_from" in log
        after = json.loads((work / "template" / "template.json").read_text())
        assert after["created_unix"] > before["created_unix"]
        assert runtime(config, "factory", "status").returncode == 0
    finally:
        runtime(write_config(work / "destroy.toml", work / "template"), "factory", "destroy")
        shutil.rmtree(work, ignore_errors=True)
    assert_nothing_left()


def test_a_pod_whose_vm_differs_from_the_template_boots(factory, tmp_path):
    cd, image, _, template = factory
    other = write_config(tmp_path / "bigger.toml", template,
                         "[hypervisor.qemu]\ndefault_memory = 640\n")
    offset = log_offset(cd)
    lines = finish(run_pod(cd, image, other, pod_dir(tmp_path, "booted")))
    assert lines[0] == "booted"
    log = shim_log_since(cd, offset)
    assert "booting the VM: no template used" in log and "memory_mib 640" in log, log[-3000:]
    assert "restored_from=/" not in log


@pytest.mark.parametrize("first_stage", ["", "/usr/share/pykata/pykata-image-initrd.img"],
                         ids=["kernel-mounts-it", "first-stage"])
def test_a_clone_of_a_template_on_the_guest_image_reads_it_with_dax(containerd, busybox_image,
                                                                    tmp_path, first_stage):
    """image = the ext4 guest image on virtio-pmem (the default): booted and cloned pods
    run from it, mounted with DAX (its files are never copied into guest RAM), by the
    kernel itself or by a first stage (what a modular kernel needs)."""
    ensure_shim_on_path()
    ensure_guest_assets()
    work = Path(f"/dev/shm/pykata-test-{uuid.uuid4().hex[:8]}")
    work.mkdir()
    image = ("[hypervisor.qemu]\nimage = \"/usr/share/pykata/pykata-rootfs.img\"\n"
             f"initrd = \"{first_stage}\"\n"
             "[agent.kata]\ndebug_console_enabled = true\n")
    config = write_config(work / "configuration.toml", work / "template", image)
    cd = containerd
    cid = f"tpl-img-{uuid.uuid4().hex[:6]}"
    try:
        made = runtime(config, "factory", "init")
        assert made.returncode == 0, made.stderr
        held = json.loads(runtime(config, "factory", "status", "--json").stdout)
        assert held["memory_bytes_used"] < 120 * 2**20, held  # no copy of the guest's files
        offset = log_offset(cd)
        started = cd.ctr("run", "-d", "--runtime", RUNTIME, "--runtime-config-path", str(config),
                         busybox_image, cid, "sleep", "600", timeout=300)
        assert started.returncode == 0, started.stderr
        # the kernel names the root it mounted /dev/root; the first stage's is pmem0
        mounts = runtime(config, "exec", cid, "grep", "-E", "^(/dev/root|/dev/pmem0) ",
                         "/proc/mounts")
        assert mounts.returncode == 0 and "dax" in mounts.stdout, mounts.stdout + mounts.stderr
        said = cd.ctr("task", "exec", "--exec-id", "e", cid, "echo", "from-the-clone", timeout=60)
        assert said.stdout.strip() == "from-the-clone", said.stderr
        assert "restored_from" in shim_log_since(cd, offset)
    finally:
        cd.ctr("task", "kill", "-s", "KILL", cid)
        cd.ctr("task", "rm", "-f", cid, timeout=60)
        cd.ctr("container", "rm", cid)
        runtime(config, "factory", "destroy")
        shutil.rmtree(work, ignore_errors=True)
    assert_nothing_left()
