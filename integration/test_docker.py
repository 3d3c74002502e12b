"""Docker from Debian (sid's 28.x) runs containers inside pykata VMs.

A private dockerd (docker_env.PrivateDocker: own roots, socket, containerd namespace,
cgroup parent, inside a network namespace the test made) on the private containerd 2.x,
once per storage mode: Docker's graph driver (overlay2) and the containerd image store
(containerd's overlayfs snapshotter). In both, Docker 28 mounts the container's root
itself (the snapshot, in the second) and hands containerd its absolute `root.path` with
no rootfs mounts; `ctr` and CRI, which hand over mounts, are test_shim_ctr's and
test_cri's. Three containers (three VM boots) per mode. After every test nothing
of pykata is left, and no container, bundle, root mount or cgroup of Docker's either.
"""

from __future__ import annotations

import contextlib
import json
import platform
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.containerd_env import _mounts_under
from integration.docker_env import (
    GRAPHDRIVER,
    SNAPSHOTTER,
    STORAGE_MODES,
    PrivateDocker,
    sid_docker,
)
from integration.pykata_env import (
    RUNTIME,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)

pytestmark = pytest.mark.integration
RUN_TIMEOUT = 240
README = Path(__file__).resolve().parent.parent / "README.md"
CONTAINERD_LINE = "2"  # Docker 28 needs containerd 1.7 or later
# Docker's name for each mode's storage in `docker info`, and where it mounts a root.
DRIVER = {GRAPHDRIVER: "overlay2", SNAPSHOTTER: "overlayfs"}
ROOT_UNDER = {GRAPHDRIVER: "overlay2", SNAPSHOTTER: "rootfs/overlayfs"}


def readme_runtimes() -> dict[str, str]:
    """The runtimes of the README's daemon.json snippet, as pasted: name -> type."""
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), flags=re.S)
    runtimes = [json.loads(b)["runtimes"] for b in blocks if '"runtimes"' in b]
    assert len(runtimes) == 1, "the README should have one daemon.json runtimes snippet"
    return {name: entry["runtimeType"] for name, entry in runtimes[0].items()}


@pytest.fixture(scope="module", params=STORAGE_MODES)
def docker(request, containerd_of_line) -> Iterator[tuple[PrivateDocker, str]]:
    """(a started private dockerd in one storage mode, the busybox image it loaded)."""
    ensure_shim_on_path()
    ensure_guest_assets()
    cd, _ = containerd_of_line(CONTAINERD_LINE)
    d = PrivateDocker(cd, sid_docker(), storage=request.param,
                      runtimes=readme_runtimes()).start()
    try:
        driver = d.docker("info", "-f", "{{.Driver}}", check=True).stdout.strip()
        assert driver == DRIVER[request.param], d.log_tail()
        yield d, d.load_busybox()
    finally:
        d.stop()
    assert not d.leftovers(), f"the private dockerd left things behind: {d.leftovers()}"


@pytest.fixture(autouse=True)
def nothing_left_behind(docker) -> Iterator[None]:
    """After each test: no pykata leftovers, no container of Docker's, and containerd
    never failed to remove a bundle's rootfs (what a rootfs left mounted causes)."""
    d, _ = docker
    log_start = d.containerd.log_path.stat().st_size
    yield
    try:
        assert_nothing_left()
        d.assert_no_containers_left()
    finally:
        ids = d.docker("ps", "-aq").stdout.split()
        if ids:
            d.docker("rm", "-f", *ids, timeout=RUN_TIMEOUT)
    with open(d.containerd.log_path, errors="replace") as log:
        log.seek(log_start)
        failures = [line for line in log if "failed to remove bundle" in line]
    assert not failures, failures


def docker_run(d: PrivateDocker, *args: str, input: str | None = None):
    """`docker run --network none --runtime io.containerd.pykata.v2 ARGS`."""
    return d.docker("run", "--network", "none", "--runtime", RUNTIME, *args, input=input,
                    timeout=RUN_TIMEOUT)


