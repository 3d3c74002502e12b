"""Docker from Debian sid, run privately against a private containerd, for tests.

`sid_docker()` downloads sid's `docker.io` (dockerd), `docker-cli` (docker) and
`tini-static` (docker-init) with the private apt set-up of containerd_versions and
caches them; they run on bookworm's libc as they are.

`PrivateDocker` starts a dockerd that owns nothing outside its temp dir: its own
data root, exec root, pidfile, socket and CLI config, its own containerd namespace
and cgroup parent, no bridge, no iptables, no forwarding, and it runs inside a
network namespace the test made (`pkdock-*`, entered with `nsenter --net=`: `ip netns
exec` would remount /sys and hide the cgroups). `stop()` removes its containers,
ends dockerd by PID, unmounts what is mounted under its temp dir and removes the
temp dir, the network namespace, the cgroup parent and `/run/docker/plugins` (which
dockerd always makes) when it made them.

Storage modes: `graphdriver` (Docker's default, overlay2) and `containerd-snapshotter`
(the containerd image store, daemon.json `features`). In both, Docker 28 mounts the
container's root itself (`<data-root>/overlay2/<layer>/merged`, or the containerd
snapshot at `<data-root>/rootfs/overlayfs/<id>`) and hands containerd that absolute
`root.path` with no rootfs mounts in the task's Create.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from integration.containerd_env import (
    PrivateContainerd,
    _kill,
    _mounts_under,
    _pids_with_arg,
    _umount,
    build_busybox_image,
)
from integration.containerd_versions import suite_packages

DOCKER_SUITE = "sid"
# dockerd, the docker CLI (split out of docker.io) and docker-init (tini).
DOCKER_PACKAGES = ("docker.io", "docker-cli", "tini-static")
GRAPHDRIVER = "graphdriver"
SNAPSHOTTER = "containerd-snapshotter"
STORAGE_MODES = (GRAPHDRIVER, SNAPSHOTTER)
NETNS_DIR = Path("/var/run/netns")
NETNS_PREFIX = "pkdock-"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The one folder dockerd makes outside its roots whatever its flags: its plugins'
# exec root is fixed so that their sockets can be found. Removed by stop() when this
# instance made it and it is empty.
PLUGINS_RUN_DIR = Path("/run/docker/plugins")


@dataclass(frozen=True)
class DockerBinaries:
    """Where sid's dockerd and docker are, the folders dockerd needs on PATH, the version."""

    dockerd: str
    docker: str
    path_dirs: tuple[str, ...]  # docker-init, docker-proxy
    version: str


