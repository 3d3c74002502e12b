"""Errors of the vmm layer; each one says what failed and carries the evidence."""

from __future__ import annotations


class VMError(Exception):
    """Something about a sandbox VM went wrong."""


class VMStartError(VMError):
    """The VM did not come up; whatever was started has been torn down."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        stderr_tail: str = "",
        console_tail: str = "",
    ) -> None:
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.console_tail = console_tail
        parts = [message]
        if stderr_tail:
            parts.append(f"qemu stderr:\n{stderr_tail}")
        if console_tail:
            parts.append(f"guest console (last lines):\n{console_tail}")
        super().__init__("\n".join(parts))
        self.message = message


class QemuExitedError(VMStartError):
    """QEMU exited while the VM was starting."""


class AgentTimeoutError(VMStartError):
    """The guest agent did not answer before the start deadline."""


class VirtiofsdError(VMStartError):
    """virtiofsd did not start."""


class VhostVsockError(VMStartError):
    """vhost-device-vsock (hybrid vsock's daemon) did not start, or died while the VM did."""
