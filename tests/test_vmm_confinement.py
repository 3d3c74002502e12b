"""QEMU and virtiofsd confinement: the virtiofsd probe, its argv, /proc status, `check`.

The probe tests use a small fake virtiofsd (a Python script written into
tmp_path) that fails the modes it is told to fail and, for the seccomp modes it
accepts, loads a real allow-all seccomp filter, so /proc shows `Seccomp: 2`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shim.vmm import hostcaps, procs
from shim.vmm.confinement import ConfinementError, ConfinementFloor
from shim.vmm.hostcaps import HostCapsCache, VirtiofsdConfinement, probe_virtiofsd
from shim.vmm.virtiofsd import exit_reason, option_value, seccomp_killed, virtiofsd_argv

ROOT = Path(__file__).resolve().parent.parent
REAL_QEMU = "/usr/bin/qemu-system-x86_64"
REAL_VIRTIOFSD = os.environ.get("PYKATA_TEST_VIRTIOFSD", "/usr/share/pykata/virtiofsd/virtiofsd")

FAKE_VIRTIOFSD = """\
import os, signal, socket, struct, sys

opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
sandbox, seccomp = opts.get("sandbox", "namespace"), opts.get("seccomp", "kill")
if sandbox in HANG_SANDBOX:
    signal.pause()  # a host too busy to start it in time
if sandbox in FAIL_SANDBOX or os.path.exists(FAIL_ALL):
    sys.exit("fake virtiofsd: cannot enter the %s sandbox" % sandbox)
if seccomp in FAIL_SECCOMP:
    sys.exit("fake virtiofsd: seccomp %s refused" % seccomp)


listener = socket.socket(socket.AF_UNIX)
listener.bind(opts["socket-path"])
listener.listen()
if seccomp in FILTER_SECCOMP:
    sys.path.insert(0, TESTS)
    from fake_seccomp import load_allow_all_filter

    load_allow_all_filter()
conn, _ = listener.accept()
while len(header := conn.recv(12)) == 12:
    request, _flags, size = struct.unpack("<III", header)
    if size:
        conn.recv(size)
    if request == 1:  # VHOST_USER_GET_FEATURES
        conn.sendall(struct.pack("<IIIQ", 1, 0x5, 8, 0))
if seccomp in SIGSYS_SECCOMP:  # as if its filter killed it while serving
    if sandbox == "namespace":
        sys.exit(256 - signal.SIGSYS)  # the parent passes on its child's signal as a byte
    os.kill(os.getpid(), signal.SIGSYS)
