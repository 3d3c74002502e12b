"""Boot the built image under QEMU with ``pykata.selftest=1`` (for tests and benches).

Not the runtime's VMM layer: a fixed, self-contained QEMU command line with the
devices the guest must handle (virtio-serial agent port, virtio-net, virtiofs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from guest.builder import INITRD_NAME, KERNEL_LINK
from guest.ui import BuildError
from pykata_common.contract import SHARED_FS_TAG

SHARE_FILE = "pykata-selftest.txt"
APPEND = "console=ttyS0 quiet pykata.selftest=1 panic=-1"


@dataclass
class BootResult:
    """What one self-test boot printed."""

    ok: bool
    line: str
    fields: dict[str, str]
    console: str
    wall: float  # seconds from QEMU launch to the PYKATA-SELFTEST line
    share_token: str = ""
    exit_wall: float = 0.0  # seconds from launch to QEMU's exit


def parse_line(line: str) -> dict[str, str]:
    """key=value fields of a PYKATA-SELFTEST-OK/FAIL line."""
    return dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)


def qemu_command(out: Path, tmp: Path, memory_mb: int, vfs_socket: Path | None,
                 append: str, qemu: str = "qemu-system-x86_64") -> list[str]:
    """The QEMU command line of a self-test boot."""
    cmd = [qemu, "-machine", "q35,accel=tcg", "-m", f"{memory_mb}M", "-nographic",
           "-no-reboot", "-kernel", str(out / KERNEL_LINK),
           "-initrd", str(out / INITRD_NAME), "-append", append,
           "-device", "virtio-serial-pci",
           "-chardev", f"socket,id=agent,path={tmp / 'agent.sock'},server=on,wait=off",
           "-device", "virtserialport,chardev=agent,name=agent.channel.0,id=channel0",
           "-netdev", "user,id=n0,restrict=on",
           "-device", "virtio-net-pci,netdev=n0,mac=02:00:c6:12:00:02,romfile=",
           "-device", "virtio-rng-pci"]
    if vfs_socket is not None:
        cmd += ["-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
                "-numa", "node,memdev=mem",
                "-chardev", f"socket,id=vfs,path={vfs_socket}",
                "-device", f"vhost-user-fs-pci,chardev=vfs,tag={SHARED_FS_TAG}"]
    return cmd


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """Terminate one process we started (by its PID), then kill it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_virtiofsd(virtiofsd: Path, tmp: Path, token: str) -> tuple[subprocess.Popen, Path]:
    share = tmp / "share"
    share.mkdir()
    (share / SHARE_FILE).write_text(token + "\n")
    sock = tmp / "vfs.sock"
    log = (tmp / "virtiofsd.log").open("wb")
    proc = subprocess.Popen([str(virtiofsd), f"--socket-path={sock}", f"--shared-dir={share}",
                             "--cache=auto"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise BuildError("virtiofsd did not start: "
                             + (tmp / "virtiofsd.log").read_text(errors="replace"))
        time.sleep(0.02)
    return proc, sock


def boot_selftest(out: Path, virtiofsd: Path | None = None, timeout: float = 120.0,
                  memory_mb: int = 512, append: str = APPEND,
                  extra_args: tuple[str, ...] = ()) -> BootResult:
    """Boot once; return the self-test line, its fields and the console."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise BuildError("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    for name in (KERNEL_LINK, INITRD_NAME):
        if not (out / name).exists():
            raise BuildError(f"{out / name} missing: run pykata-image build --out {out}")
    tmp = Path(tempfile.mkdtemp(prefix="pykata-boot-"))
    token = f"share-token-{os.getpid()}-{time.monotonic_ns()}"
    vfsd = qproc = None
    lines: list[str] = []
    result: dict[str, float | str] = {}
    try:
        sock = None
        if virtiofsd is not None:
            vfsd, sock = _start_virtiofsd(virtiofsd, tmp, token)
        cmd = [*qemu_command(out, tmp, memory_mb, sock, append, qemu), *extra_args]
        t0 = time.monotonic()
        qproc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
        done = threading.Event()

        def reader() -> None:
            assert qproc is not None and qproc.stdout is not None
            for raw in qproc.stdout:
                text = raw.decode(errors="replace").rstrip("\r\n")
                lines.append(text)
                if "PYKATA-SELFTEST-" in text and "line" not in result:
                    result["line"] = text[text.index("PYKATA-SELFTEST-"):]
                    result["wall"] = time.monotonic() - t0
                    done.set()
            done.set()

        threading.Thread(target=reader, daemon=True).start()
        done.wait(timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            qproc.wait(10 if "line" in result else 0.1)
        exit_wall = time.monotonic() - t0 if qproc.poll() is not None else 0.0
    finally:
        _stop(qproc)
        _stop(vfsd)
        shutil.rmtree(tmp, ignore_errors=True)
    line = str(result.get("line", ""))
    return BootResult(ok=line.startswith("PYKATA-SELFTEST-OK"), line=line,
                      fields=parse_line(line) if line else {}, console="\n".join(lines),
                      wall=float(result.get("wall", 0.0)), share_token=token,
                      exit_wall=exit_wall)
