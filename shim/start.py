"""`containerd-shim-pykata-v2 ... start`: find or spawn the shim daemon, print its address.

containerd reads stdout and stderr together and waits for this process to exit,
so: print only the address, write nothing to stderr on success, and give the
daemon neither our stdout nor our stderr.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import sys
import time

from shim.handoff import (
    LISTENER_FD,
    OPTIONS_ENV,
    READY_ENV,
    READY_FD,
    READY_WORD,
    ShimArgs,
    read_stdin,
)
from shim.paths import (
    check_identifier,
    group_of,
    read_bundle_spec,
    socket_address,
    socket_is_served,
    write_atomic,
)

READY_TIMEOUT = 30.0
MAX_OPTIONS = 48 * 1024  # hex doubles it; one environment string holds at most 128 KiB


def _read_spec(bundle: str) -> object:
    """The bundle's spec; none for containerd 2.x's sandbox bundle (CRI `sandboxer = "shim"`)."""
    try:
        return read_bundle_spec(bundle)
    except FileNotFoundError:
        if os.path.isdir(os.path.join(bundle, "rootfs")):
            return {}  # a sandbox bundle: the -id is the pod's
        raise


def _listen(path: str) -> socket.socket | None:
    """Bind the daemon's socket, or None when a live daemon already owns it."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    for _ in range(2):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            if socket_is_served(path, timeout=0.1):
                return None
            os.unlink(path)  # stale socket of a dead daemon
            continue
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock
    raise OSError(errno.EADDRINUSE, f"cannot bind shim socket {path}")


def _open_log_fifo(bundle: str) -> int:
    """The bundle's `log` FIFO that containerd reads (Go shims put it on stderr), else /dev/null."""
    try:
        fd = os.open(os.path.join(bundle, "log"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY)
    os.set_blocking(fd, True)
    return fd


def _spawn_daemon(
    args: ShimArgs, listener: socket.socket, bundle: str, options: bytes
) -> tuple[int, int]:
    """Fork the daemon; returns its pid and the read end of its readiness pipe."""
    argv = [
        sys.executable,
        os.path.abspath(sys.argv[0]),
        "-namespace",
        args.namespace,
        "-id",
        args.id,
        "-address",
        args.address,
        "-publish-binary",
        args.publish_binary,
    ]
    if args.debug:
        argv.append("-debug")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_w)
        return pid, ready_r
    try:  # child: new session, socket on fd 3, readiness pipe on fd 4, stdio to the log
        os.setsid()
        os.chdir(bundle)
        devnull = os.open(os.devnull, os.O_RDONLY)
        log = _open_log_fifo(bundle)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(listener.fileno(), LISTENER_FD)
        os.dup2(ready_w, READY_FD)
        os.set_inheritable(LISTENER_FD, True)
        os.set_inheritable(READY_FD, True)
        os.closerange(READY_FD + 1, 1024)
        os.environ[READY_ENV] = str(READY_FD)
        if options and len(options) <= MAX_OPTIONS:
            # the Sandbox API's CreateSandbox carries the pod, not these options
            os.environ[OPTIONS_ENV] = options.hex()
        os.execv(argv[0], argv)
    finally:
        os._exit(127)


def _exit_reason(pid: int) -> str:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "it exited"
    if os.WIFSIGNALED(status):
        return f"it was killed by signal {os.WTERMSIG(status)}"
    return f"it exited with status {os.waitstatus_to_exitcode(status)}"


def _await_ready(pid: int, ready_fd: int) -> None:
    """Wait until the daemon serves; raise with its own words if it dies first.

    containerd would connect right after `start` anyway and wait for the first
    answer, so this costs a new pod nothing, and a daemon that cannot start
    becomes an error `ctr` shows instead of "ttrpc: closed".
    """
    chunks = []
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([ready_fd], [], [], left)[0]:
                return  # slow, not dead: containerd's own timeouts take over
            chunk = os.read(ready_fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(ready_fd)
    said = b"".join(chunks).decode(errors="replace").strip()
    if said == READY_WORD:
        return
    reason = said or _exit_reason(pid)
    raise RuntimeError(
        f"shim daemon failed to start: {reason} (its log is in containerd's log)"
    )


def start(args: ShimArgs) -> int:
    """Run the start action; returns the process exit code."""
    bundle = os.path.abspath(args.bundle or os.getcwd())
    try:
        check_identifier("namespace", args.namespace)
        check_identifier("container id", args.id)
        group = group_of(_read_spec(bundle), args.id)
        address = socket_address(args.address, args.namespace, group)
        path = address.removeprefix("unix://")
        options = read_stdin()
        listener = _listen(path)
        if listener is not None:
            try:
                pid, ready_fd = _spawn_daemon(args, listener, bundle, options)
                listener.close()
                _await_ready(pid, ready_fd)
            except BaseException:
                listener.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                raise
        write_atomic(os.path.join(bundle, "address"), address)
    except Exception as exc:
        sys.stderr.write(f"containerd-shim-pykata-v2 start: {exc}\n")
        return 1
    sys.stdout.write(address)
    sys.stdout.flush()
    return 0
