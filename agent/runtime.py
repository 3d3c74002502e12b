"""The OCI runtime driver: runc's command line, its errors, its JSON.

`create` and `exec` give the container process our stdio fds (or a console
socket) and let runc exit: the process is re-parented to the agent (PID 1 or
subreaper), which reaps it and so knows its real exit status.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from agent.children import Completed, Reaper, run, spawn

log = logging.getLogger("agent.runtime")


class RuncError(Exception):
    """runc failed; the message is runc's own."""


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


class Runc:
    """Runs runc with one state root."""

    def __init__(self, reaper: Reaper, binary: str, root: str, timeout: float = 60.0) -> None:
        self.reaper = reaper
        self.binary = binary
        self.root = root
        self.timeout = timeout
        # In a guest booted from an initrd the container root cannot be pivoted to;
        # runc then moves it onto / and chroots instead.
        self.no_pivot = root_is_initramfs()

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", self.root, *args]

    async def _run(self, *args: str, input: bytes | None = None) -> Completed:
        done = await run(self.reaper, self._argv(*args), input=input, timeout=self.timeout)
        if done.status != 0:
            raise RuncError(f"runc {args[0]}: {done.error_text}")
        return done

    async def _detached(
        self,
        args: Sequence[str],
        log_path: str,
        pid_file: str,
        stdio: tuple[int, int, int] | None,
    ) -> int:
        """Run `runc create`/`runc exec -d` with the process's stdio; its pid."""
        argv = self._argv("--log", log_path, "--log-format", "json", *args)
        stdin, stdout, stderr = stdio if stdio is not None else (None, None, None)
        pid = spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr)
        status = await self.reaper.watch(pid)
        if status != 0:
            raise RuncError(f"runc {args[0]}: {last_error(log_path) or f'exit status {status}'}")
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
        """`runc create`: the container's init, stopped before exec; its pid."""
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
        """`runc exec --detach`: one more process in the container; its pid."""
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

    async def stats(self, cid: str) -> dict[str, Any]:
        """`runc events --stats`: the cgroup figures of the container."""
        import json

        done = await self._run("events", "--stats", cid)
        return json.loads(done.stdout).get("data", {})

    async def state(self, cid: str) -> dict[str, Any]:
        import json

        done = await self._run("state", cid)
        return json.loads(done.stdout)
