"""pykata's own guest kernel: the config fragments against what the guest needs, the
"did every option survive olddefconfig" check, the cache key."""

from __future__ import annotations

import pytest

from guest import kernel_build as kb
from guest.debs import Deb
from guest.ui import BuildError

#: Options the agent, /init, the VMM's devices and the tests cannot do without, each
#: with the reason. The fragments must ask for every one of them (as built in).
MUST_HAVE = {
    "CONFIG_MAGIC_SYSRQ": "/proc/sysrq-trigger: test_deaths panics a guest with it",
    # the VM
    "CONFIG_64BIT": "x86_64 userland (python3.11, crun, busybox are 64-bit)",
    "CONFIG_SMP": "more than one vCPU",
    "CONFIG_KERNEL_LZ4": "the fastest kernel decompression under TCG (HOST-FACTS)",
    "CONFIG_BLK_DEV_INITRD": "the guest is an initrd (or a first stage for the image)",
    "CONFIG_RD_GZIP": "pykata-image build --compression gzip",
    "CONFIG_ACPI": "q35 describes CPUs, DIMM slots and PCIe through ACPI",
    "CONFIG_PCI": "every virtio device is a PCI function on q35",
    "CONFIG_HOTPLUG_PCI_PCIE": "a template's clones get virtio-fs and NICs hot-plugged",
    "CONFIG_HOTPLUG_PCI_ACPI": "QEMU's q35 hot-plugs into root ports with ACPI too",
    "CONFIG_SERIAL_8250_CONSOLE": "console=ttyS0: the console log the shim keeps",
    "CONFIG_KVM_GUEST": "production hosts run the VM under KVM",
    "CONFIG_PARAVIRT": "KVM's paravirtual clock and spinlocks",
    # devices (shim/vmm/qemu_args.py)
    "CONFIG_VIRTIO_PCI": "virtio transport",
    "CONFIG_VIRTIO_NET": "the pod's eth0",
    "CONFIG_VIRTIO_CONSOLE": "the agent channel is a virtserialport (agent.channel.0)",
    "CONFIG_VIRTIO_VSOCKETS": "the agent channel over vsock on production hosts",
    "CONFIG_VIRTIO_FS": "the shared container rootfs (tag kataShared)",
    "CONFIG_FUSE_DAX": "virtio-fs with a DAX window",
    "CONFIG_VIRTIO_PMEM": "the guest image on virtio-pmem (guest/image.py)",
    "CONFIG_FS_DAX": "the image is mounted with dax=always",
    "CONFIG_ZONE_DEVICE": "DAX pages need ZONE_DEVICE",
    "CONFIG_VIRTIO_BLK": "block volumes",
    "CONFIG_VIRTIO_BALLOON": "free page reporting (reclaim_guest_freed_memory)",
    "CONFIG_PAGE_REPORTING": "the balloon's free page reporting",
    "CONFIG_HW_RANDOM_VIRTIO": "entropy at boot; without it Python waits ~1 s under TCG",
    "CONFIG_VIRTIO_MEM": "memory hot-plug by virtio-mem",
    "CONFIG_COMPACTION": "VIRTIO_MEM needs CONTIG_ALLOC, gone without COMPACTION",
    "CONFIG_MEMORY_HOTPLUG": "pod resize hot-plugs DIMMs (shim/vmm/resize.py)",
    "CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE": "hot-plugged memory is usable at once",
    "CONFIG_ACPI_HOTPLUG_MEMORY": "DIMMs arrive as ACPI events",
    "CONFIG_HOTPLUG_CPU": "pod resize hot-plugs vCPUs",
    "CONFIG_ACPI_HOTPLUG_CPU": "hot-plugged vCPUs arrive as ACPI events",
    # file systems (/init, the agent's storages)
    "CONFIG_DEVTMPFS": "/init mounts devtmpfs on /dev",
    "CONFIG_TMPFS": "/run, /tmp, /dev/shm, the image's upper layer",
    "CONFIG_TMPFS_POSIX_ACL": "containers' tmpfs mounts with ACLs",
    "CONFIG_TMPFS_XATTR": "overlayfs upper dirs on tmpfs need xattrs",
    "CONFIG_OVERLAY_FS": "container rootfs layers, and the image's writable top",
    "CONFIG_EXT4_FS": "the guest image and block volumes",
    "CONFIG_PROC_FS": "/proc",
    "CONFIG_SYSFS": "/sys",
    "CONFIG_UNIX98_PTYS": "terminals for exec -t and the debug console",
    # containers (crun, runc)
    "CONFIG_NAMESPACES": "containers",
    "CONFIG_USER_NS": "user namespaces in pod specs",
    "CONFIG_PID_NS": "each container's own PIDs",
    "CONFIG_NET_NS": "a container may ask for its own network namespace",
    "CONFIG_IPC_NS": "IPC sysctls per container",
    "CONFIG_UTS_NS": "the pod's hostname",
    "CONFIG_TIME_NS": "crun supports time namespaces",
    "CONFIG_CGROUPS": "resources of containers",
    "CONFIG_MEMCG": "memory limits and the agent's memory stats",
    "CONFIG_CGROUP_PIDS": "pids limits",
    "CONFIG_CPUSETS": "cpuset cgroups",
    "CONFIG_CGROUP_SCHED": "cpu shares and quota",
    "CONFIG_CFS_BANDWIDTH": "cpu quota",
    "CONFIG_CGROUP_FREEZER": "pause/resume of containers",
    "CONFIG_CGROUP_DEVICE": "the device cgroup (v1)",
    "CONFIG_CGROUP_CPUACCT": "cpu usage stats",
    "CONFIG_BLK_CGROUP": "blkio stats and limits",
    "CONFIG_CGROUP_HUGETLB": "the agent reads hugetlb stats",
    "CONFIG_CGROUP_BPF": "crun's device filter on cgroup v2",
    "CONFIG_BPF_SYSCALL": "crun's device filter on cgroup v2",
    "CONFIG_SECCOMP_FILTER": "containers' seccomp profiles",
    "CONFIG_SYSVIPC": "kernel.shm_rmid_forced (the pod sysctls test)",
    "CONFIG_POSIX_MQUEUE": "fs.mqueue sysctls",
    "CONFIG_BASE_FULL": "pid_max is 4096 without it",
    "CONFIG_MULTIUSER": "uids and gids at all",
    "CONFIG_FUTEX": "threads",
    "CONFIG_EPOLL": "asyncio",
    "CONFIG_SIGNALFD": "programs in containers",
    "CONFIG_EVENTFD": "programs in containers",
    "CONFIG_TIMERFD": "programs in containers",
    "CONFIG_INOTIFY_USER": "programs in containers",
    "CONFIG_SHMEM": "memfd and shared memory",
    # network (agent/network.py, iptables)
    "CONFIG_UNIX": "Unix sockets",
    "CONFIG_INET": "IPv4",
    "CONFIG_IPV6": "IPv6 addresses and routes the agent sets",
    "CONFIG_NF_TABLES": "iptables-nft",
    "CONFIG_NFT_COMPAT": "iptables-nft's xtables matches and targets",
    "CONFIG_NFT_NAT": "iptables -t nat",
    "CONFIG_NETFILTER_XT_MATCH_COMMENT": "iptables-restore: comment revision 0",
    "CONFIG_NETFILTER_XT_MATCH_CONNTRACK": "-m conntrack rules",
    "CONFIG_NETFILTER_XT_TARGET_MASQUERADE": "-j MASQUERADE",
    "CONFIG_IP_NF_TARGET_REJECT": "-j REJECT (v4)",
    "CONFIG_IP6_NF_TARGET_REJECT": "-j REJECT (v6)",
}
#: Options that must stay off, with the reason.
MUST_NOT_HAVE = {
    "CONFIG_MODULES": "everything is built in; the initrd ships no modules",
    "CONFIG_IPV6_SIT": "a sit0 interface would appear in the pod",
}