def assert_guest_kernel(release: str) -> None:
    assert release != platform.release(), "uname -r printed the host kernel"
    assert re.match(r"^\d+\.\d+\.\d+-", release), release


def bundle_root(d: PrivateDocker, container_id: str) -> dict:
    """The `root` of the spec containerd gave the shim for this container."""
    state = d.containerd.state / "io.containerd.runtime.v2.task" / d.namespace
    return json.loads((state / container_id / "config.json").read_text())["root"]


@contextlib.contextmanager
def removed_at_the_end(d: PrivateDocker, name: str) -> Iterator[None]:
    """Remove container `name` after a failed test, so that only the failure is told."""
    try:
        yield
    except BaseException:
        d.docker("rm", "-f", name, timeout=RUN_TIMEOUT)
        raise


def check_root_is_dockers_mount(d: PrivateDocker, container_id: str) -> None:
    """In both modes dockerd mounts the root itself (a graph driver's layers, or the
    containerd snapshot) and hands over its absolute path, with no rootfs mounts."""
    root = Path(bundle_root(d, container_id)["path"])
    assert root.is_relative_to(d.data_root / ROOT_UNDER[d.storage]), root
    assert str(root) in _mounts_under(d.data_root), root


def test_run_rm_i_prints_the_guest_kernel_echoes_stdin_and_exits_6(docker):
    d, image = docker
    stdin = "hello from the host\nsecond line\n"
    result = d.docker("run", "--rm", "-i", "--network", "none", "--runtime", RUNTIME, image,
                      "sh", "-c", "uname -r; cat; exit 6", input=stdin, timeout=RUN_TIMEOUT)
    assert result.returncode == 6, result.stderr + d.log_tail()
    kernel, *echoed = result.stdout.splitlines()
    assert_guest_kernel(kernel)
    assert echoed == stdin.splitlines()


def test_detached_container_exec_stop_rm(docker):
    d, image = docker
    name = f"pk-{uuid.uuid4().hex[:8]}"
    with removed_at_the_end(d, name):
        run = docker_run(d, "-d", "--name", name, image, "sleep", "600")
        assert run.returncode == 0, run.stderr + d.log_tail()
        check_root_is_dockers_mount(d, run.stdout.strip())

        result = d.docker("exec", name, "sh", "-c", "uname -r; echo to-stderr >&2; exit 3")
        assert result.returncode == 3, result.stderr
        assert_guest_kernel(result.stdout.strip())
        assert "to-stderr" in result.stderr

        result = d.docker("exec", "-i", name, "sh", "-c", "tr a-z A-Z; exit 4", input="piped\n")
        assert (result.returncode, result.stdout) == (4, "PIPED\n"), result.stderr

        # A write in the VM lands in Docker's layer of this container: its root is shared.
        assert d.docker("exec", name, "sh", "-c", "echo data > /written").returncode == 0
        assert "A /written" in d.docker("diff", name).stdout.splitlines()

        stop = d.docker("stop", name, timeout=RUN_TIMEOUT)
        assert stop.returncode == 0, stop.stderr + d.log_tail()
        state = d.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name).stdout
        assert state.split() == ["exited", "137"], state  # TERM to a handlerless init: KILL

        removed = d.docker("rm", name)
        assert removed.returncode == 0, removed.stderr
        assert d.docker("ps", "-aq").stdout.split() == []


def test_read_only_rootfs_is_read_only_in_the_vm(docker):
    """--read-only, and the runtime by the name the README's daemon.json gives it."""
    d, image = docker
    result = d.docker("run", "--rm", "--read-only", "--network", "none", "--runtime", "pykata",
                      image, "sh", "-c",
                      "touch /x; echo touch=$?; echo tmp > /dev/shm/y && echo shm-ok",
                      timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr + d.log_tail()
    assert result.stdout.splitlines() == ["touch=1", "shm-ok"]
    assert "Read-only file system" in result.stderr
