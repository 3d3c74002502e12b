"""VM templates without a VM: the key, the verdicts, the RAM copy, the files on disk,
the hot-plug steps and the template/clone command line."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from shim.config import ConfigError, parse_config
from shim.vmm import template
from shim.vmm.factory import Clone, _open_clone, key, template_config
from shim.vmm.hotplug import clone_steps, nic_steps, shared_fs_steps
from shim.vmm.layout import VMPaths
from shim.vmm.qemu_args import (
    HOTPLUG_PORTS,
    SerialChannel,
    TemplateLayout,
    build_argv,
    passed_fds,
)
from shim.vmm.template import BOOT, REBUILD, RESTORE, TemplateDir
from shim.vmm.vm_config import TCG_CPU_MODEL, NicSpec, VMConfig


def files(tmp_path: Path) -> VMConfig:
    for name in ("qemu", "vmlinuz", "initrd"):
        (tmp_path / name).write_bytes(name.encode())
    return VMConfig(qemu_path=str(tmp_path / "qemu"), kernel=str(tmp_path / "vmlinuz"),
                    initrd=str(tmp_path / "initrd"), memory_mib=512, firmware="")


def make_template(tdir: TemplateDir, shape: dict, inputs: dict) -> None:
    tdir.path.mkdir(parents=True)
    with open(tdir.memory, "wb") as ram:
        ram.truncate(64 << 20)
        ram.seek(1 << 20)
        ram.write(b"kernel" * 1000)
        ram.seek(40 << 20)
        ram.write(b"agent" * 1000)
    tdir.state.write_bytes(b"QEVM" + b"\0" * 100)
    template.write_meta(tdir.path, {"created": "now", "created_unix": 1.0,
                                    "shape": shape, "inputs": inputs})


def key_of(config: VMConfig) -> tuple[dict, dict]:
    return key(config, accel="tcg", cpu=TCG_CPU_MODEL, firmware=None, channel="serial")


def test_no_template_boots_and_says_how_to_make_one(tmp_path):
    shape, inputs = key_of(files(tmp_path))
    verdict = template.judge(TemplateDir(tmp_path / "t"), shape, inputs)
    assert verdict.action == BOOT and "pykata-runtime factory init" in verdict.reason


def test_a_matching_template_is_restored(tmp_path):
    config = files(tmp_path)
    tdir = TemplateDir(tmp_path / "t")
    make_template(tdir, *key_of(config))
    assert template.judge(tdir, *key_of(config)).action == RESTORE


def test_a_vm_of_another_shape_boots_naming_what_differs(tmp_path):
    config = files(tmp_path)
    tdir = TemplateDir(tmp_path / "t")
    make_template(tdir, *key_of(config))
    config.memory_mib = 1024
    verdict = template.judge(tdir, *key_of(config))
    assert verdict.action == BOOT
    assert "memory_mib 1024 (template: 512)" in verdict.reason


def test_a_changed_kernel_makes_the_template_stale(tmp_path):
    config = files(tmp_path)
    tdir = TemplateDir(tmp_path / "t")
    make_template(tdir, *key_of(config))
    os.utime(config.kernel, ns=(1, 2_000_000_000_000_000_000))
    verdict = template.judge(tdir, *key_of(config))
    assert verdict == template.Verdict(REBUILD, "the kernel changed since the template was made")


def test_more_nics_than_free_ports_boot(tmp_path):
    config = files(tmp_path)
    tdir = TemplateDir(tmp_path / "t")
    make_template(tdir, *key_of(config))
    verdict = template.judge(tdir, *key_of(config), nics=HOTPLUG_PORTS)
    assert verdict.action == BOOT and "ports" in verdict.reason


def test_per_pod_settings_are_not_part_of_the_template(tmp_path):
    config = files(tmp_path)
    pod = VMConfig(**{**config.__dict__, "netns": "/run/netns/x",
                      "nics": [NicSpec(mac="02:00:00:00:00:01", tap_fd=7)],
                      "template_path": "/t"})
    assert key_of(pod) == key_of(config)
    made = template_config(pod)
    assert made.nics == [] and made.template_path is None and made.netns is None
    assert made.kernel_params == ["agent.prewarm"]  # only the template's agent prewarms


def test_the_clone_gets_a_sparse_private_copy_of_the_ram(tmp_path):
    config = files(tmp_path)
    tdir = TemplateDir(tmp_path / "t")
    make_template(tdir, *key_of(config))
    clone = _open_clone(tdir, *key_of(config))
    assert isinstance(clone, Clone)
    try:
        empty = os.fstat(clone.memory_fd)  # sized for QEMU, filled while it starts
        assert empty.st_size == 64 << 20 and empty.st_blocks == 0
        clone.copy()
        assert clone.copied < 2 << 20  # only the data extents
        assert os.fstat(clone.memory_fd).st_size == 64 << 20
        assert os.pread(clone.memory_fd, 12, 40 << 20) == b"agentagentag"
        assert os.pread(clone.memory_fd, 6, 1 << 20) == b"kernel"
        assert os.pread(clone.memory_fd, 4, 20 << 20) == b"\0" * 4
        assert os.fstat(clone.memory_fd).st_blocks * 512 < 4 << 20
        assert os.read(clone.state_fd, 4) == b"QEVM"
    finally:
        asyncio.run(clone.release())
    assert clone.memory_fd == clone.state_fd == -1
    config.memory_mib = 1024
    assert _open_clone(tdir, *key_of(config)) is None


def test_install_replaces_and_destroy_removes(tmp_path):
    tdir = TemplateDir(tmp_path / "t")
    make_template(tdir, {}, {})
    build = tmp_path / ".t.build-1"
    make_template(TemplateDir(build), {"new": 1}, {})
    template.install(tdir, build)
    assert json.loads(tdir.meta.read_text())["shape"] == {"new": 1}
    assert not build.exists() and list(tmp_path.glob(".t.old-*")) == []
    described = template.describe(tdir)
    assert described["present"] and described["state_bytes"] == 104
    assert template.destroy(tdir) and not tdir.path.exists()
    assert not template.destroy(tdir)
    assert template.describe(tdir) == {"path": str(tdir.path), "present": False}


def test_on_tmpfs():
    assert template.on_tmpfs(Path("/dev/shm/anything/below"))
    assert not template.on_tmpfs(Path("/proc"))


def test_template_and_clone_command_lines(tmp_path):
    paths = VMPaths(tmp_path)
    config = VMConfig(nics=[NicSpec(mac="02:00:00:00:00:01", tap_fd=7)])
    argv = build_argv(config, paths, accel="tcg", cpu=TCG_CPU_MODEL,
                      channel=SerialChannel(paths.agent_socket),
                      layout=TemplateLayout(Path("/proc/self/fd/9"), incoming=True))
    text = " ".join(argv)
    assert "memory-backend-file,id=mem0,size=2048M,mem-path=/proc/self/fd/9,share=on" in text
    assert text.count("pcie-root-port") == HOTPLUG_PORTS
    assert "vhost-user-fs-pci" not in text and "-netdev" not in argv
    assert argv[-2:] == ["-incoming", "defer"]
    assert passed_fds(config, SerialChannel(paths.agent_socket), nics=False) == []
    made = build_argv(config, paths, accel="tcg", cpu=TCG_CPU_MODEL,
                      channel=SerialChannel(paths.agent_socket),
                      layout=TemplateLayout(tmp_path / "memory"))
    assert "-incoming" not in made
    # the device set of template and clone is the same: only the RAM path differs
    assert [a for a in made if "mem-path" not in a] == [
        a for a in argv[:-2] if "mem-path" not in a
    ]


def test_hotplug_steps_for_the_share_and_each_kind_of_tap(tmp_path):
    fs = shared_fs_steps(tmp_path / "vfs.sock")
    assert [s.command for s in fs] == ["chardev-add", "device_add"]
    assert fs[0].arguments["backend"]["data"]["addr"]["data"]["path"] == str(tmp_path / "vfs.sock")
    assert fs[1].arguments["bus"] == "rp0" and fs[1].arguments["tag"] == "kataShared"
    by_fd = nic_steps(0, NicSpec(mac="02:00:00:00:00:01", tap_fd=7, mtu=1400))
    assert by_fd[0].fds == [("net0-q0", 7)] and by_fd[0].arguments["fd"] == "net0-q0"
    assert by_fd[1].arguments == {"driver": "virtio-net-pci", "netdev": "net0",
                                  "mac": "02:00:00:00:00:01", "id": "dev-net0", "romfile": "",
                                  "bus": "rp1", "host_mtu": 1400}
    queues = nic_steps(1, NicSpec(mac="02:00:00:00:00:02", tap_fds=(8, 9), vhost=True))
    assert queues[0].arguments["fds"] == "net1-q0:net1-q1" and queues[0].arguments["vhost"]
    assert queues[1].arguments["mq"] and queues[1].arguments["vectors"] == 6
    named = nic_steps(0, NicSpec(mac="02:00:00:00:00:03", ifname="tap0_kata"))
    assert named[0].fds == [] and named[0].arguments["ifname"] == "tap0_kata"
    with pytest.raises(ValueError):
        nic_steps(0, NicSpec(mac="02:00:00:00:00:04"))
    steps = clone_steps(tmp_path / "vfs.sock", [NicSpec(mac="02:00:00:00:00:01", tap_fd=7)])
    assert [s.command for s in steps] == ["chardev-add", "device_add", "netdev_add", "device_add"]
    assert clone_steps(None, []) == []


def test_factory_section_of_the_configuration():
    config = parse_config('[factory]\nenable_template = true\ntemplate_path = "/run/t"\n')
    assert config.factory.enable_template and config.factory.template_path == "/run/t"
    assert not parse_config("").factory.enable_template
    with pytest.raises(ConfigError, match="absolute"):
        parse_config('[factory]\ntemplate_path = "relative"\n')


def test_free_page_reporting_is_a_balloon_device_and_part_of_the_shape(tmp_path):
    paths = VMPaths(tmp_path)
    on = build_argv(VMConfig(), paths, accel="tcg", cpu=TCG_CPU_MODEL,
                    channel=SerialChannel(paths.agent_socket))
    assert "virtio-balloon-pci,id=balloon0,free-page-reporting=on" in on
    off = build_argv(VMConfig(free_page_reporting=False), paths, accel="tcg", cpu=TCG_CPU_MODEL,
                     channel=SerialChannel(paths.agent_socket))
    assert not any("balloon" in a for a in off)
    config = files(tmp_path)
    shape_on, _ = key_of(config)
    config.free_page_reporting = False
    assert key_of(config)[0] != shape_on
    assert not parse_config(
        "[hypervisor.qemu]\nreclaim_guest_freed_memory = false\n"
    ).hypervisor.reclaim_guest_freed_memory


def test_the_agent_reads_its_prewarm_flag():
    from agent.config import kernel_flag
    from pykata_common.contract import PREWARM_PARAM

    assert PREWARM_PARAM == "agent.prewarm"
    assert kernel_flag(["quiet", "agent.prewarm"], PREWARM_PARAM)
    assert kernel_flag(["agent.prewarm=on"], PREWARM_PARAM)
    assert not kernel_flag(["agent.prewarm=0", "agent.prewarmed"], PREWARM_PARAM)


def test_a_guest_image_is_a_read_only_shared_virtio_pmem_device(tmp_path):
    paths = VMPaths(tmp_path)
    config = VMConfig(image="/images/root.img", memory_mib=512)
    argv = build_argv(config, paths, accel="tcg", cpu=TCG_CPU_MODEL,
                      channel=SerialChannel(paths.agent_socket), image_bytes=128 << 20)
    assert argv[argv.index("-m") + 1] == "512M,slots=1,maxmem=640M"
    assert ("memory-backend-file,id=rootfs0,mem-path=/images/root.img,size=134217728,"
            "share=on,readonly=on") in argv
    assert "virtio-pmem-pci,memdev=rootfs0,id=rootfs0dev" in argv
    assert "swiotlb=noforce" in argv[argv.index("-append") + 1]
    with pytest.raises(ValueError, match="image_bytes"):
        build_argv(config, paths, accel="tcg", cpu=TCG_CPU_MODEL,
                   channel=SerialChannel(paths.agent_socket))
    plain = build_argv(VMConfig(), paths, accel="tcg", cpu=TCG_CPU_MODEL,
                       channel=SerialChannel(paths.agent_socket))
    assert plain[plain.index("-m") + 1] == "2048M" and "swiotlb" not in " ".join(plain)
    cfg = files(tmp_path)
    (tmp_path / "root.img").write_bytes(b"ext4")
    cfg.image = str(tmp_path / "root.img")
    shape, inputs = key_of(cfg)
    assert shape["image"] == cfg.image and inputs["image"] == [4, os.stat(cfg.image).st_mtime_ns]
    assert parse_config('[hypervisor.qemu]\nimage = "/x.img"\n').hypervisor.image == "/x.img"


def test_the_image_is_sized_in_whole_sections(tmp_path):
    from guest.image import ALIGN, image_size

    (tmp_path / "a").write_bytes(b"x" * 5000)
    (tmp_path / "d").mkdir()
    assert image_size(tmp_path) == ALIGN
    (tmp_path / "big").write_bytes(b"x" * ALIGN)
    assert image_size(tmp_path) == 2 * ALIGN