@pytest.fixture(scope="module")
def wanted() -> dict[str, tuple[str, str]]:
    return kb.wanted_options(kb.load_fragments())


@pytest.mark.parametrize("option", sorted(MUST_HAVE))
def test_the_fragments_ask_for_what_the_guest_needs(wanted, option):
    assert option in wanted, f"{option} ({MUST_HAVE[option]}) is in no fragment"
    assert wanted[option][0] == "y", f"{option} must be built in (=y): {MUST_HAVE[option]}"


@pytest.mark.parametrize("option", sorted(MUST_NOT_HAVE))
def test_the_fragments_keep_off_what_must_be_off(wanted, option):
    assert wanted.get(option, ("?",))[0] == kb.NOT_SET, MUST_NOT_HAVE[option]


def test_every_fragment_explains_itself():
    for name, text in kb.load_fragments().items():
        assert text.lstrip().startswith("#"), f"{name} starts without a comment saying why"


def test_parse_config_reads_values_and_unset_lines():
    text = ('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="-pykata"\nCONFIG_D=240\n'
            "# a comment\n\n")
    assert kb.parse_config(text) == {"CONFIG_A": "y", "CONFIG_B": "n",
                                     "CONFIG_C": '"-pykata"', "CONFIG_D": "240"}


def test_parse_fragment_rejects_junk_and_twice_set_options():
    assert kb.parse_fragment("# why\nCONFIG_A=y\nCONFIG_B=n\n") == {"CONFIG_A": "y",
                                                                    "CONFIG_B": "n"}
    with pytest.raises(BuildError, match=r"x\.conf:2"):
        kb.parse_fragment("CONFIG_A=y\nVIRTIO=y\n", "x.conf")
    with pytest.raises(BuildError, match="set twice"):
        kb.parse_fragment("CONFIG_A=y\nCONFIG_A=n\n")


