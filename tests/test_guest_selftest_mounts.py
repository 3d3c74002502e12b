"""The guest self-test's check of what /init mounted (it runs in the guest; logic here)."""

from __future__ import annotations

from guest.init import pykata_selftest as selftest

CGROUPS = """#subsys_name\thierarchy\tnum_cgroups\tenabled
cpu\t1\t1\t1
memory\t2\t1\t1
hugetlb\t0\t1\t0
pids\t3\t1\t1
"""

FLAGS = "rw,nosuid,nodev,noexec,relatime"
MOUNTINFO = "\n".join([
    "1 0 259:0 / / ro,relatime - ext4 /dev/root ro,dax=always",
    "2 1 0:4 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw",
    f"3 1 0:5 / /sys {FLAGS} - sysfs sysfs rw",
    "4 1 0:6 / /dev rw,nosuid,relatime - devtmpfs devtmpfs rw,size=1k,mode=755",
    "5 4 0:7 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620",
    "6 4 0:8 / /dev/shm rw,nosuid,nodev,relatime - tmpfs shm rw",
    "7 1 0:9 / /run rw,nosuid,nodev,relatime - tmpfs tmpfs rw,mode=755",
    "8 1 0:10 / /tmp rw,nosuid,nodev,relatime - tmpfs tmpfs rw",
    f"9 3 0:11 / /sys/fs/cgroup {FLAGS} - tmpfs cgroup rw,mode=755",
    f"10 9 0:12 / /sys/fs/cgroup/cpu {FLAGS} - cgroup cgroup rw,cpu",
    f"11 9 0:13 / /sys/fs/cgroup/memory {FLAGS} - cgroup cgroup rw,memory",
    f"12 9 0:14 / /sys/fs/cgroup/pids {FLAGS} - cgroup cgroup rw,pids",
    f"13 9 0:15 / /sys/fs/cgroup/unified {FLAGS} - cgroup2 cgroup2 rw",
])


def test_expected_mounts_follow_the_enabled_controllers() -> None:
    want = selftest.expected_mounts(CGROUPS)
    cgroup_points = sorted(m for m in want if m.startswith("/sys/fs/cgroup/"))
    assert cgroup_points == ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory",
                             "/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified"]
    assert want["/sys/fs/cgroup/memory"] == ("cgroup", {"nosuid", "nodev", "noexec", "memory"})
    assert set(selftest.BASE_MOUNTS) <= set(want)


def test_the_cgroup_v2_layout_wants_cgroup2_alone() -> None:
    want = selftest.expected_mounts(None)
    assert want["/sys/fs/cgroup"] == ("cgroup2", {"nosuid", "nodev", "noexec"})
    assert not [m for m in want if m.startswith("/sys/fs/cgroup/")]


def test_all_mounted_as_asked_reports_nothing() -> None:
    assert selftest.missing_mounts(selftest.expected_mounts(CGROUPS), MOUNTINFO) == []


def test_a_missing_hierarchy_a_wrong_type_and_a_lost_option_are_named() -> None:
    lines = [line for line in MOUNTINFO.splitlines() if "/sys/fs/cgroup/pids" not in line]
    text = "\n".join(lines)
    text = text.replace("/tmp rw,nosuid,nodev,relatime - tmpfs", "/tmp rw,nosuid,nodev - ext4")
    text = text.replace("/dev/pts rw,nosuid,noexec,", "/dev/pts rw,nosuid,")
    assert selftest.missing_mounts(selftest.expected_mounts(CGROUPS), text) == [
        "/dev/pts", "/sys/fs/cgroup/pids", "/tmp"]


def test_a_controller_name_in_the_super_block_options_counts() -> None:
    # cgroup v1 shows its controller among the super-block options, not the mount's own
    want = {"/sys/fs/cgroup/cpu": ("cgroup", {"noexec", "cpu"})}
    assert selftest.missing_mounts(want, MOUNTINFO) == []
