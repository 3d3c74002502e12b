"""Host probes (QEMU's seccomp, virtiofsd's sandbox and seccomp) and a small JSON cache
of their results, valid until the host reboots.

Keys name what a result depends on (binary paths with size and mtime); the
whole file is dropped when /proc/sys/kernel/random/boot_id changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from shim.paths import STATE_ROOT, private_dir, write_atomic
from shim.vmm import procs
from shim.vmm.virtiofsd import launch, seccomp_killed

DEFAULT_CACHE_DIR = STATE_ROOT  # next to the sandboxes' state (PYKATA_STATE_ROOT moves both)
CACHE_FILE = "host-caps.json"


def boot_id() -> str:
    """This boot's id (changes at every host boot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def file_identity(path: str | os.PathLike[str] | None) -> str:
    """path:size:mtime of a file (or path:missing), so a replaced binary misses the cache."""
    if path is None:
        return "none"
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


class HostCapsCache:
    """get/put of JSON-able probe results under string keys."""

    def __init__(self, cache_dir: Path | None = DEFAULT_CACHE_DIR) -> None:
        self.path = cache_dir / CACHE_FILE if cache_dir is not None else None

    def _load(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("boot_id") != boot_id():
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> Any | None:
        return self._load().get(key)

    def put(self, key: str, value: Any) -> None:
        if self.path is None:
            return
        entries = self._load()
        entries[key] = value
        text = json.dumps({"boot_id": boot_id(), "entries": entries}, indent=2, sort_keys=True)
        with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
            private_dir(self.path.parent)
            write_atomic(self.path, text + "\n")


def probe_seccomp(qemu: str, cache: HostCapsCache | None = None) -> tuple[bool, str]:
    """Whether this QEMU accepts `-sandbox on` (built with seccomp); (ok, detail).

    `-sandbox on -version` exits 0 on a seccomp build and fails at option
    parsing ("There is no option group 'sandbox'" / "seccomp support is
    disabled") on one without.
    """
    key = f"seccomp:{file_identity(qemu)}"
    if cache is not None and (hit := cache.get(key)) is not None:
        return bool(hit["ok"]), str(hit["detail"])
    try:
        r = subprocess.run(
            [qemu, "-sandbox", "on", "-version"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        ok, detail = r.returncode == 0, (r.stderr.strip() or r.stdout.strip())[-300:]
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)  # a slow or busy moment, not a property of the binary
    if cache is not None:
        cache.put(key, {"ok": ok, "detail": detail})
    return ok, detail


def qemu_sandbox_active(qemu: str, sandbox: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether `-sandbox <sandbox>` really installs a seccomp filter; (ok, detail).

    `-version` stops during option parsing, before the filter is loaded, so this
    runs a QEMU with no machine at all (`-machine none -S`), reads its
    /proc status and kills it.
    """
    argv = [qemu, "-machine", "none", "-nodefaults", "-display", "none", "-S"]
    try:
        popen = subprocess.Popen(
            [*argv, "-sandbox", sandbox],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as e:
        return False, str(e)
    seen = None
    deadline = time.monotonic() + timeout
    try:
        while popen.poll() is None and time.monotonic() < deadline:
            seen = procs.read_confinement(popen.pid)
            if seen is not None and seen.filtered:
                return True, f"filter loaded: {seen}"
            time.sleep(0.01)
        status = popen.poll()
    finally:
        if popen.poll() is None:
            popen.kill()
        _, err = popen.communicate()
    if status is not None:
        return False, f"exited with status {status}: {err.decode(errors='replace')[-300:]}"
    return False, f"no seccomp filter after {timeout:g}s ({seen or 'no /proc status'})"


# --------------------------------------------------------------------------- virtiofsd
# Strongest first. virtiofsd's own defaults are namespace and kill.
VIRTIOFSD_SANDBOXES = ("namespace", "chroot", "none")
VIRTIOFSD_SECCOMPS = ("kill", "log")  # "none" when neither works
VIRTIOFSD_PROBE_VERSION = 1  # part of the cache key: bump when the probe changes
_VHOST_USER_GET_FEATURES = 1
_VHOST_USER_VERSION = 0x1
_VHOST_USER_REPLY = 0x4


@dataclass(frozen=True)
class VirtiofsdConfinement:
    """The --sandbox and --seccomp modes to run virtiofsd with.

    None: the probe found no mode that works (virtiofsd's own default applies,
    and starting it will most likely fail with its own message)."""

    sandbox: str | None
    seccomp: str | None
    sandbox_detail: str  # what was seen of the chosen sandbox, and the modes that failed
    seccomp_detail: str

    @property
    def detail(self) -> str:
        return f"sandbox: {self.sandbox_detail}; seccomp: {self.seccomp_detail}"

    def args(self) -> list[str]:
        out = [f"--sandbox={self.sandbox}"] if self.sandbox else []
        return out + ([f"--seccomp={self.seccomp}"] if self.seccomp else [])


def virtiofsd_serving_pid(pid: int) -> int:
    """The process that serves the guest: with --sandbox=namespace virtiofsd forks into a
    new pid namespace and the process we started only waits for that child."""
    kids = procs.children(pid)
    return kids[0] if len(kids) == 1 else pid


def _isolation(pid: int, shared: Path) -> str:
    """What the sandbox of a virtiofsd process looks like from outside."""
    notes = []
    own = [k for k in ("mnt", "pid", "net", "user") if _own_namespace(pid, k)]
    if own:
        notes.append(f"own {'/'.join(own)} namespaces")
    with contextlib.suppress(OSError):
        if os.readlink(f"/proc/{pid}/root") == str(shared):
            notes.append("chrooted to the shared dir")
    return ", ".join(notes) or "no isolation seen"


def _own_namespace(pid: int, kind: str) -> bool:
    theirs = procs.namespace(pid, kind)
    return theirs is not None and theirs != procs.namespace("self", kind)


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("virtiofsd hung up")
        data += chunk
    return data


def _get_features(socket_path: Path, deadline: float) -> socket.socket:
    """Connect and ask VHOST_USER_GET_FEATURES (an answer means the daemon is serving,
    inside its sandbox and seccomp filter); the open connection."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while True:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                conn.connect(str(socket_path))
                break
            except ConnectionRefusedError:  # bound, not yet listening
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
        conn.sendall(struct.pack("<III", _VHOST_USER_GET_FEATURES, _VHOST_USER_VERSION, 0))
        request, flags, size = struct.unpack("<III", _recv_exact(conn, 12))
        _recv_exact(conn, size)
        if request != _VHOST_USER_GET_FEATURES or not flags & _VHOST_USER_REPLY:
            raise ValueError(f"unexpected vhost-user reply (request {request}, flags {flags:#x})")
    except BaseException:
        conn.close()
        raise
    return conn


def _trial(
    popen: subprocess.Popen[bytes],
    socket_path: Path,
    shared: Path,
    want_filter: bool,
    deadline: float,
) -> tuple[bool, str]:
    """Socket, one answer, what /proc shows while connected, the exit after the hang-up."""
    while not socket_path.exists():
        if popen.poll() is not None:
            return False, f"exited with status {popen.returncode} before creating its socket"
        if time.monotonic() >= deadline:
            return False, "did not create its socket in time"
        time.sleep(0.005)
    try:
        conn = _get_features(socket_path, deadline)
    except (OSError, ValueError) as e:
        return False, f"did not answer a vhost-user request ({e})"
    with conn:  # closing it is the hang-up
        pid = virtiofsd_serving_pid(popen.pid)
        seen, isolation = procs.read_confinement(pid), _isolation(pid, shared)
    try:
        status = popen.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # still serving after the hang-up: not a failure
        status = None
    if status not in (0, None):
        why = " (SIGSYS: killed by its own seccomp filter)" if seccomp_killed(status) else ""
        return False, f"exited with status {status} after a client hung up{why}"
    if want_filter and (seen is None or not seen.filtered):
        return False, f"no seccomp filter on the serving process ({seen or 'gone'})"
    return True, str(seen) if want_filter else isolation


class _Trial(NamedTuple):
    ok: bool
    detail: str
    timed_out: bool = False  # failed at its deadline: says nothing lasting about the host


def _try_virtiofsd(path: str, options: list[str], *, want_filter: bool, timeout: float) -> _Trial:
    """Run virtiofsd with `options` on a scratch dir, ask it one vhost-user question and
    hang up. ok: it answered, left with status 0 on the hang-up and, when
    `want_filter`, its serving process had a seccomp filter."""
    with tempfile.TemporaryDirectory(prefix="pykata-vfsd-probe.") as tmp:
        socket_path, shared, log_path = Path(tmp, "vfs.sock"), Path(tmp, "shared"), Path(tmp, "log")
        shared.mkdir()
        argv = [path, f"--socket-path={socket_path}", f"--shared-dir={shared}", *options]
        try:
            popen = launch(argv, log_path, "wb")
        except OSError as e:
            return _Trial(False, str(e))
        deadline = time.monotonic() + timeout
        try:
            ok, detail = _trial(popen, socket_path, shared, want_filter, deadline)
        finally:
            if popen.poll() is None:
                popen.kill()  # with --sandbox=namespace its child dies with it
            popen.wait()
        if ok:
            return _Trial(True, detail)
        lines = log_path.read_text(errors="replace").strip().splitlines()
        detail += f": {lines[-1][-200:]}" if lines else ""
        return _Trial(False, detail, timed_out=time.monotonic() >= deadline)


def probe_virtiofsd(
    path: str, cache: HostCapsCache | None = None, *, timeout: float = 5.0
) -> VirtiofsdConfinement:
    """The strongest --sandbox, then the strongest --seccomp (with that sandbox), that
    this virtiofsd really runs with on this host. Cached by the file's identity; a probe
    where nothing works, or where a mode failed by timing out, is not cached (a slow
    moment is not a property of the host)."""
    key = f"virtiofsd-confinement{VIRTIOFSD_PROBE_VERSION}:{file_identity(path)}"
    if cache is not None and isinstance(hit := cache.get(key), dict):
        with contextlib.suppress(TypeError):  # an entry of another shape: probe again
            return VirtiofsdConfinement(**hit)
    if not os.path.exists(path):
        return VirtiofsdConfinement(None, None, f"{path} not found", "not tried")
    sandbox, sandbox_detail, slow = _first_working(path, timeout, VIRTIOFSD_SANDBOXES, None)
    if sandbox is None:
        return VirtiofsdConfinement(None, None, sandbox_detail, "not tried")
    seccomp, seccomp_detail, slow_too = _first_working(path, timeout, VIRTIOFSD_SECCOMPS, sandbox)
    result = VirtiofsdConfinement(sandbox, seccomp or "none", sandbox_detail, seccomp_detail)
    if cache is not None and not (slow or slow_too):
        cache.put(key, asdict(result))
    return result


def _first_working(
    path: str, timeout: float, modes: tuple[str, ...], sandbox: str | None
) -> tuple[str | None, str, bool]:
    """The first of `modes` virtiofsd runs with: --sandbox modes (with --seccomp=none)
    when `sandbox` is None, else --seccomp modes under that sandbox; (mode, detail,
    whether a stronger mode failed by timing out)."""
    failed = []
    timed_out = False
    for mode in modes:
        options = [f"--sandbox={mode}", "--seccomp=none"]
        if sandbox is not None:
            options = [f"--sandbox={sandbox}", f"--seccomp={mode}"]
        trial = _try_virtiofsd(path, options, want_filter=sandbox is not None, timeout=timeout)
        if trial.ok:
            return mode, "; ".join([*failed, trial.detail]), timed_out
        timed_out = timed_out or trial.timed_out
        failed.append(f"{mode} failed{' (timed out)' if trial.timed_out else ''}: {trial.detail}")
    return None, "; ".join(failed), timed_out
