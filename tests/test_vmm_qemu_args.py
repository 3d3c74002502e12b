"""QEMU argv for every shape of VM: KVM/TCG, vsock/virtio-serial, virtiofs or not, NICs, debug."""

from __future__ import annotations

from pathlib import Path

import pytest

from shim.vmm.layout import VMPaths
from shim.vmm.qemu_args import (
    HybridVsockChannel,
    SerialChannel,
    TemplateLayout,
    VsockChannel,
    build_argv,
    kernel_cmdline,
    passed_fds,
    q,
)
from shim.vmm.vm_config import TCG_CPU_MODEL, NicSpec, VMConfig

STATE = Path("/run/pykata/default/sb1")
PATHS = VMPaths(STATE)
SERIAL = SerialChannel(PATHS.agent_socket)


def opt(argv: list[str], flag: str) -> list[str]:
    """Every value given to `flag`."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def devices(argv: list[str]) -> list[str]:
    return opt(argv, "-device")


def argv_for(config: VMConfig | None = None, **kw) -> list[str]:
    kw.setdefault("accel", "tcg")
    kw.setdefault("cpu", TCG_CPU_MODEL)
    kw.setdefault("channel", SERIAL)
    return build_argv(config or VMConfig(), PATHS, **kw)


def test_tcg_machine_cpu_and_basics():
    cfg = VMConfig(vcpus=2, memory_mib=1024)
    argv = argv_for(cfg)
    assert argv[0] == cfg.qemu_path
    assert opt(argv, "-machine") == ["q35,sata=off,smbus=off,vmport=off"]
    assert opt(argv, "-accel") == ["tcg"]
    assert opt(argv, "-cpu") == [TCG_CPU_MODEL]
    assert opt(argv, "-m") == ["1024M"]
    assert opt(argv, "-smp") == ["2"]
    for flag in ("-nodefaults", "-nographic", "-no-reboot", "-no-user-config", "-S"):
        assert flag in argv
    assert "-daemonize" not in argv
    assert opt(argv, "-qmp") == [f"unix:{STATE}/qmp.sock,server=on,wait=off"]
    assert opt(argv, "-pidfile") == [f"{STATE}/qemu.pid"]
    assert opt(argv, "-kernel") == [cfg.kernel]
    assert opt(argv, "-initrd") == [cfg.initrd]
    assert opt(argv, "-sandbox") == [
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    assert "virtio-rng-pci,rng=rng0,id=rng0dev" in devices(argv)


def test_kvm_uses_host_cpu():
    argv = argv_for(accel="kvm", cpu="host")
    assert opt(argv, "-accel") == ["kvm"]
    assert opt(argv, "-cpu") == ["host"]


def test_tcg_translation_cache_is_capped_where_configured():
    assert opt(argv_for(VMConfig(tcg_cache_mib=32)), "-accel") == ["tcg,tb-size=32"]
    # KVM translates nothing: the cap does not apply
    assert opt(argv_for(VMConfig(tcg_cache_mib=32), accel="kvm", cpu="host"), "-accel") == ["kvm"]


def test_bad_accel_rejected():
    with pytest.raises(ValueError):
        argv_for(accel="auto")


def test_console_is_a_logged_socket_on_the_first_serial_port():
    argv = argv_for()
    assert f"socket,id=console0,path={STATE}/console.sock,server=on,wait=off,"\
           f"logfile={STATE}/console.log,logappend=on" in opt(argv, "-chardev")
    assert opt(argv, "-serial") == ["chardev:console0"]
    assert opt(argv, "-append")[0].startswith("console=ttyS0 panic=-1 ")


def test_virtio_serial_agent_channel():
    argv = argv_for()
    assert "virtio-serial-pci,id=serial0" in devices(argv)
    assert f"socket,id=agent0,path={STATE}/agent.sock,server=on,wait=off" in opt(
        argv, "-chardev")
    assert "virtserialport,chardev=agent0,name=agent.channel.0,id=channel0" in devices(argv)
    assert not any(d.startswith("vhost-vsock-pci") for d in devices(argv))


def test_vsock_agent_channel_with_and_without_fd():
    argv = argv_for(channel=VsockChannel(cid=1234, vhostfd=7))
    assert "vhost-vsock-pci,id=vsock0,guest-cid=1234,vhostfd=7" in devices(argv)
    assert not any("virtserialport" in d or "virtio-serial" in d for d in devices(argv))
    assert not any("agent0" in c for c in opt(argv, "-chardev"))
    argv = argv_for(channel=VsockChannel(cid=5))
    assert "vhost-vsock-pci,id=vsock0,guest-cid=5" in devices(argv)
    assert passed_fds(VMConfig(), VsockChannel(cid=5, vhostfd=9)) == [9]


HVSOCK = HybridVsockChannel(PATHS.vhost_vsock_socket, PATHS.hvsock_socket)


@pytest.mark.parametrize("shared_fs", ["virtio-fs", "none"])
def test_hybrid_vsock_agent_channel_shares_memory_with_its_daemon(shared_fs):
    argv = argv_for(VMConfig(memory_mib=512, shared_fs=shared_fs), channel=HVSOCK)
    assert f"socket,id=vsock0,path={STATE}/vuvsock.sock" in opt(argv, "-chardev")
    assert "vhost-user-vsock-pci,chardev=vsock0,id=vsock0" in devices(argv)
    # vhost-device-vsock maps guest RAM, with or without virtiofsd
    assert opt(argv, "-object").count("memory-backend-memfd,id=mem0,size=512M,share=on") == 1
    assert opt(argv, "-numa") == ["node,memdev=mem0"]
    assert ("vhost-user-fs-pci,chardev=vfs0,tag=kataShared,id=fs0" in devices(argv)) == (
        shared_fs == "virtio-fs")
    # no virtio-serial agent port, no vhost-vsock, nothing to inherit
    assert not any("virtserialport" in d or "virtio-serial" in d for d in devices(argv))
    assert not any(d.startswith("vhost-vsock-pci") for d in devices(argv))
    assert passed_fds(VMConfig(), HVSOCK) == []


def test_hybrid_vsock_with_the_debug_console_keeps_its_serial_port():
    argv = argv_for(VMConfig(debug_console=True), channel=HVSOCK)
    assert "virtio-serial-pci,id=serial0" in devices(argv)
    assert not any("name=agent.channel.0" in d for d in devices(argv))


def test_a_template_cannot_have_hybrid_vsock():
    # QEMU refuses to migrate vhost-user-vsock ("non-migratable device")
    with pytest.raises(ValueError, match="cannot migrate"):
        argv_for(channel=HVSOCK, layout=TemplateLayout(Path("/tmp/memory")))


def test_virtiofs_shares_memory():
    argv = argv_for(VMConfig(memory_mib=512))
    assert "memory-backend-memfd,id=mem0,size=512M,share=on" in opt(argv, "-object")
    assert opt(argv, "-numa") == ["node,memdev=mem0"]
    assert f"socket,id=vfs0,path={STATE}/vfs.sock" in opt(argv, "-chardev")
    assert "vhost-user-fs-pci,chardev=vfs0,tag=kataShared,id=fs0" in devices(argv)


def test_without_shared_fs():
    argv = argv_for(VMConfig(shared_fs="none"))
    assert "-numa" not in argv
    assert not any("memory-backend" in o for o in opt(argv, "-object"))
    assert not any("vhost-user-fs" in d for d in devices(argv))
    with pytest.raises(ValueError):
        argv_for(VMConfig(shared_fs="9p"))  # type: ignore[arg-type]


def test_nics_by_fd_and_by_name():
    cfg = VMConfig(nics=[NicSpec(mac="02:00:c6:12:00:02", tap_fd=11),
                         NicSpec(mac="02:00:c6:12:00:03", ifname="tap1_kata", id="eth1",
                                 vhost=True, mtu=1400)])
    argv = argv_for(cfg)
    assert opt(argv, "-netdev") == [
        "tap,id=net0,fd=11", "tap,id=eth1,ifname=tap1_kata,script=no,downscript=no,vhost=on"]
    assert "virtio-net-pci,netdev=net0,mac=02:00:c6:12:00:02,id=dev-net0,romfile=" in devices(
        argv)
    assert ("virtio-net-pci,netdev=eth1,mac=02:00:c6:12:00:03,id=dev-eth1,romfile=,"
            "host_mtu=1400") in devices(argv)
    assert passed_fds(cfg, SERIAL) == [11]


@pytest.mark.parametrize("nic", [NicSpec(mac="02:00:00:00:00:01"),
                                 NicSpec(mac="02:00:00:00:00:01", tap_fd=3, ifname="tap0")])
def test_nic_needs_exactly_one_tap(nic):
    with pytest.raises(ValueError, match="exactly one"):
        argv_for(VMConfig(nics=[nic]))


def test_debug_and_extra_kernel_params():
    quiet = kernel_cmdline(VMConfig())
    assert " quiet" in quiet and "pykata.debug=1" not in quiet
    debug = kernel_cmdline(VMConfig(debug=True, kernel_params=["pykata.shell=1"]))
    assert "quiet" not in debug.split()
    assert debug.split()[-3:] == ["pykata.debug=1", "agent.log=debug", "pykata.shell=1"]
    assert "panic=-1" in debug.split()


def test_options_seccomp_paused_firmware_initrd_extra():
    argv = argv_for(VMConfig(initrd=None, extra_qemu_args=["-d", "guest_errors"]),
                    seccomp=False, start_paused=False, firmware="/usr/share/qemu/qboot.rom")
    assert "-sandbox" not in argv and "-S" not in argv and "-initrd" not in argv
    assert opt(argv, "-bios") == ["/usr/share/qemu/qboot.rom"]
    assert argv[-2:] == ["-d", "guest_errors"]
    assert "-bios" not in argv_for()


def test_commas_in_paths_are_escaped():
    assert q("/a,b") == "/a,,b"
    paths = VMPaths(Path("/run/x,y"))
    argv = build_argv(VMConfig(), paths, accel="tcg", cpu="max",
                      channel=SerialChannel(paths.agent_socket))
    assert opt(argv, "-qmp") == ["unix:/run/x,,y/qmp.sock,server=on,wait=off"]
    assert any("path=/run/x,,y/agent.sock," in c for c in opt(argv, "-chardev"))


def test_socket_path_length_check():
    assert VMPaths(STATE).too_long() == []
    long_dir = VMPaths(Path("/run/pykata/k8s.io") / ("x" * 90))
    assert long_dir.qmp_socket in long_dir.too_long()


def test_debug_console_off_by_default():
    argv = argv_for()
    assert not any("dbgcon" in c for c in opt(argv, "-chardev"))
    assert not any("pykata.console.0" in d for d in devices(argv))
    assert "agent.debug_console" not in kernel_cmdline(VMConfig()).split()


def test_debug_console_port_and_kernel_parameter():
    for channel in (SERIAL, VsockChannel(cid=7)):
        argv = argv_for(VMConfig(debug_console=True, kernel_params=["x=1"]), channel=channel)
        assert devices(argv).count("virtio-serial-pci,id=serial0") == 1
        assert f"socket,id=dbgcon,path={STATE}/dbgcon.sock,server=on,wait=off" in opt(
            argv, "-chardev")
        assert "virtserialport,chardev=dbgcon,name=pykata.console.0,id=dbgcon0" in devices(argv)
        cmdline = opt(argv, "-append")[0].split()
        assert "agent.debug_console" in cmdline and cmdline[-1] == "x=1"  # theirs last
    assert PATHS.debug_console_socket in PATHS.sockets()
    assert PATHS.too_long() == []


def test_a_vm_that_may_grow_has_room_for_cpus_and_dimms():
    from shim.vmm.qemu_args import kernel_cmdline, memory_arg, smp_arg

    fixed = VMConfig(vcpus=1, memory_mib=512)
    assert (smp_arg(fixed), memory_arg(fixed)) == ("1", "512M")
    assert "memhp_default_state" not in kernel_cmdline(fixed)
    growing = VMConfig(vcpus=1, memory_mib=512, max_vcpus=4, max_memory_mib=4096)
    assert smp_arg(growing) == "1,maxcpus=4"
    assert memory_arg(growing) == "512M,slots=8,maxmem=4096M"
    assert "memhp_default_state=online" in kernel_cmdline(growing).split()
    with_image = VMConfig(vcpus=1, memory_mib=512, max_memory_mib=1024, image="/i.img")
    assert memory_arg(with_image, image_bytes=128 << 20) == "512M,slots=9,maxmem=1152M"


def test_an_image_without_a_first_stage_is_the_root_the_kernel_mounts():
    direct = VMConfig(image="/i.img", initrd=None)
    argv = argv_for(direct, image_bytes=128 << 20)
    assert "-initrd" not in argv
    words = opt(argv, "-append")[0].split()
    for word in ("root=/dev/pmem0", "rootfstype=ext4", "rootflags=dax=always", "ro",
                 "rootwait", "init=/init"):
        assert word in words
    # read-only and shared on the host, whatever the guest mounts
    assert any("readonly=on" in o and "share=on" in o for o in opt(argv, "-object"))
    # with a first stage (a modular kernel's initrd), that stage mounts the image
    staged = argv_for(VMConfig(image="/i.img", initrd="/stage1.img"), image_bytes=128 << 20)
    assert opt(staged, "-initrd") == ["/stage1.img"]
    assert "root=/dev/pmem0" not in opt(staged, "-append")[0]
    # no image: the initrd is the root
    assert "root=/dev/pmem0" not in opt(argv_for(VMConfig()), "-append")[0]
