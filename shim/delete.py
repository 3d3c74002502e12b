"""`containerd-shim-pykata-v2 ... delete`: clean up a container from on-disk state.

containerd runs this when the shim daemon is gone (crashed, killed) or a start
failed. It must be idempotent and print a serialized DeleteResponse. When the
daemon that owned the sandbox is dead, the whole sandbox goes: its VM cannot
serve the remaining containers without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from shim.handoff import ShimArgs
from shim.mountinfo import mounted_under
from shim.paths import (
    SANDBOX_FILE,
    STATE_ROOT,
    InvalidIdentifier,
    check_identifier,
    group_of,
    is_identifier,
    read_bundle_spec,
    recorded_qemu_pid,
)

SIGKILL_EXIT = 128 + 9


def _find_sandbox(namespace: str, container_id: str, bundle: str) -> Path | None:
    """The state dir of the sandbox holding container_id, if any.

    The group annotation names it when it is a valid identifier; otherwise (no
    annotation, or one that is not an identifier and so never named a sandbox) the
    namespace's sandboxes are searched by what their records say.
    """
    try:
        group = group_of(read_bundle_spec(bundle), container_id)
        candidate = STATE_ROOT / namespace / group
        if candidate.is_dir() and not candidate.is_symlink():
            return candidate
    except InvalidIdentifier as exc:
        _report(f"ignoring the bundle's sandbox annotation: {exc}")
    except (OSError, ValueError):
        pass
    namespace_dir = STATE_ROOT / namespace
    if not namespace_dir.is_dir() or namespace_dir.is_symlink():
        return None
    for state_dir in namespace_dir.iterdir():
        if state_dir.is_symlink() or not is_identifier(state_dir.name):
            continue
        try:
            data = json.loads((state_dir / SANDBOX_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        containers = data.get("containers")
        if (isinstance(containers, dict) and container_id in containers) or (
            state_dir.name == container_id
        ):
            return state_dir
    return None


def _shim_alive(record) -> bool:
    """Is the daemon that recorded this sandbox still running (not a recycled pid)?"""
    from shim.vmm import procs

    if record.shim_pid <= 0 or record.shim_pid == os.getpid():
        return False
    return procs.is_running(record.shim_pid, record.shim_started or None)


def _report(line: str) -> None:
    sys.stderr.write(f"containerd-shim-pykata-v2 delete: {line}\n")


def cleanup(namespace: str, container_id: str, bundle: str) -> int:
    """Remove what pykata set up for container_id; returns the QEMU pid it found (or 0).

    With its daemon dead the whole sandbox goes, by the same teardown the daemon
    runs; with the daemon alive only this container is forgotten.
    """
    state_dir = _find_sandbox(namespace, container_id, bundle)
    qemu_pid = 0
    if state_dir is not None:
        from shim.sandbox import teardown
        from shim.sandbox.record import SandboxRecord

        record = SandboxRecord.load(state_dir)
        qemu_pid = recorded_qemu_pid(state_dir)
        if record is None or not _shim_alive(record):
            teardown.release(state_dir, record, _report)
        else:
            teardown.forget_container(state_dir, record, container_id)
    if bundle and mounted_under(os.path.join(bundle, "rootfs")):
        # as runc's shim does, whoever mounted it (the usual case: nothing is left to load
        # the teardown code for)
        from shim.sandbox.teardown import unmount_rootfs

        unmount_rootfs(bundle)
    return qemu_pid


def _delete_response(pid: int, exit_status: int = SIGKILL_EXIT, now_ns: int | None = None) -> bytes:
    """DeleteResponse{pid=1, exit_status=2, exited_at=3 Timestamp{seconds=1, nanos=2}}.

    Encoded by hand: importing protobuf would double what every `delete` costs
    (tests/test_shim_cli.py checks the bytes against the generated message).
    """
    from shim.wire import bytes_field, varint_field

    now_ns = time.time_ns() if now_ns is None else now_ns
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    stamp = varint_field(1, seconds) + varint_field(2, nanos)
    return varint_field(1, pid) + varint_field(2, exit_status) + bytes_field(3, stamp)


def remove_dead_socket(bundle: str) -> None:
    """Remove the shim socket named in the bundle's `address` when nobody serves it.

    containerd runs `delete` when the daemon is gone (killed, crashed): its socket
    file stays behind in /run/containerd/s otherwise. A socket that still
    answers belongs to a live daemon of the same pod and is kept.
    """
    from shim.paths import SHIM_SOCKET_DIR, socket_is_served

    try:
        with open(os.path.join(bundle, "address")) as f:
            path = f.read().strip().removeprefix("unix://")
    except OSError:
        return
    if os.path.dirname(path) == SHIM_SOCKET_DIR and not socket_is_served(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def delete(args: ShimArgs) -> int:
    """Run the delete action; returns the process exit code."""
    bundle = os.path.abspath(args.bundle or os.getcwd())
    try:
        check_identifier("namespace", args.namespace)
        check_identifier("container id", args.id)
        pid = cleanup(args.namespace, args.id, bundle)
        remove_dead_socket(bundle)
    except InvalidIdentifier as exc:
        sys.stderr.write(f"containerd-shim-pykata-v2 delete: {exc}\n")
        return 1
    except Exception as exc:
        sys.stderr.write(f"containerd-shim-pykata-v2 delete: cleanup failed: {exc}\n")
        return 1
    sys.stdout.buffer.write(_delete_response(pid))
    sys.stdout.flush()
    return 0