sys.exit(0)
"""


def fake_virtiofsd(
    tmp_path: Path,
    *,
    fail_sandbox: tuple[str, ...] = (),
    fail_seccomp: tuple[str, ...] = (),
    filter_seccomp: tuple[str, ...] = ("kill", "log"),
    sigsys_seccomp: tuple[str, ...] = (),
    hang_sandbox: tuple[str, ...] = (),
) -> Path:
    path = tmp_path / "virtiofsd"
    consts = (
        f"FAIL_SANDBOX = {fail_sandbox!r}\nFAIL_SECCOMP = {fail_seccomp!r}\n"
        f"FILTER_SECCOMP = {filter_seccomp!r}\nSIGSYS_SECCOMP = {sigsys_seccomp!r}\n"
        f"HANG_SANDBOX = {hang_sandbox!r}\nTESTS = {str(ROOT / 'tests')!r}\n"
        f"FAIL_ALL = {str(tmp_path / 'fail-all')!r}\n"
    )
    body = FAKE_VIRTIOFSD.replace("import os", consts + "import os", 1)
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------- argv
def test_argv_carries_the_chosen_modes():
    choice = VirtiofsdConfinement("chroot", "log", "chrooted", "Seccomp: filter")
    argv = virtiofsd_argv(
        "/vfsd", Path("/s/vfs.sock"), Path("/s/shared"), "auto", confinement=choice.args()
    )
    assert argv == [
        "/vfsd",
        "--socket-path=/s/vfs.sock",
        "--shared-dir=/s/shared",
        "--cache=auto",
        "--sandbox=chroot",
        "--seccomp=log",
    ]


@pytest.mark.parametrize(
    "extra",
    [["--sandbox=none", "--thread-pool-size=2"], ["--thread-pool-size=2", "--sandbox", "none"]],
)
def test_user_extra_args_win_for_the_same_option(extra):
    argv = virtiofsd_argv(
        "/vfsd",
        Path("/s/vfs.sock"),
        Path("/s/shared"),
        "auto",
        extra,
        confinement=["--sandbox=namespace", "--seccomp=kill"],
    )
    assert "--sandbox=namespace" not in argv
    assert option_value(argv, "--sandbox") == "none"
    assert "--seccomp=kill" in argv and "--thread-pool-size=2" in argv
    assert argv[-len(extra) :] == extra


def test_option_value_forms():
    assert option_value(["--seccomp=log"], "--seccomp") == "log"
    assert option_value(["--seccomp", "kill", "--seccomp=none"], "--seccomp") == "none"
    assert option_value(["--seccomp"], "--seccomp") is None
    assert option_value(["--seccomp-x=1", "--sandbox=none"], "--seccomp") is None


def test_no_probe_result_means_no_options():
    assert VirtiofsdConfinement(None, None, "nothing works", "not tried").args() == []


# --------------------------------------------------------------------------- /proc status
STATUS = """\
Name:\tvirtiofsd
State:\tS (sleeping)
NoNewPrivs:\t1
Seccomp:\t2
Seccomp_filters:\t1
"""


def test_status_parser():
    fields = procs.parse_status(STATUS)
    assert fields["Name"] == "virtiofsd" and fields["State"] == "S (sleeping)"
    seen = procs.confinement_from_status(fields)
    assert (seen.seccomp, seen.no_new_privs, seen.filtered) == (2, True, True)
    assert str(seen) == "Seccomp: filter, NoNewPrivs: 1"
    old_kernel = procs.confinement_from_status(procs.parse_status("Name:\tx\n"))
    assert (old_kernel.seccomp, old_kernel.no_new_privs) == (None, None)
    assert old_kernel.seccomp_name == "unknown" and not old_kernel.filtered


def test_read_confinement_of_live_and_gone_processes():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        seen = procs.read_confinement(child.pid)
        assert seen is not None and seen.seccomp in (0, 2)  # 2 if pytest itself runs filtered
        assert procs.children(os.getpid()).count(child.pid) == 1
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert procs.read_confinement(child.pid) is None


# --------------------------------------------------------------------------- the probe
def test_probe_takes_the_strongest_modes(tmp_path):
    choice = probe_virtiofsd(str(fake_virtiofsd(tmp_path)))
    assert (choice.sandbox, choice.seccomp) == ("namespace", "kill")
    assert choice.args() == ["--sandbox=namespace", "--seccomp=kill"]
    assert "Seccomp: filter" in choice.seccomp_detail


def test_probe_falls_back_when_a_mode_fails(tmp_path):
    path = fake_virtiofsd(tmp_path, fail_sandbox=("namespace",), fail_seccomp=("kill",))
    choice = probe_virtiofsd(str(path))
    assert (choice.sandbox, choice.seccomp) == ("chroot", "log")
    assert "namespace failed: exited with status 1" in choice.sandbox_detail
    assert "cannot enter the namespace sandbox" in choice.sandbox_detail
    assert (
        "kill failed" in choice.seccomp_detail and "seccomp kill refused" in choice.seccomp_detail
    )


def test_probe_wants_a_filter_it_can_see(tmp_path):
    # accepts --seccomp=kill/log but loads no filter: that is no seccomp at all
    choice = probe_virtiofsd(str(fake_virtiofsd(tmp_path, filter_seccomp=())))
    assert (choice.sandbox, choice.seccomp) == ("namespace", "none")
    assert "no seccomp filter on the serving process" in choice.seccomp_detail


@pytest.mark.parametrize("fail_sandbox", [(), ("namespace",)])
def test_probe_notices_a_virtiofsd_killed_by_its_filter(tmp_path, fail_sandbox):
    path = fake_virtiofsd(tmp_path, fail_sandbox=fail_sandbox, sigsys_seccomp=("kill",))
    choice = probe_virtiofsd(str(path))
    assert choice.seccomp == "log"
    assert "SIGSYS: killed by its own seccomp filter" in choice.seccomp_detail


def test_exit_reason_names_a_seccomp_kill():
    assert exit_reason(1) == "status 1"
    assert "SIGSYS" in exit_reason(-31) and "SIGSYS" in exit_reason(225)
    assert not seccomp_killed(0) and not seccomp_killed(None)


def test_probe_where_nothing_works_is_not_cached(tmp_path):
    path = fake_virtiofsd(tmp_path, fail_sandbox=("namespace", "chroot", "none"))
    cache = HostCapsCache(tmp_path / "cache")
    choice = probe_virtiofsd(str(path), cache)
    assert (choice.sandbox, choice.seccomp, choice.args()) == (None, None, [])
    assert choice.sandbox_detail.count("failed") == 3
    assert not (tmp_path / "cache" / "host-caps.json").exists()
    missing = probe_virtiofsd(str(tmp_path / "nope"), cache)
    assert missing.args() == [] and "not found" in missing.detail


def test_probe_is_cached_by_file_identity(tmp_path):
    path = fake_virtiofsd(tmp_path)
    cache = HostCapsCache(tmp_path / "cache")
    first = probe_virtiofsd(str(path), cache)
    (tmp_path / "fail-all").touch()  # the same binary now fails: the cache answers
    assert probe_virtiofsd(str(path), cache) == first
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # "replaced"
    assert probe_virtiofsd(str(path), cache).sandbox is None


def test_a_probe_that_timed_out_is_not_cached(tmp_path):
    path = fake_virtiofsd(tmp_path, hang_sandbox=("namespace",))
    cache = HostCapsCache(tmp_path / "cache")
    choice = probe_virtiofsd(str(path), cache, timeout=0.5)
    assert choice.sandbox == "chroot"
    assert "namespace failed (timed out)" in choice.sandbox_detail
    assert not (tmp_path / "cache" / "host-caps.json").exists(), "a slow moment is not cached"
    healthy = fake_virtiofsd(tmp_path)  # the same file, the moment passed
    assert healthy == path
    assert probe_virtiofsd(str(path), cache).sandbox == "namespace"


def test_a_qemu_probe_that_timed_out_is_not_cached(tmp_path, monkeypatch):
    qemu = tmp_path / "qemu"
    qemu.write_text("#!/bin/sh\nexit 0\n")
    qemu.chmod(0o755)
    cache = HostCapsCache(tmp_path / "cache")

    def slow(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], 10)

    monkeypatch.setattr(hostcaps.subprocess, "run", slow)
    assert hostcaps.probe_seccomp(str(qemu), cache)[0] is False
    monkeypatch.undo()
    assert hostcaps.probe_seccomp(str(qemu), cache) == (True, "")


def test_probe_leaves_nothing_behind(tmp_path):
    before = set(os.listdir("/tmp"))
    probe_virtiofsd(str(fake_virtiofsd(tmp_path, fail_seccomp=("kill",))))
    assert not [n for n in set(os.listdir("/tmp")) - before if n.startswith("pykata-vfsd-probe")]
    assert not [
        p for p in procs.children(os.getpid()) if str(tmp_path) in " ".join(procs.cmdline(p))
    ]


# --------------------------------------------------------------------------- the real one
@pytest.mark.skipif(not os.path.exists(REAL_VIRTIOFSD), reason=f"no {REAL_VIRTIOFSD}")
def test_real_virtiofsd_runs_with_the_chosen_modes(tmp_path):
    choice = probe_virtiofsd(REAL_VIRTIOFSD)
    assert choice.sandbox is not None, choice.detail
    socket_path, shared = tmp_path / "vfs.sock", tmp_path / "shared"
    shared.mkdir()
    argv = virtiofsd_argv(REAL_VIRTIOFSD, socket_path, shared, "auto", confinement=choice.args())
    with (tmp_path / "log").open("wb") as log:
        popen = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        conn = hostcaps._get_features(_wait_socket(popen, socket_path, deadline), deadline)
        with conn:  # it answered: it is serving, inside its sandbox and filter
            pid = hostcaps.virtiofsd_serving_pid(popen.pid)
            seen = procs.read_confinement(pid)
            assert seen is not None
            if choice.seccomp in ("kill", "log"):
                assert seen.seccomp == 2 and seen.no_new_privs, seen
            if choice.sandbox == "namespace":
                assert pid != popen.pid
                assert procs.namespace(pid, "mnt") != procs.namespace("self", "mnt")
        assert popen.wait(5) == 0  # it leaves by itself when its client hangs up
        assert procs.read_confinement(pid) is None
    finally:
        if popen.poll() is None:
            os.kill(popen.pid, signal.SIGKILL)
        popen.wait()


def _wait_socket(popen: subprocess.Popen[bytes], path: Path, deadline: float) -> Path:
    while not path.exists():
        assert popen.poll() is None, f"virtiofsd exited with status {popen.returncode}"
        assert time.monotonic() < deadline, "virtiofsd did not create its socket"
        time.sleep(0.005)
    return path


# --------------------------------------------------------------------------- check
def run_check(tmp_path: Path, floor: str = "") -> subprocess.CompletedProcess:
    """`pykata-runtime check` on a host whose QEMU lacks seccomp and whose virtiofsd
    cannot enter its namespace sandbox; `floor` is more [hypervisor.qemu] lines."""
    qemu = tmp_path / "qemu"
    qemu.write_text(
        "#!/bin/sh\necho \"qemu-system-x86_64: -sandbox on: There is no option group 'sandbox'\""
        " >&2\nexit 1\n"
    )
    qemu.chmod(0o755)
    vfsd = fake_virtiofsd(tmp_path, fail_sandbox=("namespace",))
    config = tmp_path / "c.toml"
    config.write_text(
        f'[hypervisor.qemu]\npath = "{qemu}"\naccel = "tcg"\nvirtio_fs_daemon = "{vfsd}"\n'
        f'virtio_fs_extra_args = ["--seccomp", "log"]\n{floor}'
    )
    env = {**os.environ, "PYKATA_STATE_ROOT": str(tmp_path / "state")}
    return subprocess.run(
        [sys.executable, "-m", "shim.admin", "--config", str(config), "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def has_line(result: subprocess.CompletedProcess, start: str, *parts: str) -> bool:
    return any(
        line.startswith(start) and all(p in line for p in parts)
        for line in result.stdout.splitlines()
    )


def test_check_fails_a_host_below_the_confinement_floor(tmp_path):
    result = run_check(tmp_path)
    assert result.returncode == 1, result.stdout
    assert has_line(
        result, "[FAIL] QEMU -sandbox", "no option group", "qemu_sandbox_required = false"
    ), result.stdout
    assert has_line(
        result,
        "[FAIL] virtiofsd --sandbox",
        "--sandbox=chroot is below the floor namespace",
        "cannot enter the namespace sandbox",
        'virtio_fs_sandbox_floor = "chroot"',
    ), result.stdout
    assert has_line(
        result,
        "[FAIL] virtiofsd --seccomp",
        "--seccomp=log is below the floor kill (virtio_fs_extra_args sets it)",
        'virtio_fs_seccomp_floor = "log"',
    ), result.stdout


def test_check_reports_the_protections_of_a_lowered_floor(tmp_path):
    floor = (
        'qemu_sandbox_required = false\nvirtio_fs_sandbox_floor = "chroot"\n'
        'virtio_fs_seccomp_floor = "log"\n'
    )
    result = run_check(tmp_path, floor)
    assert has_line(
        result, "[info] QEMU -sandbox", "off: ", "no option group", "required = false"
    ), result.stdout
    assert has_line(result, "[ok  ] virtiofsd --sandbox", "chroot (namespace failed"), result.stdout
    assert has_line(
        result,
        "[ok  ] virtiofsd --seccomp",
        "log (set by virtio_fs_extra_args; the probe chose kill)",
    ), result.stdout
    assert "below the floor" not in result.stdout
    # protections at or above the floor leave the verdict to the requirements
    assert result.returncode == (1 if "[FAIL]" in result.stdout else 0), result.stdout


# --------------------------------------------------------------------------- start_vm, config
LOWERED = ConfinementFloor(qemu_sandbox=False, virtiofsd_sandbox="chroot", virtiofsd_seccomp="none")


async def test_start_vm_refuses_virtiofsd_below_the_floor(tmp_path):
    from shim.vmm.vm import _virtiofsd_confinement
    from shim.vmm.vm_config import VMConfig

    path = fake_virtiofsd(tmp_path, fail_sandbox=("namespace",))
    cache = HostCapsCache(tmp_path / "cache")
    with pytest.raises(ConfinementError) as refused:
        await _virtiofsd_confinement(VMConfig(virtiofsd_path=str(path)), cache)
    message = str(refused.value)
    assert "--sandbox=chroot is below the floor namespace" in message
    assert "cannot enter the namespace sandbox" in message
    assert '[hypervisor.qemu] virtio_fs_sandbox_floor = "chroot"' in message
    user = VMConfig(virtiofsd_path=str(path), virtiofsd_extra_args=["--seccomp=none"])
    with pytest.raises(ConfinementError, match="--seccomp=none is below the floor kill"):
        await _virtiofsd_confinement(user, cache)


async def test_start_vm_logs_and_passes_the_probed_modes_of_a_lowered_floor(tmp_path):
    from structlog.testing import capture_logs

    from shim.vmm.vm import _virtiofsd_confinement
    from shim.vmm.vm_config import VMConfig

    path = fake_virtiofsd(tmp_path, fail_sandbox=("namespace",))
    cache = HostCapsCache(tmp_path / "cache")
    with capture_logs() as logs:
        config = VMConfig(virtiofsd_path=str(path), confinement=LOWERED)
        args = await _virtiofsd_confinement(config, cache)
        user = VMConfig(
            virtiofsd_path=str(path), virtiofsd_extra_args=["--seccomp=none"], confinement=LOWERED
        )
        user_args = await _virtiofsd_confinement(user, cache)
    assert args == user_args == ["--sandbox=chroot", "--seccomp=kill"]
    chosen = [(e["log_level"], e["sandbox"], e["seccomp"], e["from_config"]) for e in logs]
    assert chosen == [
        ("warning", "chroot", "kill", []),  # weaker than namespace: a warning
        ("warning", "chroot", "none", ["--seccomp"]),
    ]
    argv = virtiofsd_argv(
        str(path), tmp_path / "s", tmp_path, "auto", ["--seccomp=none"], confinement=user_args
    )
    assert argv[-2:] == ["--sandbox=chroot", "--seccomp=none"]


async def test_no_probe_when_the_user_sets_both(tmp_path):
    from shim.vmm.vm import _virtiofsd_confinement
    from shim.vmm.vm_config import VMConfig

    path = fake_virtiofsd(tmp_path)
    (tmp_path / "fail-all").touch()  # a probe would find nothing
    extra = ["--sandbox", "chroot", "--seccomp=log"]
    floor = ConfinementFloor(virtiofsd_sandbox="chroot", virtiofsd_seccomp="log")
    config = VMConfig(virtiofsd_path=str(path), virtiofsd_extra_args=extra, confinement=floor)
    assert await _virtiofsd_confinement(config, HostCapsCache(None)) == []
    with pytest.raises(ConfinementError, match="virtio_fs_extra_args sets it"):
        await _virtiofsd_confinement(
            VMConfig(virtiofsd_path=str(path), virtiofsd_extra_args=extra), HostCapsCache(None)
        )


async def test_start_vm_refuses_a_qemu_without_seccomp(tmp_path):
    from shim.vmm.vm import _qemu_sandbox
    from shim.vmm.vm_config import VMConfig

    qemu = tmp_path / "qemu"
    qemu.write_text("#!/bin/sh\necho 'seccomp support is disabled' >&2\nexit 1\n")
    qemu.chmod(0o755)
    cache = HostCapsCache(tmp_path / "cache")
    with pytest.raises(ConfinementError) as refused:
        await _qemu_sandbox(VMConfig(qemu_path=str(qemu)), cache)
    assert "seccomp support is disabled" in str(refused.value)
    assert "[hypervisor.qemu] qemu_sandbox_required = false" in str(refused.value)
    lowered = VMConfig(qemu_path=str(qemu), confinement=LOWERED)
    assert await _qemu_sandbox(lowered, cache) is False


async def test_a_refused_pod_leaves_nothing_behind(tmp_path):
    """start_vm itself: the refusal comes before anything is started, and says why."""
    from shim.vmm import start_vm
    from shim.vmm.vm_config import VMConfig

    path = fake_virtiofsd(tmp_path, fail_sandbox=("namespace",))
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not a kernel: never read")
    config = VMConfig(
        qemu_path=REAL_QEMU, kernel=str(kernel), initrd=None, virtiofsd_path=str(path), accel="tcg"
    )
    state = tmp_path / "state"
    (tmp_path / "shared").mkdir()
    with pytest.raises(ConfinementError, match="virtio_fs_sandbox_floor"):
        await start_vm(config, state, tmp_path / "shared", cache_dir=tmp_path / "cache")
    assert not [
        p for p in procs.children(os.getpid()) if str(tmp_path) in " ".join(procs.cmdline(p))
    ]
    assert not any(state.glob("*.sock")) and not (state / "vm.json").exists()


def test_config_reads_the_floor():
    from shim.config import ConfigError, parse_config

    hv = parse_config("").hypervisor
    assert (hv.qemu_sandbox_required, hv.virtio_fs_sandbox_floor, hv.virtio_fs_seccomp_floor) == (
        True,
        "namespace",
        "kill",
    )
    text = '[hypervisor.qemu]\nvirtio_fs_sandbox_floor = "chroot"\nqemu_sandbox_required = false\n'
    hv = parse_config(text).hypervisor
    assert (hv.virtio_fs_sandbox_floor, hv.qemu_sandbox_required) == ("chroot", False)
    with pytest.raises(ConfigError, match="virtio_fs_seccomp_floor = 'strict'; expected one of"):
        parse_config('[hypervisor.qemu]\nvirtio_fs_seccomp_floor = "strict"\n')


def test_config_reads_virtio_fs_extra_args():
    from shim.config import ConfigError, parse_config

    text = '[hypervisor.qemu]\nvirtio_fs_extra_args = ["--sandbox=chroot", "--xattr"]\n'
    assert parse_config(text).hypervisor.virtio_fs_extra_args == ["--sandbox=chroot", "--xattr"]
    with pytest.raises(ConfigError, match="must be a list of strings"):
        parse_config('[hypervisor.qemu]\nvirtio_fs_extra_args = "--xattr"\n')
