"""A private containerd for tests and benchmarks, and a locally built busybox image.

Nothing here touches a system containerd: every instance has its own temp dir
holding ``root``, ``state``, sockets and log, and is stopped by PID.

Known limit of containerd 1.6 (not ours to fix): the runc v2 shim always puts
its ttrpc socket in ``/run/containerd/s/<sha256>`` (the hash covers our
private socket path, so it cannot clash) and removes it when the task is
deleted. ``ctr run``/``task start``/``task exec`` are given ``--fifo-dir`` and
``--runc-root`` under the temp dir by :meth:`PrivateContainerd.ctr`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

BUSYBOX_IMAGE = "docker.io/pykata/busybox:test"
BUSYBOX_BINARY = Path("/bin/busybox")
DEFAULT_NAMESPACE = "pykata-test"

# Plugins a test containerd never needs; skipping them trims start-up and log noise.
_UNUSED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)
CRI_PLUGIN = "io.containerd.grpc.v1.cri"

# ctr subcommands that create IO FIFOs / call runc (they default to /run/containerd).
_FIFO_COMMANDS = {("run",), ("task", "start"), ("task", "exec"), ("t", "start"), ("t", "exec"),
                  ("tasks", "start"), ("tasks", "exec")}
_RUNC_ROOT_COMMANDS = {("run",), ("container", "create"), ("containers", "create"),
                       ("c", "create")}


def default_cache_dir() -> Path:
    """Where built artefacts are cached: $PYKATA_CACHE_DIR or ~/.cache/pykata."""
    env = os.environ.get("PYKATA_CACHE_DIR")
    path = Path(env) if env else Path.home() / ".cache" / "pykata"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _mounts_under(prefix: Path) -> list[str]:
    """Mount points at or below ``prefix`` (from /proc/self/mountinfo), deepest first."""
    pre = str(prefix).rstrip("/")
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = fields[4].encode().decode("unicode_escape")  # \040 etc.
            if point == pre or point.startswith(pre + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _umount(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), 0) != 0:
        libc.umount2(path.encode(), 2)  # MNT_DETACH


def _pids_with_arg(needle: str) -> list[int]:
    """PIDs whose command line contains ``needle`` (a path unique to one instance)."""
    pids = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry))
    return pids


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def bare_python_dir(where: Path) -> Path:
    """A bin directory whose ``python3`` has the standard library and no packages.

    A venv made without pip from this interpreter's base: what a fresh machine's
    global ``python3`` offers pykata (nothing).
    """
    bin_dir = where / "bin"
    if not (bin_dir / "python3").exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", str(where)], check=True,
                       capture_output=True, timeout=120)
    return bin_dir


class PrivateContainerd:
    """A containerd with its own root, state and sockets under a temp dir.

    Use ``start()``/``stop()`` or ``with PrivateContainerd() as cd:``.
    """

    def __init__(
        self,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        enable_cri: bool = False,
        extra_toml: str = "",
        wrapper: Sequence[str] = (),
        namespace: str = DEFAULT_NAMESPACE,
        containerd_bin: str = "containerd",
        ctr_bin: str = "ctr",
        log_level: str = "info",
        start_timeout: float = 20.0,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        bare_python_first: bool = True,
        config_version: int = 2,
    ) -> None:
        """``wrapper`` prefixes the command (e.g. ``["nsenter", "--net=/run/netns/x"]``);
        ``extra_toml`` is appended to config.toml (e.g. a CRI or runtime section).

        containerd runs in ``cwd`` (default: a directory of its own; 1.6 looks for
        shims in its working directory before PATH) with ``env`` added to ours.
        With ``bare_python_first`` its PATH starts with a ``python3`` that has no
        packages at all, as on a fresh machine, so that nothing passes only
        because the global interpreter happens to have pykata's dependencies.
        """
        # Short paths: unix socket paths must stay below 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="pkc-", dir=base_dir or "/tmp"))
        self.root = self.dir / "root"
        self.state = self.dir / "state"
        self.address = str(self.dir / "c.sock")
        self.ttrpc_address = str(self.dir / "c.ttrpc")
        self.fifo_dir = self.dir / "fifo"
        self.runc_root = self.dir / "runc"
        self.config_path = self.dir / "config.toml"
        self.log_path = self.dir / "containerd.log"
        self.enable_cri = enable_cri
        self.extra_toml = extra_toml
        self.wrapper = list(wrapper)
        self.namespace = namespace
        self.containerd_bin = containerd_bin
        self.ctr_bin = ctr_bin
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.cwd = Path(cwd) if cwd is not None else self.dir / "cwd"
        self.extra_env = dict(env or {})
        self.bare_python_first = bare_python_first
        self.config_version = config_version  # 3: containerd 2.x's own format
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._log_file: io.BufferedWriter | None = None
        self._stopped = False
        self.left_sockets: list[str] = []

    # ------------------------------------------------------------------ config

    def config_text(self) -> str:
        """The config.toml this instance runs with (version 2, or 3 for 2.x's format:
        these keys read the same in both)."""
        disabled = list(_UNUSED_PLUGINS)
        if not self.enable_cri:
            disabled.append(CRI_PLUGIN)
        lines = [
            f"version = {self.config_version}",
            f"root = {_toml_str(str(self.root))}",
            f"state = {_toml_str(str(self.state))}",
            f"temp = {_toml_str(str(self.dir / 'tmp'))}",
            "disabled_plugins = [" + ", ".join(_toml_str(p) for p in disabled) + "]",
            "",
            "[grpc]",
            f"  address = {_toml_str(self.address)}",
            "",
            "[ttrpc]",
            f"  address = {_toml_str(self.ttrpc_address)}",
            "",
            "[debug]",
            '  address = ""',
            f"  level = {_toml_str(self.log_level)}",
            "",
            "[metrics]",
            '  address = ""',
            "",
            "[plugins]",
            '  [plugins."io.containerd.internal.v1.opt"]',
            f"    path = {_toml_str(str(self.dir / 'opt'))}",
            "",
        ]
        text = "\n".join(lines)
        if self.extra_toml:
            text += "\n" + self.extra_toml.strip() + "\n"
        return text

    # ------------------------------------------------------------------ life cycle

    def start(self) -> PrivateContainerd:
        """Write the config, start containerd and wait until it answers."""
        if self.proc is not None:
            raise RuntimeError("already started")
        for d in (self.root, self.state, self.fifo_dir, self.runc_root, self.dir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        env = {**os.environ, **self.extra_env}
        if self.bare_python_first:
            env["PATH"] = f"{bare_python_dir(self.dir / 'bare-python')}:{env.get('PATH', '')}"
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [*self.wrapper, self.containerd_bin, "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.cwd,
            env=env,
        )
        atexit.register(self.stop)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        assert self.proc is not None
        deadline = t0 + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if os.path.exists(self.address):
                res = subprocess.run(
                    [self.ctr_bin, "--address", self.address, "--connect-timeout", "1s",
                     "version"],
                    capture_output=True, timeout=10, check=False,
                )
                if res.returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"containerd not ready after {self.start_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of containerd's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        """containerd's PID while it runs."""
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def stop(self, timeout: float = 10.0) -> None:
        """Clean up tasks, stop containerd by PID, unmount and remove the temp dir."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self._remove_all_tasks()
                _kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
            self._kill_leftovers()
            self.left_sockets = self._remove_dead_shim_sockets()
        finally:
            if self._log_file is not None:
                self._log_file.close()
            for point in _mounts_under(self.dir):
                _umount(point)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_all_tasks(self) -> None:
        """Best effort: kill and delete every task and container (lets shims exit)."""
        res = self.ctr("namespaces", "ls", "-q", namespace="default", timeout=10)
        for ns in res.stdout.split():
            tasks = self.ctr("tasks", "ls", "-q", namespace=ns, timeout=10).stdout.split()
            for task in tasks:
                self.ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, namespace=ns, timeout=10)
            for task in tasks:
                self.ctr("tasks", "delete", "-f", task, namespace=ns, timeout=15)
            for c in self.ctr("containers", "ls", "-q", namespace=ns, timeout=10).stdout.split():
                self.ctr("containers", "rm", c, namespace=ns, timeout=15)

    def _remove_dead_shim_sockets(self) -> list[str]:
        """Remove the sockets of shims killed above, as `containerd-shim-pykata-v2 delete`
        does (a killed shim cannot; they live in the global /run/containerd/s); returns
        those still there."""
        from shim.delete import remove_dead_socket

        still = []
        for address_file in self.state.glob("**/address"):
            remove_dead_socket(str(address_file.parent))
            with contextlib.suppress(OSError):
                path = address_file.read_text().strip().removeprefix("unix://")
                if path.startswith("/run/containerd/s/") and os.path.exists(path):
                    still.append(path)
        return still

    def _kill_leftovers(self) -> None:
        """Kill shims started for this instance (their argv holds our socket path)
        and runc containers under our runc root."""
        for pid in _pids_with_arg(self.address):
            _kill(pid, signal.SIGKILL)
        if self.runc_root.is_dir():
            for ns_dir in self.runc_root.iterdir():
                if not ns_dir.is_dir():
                    continue
                for cdir in ns_dir.iterdir():
                    subprocess.run(
                        ["runc", "--root", str(ns_dir), "delete", "--force", cdir.name],
                        capture_output=True, timeout=15, check=False,
                    )

    def __enter__(self) -> PrivateContainerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ ctr

    def ctr_argv(self, *args: str, namespace: str | None = None) -> list[str]:
        """The ctr command line for ``args``, adding private --fifo-dir / --runc-root."""
        args_l = list(args)
        head2, head1 = tuple(args_l[:2]), tuple(args_l[:1])
        extra: list[str] = []
        if (head2 in _FIFO_COMMANDS or head1 in _FIFO_COMMANDS) and not any(
            a.startswith("--fifo-dir") for a in args_l
        ):
            extra += ["--fifo-dir", str(self.fifo_dir)]
        if (
            (head2 in _RUNC_ROOT_COMMANDS or head1 in _RUNC_ROOT_COMMANDS)
            and not any(a.startswith(("--runc-root", "--runtime")) for a in args_l)
        ):
            extra += ["--runc-root", str(self.runc_root)]
        n = 2 if head2 in _FIFO_COMMANDS | _RUNC_ROOT_COMMANDS else 1
        args_l[n:n] = extra
        return [self.ctr_bin, "--address", self.address,
                "--namespace", namespace or self.namespace, *args_l]

    def ctr(
        self,
        *args: str,
        namespace: str | None = None,
        input: bytes | str | None = None,
        timeout: float = 60.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this containerd; text output, not checked by default."""
        if isinstance(input, bytes):
            input = input.decode()
        return subprocess.run(
            self.ctr_argv(*args, namespace=namespace),
            input=input, capture_output=True, text=True, timeout=timeout, check=check,
        )