def test_two_fragments_disagreeing_is_an_error():
    with pytest.raises(BuildError, match="CONFIG_A"):
        kb.wanted_options({"a.conf": "CONFIG_A=y\n", "b.conf": "CONFIG_A=n\n"})
    agreed = kb.wanted_options({"a.conf": "CONFIG_A=y\n", "b.conf": "CONFIG_A=y\n"})
    assert agreed == {"CONFIG_A": ("y", "a.conf")}


def test_merge_replaces_in_place_and_appends_the_rest():
    base = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n"
    wanted = {"CONFIG_B": ("y", "f"), "CONFIG_C": ("n", "f"), "CONFIG_D": ('"x"', "f")}
    assert kb.merge(base, wanted) == (
        'CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D="x"\n')


def test_the_survival_check_catches_a_dropped_option():
    # VIRTIO_MEM asked for, but olddefconfig dropped it (no CONTIG_ALLOC): the trap
    # the first try met; MODULES asked off and off; an absent option counts as not set
    wanted = kb.wanted_options({
        "memory.conf": "CONFIG_VIRTIO_MEM=y\nCONFIG_COMPACTION=y\n",
        "base.conf": "CONFIG_MODULES=n\nCONFIG_NR_CPUS=240\nCONFIG_SWAP=y\n",
    })
    final = kb.parse_config(
        "# CONFIG_VIRTIO_MEM is not set\nCONFIG_COMPACTION=y\n"
        "# CONFIG_MODULES is not set\nCONFIG_NR_CPUS=64\n")
    lost = kb.dropped(wanted, final)
    assert lost == [
        "CONFIG_VIRTIO_MEM=y (memory.conf): olddefconfig left not set",
        "CONFIG_NR_CPUS=240 (base.conf): olddefconfig left 64",
        "CONFIG_SWAP=y (base.conf): olddefconfig left not set",
    ]
    assert kb.dropped(wanted, {"CONFIG_VIRTIO_MEM": "y", "CONFIG_COMPACTION": "y",
                               "CONFIG_NR_CPUS": "240", "CONFIG_SWAP": "y"}) == []


