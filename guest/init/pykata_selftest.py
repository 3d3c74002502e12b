"""Guest self-test, run by /init for ``pykata.selftest=1`` (``python3 -S -m pykata_selftest``).

Prints one line on the console and returns; /init then powers off:

    PYKATA-SELFTEST-OK key=value key=value ...      (or PYKATA-SELFTEST-FAIL ...)

Keys: python, protobuf (version/implementation), t_init t_mounts t_modules t_pyexec
t_pystart t_imports t_checks t_ok (/proc/uptime at each step, seconds since the
kernel started), py_start (interpreter start-up), imp_<what> (import seconds),
modules (loaded/expected), ports (virtio-serial port names), net (interfaces),
virtiofs (the first line of ``pykata-selftest.txt`` on the ``kataShared`` tag, or
none), vsock, cgroups, runc (version), iptables (a filter and a nat rule loaded
with iptables-restore and read back with iptables-save, the kernel loading
nf_tables on demand: ok, or absent without iptables), t_iptables (seconds),
metrics (families in the agent's GetMetrics page), t_metrics_first and
t_metrics (seconds for the first page and the next), reseed (how ReseedRandomDev
fed the pool: ioctl), console (a debug-console shell on a pty answered: ok),
mem_used_kb (MemTotal - MemAvailable).
Runs on the guest's Python 3.11 with the stdlib only at start-up.
"""

import os
import sys
import time

from pykata_common.contract import SHARED_FS_TAG as _SHARE_TAG  # shipped beside this file

_SHARE_FILE = "pykata-selftest.txt"


def uptime() -> float:
    """Seconds since the kernel started."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


T_START = uptime()
fields: dict[str, str] = {}
failures: list[str] = []


def debug(msg: str) -> None:
    """A progress line for pykata.debug=1."""
    if os.environ.get("PYKATA_DEBUG"):
        print(f"pykata-selftest: {msg}", flush=True)


def timed_import(key: str, names: list[str]) -> None:
    """Import ``names``, record the seconds as imp_<key>; record a failure on error."""
    t = time.perf_counter()
    try:
        for name in names:
            __import__(name)
    except Exception as e:
        failures.append(f"import_{key}:{type(e).__name__}:{e}")
    fields[f"imp_{key}"] = f"{time.perf_counter() - t:.3f}"
    debug(f"imported {key} in {fields[f'imp_{key}']}s")


def pb2_modules(package: str) -> list[str]:
    """Dotted names of the *_pb2 modules shipped inside a package directory."""
    base = os.path.join(os.environ.get("PYTHONPATH", "/usr/lib/pykata"), package)
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel = os.path.relpath(dirpath, os.path.dirname(base)).replace(os.sep, ".")
        for f in sorted(filenames):
            if f.endswith("_pb2.py"):
                found.append(f"{rel}.{f[:-3]}")
    return found


def check_imports() -> None:
    """Time the imports the agent pays for at boot."""
    fields["python"] = sys.version.split()[0]
    # What every generated *_pb2 module pulls in, so imp_ttrpc/imp_protos are their own cost.
    pb = "google.protobuf"
    timed_import("protobuf", [pb, "google._upb._message", f"{pb}.descriptor_pool",
                              f"{pb}.runtime_version", f"{pb}.symbol_database",
                              f"{pb}.internal.builder"])
    try:
        from google.protobuf import __version__
        from google.protobuf.internal import api_implementation

        fields["protobuf"] = f"{__version__}/{api_implementation.Type()}"
    except Exception as e:
        failures.append(f"protobuf:{e}")
    timed_import("ttrpc", ["ttrpc", *pb2_modules("ttrpc")])
    timed_import("protos", ["protos", *pb2_modules("protos")])
    timed_import("stdlib", ["asyncio", "json", "logging", "socket", "subprocess"])
    if os.path.isdir(os.path.join(os.environ.get("PYTHONPATH", ""), "agent")):
        timed_import("agent", ["agent"])


def read(path: str) -> str:
    """File contents, or '' if unreadable."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def check_modules() -> None:
    """Every module of /etc/pykata/modules is loaded."""
    wanted = [os.path.basename(p).removesuffix(".ko").replace("-", "_")
              for p in read("/etc/pykata/modules").split()]
    loaded = {line.split()[0] for line in read("/proc/modules").splitlines()}
    missing = [m for m in wanted if m not in loaded]
    fields["modules"] = f"{len(wanted) - len(missing)}/{len(wanted)}"
    if missing:
        failures.append("modules_missing:" + ",".join(missing))