# ---------------------------------------------------------------------- busybox image

_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
_GROUP = "root:x:0:\ndaemon:x:1:\ntty:x:5:\nnogroup:x:65534:\n"
_IMAGE_FORMAT_VERSION = "1"  # bump when the image recipe below changes


def _tar_add(tar: tarfile.TarFile, name: str, *, kind: bytes = tarfile.DIRTYPE,
             mode: int = 0o755, data: bytes = b"", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if kind == tarfile.SYMTYPE:
        info.linkname = link
        tar.addfile(info)
    elif kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def _busybox_applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                         check=True).stdout
    return sorted({line.strip() for line in out.splitlines() if line.strip()})


def _rootfs_layer(busybox: Path) -> bytes:
    """An uncompressed, reproducible tar of the busybox rootfs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = ["bin", "dev", "etc", "home", "proc", "root", "run", "sbin", "sys",
                "usr", "usr/bin", "usr/sbin", "var", "var/tmp"]
        applets = [a for a in _busybox_applets(busybox) if a != "bin/busybox"]
        for a in applets:
            parent = os.path.dirname(a)
            while parent and parent not in dirs:
                dirs.append(parent)
                parent = os.path.dirname(parent)
        for d in sorted(set(dirs)):
            _tar_add(tar, d, mode=0o700 if d == "root" else 0o755)
        _tar_add(tar, "tmp", mode=0o1777)
        _tar_add(tar, "bin/busybox", kind=tarfile.REGTYPE, data=busybox.read_bytes())
        for a in applets:
            _tar_add(tar, a, kind=tarfile.SYMTYPE, link="/bin/busybox", mode=0o777)
        _tar_add(tar, "etc/passwd", kind=tarfile.REGTYPE, mode=0o644, data=_PASSWD.encode())
        _tar_add(tar, "etc/group", kind=tarfile.REGTYPE, mode=0o644, data=_GROUP.encode())
        _tar_add(tar, "etc/hostname", kind=tarfile.REGTYPE, mode=0o644, data=b"busybox\n")
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return out.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _oci_tarball(layer_tar: bytes, name: str) -> bytes:
    layer_gz = _gzip(layer_tar)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer_tar)]},
        "history": [{"created_by": "pykata integration/containerd_env.py (busybox-static)"}],
    }
    config_b = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _digest(config_b), "size": len(config_b)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(layer_gz), "size": len(layer_gz)}],
    }
    manifest_b = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": _digest(manifest_b),
            "size": len(manifest_b),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
            },
        }],
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_add(tar, "blobs")
        _tar_add(tar, "blobs/sha256")
        for blob in (layer_gz, config_b, manifest_b):
            _tar_add(tar, "blobs/sha256/" + _digest(blob).split(":", 1)[1],
                     kind=tarfile.REGTYPE, mode=0o644, data=blob)
        _tar_add(tar, "oci-layout", kind=tarfile.REGTYPE, mode=0o644,
                 data=b'{"imageLayoutVersion":"1.0.0"}')
        _tar_add(tar, "index.json", kind=tarfile.REGTYPE, mode=0o644,
                 data=json.dumps(index, sort_keys=True).encode())
    return out.getvalue()


def build_busybox_image(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    name: str = BUSYBOX_IMAGE,
    busybox: Path = BUSYBOX_BINARY,
) -> Path:
    """Write (or reuse) an OCI image-layout tarball of a busybox rootfs in ``out_dir``.

    The file name carries a hash of the busybox binary, the image name and the
    recipe version, so a cached tarball is reused only when its content would match.
    """
    out = Path(out_dir) if out_dir is not None else default_cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    h.update(_IMAGE_FORMAT_VERSION.encode() + b"\0" + name.encode() + b"\0")
    h.update(busybox.read_bytes())
    path = out / f"busybox-oci-{h.hexdigest()[:16]}.tar"
    if path.exists():
        return path
    data = _oci_tarball(_rootfs_layer(busybox), name)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".busybox-", suffix=".tar")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def import_busybox(
    containerd: PrivateContainerd,
    *,
    namespace: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    name: str = BUSYBOX_IMAGE,
) -> str:
    """Build (cached) and import the busybox image; returns the image name."""
    tarball = build_busybox_image(cache_dir, name=name)
    res = containerd.ctr("images", "import", str(tarball), namespace=namespace, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"ctr images import failed: {res.stderr or res.stdout}")
    listed = containerd.ctr("images", "ls", "-q", namespace=namespace).stdout.split()
    if name not in listed:
        raise RuntimeError(f"image {name} not listed after import: {listed}")
    return name
