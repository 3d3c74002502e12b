"""`containerd-shim-pykata-v2 ... start`: find or spawn the shim daemon, print its address.

containerd reads stdout and stderr together and waits for this process to exit,
so: print only the address, write nothing to stderr on success, and give the
daemon neither our stdout nor our stderr.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys

from shim.cli import ShimArgs
from shim.paths import group_of, socket_address, write_atomic


def _read_spec(bundle: str) -> dict:
    with open(os.path.join(bundle, "config.json"), "rb") as f:
        return json.load(f)


def _can_connect(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.1)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


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
            if _can_connect(path):
                return None
            os.unlink(path)  # stale socket of a dead daemon
            continue
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock
    raise OSError(errno.EADDRINUSE, f"cannot bind shim socket {path}")


def _drain_stdin() -> None:
    """containerd may write the runtime options to our stdin; consume them."""
    try:
        if not os.isatty(0):
            while os.read(0, 65536):
                pass
    except OSError:
        pass


def _spawn_daemon(args: ShimArgs, listener: socket.socket, bundle: str, address: str) -> int:
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
    pid = os.fork()
    if pid:
        return pid
    try:  # child: new session, socket on fd 3, no inherited stdio
        os.setsid()
        os.chdir(bundle)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)
        os.closerange(4, 1024)
        os.execv(argv[0], argv)
    finally:
        os._exit(127)


def start(args: ShimArgs) -> int:
    """Run the start action; returns the process exit code."""
    bundle = os.path.abspath(args.bundle or os.getcwd())
    try:
        group = group_of(_read_spec(bundle), args.id)
        address = socket_address(args.address, args.namespace, group)
        path = address.removeprefix("unix://")
        _drain_stdin()
        listener = _listen(path)
        if listener is not None:
            try:
                _spawn_daemon(args, listener, bundle, address)
            except BaseException:
                listener.close()
                os.unlink(path)
                raise
            listener.close()
        write_atomic(os.path.join(bundle, "address"), address)
    except Exception as exc:
        sys.stderr.write(f"containerd-shim-pykata-v2 start: {exc}\n")
        return 1
    sys.stdout.write(address)
    sys.stdout.flush()
    return 0