def test_configure_fails_listing_what_was_dropped(tmp_path, monkeypatch):
    """configure() runs make (faked here) and refuses a config that lost options."""
    obj = tmp_path / "obj"
    obj.mkdir()

    def fake_make(src, o, log, *targets, jobs=1):
        if targets == ("tinyconfig",):
            (o / ".config").write_text("# CONFIG_COMPACTION is not set\n")
        else:  # olddefconfig: VIRTIO_MEM's dependency is missing, so it goes
            (o / ".config").write_text("CONFIG_COMPACTION=y\n# CONFIG_VIRTIO_MEM is not set\n")
        return ""

    monkeypatch.setattr(kb, "_make", fake_make)
    wanted = kb.wanted_options({"m.conf": "CONFIG_COMPACTION=y\nCONFIG_VIRTIO_MEM=y\n"})
    with pytest.raises(BuildError, match=r"1 kernel option.*\n  CONFIG_VIRTIO_MEM=y \(m.conf\)"):
        kb.configure(tmp_path, obj, wanted, tmp_path / "log")


def _deb(version: str = "6.1.192-3", sha: str = "ab" * 32) -> Deb:
    return Deb("linux-source-6.1", version, "all", sha, 1)


def test_the_cache_key_follows_source_fragments_and_recipe():
    frags = {"a.conf": "CONFIG_A=y\n"}
    key = kb.cache_key(_deb(), frags)
    assert key == kb.cache_key(_deb(), dict(frags))  # stable
    assert len(key) == 20
    assert kb.cache_key(_deb("6.1.193-1"), frags) != key  # a new source version
    assert kb.cache_key(_deb(sha="cd" * 32), frags) != key  # a rebuilt package
    assert kb.cache_key(_deb(), {"a.conf": "CONFIG_A=n\n"}) != key  # a changed option
    assert kb.cache_key(_deb(), {"b.conf": "CONFIG_A=y\n"}) != key  # a renamed fragment
    assert kb.cache_key(_deb(), frags, {**kb.RECIPE, "recipe": 2}) != key  # a new recipe


def test_a_cached_kernel_is_found_only_when_complete(tmp_path):
    assert kb.cached(tmp_path, "k") is None
    folder = tmp_path / "k"
    folder.mkdir()
    (folder / "vmlinuz").write_bytes(b"x" * 10)
    (folder / "build.json").write_text(
        '{"release": "6.1.192-pykata", "source": "linux-source-6.1 6.1.192-3", "size": 10}')
    hit = kb.cached(tmp_path, "k")
    assert hit is not None and hit.cached and hit.release == "6.1.192-pykata"
    (folder / "vmlinuz").write_bytes(b"x" * 3)  # truncated: not a kernel to use
    assert kb.cached(tmp_path, "k") is None


def test_build_kernel_uses_the_cache_without_building(tmp_path, monkeypatch):
    frags = {"a.conf": "CONFIG_A=y\n"}
    deb = _deb()

    class FakeApt:
        def resolve(self, names):
            return {n: deb for n in names}

    key = kb.cache_key(deb, frags)
    (tmp_path / key).mkdir()
    (tmp_path / key / "vmlinuz").write_bytes(b"k")
    (tmp_path / key / "build.json").write_text(
        '{"release": "r", "source": "s", "size": 1, "seconds": 300}')
    monkeypatch.setattr(kb, "_make", lambda *a, **k: pytest.fail("built although cached"))
    got = kb.build_kernel(FakeApt(), tmp_path, fragments=frags)  # type: ignore[arg-type]
    assert got.cached and got.key == key and got.vmlinuz == tmp_path / key / "vmlinuz"
