"""The OCI runtime driver: runc's command line (crun speaks it too), its errors, its JSON.

`create` and `exec` give the container process our stdio fds (or a console
socket) and let the runtime exit: the process is re-parented to the agent (PID 1
or subreaper), which reaps it and so knows its real exit status.

Which runtime: crun when it is installed, else runc (`choose`). Both take the
same subcommands and flags for everything the agent runs; crun has no
`events --stats`, so the stats are read from the cgroup files (agent.stats)
whichever runtime runs the container. Either runs from a sealed copy made once
(`sealed_copy`). CreateContainer as the host sees it, TCG guest, medians
(bench/container_create_bench.py): runc 0.61 s, runc from its sealed copy
0.28 s, crun 0.20 s, crun from its sealed copy 0.11 s (runc is Go: `runc create`
then its re-exec'd `runc init`; crun is C).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from agent.children import Completed, Reaper, run, spawn, which

log = logging.getLogger("agent.runtime")

#: Environment variable naming the OCI runtime: "crun", "runc", a path, or "auto".
#: On the kernel command line (`PYKATA_OCI_RUNTIME=runc`) it reaches the agent
#: through /init's environment.
RUNTIME_ENV = "PYKATA_OCI_RUNTIME"


class OciRuntimeError(Exception):
    """The runtime failed; the message is the runtime's own."""


def choose(configured: str, environ: Mapping[str, str] | None = None) -> str:
    """The OCI runtime binary to run, given the agent's `--runc` setting.

    $PYKATA_OCI_RUNTIME, unless empty or "auto", names it (a name looked up on
    PATH, or a path). Otherwise a runtime named anything but `runc` (an explicit
    choice, e.g. `--runc /opt/crun`) is kept; `runc` (the default) gives way to
    crun when crun is on PATH.
    """
    wanted = (os.environ if environ is None else environ).get(RUNTIME_ENV, "").strip()
    if wanted and wanted != "auto":
        return which(wanted) or wanted
    if os.path.basename(configured) != "runc":
        return which(configured) or configured
    return which("crun") or which(configured) or configured


def last_error(log_path: str) -> str:
    """The last error runc wrote to its JSON log file."""
    import json

    message = ""
    try:
        with open(log_path, "rb") as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("level") in ("error", "fatal"):
                    message = entry.get("msg", message)
    except OSError:
        pass
    return message


def root_is_initramfs(mounts: str = "/proc/mounts") -> bool:
    """True when / is the initramfs (rootfs), where pivot_root(2) fails with EINVAL."""
    try:
        with open(mounts) as table:
            for line in table:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "/" and fields[2] in ("rootfs", "ramfs"):
                    return True
    except OSError:
        pass
    return False


def sealed_copy(binary: str, folder: str) -> tuple[str, int] | None:
    """A copy of `binary` in a sealed memfd the agent keeps open: (a path to run it by, its fd).

    Against CVE-2019-5736 (a container overwriting the runtime's binary through
    /proc/self/exe), crun on every command, and `runc init`, re-execute
    themselves from a sealed memfd copy unless /proc/self/exe already is one. In
    an initramfs guest crun even does it twice (a read-only bind mount of a
    tmpfs file does not pass its check), so each crun command loaded its ten
    libraries three times; `runc init` copied its 10 MiB binary each time.
    Started from a copy sealed like theirs (F_SEAL_SEAL|SHRINK|GROW|WRITE), both
    take it as their own: same protection, made once per agent. The path is
    `folder/<name>`, a symlink to /proc/<agent>/fd/<fd>, so that the processes
    keep their name. None when it cannot be made (the binary is then run as is).
    """
    import fcntl

    name = os.path.basename(binary)
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError) as exc:
        log.info("%s: no sealed copy (%s)", name, exc)
        return None
    try:
        with open(binary, "rb") as source:
            while chunk := source.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        link = os.path.join(folder, name)
        fresh = f"{link}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fresh)
        os.symlink(f"/proc/{os.getpid()}/fd/{fd}", fresh)
        os.replace(fresh, link)
    except OSError as exc:
        log.info("%s: no sealed copy (%s)", name, exc)
        os.close(fd)
        return None
    return link, fd


