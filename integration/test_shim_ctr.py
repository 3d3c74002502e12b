"""The product, end to end: containerd runs containers inside pykata VMs via `ctr`.

Under each containerd line users run (1.6, 1.7, 2.x: a private containerd from
its Debian package), the real shim on PATH, real QEMU (TCG here), the real
guest kernel + initrd and agent. After every test nothing of pykata is left.
"""

from __future__ import annotations

import io
import os
import platform
import re
import signal
import subprocess
import time
import uuid

import pytest

from integration.containerd_versions import CONTAINERD_LINES
from integration.pykata_env import (
    RUNTIME,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)

pytestmark = pytest.mark.integration
RUN_TIMEOUT = 240


@pytest.fixture(scope="module", params=CONTAINERD_LINES, ids=lambda line: f"containerd-{line}")
def pykata(request, containerd_of_line):
    """(private containerd, busybox image), once for each containerd line of the matrix."""
    ensure_shim_on_path()
    ensure_guest_assets()
    return containerd_of_line(request.param)


@pytest.fixture(autouse=True)
def nothing_left_behind(request):
    yield
    if "pykata" not in request.fixturenames:
        return
    assert_nothing_left()


def force_remove(cd, cid: str, run: subprocess.Popen | None = None) -> None:
    """After a failed test: kill the task, delete it and its container, end ctr."""
    if run is not None and run.poll() is None:
        cd.ctr("task", "kill", "-s", "KILL", cid)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
    cd.ctr("task", "delete", "--force", cid, timeout=120)
    cd.ctr("container", "delete", cid)


def wait_running(cd, cid: str, run: subprocess.Popen) -> None:
    for _ in range(RUN_TIMEOUT * 2):
        state = cd.ctr("task", "ls")
        if re.search(rf"^{cid}\s+\d+\s+RUNNING", state.stdout, re.M):
            return
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.5)
    raise AssertionError(f"task never ran: {state.stdout}")


def update_memory_limit(cd, cid: str, limit: int) -> None:
    """Task/Update on the shim's own socket, as containerd's CRI would send it."""
    import asyncio
    import json

    from google.protobuf.any_pb2 import Any

    import ttrpc
    from protos.containerd.task.v2 import shim_pb2

    bundle = cd.state / "io.containerd.runtime.v2.task" / cd.namespace / cid
    address = (bundle / "address").read_text()
    resources = Any(
        type_url="opencontainers/runtime-spec/1/LinuxResources",
        value=json.dumps({"memory": {"limit": limit}}).encode(),
    )

    async def update() -> None:
        async with await ttrpc.Client.connect(
            address, metadata={"containerd-namespace-ttrpc": cd.namespace}
        ) as client:
            task = ttrpc.Stub(client, shim_pb2.DESCRIPTOR.services_by_name["Task"])
            await task.Update(shim_pb2.UpdateTaskRequest(id=cid, resources=resources), timeout=60)

    asyncio.run(update())


def name() -> str:
    return f"pk-{uuid.uuid4().hex[:8]}"