def sid_docker(cache_dir: Path | None = None) -> DockerBinaries:
    """Docker from Debian sid, downloaded once and cached (`<cache>/docker/sid`)."""
    needed = ("usr/sbin/dockerd", "usr/bin/docker", "usr/bin/docker-init")
    root = suite_packages(DOCKER_SUITE, DOCKER_PACKAGES, "docker", needed, cache_dir)
    dockerd, docker = root / "usr/sbin/dockerd", root / "usr/bin/docker"
    out = subprocess.run([str(dockerd), "--version"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    match = re.search(r"version (\S+?),", out)
    return DockerBinaries(str(dockerd), str(docker),
                          (str(root / "usr/bin"), str(root / "usr/sbin")),
                          match.group(1) if match else out.strip())


def _oci_member(tar: tarfile.TarFile, digest: str) -> bytes:
    member = tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
    assert member is not None, digest
    return member.read()


def docker_manifest(oci: tarfile.TarFile) -> list[dict[str, object]]:
    """The `manifest.json` of `docker save` for an OCI image-layout tarball of one image."""
    index_file = oci.extractfile("index.json")
    assert index_file is not None
    entry = json.load(index_file)["manifests"][0]
    manifest = json.loads(_oci_member(oci, entry["digest"]))
    name = entry.get("annotations", {}).get("io.containerd.image.name", "")
    return [{
        "Config": "blobs/sha256/" + manifest["config"]["digest"].split(":", 1)[1],
        "RepoTags": [name.removeprefix("docker.io/")] if name else [],
        "Layers": ["blobs/sha256/" + layer["digest"].split(":", 1)[1]
                   for layer in manifest["layers"]],
    }]


def docker_archive(oci_tarball: Path) -> Path:
    """An OCI image-layout tarball plus the `manifest.json` that `docker save` writes
    (cached beside it): with graph drivers, `docker load` reads only that manifest."""
    out = oci_tarball.with_name(oci_tarball.stem + "-docker.tar")
    if out.exists():
        return out
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".docker-", suffix=".tar")
    try:
        with tarfile.open(oci_tarball) as oci, os.fdopen(fd, "wb") as f, \
                tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as dst:
            for member in oci.getmembers():
                dst.addfile(member, oci.extractfile(member) if member.isfile() else None)
            data = json.dumps(docker_manifest(oci)).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mode = len(data), 0o644
            dst.addfile(info, io.BytesIO(data))
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out


class PrivateDocker:
    """A dockerd with its own everything under a temp dir, using `containerd`.

    Use ``start()``/``stop()`` or ``with PrivateDocker(cd, sid_docker()) as d:``.
    """

    def __init__(
        self,
        containerd: PrivateContainerd,
        binaries: DockerBinaries,
        *,
        storage: str = GRAPHDRIVER,
        runtimes: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        if storage not in STORAGE_MODES:
            raise ValueError(f"storage must be one of {STORAGE_MODES}, not {storage!r}")
        self.containerd = containerd
        self.binaries = binaries
        self.storage = storage
        self.runtimes = dict(runtimes or {})  # name -> runtime type, for `--runtime NAME`
        self.start_timeout = start_timeout
        self.tag = uuid.uuid4().hex[:8]
        # Short paths: the socket path must stay below 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="pkd-", dir=base_dir or "/tmp"))
        self.data_root = self.dir / "data"
        self.exec_root = self.dir / "exec"
        self.pidfile = self.dir / "dockerd.pid"
        self.socket = self.dir / "docker.sock"
        self.config_path = self.dir / "daemon.json"
        self.cli_config = self.dir / "cli"
        self.log_path = self.dir / "dockerd.log"
        self.namespace = f"{NETNS_PREFIX}{self.tag}"  # containerd namespace, netns, cgroup
        self.netns_path = NETNS_DIR / self.namespace
        self.cgroup_parent = f"/{self.namespace}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._netns_made = False
        self._made_dirs = [d for d in (PLUGINS_RUN_DIR.parent, PLUGINS_RUN_DIR)
                           if not d.exists()]
        self._stopped = False

    # ------------------------------------------------------------------ start

    def daemon_config(self) -> dict[str, object]:
        """daemon.json: what no flag below says (the storage mode, named runtimes)."""
        return {
            "features": {"containerd-snapshotter": self.storage == SNAPSHOTTER},
            "runtimes": {name: {"runtimeType": kind} for name, kind in self.runtimes.items()},
        }

    def dockerd_argv(self) -> list[str]:
        """dockerd's command line, entered into the test's network namespace."""
        return [
            "nsenter", f"--net={self.netns_path}", "--",
            self.binaries.dockerd,
            f"--config-file={self.config_path}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--host=unix://{self.socket}",
            f"--containerd={self.containerd.address}",
            f"--containerd-namespace={self.namespace}",
            f"--containerd-plugins-namespace={self.namespace}-plugins",
            f"--cgroup-parent={self.cgroup_parent}",
            "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false",
            "--log-level=info",
        ]

    def start(self) -> PrivateDocker:
        """Make the netns, write daemon.json, start dockerd and wait until it answers."""
        if self.proc is not None:
            raise RuntimeError("already started")
        atexit.register(self.stop)
        try:
            self._make_netns()
            self.cli_config.mkdir()
            self.config_path.write_text(json.dumps(self.daemon_config(), indent=2) + "\n")
            self._launch()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _make_netns(self) -> None:
        subprocess.run(["ip", "netns", "add", self.namespace], check=True, timeout=10,
                       capture_output=True)
        self._netns_made = True
        subprocess.run(["ip", "-n", self.namespace, "link", "set", "lo", "up"], check=True,
                       timeout=10, capture_output=True)

    def _launch(self) -> None:
        path = ":".join([*self.binaries.path_dirs, os.environ.get("PATH", "")])
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.dockerd_argv(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PATH": path},
            )

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if self.socket.exists() and self.docker("version", timeout=10).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"dockerd not ready after {self.start_timeout}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of dockerd's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> PrivateDocker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the CLI

    def env(self) -> dict[str, str]:
        """The environment the docker CLI runs with: this daemon, a private CLI config."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}",
                "DOCKER_CONFIG": str(self.cli_config)}

    def docker(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon; text output, not checked by default."""
        return subprocess.run([self.binaries.docker, *args], input=input, capture_output=True,
                              text=True, timeout=timeout, check=check, env=self.env())

    def load_busybox(self) -> str:
        """Load the locally built busybox image (cached); returns the image name."""
        tarball = docker_archive(build_busybox_image())
        res = self.docker("load", "-i", str(tarball), timeout=120)
        match = re.search(r"Loaded image: (\S+)", res.stdout)
        if res.returncode != 0 or match is None:
            raise RuntimeError(f"docker load failed: {res.stdout}{res.stderr}")
        return match.group(1)

    # ------------------------------------------------------------------ what is left

    def bundles(self) -> list[str]:
        """containerd's task bundles for this daemon's containers."""
        ns = self.containerd.state / "io.containerd.runtime.v2.task" / self.namespace
        return sorted(str(p) for p in ns.iterdir()) if ns.is_dir() else []

    def container_leftovers(self) -> dict[str, list[str]]:
        """Containers, their folders, bundles, root mounts and cgroups still there (all
        must be empty once every container is removed)."""
        listed = self.docker("ps", "-aq", timeout=30).stdout.split()
        folders = self.data_root / "containers"
        found = {
            "docker containers": listed,
            "container folders": [p.name for p in folders.iterdir()] if folders.is_dir()
            else [],
            "containerd containers": self.containerd.ctr(
                "containers", "ls", "-q", namespace=self.namespace).stdout.split(),
            "bundles": self.bundles(),
            "mounts": [m for m in _mounts_under(self.data_root) if m != str(self.data_root)]
            + _mounts_under(self.exec_root)
            + _mounts_under(self.containerd.state / "io.containerd.runtime.v2.task"
                            / self.namespace),
            "cgroups": [str(p) for p in CGROUP_ROOT.glob(f"*/{self.namespace}/*")
                        if p.is_dir()],
        }
        return {k: v for k, v in found.items() if v}

    def assert_no_containers_left(self, timeout: float = 20.0) -> None:
        """Wait up to `timeout` for removal to finish, then fail naming what is left."""
        deadline = time.monotonic() + timeout
        left = self.container_leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = self.container_leftovers()
        assert not left, f"docker left containers behind: {left}"

    # ------------------------------------------------------------------ stop

    def stop(self, timeout: float = 30.0) -> None:
        """Remove containers, end dockerd by PID, unmount, remove the netns, the cgroup
        parent and the temp dir."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self._remove_all_containers()
                self._end_dockerd(timeout)
            for pid in _pids_with_arg(str(self.dir)):  # anything else it started
                _kill(pid, signal.SIGKILL)
        finally:
            for point in _mounts_under(self.dir):
                _umount(point)
            if self._netns_made:
                subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True,
                               timeout=10, check=False)
                self._netns_made = False
            self._remove_cgroup_parent()
            for folder in reversed(self._made_dirs):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
            shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_all_containers(self) -> None:
        ids = self.docker("ps", "-aq", timeout=30).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, timeout=180)

    def _end_dockerd(self, timeout: float) -> None:
        assert self.proc is not None
        _kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def _remove_cgroup_parent(self) -> None:
        """rmdir the (empty) cgroup parent dockerd and the shim made, in every hierarchy."""
        for top in CGROUP_ROOT.glob(f"*/{self.namespace}"):
            for folder, _, _ in sorted(os.walk(top), key=lambda w: w[0].count("/"),
                                       reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)

    def leftovers(self) -> dict[str, object]:
        """After stop(): what is still there (all must be empty)."""
        found: dict[str, object] = {
            "dockerd alive": self.proc is not None and self.proc.poll() is None,
            "processes": _pids_with_arg(str(self.dir)),
            "mounts": _mounts_under(self.dir),
            "dir exists": self.dir.exists(),
            "netns": self.netns_path.exists(),
            "cgroups": [str(p) for p in CGROUP_ROOT.glob(f"*/{self.namespace}")],
            "folders made": [str(d) for d in self._made_dirs if d.exists()],
        }
        return {k: v for k, v in found.items() if v}
