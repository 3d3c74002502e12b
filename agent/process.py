"""One process of a container (its init or an exec): pid, stdio, exit status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal as signals

from agent.stdio import InputPipe, OutputBuffer, PipeSet, resize


def handles_signal(pid: int, signal: int) -> bool:
    """Whether pid has a handler installed for signal (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal - 1)))
    except (OSError, ValueError):
        pass
    return False


class Process:
    """A process the agent started through runc, and the agent's ends of its stdio."""

    def __init__(self, exec_id: str, *, init: bool, terminal: bool) -> None:
        self.exec_id = exec_id
        self.init = init
        self.terminal = terminal
        self.pid = 0
        self.stdin: InputPipe | None = None
        self.stdout: OutputBuffer | None = None
        self.stderr: OutputBuffer | None = None
        self._console: int | None = None
        self.exited: asyncio.Future[int] | None = None
        self.waited = False
        self.started = not init  # an init waits in `runc init` until StartContainer

    # -- stdio -----------------------------------------------------------------
    def attach_pipes(self, pipes: PipeSet, limit: int) -> None:
        """Take the agent's ends of the pipes (the child's ends are closed by the caller)."""
        self.stdin = InputPipe(pipes.stdin)
        self.stdout = OutputBuffer(pipes.stdout, limit)
        self.stderr = OutputBuffer(pipes.stderr, limit)

    def attach_console(self, master: int, limit: int) -> None:
        """Take a pty master: output and input both go through it, no stderr."""
        self._console = master
        self.stdin = InputPipe(os.dup(master), terminal=True)
        self.stdout = OutputBuffer(os.dup(master), limit)

    def resize(self, rows: int, columns: int) -> bool:
        """Set the terminal size; False when the process has no terminal."""
        if self._console is None:
            return False
        resize(self._console, rows, columns)
        return True

    # -- life ------------------------------------------------------------------
    @property
    def has_exited(self) -> bool:
        return self.exited is not None and self.exited.done()

    @property
    def finished(self) -> bool:
        """Exited, waited for, and every output byte taken: nothing left to ask."""
        return (
            self.has_exited
            and self.waited
            and all(out is None or out.eof for out in (self.stdout, self.stderr))
        )

    async def signal(self, sig: int) -> None:
        """Send sig, unless the process has exited (its pid may belong to another now).

        Like Kata: a container init (PID 1 of its namespace) ignores SIGTERM it
        has no handler for, so it gets SIGKILL instead. Right after `runc start`
        the init may still be runc's own code (whose Go runtime catches every
        signal): the check waits, briefly, for the exec of the real program.
        """
        if self.pid <= 0 or self.has_exited:
            return
        if self.init and sig == signals.SIGTERM:
            if self.started:
                await self._past_runc_init()
            if not self.started or not handles_signal(self.pid, sig):
                sig = signals.SIGKILL
        if self.has_exited:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    async def _past_runc_init(self, patience: float = 2.0) -> None:
        for _ in range(int(patience / 0.01)):
            try:
                with open(f"/proc/{self.pid}/comm") as comm:
                    # runc's init is "runc:[2:INIT]", crun's is "crun", until they exec
                    if not comm.read().startswith(("runc:", "crun")):
                        return
            except OSError:
                return
            await asyncio.sleep(0.01)

    async def wait(self) -> int:
        """The exit status (128+N when killed by signal N); waits for the exit."""
        assert self.exited is not None
        status = await asyncio.shield(self.exited)
        self.waited = True
        return status

    def close(self) -> None:
        """Release every stdio fd; readers see EOF."""
        if self.stdin is not None:
            self.stdin.discard()
        for out in (self.stdout, self.stderr):
            if out is not None:
                out.close()
        if self._console is not None:
            with contextlib.suppress(OSError):
                os.close(self._console)
            self._console = None
