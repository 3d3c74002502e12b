"""Names of the files a VM keeps in its sandbox state directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shim.paths import QEMU_PID_FILE

# sun_path is 108 bytes including the terminating NUL
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class VMPaths:
    """Per-sandbox paths; a separate `delete` process finds the same ones from the dir."""

    state_dir: Path

    @property
    def qmp_socket(self) -> Path:
        return self.state_dir / "qmp.sock"

    @property
    def agent_socket(self) -> Path:
        return self.state_dir / "agent.sock"

    @property
    def console_socket(self) -> Path:
        return self.state_dir / "console.sock"

    @property
    def debug_console_socket(self) -> Path:
        """The host end of the debug console port (short: sun_path is tight)."""
        return self.state_dir / "dbgcon.sock"

    @property
    def virtiofsd_socket(self) -> Path:
        return self.state_dir / "vfs.sock"

    @property
    def hvsock_socket(self) -> Path:
        """Hybrid vsock: the host's door to the guest's vsock ports (`CONNECT <port>`)."""
        return self.state_dir / "hvsock.sock"

    @property
    def vhost_vsock_socket(self) -> Path:
        """vhost-device-vsock's vhost-user socket, which QEMU connects to."""
        return self.state_dir / "vuvsock.sock"

    @property
    def vhost_vsock_log(self) -> Path:
        return self.state_dir / "vhost-vsock.log"

    @property
    def console_log(self) -> Path:
        return self.state_dir / "console.log"

    @property
    def qemu_stderr(self) -> Path:
        return self.state_dir / "qemu.stderr"

    @property
    def virtiofsd_log(self) -> Path:
        return self.state_dir / "virtiofsd.log"

    @property
    def qemu_pidfile(self) -> Path:
        return self.state_dir / QEMU_PID_FILE

    @property
    def virtiofsd_pidfile(self) -> Path:
        return self.state_dir / "virtiofsd.pid"

    @property
    def virtiofsd_own_pidfile(self) -> Path:
        """The lock file virtiofsd itself keeps next to its socket."""
        return self.state_dir / "vfs.sock.pid"

    @property
    def vm_json(self) -> Path:
        return self.state_dir / "vm.json"

    def sockets(self) -> list[Path]:
        """Every socket a VM may create here."""
        return [
            self.qmp_socket,
            self.agent_socket,
            self.console_socket,
            self.virtiofsd_socket,
            self.debug_console_socket,
            self.hvsock_socket,
            self.vhost_vsock_socket,
        ]

    def too_long(self) -> list[Path]:
        """Socket paths that do not fit in a sockaddr_un."""
        return [p for p in self.sockets() if len(str(p).encode()) > MAX_SOCKET_PATH]