def ctr_run(cd, image, cid, *command, extra=(), input=None, timeout=RUN_TIMEOUT):
    try:
        return cd.ctr(
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            *extra,
            image,
            cid,
            *command,
            input=input,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        force_remove(cd, cid)
        raise


def test_output_and_exit_code_come_from_the_vm(pykata):
    cd, image = pykata
    result = ctr_run(cd, image, name(), "sh", "-c", "uname -r; echo to-stderr >&2; exit 3")
    assert result.returncode == 3, result.stderr + cd.log_tail()
    guest_kernel = result.stdout.strip().splitlines()[0]
    assert guest_kernel != platform.release(), "uname -r printed the host kernel"
    assert re.match(r"^\d+\.\d+\.\d+-", guest_kernel)
    assert "to-stderr" in result.stderr


def test_stdin_is_piped_into_the_container(pykata):
    cd, image = pykata
    result = ctr_run(
        cd, image, name(), "sh", "-c", "tr a-z A-Z; echo done", input="hello from the host\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["HELLO FROM THE HOST", "done"]


def test_kill_gives_137_and_exec_ps_pause_metrics(pykata):
    cd, image = pykata
    cid = name()
    run = subprocess.Popen(
        cd.ctr_argv("run", "--runtime", RUNTIME, "--rm", image, cid, "sleep", "600"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_running(cd, cid, run)
        exec_result = cd.ctr(
            "task", "exec", "--exec-id", "e1", cid, "sh", "-c", "echo exec-out; exit 7", timeout=120
        )
        assert exec_result.returncode == 7, exec_result.stderr
        assert exec_result.stdout.strip() == "exec-out"

        ps = cd.ctr("task", "ps", cid)
        assert ps.returncode == 0, ps.stderr
        assert re.search(r"^\d+", ps.stdout.splitlines()[-1])

        assert cd.ctr("task", "pause", cid).returncode == 0
        assert re.search(rf"^{cid}\s+\d+\s+PAUSED", cd.ctr("task", "ls").stdout, re.M)
        assert cd.ctr("task", "resume", cid).returncode == 0
        assert re.search(rf"^{cid}\s+\d+\s+RUNNING", cd.ctr("task", "ls").stdout, re.M)

        update_memory_limit(cd, cid, 268435456)  # ctr 1.6 has no `task update`
        metrics = cd.ctr("task", "metrics", cid)
        assert metrics.returncode == 0, metrics.stderr
        assert "memory.usage_in_bytes" in metrics.stdout
        # the update reached the container's cgroup in the guest
        assert re.search(r"memory\.limit_in_bytes\s+268435456", metrics.stdout), metrics.stdout

        assert cd.ctr("task", "kill", "-s", "KILL", cid).returncode == 0
        run.wait(timeout=120)
        assert run.returncode == 137
    finally:
        if run.poll() is None:
            force_remove(cd, cid, run)


def test_five_runs_in_a_row(pykata):
    cd, image = pykata
    for i in range(5):
        result = ctr_run(cd, image, name(), "sh", "-c", f"echo run-{i}")
        assert (result.returncode, result.stdout.strip()) == (0, f"run-{i}"), result.stderr


def test_two_containers_run_in_two_vms(pykata):
    cd, image = pykata
    ids = [name(), name()]
    runs = [
        subprocess.Popen(
            cd.ctr_argv(
                "run",
                "--runtime",
                RUNTIME,
                "--rm",
                image,
                cid,
                "sh",
                "-c",
                "cat /proc/sys/kernel/random/boot_id; sleep 2",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cid in ids
    ]
    outputs = [run.communicate(timeout=RUN_TIMEOUT) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    boot_ids = {out.strip() for out, _ in outputs}
    assert len(boot_ids) == 2, "both containers ran in the same kernel"


def test_shim_killed_mid_run_is_cleaned_up_by_containerd(pykata):
    cd, image = pykata
    cid = name()
    run = subprocess.Popen(
        cd.ctr_argv("run", "--runtime", RUNTIME, image, cid, "sleep", "600"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_running(cd, cid, run)
        bundle = cd.state / "io.containerd.runtime.v2.task" / cd.namespace / cid
        socket_path = (bundle / "address").read_text().removeprefix("unix://")
        assert os.path.exists(socket_path)
        shim_pids = [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-f", f"containerd-shim-pykata-v2 .*-id {cid}"],
                capture_output=True,
                text=True,
            ).stdout.split()
        ]
        assert shim_pids, "no shim process found"
        for pid in shim_pids:
            os.kill(pid, signal.SIGKILL)
        # containerd notices the dead shim, runs `shim delete`, and reports the task gone
        run.wait(timeout=120)
        assert run.returncode != 0
        # ... and `delete` removed the socket the killed daemon could not
        deadline = time.monotonic() + 20
        while os.path.exists(socket_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not os.path.exists(socket_path), f"{socket_path} left in /run/containerd/s"
    finally:
        force_remove(cd, cid, run)


def test_tty_process_gets_a_terminal(pykata):
    """`ctr run -t`: the process runs on a pty in the guest; output comes back through it."""
    import pty
    import select

    cd, image = pykata
    cid = name()
    master, slave = pty.openpty()
    run = subprocess.Popen(
        cd.ctr_argv(
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            "-t",
            image,
            cid,
            "sh",
            "-c",
            "tty; echo tty-ok; exit 5",
        ),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
            elif run.poll() is not None:
                break
        run.wait(timeout=60)
    finally:
        os.close(master)
        if run.poll() is None:
            force_remove(cd, cid, run)
    text = output.decode(errors="replace")
    assert "tty-ok" in text, text
    assert re.search(r"/dev/pts/\d+", text), text
    assert run.returncode == 5


def test_memory_limit_oom_kill_is_reported(pykata):
    """A container over its memory limit is OOM-killed in the guest: exit 137, /tasks/oom."""
    cd, image = pykata
    cid = name()
    watcher = subprocess.Popen(
        cd.ctr_argv("events"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        result = ctr_run(
            cd,
            image,
            cid,
            "sh",
            "-c",
            "a=x; while :; do a=$a$a; done",
            extra=("--memory-limit", str(48 << 20)),
        )
        assert result.returncode == 137, result.stderr
        deadline = time.monotonic() + 30
        seen = []
        os.set_blocking(watcher.stdout.fileno(), False)
        while time.monotonic() < deadline:
            line = watcher.stdout.readline()
            if not line:
                time.sleep(0.2)
                continue
            seen.append(line.strip())
            if "/tasks/oom" in line and cid in line:
                break
        assert any("/tasks/oom" in s and cid in s for s in seen), seen
    finally:
        watcher.kill()
        watcher.wait()


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "read-only"])
def test_a_rootfs_given_as_a_folder_is_shared_as_it_is(pykata, tmp_path, readonly):
    """Docker's graph drivers (and `ctr run --rootfs`) mount the root themselves and give
    it as an absolute root.path with no rootfs mounts: pykata shared the bundle's empty
    rootfs/ instead ("executable file 'sh' not found"). root.readonly holds in the
    container."""
    import tarfile

    from integration.containerd_env import BUSYBOX_BINARY, _rootfs_layer

    cd, _ = pykata
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(fileobj=io.BytesIO(_rootfs_layer(BUSYBOX_BINARY))) as tar:
        tar.extractall(root, filter="fully_trusted")
    cid = name()
    # no image, so no image config: PATH is the caller's to give (Docker always does)
    extra = ["--rootfs", "--env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
             *(["--read-only"] if readonly else [])]
    script = "uname -r; touch /written && echo wrote || echo refused"
    result = cd.ctr("run", "--runtime", RUNTIME, "--rm", *extra, str(root), cid,
                    "sh", "-c", script, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr + cd.log_tail()
    kernel, outcome = result.stdout.split()[0], result.stdout.split()[-1]
    assert kernel != platform.release()
    assert outcome == ("refused" if readonly else "wrote"), result.stdout
    assert (root / "written").exists() is not readonly  # the folder itself was the root
    assert_nothing_left()