class OciRuntime:
    """Runs an OCI runtime with runc's command line (runc or crun) and one state root."""

    def __init__(self, reaper: Reaper, binary: str, root: str, timeout: float = 60.0) -> None:
        self.reaper = reaper
        self.binary = choose(binary)
        if which(self.binary) is None:
            log.error("%s not found: containers cannot be created", self.binary)
        self.name = os.path.basename(self.binary)  # for messages: "crun create: ..."
        self.root = root
        self.timeout = timeout
        # In a guest booted from an initrd the container root cannot be pivoted to;
        # the runtime then moves it onto / and chroots instead.
        self.no_pivot = root_is_initramfs()
        # What is executed: the sealed copy (its folder next to the state root).
        self.executable = self.binary
        self._sealed_fd: int | None = None
        copy = sealed_copy(self.binary, root.rstrip("/") + ".bin")
        if copy is not None:
            self.executable, self._sealed_fd = copy
        log.info("OCI runtime: %s (run as %s)", self.binary, self.executable)

    def close(self) -> None:
        """Drop the sealed copy: the binary itself is run from now on."""
        if self._sealed_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.executable)
            os.close(self._sealed_fd)
            self._sealed_fd = None
            self.executable = self.binary

    def _argv(self, *args: str) -> list[str]:
        return [self.executable, "--root", self.root, *args]

    async def _run(self, *args: str, input: bytes | None = None) -> Completed:
        done = await run(self.reaper, self._argv(*args), input=input, timeout=self.timeout)
        if done.status != 0:
            raise OciRuntimeError(f"{self.name} {args[0]}: {done.error_text}")
        return done

    async def _detached(
        self,
        args: Sequence[str],
        log_path: str,
        pid_file: str,
        stdio: tuple[int, int, int] | None,
    ) -> int:
        """Run `create`/`exec --detach` with the process's stdio; its pid."""
        argv = self._argv("--log", log_path, "--log-format", "json", *args)
        stdin, stdout, stderr = stdio if stdio is not None else (None, None, None)
        pid = spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr)
        status = await self.reaper.watch(pid)
        if status != 0:
            error = last_error(log_path) or f"exit status {status}"
            raise OciRuntimeError(f"{self.name} {args[0]}: {error}")
        with open(pid_file) as text:
            return int(text.read().strip())

    async def create(
        self,
        cid: str,
        bundle: str,
        *,
        stdio: tuple[int, int, int] | None = None,
        console_socket: str | None = None,
    ) -> int:
        """`create`: the container's init, stopped before exec; its pid."""
        pid_file = os.path.join(bundle, "init.pid")
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if self.no_pivot:
            args.append("--no-pivot")
        if console_socket:
            args += ["--console-socket", console_socket]
        return await self._detached([*args, cid], os.path.join(bundle, "runc.log"), pid_file, stdio)

    async def exec(
        self,
        cid: str,
        process_file: str,
        pid_file: str,
        *,
        stdio: tuple[int, int, int] | None = None,
        console_socket: str | None = None,
    ) -> int:
        """`exec --detach`: one more process in the container; its pid."""
        args = ["exec", "--detach", "--process", process_file, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        log_path = pid_file[: -len(".pid")] + ".log"
        return await self._detached([*args, cid], log_path, pid_file, stdio)

    async def start(self, cid: str) -> None:
        await self._run("start", cid)

    async def kill(self, cid: str, signal: int, *, all: bool = False) -> None:
        await self._run("kill", *(["--all"] if all else []), cid, str(signal))

    async def delete(self, cid: str, *, force: bool = True) -> None:
        await self._run("delete", *(["--force"] if force else []), cid)

    async def pause(self, cid: str) -> None:
        await self._run("pause", cid)

    async def resume(self, cid: str) -> None:
        await self._run("resume", cid)

    async def update(self, cid: str, resources: dict[str, Any]) -> None:
        import json

        await self._run("update", "--resources", "-", cid, input=json.dumps(resources).encode())

    async def state(self, cid: str) -> dict[str, Any]:
        import json

        done = await self._run("state", cid)
        return json.loads(done.stdout)