def check_ports(wait: float = 3.0) -> None:
    """Names of virtio-serial ports (they appear shortly after virtio_console loads)."""
    base = "/sys/class/virtio-ports"
    has_serial = any(read(f"/sys/bus/virtio/devices/{d}/device").strip() == "0x0003"
                     for d in os.listdir("/sys/bus/virtio/devices"))
    deadline = time.monotonic() + (wait if has_serial else 0)
    names: list[str] = []
    while True:
        names = sorted(filter(None, (read(f"{base}/{p}/name").strip()
                                     for p in (os.listdir(base) if os.path.isdir(base) else []))))
        if names or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    fields["ports"] = ",".join(names) or "none"


def check_virtiofs() -> None:
    """Mount the kataShared virtiofs tag and read pykata-selftest.txt from it."""
    import subprocess

    has_fs = any(read(f"/sys/bus/virtio/devices/{d}/device").strip() == "0x001a"
                 for d in os.listdir("/sys/bus/virtio/devices"))
    if not has_fs:
        fields["virtiofs"] = "none"
        return
    os.makedirs("/mnt", exist_ok=True)
    r = subprocess.run(["mount", "-t", "virtiofs", _SHARE_TAG, "/mnt"],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        failures.append("virtiofs_mount:" + r.stderr.strip().replace(" ", "_"))
        fields["virtiofs"] = "mount-failed"
        return
    text = read(f"/mnt/{_SHARE_FILE}").strip().splitlines()
    fields["virtiofs"] = "".join(text[:1]).replace(" ", "_") or "mounted-no-file"
    subprocess.run(["umount", "/mnt"], check=False)


def check_system() -> None:
    """Network interfaces, vsock, cgroups, runc, memory."""
    import subprocess

    fields["net"] = ",".join(sorted(n for n in os.listdir("/sys/class/net") if n != "lo"))
    fields["net"] = fields["net"] or "none"
    fields["vsock"] = "yes" if os.path.exists("/dev/vsock") else "no"
    cg = []
    if os.path.isdir("/sys/fs/cgroup/memory"):
        cg.append("v1")
    if os.path.exists("/sys/fs/cgroup/unified/cgroup.controllers") or os.path.exists(
        "/sys/fs/cgroup/cgroup.controllers"
    ):
        cg.append("v2")
    fields["cgroups"] = "+".join(cg) or "none"
    fields["mounts"] = check_mounts()
    t = time.perf_counter()
    try:
        r = subprocess.run(["runc", "--version"], capture_output=True, text=True, check=False)
        fields["runc"] = r.stdout.split()[2] if r.returncode == 0 else "broken"
    except OSError as e:
        fields["runc"] = f"missing:{e.errno}"
    fields["t_runc"] = f"{time.perf_counter() - t:.3f}"
    if fields["runc"] in ("broken",) or fields["runc"].startswith("missing"):
        failures.append("runc")
    mem = {}
    for line in read("/proc/meminfo").splitlines():
        key, _, value = line.partition(":")
        mem[key] = int(value.split()[0]) if value.split() else 0
    fields["mem_used_kb"] = str(mem.get("MemTotal", 0) - mem.get("MemAvailable", 0))
    fields.update(kernel_memory())


#: What /init mounts besides /proc: mount point -> (type, options each must carry)
BASE_MOUNTS = {
    "/sys": ("sysfs", {"nosuid", "nodev", "noexec"}),
    "/dev": ("devtmpfs", {"nosuid"}),
    "/dev/pts": ("devpts", {"nosuid", "noexec"}),
    "/dev/shm": ("tmpfs", {"nosuid", "nodev"}),
    "/run": ("tmpfs", {"nosuid", "nodev"}),
    "/tmp": ("tmpfs", {"nosuid", "nodev"}),
}


CGROUP_FLAGS = {"nosuid", "nodev", "noexec"}


def expected_mounts(cgroups: str | None) -> dict[str, tuple[str, set[str]]]:
    """The mounts /init makes: the base ones, then for the hybrid layout one cgroup v1
    hierarchy per enabled controller of /proc/cgroups (its text) and cgroup2 beside them,
    or for ``cgroups=None`` (pykata.cgroup=v2) cgroup2 alone at /sys/fs/cgroup."""
    want = dict(BASE_MOUNTS)
    if cgroups is None:
        want["/sys/fs/cgroup"] = ("cgroup2", CGROUP_FLAGS)
        return want
    for line in cgroups.splitlines():
        parts = line.split()
        if len(parts) == 4 and not parts[0].startswith("#") and parts[3] == "1":
            want[f"/sys/fs/cgroup/{parts[0]}"] = ("cgroup", CGROUP_FLAGS | {parts[0]})
    want["/sys/fs/cgroup/unified"] = ("cgroup2", CGROUP_FLAGS)
    return want


def missing_mounts(want: dict[str, tuple[str, set[str]]], mountinfo: str) -> list[str]:
    """Mount points of `want` that mountinfo lacks, or has with another type or without
    one of the options (mount and super-block options both count)."""
    have = {}
    for line in mountinfo.splitlines():
        pre, _, post = line.partition(" - ")
        fields_ = pre.split()
        rest = post.split()
        if len(fields_) >= 6 and len(rest) >= 3:
            have[fields_[4]] = (rest[0], set(fields_[5].split(",")) | set(rest[2].split(",")))
    return sorted(m for m, (fstype, opts) in want.items()
                  if m not in have or have[m][0] != fstype or not opts <= have[m][1])


def check_mounts() -> str:
    """"ok", or "missing:" and the mount points /init did not mount as it should."""
    hybrid = os.path.isdir("/sys/fs/cgroup/unified")
    want = expected_mounts(read("/proc/cgroups") if hybrid else None)
    bad = missing_mounts(want, read("/proc/self/mountinfo"))
    if bad:
        failures.append("mounts")
    return "ok" if not bad else "missing:" + ",".join(bad)


def kernel_memory() -> dict[str, str]:
    """The guest RAM the kernel keeps for itself, from its boot line "Memory: A/TK
    available (CK kernel code, ..., RK reserved, ...)" (read from /dev/kmsg, which
    has it even with `quiet`): kmem_reserved_kb, kmem_code_kb, kmem_total_kb."""
    import re

    memory_line = re.compile(r"Memory: (\d+)K/(\d+)K available \((\d+)K kernel code.*?"
                             r"(\d+)K reserved")
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        for _ in range(5000):
            try:
                record = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten; go on reading
                continue
            m = memory_line.search(record)
            if m:
                return {"kmem_total_kb": m.group(2), "kmem_code_kb": m.group(3),
                        "kmem_reserved_kb": m.group(4)}
    finally:
        os.close(fd)
    return {}


_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9 -m comment --comment pykata-selftest -j REJECT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o eth0 -m conntrack --ctstate NEW -j MASQUERADE
COMMIT
"""


def check_iptables() -> None:
    """iptables-restore then iptables-save (v4 and v6): rules round-trip."""
    import shutil
    import subprocess

    if shutil.which("iptables-restore") is None:
        fields["iptables"] = "absent"
        return
    t = time.perf_counter()
    for family, rules in (("iptables", _RULES), ("ip6tables", _RULES.split("*nat")[0])):
        r = subprocess.run([f"{family}-restore", "--wait", "5"], input=rules, text=True,
                           capture_output=True, check=False)
        if r.returncode != 0:
            failures.append(f"{family}-restore:" + r.stderr.strip().replace(" ", "_")[:200])
            fields["iptables"] = "fail"
            return
        saved = subprocess.run([f"{family}-save"], capture_output=True, text=True,
                               check=False).stdout
        wanted = ("pykata-selftest", "MASQUERADE") if family == "iptables" else ("REJECT",)
        missing = [w for w in wanted if w not in saved]
        if missing:
            failures.append(f"{family}-save:missing_" + ",".join(missing))
            fields["iptables"] = "fail"
            return
    fields["iptables"] = "ok"
    fields["t_iptables"] = f"{time.perf_counter() - t:.3f}"


def check_agent_parts() -> None:
    """The agent's GetMetrics page, ReseedRandomDev and a debug-console shell, in the guest."""
    if not os.path.isdir(os.path.join(os.environ.get("PYTHONPATH", ""), "agent")):
        return
    import asyncio
    import socket

    from agent.children import Reaper
    from agent.debug_console import session
    from agent.entropy import reseed
    from agent.metrics import Metrics

    scraper = Metrics()
    t = time.perf_counter()
    page = scraper.page()
    fields["t_metrics_first"] = f"{time.perf_counter() - t:.3f}"  # with the writer's import
    t = time.perf_counter()
    page = scraper.page()
    fields["t_metrics"] = f"{time.perf_counter() - t:.3f}"
    fields["metrics"] = str(page.count("# TYPE "))
    for family in ("kata_agent_total_rss", "kata_guest_meminfo", "kata_guest_cpu_time"):
        if f"# TYPE {family} " not in page:
            failures.append(f"metrics_missing:{family}")
    fields["reseed"] = reseed(os.urandom(64))

    async def console() -> bool:
        reaper = Reaper()
        reaper.install()
        host, port = socket.socketpair()
        port.setblocking(False)
        host.setblocking(False)
        serving = asyncio.create_task(session(port.fileno(), reaper))
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(host, b"echo console-$((6*7)).\n")
        data = b""
        try:
            async with asyncio.timeout(10):
                while b"console-42." not in data:
                    data += await loop.sock_recv(host, 4096)
        finally:
            host.close()
            await asyncio.wait_for(serving, 10)
            port.close()
        return True

    try:
        fields["console"] = "ok" if asyncio.run(console()) else "fail"
    except Exception as e:
        fields["console"] = "fail"
        failures.append(f"console:{type(e).__name__}:{e}")


def main() -> int:
    """Run every check, print the result line."""
    for key in ("t_init", "t_mounts", "t_modules", "t_pyexec"):
        fields[key] = os.environ.get("PYKATA_" + key.upper(), "?")
    fields["t_pystart"] = f"{T_START:.2f}"
    try:
        fields["py_start"] = f"{T_START - float(fields['t_pyexec']):.3f}"
    except ValueError:
        fields["py_start"] = "?"
    t = time.perf_counter()
    check_imports()
    fields["t_imports"] = f"{uptime():.2f}"
    fields["imports_total"] = f"{time.perf_counter() - t:.3f}"
    for check in (check_modules, check_ports, check_virtiofs, check_system, check_iptables,
                  check_agent_parts):
        try:
            check()
        except Exception as e:
            failures.append(f"{check.__name__}:{type(e).__name__}:{e}".replace(" ", "_"))
    fields["t_checks"] = f"{uptime():.2f}"
    fields["t_ok"] = f"{uptime():.2f}"
    status = "FAIL" if failures else "OK"
    if failures:
        fields["failures"] = ";".join(f.replace(" ", "_") for f in failures)
    line = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"PYKATA-SELFTEST-{status} {line}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
